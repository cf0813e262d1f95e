"""Configuration of the DALL-E discrete VAE (stage 1)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class DalleVAEConfig(PreTrainedConfig):
    r"""
    Configuration of [`DalleVAE`], the discrete VAE of DALL-E (Ramesh et al. 2021). The defaults describe
    the network OpenAI released (`dall_e` package, `encoder.pkl` / `decoder.pkl`): 256x256 RGB images become a
    32x32 grid of codes from a vocabulary of 8192.

    Args:
        vocab_size (`int`, defaults to 8192):
            Number of discrete codes.
        hidden_size (`int`, defaults to 256):
            Base width `n_hid`; the groups of the encoder are 1x, 2x, 4x and 8x this wide (the decoder reversed).
            Must be a multiple of 4 (each resblock's bottleneck is a quarter of its width).
        num_blocks_per_group (`int`, defaults to 2):
            Residual blocks in each of the 4 groups (`n_blk_per_group`).
        decoder_init_size (`int`, defaults to 128):
            Width of the decoder's first 1x1 convolution (`n_init`).
        num_channels (`int`, defaults to 3):
            Image channels.
        image_size (`int`, defaults to 256):
            Side of the images the model was trained on (informational; any multiple of
            `downsample_factor` is accepted).
        logit_laplace_eps (`float`, defaults to 0.1):
            Pixels are mapped to `[eps, 1 - eps]` before encoding and for the logit-Laplace likelihood.
    """

    model_type = "dalle_vae"

    vocab_size: int = 8192
    hidden_size: int = 256
    num_blocks_per_group: int = 2
    decoder_init_size: int = 128
    num_channels: int = 3
    image_size: int = 256
    logit_laplace_eps: float = 0.1

    # OpenAI's dVAE has four groups, with a 2x max-pool (encoder) / upsample (decoder) between them.
    num_groups = 4

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_groups - 1)

    @property
    def decoder_upscale(self) -> int:
        """Decoded pixels per code over `downsample_factor`: 1, the decoder mirrors the encoder (a VQGAN's wavelet
        decoder has 2)."""
        return 1

    @property
    def latent_size(self) -> int:
        """Codes per side for images of `image_size`."""
        return self.image_size // self.downsample_factor

    def validate_architecture(self):
        for name in ("vocab_size", "hidden_size", "num_blocks_per_group", "decoder_init_size", "num_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.hidden_size % 4 != 0:
            raise ValueError(
                f"`hidden_size` must be a multiple of 4 (resblocks use a bottleneck of width / 4), got {self.hidden_size}."
            )
        if self.image_size % self.downsample_factor != 0:
            raise ValueError(f"`image_size` must be a multiple of {self.downsample_factor}, got {self.image_size}.")
        if not 0.0 <= self.logit_laplace_eps < 0.5:
            raise ValueError(f"`logit_laplace_eps` must be in [0, 0.5), got {self.logit_laplace_eps}.")


__all__ = ["DalleVAEConfig"]
