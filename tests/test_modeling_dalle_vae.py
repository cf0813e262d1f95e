import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from hf_dalle import DalleVAE, DalleVAEConfig, map_pixels, unmap_pixels
from hf_dalle.models.dalle_vae import logit_laplace_nll


def tiny_config(**kwargs):
    defaults = {
        "hidden_size": 16,
        "vocab_size": 32,
        "num_blocks_per_group": 1,
        "decoder_init_size": 8,
        "image_size": 32,
    }
    return DalleVAEConfig(**{**defaults, **kwargs})


def blocks_images(batch: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Gray images with one coloured square each: a few easy-to-learn pictures."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((batch, 3, size, size), 0.8)
    for i in range(batch):
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        images[i, :, y : y + size // 2, x : x + size // 2] = torch.rand(3, 1, 1, generator=g)
    return images


def test_default_config_is_openai_dvae():
    with torch.device("meta"):
        vae = DalleVAE(DalleVAEConfig())
    assert sum(p.numel() for p in vae.encoder.parameters()) == 53_786_240
    assert sum(p.numel() for p in vae.decoder.parameters()) == 43_829_766
    assert vae.config.latent_size == 32


def test_encode_decode_shapes_and_range():
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config()).eval()
    pixels = torch.rand(2, 3, 32, 48)
    encoded = vae.encode(pixels)
    assert encoded.logits.shape == (2, 32, 4, 6)
    assert encoded.indices.shape == (2, 4, 6)
    assert torch.equal(encoded.indices, encoded.logits.argmax(1))
    decoded = vae.decode(encoded.indices)
    assert decoded.sample.shape == (2, 3, 32, 48)
    assert decoded.sample.min() >= 0 and decoded.sample.max() <= 1
    assert torch.allclose(decoded.sample, unmap_pixels(torch.sigmoid(decoded.mu)))
    assert decoded.log_scale.shape == decoded.mu.shape


def test_decode_indices_equals_one_hot_decoder():
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config()).eval()
    for p in vae.parameters():  # non-zero biases, so a lookup that forgot the bias would fail
        p.data.normal_(0, 0.1)
    indices = torch.randint(0, 32, (2, 4, 4))
    one_hot = F.one_hot(indices, 32).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(vae.decoder(indices), vae.decoder(one_hot))


def test_map_unmap_inverse():
    x = torch.rand(2, 3, 8, 8)
    mapped = map_pixels(x)
    assert mapped.min() >= 0.1 and mapped.max() <= 0.9
    torch.testing.assert_close(unmap_pixels(mapped), x)
    assert unmap_pixels(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 1.0]


def test_logit_laplace_is_a_density():
    # Integrate exp(-nll) over (0, 1): a normalised density integrates to 1.
    x = torch.linspace(1e-6, 1 - 1e-6, 400_001, dtype=torch.float64)
    for mu, log_scale in [(0.0, 0.0), (1.5, -1.0), (-2.0, 0.5)]:
        density = torch.exp(
            -logit_laplace_nll(x, torch.tensor(mu, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64))
        )
        assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=2e-3)


def test_training_forward_terms():
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config())
    pixels = blocks_images(4)
    out = vae(pixels, temperature=1.0, kl_weight=2.0)
    assert out.loss.item() == pytest.approx(out.reconstruction_loss.item() + 2.0 * out.kl_loss.item(), rel=1e-5)
    # KL(q || uniform) by hand, normalised per pixel dimension.
    log_q = F.log_softmax(out.logits, dim=1)
    kl = (log_q.exp() * (log_q - math.log(1 / 32))).sum() / 4 / (3 * 32 * 32)
    assert out.kl_loss.item() == pytest.approx(kl.item(), rel=1e-5)
    assert out.sample.shape == pixels.shape
    # Codebook usage statistics of the argmax codes.
    counts = torch.bincount(out.logits.argmax(1).flatten(), minlength=32).float()
    probs = counts / counts.sum()
    expected_perplexity = torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum())
    assert out.perplexity.item() == pytest.approx(expected_perplexity.item(), rel=1e-5)
    assert out.codes_used.item() == int((counts > 0).sum())


def test_mse_reconstruction_loss_and_code_usage_entropy():
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config())
    pixels = blocks_images(3)
    torch.manual_seed(1)
    out = vae(pixels, temperature=0.5, kl_weight=0.25, reconstruction_loss="mse")
    # By hand, with the same gumbel noise (the encoder draws no random numbers).
    torch.manual_seed(1)
    target = map_pixels(pixels)
    logits = vae.encoder(target)
    mu = vae.decoder(F.gumbel_softmax(logits, tau=0.5, dim=1))[:, :3]
    expected = ((torch.sigmoid(mu) - target) ** 2).mean() / 0.8**2
    assert out.reconstruction_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(expected.item() + 0.25 * out.kl_loss.item(), rel=1e-5)
    # The entropy of the batch's average code distribution, normalised by log(vocab).
    mean_q = F.softmax(logits, dim=1).mean(dim=(0, 2, 3))
    entropy = -(mean_q * mean_q.log()).sum() / math.log(32)
    assert out.code_usage_entropy.item() == pytest.approx(entropy.item(), rel=1e-5)
    out.code_usage_entropy.backward()  # differentiable: a training loop can reward it
    assert vae.encoder.blocks.output.conv.weight.grad.abs().sum() > 0


def test_code_usage_entropy_is_one_for_even_use_and_zero_for_one_code():
    vae = DalleVAE(tiny_config())
    out_conv = vae.encoder.blocks.output.conv
    torch.nn.init.zeros_(out_conv.weight)
    torch.nn.init.zeros_(out_conv.bias)
    assert vae(blocks_images(2)).code_usage_entropy.item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        out_conv.bias[7] = 100.0
    assert vae(blocks_images(2)).code_usage_entropy.item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_reconstruction_loss_is_refused():
    with pytest.raises(ValueError, match="reconstruction_loss.*logit_laplace.*mse.*'l1'"):
        DalleVAE(tiny_config())(blocks_images(1), reconstruction_loss="l1")


def test_kl_is_zero_for_uniform_codes():
    vae = DalleVAE(tiny_config())
    out_conv = vae.encoder.blocks.output.conv
    torch.nn.init.zeros_(out_conv.weight)
    torch.nn.init.zeros_(out_conv.bias)
    assert vae(blocks_images(2), kl_weight=1.0).kl_loss.abs().item() < 1e-7


def test_save_load_and_auto_round_trip(tmp_path):
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config()).eval()
    vae.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = load_file(tmp_path / "model.safetensors")
    assert "encoder.blocks.group_1.block_1.res_path.conv_1.weight" in saved
    assert "decoder.blocks.input.weight" in saved

    assert isinstance(AutoConfig.from_pretrained(tmp_path), DalleVAEConfig)
    for loader in (DalleVAE, AutoModel):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, DalleVAE)
        for (name, p), (_, q) in zip(vae.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(p, q), name
    pixels = torch.rand(1, 3, 32, 32)
    assert torch.equal(vae.encode(pixels).logits, loaded.encode(pixels).logits)


def test_tiny_vae_overfits_a_few_images():
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config(hidden_size=32, vocab_size=64))
    pixels = blocks_images(8)

    def argmax_reconstruction_error():
        with torch.no_grad():
            return F.mse_loss(vae.decode(vae.encode(pixels).indices).sample, pixels).item()

    before = argmax_reconstruction_error()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(300):
        loss = vae(pixels, temperature=1.0, kl_weight=6.6).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = argmax_reconstruction_error()
    assert after < before / 5, (before, after)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config())
    pixels = blocks_images(2)

    def grads():
        vae.zero_grad()
        torch.manual_seed(1)  # same gumbel noise
        vae(pixels, kl_weight=1.0).loss.backward()
        return [p.grad.clone() for p in vae.parameters()]

    reference = grads()
    vae.activation_checkpointing_enable()
    assert vae.encoder.blocks.group_1.block_1.gradient_checkpointing
    for a, b in zip(reference, grads()):
        torch.testing.assert_close(a, b)


def test_bf16_autocast():
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config())
    pixels = blocks_images(2)
    torch.manual_seed(1)
    reference = vae(pixels, kl_weight=1.0).loss
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vae(pixels, kl_weight=1.0)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(reference.item(), rel=0.05, abs=0.02)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters())


@pytest.mark.parametrize(
    "pixels, message",
    [
        (torch.rand(1, 1, 32, 32), r"shape \(batch, 3, height, width\)"),
        (torch.rand(3, 32, 32), r"shape \(batch, 3, height, width\)"),
        (torch.rand(1, 3, 30, 32), "multiples of 8"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "floats in \\[0, 1\\]"),
        (torch.rand(1, 3, 32, 32) * 255, r"must lie in \[0, 1\]"),
    ],
)
def test_bad_pixels_raise(pixels, message):
    vae = DalleVAE(tiny_config())
    with pytest.raises(ValueError, match=message):
        vae.encode(pixels)
    with pytest.raises(ValueError, match=message):
        vae(pixels)


@pytest.mark.parametrize(
    "indices, message",
    [
        (torch.full((1, 4, 4), 32), r"\[0, 32\)"),
        (torch.full((1, 4, 4), -1), r"\[0, 32\)"),
        (torch.zeros(1, 4, 4), "integer tensor"),
        (torch.zeros(16, dtype=torch.long), "integer tensor"),
    ],
)
def test_bad_indices_raise(indices, message):
    vae = DalleVAE(tiny_config())
    with pytest.raises(ValueError, match=message):
        vae.decode(indices)


def test_bad_config_raises():
    # transformers' @strict configs wrap the ValueError of `validate_architecture`, message included.
    with pytest.raises(StrictDataclassClassValidationError, match="multiple of 4"):
        DalleVAEConfig(hidden_size=30)
    with pytest.raises(StrictDataclassClassValidationError, match="multiple of 8"):
        DalleVAEConfig(image_size=100)
    with pytest.raises(StrictDataclassFieldValidationError, match="vocab_size"):
        DalleVAEConfig(vocab_size="8192")


def test_exports_and_compiles_as_one_graph():
    # Value checks of the inputs are skipped while tracing (as the transformer's are); shapes are still checked.
    torch.manual_seed(0)
    vae = DalleVAE(tiny_config()).eval()
    pixels = blocks_images(2)
    exported = torch.export.export(vae, (pixels,))
    with torch.no_grad():
        expected, got = vae(pixels), exported.module()(pixels)
    for name in ("logits", "kl_loss", "code_usage_entropy", "perplexity", "codes_used"):
        torch.testing.assert_close(got[name], expected[name], msg=name)
    codes = vae.encode(pixels).indices
    encode = torch.compile(vae.encode, fullgraph=True, backend="eager")
    decode = torch.compile(vae.decode, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(encode(pixels).indices, codes)
        torch.testing.assert_close(decode(codes).sample, vae.decode(codes).sample)
