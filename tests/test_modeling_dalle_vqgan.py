"""DalleVQGAN: the VQGAN image tokenizer on diffusers' VQModel (codes, decoding, quantizers, wavelet decoder, saving)."""

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModel

from hf_dalle import DalleVQGAN, DalleVQGANConfig
from hf_dalle.models.dalle_vqgan import inverse_haar_wavelet


def tiny_config(**overrides) -> DalleVQGANConfig:
    kwargs = {
        "vocab_size": 64,
        "embed_dim": 32,
        "latent_channels": 32,
        "block_out_channels": [32, 32],
        "layers_per_block": 1,
        "attention_resolutions": [16],
        "image_size": 32,
    }
    return DalleVQGANConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_default_config_is_the_sber_vqgan():
    config = DalleVQGANConfig()
    assert (config.vocab_size, config.downsample_factor, config.latent_size, config.quantizer) == (
        8192,
        8,
        32,
        "gumbel",
    )
    assert config.attention_levels() == [False, False, False, True]


def test_gumbel_codes_are_the_projection_argmax_and_decode_to_images(images):
    torch.manual_seed(0)
    model = DalleVQGAN(tiny_config()).eval()
    with torch.no_grad():
        encoded = model.encode(images)
        latents = model.vqgan.encode(2 * images - 1).latents
        expected = model.gumbel_projection(latents).argmax(1)
        decoded = model.decode(encoded.indices).sample
        # decode = codebook vectors -> VQModel's post_quant_conv + decoder, mapped from [-1, 1] to [0, 1]
        codes = model.vqgan.quantize.embedding(encoded.indices).permute(0, 3, 1, 2)
        expected_images = (model.vqgan.decode(codes, force_not_quantize=True).sample.clamp(-1, 1) + 1) / 2
    assert encoded.indices.shape == (2, 16, 16) and encoded.logits.shape == (2, 64, 16, 16)
    assert torch.equal(encoded.indices, expected)
    assert decoded.shape == (2, 3, 32, 32)
    torch.testing.assert_close(decoded, expected_images)
    torch.testing.assert_close(model(images).sample, decoded)


def test_nearest_quantizer_picks_the_closest_code(images):
    torch.manual_seed(0)
    model = DalleVQGAN(tiny_config(quantizer="nearest")).eval()
    assert model.gumbel_projection is None
    with torch.no_grad():
        encoded = model.encode(images)
        latents = model.vqgan.encode(2 * images - 1).latents.permute(0, 2, 3, 1)
        distances = ((latents[..., None, :] - model.vqgan.quantize.embedding.weight) ** 2).sum(-1)
    assert encoded.logits is None
    assert torch.equal(encoded.indices, distances.argmin(-1))


def test_inverse_haar_wavelet_inverts_the_haar_analysis():
    image = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    a, b = image[:, :, 0::2, 0::2], image[:, :, 0::2, 1::2]  # rows 2i, columns 2j / 2j + 1
    c, d = image[:, :, 1::2, 0::2], image[:, :, 1::2, 1::2]  # rows 2i + 1
    low, lh, hl, hh = (a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2
    coefficients = torch.cat([low, torch.stack([lh, hl, hh], dim=2).flatten(1, 2)], dim=1)
    torch.testing.assert_close(inverse_haar_wavelet(coefficients), image)


def test_wavelet_decoder_doubles_the_image_side(images):
    model = DalleVQGAN(tiny_config(wavelet_decoder=True)).eval()
    assert model.vqgan.decoder.conv_out.out_channels == 12
    with torch.no_grad():
        decoded = model.decode(model.encode(images).indices).sample
    assert decoded.shape == (2, 3, 64, 64) and model.config.decoder_upscale == 2
    assert 0 <= decoded.min() and decoded.max() <= 1


def test_save_and_load_round_trip_as_safetensors(tmp_path, images):
    model = DalleVQGAN(tiny_config(wavelet_decoder=True)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "dalle_vqgan"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is DalleVQGAN
    with torch.no_grad():
        codes = model.encode(images).indices
        assert torch.equal(loaded.encode(images).indices, codes)
        assert torch.equal(loaded.decode(codes).sample, model.decode(codes).sample)


def test_bad_inputs_raise():
    model = DalleVQGAN(tiny_config())
    with pytest.raises(ValueError, match="multiples of 2"):
        model.encode(torch.rand(1, 3, 31, 32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        model.encode(torch.rand(1, 3, 32, 32) * 2)
    with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
        model.decode(torch.full((1, 4, 4), 64))
    with pytest.raises(StrictDataclassClassValidationError, match="`quantizer` must be one of"):
        tiny_config(quantizer="lookup")
    with pytest.raises(StrictDataclassClassValidationError, match="multiples of `norm_num_groups`"):
        tiny_config(block_out_channels=[32, 48])
