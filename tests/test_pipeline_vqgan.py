"""DallePipeline with a VQGAN image tokenizer (DalleVQGAN with a wavelet decoder: the generated images are twice the
side of the images it encodes): sampling, decoding, priming, reranking, saving."""

import json

import pytest
import torch
import torch.nn.functional as F

from hf_dalle import DallePipeline, DalleVQGAN
from hf_dalle.testing_utils import make_tiny_pipeline


def seeded(n, start=0):
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(vqgan=True)


def test_generates_at_the_decoder_size_and_reranks(pipe):
    assert isinstance(pipe.vae, DalleVQGAN)
    assert (pipe.prime_image_size, pipe.image_size) == (32, 64)
    decoded = []
    original_decode = pipe.decode
    pipe.decode = lambda codes: decoded.append(codes) or original_decode(codes)
    try:
        output = pipe("a red circle", num_candidates=4, num_images_per_prompt=2, generator=seeded(4), output_type="pt")
    finally:
        del pipe.decode
    assert output.images.shape == (2, 3, 64, 64)
    assert output.scores == sorted(output.scores, reverse=True)
    # The returned images are the VQGAN's decodes of the best-scoring candidates' codes.
    candidates = pipe.vae.decode(torch.cat(decoded).view(-1, 4, 4)).sample
    best = [min(range(4), key=lambda i: (candidates[i] - image).abs().max().item()) for image in output.images]
    torch.testing.assert_close(output.images, candidates[best])


def test_priming_encodes_at_the_encoder_size(pipe, monkeypatch):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    decoded = []
    original_decode = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda codes: decoded.append(codes.view(-1, 4, 4)) or original_decode(codes))
    pipe("a red circle", num_candidates=3, generator=seeded(3), image=image, num_prime_rows=2)
    assert (torch.cat(decoded)[:, :2] == pipe.vae.encode(image[None]).indices[0, :2]).all()
    # An image at the size the pipeline generates (e.g. one of its own outputs) is downscaled to the encoder's size.
    decoded.clear()
    large = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    pipe("a red circle", num_candidates=2, generator=seeded(2), image=large, num_prime_rows=1)
    small = F.interpolate(large[None], size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    assert (torch.cat(decoded)[:, :1] == pipe.vae.encode(small).indices[0, :1]).all()
    with pytest.raises(ValueError, match="must be 32x32 .*or 64x64, the size the pipeline generates.*got 48x48"):
        pipe("a red circle", num_candidates=2, image=torch.rand(3, 48, 48), num_prime_rows=1)


def test_save_load_round_trip_names_the_vqgan(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == [
        "hf_dalle.models.dalle_vqgan.modeling_dalle_vqgan",
        "DalleVQGAN",
    ]
    assert (tmp_path / "vae" / "model.safetensors").is_file()
    loaded = DallePipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.vae, DalleVQGAN) and loaded.vae.config.wavelet_decoder
    kwargs = {"num_candidates": 3, "num_images_per_prompt": 2, "output_type": "pt"}
    expected = pipe("a blue square", generator=seeded(3), **kwargs)
    got = loaded("a blue square", generator=seeded(3), **kwargs)
    assert torch.equal(expected.images, got.images)
