"""DALL·E Mini / Mega conversion from min-dalle's files: against min-dalle 0.4.11's own modules and sampling loop
(marker `parity`, in the reference venv), and without it: the folder written, the script as a subprocess (local files,
and `--from_hub` / `--push_to_hub` on the loopback Hub), bad files, the VQGAN's encoder from a Flax or taming file."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from min_dalle_reference import min_dalle_generate_codes, min_dalle_models, min_dalle_text_tokens, perturb_

import hf_dalle
from hf_dalle import DalleBartConfig, DalleBartForImageGeneration, DallePipeline, DalleVQGAN
from hf_dalle.conversion.convert_dalle_mega import (
    convert_dalle_mega,
    convert_min_dalle_vqgan,
    dalle_vqgan_from_taming_state_dict,
)
from hf_dalle.testing_utils import (
    detoker_state_dict,
    random_taming_vqgan_state_dict,
    small_vqgan_sizes,
    tiny_dalle_bart_config,
    write_flax_vqgan_checkpoint,
    write_min_dalle_models_root,
    write_tiny_dalle_mega_sources,
)
from hf_dalle.tokenization_dalle_bart import DalleBartTokenizer


REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "convert_dalle_mega.py"


def tiny_config(**overrides) -> DalleBartConfig:
    """testing_utils' tiny Mega-shaped config, narrower (4 heads of 8): conversions here pass --num_attention_heads."""
    return tiny_dalle_bart_config(
        **{"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 48, **overrides}
    )


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=600,
    )


def taming_vqgan_yaml(sizes: dict) -> dict:
    """The taming-transformers `model.yaml` of `random_taming_vqgan_state_dict(**sizes)`."""
    return {
        "model": {
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": sizes["embed_dim"],
                "n_embed": sizes["vocab_size"],
                "ddconfig": {
                    "double_z": False,
                    "z_channels": sizes["latent_channels"],
                    "resolution": 16,
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": 32,
                    "ch_mult": [1, 1, 2],
                    "num_res_blocks": 1,
                    "attn_resolutions": [4],
                    "dropout": 0.0,
                },  # fmt: skip
            },
        }
    }


def test_conversion_writes_a_pipeline_folder(tmp_path):
    config = tiny_config()
    decoder = write_min_dalle_models_root(tmp_path / "root", config, "mega")
    encoder = torch.load(tmp_path / "root" / "dalle_bart_mega" / "encoder.pt")
    output = tmp_path / "out"
    converted = convert_dalle_mega(output, "mega", tmp_path / "root", num_attention_heads=4, max_shard_bytes=30_000)
    assert (converted.hidden_size, converted.encoder_layers, converted.decoder_vocab_size) == (32, 2, 66)
    assert converted.decoder_start_token_id == 63  # min-dalle's: the last code

    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == "DallePipeline" and index["default_guidance_scale"] == 16.0
    assert index["transformer"] == ["hf_dalle.models.dalle_bart.modeling_dalle_bart", "DalleBartForImageGeneration"]
    assert index["tokenizer"] == ["hf_dalle.tokenization_dalle_bart", "DalleBartTokenizer"]
    assert index["vae"] == ["hf_dalle.models.dalle_vqgan.modeling_dalle_vqgan", "DalleVQGAN"]
    assert index["clip_model"] == [None, None]
    shards = sorted(p.name for p in (output / "transformer").glob("*.safetensors"))
    assert len(shards) > 2 and (output / "transformer" / "model.safetensors.index.json").is_file()

    model = DalleBartForImageGeneration.from_pretrained(output / "transformer")
    state = model.state_dict()
    for key, tensor in encoder.items():
        assert torch.equal(state[f"model.encoder.{key}"], tensor), key
    for key, tensor in decoder.items():
        assert torch.equal(state[key if key == "lm_head.weight" else f"model.decoder.{key}"], tensor), key
    generation = model.generation_config
    assert (generation.do_sample, generation.top_k, generation.guidance_scale) == (True, 256, 16.0)
    assert (generation.max_new_tokens, generation.decoder_start_token_id) == (16, 63)

    tokenizer = DalleBartTokenizer.from_pretrained(output / "tokenizer")
    folder = tmp_path / "root" / "dalle_bart_mega"
    reference = DalleBartTokenizer.from_min_dalle_files(folder / "vocab.json", folder / "merges.txt", 16)
    captions = ["a red circle above a blue square", "Ünïcödé 🐱 and\ttabs"]
    assert torch.equal(tokenizer.encode_captions(captions), reference.encode_captions(captions))
    assert tokenizer.model_max_length == 16

    vae = DalleVQGAN.from_pretrained(output / "vae")
    assert (vae.config.has_encoder, vae.config.pixel_range, vae.config.latent_size) == (False, "[0, 1]", 4)
    sequences = model.generate(tokenizer.encode_captions(captions), guidance_scale=4.0, top_k=8)
    images = vae.decode(model.image_codes_from_ids(sequences)).sample
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match="has no encoder.*--vqgan_flax_checkpoint"):
        vae.encode(images)

    # model_index.json as the pipeline writes it: the folder loads as a DallePipeline with min-dalle's defaults.
    pipe = DallePipeline.from_pretrained(output)
    assert isinstance(pipe.transformer, DalleBartForImageGeneration) and pipe.config.default_guidance_scale == 16.0
    assert not (output / "README.md").exists()  # the script writes the card


def test_import_hf_dalle_leaves_the_converter_unimported():
    code = (
        "import sys, hf_dalle\n"
        "assert 'hf_dalle.conversion.convert_dalle_mega' not in sys.modules\n"
        "assert callable(hf_dalle.convert_dalle_mega)\n"
        "assert 'hf_dalle.conversion.convert_dalle_mega' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="no attribute 'convert_nothing'"):
        hf_dalle.convert_nothing  # noqa: B018


def test_script_converts_mini_from_a_models_root(tmp_path):
    config = tiny_config(decoder_vocab_size=65)  # Mini's table: the codes and one more row
    write_min_dalle_models_root(tmp_path / "root", config, "mini")
    output = tmp_path / "dalle-mini-tiny"
    result = run_script(
        "--min_dalle_dir", str(tmp_path / "root"), "--model_name", "mini", "--num_attention_heads", "4",
        "--decoder_start", "dalle-mini", "--output_dir", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Converted DALL·E Mini (2 + 2 layers, width 32" in result.stdout
    converted = json.loads((output / "transformer" / "config.json").read_text())
    assert (converted["decoder_vocab_size"], converted["decoder_start_token_id"]) == (65, 64)  # dalle-mini's start
    card = (output / "README.md").read_text()
    assert (
        "python scripts/convert_dalle_mega.py --min_dalle_dir" in card and "starts from token 64, dalle-mini's" in card
    )
    assert "DALL·E Mini" in card and "**decoder only**" in card and "not reranked" in card
    assert "--lora_rank 8" in card and "decoder-only VQGAN cannot do" in card  # fine-tuning needs the encoder
    assert "hf-dalle estimate-memory --config" in card
    assert f"safetensors, {converted['dtype']})" in card and converted["dtype"] in ("float16", "float32")  # not "None"
    encoder_file = tmp_path / "root" / "dalle_bart_mini" / "encoder.pt"
    assert f"| `encoder.pt` | `{hashlib.sha256(encoder_file.read_bytes()).hexdigest()}` |" in card
    # Heads that do not divide the width.
    result = run_script(
        "--min_dalle_dir", str(tmp_path / "root"), "--model_name", "mini", "--num_attention_heads", "5",
        "--output_dir", str(tmp_path / "other"),
    )  # fmt: skip
    assert result.returncode != 0 and "not a multiple of num_attention_heads=5" in result.stderr


def test_script_converts_the_taming_vqgan_and_a_clip_into_a_pipeline(tmp_path):
    """The documented command line with every local source: min-dalle's models root, the whole VQGAN as a taming
    checkpoint + YAML, a CLIP folder. The folder loads as a pipeline that primes with the encoder and reranks."""
    config = tiny_dalle_bart_config()
    paths = write_tiny_dalle_mega_sources(tmp_path / "sources", config)
    sizes = small_vqgan_sizes(config)
    taming = random_taming_vqgan_state_dict(**sizes, with_encoder=True, seed=1)  # the VQGAN of the sources
    torch.save({"state_dict": taming}, tmp_path / "last.ckpt")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(taming_vqgan_yaml(sizes)))
    output = tmp_path / "dalle-mega-tiny"
    result = run_script(
        "--min_dalle_dir", str(paths["models_root"]), "--model_name", "mega", "--vqgan_checkpoint",
        str(tmp_path / "last.ckpt"), "--vqgan_config", str(tmp_path / "model.yaml"), "--clip_model",
        str(paths["clip_model"]), "--output_dir", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pipe = DallePipeline.from_pretrained(output)
    assert pipe.vae.config.has_encoder and pipe.clip_model is not None
    # The encoder is the sources' VQGAN's: the codes of the same VQGAN read from its Flax checkpoint.
    flax = convert_min_dalle_vqgan(
        paths["models_root"] / "vqgan" / "detoker.pt", 4, flax_checkpoint=paths["vqgan_flax_checkpoint"]
    )
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    codes = pipe.vae.encode(image[None]).indices.flatten()
    assert torch.equal(codes, flax.encode(image[None]).indices.flatten())
    output = pipe(
        "a red circle", image=image, num_prime_rows=1, num_candidates=3, num_images_per_prompt=2, output_type="latent",
        generator=[torch.Generator().manual_seed(i) for i in range(3)],
    )  # fmt: skip
    assert len(output.scores) == 2 and output.scores[0] >= output.scores[1]  # reranked by the CLIP
    assert (output.images.flatten(1)[:, :4] == codes[:4]).all()  # primed with the image's top row


def test_script_converts_from_the_hub_and_pushes(hub_server, tmp_path):
    """`--from_hub` downloads kuprel/min-dalle's files under their Hub names (Mega's have no suffix), here from the
    loopback Hub, in a subprocess that reaches it through HF_ENDPOINT; `--push_to_hub` uploads the folder."""
    from huggingface_hub import HfApi

    config = tiny_config()
    root = tmp_path / "root"
    write_min_dalle_models_root(root, config, "mega")
    api = HfApi()
    api.create_repo("kuprel/min-dalle", exist_ok=True)
    for path in [*(root / "dalle_bart_mega").iterdir(), root / "vqgan" / "detoker.pt"]:
        api.upload_file(path_or_fileobj=path, path_in_repo=path.name, repo_id="kuprel/min-dalle")
    output = tmp_path / "converted"
    env = {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": hub_server.endpoint,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_TOKEN": "hf_local_hub_test_token",
    }
    result = run_script(
        "--from_hub", "--model_name", "mega", "--num_attention_heads", "4", "--output_dir", str(output),
        "--push_to_hub", "--hub_model_id", "hf-dalle-tester/dalle-mega-tiny", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (output / "transformer" / "generation_config.json").is_file()
    pipe = DallePipeline.from_pretrained(output)  # the folder written is a pipeline, with min-dalle's defaults
    assert isinstance(pipe.transformer, DalleBartForImageGeneration) and pipe.config.default_guidance_scale == 16.0
    pushed = hub_server.files("hf-dalle-tester/dalle-mega-tiny")
    assert {"model_index.json", "README.md", "transformer/config.json", "tokenizer/tokenizer.json"} <= set(pushed)
    assert "vae/model.safetensors" in pushed
    assert 'from_pretrained("hf-dalle-tester/dalle-mega-tiny"' in pushed["README.md"].decode()


class CodeInPickle:
    def __reduce__(self):
        return (print, ("this ran",))


def break_file(root: Path, kind: str) -> str:
    """Spoil one of min-dalle's files in one way; returns the error message expected."""
    folder = root / "dalle_bart_mega"
    if kind == "missing":
        (folder / "decoder.pt").unlink()
        return r"missing: \[.*decoder\.pt'\]"
    if kind == "pickle with code":
        torch.save({"embed_tokens.weight": torch.zeros(2), "x": CodeInPickle()}, folder / "encoder.pt")
        return "encoder.pt' holds objects other than tensors"
    if kind == "truncated":
        data = (folder / "decoder.pt").read_bytes()
        (folder / "decoder.pt").write_bytes(data[: len(data) // 2])
        return "decoder.pt' is not a PyTorch checkpoint"
    state_dict = torch.load(folder / "decoder.pt")
    if kind == "wrong shape":
        state_dict["layers.1.glu.fc2.weight"] = torch.zeros(32, 40)
        message = r"decoder\.pt: 'layers\.1\.glu\.fc2\.weight' has shape \(32, 40\).*gives \(32, 48\)"
    elif kind == "nan":
        state_dict["layers.0.encoder_attn.v_proj.weight"][3, 5] = float("nan")
        message = r"decoder\.pt: 'layers\.0\.encoder_attn\.v_proj\.weight' holds NaN"
    elif kind == "missing tensor":
        del state_dict["layers.1.glu.ln1.bias"]
        message = r"decoder\.pt does not hold the tensors of .*: missing \['layers\.1\.glu\.ln1\.bias'\]"
    elif kind == "integer tensor":
        state_dict["final_ln.weight"] = torch.ones(32, dtype=torch.long)
        message = r"'final_ln\.weight' holds torch\.int64 values"
    elif kind == "detoker inf":
        detoker = torch.load(root / "vqgan" / "detoker.pt")
        detoker["decoder.conv_out.bias"][0] = float("inf")
        torch.save(detoker, root / "vqgan" / "detoker.pt")
        return r"detoker\.pt: 'vqgan\.decoder\.conv_out\.bias' holds NaN or infinite"
    torch.save(state_dict, folder / "decoder.pt")
    return message


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "pickle with code",
        "truncated",
        "wrong shape",
        "nan",
        "missing tensor",
        "integer tensor",
        "detoker inf",
    ],
)
def test_bad_files_get_clear_errors_and_nothing_is_written(tmp_path, kind, capsys):
    write_min_dalle_models_root(tmp_path / "root", tiny_config(), "mega")
    message = break_file(tmp_path / "root", kind)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        convert_dalle_mega(tmp_path / "out", "mega", tmp_path / "root", num_attention_heads=4)
    assert "this ran" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tensors_of_no_use_are_left_out_with_a_warning(tmp_path, caplog):
    """min-dalle loads its files with `strict=False`: a tensor the model has no place for is named, not fatal."""
    write_min_dalle_models_root(tmp_path / "root", tiny_config(), "mega")
    path = tmp_path / "root" / "dalle_bart_mega" / "encoder.pt"
    torch.save({**torch.load(path), "pose_tokens": torch.zeros(2, 16)}, path)
    with caplog.at_level("WARNING"):
        convert_dalle_mega(tmp_path / "out", "mega", tmp_path / "root", num_attention_heads=4)
    assert "('encoder.pt', 'pose_tokens')" in caplog.text
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "transformer" / "model.safetensors", "pt") as weights:
        assert "model.encoder.embed_tokens.weight" in weights.keys() and "pose_tokens" not in str(weights.keys())


# ---------------------------------------------------------------------------------- the VQGAN's encoder


def test_flax_and_taming_vqgans_add_the_encoder(tmp_path):
    taming = random_taming_vqgan_state_dict(**small_vqgan_sizes(tiny_config()), with_encoder=True, seed=3)
    torch.save(detoker_state_dict(taming), tmp_path / "detoker.pt")
    write_flax_vqgan_checkpoint(tmp_path / "flax_model.msgpack", taming)
    vqgan = convert_min_dalle_vqgan(
        tmp_path / "detoker.pt", latent_size=4, flax_checkpoint=tmp_path / "flax_model.msgpack"
    )
    assert (vqgan.config.has_encoder, vqgan.config.pixel_range, vqgan.config.image_size) == (True, "[0, 1]", 16)
    # The same tensors as the taming state dict converted directly: every kernel transposed back, every name mapped.
    direct = dalle_vqgan_from_taming_state_dict(taming, 4, "taming").state_dict()
    assert vqgan.state_dict().keys() == direct.keys()
    assert all(torch.equal(vqgan.state_dict()[k], direct[k]) for k in direct)
    pixels = torch.rand(2, 3, 16, 16)
    codes = vqgan.encode(pixels).indices
    assert codes.shape == (2, 4, 4) and 0 <= vqgan.decode(codes).sample.min()
    # Encoding reads [0, 1] pixels as they are: the same codes as the VQModel's own encoder on those values.
    latents = vqgan.vqgan.encode(pixels).latents
    assert torch.equal(codes, vqgan.vqgan.quantize(latents)[2][2].reshape(2, 4, 4))

    # The same VQGAN as a taming checkpoint + YAML.
    sizes = small_vqgan_sizes(tiny_config())
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(taming_vqgan_yaml(sizes)))
    torch.save({"state_dict": taming}, tmp_path / "last.ckpt")
    from_taming = convert_min_dalle_vqgan(
        tmp_path / "detoker.pt", 4, taming_checkpoint=tmp_path / "last.ckpt", taming_config=tmp_path / "model.yaml"
    )
    assert (from_taming.config.has_encoder, from_taming.config.pixel_range) == (True, "[0, 1]")
    assert torch.equal(from_taming.encode(pixels).indices, codes)

    # A VQGAN with another codebook than detoker.pt's is not the one the transformer was trained with.
    other = random_taming_vqgan_state_dict(**sizes, with_encoder=True, seed=4)
    write_flax_vqgan_checkpoint(tmp_path / "other.msgpack", other)
    with pytest.raises(ValueError, match="another codebook than min-dalle's detoker.pt"):
        convert_min_dalle_vqgan(tmp_path / "detoker.pt", 4, flax_checkpoint=tmp_path / "other.msgpack")
    (tmp_path / "junk.msgpack").write_bytes(b"\x93\x01\x02")
    with pytest.raises(ValueError, match="not a Flax msgpack checkpoint"):
        convert_min_dalle_vqgan(tmp_path / "detoker.pt", 4, flax_checkpoint=tmp_path / "junk.msgpack")


# ---------------------------------------------------------------------------------- parity with min-dalle 0.4.11


@pytest.mark.parity
def test_converted_model_matches_min_dalle(tmp_path):
    models = min_dalle_models()
    sizes = {"layer_count": 2, "embed_count": 64, "attention_head_count": 4, "glu_embed_count": 96}
    torch.manual_seed(0)
    encoder = models.DalleBartEncoder(text_vocab_count=400, text_token_count=64, device="cpu", **sizes)
    decoder = models.DalleBartDecoder(image_vocab_count=16415, device="cpu", **sizes)  # Mega's extra rows
    detokenizer = models.VQGanDetokenizer()
    for seed, module in enumerate((encoder, decoder, detokenizer)):
        perturb_(module, seed, scale=0.5 if module is not detokenizer else 0.01)
        module.eval()

    root = tmp_path / "root"
    config = DalleBartConfig(
        text_vocab_size=400, image_vocab_size=2**14, decoder_vocab_size=16416, max_text_length=64,
        hidden_size=64, encoder_layers=2, decoder_layers=2, num_attention_heads=4, intermediate_size=96,
        decoder_start_token_id=2**14 - 1,
    )  # fmt: skip
    write_min_dalle_models_root(root, config, "mega")  # the BPE files; the weights are min-dalle's:
    torch.save(encoder.state_dict(), root / "dalle_bart_mega" / "encoder.pt")
    torch.save(decoder.state_dict(), root / "dalle_bart_mega" / "decoder.pt")
    torch.save(detokenizer.state_dict(), root / "vqgan" / "detoker.pt")
    result = run_script(
        "--min_dalle_dir", str(root), "--model_name", "mega", "--num_attention_heads", "4",
        "--output_dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = DalleBartForImageGeneration.from_pretrained(tmp_path / "out" / "transformer").eval()
    tokenizer = DalleBartTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    vae = DalleVQGAN.from_pretrained(tmp_path / "out" / "vae").eval()

    folder = root / "dalle_bart_mega"
    reference_tokenizer = import_text_tokenizer(folder)
    caption = "A comfy chair that looks like an avocado"
    text_tokens = min_dalle_text_tokens(reference_tokenizer, caption)  # [unconditional, caption]
    assert torch.equal(text_tokens[1:], tokenizer.encode_captions([caption]))
    assert torch.equal(text_tokens[:1], model.unconditional_input_ids(1))

    with torch.no_grad():
        reference_states = encoder.forward(text_tokens)
        states = model.get_encoder()(text_tokens).last_hidden_state
        torch.testing.assert_close(states, reference_states, rtol=0, atol=1e-4)

        attention_state = torch.zeros(2, 4, 256, 64)
        mask = text_tokens.not_equal(1)[:, None, None, :]
        reference_logits, _ = decoder.forward(
            mask, reference_states, attention_state, torch.tensor([[2**14 - 1]]), torch.tensor([0])
        )
        logits = model(text_tokens, decoder_input_ids=torch.full((2, 1), 2**14 - 1)).logits
        torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-4)
        assert logits.abs().max() > 1  # logits of a useful scale: the tolerance is not vacuous

    reference_codes = min_dalle_generate_codes(encoder, decoder, text_tokens, top_k=1, supercondition_factor=16.0)
    sequences = model.generate(text_tokens[1:], do_sample=True, top_k=1, guidance_scale=16.0)
    codes = model.image_codes_from_ids(sequences)
    assert torch.equal(codes.flatten(1), reference_codes)
    assert len(reference_codes.unique()) > 8  # the loop drew many different codes

    with torch.no_grad():
        reference_image = detokenizer.forward(False, reference_codes) / 255  # [256, 256, 3] in [0, 1]
        image = vae.decode(codes).sample[0].permute(1, 2, 0)
    torch.testing.assert_close(image, reference_image, rtol=0, atol=1e-3)
    assert reference_image.std() > 0.05  # an image, not a constant

    # The converted folder as a pipeline, with its own defaults (super-conditioning 16) and top-k 1: min-dalle's codes
    # and image, through the pipeline's sampling loop (caption encoded once, cached cross-attention, guidance halves).
    pipe = DallePipeline.from_pretrained(tmp_path / "out")
    latents = pipe(caption, top_k=1, num_candidates=1, output_type="latent")
    assert torch.equal(latents.images.flatten(1), reference_codes)
    images = pipe(caption, top_k=1, num_candidates=1, output_type="pt").images
    torch.testing.assert_close(images[0].permute(1, 2, 0), reference_image, rtol=0, atol=1e-3)


def import_text_tokenizer(folder: Path):
    from min_dalle_reference import min_dalle_text_tokenizer

    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    return min_dalle_text_tokenizer(vocab, (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1])
