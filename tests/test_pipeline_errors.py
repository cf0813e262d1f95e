"""Bad input and damaged files on the pipeline, CLI and loading paths: a clear error naming the problem (or a safe
result), never a flat gray image, an overwritten file or a half-done run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

from hf_dalle import DallePipeline
from hf_dalle.cli import main as cli_main
from hf_dalle.models.dalle import DalleConfig, DalleForImageGeneration
from hf_dalle.testing_utils import make_tiny_pipeline
from hf_dalle.training.loading import load_component


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


@pytest.fixture(scope="module")
def pipeline_dir(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline")
    pipe.save_pretrained(path)
    return path


def seeded(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def run_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_dalle.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


# Non-finite sampling


def test_non_finite_settings_are_refused_up_front(pipe):
    for kwargs, message in [
        ({"guidance_scale": float("inf")}, "guidance_scale` must be a finite number"),
        ({"guidance_scale": float("nan")}, "guidance_scale` must be a finite number"),
        ({"temperature": float("inf")}, "temperature` must be a finite number > 0"),
        ({"temperature": float("nan")}, "temperature` must be a finite number > 0"),
        ({"top_p": float("nan")}, "top_p"),
    ]:
        with pytest.raises(ValueError, match=message):
            pipe("a red circle", num_candidates=1, generator=seeded(1), **kwargs)


def test_probabilities_that_turn_nan_fail_instead_of_giving_a_flat_image(pipe):
    # 1e-45 is a positive float, but the logits divided by it overflow: softmax gives NaN.
    with pytest.raises(ValueError, match="non-finite probabilities .* at step 0:"):
        pipe("a red circle", num_candidates=2, generator=seeded(2), temperature=1e-45)
    broken = make_tiny_pipeline()
    with torch.no_grad():
        broken.transformer.model.layers[-1].mlp.fc_out.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite probabilities"):
        broken("a red circle", num_candidates=2, generator=seeded(2))


def test_infinite_default_guidance_scale_in_model_index_is_refused(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "default_guidance_scale": float("inf")}))
    assert "Infinity" in (tmp_path / "model_index.json").read_text()
    with pytest.raises(ValueError, match=r"default_guidance_scale` \(saved in model_index.json\) must be a finite"):
        DallePipeline.from_pretrained(tmp_path)


def test_cli_guidance_scale_inf_exits_non_zero_and_writes_nothing(pipeline_dir, tmp_path):
    result = run_cli("generate", "a red circle", "--model", pipeline_dir, "--guidance-scale", "inf",
                     "--num-candidates", "1", "--num-images", "1", "--output-dir", tmp_path / "out")  # fmt: skip
    assert result.returncode != 0
    assert "argument --guidance-scale: must be a number >= 1 (1 = off), got 'inf'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*.png"))


# LoRA adapters that are damaged or belong to another model


@pytest.fixture
def adapter_dir(tmp_path):
    pytest.importorskip("peft")
    from hf_dalle.lora import add_lora_adapter, save_lora_adapter

    donor = make_tiny_pipeline()
    add_lora_adapter(donor.transformer, rank=4)
    with torch.no_grad():
        for name, param in donor.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_()  # lora_B starts at zero: make the adapter change the outputs
    save_lora_adapter(donor.transformer, tmp_path / "adapter")
    return tmp_path / "adapter"


def logits(pipe):
    stream = pipe.transformer.prepare_input_ids(pipe.tokenizer.encode_captions(["a red circle"], max_length=8))
    with torch.no_grad():
        return pipe.transformer(stream).logits


def rewrite_adapter(adapter_dir, edit):
    path = adapter_dir / "adapter_model.safetensors"
    weights = load_file(path)
    edit(weights)
    save_file(weights, path)


def test_nan_adapter_is_refused_and_nothing_loaded(adapter_dir):
    rewrite_adapter(adapter_dir, lambda w: w[next(k for k in w if "lora_B" in k)].fill_(float("nan")))
    pipe = make_tiny_pipeline()
    base = logits(pipe)
    with pytest.raises(ValueError, match="non-finite .* weights in .*lora_B"):
        pipe.load_lora_weights(adapter_dir)
    assert not getattr(pipe.transformer, "peft_config", None)
    assert torch.equal(logits(pipe), base)


def test_adapter_with_unmatched_weights_is_refused_and_unloaded(adapter_dir):
    def rename_one(weights):
        key = next(k for k in weights if "layers.1" in k and "lora_B" in k)
        weights[key.replace("layers.1", "layers.7")] = weights.pop(key)

    rewrite_adapter(adapter_dir, rename_one)
    pipe = make_tiny_pipeline()
    base = logits(pipe)
    with pytest.raises(ValueError, match=r"does not match this transformer \(the weights \[.*layers\.[17]"):
        pipe.load_lora_weights(adapter_dir)
    assert torch.equal(logits(pipe), base)
    assert not any(".default." in name for name, _ in pipe.transformer.named_parameters())


@pytest.mark.parametrize(
    "changes, message",
    [
        # Bounded by the weights before peft allocates anything (r rows per adapted layer).
        ({"r": 7}, r"its config asks for ranks \[7\], but its weights are of rank \[4\]"),
        ({"r": 2_000_000}, r"asks for ranks \[2000000\]"),
        ({"r": 4.0}, r"asks for ranks \[4.0\]"),
        ({"lora_alpha": float("inf")}, r"lora_alpha must be a finite number > 0, got \[inf\]"),
        ({"lora_alpha": float("nan")}, r"lora_alpha must be a finite number > 0, got \[nan\]"),
        ({"lora_alpha": 1e30}, r"lora_alpha 1e\+30 at rank 4 scales the adapter by 2.5e\+29, more than 10000"),
        ({"modules_to_save": ["lm_head"]}, r"lists modules_to_save \['lm_head'\]: whole modules"),
        # Passes the checks, fails inside peft (rank-1 layers for rank-4 weights): peft's error, nothing attached.
        ({"r": 1}, r"does not match this transformer \(.*size mismatch"),
    ],
    ids=["r 7", "r 2e6", "r float", "alpha inf", "alpha nan", "alpha 1e30", "modules_to_save", "peft fails"],
)
def test_adapter_config_that_does_not_fit_its_weights_is_refused_and_nothing_loaded(adapter_dir, changes, message):
    config_file = adapter_dir / "adapter_config.json"
    saved = config_file.read_text()
    config_file.write_text(json.dumps({**json.loads(saved), **changes}))
    pipe = make_tiny_pipeline()
    base = logits(pipe)
    with pytest.raises(ValueError, match=message):
        pipe.load_lora_weights(adapter_dir)
    assert not hasattr(pipe.transformer, "peft_config")
    assert not any("lora_" in name for name, _ in pipe.transformer.named_parameters())
    assert torch.equal(logits(pipe), base)
    config_file.write_text(saved)
    pipe.load_lora_weights(adapter_dir)  # the model takes the adapter with its own config afterwards
    assert not torch.equal(logits(pipe), base)


def test_load_lora_weights_from_a_missing_folder(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="No such LoRA adapter folder: '/no/such/adapter'"):
        pipe.load_lora_weights("/no/such/adapter")


# Images of 16-bit and float modes, and NaN pixels


def gray_images(value: float) -> dict[str, PIL.Image.Image]:
    """The same gray `value` in [0, 1] as 8-bit, 16-bit, 32-bit integer and float images."""
    side = 32
    return {
        "L": PIL.Image.fromarray(np.full((side, side), round(value * 255), dtype=np.uint8)),
        "I;16": PIL.Image.fromarray(np.full((side, side), round(value * 65535), dtype=np.uint16)),
        "I": PIL.Image.fromarray(np.full((side, side), round(value * 65535), dtype=np.int32)),
        "F": PIL.Image.fromarray(np.full((side, side), value, dtype=np.float32)),
    }


def test_high_range_images_are_scaled_not_saturated():
    from hf_dalle.image_utils import to_rgb
    from hf_dalle.training.data import image_to_tensor

    images = gray_images(0.4)
    assert {mode: image.mode for mode, image in images.items()} == {m: m for m in images}
    for mode, image in images.items():
        assert np.array_equal(np.asarray(to_rgb(image)), np.full((32, 32, 3), 102, dtype=np.uint8)), mode
        # Training data (and scripts/pretokenize.py, which uses the same function).
        torch.testing.assert_close(image_to_tensor(image, 32), torch.full((3, 32, 32), 102 / 255))
    with pytest.raises(ValueError, match=r"mode 'F' image must have values in \[0, 1\], got values in \[2, 2\]"):
        to_rgb(PIL.Image.fromarray(np.full((4, 4), 2.0, dtype=np.float32)))
    with pytest.raises(ValueError, match="mode 'F' image must have values in"):
        to_rgb(PIL.Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)))


def test_priming_with_a_16_bit_image_uses_its_codes(pipe, monkeypatch):
    encoded = []
    original_encode = pipe.vae.encode
    monkeypatch.setattr(pipe.vae, "encode", lambda pixels: encoded.append(pixels) or original_encode(pixels))
    for image in gray_images(0.4).values():
        pipe("a red circle", num_candidates=1, generator=seeded(1), image=image, num_prime_rows=1)
    for pixels in encoded:
        torch.testing.assert_close(pixels, torch.full((1, 3, 32, 32), 102 / 255))


def test_nan_pixels_fail_the_dvae_range_check(pipe):
    pixels = torch.rand(1, 3, 32, 32)
    pixels[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[nan, nan\]"):
        pipe.vae.encode(pixels)


# estimate-memory


def test_estimate_memory_refuses_what_is_not_a_dalle_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_json").mkdir()
    (tmp_path / "not_json" / "config.json").write_text("{not json")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    for folder, message in [
        ("empty", "has no config.json"),
        ("not_json", "not a valid JSON file"),
        ("gpt2", "the config of a 'gpt2' model, not of a DALL-E transformer"),
        ("missing/folder", "No such transformer or pipeline folder"),
    ]:
        with pytest.raises(SystemExit, match=message) as error:
            cli_main(["estimate-memory", "--config", str(tmp_path / folder)])
        assert error.value.code != 0
    assert capsys.readouterr().out == ""  # no estimate printed


def test_estimate_memory_counts_without_building_every_layer():
    from hf_dalle.memory import estimate_memory

    # The count from one block per attention type equals the count of the whole model.
    config = DalleConfig(
        text_vocab_size=50, image_vocab_size=16, max_text_length=4, image_grid_size=2, hidden_size=8,
        num_hidden_layers=5, num_attention_heads=2, attention_types=["row", "column", "row", "column", "conv"],
    )  # fmt: skip
    model = DalleForImageGeneration(config)
    assert estimate_memory(config, dtypes=["fp32"])[0].num_parameters == sum(p.numel() for p in model.parameters())
    # An absurdly deep config is estimated in a fresh process with a small memory peak (building its 5000 blocks,
    # even on the meta device, takes hundreds of MiB of Python objects and tens of seconds).
    script = (
        "import resource; from hf_dalle import DalleConfig; from hf_dalle.memory import estimate_memory; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "config = DalleConfig(num_hidden_layers=5000, attention_types=['row'] * 4999 + ['conv']); "
        "estimate = estimate_memory(config)[0]; "
        "print(estimate.num_parameters, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    num_parameters, peak_mib = map(int, result.stdout.split())
    twelve_b = estimate_memory(DalleConfig(), dtypes=["fp32"])[0].num_parameters
    per_block = twelve_b - estimate_memory(DalleConfig(num_hidden_layers=63), dtypes=["fp32"])[0].num_parameters
    assert num_parameters == twelve_b + (5000 - 64) * per_block
    assert peak_mib < 64


# CLI output files and arguments


def test_cli_output_files_never_overwrite_each_other(pipeline_dir, tmp_path, capsys):
    prompts = ["A red circle!", "a red circle", "красный круг", "红色的圆", "🔴", "🟦"]
    code = cli_main(["generate", *prompts, "--model", str(pipeline_dir), "--num-candidates", "1", "--num-images",
                     "1", "--output-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    printed = [line.split("  ")[0] for line in capsys.readouterr().out.splitlines() if "score=" in line]
    assert len(printed) == len(set(printed)) == len(prompts)
    assert sorted(Path(p).name for p in printed) == sorted(
        ["a_red_circle_0.png", "a_red_circle-2_0.png", "красный_круг_0.png", "红色的圆_0.png", "image_0.png",
         "image-2_0.png"]
    )  # fmt: skip
    assert all(Path(p).is_file() for p in printed)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed", str(2**64 - 1)], "--seed must be between 0 and"),
        (["--seed", "-1"], "--seed must be between 0 and"),
        (["--model", "/nonexistent"], "No such pipeline folder: '/nonexistent'"),
    ],
)
def test_cli_bad_values_get_a_message(pipeline_dir, tmp_path, extra, message):
    argv = ["generate", "a red circle", "--model", str(pipeline_dir), "--num-candidates", "2", "--num-images", "1"]
    # A SystemExit with a message: Python prints the message alone, no traceback.
    with pytest.raises(SystemExit, match=message) as error:
        cli_main([*argv, "--output-dir", str(tmp_path / "out"), *extra])
    assert error.value.code.startswith("hf-dalle generate: error: ")
    assert not list((tmp_path / "out").glob("*.png"))


def test_cli_checks_the_output_dir_before_loading_or_generating(tmp_path):
    not_a_folder = tmp_path / "file.png"
    not_a_folder.write_bytes(b"")
    # The model does not exist either: the output folder is what is checked first.
    result = run_cli("generate", "a red circle", "--model", tmp_path / "no_model", "--output-dir", not_a_folder)
    assert result.returncode != 0 and "--output-dir" in result.stderr and "Traceback" not in result.stderr


# Pipeline arguments of the wrong type


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": "1.0"}, "`temperature` must be a finite number > 0, got '1.0'"),
        ({"temperature": None}, "`temperature` must be a finite number > 0, got None"),
        ({"guidance_scale": "3"}, "`guidance_scale` must be a finite number >= 1"),
        ({"top_k": "5"}, "`top_k` must be a non-negative integer"),
        ({"top_k": 2.5}, "`top_k` must be a non-negative integer"),
        ({"top_p": "0.9"}, "`top_p` must be a number in"),
        ({"num_candidates": "2"}, "`num_candidates` must be a positive integer"),
        ({"num_candidates": None}, "`num_candidates` must be a positive integer"),
        ({"num_images_per_prompt": 1.0}, "`num_images_per_prompt` must be an integer"),
        ({"candidate_batch_size": True}, "`candidate_batch_size` must be a positive integer"),
        ({"generator": 42}, r"`generator` must be a torch.Generator or a list of them, got int .*manual_seed"),
        ({"generator": [torch.Generator(), 7]}, r"`generator` must be a list of torch.Generator, got a list with"),
        ({"image": torch.rand(3, 32, 32), "num_prime_rows": 1.5}, "`num_prime_rows` must be an integer, got 1.5"),
        ({"num_prime_rows": "1"}, "`num_prime_rows` must be an integer"),
    ],
)
def test_wrong_argument_types_name_the_argument(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe("a red circle", **{"num_candidates": 2, **kwargs})


def test_integer_and_numpy_numbers_are_accepted(pipe):
    kwargs = {"num_candidates": 2, "num_images_per_prompt": 2, "output_type": "pt"}
    as_float = pipe("a red circle", temperature=2.0, guidance_scale=2.0, generator=seeded(2), **kwargs).images
    as_int = pipe("a red circle", temperature=2, guidance_scale=2, generator=seeded(2), **kwargs).images
    as_numpy = pipe(
        "a red circle", temperature=np.float32(2), guidance_scale=np.int64(2), generator=seeded(2), **kwargs
    ).images
    torch.testing.assert_close(as_int, as_float)
    torch.testing.assert_close(as_numpy, as_float)


# Loading


def test_from_pretrained_names_what_is_missing(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="No such pipeline folder: '/missing/folder'"):
        DallePipeline.from_pretrained("/missing/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="'.*empty' is not a pipeline folder: it has no model_index.json"):
        DallePipeline.from_pretrained(tmp_path / "empty")
    pipe.save_pretrained(tmp_path / "no_vae")
    for file in (tmp_path / "no_vae" / "vae").iterdir():
        file.unlink()
    (tmp_path / "no_vae" / "vae").rmdir()
    with pytest.raises(FileNotFoundError, match=r"'.*no_vae' has no vae/ subfolder.*lists the component 'vae'"):
        DallePipeline.from_pretrained(tmp_path / "no_vae")
    # A component passed in needs no folder.
    loaded = DallePipeline.from_pretrained(tmp_path / "no_vae", vae=pipe.vae)
    assert loaded.vae is pipe.vae


@pytest.mark.parametrize(
    "component, tensor",
    [("vae", "decoder.blocks.output.conv.bias"), ("transformer", "model.layers.1.mlp.fc_in.weight"),
     ("clip_model", "text_model.final_layer_norm.bias")],
)  # fmt: skip
def test_a_pipeline_whose_weights_lack_a_tensor_is_refused(pipe, tmp_path, component, tensor):
    """transformers would fill a missing weight at random and only log it: a damaged model, refused by name."""
    pipe.save_pretrained(tmp_path / "pipeline")
    (weights_file,) = (tmp_path / "pipeline" / component).glob("*.safetensors")
    weights = load_file(weights_file)
    assert tensor in weights
    del weights[tensor]
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"'.*{component}' lack 1 tensors of \w+: \['{re.escape(tensor)}'\]\. The "):
        DallePipeline.from_pretrained(tmp_path / "pipeline")
    if component == "clip_model":  # the training scripts load it on their own (train_clip, train_dalle's validation)
        with pytest.raises(ValueError, match=rf"lack 1 tensors of CLIPModel: \['{re.escape(tensor)}'\]"):
            load_component(CLIPModel, str(tmp_path / "pipeline"), "clip_model")


def test_a_pickled_component_is_refused_without_torchs_advice(pipe, tmp_path):
    from test_convert_openai_dvae import WritesAFile

    pipe.save_pretrained(tmp_path / "pipeline")
    vae_folder = tmp_path / "pipeline" / "vae"
    weights = load_file(vae_folder / "model.safetensors")
    (vae_folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({**weights, "payload": WritesAFile(marker)}, vae_folder / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"'.*vae' \(a pickled pytorch_model.bin\) hold objects other than tensors"
    ) as error:
        DallePipeline.from_pretrained(tmp_path / "pipeline")
    assert "weights_only" not in str(error.value) and not marker.exists()


def test_a_model_folder_that_does_not_exist_is_named(tmp_path):
    from hf_dalle import DalleVAE

    for model_class in (DalleVAE, DalleForImageGeneration):
        with pytest.raises(FileNotFoundError, match=rf"No such model folder: '{tmp_path}/absent'"):
            model_class.from_pretrained(tmp_path / "absent")


def test_from_pretrained_downloads_only_the_pipelines_files(pipe, hub_server, tmp_path):
    from huggingface_hub import upload_file

    pipe.push_to_hub("tiny-dalle")
    repo = "hf-dalle-tester/tiny-dalle"
    for path in ("checkpoints/checkpoint-1/optimizer.bin", "big_extra.safetensors", "notes/README.md"):
        upload_file(path_or_fileobj=b"x" * 1000, path_in_repo=path, repo_id=repo)
    loaded = DallePipeline.from_pretrained(repo)
    (snapshot,) = (tmp_path / "hub_cache").glob("models--*/snapshots/*")
    downloaded = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert "model_index.json" in downloaded and "transformer/model.safetensors" in downloaded
    assert not any(p.startswith(("checkpoints/", "notes/")) or p == "big_extra.safetensors" for p in downloaded)
    torch.testing.assert_close(
        loaded("a red circle", num_candidates=2, generator=seeded(2), output_type="pt").images,
        pipe("a red circle", num_candidates=2, generator=seeded(2), output_type="pt").images,
    )


# Bounded memory for many candidates


def test_random_numbers_are_drawn_chunk_by_chunk(pipe, monkeypatch):
    """With 100000 candidates, no more than a chunk's random numbers exist before the first chunk is sampled."""
    draws = []
    original_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: draws.append(args) or original_rand(*args, **kwargs))

    class FirstChunk(Exception):
        pass

    def stop(*args, **kwargs):
        raise FirstChunk

    monkeypatch.setattr(pipe, "sample_codes", stop)
    with pytest.raises(FirstChunk):
        pipe("a red circle", num_candidates=100_000, candidate_batch_size=8, generator=torch.Generator())
    assert len(draws) == 8


# The OpenAI converter


def test_converter_refuses_non_finite_weights_and_never_advises_weights_only_false(tmp_path):
    from test_convert_openai_dvae import WritesAFile, make_openai_dvae, save_openai_dvae

    from hf_dalle import convert_openai_dvae

    encoder, decoder = make_openai_dvae(16, 1, 64, 8)
    with torch.no_grad():
        decoder.blocks.input.b[0] = float("inf")
    encoder_path, decoder_path = save_openai_dvae(encoder, decoder, tmp_path, "state_dict")
    with pytest.raises(
        ValueError,
        match=r"decoder.pkl': 'decoder.blocks.input.bias' holds NaN or infinite values: the file is damaged",
    ):
        convert_openai_dvae(encoder_path, decoder_path)

    marker = tmp_path / "pwned"
    for legacy in (False, True):
        malicious = tmp_path / f"malicious_{legacy}.pkl"
        torch.save({"blocks.input.w": WritesAFile(marker)}, malicious, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(ValueError, match="not loaded for safety") as error:
            convert_openai_dvae(malicious, decoder_path)
        assert "weights_only" not in str(error.value) and "GLOBAL" in str(error.value)
    assert not marker.exists()
