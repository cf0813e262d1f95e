"""Conversion of ruDALL-E's Sber VQGAN (hf_dalle.conversion.convert_rudalle_vqgan) against the original code:
random-weight Sber-layout VQGANs (plain and wavelet, small) built with `rudalle.vae.model` and taming's modules, saved
in the released file layouts, converted, and compared (parity, in the reference venv); plus the loader's safety and
errors."""

import hashlib
import sys
import types

import pytest
import torch
import yaml
from reference_models import import_reference

from hf_dalle import DalleVQGAN
from hf_dalle.conversion.convert_rudalle_vqgan import (
    convert_sber_vqgan,
    load_torch_checkpoint_state_dict,
    vqgan_config_from_taming,
    vqgan_model_card,
)
from hf_dalle.testing_utils import random_taming_vqgan_state_dict


# The Sber config (`vqgan.gumbelf8-sber.config.yml`) at a test size: three levels (f = 4), attention at the lowest
# resolution, GroupNorm(32) as taming hard-codes it.
def small_taming_config(target="taming.models.vqgan.GumbelVQ"):
    return {
        "model": {
            "target": target,
            "params": {
                "kl_weight": 1.0e-08,
                "embed_dim": 32,
                "n_embed": 64,
                "ddconfig": {
                    "double_z": False,
                    "z_channels": 32,
                    "resolution": 32,
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": 32,
                    "ch_mult": [1, 2, 2],
                    "num_res_blocks": 1,
                    "attn_resolutions": [8],
                    "dropout": 0.0,
                },
            },
        }
    }


def small_taming_state_dict(seed: int = 0) -> dict:
    """Random weights of `small_taming_config`'s GumbelVQ, in taming's layout."""
    return random_taming_vqgan_state_dict(
        vocab_size=64, embed_dim=32, latent_channels=32, block_out_channels=(32, 64, 64), layers_per_block=1,
        attention_levels=(2,), with_encoder=True, gumbel=True, seed=seed,
    )  # fmt: skip


class ModelCheckpoint:
    """Stands for pytorch_lightning's callback class, which a Lightning 1.x checkpoint names as a dict key."""


@pytest.fixture
def lightning_module(monkeypatch):
    # pickle writes a class by import path, so the stand-in must be importable under Lightning's name.
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    monkeypatch.setattr(sys.modules[ModelCheckpoint.__module__], "ModelCheckpoint", ModelCheckpoint, raising=False)


def lightning_checkpoint(state_dict):
    """A checkpoint laid out as pytorch-lightning 1.x (taming's trainer) writes it."""
    return {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {ModelCheckpoint: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 4.5e-6}]}],
        "lr_schedulers": [],
        "state_dict": state_dict,
    }


def perturb_(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (GroupNorm weights off 1, biases off 0), so that a wrong mapping
    cannot pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def reference_vqgan(dwt: bool):
    vae_model = import_reference("rudalle.vae.model")
    omegaconf = import_reference("omegaconf")
    torch.manual_seed(0)
    reference = vae_model.VQGanGumbelVAE(omegaconf.OmegaConf.create(small_taming_config()), dwt=dwt).eval()
    perturb_(reference, seed=1)
    return reference


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "vqgan.gumbelf8-sber.config.yml"
    path.write_text(yaml.safe_dump(small_taming_config()))
    return path


@pytest.mark.parity
@pytest.mark.parametrize("dwt", [False, True], ids=["plain", "wavelet"])
def test_sber_vqgan_matches_rudalle(tmp_path, config_path, lightning_module, dwt):
    reference = reference_vqgan(dwt)
    checkpoint_path = tmp_path / "vqgan.ckpt"
    if dwt:
        # vqgan.gumbelf8-sber-dwt.model.ckpt: ruDALL-E loads it with `vae.load_state_dict(checkpoint['state_dict'])`
        torch.save({"state_dict": reference.state_dict()}, checkpoint_path)
    else:
        # vqgan.gumbelf8-sber.model.ckpt: taming's Lightning checkpoint, with the loss's weights beside the model's
        loss_weights = {"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4), "loss.logvar": torch.zeros(())}
        torch.save(lightning_checkpoint({**reference.model.state_dict(), **loss_weights}), checkpoint_path)

    model = convert_sber_vqgan(checkpoint_path, config_path)
    assert model.config.wavelet_decoder is dwt and model.config.quantizer == "gumbel"
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for name, p in reference.named_parameters() if not (dwt and name.startswith("model.post_quant_conv"))
    )

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        codes = model.encode(images).indices
        reference_codes = reference.get_codebook_indices(images, disable_gumbel_softmax=True)
        assert codes.shape == (3, 8, 8)
        assert torch.equal(codes.flatten(1), reference_codes)
        assert len(codes.unique()) > 8  # the encoder really spreads over the codebook

        decoded = model.decode(codes).sample
        reference_decoded = reference.decode(reference_codes)
    assert decoded.shape == (3, 3, 64, 64) if dwt else (3, 3, 32, 32)
    torch.testing.assert_close(decoded, reference_decoded, atol=1e-4, rtol=0)
    assert decoded.std() > 0.05  # not a constant image that any mapping would give


@pytest.mark.parity
def test_inverse_haar_wavelet_matches_pytorch_wavelets():
    decoder_dwt = import_reference("rudalle.vae.decoder_dwt")
    from hf_dalle.models.dalle_vqgan import inverse_haar_wavelet

    coefficients = torch.randn(2, 12, 5, 7, generator=torch.Generator().manual_seed(0))
    low, high = coefficients[:, :3], coefficients[:, 3:].reshape(2, 3, 3, 5, 7)
    expected = decoder_dwt.DWTInverse(mode="zero", wave="db1")((low, [high]))
    torch.testing.assert_close(inverse_haar_wavelet(coefficients), expected, atol=1e-6, rtol=0)


def test_lightning_checkpoint_loads_with_only_its_allowlisted_class(tmp_path, lightning_module):
    state_dict = {"encoder.conv_in.weight": torch.randn(4, 3, 3, 3)}
    path = tmp_path / "model.ckpt"
    torch.save(lightning_checkpoint(state_dict), path)
    loaded = load_torch_checkpoint_state_dict(path)
    assert list(loaded) == ["encoder.conv_in.weight"]
    torch.testing.assert_close(loaded["encoder.conv_in.weight"], state_dict["encoder.conv_in.weight"])


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoint_with_other_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload()}, path)
    with pytest.raises(ValueError, match="not loaded for safety.*GLOBAL print was not an allowed global"):
        load_torch_checkpoint_state_dict(path)
    assert "code ran" not in capsys.readouterr().out


def test_missing_and_foreign_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        load_torch_checkpoint_state_dict(tmp_path / "absent.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_torch_checkpoint_state_dict(text)


def test_checkpoint_that_does_not_match_the_config_raises(tmp_path, config_path):
    model = DalleVQGAN(vqgan_config_from_taming(small_taming_config()))
    state_dict = {}
    for name, value in model.state_dict().items():  # a diffusers-named state dict is not a taming one
        state_dict[name] = value
    path = tmp_path / "diffusers.ckpt"
    torch.save(state_dict, path)
    with pytest.raises(
        ValueError, match=r"config.yml. asks for 3 levels of 1 residual blocks, but the checkpoint holds 0"
    ):
        convert_sber_vqgan(path, config_path)
    taming = small_taming_state_dict()
    taming["encoder.mid.attn_2.q.weight"] = taming.pop("encoder.mid.attn_1.q.weight")
    torch.save(taming, path)
    with pytest.raises(
        ValueError,
        match=r"does not hold the tensors of the configured VQGAN: missing \['vqgan.encoder.mid_block.attentions.0.to_q"
        r".weight'\], unexpected \['encoder.mid.attn_2.q.weight'\]",
    ):
        convert_sber_vqgan(path, config_path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda sd: sd["decoder.up.1.block.0.conv2.weight"].__setitem__((0, 0, 0, 0), float("nan")),
            r"'vqgan.decoder.up_blocks.1.resnets.0.conv2.weight' holds NaN or infinite values",
        ),
        (
            lambda sd: sd["quantize.embed.weight"].fill_(float("inf")),
            r"'vqgan.quantize.embedding.weight' holds NaN or infinite values",
        ),
        (
            lambda sd: sd.update({"decoder.conv_out.weight": torch.zeros(3, 32, 3, 1)}),
            r"'vqgan.decoder.conv_out.weight' has shape \(3, 32, 3, 1\), but the configured VQGAN gives \(3, 32, 3, 3\)",
        ),
    ],
    ids=["nan", "inf", "wrong shape"],
)
def test_damaged_weights_are_refused_naming_the_tensor(tmp_path, config_path, damage, message):
    state_dict = small_taming_state_dict()
    damage(state_dict)
    torch.save({"state_dict": state_dict}, tmp_path / "damaged.ckpt")
    with pytest.raises(ValueError, match=message):
        convert_sber_vqgan(tmp_path / "damaged.ckpt", config_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["model"]["params"]["ddconfig"].pop("in_channels"),
            r"it lacks \['model.params.ddconfig.in_channels'\]",
        ),
        (lambda c: c["model"]["params"].pop("n_embed"), r"it lacks \['model.params.n_embed'\]"),
        (lambda c: c["model"]["params"]["ddconfig"].update(ch=0), r"sizes must be positive integers .* got ch=0"),
        (lambda c: c["model"]["params"]["ddconfig"].update(ch_mult="1,2"), r"got ch_mult='1,2'"),
        # A few bytes of YAML asking for a model of millions of modules: refused against the checkpoint's layout.
        (
            lambda c: c["model"]["params"]["ddconfig"].update(num_res_blocks=10**6),
            r"config.yml' asks for 3 levels of 1000000 residual blocks, but the checkpoint holds 3 levels of at most 1",
        ),
        (
            lambda c: c["model"]["params"]["ddconfig"].update(ch_mult=[1] * 10**5),
            r"asks for 100000 levels of 1 residual blocks",
        ),
    ],
    ids=["no in_channels", "no n_embed", "ch 0", "ch_mult string", "blocks bomb", "levels bomb"],
)
def test_bad_configs_name_the_key(tmp_path, edit, message):
    config = small_taming_config()
    edit(config)
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": small_taming_state_dict()}, tmp_path / "ok.ckpt")
    with pytest.raises(ValueError, match=message):
        convert_sber_vqgan(tmp_path / "ok.ckpt", tmp_path / "config.yml")


def test_model_card_names_the_architecture_and_the_sources(tmp_path):
    model = DalleVQGAN(vqgan_config_from_taming(small_taming_config(), wavelet_decoder=True))
    checkpoint = tmp_path / "vqgan.gumbelf8-sber-dwt.model.ckpt"
    checkpoint.write_bytes(b"weights")
    card = str(vqgan_model_card(model, "user/sber-vqgan-dwt", [checkpoint], command="python convert.py"))
    assert "license: apache-2.0" in card and "library_name: hf_dalle" in card
    assert 'DalleVQGAN.from_pretrained("user/sber-vqgan-dwt")' in card
    assert "| encoder input | 32x32 -> 8x8 codes |" in card
    assert "| decoder output | 64x64 (Haar wavelet coefficients" in card
    assert "argmax of the Gumbel projection" in card
    assert f"| `{checkpoint.name}` | `{hashlib.sha256(b'weights').hexdigest()}` |" in card
    assert f"{model.num_parameters():,}" in card


def test_taming_config_errors():
    config = small_taming_config(target="taming.models.vqgan.EMAVQ")
    with pytest.raises(ValueError, match="unsupported taming model 'taming.models.vqgan.EMAVQ'"):
        vqgan_config_from_taming(config)
    with pytest.raises(ValueError, match="is not a taming-transformers model config"):
        vqgan_config_from_taming({"model": {}})
    nearest = vqgan_config_from_taming(small_taming_config(target="taming.models.vqgan.VQModel"))
    assert nearest.quantizer == "nearest" and nearest.downsample_factor == 4 and nearest.latent_size == 8
