"""The DALL-E transformer prior (stage 2): a decoder-only transformer over captions followed by dVAE image codes,
with the paper's sparse row / column / convolutional image attention."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LogitsProcessor, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .cache_dalle import DallePrefixCache, generate_takes_prefix_cache
from .configuration_dalle import DalleConfig


logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache that `generate` passes to `forward` and reads back from its output from
# `past_key_values` to `cache`. The model takes either name and returns the cache under the installed version's.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_argument(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a caller passed as `cache` (transformers >= 5.24) or as `past_key_values` (the earlier name)."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("Pass the cache once, as `cache` or as `past_key_values`, not both.")
    return past_key_values


# The attention pattern of the stream. An image rule says whether the image code at raster index `query` may attend
# to the one at raster index `key` (integer tensors of any broadcastable shapes, or the scalars flex attention's mask
# functions receive); every rule is causal in raster order. With `G = image_grid_size`, `h = conv_kernel_size // 2`:


def full_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Every earlier code and itself."""
    return key <= query


def row_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`query - key <= G`: the code itself and the `G` codes before it (the paper's "previous grid + 1 tokens": the
    rest of its row to the left and the previous row from its own column on)."""
    return (key <= query) & (query - key <= config.image_grid_size)


def column_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`(query - key) % G == 0`: the same column in earlier rows, and itself."""
    return (key <= query) & ((query - key) % config.image_grid_size == 0)


def conv_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`query - key = dr * G + dc` with `0 <= dr <= h`, `-h <= dc <= h`: the causal half of the `conv_kernel_size` x
    `conv_kernel_size` neighbourhood centred on the code, laid over the raster sequence, so near the left and right
    edges it wraps around onto the neighbouring row."""
    offset, half = query - key, config.conv_kernel_size // 2
    in_kernel = offset <= half  # dr = 0: the code itself and the `h` codes before it
    for kernel_row in range(1, half + 1):
        in_kernel = in_kernel | ((offset - kernel_row * config.image_grid_size).abs() <= half)
    return (key <= query) & in_kernel


def clipped_conv_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`|row(query) - row(key)| <= h` and `|col(query) - col(key)| <= h`: the causal half of a true 2D
    `conv_kernel_size` x `conv_kernel_size` window, cut at the image edges (ruDALL-E v3's convolutional mask)."""
    grid, half = config.image_grid_size, config.conv_kernel_size // 2
    row_distance = (query // grid - key // grid).abs()
    column_distance = (query % grid - key % grid).abs()
    return (key <= query) & (row_distance <= half) & (column_distance <= half)


def torus_conv_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Rows and columns at most `h` apart around the image's edges (on a torus: the bottom rows see the top ones),
    still causal in raster order (ruDALL-E v2's convolutional mask)."""
    grid, half = config.image_grid_size, config.conv_kernel_size // 2
    row_offset, column_offset = (query // grid - key // grid) % grid, (query % grid - key % grid) % grid
    rows_near = (row_offset <= half) | (row_offset >= grid - half)
    columns_near = (column_offset <= half) | (column_offset >= grid - half)
    return (key <= query) & rows_near & columns_near


# `config.conv_window` -> the rule of `"conv"` layers.
CONV_WINDOW_RULES = {
    "raster": conv_image_attention,
    "clipped": clipped_conv_image_attention,
    "torus": torus_conv_image_attention,
}

IMAGE_ATTENTION_RULES: dict[str, Callable[[DalleConfig, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "full": full_image_attention,
    "row": row_image_attention,
    "column": column_image_attention,
    "conv": conv_image_attention,
}


def stream_attention_rule(config: DalleConfig, kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mask function `(query, key) -> may attend` over stream positions for attention type `kind`: text queries
    attend causally to text, image queries attend to all text and to image codes by `IMAGE_ATTENTION_RULES[kind]`
    (`"conv"`: by `CONV_WINDOW_RULES[config.conv_window]`). The first `config.mask_text_length` positions count as
    text (all text positions unless `config.image_mask_offset` moves the grid's start earlier)."""
    image_rule = CONV_WINDOW_RULES[config.conv_window] if kind == "conv" else IMAGE_ATTENTION_RULES[kind]
    text_length = config.mask_text_length

    def may_attend(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        image_pair = (query >= text_length) & (key >= text_length)
        return torch.where(image_pair, image_rule(config, query - text_length, key - text_length), key <= query)

    return may_attend


def build_attention_masks(config: DalleConfig, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The boolean attention masks (`True` = may attend) of the full stream, one `[S, S]` matrix per attention type used
    by `config` (`S = max_sequence_length`), from [`stream_attention_rule`]."""
    positions = torch.arange(config.max_sequence_length, device=device)
    return {
        kind: stream_attention_rule(config, kind)(positions[:, None], positions[None, :])
        for kind in set(config.attention_types)
    }


def build_flex_block_mask(config: DalleConfig, kind: str, positions: torch.Tensor, key_length: int):
    """The flex attention `BlockMask` of attention type `kind` for queries at stream `positions` over `key_length`
    keys, from [`stream_attention_rule`]: on a GPU, flex attention skips the blocks it masks out."""
    from torch.nn.attention.flex_attention import create_block_mask  # torch >= 2.5, only for flex attention

    may_attend = stream_attention_rule(config, kind)

    def mask_mod(batch_idx, head_idx, query_idx, key_idx):
        return may_attend(positions[query_idx], key_idx)

    return create_block_mask(
        mask_mod, B=None, H=None, Q_LEN=len(positions), KV_LEN=key_length, device=positions.device
    )


@dataclass(frozen=True)
class DecodeStepKeys:
    """
    The keys that one image query may attend to under one attention type, as views of a cache that holds stream
    positions `0 .. p` in order, in place of a mask row over all of them: every text position, then the stream
    positions `image_keys` (a slice, strided for column attention), of which `image_mask` (`None`: all) marks the
    allowed ones. A decode step thus reads the few keys of its row, column or neighbourhood, not the whole prefix.
    """

    text_length: int
    image_keys: slice
    image_mask: torch.Tensor | None = None


def decode_step_keys(config: DalleConfig, position: int, mask_row: torch.Tensor) -> DecodeStepKeys:
    """The [`DecodeStepKeys`] of the query at image stream `position` whose row of `build_attention_masks(config)` is
    `mask_row`: the allowed image keys as one slice if they are evenly spaced (a row, a column, full attention),
    else the window from the first to the last with its mask (a convolutional neighbourhood)."""
    text_length = config.mask_text_length
    allowed = (mask_row[text_length : position + 1].nonzero().squeeze(1) + text_length).tolist()
    first, last = allowed[0], allowed[-1]
    steps = {b - a for a, b in zip(allowed, allowed[1:])}
    if len(steps) <= 1:
        return DecodeStepKeys(text_length, slice(first, last + 1, steps.pop() if steps else 1))
    window = slice(first, last + 1)
    return DecodeStepKeys(text_length, window, mask_row[window])


class DalleEmbeddings(nn.Module):
    """Text token: token embedding + text position embedding, or, for the pad token, the padding embedding learned
    for that position. Image code: code embedding + row embedding + column embedding. Token and code embeddings share
    one table over the stream vocabulary (text ids, then image codes offset by `text_vocab_size`)."""

    def __init__(self, config: DalleConfig):
        super().__init__()
        self.text_length = config.max_text_length
        self.grid = config.image_grid_size
        self.pad_token_id = config.text_pad_token_id
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.text_position_embedding = nn.Embedding(config.max_text_length, config.hidden_size)
        self.text_pad_embedding = nn.Embedding(config.max_text_length, config.hidden_size)
        self.image_row_embedding = nn.Embedding(config.image_grid_size, config.hidden_size)
        self.image_column_embedding = nn.Embedding(config.image_grid_size, config.hidden_size)

    def forward(self, input_ids: torch.LongTensor, positions: torch.LongTensor) -> torch.Tensor:
        is_image = positions >= self.text_length
        text_index = positions.clamp(max=self.text_length - 1)
        image_index = (positions - self.text_length).clamp(min=0)
        image_position = self.image_row_embedding(image_index // self.grid) + self.image_column_embedding(
            image_index % self.grid
        )
        position = torch.where(is_image[:, None], image_position, self.text_position_embedding(text_index))
        embeddings = self.token_embedding(input_ids) + position
        is_pad = (input_ids == self.pad_token_id) & ~is_image
        return torch.where(is_pad[..., None], self.text_pad_embedding(text_index), embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out with a boolean mask (`True` = may attend, at least one per query), the softmax in
    float32; returns the output `[B, L, H, D]` and the attention weights `[B, H, L, K]`."""
    scores = (query @ key.transpose(-1, -2)) * scaling
    weights = scores.masked_fill(~attention_mask, float("-inf")).softmax(-1, dtype=torch.float32).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def decode_step_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: DecodeStepKeys,
    scaling: float,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one query position over the text keys and the `attention_mask.image_keys` of `key` / `value`
    (views, no copy): the scores of both parts share one softmax (in float32), so this equals the attention with the
    full mask row."""
    keys = attention_mask
    text, image = slice(0, keys.text_length), keys.image_keys
    query = query * scaling
    text_scores = query @ key[:, :, text].transpose(-1, -2)
    image_scores = query @ key[:, :, image].transpose(-1, -2)
    if keys.image_mask is not None:
        image_scores = image_scores.masked_fill(~keys.image_mask, float("-inf"))
    weights = torch.cat([text_scores, image_scores], dim=-1).softmax(-1, dtype=torch.float32).to(value.dtype)
    output = weights[..., text] @ value[:, :, text] + weights[..., keys.text_length :] @ value[:, :, image]
    return output.transpose(1, 2), None


class DalleAttention(nn.Module):
    """Multi-head self-attention through the implementation `config._attn_implementation` names in transformers'
    `ALL_ATTENTION_FUNCTIONS` (`"sdpa"`, `"flex_attention"`, ...), or [`eager_attention_forward`] for `"eager"`;
    the mask is the layer's (see `DalleModel.layer_masks`)."""

    def __init__(self, config: DalleConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.attention_type = config.attention_types[layer_idx]
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask, cache: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        implementation = self.config._attn_implementation
        half_precision = query.dtype in (torch.bfloat16, torch.float16)
        if implementation == "sdpa" and self.training and query.device.type == "cpu" and half_precision:
            # PyTorch's CPU flash-attention kernel, the one SDPA picks here, is several times slower *backward* in half
            # precision than matmul + softmax (forward alone it is the faster).
            implementation = "eager"
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        if isinstance(attention_mask, DecodeStepKeys):
            attention_interface = decode_step_attention_forward
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(output.reshape(batch_size, length, width)), weights


class DalleMLP(nn.Module):
    def __init__(self, config: DalleConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.approximate = "tanh" if config.hidden_act == "gelu_tanh" else "none"  # config.hidden_act "gelu_tanh"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(hidden_states), approximate=self.approximate))


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
    """The gradient scale of one residual branch (`config.resblock_gradient_scaling`, the paper's Fig. 4), kept as
    buffers so that it is saved and resumed with the model."""

    def __init__(self, config: DalleConfig):
        super().__init__()
        self.register_buffer("scale", torch.tensor(config.resblock_gradient_scale_init, dtype=torch.float32))
        self.register_buffer("found_nonfinite", torch.tensor(False))
        self.register_buffer("good_steps", torch.tensor(0))

    def branch_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _UnscaleResblockGradient.apply(hidden_states, self.scale, self.found_nonfinite)

    def branch_output(self, output: torch.Tensor) -> torch.Tensor:
        return _ScaleResblockGradient.apply(output, self.scale)


class DalleBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: `x + attn(ln(x))`, then `x + mlp(ln(x))`; with `config.sandwich_layernorm`,
    `x + ln'(attn(ln(x)))` and `x + ln'(mlp(ln(x)))` (CogView). With `config.resblock_gradient_scaling`, each of the
    two residual branches has its own gradient scaler."""

    def __init__(self, config: DalleConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.attention_types[layer_idx]
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = DalleAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DalleMLP(config)
        sandwich = config.sandwich_layernorm
        self.attention_output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if sandwich else None
        self.mlp_output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if sandwich else None
        self.dropout = nn.Dropout(config.dropout)
        scaling = config.resblock_gradient_scaling
        self.attention_gradient_scaler = DalleResblockGradientScaler(config) if scaling else None
        self.mlp_gradient_scaler = DalleResblockGradientScaler(config) if scaling else None

    def residual_branches(self) -> list[tuple[DalleResblockGradientScaler | None, list[nn.Module]]]:
        """Each residual branch's gradient scaler and the modules inside the branch."""
        attention = [self.attention_norm, self.attention, self.attention_output_norm]
        mlp = [self.mlp_norm, self.mlp, self.mlp_output_norm]
        return [
            (self.attention_gradient_scaler, [m for m in attention if m is not None]),
            (self.mlp_gradient_scaler, [m for m in mlp if m is not None]),
        ]

    def branch_output(self, output: torch.Tensor, output_norm: nn.LayerNorm | None) -> torch.Tensor:
        """A residual branch's output as it is added: dropout, then the sandwich LayerNorm if any (ruDALL-E's
        order)."""
        output = self.dropout(output)
        return output_norm(output) if output_norm is not None else output

    def forward(
        self, hidden_states: torch.Tensor, attention_mask, cache: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output and its attention weights (`None` unless the attention implementation is eager)."""
        if self.attention_gradient_scaler is None or not torch.is_grad_enabled():
            attention, weights = self.attention(self.attention_norm(hidden_states), attention_mask, cache)
            hidden_states = hidden_states + self.branch_output(attention, self.attention_output_norm)
            mlp = self.mlp(self.mlp_norm(hidden_states))
            return hidden_states + self.branch_output(mlp, self.mlp_output_norm), weights

        scaler = self.attention_gradient_scaler
        branch = self.attention_norm(scaler.branch_input(hidden_states))
        attention, weights = self.attention(branch, attention_mask, cache)
        hidden_states = hidden_states + scaler.branch_output(self.branch_output(attention, self.attention_output_norm))
        scaler = self.mlp_gradient_scaler
        mlp = self.mlp(self.mlp_norm(scaler.branch_input(hidden_states)))
        return hidden_states + scaler.branch_output(self.branch_output(mlp, self.mlp_output_norm)), weights


class DallePreTrainedModel(PreTrainedModel):
    config_class = DalleConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DalleBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DalleResblockGradientScaler):
            init.constant_(module.scale, self.config.resblock_gradient_scale_init)
            init.zeros_(module.found_nonfinite)
            init.zeros_(module.good_steps)
        # GPT-2's scaled init: the residual stream sums 2 * num_layers branch outputs.
        if isinstance(module, (DalleAttention, DalleMLP)):
            projection = module.out_proj if isinstance(module, DalleAttention) else module.fc_out
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(projection.weight, mean=0.0, std=std)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """
        Resize the stream vocabulary (`config.vocab_size`: text tokens, then image codes) to `new_num_tokens` by
        resizing its *text* part: `config.text_vocab_size` becomes `new_num_tokens - config.image_vocab_size`, and the
        image codes' rows of the token embedding and of the head move with it (a stream writes code `c` as
        `text_vocab_size + c`, so image ids shift by the change). To fit a tokenizer of `n` tokens, pass
        `n + config.image_vocab_size`. New text rows start at the mean of the old text rows (`mean_resizing`) or as
        initialised; `pad_to_multiple_of` rounds `new_num_tokens` up. Returns the token embedding.
        """
        config = self.config
        embedding, head = self.get_input_embeddings(), self.get_output_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embedding
        new_num_tokens = config.vocab_size if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            new_num_tokens = math.ceil(new_num_tokens / pad_to_multiple_of) * pad_to_multiple_of
        old_text, new_text = config.text_vocab_size, new_num_tokens - config.image_vocab_size
        special = {"text_pad_token_id": config.text_pad_token_id, "bos_token_id": config.bos_token_id}
        special["eos_token_id"] = config.eos_token_id
        highest = max(token_id for token_id in special.values() if token_id is not None)
        if highest >= new_text:
            raise ValueError(
                f"`new_num_tokens`={new_num_tokens} leaves {new_text} text tokens (after the "
                f"image_vocab_size={config.image_vocab_size} image codes are set aside), but the text vocabulary must "
                f"keep the special ids {special}: pass at least {highest + 1 + config.image_vocab_size}."
            )

        def moved(rows: torch.Tensor, init_std: float | None) -> torch.Tensor:
            """The text rows cut or extended to `new_text`, then the image rows."""
            text, image = rows[:old_text], rows[old_text:]
            added = max(new_text - old_text, 0)
            if mean_resizing or init_std is None:
                extra = text.mean(0, keepdim=True).expand(added, *text.shape[1:])
            else:
                extra = torch.randn(added, *text.shape[1:], device=rows.device, dtype=rows.dtype) * init_std
            return torch.cat([text[:new_text], extra, image]).contiguous()

        std = config.initializer_range
        with torch.no_grad():
            new_embedding = nn.Embedding(new_num_tokens, config.hidden_size, device=embedding.weight.device)
            new_embedding.weight.copy_(moved(embedding.weight, std))
            self.set_input_embeddings(new_embedding.to(embedding.weight.dtype))
            if head is not None:
                new_head = nn.Linear(config.hidden_size, new_num_tokens, bias=head.bias is not None)
                new_head = new_head.to(head.weight.device, head.weight.dtype)
                new_head.weight.copy_(moved(head.weight, std))
                if head.bias is not None:
                    new_head.bias.copy_(moved(head.bias, None if mean_resizing else 0.0))
                if config.tie_word_embeddings:
                    new_head.weight = self.get_input_embeddings().weight
                self.set_output_embeddings(new_head)
        config.text_vocab_size = new_text
        return self.get_input_embeddings()

    @torch.no_grad()
    def update_resblock_gradient_scales(self) -> int:
        """
        With `config.resblock_gradient_scaling`: call after the backward pass (after all gradient accumulation
        steps), before the optimizer step. Divides each residual branch's parameter gradients by the branch's scale;
        a branch whose gradients held inf/NaN (in its parameters or its input gradient) gets zero gradients for this
        step and half the scale, the others double their scale every `resblock_gradient_scale_growth_interval`
        clean steps. Returns the number of branches that overflowed. The flags are per process: under data
        parallelism every process must see the same gradients (call it after they are all-reduced).
        """
        if not self.config.resblock_gradient_scaling:
            raise ValueError(
                "`update_resblock_gradient_scales` needs a model built with `resblock_gradient_scaling=True`."
            )
        growth_interval = self.config.resblock_gradient_scale_growth_interval
        overflowed = []
        for block in self.modules():
            if not isinstance(block, DalleBlock):
                continue
            for scaler, modules in block.residual_branches():
                grads = [p.grad for module in modules for p in module.parameters() if p.grad is not None]
                found = scaler.found_nonfinite.clone()
                for grad in grads:
                    grad.div_(scaler.scale)
                    found |= ~torch.isfinite(grad).all()
                for grad in grads:
                    grad.masked_fill_(found, 0.0)
                grow = ~found & (scaler.good_steps + 1 >= growth_interval)
                new_scale = torch.where(found, scaler.scale / 2, torch.where(grow, scaler.scale * 2, scaler.scale))
                scaler.scale.copy_(new_scale)
                scaler.good_steps.copy_(torch.where(found | grow, 0, scaler.good_steps + 1))
                scaler.found_nonfinite.zero_()
                overflowed.append(found)
        return int(torch.stack(overflowed).sum())


class DalleModel(DallePreTrainedModel):
    """The DALL-E transformer without its output head: embeddings, blocks, final layer norm."""

    def __init__(self, config: DalleConfig):
        super().__init__(config)
        self.embeddings = DalleEmbeddings(config)
        self.layers = nn.ModuleList([DalleBlock(config, i) for i in range(config.num_hidden_layers)])
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # ruDALL-E: a second LayerNorm between the final one and the head (`config.head_layernorm`).
        self.head_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.head_layernorm else None
        # The full-stream masks of each attention type, built once per device (a plain cache rather than buffers, so
        # meta-device construction and checkpoint loading never see them).
        self._attention_masks: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._decode_step_keys: dict[tuple[torch.device, int], dict[str, DecodeStepKeys | None]] = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.token_embedding = value

    def attention_masks(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The `[S, S]` boolean masks of `build_attention_masks` on `device`, built on first use."""
        if device not in self._attention_masks:
            self._attention_masks[device] = build_attention_masks(self.config, device)
        return self._attention_masks[device]

    def decode_step_keys_at(self, position: int, device: torch.device) -> dict[str, DecodeStepKeys | None]:
        """Per attention type, the [`DecodeStepKeys`] of a decode step at stream `position`, or `None` where one mask
        over the whole prefix is as cheap: at text positions, and where the step would still read more than a third
        of the prefix (a conv window counts whole: skipping fewer keys than that does not repay the extra kernels).
        Built on first use."""
        if (device, position) not in self._decode_step_keys:
            step_keys = dict.fromkeys(self.config.attention_types)
            if position >= self.config.max_text_length:
                for kind, mask in self.attention_masks(device).items():
                    keys = decode_step_keys(self.config, position, mask[position])
                    read = keys.text_length + len(range(position + 1)[keys.image_keys])
                    step_keys[kind] = keys if 3 * read <= position + 1 else None
            self._decode_step_keys[device, position] = step_keys
        return self._decode_step_keys[device, position]

    def layer_masks(
        self, positions: torch.Tensor, key_length: int, decode_position: int | None, output_attentions: bool
    ) -> dict[str, torch.Tensor | DecodeStepKeys]:
        """
        Per attention type, what its layers attend with for the queries at stream `positions` over `key_length` key
        slots (a `StaticCache` holds its whole preallocated length; slots past the stream are never attended to):

        - `flex_attention`: a `BlockMask` ([`build_flex_block_mask`]);
        - `sdpa`, at a decode step (one position, `decode_position`, over a cache of exactly the positions so far)
          whose type allows few of them, without `output_attentions`: the [`DecodeStepKeys`] to read instead of
          masking the prefix;
        - otherwise: the rows of the dense mask, `[1, 1, len(positions), key_length]`.
        """
        implementation = self.config._attn_implementation
        device = positions.device
        if implementation == "flex_attention":
            kinds = set(self.config.attention_types)
            return {kind: build_flex_block_mask(self.config, kind, positions, key_length) for kind in kinds}
        step_keys = {}
        if decode_position is not None and implementation == "sdpa" and not output_attentions:
            step_keys = self.decode_step_keys_at(decode_position, device)
        masks = {}
        for kind, mask in self.attention_masks(device).items():
            if step_keys.get(kind) is not None:
                masks[kind] = step_keys[kind]
                continue
            if key_length > mask.shape[1]:
                mask = F.pad(mask, (0, key_length - mask.shape[1]))
            masks[kind] = mask[:, :key_length].index_select(0, positions)[None, None]
        return masks

    def _check_stream_ids(
        self, ids: torch.Tensor, positions: torch.Tensor, name: str, ignore_index: int | None = None
    ) -> None:
        """Raise a ValueError naming the problem if `ids` (stream positions `positions`) break the layout."""
        config = self.config
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.shape[1] == 0:
            got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"`{name}` must be a non-empty integer tensor of shape (batch, length), got {got}.")
        valid = ids != ignore_index if ignore_index is not None else torch.ones_like(ids, dtype=torch.bool)
        is_image_position = positions >= config.max_text_length
        is_image_id = ids >= config.text_vocab_size
        # One host sync for every check.
        last_position, out_of_range, image_in_text, text_in_image = torch.stack(
            [
                positions[-1],
                (valid & ((ids < 0) | (ids >= config.vocab_size))).any(),
                (valid & is_image_id & ~is_image_position).any(),
                (valid & ~is_image_id & is_image_position).any(),
            ]
        ).tolist()
        if last_position >= config.max_sequence_length:
            raise ValueError(
                f"`{name}` reaches stream position {last_position}, but a DALL-E stream holds at most "
                f"{config.max_sequence_length} tokens (max_text_length={config.max_text_length} text positions + "
                f"image_grid_size**2={config.image_seq_length} image codes)."
            )
        if out_of_range:
            raise ValueError(
                f"`{name}` holds ids outside [0, {config.vocab_size}) (text ids < {config.text_vocab_size}, "
                f"then image codes offset by {config.text_vocab_size})."
            )
        if image_in_text:
            raise ValueError(
                f"`{name}` holds an image code (id >= text_vocab_size={config.text_vocab_size}) at a text position "
                f"(< max_text_length={config.max_text_length}): pad the caption to max_text_length with the pad "
                f"token {config.text_pad_token_id} before the image codes, and use a tokenizer whose vocabulary fits "
                "in text_vocab_size."
            )
        if text_in_image:
            raise ValueError(
                f"`{name}` holds a text token id (< text_vocab_size={config.text_vocab_size}) at an image position "
                f"(>= max_text_length={config.max_text_length}): is the caption longer than max_text_length, or were "
                f"image codes not offset by text_vocab_size?"
            )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        cache = cache_argument(cache, past_key_values)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"`output_attentions=True` needs the eager attention implementation, but this model uses "
                f"{self.config._attn_implementation!r}: load it with `attn_implementation='eager'` or call "
                "`model.set_attn_implementation('eager')` first."
            )
        if self.layers[0].gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The recomputation in the backward pass would write the cache a second time.
            if cache is not None:
                logger.warning_once("A cache is not used with gradient checkpointing in training.")
            cache, use_cache = None, False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        length = input_ids.shape[-1]
        past_length = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(length, device=input_ids.device) + past_length
        if not torch.compiler.is_compiling():
            self._check_stream_ids(input_ids, positions, "input_ids")
            # Empty text positions hold learned pad embeddings, so nothing in a DALL-E stream is ever masked out.
            # (A 4D mask or `BlockMask` that `generate` builds for a compilable cache is causal: the stream's own
            # masks, which only allow fewer keys, replace it.)
            if (
                isinstance(attention_mask, torch.Tensor)
                and attention_mask.ndim == 2
                and not bool(attention_mask.all())
            ):
                raise ValueError(
                    "`attention_mask` must be all ones: DALL-E pads are inputs (each text position has its own "
                    "learned pad embedding), not masked tokens. Leave `attention_mask` out."
                )

        key_length = cache.get_mask_sizes(length, 0)[0] if cache is not None else length
        is_decode_step = length == 1 and not self.training and isinstance(past_length, int)
        decode_position = past_length if is_decode_step and key_length == past_length + 1 else None
        masks = self.layer_masks(positions, key_length, decode_position, output_attentions)

        hidden_states = self.embeddings(input_ids, positions)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, masks[layer.attention_type], cache=cache)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.final_norm(hidden_states)
        if self.head_norm is not None:
            hidden_states = self.head_norm(hidden_states)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_NAME: cache if use_cache else None},
        )
        return output if return_dict else output.to_tuple()


def mask_logits_by_position(logits: torch.Tensor, positions: torch.Tensor, config: DalleConfig) -> torch.Tensor:
    """Set the logits a stream position may not produce to the dtype's lowest value: the logits at position `p`
    predict the token at `p + 1`, which is an image code if `p + 1 >= max_text_length` and a text token otherwise.
    `logits`: `[..., len(positions), vocab_size]`. The lowest finite value rather than -inf, so that the difference
    of two masked logits (classifier-free guidance) stays finite instead of becoming NaN."""
    predicts_image = positions >= config.max_text_length - 1
    vocab_is_image = torch.arange(config.vocab_size, device=logits.device) >= config.text_vocab_size
    return logits.masked_fill(predicts_image[:, None] != vocab_is_image, torch.finfo(logits.dtype).min)


class DalleStreamLogitsProcessor(LogitsProcessor):
    """
    [`LogitsProcessor`] that keeps text tokens at text positions and image codes at image positions of a DALL-E
    stream (`input_ids` starting at stream position 0). [`DalleForImageGeneration`] already masks its logits this
    way; this processor is for scores that come from elsewhere (e.g. mixed for classifier-free guidance).
    """

    def __init__(self, config: DalleConfig):
        self.config = config

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        last_position = torch.tensor([input_ids.shape[1] - 1], device=scores.device)
        return mask_logits_by_position(scores, last_position, self.config)


@dataclass
class DalleCausalLMOutputWithPast(CausalLMOutputWithPast):
    """
    [`CausalLMOutputWithPast`] plus the two terms of the loss:

    text_loss (`torch.FloatTensor`): mean cross-entropy over the text targets (0 if there are none).
    image_loss (`torch.FloatTensor`): mean cross-entropy over the image targets (0 if there are none).
    `loss = text_loss_weight * text_loss + (1 - text_loss_weight) * image_loss`.
    """

    text_loss: torch.FloatTensor | None = None
    image_loss: torch.FloatTensor | None = None


class DalleForImageGeneration(DallePreTrainedModel, GenerationMixin):
    r"""
    The DALL-E transformer prior: [`DalleModel`] plus a linear head over the stream vocabulary (text tokens, then
    image codes). A [`PreTrainedModel`] + [`GenerationMixin`], so `generate()` with any transformers cache (by
    default a [`DallePrefixCache`] for greedy and sampled streams), sampling controls from a `GenerationConfig`,
    `torch.compile`, gradient checkpointing and `from_pretrained` work as for any transformers causal LM.

    **The stream** (`input_ids`): `config.max_text_length` text positions (the caption's BPE ids, then
    `config.text_pad_token_id` in every empty position) followed by up to `config.image_grid_size ** 2` image codes in
    raster order, code `c` written as `config.text_vocab_size + c`. [`DalleTokenizer.encode_captions`] builds the text
    part, [`~DalleForImageGeneration.prepare_input_ids`] appends (offset) image codes, and
    [`~DalleForImageGeneration.image_codes_from_ids`] turns a finished stream back into a `[B, G, G]` code grid for
    [`DalleVAE.decode`]. A pad is an input with its own learned embedding per position: never pass an
    `attention_mask` that hides it.

    **Positions** are absolute: a call's tokens sit at stream positions `cache.get_seq_length() + 0, 1, ...`; every
    row of the batch is at the same position. Calling `model(input_ids=step_ids, cache=cache, use_cache=True)` with
    `step_ids` of shape `[B, 1]` (or any chunk) after a prefill therefore continues the stream, with a
    `DynamicCache`, a [`DallePrefixCache`] or a preallocated `StaticCache` (whose unused slots the masks hide). This
    is all a hand-written decode loop needs. `forward` takes the cache as `cache` or `past_key_values` and returns it
    under the name of the installed transformers (`cache` from 5.24 on).

    **Logits**: `logits[:, i]` predicts the token after position `i`; every logit that this position may not
    produce (text tokens where an image code comes next, and the reverse) is set to the lowest finite value of the
    dtype (probability 0, and still finite under guidance arithmetic), so `generate()` and any sampler draw valid
    streams by construction. [`DalleStreamLogitsProcessor`] applies the same rule to other scores.

    **Attention**: text attends causally to text, image codes attend to all text and to earlier codes through the
    layer's image rule (`config.attention_types`; rules in `IMAGE_ATTENTION_RULES`). Attention runs through
    transformers' attention interface, chosen by `attn_implementation`: `"sdpa"` (default) and `"eager"` (which
    returns the attention weights for `output_attentions`) with the dense masks of [`build_attention_masks`], built
    once per device and sliced by position, and `"flex_attention"` with block masks of the same rules. In training on
    a CPU at half precision, `"sdpa"` runs the eager computation (PyTorch's CPU flash kernel is slow backward there).
    Under `"sdpa"`, a cached inference step of one image position whose type allows at most a third of the prefix
    (row, column and convolutional attention on long streams) reads only those keys
    ([`decode_step_attention_forward`]); `benchmarks/` has the figures.

    **Loss** (`labels`, usually `input_ids`; shifted inside, -100 ignored): cross-entropy of the masked logits,
    averaged separately over text and image targets, weighted `text_loss_weight` and `1 - text_loss_weight`.

    Example:

    ```python
    >>> import torch
    >>> from hf_dalle import DalleConfig, DalleForImageGeneration
    >>> config = DalleConfig(text_vocab_size=64, image_vocab_size=32, max_text_length=8, image_grid_size=4,
    ...                      hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    >>> model = DalleForImageGeneration(config)
    >>> text = torch.tensor([[5, 9, 12, 0, 0, 0, 0, 0]])  # a caption, padded with the pad id 0
    >>> stream = model.generate(text, do_sample=True, top_k=8, max_new_tokens=16)
    >>> codes = model.image_codes_from_ids(stream)  # [1, 4, 4], ready for DalleVAE.decode
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.token_embedding.weight"}

    def __init__(self, config: DalleConfig):
        super().__init__(config)
        self.model = DalleModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """[`~GenerationMixin.generate`], with a [`DallePrefixCache`] of the whole stream as the default cache of
        greedy and sampled streams (the modes that never reorder or roll back the cache): the same tokens as with
        `generate`'s `DynamicCache`, without copying the cache at every step. A cache the caller passes (for example
        the one a previous call returned, to continue its streams), a `cache_implementation` or another decoding
        mode are left to `generate`."""
        if self._takes_prefix_cache(generation_config, kwargs):
            kwargs[CACHE_NAME] = DallePrefixCache(self.config)
        return super().generate(inputs, generation_config, **kwargs)

    def _takes_prefix_cache(self, generation_config, kwargs: dict) -> bool:
        config = generation_config if generation_config is not None else self.generation_config
        return generate_takes_prefix_cache(config, kwargs)

    def prepare_input_ids(
        self, text_input_ids: torch.LongTensor, image_codes: torch.LongTensor | None = None
    ) -> torch.LongTensor:
        """
        Build a stream from caption ids `[B, n <= max_text_length]` (right-padded here with the pad id to
        `max_text_length`) and optional dVAE codes `[B, k]` in raster order or a `[B, h, w]` grid, which are offset by
        `text_vocab_size`. Prime with the top rows of an image by passing its first codes.
        """
        config = self.config
        if (
            not isinstance(text_input_ids, torch.Tensor)
            or text_input_ids.ndim != 2
            or text_input_ids.shape[1] > config.max_text_length
        ):
            raise ValueError(
                f"`text_input_ids` must be a tensor of shape (batch, <= max_text_length={config.max_text_length}), "
                f"got {tuple(text_input_ids.shape) if isinstance(text_input_ids, torch.Tensor) else text_input_ids!r}."
            )
        missing = config.max_text_length - text_input_ids.shape[1]
        stream = F.pad(text_input_ids, (0, missing), value=config.text_pad_token_id)
        if image_codes is not None:
            image_codes = image_codes.flatten(1)
            if image_codes.shape[0] != stream.shape[0] or image_codes.shape[1] > config.image_seq_length:
                raise ValueError(
                    f"`image_codes` must hold at most image_grid_size**2={config.image_seq_length} codes for each of "
                    f"the {stream.shape[0]} captions, got {tuple(image_codes.shape)}."
                )
            if image_codes.numel() and (image_codes.min() < 0 or image_codes.max() >= config.image_vocab_size):
                raise ValueError(f"`image_codes` must lie in [0, {config.image_vocab_size}) (the image vocabulary).")
            stream = torch.cat([stream, image_codes.to(stream) + config.text_vocab_size], dim=1)
        self.model._check_stream_ids(stream, torch.arange(stream.shape[1], device=stream.device), "the stream")
        return stream

    def image_codes_from_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """The image codes of complete streams `[B, max_sequence_length]` as a `[B, G, G]` grid for the dVAE."""
        config = self.config
        if input_ids.ndim != 2 or input_ids.shape[1] != config.max_sequence_length:
            raise ValueError(
                f"`input_ids` must be complete streams of shape (batch, {config.max_sequence_length}), "
                f"got {tuple(input_ids.shape)}."
            )
        self.model._check_stream_ids(input_ids, torch.arange(input_ids.shape[1], device=input_ids.device), "input_ids")
        codes = input_ids[:, config.max_text_length :] - config.text_vocab_size
        return codes.view(-1, config.image_grid_size, config.image_grid_size)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
    ) -> DalleCausalLMOutputWithPast | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, length)`): the stream (or its next chunk when `cache`
                holds the earlier positions); see the class docstring for the layout.
            attention_mask: accepted for `generate()`; a 2D mask must be all ones (pads are inputs, not masked).
            cache (`Cache`): a `DynamicCache`, [`DallePrefixCache`] or `StaticCache` of the earlier positions.
            labels (`torch.LongTensor` of shape `(batch, length)`): usually `input_ids`; shifted inside,
                -100 is ignored.
            logits_to_keep (`int`): compute logits for the last `logits_to_keep` positions only (0 = all).
            output_attentions (`bool`): return each layer's attention weights (eager attention only).
            past_key_values (`Cache`): the cache under its name before transformers 5.24 (pass one of the two).
        """
        cache = cache_argument(cache, past_key_values)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # Positions before the model runs: a StaticCache's length is a tensor that the update increments in place.
        past_length = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device) + past_length
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        length = hidden_states.shape[1]
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        first_kept = length - hidden_states.shape[1]
        text_vocab_size = self.config.text_vocab_size
        # An accelerate hook (device_map / offload) places the head's weight only when `lm_head` itself is called.
        head_is_dispatched = hasattr(self.lm_head, "_hf_hook")
        if (
            isinstance(past_length, int)
            and past_length + first_kept >= self.config.max_text_length - 1
            and not head_is_dispatched
        ):
            # Only image codes can come next: skip the text rows of the head (2/3 of it in the paper's model).
            bias = self.lm_head.bias[text_vocab_size:] if self.lm_head.bias is not None else None
            image_logits = F.linear(hidden_states, self.lm_head.weight[text_vocab_size:], bias)
            logits = F.pad(image_logits, (text_vocab_size, 0), value=torch.finfo(image_logits.dtype).min)
        else:
            logits = mask_logits_by_position(self.lm_head(hidden_states), positions[first_kept:], self.config)

        loss = text_loss = image_loss = None
        if labels is not None:
            if labels.shape != input_ids.shape or first_kept != 0:
                raise ValueError(
                    f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)} with logits for every "
                    f"position (logits_to_keep=0), got labels {tuple(labels.shape)}, logits_to_keep={logits_to_keep}."
                )
            self.model._check_stream_ids(labels, positions, "labels", ignore_index=-100)
            loss, text_loss, image_loss = self.weighted_loss(logits, labels, positions)

        output = DalleCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            text_loss=text_loss,
            image_loss=image_loss,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )
        return output if return_dict else output.to_tuple()

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.LongTensor, positions: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted cross-entropy of the next-token predictions: `(loss, text_loss, image_loss)`."""
        target_labels = labels[:, 1:]
        per_token = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), target_labels, ignore_index=-100, reduction="none"
        )
        valid = target_labels != -100
        is_image_target = (positions[1:] >= self.config.max_text_length)[None, :]

        def mean_over(selected: torch.Tensor) -> torch.Tensor:
            return torch.where(selected, per_token, 0.0).sum() / selected.sum().clamp(min=1)

        text_loss = mean_over(valid & ~is_image_target)
        image_loss = mean_over(valid & is_image_target)
        weight = self.config.text_loss_weight
        return weight * text_loss + (1 - weight) * image_loss, text_loss, image_loss


__all__ = [
    "CACHE_NAME",
    "IMAGE_ATTENTION_RULES",
    "DalleCausalLMOutputWithPast",
    "DalleForImageGeneration",
    "DalleModel",
    "DallePreTrainedModel",
    "DalleResblockGradientScaler",
    "DalleStreamLogitsProcessor",
    "DecodeStepKeys",
    "build_attention_masks",
    "build_flex_block_mask",
    "decode_step_attention_forward",
    "decode_step_keys",
    "eager_attention_forward",
    "mask_logits_by_position",
    "stream_attention_rule",
]
