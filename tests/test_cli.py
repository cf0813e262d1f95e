import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hf_dalle import DalleVAE, DalleVAEConfig
from hf_dalle.cli import DEMO_PROMPTS, main
from hf_dalle.data import caption_split


def test_demo_prompts_mix_seen_and_held_out_captions():
    splits = [caption_split(prompt) for prompt in DEMO_PROMPTS]
    assert splits.count("train") == 2
    assert {"held_out_pairing", "held_out_arrangement"} <= set(splits)


def test_demo_writes_images_for_the_demo_prompts(tmp_path, capsys):
    assert main(["demo", "--num-candidates", "2", "--num-images", "1", "--output-dir", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(written) == len(DEMO_PROMPTS) + 1 and "grid.png" in written
    assert "a_green_triangle_0.png" in written
    printed = capsys.readouterr().out
    assert printed.count("score=") == len(DEMO_PROMPTS)
    side = Image.open(tmp_path / "a_red_circle_0.png").size[0]
    width, height = Image.open(tmp_path / "grid.png").size
    assert height == side * len(DEMO_PROMPTS) and width > side  # a row per caption, the caption to its left


def test_generate_without_demo_model_names_the_problem(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import hf_dalle.demo, sys; hf_dalle.demo.DEMO_MODEL_DIR = sys.argv[1]; "
         "from hf_dalle.cli import main; main(['generate', 'a red circle'])", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "demo model is missing" in result.stderr and "--model" in result.stderr


def test_help_texts_list_every_command():
    result = subprocess.run([sys.executable, "-m", "hf_dalle.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("generate", "demo", "reconstruct", "serve"):
        assert command in result.stdout


def test_reconstruct_round_trips_through_the_dvae(tmp_path, capsys):
    torch.manual_seed(0)
    vae = DalleVAE(DalleVAEConfig(hidden_size=16, vocab_size=32, num_blocks_per_group=1, image_size=32)).eval()
    for p in vae.parameters():
        p.data.normal_(0, 0.3)
    vae.save_pretrained(tmp_path / "vae")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    assert (
        main(
            ["reconstruct", str(tmp_path / "in.png"), "--model", str(tmp_path / "vae"), "--output-dir", str(tmp_path)]
        )
        == 0
    )
    with torch.no_grad():
        expected = vae.decode(vae.encode(torch.from_numpy(pixels / 255).float().permute(2, 0, 1)[None]).indices).sample
    got = np.asarray(Image.open(tmp_path / "in_reconstruction.png"))
    assert np.abs(got.astype(float) - expected[0].permute(1, 2, 0).numpy() * 255).max() <= 0.5 + 1e-3
    assert "4x4 codes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-candidates", "0"], "argument --num-candidates: must be a positive whole number, got '0'"),
        (["--num-images", "two"], "argument --num-images: must be a positive whole number, got 'two'"),
        (["--top-p", "2"], "argument --top-p: must be in (0, 1], got '2'"),
        (["--temperature", "0"], "argument --temperature: must be a number > 0, got '0'"),
        (["--temperature", "nan"], "argument --temperature: must be a number > 0, got 'nan'"),
        (["--guidance-scale", "0.5"], "argument --guidance-scale: must be a number >= 1 (1 = off), got '0.5'"),
        (["--top-k", "-1"], "argument --top-k: must be a whole number >= 0 (0 = all codes), got '-1'"),
    ],
)
def test_bad_flags_are_named_as_flags(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a red circle", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["a red circle", "--num-candidates", "2", "--num-images", "3"],
         "argument --num-images: must be at most --num-candidates (2), got 3."),
        (["a red circle", "  "], "a caption is empty: give each caption some words, e.g. 'a red circle'."),
    ],
)  # fmt: skip
def test_inconsistent_flags_are_named_before_loading(argv, message, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *argv, "--model", str(tmp_path / "no_model"), "--output-dir", str(tmp_path)])
    assert str(exit_info.value) == f"hf-dalle generate: error: {message}"  # not the pipeline's `num_images_per_prompt`


def test_reconstruct_takes_a_pipeline_folder(tmp_path, capsys):
    from hf_dalle.testing_utils import make_tiny_pipeline

    pipe = make_tiny_pipeline(with_clip=False)
    pipe.save_pretrained(tmp_path / "pipe")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    argv = ["reconstruct", str(tmp_path / "in.png"), "--model", str(tmp_path / "pipe"), "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    assert "4x4 codes" in capsys.readouterr().out
    assert Image.open(tmp_path / "in_reconstruction.png").size == (32, 32)


def test_generate_prints_what_the_model_did_not_read(tmp_path, capsys):
    assert (
        main(["demo", "a photo of a cat", "--num-candidates", "1", "--num-images", "1", "--output-dir", str(tmp_path)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "note: 'a photo of a cat': Words the model's tokenizer does not know" in printed
    assert "'photo', 'cat'" in printed
