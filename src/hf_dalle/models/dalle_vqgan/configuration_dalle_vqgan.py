"""Configuration of a VQGAN image tokenizer (taming-transformers layout), such as ruDALL-E's Sber VQGAN."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


QUANTIZERS = ("gumbel", "nearest")
PIXEL_RANGES = ("[-1, 1]", "[0, 1]")


@strict
class DalleVQGANConfig(PreTrainedConfig):
    r"""
    Configuration of [`DalleVQGAN`], a taming-transformers VQGAN (Esser et al. 2021) held by a diffusers `VQModel`.
    The defaults describe the Sber VQGAN of ruDALL-E (`vqgan.gumbelf8-sber.config.yml`): 256x256 RGB images become a
    32x32 grid of codes from a vocabulary of 8192.

    Args:
        vocab_size (`int`, defaults to 8192):
            Number of codes (taming's `n_embed`).
        embed_dim (`int`, defaults to 256):
            Width of a code vector (taming's `embed_dim`, `VQModel`'s `vq_embed_dim`).
        latent_channels (`int`, defaults to 256):
            Channels at the encoder's output and the decoder's input (taming's `z_channels`).
        block_out_channels (`list[int]`, defaults to `[128, 128, 256, 512]`):
            Width of each resolution level (taming's `ch * ch_mult`); the image is halved between levels, so the
            downsampling factor is `2 ** (len(block_out_channels) - 1)`.
        layers_per_block (`int`, defaults to 2):
            Residual blocks per encoder level (taming's `num_res_blocks`; decoder levels have one more).
        attention_resolutions (`list[int]`, defaults to `[32]`):
            Feature-map sides (for `image_size` inputs) at which a level has self-attention (taming's
            `attn_resolutions`); the middle blocks always have it.
        norm_num_groups (`int`, defaults to 32):
            Groups of every GroupNorm.
        num_channels (`int`, defaults to 3):
            Image channels.
        image_size (`int`, defaults to 256):
            Side of the images the encoder takes (taming's `resolution`); the pipeline primes at this size.
        quantizer (`str`, defaults to `"gumbel"`):
            How images become codes: `"gumbel"` takes the argmax of a 1x1 projection of the latents onto the codes
            (taming's `GumbelQuantize.proj`, the Sber VQGAN), `"nearest"` the nearest code vector (taming's
            `VectorQuantizer`, ordinary VQGANs).
        wavelet_decoder (`bool`, defaults to `False`):
            The decoder predicts `4 * num_channels` Haar wavelet coefficients per position and an inverse Haar
            transform doubles the side (ruDALL-E's `dwt=True`: 512x512 images from a 32x32 grid).
        pixel_range (`str`, defaults to `"[-1, 1]"`):
            The pixel values the network reads and writes: `"[-1, 1]"` (taming-transformers, ruDALL-E: images are
            mapped to [-1, 1] before the encoder and the decoder's output `x` back with `(x + 1) / 2`) or `"[0, 1]"`
            (dalle-mini's VQGAN, which DALL·E Mini / Mega were trained with: images go in as they are and the decoder's
            output is clipped to [0, 1], as min-dalle does). `encode` and `decode` take and return [0, 1] either way.
        has_encoder (`bool`, defaults to `True`):
            Whether the model holds the encoder (and `quant_conv`). `False` for a decoder-only VQGAN such as
            min-dalle's `detoker.pt`: it decodes codes, and `encode` raises.
    """

    model_type = "dalle_vqgan"

    vocab_size: int = 8192
    embed_dim: int = 256
    latent_channels: int = 256
    block_out_channels: list[int] | None = None
    layers_per_block: int = 2
    attention_resolutions: list[int] | None = None
    norm_num_groups: int = 32
    num_channels: int = 3
    image_size: int = 256
    quantizer: str = "gumbel"
    wavelet_decoder: bool = False
    pixel_range: str = "[-1, 1]"
    has_encoder: bool = True

    def __post_init__(self, **kwargs):
        if self.block_out_channels is None:
            self.block_out_channels = [128, 128, 256, 512]
        if self.attention_resolutions is None:
            self.attention_resolutions = [32]
        super().__post_init__(**kwargs)

    @property
    def downsample_factor(self) -> int:
        """Image pixels per code along each side, at the encoder."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Codes per side for images of `image_size`."""
        return self.image_size // self.downsample_factor

    @property
    def decoder_upscale(self) -> int:
        """Decoded pixels per code, divided by `downsample_factor`: 2 with the wavelet decoder, else 1."""
        return 2 if self.wavelet_decoder else 1

    def attention_levels(self) -> list[bool]:
        """Whether each encoder level (highest resolution first) has self-attention."""
        return [
            self.image_size // 2**level in self.attention_resolutions for level in range(len(self.block_out_channels))
        ]

    def validate_architecture(self):
        for name in ("vocab_size", "embed_dim", "latent_channels", "layers_per_block", "num_channels", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if not self.block_out_channels or any(width % self.norm_num_groups for width in self.block_out_channels):
            raise ValueError(
                f"`block_out_channels` must be a non-empty list of multiples of `norm_num_groups` "
                f"({self.norm_num_groups}), got {self.block_out_channels}."
            )
        if self.image_size % self.downsample_factor != 0:
            raise ValueError(f"`image_size` must be a multiple of {self.downsample_factor}, got {self.image_size}.")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"`quantizer` must be one of {list(QUANTIZERS)}, got {self.quantizer!r}.")
        if self.pixel_range not in PIXEL_RANGES:
            raise ValueError(f"`pixel_range` must be one of {list(PIXEL_RANGES)}, got {self.pixel_range!r}.")
        if self.quantizer == "gumbel" and not self.has_encoder:
            raise ValueError("`quantizer='gumbel'` is an encoder's projection: a decoder-only VQGAN uses 'nearest'.")


__all__ = ["DalleVQGANConfig"]
