"""Per-resblock gradient scaling for fp16 training (`config.resblock_gradient_scaling`, the paper's Fig. 4): the gradient
entering each residual branch is multiplied by that branch's own scale, and the gradient leaving it is divided by the
scale, cleared of inf/NaN and added to the float32 residual stream, so that small gradients survive the fp16 branch
and one overflowing branch does not poison the others."""

from collections.abc import Iterable

import torch
from torch import nn

from .configuration_dalle import DalleConfig


class _ScaleResblockGradient(torch.autograd.Function):
    """At a residual branch's output. Forward: cast to float32, the residual stream's dtype. Backward: multiply the
    float32 gradient by the branch's scale before it is cast to the branch's (fp16) dtype."""

    @staticmethod
    def forward(ctx, branch_output: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        ctx.branch_dtype = branch_output.dtype
        return branch_output.float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return (grad * scale).to(ctx.branch_dtype), None


class _UnscaleResblockGradient(torch.autograd.Function):
    """At a residual branch's input. Forward: identity. Backward: divide the branch's gradient by its scale in
    float32, set inf/NaN to zero (so one overflowing branch does not poison the stream) and record that it did."""

    @staticmethod
    def forward(ctx, hidden_states: torch.Tensor, scale: torch.Tensor, found_nonfinite: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        ctx.found_nonfinite = found_nonfinite
        return hidden_states.view_as(hidden_states)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        grad = grad.float() / scale
        finite = torch.isfinite(grad)
        ctx.found_nonfinite.logical_or_(~finite.all())
        return torch.where(finite, grad, 0.0), None, None


class DalleResblockGradientScaler(nn.Module):
    """The gradient scale of one residual branch, kept as buffers so that it is saved and resumed with the model. A
    block wraps the branch as `x + scaler.branch_output(branch(scaler.branch_input(x)))`; both are the identity when
    no gradient is recorded."""

    def __init__(self, config: DalleConfig):
        super().__init__()
        self.growth_interval = config.resblock_gradient_scale_growth_interval
        self.register_buffer("scale", torch.tensor(config.resblock_gradient_scale_init, dtype=torch.float32))
        self.register_buffer("found_nonfinite", torch.tensor(False))
        self.register_buffer("good_steps", torch.tensor(0))

    def branch_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return hidden_states
        return _UnscaleResblockGradient.apply(hidden_states, self.scale, self.found_nonfinite)

    def branch_output(self, output: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return output
        return _ScaleResblockGradient.apply(output, self.scale)

    @torch.no_grad()
    def unscale_gradients(self, parameters: Iterable[nn.Parameter]) -> torch.Tensor:
        """Divide the gradients of the branch's `parameters` by the scale. If they or the branch's input gradient held
        inf/NaN: zero them (the branch skips this step) and halve the scale; else double it after `growth_interval`
        clean steps in a row. Returns whether the branch overflowed (a boolean tensor: no host sync)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        found = self.found_nonfinite.clone()
        for grad in grads:
            grad.div_(self.scale)
            found |= ~torch.isfinite(grad).all()
        for grad in grads:
            grad.masked_fill_(found, 0.0)
        grow = ~found & (self.good_steps + 1 >= self.growth_interval)
        self.scale.copy_(torch.where(found, self.scale / 2, torch.where(grow, self.scale * 2, self.scale)))
        self.good_steps.copy_(torch.where(found | grow, 0, self.good_steps + 1))
        self.found_nonfinite.zero_()
        return found


class NoResblockGradientScaling(nn.Module):
    """The scaler of a branch when `config.resblock_gradient_scaling` is off: the identity, with no state."""

    def branch_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def branch_output(self, output: torch.Tensor) -> torch.Tensor:
        return output


def resblock_gradient_scaler(config: DalleConfig) -> DalleResblockGradientScaler | NoResblockGradientScaling:
    """The gradient scaler of one residual branch under `config`."""
    return DalleResblockGradientScaler(config) if config.resblock_gradient_scaling else NoResblockGradientScaling()


__all__ = ["DalleResblockGradientScaler", "NoResblockGradientScaling", "resblock_gradient_scaler"]
