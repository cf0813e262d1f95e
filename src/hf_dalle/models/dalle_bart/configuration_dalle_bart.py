"""Configuration of DALL·E Mini / Mega (dalle-mini's `DalleBart`): an encoder-decoder transformer from caption tokens
to VQGAN image codes."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class DalleBartConfig(PreTrainedConfig):
    r"""
    Configuration of [`DalleBartForImageGeneration`], the text-to-image transformer of DALL·E Mini and DALL·E Mega
    (Dayma et al. 2021, `dalle-mini`): a BART-like encoder over `max_text_length` caption tokens (BART's byte-level
    BPE) and a decoder that writes `image_grid_size ** 2` codes of a VQGAN f16 (16384 codes) one after the other. The
    defaults describe DALL·E Mega (about 2.6B parameters); DALL·E Mini is `text_vocab_size=50264`,
    `decoder_vocab_size=16385`, `hidden_size=1024`, `encoder_layers=decoder_layers=12`, `num_attention_heads=16`,
    `intermediate_size=2730`.

    The layers are those of the released models (dalle-mini's "NormFormer" layout, as min-dalle rebuilt them in
    PyTorch): no biases anywhere, learned positions, a LayerNorm before and after each attention, and a GLU
    feed-forward `fc2(ln1(gelu(fc0(ln0(x))) * fc1(ln0(x))))` with exact (erf) GELU.

    Args:
        text_vocab_size (`int`, defaults to 50272):
            Rows of the encoder's token embedding (BART's vocabulary, padded: 50272 for Mega, 50264 for Mini).
        image_vocab_size (`int`, defaults to 16384):
            Codes of the VQGAN: the only decoder tokens that are ever sampled.
        decoder_vocab_size (`int`, defaults to 16416):
            Rows of the decoder's token embedding and of the output head: the image codes plus extra rows (the start
            token among them; 16385 for Mini, 16416 for Mega, whose table was padded). Sampling reads only the first
            `image_vocab_size` logits.
        max_text_length (`int`, defaults to 64):
            Caption positions of the encoder (its learned position table).
        image_grid_size (`int`, defaults to 16):
            Codes per side; the decoder writes `image_grid_size ** 2` codes in raster order (its position table).
        hidden_size (`int`, defaults to 2048):
            Width of both stacks.
        encoder_layers (`int`, defaults to 24):
            Layers of the text encoder.
        decoder_layers (`int`, defaults to 24):
            Layers of the image-code decoder (also `num_hidden_layers`, the layers the decoder's cache holds).
        num_attention_heads (`int`, defaults to 32):
            Heads of every attention; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 4096):
            Width of the GLU feed-forward.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every LayerNorm.
        dropout (`float`, defaults to 0.0):
            Dropout on the output of each residual branch (training only).
        attention_dropout (`float`, defaults to 0.0):
            Dropout on the attention probabilities (training only).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of weights and embeddings.
        text_bos_token_id (`int`, defaults to 0), text_pad_token_id (`int`, defaults to 1), text_eos_token_id
        (`int`, defaults to 2):
            BART's `<s>`, `<pad>` and `</s>`. A caption is `<s> ... </s>` padded with `<pad>`; the encoder and the
            cross-attention ignore pad positions (unless an `attention_mask` says otherwise). The unconditional
            caption of classifier-free guidance is `<s> </s>` and pads.
        decoder_start_token_id (`int`, defaults to 16384):
            The decoder's first input (at position 0), whose output predicts the first code. dalle-mini's config sets
            it to `image_vocab_size` (16384 = 2**14, the row after the VQGAN codes; also for Mega, whose
            `image_vocab_size` there is 16415), and the released models were trained with it. min-dalle starts from
            16383 (2**14 - 1, itself a VQGAN code) instead; `convert_dalle_mega` writes min-dalle's 16383 by default so
            that a converted model draws min-dalle's images, and takes 16384 to sample as dalle-mini does.
        bos_token_id, eos_token_id, pad_token_id (`int`, *optional*):
            The decoder's special tokens for `generate`: always `None`. A code stream has no end token (`generate`
            stops after `max_new_tokens`, by default `image_grid_size ** 2`), and a text id here would make `generate`
            stop at (or pad with) an image code.
        use_cache (`bool`, defaults to `True`):
            Whether `forward` returns the decoder's key/value cache.

    Example:

    ```python
    >>> from hf_dalle import DalleBartConfig, DalleBartForImageGeneration
    >>> config = DalleBartConfig(text_vocab_size=64, image_vocab_size=32, decoder_vocab_size=33, max_text_length=8,
    ...                          image_grid_size=4, hidden_size=32, encoder_layers=2, decoder_layers=2,
    ...                          num_attention_heads=4, intermediate_size=48, decoder_start_token_id=32)
    >>> model = DalleBartForImageGeneration(config)
    ```
    """

    model_type = "dalle_bart"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {"num_hidden_layers": "decoder_layers"}

    text_vocab_size: int = 50272
    image_vocab_size: int = 16384
    decoder_vocab_size: int = 16416
    max_text_length: int = 64
    image_grid_size: int = 16
    hidden_size: int = 2048
    encoder_layers: int = 24
    decoder_layers: int = 24
    num_attention_heads: int = 32
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    text_bos_token_id: int = 0
    text_pad_token_id: int = 1
    text_eos_token_id: int = 2
    decoder_start_token_id: int = 16384
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = True
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = False

    @property
    def image_seq_length(self) -> int:
        """Codes the decoder writes: `image_grid_size ** 2`."""
        return self.image_grid_size**2

    def validate_architecture(self):
        for name in (
            "text_vocab_size",
            "image_vocab_size",
            "decoder_vocab_size",
            "max_text_length",
            "image_grid_size",
            "hidden_size",
            "encoder_layers",
            "decoder_layers",
            "num_attention_heads",
            "intermediate_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.decoder_vocab_size < self.image_vocab_size:
            raise ValueError(
                f"`decoder_vocab_size` ({self.decoder_vocab_size}) must be at least `image_vocab_size` "
                f"({self.image_vocab_size}): the decoder's table holds every image code."
            )
        if not 0 <= self.decoder_start_token_id < self.decoder_vocab_size:
            raise ValueError(
                f"`decoder_start_token_id` must be a row of the decoder's table, in [0, {self.decoder_vocab_size}), "
                f"got {self.decoder_start_token_id}."
            )
        for name in ("text_bos_token_id", "text_pad_token_id", "text_eos_token_id"):
            if not 0 <= getattr(self, name) < self.text_vocab_size:
                raise ValueError(
                    f"`{name}` must be a text token id in [0, {self.text_vocab_size}), got {getattr(self, name)}."
                )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"`{name}` must be None, got {getattr(self, name)}: it would make `generate` stop at or pad with "
                    "an image code. The caption's special tokens are `text_bos_token_id`, `text_eos_token_id` and "
                    "`text_pad_token_id`."
                )
        if not self.is_encoder_decoder:
            raise ValueError("`is_encoder_decoder` must be True: DALL·E Mini / Mega is an encoder-decoder.")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)}.")


__all__ = ["DalleBartConfig"]
