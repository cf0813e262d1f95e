"""DALL·E Mini / Mega (dalle-mini's `DalleBart`): a BART-like encoder over the caption and a decoder that writes VQGAN
image codes, with the layers of the released models (biasless projections, NormFormer LayerNorms, GLU
feed-forward). Parameter names follow min-dalle's PyTorch modules, so its state dicts map onto this model by prefix."""

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import (
    ClassifierFreeGuidanceLogitsProcessor,
    LogitsProcessorList,
    SuppressTokensLogitsProcessor,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions, Seq2SeqLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from ...loading_utils import CompleteWeightsMixin
from ..dalle.cache_dalle import PrefixLayer, generate_takes_prefix_cache
from .configuration_dalle_bart import DalleBartConfig


logger = logging.get_logger(__name__)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, with a boolean mask (`True` = may attend; `None` = everything) and the softmax in
    float32; returns the output `[B, L, H, D]` and the attention weights `[B, H, L, K]`."""
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(-1, dtype=torch.float32).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


class DalleBartAttention(nn.Module):
    """Multi-head attention without biases, through the implementation `config._attn_implementation` names in
    transformers' `ALL_ATTENTION_FUNCTIONS` (`"sdpa"` by default) or [`eager_attention_forward`] (`"eager"`).

    In the decoder, with an `EncoderDecoderCache`, self-attention appends its keys and values to the self-attention
    cache, and cross-attention projects the encoder states into keys and values once, at the first step, and reads
    them from the cross-attention cache afterwards (min-dalle projects them again in every layer at every step)."""

    def __init__(self, config: DalleBartConfig, layer_idx: int | None = None, is_causal: bool = False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal  # read by transformers' SDPA when no mask is given
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        is_cross_attention = key_value_states is not None
        query = self._heads(self.q_proj(hidden_states))
        if is_cross_attention and isinstance(cache, EncoderDecoderCache) and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = layer.keys, layer.values
        else:
            source = key_value_states if is_cross_attention else hidden_states
            key, value = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
            if isinstance(cache, EncoderDecoderCache):
                layer_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
                key, value = layer_cache.update(key, value, self.layer_idx)
                if is_cross_attention:
                    cache.is_updated[self.layer_idx] = True
            elif cache is not None:
                key, value = cache.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
        )
        return self.out_proj(output.reshape(*hidden_states.shape[:-1], -1)), weights


class DalleBartGLU(nn.Module):
    """The feed-forward of every layer, a GLU with two LayerNorms of its own (NormFormer):
    `fc2(ln1(gelu(fc0(ln0(x))) * fc1(ln0(x))))`, exact GELU, no biases."""

    def __init__(self, config: DalleBartConfig):
        super().__init__()
        width, inner = config.hidden_size, config.intermediate_size
        self.ln0 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.fc0 = nn.Linear(width, inner, bias=False)
        self.fc1 = nn.Linear(width, inner, bias=False)
        self.ln1 = nn.LayerNorm(inner, eps=config.layer_norm_eps)
        self.fc2 = nn.Linear(inner, width, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.ln0(hidden_states)
        return self.fc2(self.ln1(F.gelu(self.fc0(hidden_states)) * self.fc1(hidden_states)))


class DalleBartEncoderLayer(GradientCheckpointingLayer):
    """`x + ln(attn(ln(x)))`, then `x + glu(x)` (the GLU normalises its own input)."""

    def __init__(self, config: DalleBartConfig):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = DalleBartAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.glu = DalleBartGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention, weights = self.self_attn(self.pre_self_attn_layer_norm(hidden_states), attention_mask)
        hidden_states = hidden_states + self.dropout(self.self_attn_layer_norm(attention))
        return hidden_states + self.dropout(self.glu(hidden_states)), weights


class DalleBartDecoderLayer(GradientCheckpointingLayer):
    """`x + ln(self_attn(ln(x)))`, `x + ln(cross_attn(ln(x), encoder states))`, then `x + glu(x)`."""

    def __init__(self, config: DalleBartConfig, layer_idx: int):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.pre_self_attn_layer_norm = nn.LayerNorm(width, eps=eps)
        self.self_attn = DalleBartAttention(config, layer_idx, is_causal=True)
        self.self_attn_layer_norm = nn.LayerNorm(width, eps=eps)
        self.pre_encoder_attn_layer_norm = nn.LayerNorm(width, eps=eps)
        self.encoder_attn = DalleBartAttention(config, layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(width, eps=eps)
        self.glu = DalleBartGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        attention, self_weights = self.self_attn(
            self.pre_self_attn_layer_norm(hidden_states), attention_mask, cache=cache
        )
        hidden_states = hidden_states + self.dropout(self.self_attn_layer_norm(attention))
        attention, cross_weights = self.encoder_attn(
            self.pre_encoder_attn_layer_norm(hidden_states),
            encoder_attention_mask,
            key_value_states=encoder_hidden_states,
            cache=cache,
        )
        hidden_states = hidden_states + self.dropout(self.encoder_attn_layer_norm(attention))
        return hidden_states + self.dropout(self.glu(hidden_states)), self_weights, cross_weights


class DalleBartPreTrainedModel(CompleteWeightsMixin, PreTrainedModel):
    config_class = DalleBartConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DalleBartEncoderLayer", "DalleBartDecoderLayer"]
    # The Linear layers that get a LoRA adapter by default (`hf_dalle.lora.add_lora_adapter`): the self- and
    # cross-attention projections and the GLU of every encoder and decoder layer.
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "out_proj", "fc0", "fc1", "fc2")
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """A 2D mask over caption positions (1 = token, 0 = pad) as the boolean `[B, 1, 1, T]` mask of attention over
    them."""
    return attention_mask.bool()[:, None, None, :]


class DalleBartEncoder(DalleBartPreTrainedModel):
    """The caption encoder: token + learned position embedding, `layernorm_embedding`, the layers, `final_ln`."""

    def __init__(self, config: DalleBartConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.text_vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_text_length, config.hidden_size)
        self.layernorm_embedding = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([DalleBartEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.final_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        """`attention_mask` (1 = token, 0 = pad) defaults to `input_ids != config.text_pad_token_id`: DALL·E Mini
        never attends to its pads."""
        length = input_ids.shape[-1]
        if length > self.config.max_text_length:
            raise ValueError(
                f"The caption has {length} tokens, but the encoder has positions for max_text_length="
                f"{self.config.max_text_length}."
            )
        if attention_mask is None:
            attention_mask = input_ids != self.config.text_pad_token_id
        mask = padding_mask(attention_mask)
        positions = torch.arange(length, device=input_ids.device)
        hidden_states = self.layernorm_embedding(self.embed_tokens(input_ids) + self.embed_positions(positions))
        hidden_states = self.dropout(hidden_states)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = layer(hidden_states, mask)
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.final_ln(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        output = BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )
        return output if return_dict is not False else output.to_tuple()


class DalleBartDecoder(DalleBartPreTrainedModel):
    """The image-code decoder: code + learned position embedding, `layernorm_embedding`, the layers (self-attention
    over the codes so far, cross-attention over the caption), `final_ln`. Position `p` holds the start token (`p = 0`)
    or code `p - 1` and predicts code `p`."""

    def __init__(self, config: DalleBartConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.decoder_vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.image_seq_length, config.hidden_size)
        self.layernorm_embedding = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([DalleBartDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.final_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        """`encoder_attention_mask` (1 = caption token, 0 = pad; `None` = attend to all) is the caption's mask. With a
        `cache`, `input_ids` continue the codes it holds."""
        past_length = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[-1]
        if past_length + length > self.config.image_seq_length:
            raise ValueError(
                f"The decoder has positions for image_grid_size**2={self.config.image_seq_length} inputs (the start "
                f"token and {self.config.image_seq_length - 1} codes); this call would fill {past_length + length}."
            )
        positions = torch.arange(past_length, past_length + length, device=input_ids.device)
        # One new position attends to everything cached (no mask); several attend causally.
        causal_mask = positions[:, None] >= torch.arange(past_length + length, device=input_ids.device)
        self_mask = causal_mask[None, None] if length > 1 else None
        cross_mask = padding_mask(encoder_attention_mask) if encoder_attention_mask is not None else None

        hidden_states = self.layernorm_embedding(self.embed_tokens(input_ids) + self.embed_positions(positions))
        hidden_states = self.dropout(hidden_states)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, self_weights, cross_weights = layer(
                hidden_states, self_mask, encoder_hidden_states, cross_mask, cache
            )
            if output_attentions:
                all_attentions += (self_weights,)
                all_cross_attentions += (cross_weights,)
        hidden_states = self.final_ln(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            cross_attentions=all_cross_attentions,
            cache=cache,
        )
        return output if return_dict is not False else output.to_tuple()


class DalleBartModel(DalleBartPreTrainedModel):
    """The encoder and the decoder, without the output head."""

    def __init__(self, config: DalleBartConfig):
        super().__init__(config)
        self.encoder = DalleBartEncoder(config)
        self.decoder = DalleBartDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> tuple[BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions]:
        """The encoder's output (run here unless `encoder_outputs` is given) and the decoder's."""
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("Pass the caption ids (`input_ids`) or the encoder's output (`encoder_outputs`).")
            if attention_mask is None:
                attention_mask = input_ids != self.config.text_pad_token_id
            encoder_outputs = self.encoder(
                input_ids, attention_mask, output_attentions, output_hidden_states, return_dict=True
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if decoder_input_ids is None:
            raise ValueError(
                "Pass `decoder_input_ids` (the start token, then the codes so far), or `labels` to the "
                "DalleBartForImageGeneration forward."
            )
        decoder_outputs = self.decoder(
            decoder_input_ids,
            encoder_outputs.last_hidden_state,
            attention_mask,
            cache,
            output_attentions,
            output_hidden_states,
            return_dict=True,
        )
        return encoder_outputs, decoder_outputs


class DalleBartForImageGeneration(DalleBartPreTrainedModel, GenerationMixin):
    r"""
    DALL·E Mini / Mega: [`DalleBartModel`] plus the output head over the decoder's table (`lm_head`, no bias,
    `config.decoder_vocab_size` rows, of which the first `config.image_vocab_size` are the VQGAN's codes). A
    transformers encoder-decoder (`PreTrainedModel` + `GenerationMixin`): `generate()`, `from_pretrained`, Auto
    classes (`AutoModelForSeq2SeqLM`), the attention interface (`attn_implementation="sdpa"`, the default, or
    `"eager"`, which returns attention weights), gradient checkpointing.

    **Inputs**: `input_ids` are caption ids `[B, <= max_text_length]` (`DalleBartTokenizer.encode_captions`), whose pads
    are masked out of every attention (`attention_mask` defaults to `input_ids != config.text_pad_token_id`);
    `decoder_input_ids` are the start token followed by the codes so far. `forward` takes the decoder's cache as
    `cache` (the older name `past_key_values` still works, with a deprecation warning) and returns it as `cache`.

    **Generation**: `generate(input_ids, attention_mask=..., do_sample=True, top_k=256, guidance_scale=16)` returns
    `[B, 1 + n]` decoder ids, the start token then `n` codes (`max_new_tokens` defaults to `image_grid_size ** 2`);
    [`~DalleBartForImageGeneration.image_codes_from_ids`] turns them into the `[B, G, G]` grid that
    `DalleVQGAN.decode` draws. Sampling only ever picks image codes (the extra rows of the head are suppressed, as
    min-dalle reads only the first 16384 logits). `guidance_scale > 1` is min-dalle's "super-conditioning", i.e.
    classifier-free guidance against the empty caption `<s> </s>`: the batch is doubled with the unconditional
    captions (encoded once, with the captions) and transformers' `ClassifierFreeGuidanceLogitsProcessor` mixes the
    two halves, `uncond + scale * (cond - uncond)`, before any other processor, as MusicGen does. By default greedy
    and sampled generation use an `EncoderDecoderCache` of [`~DalleBartForImageGeneration.make_cache`]: the codes'
    keys and values written in place into buffers of the whole image, and the caption's cross-attention keys and
    values computed once per caption.

    **Loss** (`labels`: the codes `[B, n]`, -100 ignored): cross-entropy of the head's logits, the decoder's inputs
    being the labels shifted right behind the start token.

    Example:

    ```python
    >>> import torch
    >>> from hf_dalle import DalleBartConfig, DalleBartForImageGeneration
    >>> config = DalleBartConfig(text_vocab_size=64, image_vocab_size=32, decoder_vocab_size=33, max_text_length=8,
    ...                          image_grid_size=4, hidden_size=32, encoder_layers=2, decoder_layers=2,
    ...                          num_attention_heads=4, intermediate_size=48, decoder_start_token_id=32)
    >>> model = DalleBartForImageGeneration(config)
    >>> captions = torch.tensor([[0, 9, 12, 2, 1, 1, 1, 1]])  # <s> ... </s>, padded with 1
    >>> ids = model.generate(captions, do_sample=True, top_k=8, guidance_scale=4.0)  # [1, 1 + 16]
    >>> codes = model.image_codes_from_ids(ids)  # [1, 4, 4], for DalleVQGAN.decode
    ```
    """

    def __init__(self, config: DalleBartConfig):
        super().__init__(config)
        self.model = DalleBartModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.decoder_vocab_size, bias=False)
        self.post_init()

    def get_encoder(self) -> DalleBartEncoder:
        return self.model.encoder

    def get_decoder(self) -> DalleBartDecoder:
        return self.model.decoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    def make_cache(self) -> EncoderDecoderCache:
        """The cache that `generate` uses by default: for self-attention, a `PrefixLayer` per decoder layer (the codes'
        keys and values written in place into buffers of `image_grid_size ** 2` positions, read as the written
        prefix, so that no step copies the cache as a `DynamicCache` does); for cross-attention, a `DynamicCache`
        that the first step fills with the caption's keys and values."""
        layers = [PrefixLayer(self.config.image_seq_length) for _ in range(self.config.decoder_layers)]
        return EncoderDecoderCache(Cache(layers=layers), DynamicCache())

    def unconditional_input_ids(self, batch_size: int, length: int | None = None, device=None) -> torch.LongTensor:
        """The empty caption of classifier-free guidance, `<s> </s>` then pads, `[batch_size, length]` (`length`
        defaults to `max_text_length`): min-dalle's unconditional row."""
        config = self.config
        length = length or config.max_text_length
        ids = torch.full((batch_size, length), config.text_pad_token_id, dtype=torch.long, device=device)
        ids[:, 0], ids[:, 1] = config.text_bos_token_id, config.text_eos_token_id
        return ids

    def image_codes_from_ids(self, sequences: torch.LongTensor) -> torch.LongTensor:
        """The codes of complete decoder sequences `[B, 1 + image_grid_size**2]` (what `generate` returns: the start
        token, then the codes) as `[B, G, G]` grids for `DalleVQGAN.decode`."""
        config = self.config
        if sequences.ndim != 2 or sequences.shape[1] != 1 + config.image_seq_length:
            raise ValueError(
                f"`sequences` must be complete decoder sequences of shape (batch, 1 + {config.image_seq_length}), "
                f"got {tuple(sequences.shape)}."
            )
        codes = sequences[:, 1:]
        if codes.min() < 0 or codes.max() >= config.image_vocab_size:
            raise ValueError(f"The sequences hold ids outside the image codes [0, {config.image_vocab_size}).")
        return codes.reshape(-1, config.image_grid_size, config.image_grid_size)

    # The image-code interface that `DallePipeline` samples, scores and trains through (DalleForImageGeneration has
    # the same methods): the caption conditions the decoder through the encoder's states, which the cross-attention
    # reads; the decoder's inputs are the start token, then the codes.

    def encode_captions(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the encoder once over caption ids `[B, T]`: `{"encoder_hidden_states": [B, T, hidden_size],
        "attention_mask": [B, T]}` (the mask defaults to the non-pad positions), one row per caption, what every decode
        step's cross-attention reads."""
        if attention_mask is None:
            attention_mask = input_ids != self.config.text_pad_token_id
        states = self.get_encoder()(input_ids, attention_mask, return_dict=True).last_hidden_state
        return {"encoder_hidden_states": states, "attention_mask": attention_mask}

    def image_code_logits(
        self,
        captions: dict[str, torch.Tensor],
        codes: torch.LongTensor,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """
        The logits over the image codes, `[B, n + 1, image_vocab_size]` (the last `logits_to_keep` positions only, if
        set), of the decoder positions that predict codes `0 .. n` for each caption ([`encode_captions`]) after the
        start token and the codes so far `codes` (`[B, n]`, possibly none). With an empty `cache` (from
        [`make_cache`]), the codes' keys and values and the caption's cross-attention ones are written into it, for
        [`next_image_code_logits`] to continue.
        """
        start = codes.new_full((codes.shape[0], 1), self.config.decoder_start_token_id)
        return self._decoder_code_logits(captions, torch.cat([start, codes], dim=1), cache, logits_to_keep)

    def next_image_code_logits(
        self, captions: dict[str, torch.Tensor], codes: torch.LongTensor, cache: Cache
    ) -> torch.Tensor:
        """One decode step: the newest codes `[B, 1]` continue the decoder's inputs in `cache`; returns the logits over
        the image codes of the next position, `[B, image_vocab_size]`."""
        return self._decoder_code_logits(captions, codes, cache, logits_to_keep=1)[:, -1]

    def _decoder_code_logits(
        self, captions: dict[str, torch.Tensor], decoder_input_ids: torch.LongTensor, cache, logits_to_keep: int
    ) -> torch.Tensor:
        output = self(
            attention_mask=captions["attention_mask"],
            decoder_input_ids=decoder_input_ids,
            encoder_outputs=BaseModelOutput(last_hidden_state=captions["encoder_hidden_states"]),
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
        )
        return output.logits[..., : self.config.image_vocab_size]

    def prepare_training_inputs(
        self, text_input_ids: torch.LongTensor, image_codes: torch.LongTensor
    ) -> dict[str, torch.Tensor]:
        """The `forward` arguments whose loss trains the model on captions `[B, T]` and their image codes `[B, G * G]`:
        the captions as `input_ids` (pads masked out), the codes as `labels`."""
        return {"input_ids": text_input_ids, "labels": image_codes}

    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config=None,
        logits_processor: LogitsProcessorList | None = None,
        **kwargs,
    ):
        """
        [`~GenerationMixin.generate`] from caption ids (`inputs` / `input_ids`, with `attention_mask`, by default the
        non-pad positions), returning the decoder's ids (start token, then codes). Three things are added:

        - `guidance_scale > 1` (from the call or the generation config) doubles the batch with the unconditional
          captions: both are encoded here in one pass and handed to `generate` as `encoder_outputs`, the decoder's
          inputs are repeated for the two halves in `prepare_inputs_for_generation`, and
          `ClassifierFreeGuidanceLogitsProcessor` mixes their logits first, so that temperature and top-k act on the
          guided logits, as in min-dalle. (transformers' own `guidance_scale` handling,
          `UnbatchedClassifierFreeGuidanceLogitsProcessor`, runs a second unbatched forward per step for decoder-only
          models; MusicGen batches the guidance in its own `generate`, which this follows.)
        - A `SuppressTokensLogitsProcessor` on the head's rows past the image codes, after the guidance mix (a -inf
          there before it would turn the mix into NaN).
        - The default cache is [`~DalleBartForImageGeneration.make_cache`] for greedy and sampled generation, and
          the default length a whole image (`max_new_tokens=image_grid_size ** 2`).
        """
        defaults = generation_config if generation_config is not None else self.generation_config
        guidance_scale = kwargs.pop("guidance_scale", defaults.guidance_scale)
        # Guidance is done here: `generate` must not add its unbatched processor for it.
        if generation_config is not None:
            generation_config = copy.deepcopy(generation_config)
            generation_config.guidance_scale = None
        else:
            kwargs["guidance_scale"] = None
        processors = LogitsProcessorList()
        if guidance_scale is not None and guidance_scale != 1:
            processors.append(ClassifierFreeGuidanceLogitsProcessor(guidance_scale))
        config = self.config
        if config.decoder_vocab_size > config.image_vocab_size:
            extra_rows = list(range(config.image_vocab_size, config.decoder_vocab_size))
            processors.append(SuppressTokensLogitsProcessor(extra_rows, device=self.device))
        processors.extend(logits_processor or [])

        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is not None and kwargs.get("attention_mask") is None:
            kwargs["attention_mask"] = (input_ids != config.text_pad_token_id).long()
        if guidance_scale is not None and guidance_scale != 1:
            if input_ids is None or kwargs.get("encoder_outputs") is not None:
                raise ValueError(
                    "Generation with `guidance_scale` needs the caption ids (`input_ids`): the model encodes them "
                    "together with the unconditional captions."
                )
            batch_size, length = input_ids.shape
            unconditional = self.unconditional_input_ids(batch_size, length, input_ids.device)
            attention_mask = torch.cat(
                [kwargs["attention_mask"], (unconditional != config.text_pad_token_id).to(kwargs["attention_mask"])]
            )
            kwargs["encoder_outputs"] = self.get_encoder()(
                torch.cat([input_ids, unconditional]), attention_mask, return_dict=True
            )
            # `generate` takes its batch size from `input_ids` and, given `encoder_outputs`, does not run the encoder.
            kwargs["attention_mask"] = attention_mask
            kwargs["guided"] = True
        if "max_length" not in kwargs and kwargs.get("max_new_tokens", defaults.max_new_tokens) is None:
            kwargs["max_new_tokens"] = config.image_seq_length  # a whole image, rather than generate's 20 tokens
        if generate_takes_prefix_cache(defaults, kwargs):
            kwargs["cache"] = self.make_cache()
        return super().generate(input_ids, generation_config, logits_processor=processors, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, guided: bool = False, **kwargs) -> dict:
        """[`~GenerationMixin.prepare_inputs_for_generation`]; with guidance (`guided`, set by `generate`), the
        decoder's inputs once for the captions and once for the unconditional captions."""
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        if guided:
            inputs["decoder_input_ids"] = inputs["decoder_input_ids"].repeat(2, 1)
        return inputs

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqLMOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, text_length)`): caption ids (not needed with
                `encoder_outputs`).
            attention_mask (`torch.Tensor` of shape `(batch, text_length)`): 1 for caption tokens, 0 for pads;
                defaults to `input_ids != config.text_pad_token_id`. Pass it with `encoder_outputs`, or the
                cross-attention attends to the pads too.
            decoder_input_ids (`torch.LongTensor` of shape `(batch, length)`): the start token and the codes so far
                (with a cache, only the new ones).
            encoder_outputs: the encoder's output for `input_ids`, to skip the encoder.
            cache (`EncoderDecoderCache`): the decoder's cache (see `make_cache`); `use_cache=True` without one
                creates one.
            labels (`torch.LongTensor` of shape `(batch, n)`): the codes to predict; -100 is ignored.
            logits_to_keep (`int`): compute logits for the last `logits_to_keep` positions only (0 = all).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None:
                # -100 (ignored) targets still feed the next position: as the start token, like BART's pad.
                shifted = labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.config.decoder_start_token_id)
                start = labels.new_full((labels.shape[0], 1), self.config.decoder_start_token_id)
                decoder_input_ids = torch.cat([start, shifted], dim=1)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and cache is None and not self.training:
            cache = self.make_cache()
        encoder_outputs, decoder_outputs = self.model(
            input_ids,
            attention_mask,
            decoder_input_ids,
            encoder_outputs,
            cache if use_cache else None,
            output_attentions,
            output_hidden_states,
        )
        hidden_states = decoder_outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            cache=cache if use_cache else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "DalleBartAttention",
    "DalleBartDecoder",
    "DalleBartEncoder",
    "DalleBartForImageGeneration",
    "DalleBartModel",
    "DalleBartPreTrainedModel",
    "eager_attention_forward",
]
