"""The DALL-E discrete VAE (stage 1), laid out like OpenAI's `dall_e` package so its weights load one to one.

OpenAI's parameter `encoder.blocks.group_1.block_1.res_path.conv_1.w` is our
`encoder.blocks.group_1.block_1.res_path.conv_1.weight` (and `.b` is `.bias`); nothing else differs.
"""

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ...loading_utils import CompleteWeightsMixin
from .configuration_dalle_vae import DalleVAEConfig


def is_tracing() -> bool:
    """Whether `torch.compile` or `torch.export` is tracing: input checks that read tensor values are skipped then."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def map_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Map pixels from [0, 1] to [eps, 1 - eps], the support of the logit-Laplace likelihood."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Inverse of `map_pixels`, clamped to [0, 1]."""
    return torch.clamp((x - eps) / (1 - 2 * eps), 0, 1)


def logit_laplace_nll(x: torch.Tensor, mu: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-density of the logit-Laplace distribution (DALL-E, appendix A.3).

    `x` must lie strictly inside (0, 1) (use `map_pixels`); `mu` and `log_scale` are the location and log scale
    in logit space: p(x) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x)).
    """
    return (
        log_scale
        + math.log(2.0)
        + torch.log(x)
        + torch.log1p(-x)
        + (torch.logit(x) - mu).abs() * torch.exp(-log_scale)
    )


@dataclass
class DalleVAEEncoderOutput(ModelOutput):
    """
    logits (`torch.FloatTensor` of shape `(batch_size, vocab_size, height, width)`): encoder logits over the codes.
    indices (`torch.LongTensor` of shape `(batch_size, height, width)`): the argmax codes.
    """

    logits: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None


@dataclass
class DalleVAEDecoderOutput(ModelOutput):
    """
    sample (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`): the reconstruction in [0, 1],
        `unmap_pixels(sigmoid(mu))`.
    mu, log_scale (`torch.FloatTensor`, same shape): the logit-Laplace parameters the decoder predicts.
    """

    sample: torch.FloatTensor | None = None
    mu: torch.FloatTensor | None = None
    log_scale: torch.FloatTensor | None = None


@dataclass
class DalleVAEOutput(ModelOutput):
    """
    Output of the training forward pass (gumbel-softmax relaxation of the codes).

    loss: `reconstruction_loss + kl_weight * kl_loss`, the negative relaxed ELB per pixel dimension.
    reconstruction_loss: logit-Laplace negative log-likelihood per pixel dimension (or the mean squared error, with
        `reconstruction_loss="mse"`).
    kl_loss: KL(q(z|x) || uniform) summed over the code grid, divided by the number of pixel dimensions (so that
        `loss` keeps the ELB's balance between the two terms).
    code_usage_entropy: entropy of the batch's average code distribution q(z) over all positions, divided by
        log(vocab_size): 1 when the batch spreads over all codes evenly, 0 when it uses one. Differentiable, so a
        training loop can reward codebook usage (`loss - weight * code_usage_entropy`).
    perplexity: exp(entropy) of the batch's argmax code histogram; 1 means every position uses one code
        (collapse), `vocab_size` means perfectly even use.
    codes_used: number of distinct argmax codes in the batch.
    logits: encoder logits; sample: reconstruction in [0, 1] from the relaxed codes.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    kl_loss: torch.FloatTensor | None = None
    code_usage_entropy: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codes_used: torch.LongTensor | None = None
    logits: torch.FloatTensor | None = None
    sample: torch.FloatTensor | None = None


RECONSTRUCTION_LOSSES = ("logit_laplace", "mse")


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, downsample_factor: int) -> None:
    """Raise a `ValueError` naming the problem unless `pixel_values` are floats in [0, 1] of shape
    (batch, num_channels, height, width) with sides that are multiples of `downsample_factor`."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"`pixel_values` must have shape (batch, {num_channels}, height, width), got {tuple(pixel_values.shape)}."
        )
    factor = downsample_factor
    height, width = pixel_values.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"Image height and width must be multiples of {factor} (the image tokenizer downsamples by {factor}), "
            f"got {height}x{width}."
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be floats in [0, 1], got dtype {pixel_values.dtype} (divide uint8 images by 255)."
        )
    if is_tracing():  # the range check reads values, which a traced graph cannot branch on
        return
    low, high = pixel_values.min().item(), pixel_values.max().item()
    if not (low >= 0 and high <= 1):  # NaN fails both comparisons
        raise ValueError(f"`pixel_values` must lie in [0, 1], got values in [{low:.3g}, {high:.3g}].")


def check_indices(indices: torch.Tensor, vocab_size: int) -> None:
    """Raise a `ValueError` naming the problem unless `indices` is an integer tensor (batch, height, width) of codes
    in [0, vocab_size)."""
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.ndim != 3:
        raise ValueError(
            "`indices` must be an integer tensor of shape (batch, height, width), got "
            + (
                f"{indices.dtype} {tuple(indices.shape)}."
                if isinstance(indices, torch.Tensor)
                else f"{type(indices).__name__}."
            )
        )
    if not is_tracing() and indices.numel() and (indices.min() < 0 or indices.max() >= vocab_size):
        raise ValueError(
            f"`indices` must lie in [0, {vocab_size}) (the vocab size), "
            f"got values in [{indices.min().item()}, {indices.max().item()}]."
        )


class DalleVAEResBlock(GradientCheckpointingLayer):
    """`id_path(x) + post_gain * res_path(x)`: four ReLU + conv layers through a bottleneck of a quarter of the
    output width. The encoder's kernels are 3, 3, 3, 1 and the decoder's 1, 3, 3, 3, as in OpenAI's `dall_e`."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, kernel_sizes: tuple[int, int, int, int]):
        super().__init__()
        hidden = out_channels // 4
        self.post_gain = 1 / num_layers**2
        self.id_path = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        widths = [in_channels, hidden, hidden, hidden, out_channels]
        layers = []
        for i, kernel in enumerate(kernel_sizes):
            layers += [
                (f"relu_{i + 1}", nn.ReLU()),
                (f"conv_{i + 1}", nn.Conv2d(widths[i], widths[i + 1], kernel, padding=kernel // 2)),
            ]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


ENCODER_KERNEL_SIZES = (3, 3, 3, 1)
DECODER_KERNEL_SIZES = (1, 3, 3, 3)


def _group(blocks: list[nn.Module], resample: tuple[str, nn.Module] | None) -> nn.Sequential:
    layers = [(f"block_{i + 1}", block) for i, block in enumerate(blocks)]
    return nn.Sequential(OrderedDict(layers + ([resample] if resample else [])))


class DalleVAEEncoder(nn.Module):
    """Image -> code logits: 7x7 conv, 4 groups of resblocks (widths 1, 2, 4, 8 x n_hid) with a 2x max-pool
    after each of the first three, then ReLU and a 1x1 conv to `vocab_size` logits."""

    def __init__(self, config: DalleVAEConfig):
        super().__init__()
        n_hid, n_blk = config.hidden_size, config.num_blocks_per_group
        num_layers = config.num_groups * n_blk
        widths = [n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]
        groups, in_width = [], n_hid
        for g, width in enumerate(widths):
            blocks = [
                DalleVAEResBlock(in_width if i == 0 else width, width, num_layers, ENCODER_KERNEL_SIZES)
                for i in range(n_blk)
            ]
            pool = ("pool", nn.MaxPool2d(kernel_size=2)) if g < config.num_groups - 1 else None
            groups.append((f"group_{g + 1}", _group(blocks, pool)))
            in_width = width
        self.blocks = nn.Sequential(
            OrderedDict(
                [("input", nn.Conv2d(config.num_channels, n_hid, 7, padding=3))]
                + groups
                + [
                    (
                        "output",
                        nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=nn.Conv2d(8 * n_hid, config.vocab_size, 1))),
                    )
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last lets oneDNN run every convolution, the 1x1 ones included, in its fast path (NCHW 1x1 convs
        # fall back to im2col + GEMM on CPU): ~15% faster encoding. The logits keep that memory layout.
        return self.blocks(x.contiguous(memory_format=torch.channels_last))


class DalleVAEDecoder(nn.Module):
    """Codes -> logit-Laplace parameters: 1x1 conv from one-hot codes to `n_init` channels, 4 groups of resblocks
    (widths 8, 4, 2, 1 x n_hid) with a nearest 2x upsample after each of the first three, then ReLU and a 1x1 conv
    to `2 * num_channels` (mu and log-scale)."""

    def __init__(self, config: DalleVAEConfig):
        super().__init__()
        n_hid, n_blk = config.hidden_size, config.num_blocks_per_group
        num_layers = config.num_groups * n_blk
        widths = [8 * n_hid, 4 * n_hid, 2 * n_hid, n_hid]
        groups, in_width = [], config.decoder_init_size
        for g, width in enumerate(widths):
            blocks = [
                DalleVAEResBlock(in_width if i == 0 else width, width, num_layers, DECODER_KERNEL_SIZES)
                for i in range(n_blk)
            ]
            upsample = ("upsample", nn.Upsample(scale_factor=2, mode="nearest")) if g < config.num_groups - 1 else None
            groups.append((f"group_{g + 1}", _group(blocks, upsample)))
            in_width = width
        self.blocks = nn.Sequential(
            OrderedDict(
                [("input", nn.Conv2d(config.vocab_size, config.decoder_init_size, 1))]
                + groups
                + [
                    (
                        "output",
                        nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=nn.Conv2d(n_hid, 2 * config.num_channels, 1))),
                    )
                ]
            )
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """`codes`: a (relaxed) one-hot float tensor [B, vocab, h, w], or integer indices [B, h, w]."""
        # Channels-last, as in the encoder (oneDNN's fast path for every convolution).
        if codes.is_floating_point():
            return self.blocks(codes.contiguous(memory_format=torch.channels_last))
        # A 1x1 conv of a one-hot vector is a column lookup: gather instead of multiplying by 8192 zeros.
        conv = self.blocks.input
        x = F.embedding(codes, conv.weight[:, :, 0, 0].t()) + conv.bias
        return self.blocks[1:](x.permute(0, 3, 1, 2))  # [B, h, w, C] viewed as [B, C, h, w] is channels-last


class DalleVAEPreTrainedModel(CompleteWeightsMixin, PreTrainedModel):
    config_class = DalleVAEConfig
    base_model_prefix = "dalle_vae"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DalleVAEResBlock"]

    def _init_weights(self, module):
        # OpenAI's `dall_e.utils.Conv2d` init: N(0, 1 / fan_in) weights, zero biases.
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            init.normal_(module.weight, mean=0.0, std=1 / math.sqrt(fan_in))
            init.zeros_(module.bias)


class DalleVAE(DalleVAEPreTrainedModel):
    """
    The discrete VAE of DALL-E. `encode` turns images in [0, 1] into code logits and argmax codes, `decode` turns
    codes back into images, and `forward` is the training pass (gumbel-softmax relaxation, logit-Laplace
    likelihood, KL to the uniform prior).

    Example:

    ```python
    >>> from hf_dalle import DalleVAE, DalleVAEConfig
    >>> vae = DalleVAE(DalleVAEConfig(hidden_size=32, vocab_size=64))
    >>> codes = vae.encode(torch.rand(1, 3, 64, 64)).indices  # [1, 8, 8]
    >>> images = vae.decode(codes).sample  # [1, 3, 64, 64] in [0, 1]
    ```
    """

    def __init__(self, config: DalleVAEConfig):
        super().__init__(config)
        self.encoder = DalleVAEEncoder(config)
        self.decoder = DalleVAEDecoder(config)
        self.post_init()

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> DalleVAEEncoderOutput | tuple:
        """Encode images (floats in [0, 1], shape [B, C, H, W]) into code logits [B, vocab, H/8, W/8] and argmax
        codes [B, H/8, W/8]."""
        check_pixel_values(pixel_values, self.config.num_channels, self.config.downsample_factor)
        logits = self.encoder(map_pixels(pixel_values.to(self.dtype), self.config.logit_laplace_eps))
        indices = logits.argmax(dim=1)
        return DalleVAEEncoderOutput(logits=logits, indices=indices) if return_dict else (logits, indices)

    def _decode_stats(self, codes: torch.Tensor) -> DalleVAEDecoderOutput:
        stats = self.decoder(codes).float()
        mu, log_scale = stats.chunk(2, dim=1)
        sample = unmap_pixels(torch.sigmoid(mu), self.config.logit_laplace_eps)
        return DalleVAEDecoderOutput(sample=sample, mu=mu, log_scale=log_scale)

    def decode(self, indices: torch.LongTensor, return_dict: bool = True) -> DalleVAEDecoderOutput | tuple:
        """Decode integer codes [B, h, w] into images [B, C, 8h, 8w] in [0, 1]."""
        check_indices(indices, self.config.vocab_size)
        output = self._decode_stats(indices)
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        pixel_values: torch.Tensor,
        temperature: float = 1.0,
        kl_weight: float = 0.0,
        hard: bool = False,
        reconstruction_loss: str = "logit_laplace",
        return_dict: bool = True,
    ) -> DalleVAEOutput | tuple:
        r"""
        The training pass: encode, draw gumbel-softmax relaxed codes, decode, score.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`): images in [0, 1].
            temperature (`float`): gumbel-softmax temperature (the paper anneals 1 -> 1/16).
            kl_weight (`float`): weight of the KL term (the paper raises it 0 -> 6.6).
            hard (`bool`): straight-through one-hot codes instead of the relaxation.
            reconstruction_loss (`str`): `"logit_laplace"`, the paper's likelihood, or `"mse"`, the squared error of
                `sigmoid(mu)` against the mapped pixels, rescaled to [0, 1] pixel units. The logit-Laplace
                gradient has the same size for every pixel however small its error (an L1 loss in logit space), which
                makes it noisy on images of large flat areas: on the shapes world a small dVAE learns shapes several
                times faster with `"mse"` (`log_scale` is then unused).
        """
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"`reconstruction_loss` must be one of {RECONSTRUCTION_LOSSES}, got {reconstruction_loss!r}."
            )
        check_pixel_values(pixel_values, self.config.num_channels, self.config.downsample_factor)
        eps = self.config.logit_laplace_eps
        target = map_pixels(pixel_values.float(), eps)
        logits = self.encoder(target.to(self.dtype)).float()

        soft_codes = F.gumbel_softmax(logits, tau=temperature, hard=hard, dim=1)
        decoded = self._decode_stats(soft_codes.to(self.dtype))

        num_dims = target[0].numel()
        if reconstruction_loss == "mse":
            # In mapped space, without unmap_pixels' clamp (which would stop the gradient of pixels pushed past it).
            reconstruction = ((torch.sigmoid(decoded.mu) - target) ** 2).mean() / (1 - 2 * eps) ** 2
        else:
            reconstruction = logit_laplace_nll(target, decoded.mu, decoded.log_scale).mean()
        log_q = F.log_softmax(logits, dim=1)
        kl = (log_q.exp() * (log_q + math.log(self.config.vocab_size))).sum(dim=(1, 2, 3))
        kl_loss = kl.mean() / num_dims
        loss = reconstruction + kl_weight * kl_loss

        mean_q = log_q.exp().mean(dim=(0, 2, 3))
        code_usage_entropy = -(mean_q * torch.log(mean_q.clamp_min(1e-10))).sum() / math.log(self.config.vocab_size)

        with torch.no_grad():
            codes = logits.argmax(dim=1).flatten()
            histogram = logits.new_zeros(self.config.vocab_size).index_add_(
                0, codes, torch.ones_like(codes, dtype=logits.dtype)
            )
            probs = histogram / histogram.sum()
            perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
            codes_used = (histogram > 0).sum()

        output = DalleVAEOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_loss=kl_loss,
            code_usage_entropy=code_usage_entropy,
            perplexity=perplexity,
            codes_used=codes_used,
            logits=logits,
            sample=decoded.sample,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["DalleVAE", "DalleVAEPreTrainedModel", "map_pixels", "unmap_pixels", "logit_laplace_nll"]
