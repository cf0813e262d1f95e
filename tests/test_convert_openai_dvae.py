"""The OpenAI dVAE converter against the reference: OpenAI's own `dall_e` package (installed with --no-deps)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard

from hf_dalle import DalleVAE, DalleVAEConfig, convert_openai_dvae
from hf_dalle.conversion.convert_openai_dvae import load_openai_dvae_state_dict


dall_e = pytest.importorskip("dall_e")

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_openai_dvae(n_hid, n_blk_per_group, vocab_size, n_init, channels=3, seed=0):
    """A `dall_e` Encoder/Decoder pair with seeded random weights and non-zero biases (dall_e zero-inits biases,
    so a converter that dropped them would otherwise pass)."""
    torch.manual_seed(seed)
    encoder = dall_e.Encoder(
        n_hid=n_hid, n_blk_per_group=n_blk_per_group, input_channels=channels, vocab_size=vocab_size
    )
    decoder = dall_e.Decoder(
        n_init=n_init, n_hid=n_hid, n_blk_per_group=n_blk_per_group, output_channels=channels, vocab_size=vocab_size
    )
    with torch.no_grad():
        for module in (encoder, decoder):
            for name, parameter in module.named_parameters():
                if name.endswith(".b"):
                    parameter.normal_(0, 0.1)
    return encoder.eval(), decoder.eval()


def save_openai_dvae(encoder, decoder, directory: Path, storage: str) -> tuple[Path, Path]:
    """Save like OpenAI did (`torch.save` of whole modules), or as one of the variants users meet."""
    paths = directory / "encoder.pkl", directory / "decoder.pkl"
    for module, path in zip((encoder, decoder), paths):
        if storage == "state_dict":
            torch.save(module.state_dict(), path)
        elif storage == "legacy_state_dict":  # the pre-1.6 torch.save format
            torch.save(module.state_dict(), path, _use_new_zipfile_serialization=False)
        else:
            torch.save(module, path)
    return paths


def make_non_contiguous(module):
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim == 4:  # same values, stored transposed
                parameter.data = parameter.data.transpose(0, 1).contiguous().transpose(0, 1)
                assert not parameter.is_contiguous()


PARITY_CASES = {
    # name: (n_hid, n_blk_per_group, vocab_size, n_init, channels, storage)
    "small": (16, 1, 64, 8, 3, "module"),
    "two_blocks_per_group": (32, 2, 128, 40, 3, "module"),
    "non_contiguous": (32, 2, 128, 40, 3, "non_contiguous"),
    "state_dict": (16, 1, 64, 8, 3, "state_dict"),
    "wide_grayscale_legacy_format_state_dict": (64, 1, 512, 96, 1, "legacy_state_dict"),
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_with_dall_e(case, tmp_path):
    n_hid, n_blk, vocab_size, n_init, channels, storage = PARITY_CASES[case]
    encoder, decoder = make_openai_dvae(n_hid, n_blk, vocab_size, n_init, channels)
    if storage == "non_contiguous":
        make_non_contiguous(encoder)
        make_non_contiguous(decoder)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, storage)
    if storage == "non_contiguous":  # the files really hold non-contiguous tensors
        assert not load_openai_dvae_state_dict(encoder_path)["blocks.input.w"].is_contiguous()

    vae = convert_openai_dvae(encoder_path, decoder_path)

    config = vae.config
    assert (config.hidden_size, config.num_blocks_per_group, config.vocab_size) == (n_hid, n_blk, vocab_size)
    assert (config.decoder_init_size, config.num_channels) == (n_init, channels)
    assert not vae.training
    converted = vae.state_dict()
    for prefix, reference in (("encoder.", encoder), ("decoder.", decoder)):
        for name, tensor in reference.state_dict().items():
            module, leaf = name.rsplit(".", 1)
            ours = converted[f"{prefix}{module}.{ {'w': 'weight', 'b': 'bias'}[leaf] }"]
            assert ours.is_contiguous() and ours.dtype == torch.float32
            assert torch.equal(ours, tensor), name
    assert len(converted) == len(encoder.state_dict()) + len(decoder.state_dict())

    pixel_values = torch.rand(2, channels, 32, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference_logits = encoder(dall_e.map_pixels(pixel_values))
        encoded = vae.encode(pixel_values)
        torch.testing.assert_close(encoded.logits, reference_logits)
        assert torch.equal(encoded.indices, reference_logits.argmax(dim=1))

        one_hot = F.one_hot(encoded.indices, vocab_size).permute(0, 3, 1, 2).float()
        reference_stats = decoder(one_hot)
        decoded = vae.decode(encoded.indices)
        torch.testing.assert_close(torch.cat([decoded.mu, decoded.log_scale], dim=1), reference_stats)
        torch.testing.assert_close(decoded.sample, dall_e.unmap_pixels(torch.sigmoid(reference_stats[:, :channels])))
        torch.testing.assert_close(vae.decoder(one_hot), reference_stats)


def test_converts_without_dall_e_and_runs_no_code_from_the_files(tmp_path, monkeypatch):
    encoder, decoder = make_openai_dvae(16, 1, 64, 8)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")
    for name in ("dall_e", "dall_e.encoder", "dall_e.decoder", "dall_e.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # `import dall_e` now fails
    vae = convert_openai_dvae(encoder_path, decoder_path)
    torch.testing.assert_close(vae.encoder.blocks.output.conv.bias, encoder.blocks.output.conv.b)


def test_old_pickles_without_upsample_recompute_scale_factor(tmp_path):
    # OpenAI's decoder.pkl predates `nn.Upsample.recompute_scale_factor` (torch 1.11), which broke the unpickled
    # dall_e Decoder's forward on some torch versions; only tensors are read here, so pickles without it convert.
    encoder, decoder = make_openai_dvae(16, 1, 64, 8)
    codes = torch.randint(0, 64, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference_stats = decoder(F.one_hot(codes, 64).permute(0, 3, 1, 2).float())
    for module in decoder.modules():
        if isinstance(module, torch.nn.Upsample):
            del module.recompute_scale_factor
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")

    vae = convert_openai_dvae(encoder_path, decoder_path)
    with torch.no_grad():
        torch.testing.assert_close(vae.decoder(codes), reference_stats)


class WritesAFile:
    """A pickle payload that would create a file when unpickled without restrictions."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "encoder.pkl"
    torch.save({"blocks.input.w": WritesAFile(marker)}, path)
    with pytest.raises(ValueError, match="is not an OpenAI dVAE checkpoint.*not loaded for safety"):
        convert_openai_dvae(path, path)
    assert not marker.exists()


def test_errors_name_the_problem(tmp_path):
    encoder, decoder = make_openai_dvae(16, 1, 64, 8)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")

    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        convert_openai_dvae(tmp_path / "missing.pkl", decoder_path)

    with pytest.raises(ValueError, match="holds a dVAE decoder, but was given as the encoder.*swapped"):
        convert_openai_dvae(decoder_path, encoder_path)

    other_module = tmp_path / "linear.pkl"
    torch.save(torch.nn.Linear(2, 2), other_module)
    with pytest.raises(ValueError, match="not an OpenAI dVAE checkpoint.*torch.nn.modules.linear.Linear"):
        convert_openai_dvae(other_module, decoder_path)

    legacy_module = tmp_path / "legacy.pkl"
    torch.save(encoder, legacy_module, _use_new_zipfile_serialization=False)
    with pytest.raises(
        ValueError, match="not an OpenAI dVAE checkpoint.*legacy pre-1.6 format embeds its source code"
    ):
        convert_openai_dvae(legacy_module, decoder_path)

    malformed = tmp_path / "malformed.pkl"
    _, broken_decoder = make_openai_dvae(16, 1, 64, 8)
    object.__setattr__(broken_decoder.blocks.input, "_parameters", ["w", "b"])
    torch.save(broken_decoder, malformed)
    with pytest.raises(ValueError, match="Malformed pickled module `blocks.input.`: `_parameters` is not a dict"):
        convert_openai_dvae(encoder_path, malformed)

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        convert_openai_dvae(text_file, decoder_path)

    other_state_dict = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2, 2)}, other_state_dict)
    with pytest.raises(ValueError, match=r"no `blocks.input.w`.*\['weight'\]"):
        convert_openai_dvae(other_state_dict, decoder_path)

    incomplete = tmp_path / "incomplete.pt"
    state_dict = encoder.state_dict()
    del state_dict["blocks.group_2.block_1.res_path.conv_3.b"]
    torch.save(state_dict, incomplete)
    with pytest.raises(ValueError, match=r"missing \['encoder.blocks.group_2.block_1.res_path.conv_3.bias'\]"):
        convert_openai_dvae(incomplete, decoder_path)


@pytest.mark.parametrize(
    "decoder_sizes, message",
    [
        ({"n_hid": 16, "n_blk": 1, "vocab_size": 128}, "`vocab_size` is 64 in the encoder but 128 in the decoder"),
        ({"n_hid": 32, "n_blk": 1, "vocab_size": 64}, "`hidden_size` is 16 in the encoder but 32 in the decoder"),
        (
            {"n_hid": 16, "n_blk": 2, "vocab_size": 64},
            "`num_blocks_per_group` is 1 in the encoder but 2 in the decoder",
        ),
    ],
)
def test_mismatched_encoder_and_decoder(decoder_sizes, message, tmp_path):
    encoder, _ = make_openai_dvae(16, 1, 64, 8)
    _, decoder = make_openai_dvae(decoder_sizes["n_hid"], decoder_sizes["n_blk"], decoder_sizes["vocab_size"], 8)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")
    with pytest.raises(ValueError, match=message):
        convert_openai_dvae(encoder_path, decoder_path)


def load_convert_script():
    spec = importlib.util.spec_from_file_location(
        "convert_openai_dvae_script", REPO_ROOT / "scripts" / "convert_openai_dvae.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_script_writes_safetensors_config_and_model_card(tmp_path):
    encoder, decoder = make_openai_dvae(32, 2, 128, 40)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")
    output_dir = tmp_path / "out" / "dalle-vae"
    load_convert_script().main(
        ["--encoder", str(encoder_path), "--decoder", str(decoder_path), "--output_dir", str(output_dir)]
    )

    assert sorted(p.name for p in output_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dalle-vae"]  # no temporary folder left behind
    reloaded = DalleVAE.from_pretrained(output_dir)
    converted = convert_openai_dvae(encoder_path, decoder_path)
    sizes = ("vocab_size", "hidden_size", "num_blocks_per_group", "decoder_init_size", "num_channels")
    assert [getattr(reloaded.config, name) for name in sizes] == [128, 32, 2, 40, 3]
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == "dalle_vae"
    for name, tensor in converted.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "hf_dalle"
    assert card.data.license == "mit"
    assert {"dall-e", "dvae"} <= set(card.data.tags)
    assert "| `vocab_size` (codes) | 128 |" in card.text
    assert "## How it was converted" in card.text and "## Parity" in card.text and "## Intended use" in card.text
    assert f"`{encoder_path.name}` | encoder |" in card.text


def test_script_reports_bad_input(tmp_path):
    encoder, decoder = make_openai_dvae(16, 1, 64, 8)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit, match="error: .*swapped"):
        load_convert_script().main(
            ["--encoder", str(decoder_path), "--decoder", str(encoder_path), "--output_dir", str(output_dir)]
        )
    assert not output_dir.exists()


def test_script_pushes_to_the_hub(tmp_path, hub_server):
    encoder, decoder = make_openai_dvae(16, 1, 64, 8)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")
    output_dir = tmp_path / "dalle-vae"
    output_dir.mkdir()
    stray = {".env": b"HF_TOKEN=hf_secret\n", "encoder.pkl": encoder_path.read_bytes(), "notes.txt": b"private"}
    for name, data in stray.items():  # files a user left in the folder: none of them is pushed
        (output_dir / name).write_bytes(data)
    load_convert_script().main(
        ["--encoder", str(encoder_path), "--decoder", str(decoder_path), "--output_dir", str(output_dir),
         "--push_to_hub", "--hub_model_id", "someone/dalle-vae-openai"]
    )  # fmt: skip

    uploaded = hub_server.files("someone/dalle-vae-openai")
    assert uploaded == {p.name: p.read_bytes() for p in output_dir.iterdir() if p.name not in stray}
    assert sorted(uploaded) == ["README.md", "config.json", "model.safetensors"]
    assert [commit["summary"] for commit in hub_server.commits] == ["Add DALL-E dVAE converted with hf_dalle"]

    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.library_name == "hf_dalle" and card.data.license == "mit"
    assert 'DalleVAE.from_pretrained("someone/dalle-vae-openai")' in card.text

    from_hub = DalleVAE.from_pretrained("someone/dalle-vae-openai")  # the normal download path, from the local hub
    for name, tensor in DalleVAE.from_pretrained(output_dir).state_dict().items():
        assert torch.equal(from_hub.state_dict()[name], tensor), name


@pytest.mark.slow
def test_parity_at_openai_size(tmp_path):
    """`dall_e`'s default Encoder/Decoder are the released dVAE's architecture: the conversion must give
    `DalleVAEConfig()` and the parameter counts of OpenAI's files."""
    encoder, decoder = make_openai_dvae(256, 2, 8192, 128)
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "module")
    vae = convert_openai_dvae(encoder_path, decoder_path)
    assert vae.config.to_diff_dict() == DalleVAEConfig().to_diff_dict()
    assert sum(p.numel() for p in vae.encoder.parameters()) == 53_786_240
    assert sum(p.numel() for p in vae.decoder.parameters()) == 43_829_766

    pixel_values = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference_logits = encoder(dall_e.map_pixels(pixel_values))
        encoded = vae.encode(pixel_values)
        torch.testing.assert_close(encoded.logits, reference_logits)
        assert torch.equal(encoded.indices, reference_logits.argmax(dim=1))
        reference_stats = decoder(F.one_hot(encoded.indices, 8192).permute(0, 3, 1, 2).float())
        decoded = vae.decode(encoded.indices)
        torch.testing.assert_close(torch.cat([decoded.mu, decoded.log_scale], dim=1), reference_stats)
