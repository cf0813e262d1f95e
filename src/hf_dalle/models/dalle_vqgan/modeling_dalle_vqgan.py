"""A VQGAN image tokenizer with the interface of [`DalleVAE`]: images in [0, 1] to codes and back.

The network is a diffusers `VQModel` (its encoder, codebook and decoder): taming-transformers' VQGAN layout, which
diffusers already holds. Two things of the released VQGANs are not in `VQModel` and live here: the Gumbel projection
of taming's `GumbelQuantize` (the Sber VQGAN of ruDALL-E encodes with the argmax of a 1x1 convolution from the latents
onto the codes; `VQModel`'s nearest-neighbour quantizer would pick other codes), and ruDALL-E's wavelet decoder (the
decoder predicts Haar wavelet coefficients and an inverse Haar transform doubles the image side).
"""

import torch
import torch.nn.functional as F
from diffusers import VQModel
from torch import nn
from transformers import PreTrainedModel

from ...loading_utils import CompleteWeightsMixin
from ..dalle_vae.modeling_dalle_vae import (
    DalleVAEDecoderOutput,
    DalleVAEEncoderOutput,
    check_indices,
    check_pixel_values,
)
from .configuration_dalle_vqgan import DalleVQGANConfig


def inverse_haar_wavelet(coefficients: torch.Tensor) -> torch.Tensor:
    """
    One level of the inverse 2D Haar transform: `[B, 4C, H, W]` -> `[B, C, 2H, 2W]`. The channels are laid out as
    ruDALL-E's decoder writes them (and `pytorch_wavelets`' `DWTInverse` reads them): the `C` low-pass channels, then
    for each channel its three high-pass bands (`LH`, `HL`, `HH`).
    """
    batch, channels, height, width = coefficients.shape
    channels //= 4
    low = coefficients[:, :channels]
    lh, hl, hh = coefficients[:, channels:].reshape(batch, channels, 3, height, width).unbind(2)
    # Output pixel (2i + a, 2j + b): an odd row `a` flips the sign of LH, an odd column `b` that of HL, both that of HH.
    blocks = torch.stack([low + lh + hl + hh, low + lh - hl - hh, low - lh + hl - hh, low - lh - hl + hh], dim=2) / 2
    return F.pixel_shuffle(blocks.reshape(batch, 4 * channels, height, width), 2)


class DalleVQGANPreTrainedModel(CompleteWeightsMixin, PreTrainedModel):
    config_class = DalleVQGANConfig
    base_model_prefix = "dalle_vqgan"
    main_input_name = "pixel_values"


class DalleVQGAN(DalleVQGANPreTrainedModel):
    """
    A VQGAN image tokenizer for [`DallePipeline`], in place of the dVAE: `encode` turns images in [0, 1] into codes,
    `decode` turns codes into images in [0, 1]. `self.vqgan` is the diffusers `VQModel` that does the work;
    `self.gumbel_projection` (with `config.quantizer == "gumbel"`) is taming's `GumbelQuantize.proj`.

    Convert the Sber VQGAN of ruDALL-E with [`~hf_dalle.conversion.convert_rudalle_vqgan.convert_sber_vqgan`].

    Example:

    ```python
    >>> from hf_dalle import DalleVQGAN, DalleVQGANConfig
    >>> vqgan = DalleVQGAN(DalleVQGANConfig(vocab_size=64, embed_dim=32, latent_channels=32,
    ...                                     block_out_channels=[32, 32], layers_per_block=1,
    ...                                     attention_resolutions=[16], image_size=32))
    >>> codes = vqgan.encode(torch.rand(1, 3, 32, 32)).indices  # [1, 16, 16]
    >>> images = vqgan.decode(codes).sample  # [1, 3, 32, 32] in [0, 1]
    ```
    """

    def __init__(self, config: DalleVQGANConfig):
        super().__init__(config)
        attention = config.attention_levels()
        self.vqgan = VQModel(
            in_channels=config.num_channels,
            out_channels=config.num_channels * (4 if config.wavelet_decoder else 1),
            down_block_types=["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention],
            up_block_types=["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attention)],
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            num_vq_embeddings=config.vocab_size,
            norm_num_groups=config.norm_num_groups,
            vq_embed_dim=config.embed_dim,
            sample_size=config.image_size,
        )
        if not config.has_encoder:
            # A decoder-only VQGAN (min-dalle's detoker.pt) has no weights for these.
            self.vqgan.encoder = None
            self.vqgan.quant_conv = None
        self.gumbel_projection = (
            nn.Conv2d(config.embed_dim, config.vocab_size, 1) if config.quantizer == "gumbel" else None
        )
        self.post_init()

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> DalleVAEEncoderOutput | tuple:
        """Encode images (floats in [0, 1], shape [B, C, H, W]) into codes [B, H/f, W/f] (`indices`), f =
        `config.downsample_factor`. With the Gumbel quantizer `logits` [B, vocab, H/f, W/f] are the projection whose
        argmax the codes are; the nearest-neighbour quantizer has none (`None`)."""
        if not self.config.has_encoder:
            raise ValueError(
                "This VQGAN has no encoder (`config.has_encoder=False`): it was converted from a decoder alone, such as "
                "min-dalle's detoker.pt, and can only decode. Encoding images (priming, fine-tuning data) needs the "
                "encoder of the same VQGAN: convert it with the decoder, e.g. `scripts/convert_dalle_mega.py "
                "--vqgan_flax_checkpoint flax_model.msgpack` (dalle-mini's vqgan_imagenet_f16_16384, flax_model.msgpack) or "
                "`--vqgan_checkpoint last.ckpt --vqgan_config model.yaml` (a taming-transformers checkpoint)."
            )
        check_pixel_values(pixel_values, self.config.num_channels, self.config.downsample_factor)
        pixel_values = pixel_values.to(self.dtype)
        if self.config.pixel_range == "[-1, 1]":
            pixel_values = 2 * pixel_values - 1
        latents = self.vqgan.encode(pixel_values).latents
        if self.gumbel_projection is not None:
            logits = self.gumbel_projection(latents)
            indices = logits.argmax(dim=1)
        else:
            logits = None
            batch, _, height, width = latents.shape
            indices = self.vqgan.quantize(latents)[2][2].reshape(batch, height, width)
        return DalleVAEEncoderOutput(logits=logits, indices=indices) if return_dict else (logits, indices)

    def decode(self, indices: torch.LongTensor, return_dict: bool = True) -> DalleVAEDecoderOutput | tuple:
        """Decode integer codes [B, h, w] into images [B, C, f h, f w] in [0, 1] (f = `config.downsample_factor`,
        doubled with the wavelet decoder). `mu` and `log_scale` of the output are `None` (a VQGAN has no
        likelihood)."""
        check_indices(indices, self.config.vocab_size)
        batch, height, width = indices.shape
        codes = self.vqgan.quantize.get_codebook_entry(indices.reshape(-1), (batch, height, width, -1))
        decoded = self.vqgan.decode(codes, force_not_quantize=True).sample
        if self.config.wavelet_decoder:
            decoded = inverse_haar_wavelet(decoded)
        if self.config.pixel_range == "[-1, 1]":
            sample = (decoded.float().clamp(-1, 1) + 1) / 2
        else:
            sample = decoded.float().clamp(0, 1)
        return DalleVAEDecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> DalleVAEDecoderOutput | tuple:
        """Reconstruct images in [0, 1]: `decode(encode(pixel_values).indices)`."""
        return self.decode(self.encode(pixel_values).indices, return_dict=return_dict)


__all__ = ["DalleVQGAN", "DalleVQGANPreTrainedModel", "inverse_haar_wavelet"]
