"""The DALL-E transformer prior (stage 2): a decoder-only transformer over captions followed by dVAE image codes,
with the paper's sparse row / column / convolutional image attention (masks in `masking_dalle.py`)."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from ...loading_utils import CompleteWeightsMixin
from .cache_dalle import DallePrefixCache, generate_takes_prefix_cache
from .configuration_dalle import DalleConfig
from .gradient_scaling_dalle import DalleResblockGradientScaler, resblock_gradient_scaler
from .masking_dalle import DalleAttentionMasks, LayerAttention
from .stream_dalle import (
    build_stream,
    check_attention_mask,
    check_stream_end,
    check_stream_ids,
    image_codes_of_stream,
    mask_logits_by_position,
)


logger = logging.get_logger(__name__)


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


class DalleAttention(nn.Module):
    """Multi-head self-attention with the function and mask that [`DalleAttentionMasks`] gives this layer's attention
    type for the call (`attention`): transformers' `"sdpa"` or `"flex_attention"`, [`eager_attention_forward`], or a
    sparse decode step."""

    def __init__(self, config: DalleConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, attention: LayerAttention, cache: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        output, weights = attention.function(
            self,
            query,
            key,
            value,
            attention.mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(output.reshape(batch_size, length, width)), weights


class DalleMLP(nn.Module):
    def __init__(self, config: DalleConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.approximate = "tanh" if config.hidden_act == "gelu_tanh" else "none"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(hidden_states), approximate=self.approximate))


class DalleBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: `x + attn(ln(x))`, then `x + mlp(ln(x))`; with `config.sandwich_layernorm`,
    `x + ln'(attn(ln(x)))` and `x + ln'(mlp(ln(x)))` (CogView). Dropout ends each residual branch, before `ln'`
    (ruDALL-E's order). Each branch passes through its gradient scaler (`gradient_scaling_dalle.py`), the identity
    unless `config.resblock_gradient_scaling`."""

    def __init__(self, config: DalleConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.attention_types[layer_idx]

        def layer_norm(enabled: bool = True) -> nn.Module:
            return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if enabled else nn.Identity()

        # (In this order: the order of the parameters, which an optimizer's saved state follows.)
        self.attention_norm = layer_norm()
        self.attention = DalleAttention(config, layer_idx)
        self.mlp_norm = layer_norm()
        self.mlp = DalleMLP(config)
        self.attention_output_norm = layer_norm(config.sandwich_layernorm)
        self.mlp_output_norm = layer_norm(config.sandwich_layernorm)
        self.dropout = nn.Dropout(config.dropout)
        self.attention_gradient_scaler = resblock_gradient_scaler(config)
        self.mlp_gradient_scaler = resblock_gradient_scaler(config)

    def residual_branches(self) -> list[tuple[nn.Module, list[nn.Module]]]:
        """Each residual branch's gradient scaler and the modules inside the branch."""
        return [
            (self.attention_gradient_scaler, [self.attention_norm, self.attention, self.attention_output_norm]),
            (self.mlp_gradient_scaler, [self.mlp_norm, self.mlp, self.mlp_output_norm]),
        ]

    def forward(
        self, hidden_states: torch.Tensor, attention: LayerAttention, cache: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output and its attention weights (`None` unless the attention implementation is eager)."""
        scaler = self.attention_gradient_scaler
        output, weights = self.attention(self.attention_norm(scaler.branch_input(hidden_states)), attention, cache)
        hidden_states = hidden_states + scaler.branch_output(self.attention_output_norm(self.dropout(output)))
        scaler = self.mlp_gradient_scaler
        output = self.mlp(self.mlp_norm(scaler.branch_input(hidden_states)))
        hidden_states = hidden_states + scaler.branch_output(self.mlp_output_norm(self.dropout(output)))
        return hidden_states, weights


class DallePreTrainedModel(CompleteWeightsMixin, PreTrainedModel):
    config_class = DalleConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DalleBlock"]
    # The Linear layers that get a LoRA adapter by default (`hf_dalle.lora.add_lora_adapter`): the attention and MLP
    # projections of every block.
    lora_target_modules = ("qkv_proj", "out_proj", "fc_in", "fc_out")
    _skip_keys_device_placement = ["cache"]
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
        config, embedding, head = self.config, self.get_input_embeddings(), self.get_output_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embedding
        if pad_to_multiple_of is not None and not (isinstance(pad_to_multiple_of, int) and pad_to_multiple_of > 0):
            raise ValueError(f"`pad_to_multiple_of` must be a positive integer, got {pad_to_multiple_of!r}.")
        new_num_tokens = config.vocab_size if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        old_text, new_text = config.text_vocab_size, new_num_tokens - config.image_vocab_size
        special = {name: getattr(config, name) for name in ("text_pad_token_id", "bos_token_id", "eos_token_id")}
        highest = max(token_id for token_id in special.values() if token_id is not None)
        if highest >= new_text:
            raise ValueError(
                f"`new_num_tokens`={new_num_tokens} leaves {new_text} text tokens (after the "
                f"image_vocab_size={config.image_vocab_size} image codes are set aside), but the text vocabulary must "
                f"keep the special ids {special}: pass at least {highest + 1 + config.image_vocab_size}."
            )

        def moved(rows: torch.Tensor, init_std: float | None) -> nn.Parameter:
            """The text rows cut or extended to `new_text`, then the image rows."""
            text, image = rows[:old_text], rows[old_text:]
            added = max(new_text - old_text, 0)
            if mean_resizing or init_std is None:
                extra = text.mean(0, keepdim=True).expand(added, *text.shape[1:])
            else:
                extra = torch.randn(added, *text.shape[1:], device=rows.device, dtype=rows.dtype) * init_std
            return nn.Parameter(torch.cat([text[:new_text], extra, image]))

        # The new modules are resized, not new: marked initialised, so that a later `post_init()` keeps them.
        std = config.initializer_range
        with torch.no_grad():
            new_embedding = nn.Embedding(new_num_tokens, config.hidden_size, _weight=moved(embedding.weight, std))
            new_embedding._is_hf_initialized = True
            self.set_input_embeddings(new_embedding)
            if head is not None:
                new_head = nn.Linear(config.hidden_size, new_num_tokens, bias=head.bias is not None, device="meta")
                new_head.weight = new_embedding.weight if config.tie_word_embeddings else moved(head.weight, std)
                if head.bias is not None:
                    new_head.bias = moved(head.bias, None if mean_resizing else 0.0)
                new_head._is_hf_initialized = True
                self.set_output_embeddings(new_head)
        config.text_vocab_size = new_text
        return new_embedding

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
        overflowed = [
            scaler.unscale_gradients(p for module in branch for p in module.parameters())
            for block in self.modules()
            if isinstance(block, DalleBlock)
            for scaler, branch in block.residual_branches()
        ]
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
        self.attention_masks = DalleAttentionMasks(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.token_embedding = value

    def attention_implementation(self, device: torch.device, dtype: torch.dtype) -> str:
        """The attention implementation of a call: the configured one, but eager in place of sdpa in training on a CPU
        at half precision, where PyTorch's CPU flash kernel (SDPA's pick there) is several times slower *backward*
        than matmul + softmax (forward alone it is the faster)."""
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        implementation, half_precision = self.config._attn_implementation, dtype in (torch.float16, torch.bfloat16)
        if implementation == "sdpa" and self.training and device.type == "cpu" and half_precision:
            return "eager"
        return implementation

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
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
        # A StaticCache's length is a tensor that its update increments in place: never read on the host.
        host_length = past_length if isinstance(past_length, int) else None
        # A decode step (one position continuing a cache) has its id from the model's own masked logits: checking its
        # value would wait for the device at every step, so only its position is checked, where that needs no wait.
        is_decode_step = length == 1 and cache is not None and host_length != 0
        if is_decode_step:
            if host_length is not None:
                check_stream_end(self.config, "input_ids", host_length)
        elif not torch.compiler.is_compiling():
            check_stream_ids(self.config, input_ids, "input_ids", positions)
            check_attention_mask(attention_mask)

        key_length = cache.get_mask_sizes(length, 0)[0] if cache is not None else length
        implementation = self.attention_implementation(input_ids.device, self.embeddings.token_embedding.weight.dtype)
        if output_attentions and implementation != "eager":
            logger.warning_once(
                f"`output_attentions=True` needs the eager attention implementation; {implementation!r} returns no "
                "attention weights. Load the model with `attn_implementation='eager'` or call "
                "`model.set_attn_implementation('eager')` to get them."
            )
        attention_function = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        decode_position = host_length if is_decode_step and not self.training else None  # may read fewer keys
        attention = self.attention_masks(attention_function, implementation, positions, key_length, decode_position)

        hidden_states = self.embeddings(input_ids, positions)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, attention[layer.attention_type], cache=cache)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions and implementation == "eager":
                all_attentions += (weights,)
        hidden_states = self.final_norm(hidden_states)
        if self.head_norm is not None:
            hidden_states = self.head_norm(hidden_states)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            cache=cache if use_cache else None,
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

    **Positions** are absolute: a call's tokens sit at stream positions `cache.get_seq_length() + 0, 1, ...`; every
    row of the batch is at the same position. Calling `model(input_ids=step_ids, cache=cache, use_cache=True)` with
    `step_ids` of shape `[B, 1]` (or any chunk) after a prefill therefore continues the stream, with a
    `DynamicCache`, a [`DallePrefixCache`] or a preallocated `StaticCache` (whose unused slots the masks hide). This
    is all a hand-written decode loop needs. The stream's layout is checked where ids enter it (a prefill or chunk,
    `labels`, `generate`'s prompt, [`~DalleForImageGeneration.prepare_input_ids`]), never at a one-token decode step.

    **Logits**: `logits[:, i]` predicts the token after position `i`; every logit that this position may not
    produce (text tokens where an image code comes next, and the reverse) is set to the lowest finite value of the
    dtype (probability 0, and still finite under guidance arithmetic), so `generate()` and any sampler draw valid
    streams by construction. [`DalleStreamLogitsProcessor`] applies the same rule to other scores.

    **Attention**: text attends causally to text, image codes attend to all text and to earlier codes through the
    layer's image rule (`config.attention_types`; the rules and [`DalleAttentionMasks`], which turns them into each
    call's masks, are in `masking_dalle.py`). Attention runs through transformers' attention interface, chosen by
    `attn_implementation`: `"sdpa"` (default) and `"eager"` (which returns the attention weights for
    `output_attentions`) with dense masks built once per device and sliced by position, and `"flex_attention"` with
    block masks of the same rules. In training on a CPU at half precision, `"sdpa"` runs the eager computation
    (PyTorch's CPU flash kernel is slow backward there). Under `"sdpa"`, a cached inference step of one image position
    whose type allows at most a third of the prefix (row, column and convolutional attention on long streams) reads
    only those keys (`DecodeStepKeys`); `benchmarks/` has the figures.

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

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache", raise_if_both_names=True)
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """[`~GenerationMixin.generate`], with the prompt's stream layout checked here (decode steps skip the check)
        and a [`DallePrefixCache`] of the whole stream as the default cache of greedy and sampled streams (the modes
        that never reorder or roll back the cache): the same tokens as with `generate`'s `DynamicCache`, without
        copying the cache at every step. A cache the caller passes (for example the one a previous call returned, to
        continue its streams), a `cache_implementation` or another decoding mode are left to `generate`."""
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(prompt, torch.Tensor):
            check_stream_ids(self.config, prompt, "input_ids")
        if self._takes_prefix_cache(generation_config, kwargs):
            kwargs["cache"] = DallePrefixCache(self.config)
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
        return build_stream(self.config, text_input_ids, image_codes)

    def image_codes_from_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """The image codes of complete streams `[B, max_sequence_length]` as a `[B, G, G]` grid for the dVAE."""
        return image_codes_of_stream(self.config, input_ids)

    # The image-code interface that `DallePipeline` samples, scores and trains through (DalleBartForImageGeneration
    # has the same methods): the caption is the stream's first part, the codes follow it, offset by text_vocab_size.

    def make_cache(self) -> DallePrefixCache:
        """A fresh cache of the whole stream (the one `generate` uses by default)."""
        return DallePrefixCache(self.config)

    def encode_captions(self, input_ids: torch.LongTensor) -> dict[str, torch.Tensor]:
        """Caption ids `[B, max_text_length]` as [`image_code_logits`] reads them, a dict of tensors with one row per
        caption: DALL-E reads the caption within the stream, so there is nothing to compute ahead."""
        return {"input_ids": input_ids}

    def image_code_logits(
        self,
        captions: dict[str, torch.Tensor],
        codes: torch.LongTensor,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """
        The logits over the image codes, `[B, n + 1, image_vocab_size]` (the last `logits_to_keep` positions only, if
        set), of the positions that predict codes `0 .. n` after each caption ([`encode_captions`]) and its codes so
        far `codes` (`[B, n]`, possibly none). With an empty `cache`, the streams are written into it, for
        [`next_image_code_logits`] to continue.
        """
        stream = self.prepare_input_ids(captions["input_ids"], codes)
        logits_to_keep = logits_to_keep or codes.shape[1] + 1
        logits = self(stream, cache=cache, use_cache=cache is not None, logits_to_keep=logits_to_keep).logits
        return logits[..., self.config.text_vocab_size :]

    def next_image_code_logits(
        self, captions: dict[str, torch.Tensor], codes: torch.LongTensor, cache: Cache
    ) -> torch.Tensor:
        """One decode step: the newest codes `[B, 1]` continue the streams in `cache`; returns the logits over the image
        codes of the next position, `[B, image_vocab_size]`."""
        step_ids = codes + self.config.text_vocab_size
        return self(step_ids, cache=cache, use_cache=True).logits[:, -1, self.config.text_vocab_size :]

    def prepare_training_inputs(
        self, text_input_ids: torch.LongTensor, image_codes: torch.LongTensor
    ) -> dict[str, torch.Tensor]:
        """The `forward` arguments whose loss trains the model on captions `[B, max_text_length]` and their image codes
        `[B, G * G]`: the streams, as `input_ids` and `labels`."""
        stream = self.prepare_input_ids(text_input_ids, image_codes)
        return {"input_ids": stream, "labels": stream}

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
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
    ) -> DalleCausalLMOutputWithPast | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, length)`): the stream (or its next chunk when `cache`
                holds the earlier positions); see the class docstring for the layout.
            attention_mask: accepted for `generate()`; a 2D mask must be all ones (pads are inputs, not masked).
            cache (`Cache`): a `DynamicCache`, [`DallePrefixCache`] or `StaticCache` of the earlier positions
                (`past_key_values`, its name before transformers 5.24, still works, with a deprecation warning).
            labels (`torch.LongTensor` of shape `(batch, length)`): usually `input_ids`; shifted inside,
                -100 is ignored.
            logits_to_keep (`int`): compute logits for the last `logits_to_keep` positions only (0 = all).
            output_attentions (`bool`): return each layer's attention weights (eager attention only; other
                implementations warn and return none).
        """
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
        logits = self.stream_logits(hidden_states, positions[first_kept:], past_length + first_kept)

        loss = text_loss = image_loss = None
        if labels is not None:
            if labels.shape != input_ids.shape or first_kept != 0:
                raise ValueError(
                    f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)} with logits for every "
                    f"position (logits_to_keep=0), got labels {tuple(labels.shape)}, logits_to_keep={logits_to_keep}."
                )
            check_stream_ids(self.config, labels, "labels", positions, ignore_index=-100)
            loss, text_loss, image_loss = self.weighted_loss(logits, labels, positions)

        output = DalleCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            text_loss=text_loss,
            image_loss=image_loss,
        )
        return output if return_dict else output.to_tuple()

    def stream_logits(
        self, hidden_states: torch.Tensor, positions: torch.Tensor, first_position: int | torch.Tensor
    ) -> torch.Tensor:
        """The head's logits at stream `positions` (the first one `first_position`, an int unless a StaticCache's),
        masked by [`mask_logits_by_position`]."""
        text_vocab_size, head = self.config.text_vocab_size, self.lm_head
        # Where only image codes can come next, skip the text rows of the head (2/3 of it in the paper's model); not
        # under an accelerate hook (device_map / offload), which places the weight only when `lm_head` is called.
        only_images = isinstance(first_position, int) and first_position >= self.config.max_text_length - 1
        if only_images and not hasattr(head, "_hf_hook"):
            bias = head.bias[text_vocab_size:] if head.bias is not None else None
            image_logits = F.linear(hidden_states, head.weight[text_vocab_size:], bias)
            return F.pad(image_logits, (text_vocab_size, 0), value=torch.finfo(image_logits.dtype).min)
        return mask_logits_by_position(head(hidden_states), positions, self.config)

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
    "DalleForImageGeneration",
    "DalleModel",
    "DallePreTrainedModel",
    "eager_attention_forward",
]
