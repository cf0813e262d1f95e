"""The bundled demo model (hf_dalle.DEMO_MODEL_DIR): what ships, that it loads offline, and that it draws what it is
asked for, as the pixel judge sees it."""

import json
from pathlib import Path

import pytest
import torch
from training_utils import load_script

from hf_dalle import DEMO_MODEL_DIR, DallePipeline
from hf_dalle.data import caption_split, judge_image, split_captions


DEMO = Path(DEMO_MODEL_DIR)
# One seen one-object caption per palette color.
ONE_OBJECT_CAPTIONS = [
    "a red circle", "a orange square", "a yellow triangle", "a green circle", "a blue square", "a purple triangle"
]  # fmt: skip


@pytest.fixture(scope="module")
def pipe():
    return DallePipeline.from_pretrained(DEMO_MODEL_DIR)


def test_demo_model_ships_safetensors_within_the_size_budget():
    files = [path for path in DEMO.rglob("*") if path.is_file()]
    weights = [path for path in files if path.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}]
    assert {path.parent.name for path in weights} == {"transformer", "vae", "clip_model"}
    assert all(path.suffix == ".safetensors" for path in weights)
    assert sum(path.stat().st_size for path in files) <= 60e6
    assert {"README.md", "samples.png", "evaluation.json", "model_index.json"} <= {path.name for path in files}


def test_demo_model_loads_offline_with_every_part(pipe):
    assert pipe.clip_model is not None and pipe.clip_processor is not None
    assert pipe.image_size >= 64
    evaluated_with = json.loads((DEMO / "evaluation.json").read_text())["args"]
    assert pipe.config.default_guidance_scale == evaluated_with["guidance_scale"]


def test_demo_model_draws_each_color_the_judge_confirms(pipe):
    assert {caption_split(caption) for caption in ONE_OBJECT_CAPTIONS} == {"train"}
    generators = [torch.Generator().manual_seed(i) for i in range(4 * len(ONE_OBJECT_CAPTIONS))]
    out = pipe(ONE_OBJECT_CAPTIONS, num_candidates=4, num_images_per_prompt=1, generator=generators)
    verdicts = [judge_image(image, caption) for image, caption in zip(out.images, ONE_OBJECT_CAPTIONS)]
    assert [v.colors_correct for v in verdicts] == [True] * len(ONE_OBJECT_CAPTIONS), verdicts
    assert sum(v.correct for v in verdicts) >= len(ONE_OBJECT_CAPTIONS) - 1, verdicts


def test_model_card_shows_the_evaluation_it_ships_with():
    card = (DEMO / "README.md").read_text()
    results = json.loads((DEMO / "evaluation.json").read_text())["results"]
    held_out = results["held-out, two objects"]
    assert f"| held-out, two objects | {held_out['captions']} | {100 * held_out['N=1']:.1f}% |" in card
    assert "![best-scored images of seen and held-out captions](samples.png)" in card
    assert "{{" not in card  # every template value was filled in


def test_lora_demo_refuses_a_new_word_that_would_cut_captions(pipe):
    lora_demo = load_script("lora_demo")
    green_captions = [c for c in split_captions("train") if " green " in f" {c} "]
    lora_demo.check_captions_fit(pipe, [c.replace("green", "leaf") for c in green_captions], "leaf")  # 3 tokens
    with pytest.raises(ValueError, match=r"'crimson' \(split into 7 tokens.*more than the model's 12"):
        lora_demo.check_captions_fit(pipe, [c.replace("green", "crimson") for c in green_captions], "crimson")
    with pytest.raises(ValueError, match="not a color or shape of the grammar"):
        lora_demo.parse_args(["--new-word", "blue"])


def test_card_lists_the_words_and_the_pipeline_names_others(pipe):
    from hf_dalle.data import all_captions

    words = list(dict.fromkeys(word for caption in all_captions() for word in caption.split()))
    card = (DEMO / "README.md").read_text()
    assert all(f'"{word}"' in card for word in words)
    assert all(pipe.prompt_warning(f"a {word}") is None for word in words)  # the card's words are all known
    warning = pipe.prompt_warning("a photo of a cat")
    assert "'photo', 'cat'" in warning and "'of'" not in warning
