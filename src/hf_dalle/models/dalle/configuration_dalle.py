"""Configuration of the DALL-E transformer prior (stage 2)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


ATTENTION_TYPES = ("full", "row", "column", "conv")
CONV_WINDOWS = ("raster", "clipped", "torus")
HIDDEN_ACTS = ("gelu", "gelu_tanh")


def paper_attention_types(num_hidden_layers: int) -> list[str]:
    """The layer pattern of the paper: layer i (1-based) uses column attention if (i - 2) % 4 == 0, else row
    attention, and the last layer uses convolutional attention."""
    types = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, num_hidden_layers + 1)]
    return types[:-1] + ["conv"]


@strict
class DalleConfig(PreTrainedConfig):
    r"""
    Configuration of [`DalleForImageGeneration`], the decoder-only transformer of DALL-E (Ramesh et al. 2021) that
    models one stream of `max_text_length` text tokens followed by `image_grid_size ** 2` image codes. The defaults
    describe the paper's 12B model (64 layers, d_model 3968, 62 heads of 64 dims, text 256 x 16384,
    image 32x32 x 8192).

    Token ids of the stream: text tokens are `0 .. text_vocab_size - 1`, image code `c` is written as
    `text_vocab_size + c`, so the model's vocabulary is `text_vocab_size + image_vocab_size`.

    Args:
        text_vocab_size (`int`, defaults to 16384):
            BPE vocabulary of the captions (the tokenizer's vocabulary, special tokens included).
        image_vocab_size (`int`, defaults to 8192):
            Number of dVAE codes.
        max_text_length (`int`, defaults to 256):
            Text positions at the start of the stream. Positions without a caption token hold `text_pad_token_id`,
            which the model embeds with a padding embedding learned for each position (it is an input, not masked).
        image_grid_size (`int`, defaults to 32):
            Image codes per side; the stream holds `image_grid_size ** 2` codes in raster order.
        hidden_size (`int`, defaults to 3968):
            Width of the residual stream.
        intermediate_size (`int`, *optional*):
            Width of the MLP; `4 * hidden_size` if not set.
        num_hidden_layers (`int`, defaults to 64):
            Number of transformer blocks.
        num_attention_heads (`int`, defaults to 62):
            Attention heads per block; must divide `hidden_size`.
        attention_types (`list[str]`, *optional*):
            Image-to-image attention of each layer, one of `"full"`, `"row"`, `"column"`, `"conv"` (see
            [`DalleForImageGeneration`] for the exact masks). Defaults to the paper's pattern: layer i (1-based) is
            `"column"` if (i - 2) % 4 == 0 else `"row"`, and the last layer is `"conv"`.
        conv_kernel_size (`int`, defaults to 11):
            Side of the (odd) kernel of the `"conv"` attention.
        conv_window (`str`, defaults to `"raster"`):
            How the `"conv"` kernel meets the image edges: `"raster"` lays the kernel's offsets over the raster
            sequence, so near the left and right edges it wraps onto the neighbouring row (this project's models);
            `"clipped"` is a true 2D window cut at the edges (ruDALL-E v3); `"torus"` wraps around both edges, so the
            bottom rows see the top ones (ruDALL-E v2). All three stay causal in raster order.
        image_mask_offset (`int`, defaults to 0):
            The attention masks start the image grid this many positions before the first image code: the last
            `image_mask_offset` text positions count as the first image positions of the masks (and code `j` as
            `j + image_mask_offset`), while embeddings and logits keep the stream layout. ruDALL-E v2 (Malevich v2,
            Emojich) puts an extra BOS before its 128 caption tokens but builds its masks for 128: offset 1.
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the MLP: `"gelu"` (exact, erf) or `"gelu_tanh"` (the tanh approximation of GPT-2 and
            ruDALL-E).
        sandwich_layernorm (`bool`, defaults to `False`):
            CogView's "sandwich" LayerNorm (Ding et al. 2021): a LayerNorm on the output of each residual branch
            before it is added to the stream (ruDALL-E).
        head_layernorm (`bool`, defaults to `False`):
            A second LayerNorm between the final LayerNorm and the output head (ruDALL-E's `to_logits`).
        text_loss_weight (`float`, defaults to 0.125):
            Weight of the text cross-entropy in the loss; the image cross-entropy gets `1 - text_loss_weight`.
        text_pad_token_id (`int`, defaults to 0):
            Id of the tokenizer's pad token (`DalleTokenizer` puts `<pad>` at 0).
        bos_token_id (`int`, *optional*):
            Token that starts a sequence, for `generate`: `None`, a stream starts with its caption.
        eos_token_id (`int`, *optional*):
            Token that ends a sequence early in `generate`: `None`, a stream ends after its last image code.
        pad_token_id (`int`, *optional*):
            Token that `generate` masks out of the attention: always `None`, since a DALL-E stream masks nothing (its
            pads, `text_pad_token_id`, are inputs with learned embeddings).
        dropout (`float`, defaults to 0.0):
            Dropout on the attention probabilities and on the output of each residual branch.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the layer norms.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal weight initialisation (residual output projections are further scaled
            by `1 / sqrt(2 * num_hidden_layers)`, as in GPT-2).
        use_cache (`bool`, defaults to `True`):
            Whether `forward` returns the key/value cache.
        tie_word_embeddings (`bool`, defaults to `False`):
            Share the token embedding matrix with the output projection.
        resblock_gradient_scaling (`bool`, defaults to `False`):
            Per-resblock gradient scaling for fp16 training (the paper's Fig. 4): the gradient entering each residual
            branch (attention, MLP) is multiplied by that branch's own scale, and the gradient leaving it is divided by
            the scale, cleared of inf/NaN, and added to the float32 residual stream. Call
            [`~DalleForImageGeneration.update_resblock_gradient_scales`] after each backward pass.
        resblock_gradient_scale_init (`float`, defaults to 65536.0):
            Initial scale of each branch.
        resblock_gradient_scale_growth_interval (`int`, defaults to 2000):
            A branch's scale doubles after this many updates without an inf/NaN, and halves on each one that has.

    Example:

    ```python
    >>> from hf_dalle import DalleConfig, DalleForImageGeneration
    >>> config = DalleConfig(text_vocab_size=512, image_vocab_size=256, max_text_length=16, image_grid_size=8,
    ...                      hidden_size=128, num_hidden_layers=4, num_attention_heads=4)
    >>> config.attention_types
    ['row', 'column', 'row', 'conv']
    >>> model = DalleForImageGeneration(config)
    ```
    """

    model_type = "dalle"
    keys_to_ignore_at_inference = ["cache"]

    text_vocab_size: int = 16384
    image_vocab_size: int = 8192
    max_text_length: int = 256
    image_grid_size: int = 32
    hidden_size: int = 3968
    intermediate_size: int | None = None
    num_hidden_layers: int = 64
    num_attention_heads: int = 62
    attention_types: list[str] | None = None
    conv_kernel_size: int = 11
    conv_window: str = "raster"
    image_mask_offset: int = 0
    hidden_act: str = "gelu"
    sandwich_layernorm: bool = False
    head_layernorm: bool = False
    text_loss_weight: float = 0.125
    text_pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    resblock_gradient_scaling: bool = False
    resblock_gradient_scale_init: float = 65536.0
    resblock_gradient_scale_growth_interval: int = 2000

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.attention_types is None:
            self.attention_types = paper_attention_types(self.num_hidden_layers)
        super().__post_init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        """Size of the model's vocabulary: text tokens, then image codes."""
        return self.text_vocab_size + self.image_vocab_size

    @property
    def image_seq_length(self) -> int:
        return self.image_grid_size**2

    @property
    def mask_text_length(self) -> int:
        """Stream positions the attention masks treat as text: `max_text_length - image_mask_offset`."""
        return self.max_text_length - self.image_mask_offset

    @property
    def max_sequence_length(self) -> int:
        """Length of a full stream: `max_text_length` text positions, then `image_grid_size ** 2` image codes."""
        return self.max_text_length + self.image_seq_length

    def validate_architecture(self):
        for name in (
            "text_vocab_size",
            "image_vocab_size",
            "max_text_length",
            "image_grid_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "conv_kernel_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if len(self.attention_types) != self.num_hidden_layers:
            raise ValueError(
                f"`attention_types` must name one attention type per layer ({self.num_hidden_layers}), "
                f"got {len(self.attention_types)}: {self.attention_types}."
            )
        unknown = sorted({t for t in self.attention_types if t not in ATTENTION_TYPES})
        if unknown:
            raise ValueError(
                f"Unknown `attention_types` {unknown}; each layer must be one of {list(ATTENTION_TYPES)}."
            )
        if self.conv_window not in CONV_WINDOWS:
            raise ValueError(f"Unknown `conv_window` {self.conv_window!r}; choose one of {list(CONV_WINDOWS)}.")
        if not 0 <= self.image_mask_offset < self.max_text_length:
            raise ValueError(
                f"`image_mask_offset` must be in [0, max_text_length={self.max_text_length}), "
                f"got {self.image_mask_offset}."
            )
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"Unknown `hidden_act` {self.hidden_act!r}; choose one of {list(HIDDEN_ACTS)}.")
        if self.conv_kernel_size % 2 != 1:
            raise ValueError(f"`conv_kernel_size` must be odd (a centred kernel), got {self.conv_kernel_size}.")
        if not 0.0 <= self.text_loss_weight <= 1.0:
            raise ValueError(f"`text_loss_weight` must be in [0, 1], got {self.text_loss_weight}.")
        if not 0 <= self.text_pad_token_id < self.text_vocab_size:
            raise ValueError(
                f"`text_pad_token_id` must be a text token id in [0, {self.text_vocab_size}), "
                f"got {self.text_pad_token_id}."
            )
        for name in ("bos_token_id", "eos_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(f"`{name}` must be None or a token id in [0, {self.vocab_size}), got {token_id}.")
        if self.pad_token_id is not None:
            raise ValueError(
                f"`pad_token_id` must be None, got {self.pad_token_id}: `generate` would mask those positions out, but "
                "the pads of a DALL-E stream are inputs with learned embeddings (set `text_pad_token_id` instead)."
            )
        if self.resblock_gradient_scale_init <= 0 or self.resblock_gradient_scale_growth_interval < 1:
            raise ValueError(
                "`resblock_gradient_scale_init` must be positive and `resblock_gradient_scale_growth_interval` at "
                f"least 1, got {self.resblock_gradient_scale_init} and {self.resblock_gradient_scale_growth_interval}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}.")


__all__ = ["DalleConfig", "paper_attention_types"]
