"""The DALL-E transformer prior (stage 2): a decoder-only transformer over captions followed by dVAE image codes,
with the paper's sparse row / column / convolutional image attention."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LogitsProcessor, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache
from transformers.generation import GenerationMode
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_dalle import DalleConfig


def build_attention_masks(config: DalleConfig, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """
    The boolean attention masks (`True` = may attend) of the full stream, one `[S, S]` matrix per attention type used
    by `config`, where `S = max_text_length + image_grid_size ** 2`.

    Text queries attend causally to text; image queries attend to all text. Between image codes at raster indices
    `i` (query) and `j` (key), every type requires `j <= i`, and with `G = image_grid_size`,
    `h = conv_kernel_size // 2`:

    - `"full"`: every earlier code;
    - `"row"`: `i - j <= G`, the code itself and the `G` codes before it (the paper's "previous grid + 1 tokens": the
      rest of its row to the left and the previous row from its own column on);
    - `"column"`: `(i - j) % G == 0`, the same column in earlier rows, and itself;
    - `"conv"`: `i - j = dr * G + dc` with `0 <= dr <= h` and `-h <= dc <= h`: the causal half of the
      `conv_kernel_size` x `conv_kernel_size` neighbourhood centred on the code, laid over the raster sequence, so
      near the left and right edges it wraps around onto the neighbouring row.
    """
    text_length, grid = config.max_text_length, config.image_grid_size
    positions = torch.arange(config.max_sequence_length, device=device)
    query, key = positions[:, None], positions[None, :]
    causal = key <= query
    image_pair = (query >= text_length) & (key >= text_length)
    offset = query - key  # raster distance between two image codes

    half = config.conv_kernel_size // 2
    kernel_offsets = torch.tensor(
        [dr * grid + dc for dr in range(half + 1) for dc in range(-half, half + 1) if dr * grid + dc >= 0],
        device=device,
    )
    image_rules = {
        "full": lambda: causal,
        "row": lambda: causal & (offset <= grid),
        "column": lambda: causal & (offset % grid == 0),
        "conv": lambda: torch.isin(offset, kernel_offsets),
    }
    return {kind: torch.where(image_pair, image_rules[kind](), causal) for kind in set(config.attention_types)}


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


def decode_step_keys(config: DalleConfig, kind: str, position: int, mask_row: torch.Tensor) -> DecodeStepKeys:
    """The [`DecodeStepKeys`] of the query at image stream `position` for attention type `kind`; `mask_row` is that
    query's row of `build_attention_masks(config)[kind]`, from which a window's mask is sliced where the window also
    holds keys the type skips (convolutional attention)."""
    text_length, grid = config.max_text_length, config.image_grid_size
    image_index = position - text_length
    if kind == "column":
        return DecodeStepKeys(text_length, slice(text_length + image_index % grid, position + 1, grid))
    reach = {"full": image_index, "row": grid, "conv": (config.conv_kernel_size // 2) * (grid + 1)}[kind]
    window = slice(max(text_length, position - reach), position + 1)
    return DecodeStepKeys(text_length, window, mask_row[window] if kind == "conv" else None)


def decode_step_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keys: DecodeStepKeys
) -> torch.Tensor:
    """Attention of one query position over the text keys and the `keys.image_keys` of `key` / `value` (views, no
    copy): the scores of both parts share one softmax (in float32), so this equals `scaled_dot_product_attention`
    with the full mask row."""
    text, image = slice(0, keys.text_length), keys.image_keys
    query = query * (1 / math.sqrt(query.shape[-1]))
    text_scores = query @ key[:, :, text].transpose(-1, -2)
    image_scores = query @ key[:, :, image].transpose(-1, -2)
    if keys.image_mask is not None:
        image_scores = image_scores.masked_fill(~keys.image_mask, float("-inf"))
    weights = torch.cat([text_scores, image_scores], dim=-1).softmax(-1, dtype=torch.float32).to(value.dtype)
    return weights[..., text] @ value[:, :, text] + weights[..., keys.text_length :] @ value[:, :, image]


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


class PrefixLayer(CacheLayerMixin):
    """One layer's keys and values, written in place into buffers of `max_cache_len` positions allocated at the first
    update; `update` returns views of the filled prefix only. Attention thus reads exactly the positions written so
    far, with no per-step copy of the whole cache (a `DynamicLayer` concatenates) and no attention over empty slots
    (a `StaticLayer` returns all of them). The prefix grows every step, so it is not for `torch.compile`: use a
    `StaticCache` there."""

    is_croppable = True

    def __init__(self, max_cache_len: int):
        super().__init__()
        self.max_cache_len = max_cache_len
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch_size, num_heads = key_states.shape[:2]
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(batch_size, num_heads, self.max_cache_len, key_states.shape[-1])
        self.values = value_states.new_zeros(batch_size, num_heads, self.max_cache_len, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.max_cache_len:
            raise ValueError(f"The cache holds {self.max_cache_len} positions; this update would fill {end}.")
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_cache_len

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (a negative count, as `DynamicLayer.crop` takes)."""
        if tokens_to_remove > 0:
            raise ValueError(f"`crop` takes minus the number of positions to remove, got {tokens_to_remove}.")
        self.length = max(self.length + tokens_to_remove, 0)

    def reset(self) -> None:
        super().reset()
        self.length = 0


class DallePrefixCache(Cache):
    """The cache `DalleForImageGeneration.generate` uses by default: a [`PrefixLayer`] per layer, sized for the
    whole stream. Same keys and values as a `DynamicCache`, without its per-step concatenation (at batch 32 on one CPU
    thread, a quarter of the forward's time in the 8x8 benchmark)."""

    def __init__(self, config: DalleConfig, max_cache_len: int | None = None):
        max_cache_len = max_cache_len or config.max_sequence_length
        super().__init__(layers=[PrefixLayer(max_cache_len) for _ in range(config.num_hidden_layers)])


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


def matmul_softmax_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor, dropout: float = 0.0
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with a boolean mask (`True` = may attend, at least one per query) written out,
    the softmax in float32."""
    scores = (query @ key.transpose(-1, -2)) * (1 / math.sqrt(query.shape[-1]))
    weights = scores.masked_fill(~attention_mask, float("-inf")).softmax(-1, dtype=torch.float32).to(value.dtype)
    return F.dropout(weights, dropout) @ value


class DalleAttention(nn.Module):
    def __init__(self, config: DalleConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_type = config.attention_types[layer_idx]
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | DecodeStepKeys,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        batch_size, length, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        if isinstance(attention_mask, DecodeStepKeys):
            output = decode_step_attention(query, key, value, attention_mask)
        elif self.training and query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
            # PyTorch's CPU flash-attention kernel, the one SDPA picks here, is 3-4x slower *backward* in half
            # precision than matmul + softmax (forward alone it is the faster): training the demo model in bf16 on a
            # CPU takes 0.40 s a step this way instead of 1.0 s.
            output = matmul_softmax_attention(query, key, value, attention_mask, self.dropout)
        else:
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out_proj(output.transpose(1, 2).reshape(batch_size, length, width))


class DalleMLP(nn.Module):
    def __init__(self, config: DalleConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(hidden_states)))


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
    """Pre-norm transformer block: `x + attn(ln(x))`, then `x + mlp(ln(x))`. With
    `config.resblock_gradient_scaling`, each of the two residual branches has its own gradient scaler."""

    def __init__(self, config: DalleConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.attention_types[layer_idx]
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = DalleAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DalleMLP(config)
        self.dropout = nn.Dropout(config.dropout)
        scaling = config.resblock_gradient_scaling
        self.attention_gradient_scaler = DalleResblockGradientScaler(config) if scaling else None
        self.mlp_gradient_scaler = DalleResblockGradientScaler(config) if scaling else None

    def residual_branches(self) -> list[tuple[DalleResblockGradientScaler | None, list[nn.Module]]]:
        """Each residual branch's gradient scaler and the modules inside the branch."""
        return [
            (self.attention_gradient_scaler, [self.attention_norm, self.attention]),
            (self.mlp_gradient_scaler, [self.mlp_norm, self.mlp]),
        ]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | DecodeStepKeys,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        if self.attention_gradient_scaler is None or not torch.is_grad_enabled():
            attention = self.attention(self.attention_norm(hidden_states), attention_mask, past_key_values)
            hidden_states = hidden_states + self.dropout(attention)
            return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))

        scaler = self.attention_gradient_scaler
        branch = self.attention_norm(scaler.branch_input(hidden_states))
        attention = self.attention(branch, attention_mask, past_key_values)
        hidden_states = hidden_states + scaler.branch_output(self.dropout(attention))
        scaler = self.mlp_gradient_scaler
        mlp = self.mlp(self.mlp_norm(scaler.branch_input(hidden_states)))
        return hidden_states + scaler.branch_output(self.dropout(mlp))


class DallePreTrainedModel(PreTrainedModel):
    config_class = DalleConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DalleBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
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
        of the prefix (a conv window counts whole; measured on a CPU: skipping fewer keys than that does not repay
        the extra kernels). Built on first use."""
        if (device, position) not in self._decode_step_keys:
            step_keys = dict.fromkeys(self.config.attention_types)
            if position >= self.config.max_text_length:
                for kind, mask in self.attention_masks(device).items():
                    keys = decode_step_keys(self.config, kind, position, mask[position])
                    allowed = keys.text_length + len(range(position + 1)[keys.image_keys])
                    step_keys[kind] = keys if 3 * allowed <= position + 1 else None
            self._decode_step_keys[device, position] = step_keys
        return self._decode_step_keys[device, position]

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
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)

        length = input_ids.shape[-1]
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        positions = torch.arange(length, device=input_ids.device) + past_length
        if not torch.compiler.is_compiling():
            self._check_stream_ids(input_ids, positions, "input_ids")
            # Empty text positions hold learned pad embeddings, so nothing in a DALL-E stream is ever masked out.
            if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
                raise ValueError(
                    "`attention_mask` must be all ones: DALL-E pads are inputs (each text position has its own "
                    "learned pad embedding), not masked tokens. Leave `attention_mask` out."
                )

        # Rows of the stream masks at the query positions, over every key slot the cache will hold after this step
        # (a StaticCache holds its whole preallocated length; slots past the stream are never attended to).
        key_length = past_key_values.get_mask_sizes(length, 0)[0] if past_key_values is not None else length
        masks = {}
        # An inference step of one position over a cache of exactly the positions so far: where its type allows few
        # of them, attend to views of those keys (`DecodeStepKeys`) instead of masking the whole prefix.
        decode_step = (
            length == 1 and not self.training and isinstance(past_length, int) and key_length == past_length + 1
        )
        step_keys = self.decode_step_keys_at(past_length, input_ids.device) if decode_step else {}
        for kind, mask in self.attention_masks(input_ids.device).items():
            if step_keys.get(kind) is not None:
                masks[kind] = step_keys[kind]
                continue
            if key_length > mask.shape[1]:
                mask = F.pad(mask, (0, key_length - mask.shape[1]))
            masks[kind] = mask[:, :key_length].index_select(0, positions)

        hidden_states = self.embeddings(input_ids, positions)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, masks[layer.attention_type], past_key_values=past_key_values)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.final_norm(hidden_states)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden_states,
        )
        return output if return_dict else output.to_tuple()


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

    **Positions** are absolute: a call's tokens sit at stream positions `past_key_values.get_seq_length() + 0, 1,
    ...`; every row of the batch is at the same position. Calling `model(input_ids=step_ids,
    past_key_values=cache, use_cache=True)` with `step_ids` of shape `[B, 1]` (or any chunk) after a prefill
    therefore continues the stream, with a `DynamicCache`, a [`DallePrefixCache`] or a preallocated `StaticCache`
    (whose unused slots the masks hide). This is all a hand-written decode loop needs.

    **Logits**: `logits[:, i]` predicts the token after position `i`; every logit that this position may not
    produce (text tokens where an image code comes next, and the reverse) is set to the lowest finite value of the
    dtype (probability 0, and still finite under guidance arithmetic), so `generate()` and any sampler draw valid
    streams by construction. [`DalleStreamLogitsProcessor`] applies the same rule to other scores.

    **Attention**: text attends causally to text, image codes attend to all text and to earlier codes through the
    layer's image mask (`config.attention_types`, masks defined in [`build_attention_masks`]). Masks are built once
    per device and sliced by position; attention runs through `torch.nn.functional.scaled_dot_product_attention`
    (in training on a CPU at half precision, through `matmul_softmax_attention`, several times faster backward). A
    cached inference step of one image position whose type allows at most a third of the prefix (row, column and
    convolutional attention on long streams) reads only those keys ([`decode_step_attention`]): on one CPU thread,
    with a 32-token caption, `generate` runs 1.2x as fast with a 16x16 grid at batch 32 and 1.4x with a 32x32 grid at
    batch 8 (the same at batch 1).

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

    def create_masks_for_generate(self, **kwargs) -> None:
        # `generate` builds a 4D causal mask for compilable caches; the model uses its own stream masks instead.
        return None

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ) -> None:
        """`generate`'s default cache is a `DynamicCache`; for greedy and sampled streams (the modes that never
        reorder or roll back) a [`DallePrefixCache`] of the generation's length replaces it: same results, no copy
        of the cache at every step. A cache the caller passes, or `cache_implementation`, is used as given."""
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )
        cache = model_kwargs.get("past_key_values")
        if (
            type(cache) is DynamicCache
            and not getattr(cache, "_is_user_defined", False)
            and generation_config.cache_implementation in (None, "dynamic")
            and generation_mode in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)
            and not generation_config.is_assistant
        ):
            model_kwargs["past_key_values"] = DallePrefixCache(self.config, max_cache_len=max_cache_length)

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
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DalleCausalLMOutputWithPast | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, length)`): the stream (or its next chunk when
                `past_key_values` holds the earlier positions); see the class docstring for the layout.
            attention_mask: accepted for `generate()`; must be all ones (pads are inputs, not masked).
            past_key_values (`Cache`): a `DynamicCache`, [`DallePrefixCache`] or `StaticCache` of the earlier
                positions.
            labels (`torch.LongTensor` of shape `(batch, length)`): usually `input_ids`; shifted inside,
                -100 is ignored.
            logits_to_keep (`int`): compute logits for the last `logits_to_keep` positions only (0 = all).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # Positions before the model runs: a StaticCache's length is a tensor that the update increments in place.
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device) + past_length
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
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
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            text_loss=text_loss,
            image_loss=image_loss,
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
    "DalleCausalLMOutputWithPast",
    "DallePrefixCache",
    "DalleForImageGeneration",
    "DalleModel",
    "DallePreTrainedModel",
    "DalleResblockGradientScaler",
    "DalleStreamLogitsProcessor",
    "DecodeStepKeys",
    "build_attention_masks",
    "decode_step_attention",
    "decode_step_keys",
    "PrefixLayer",
    "mask_logits_by_position",
]
