"""Fine-tuning a converted DALL·E Mega with the training scripts, as a user runs them (subprocesses): pretokenize.py
encodes the pairs with the pipeline's VQGAN (its Flax-read encoder) and caption tokenizer, train_dalle.py fine-tunes
all weights or a LoRA adapter; the loss falls and what is saved loads and generates with Mega's defaults."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from dalle_mega_utils import make_tiny_dalle_bart_pipeline
from safetensors.torch import load_file
from training_utils import REPO_ROOT, training_logs

from hf_dalle import DalleBartForImageGeneration, DallePipeline
from hf_dalle.data import make_shapes_dataset
from hf_dalle.training import image_to_tensor


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / f"{name}.py"), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def transformer_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {
        name: tensor
        for file in sorted((folder / "transformer").glob("*.safetensors"))
        for name, tensor in load_file(file).items()
    }


@pytest.mark.slow
def test_pretokenize_and_fine_tune_a_converted_dalle_mega(tmp_path):
    base = make_tiny_dalle_bart_pipeline(tmp_path / "mega")
    base_dir, data_dir, tokens = tmp_path / "mega" / "pipeline", tmp_path / "data", tmp_path / "tokens"
    make_shapes_dataset(8, seed=5, image_size=32).save_to_disk(str(data_dir))

    result = run_script(
        "pretokenize", "--dataset_name", str(data_dir), "--pretrained_model_name_or_path", str(base_dir),
        "--output_dir", str(tokens),  # at the VQGAN's size, 16x16 (the default)
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The codes of the pipeline's VQGAN ([0, 1] pixels as they are), the captions as the pipeline encodes prompts.
    rows = datasets.load_from_disk(str(tokens / "data"))
    images = datasets.load_from_disk(str(data_dir))["image"]
    with torch.no_grad():
        codes = base.vae.encode(torch.stack([image_to_tensor(image, 16) for image in images])).indices.flatten(1)
    assert torch.tensor(rows["image_codes"]).tolist() == codes.tolist()
    assert (
        torch.tensor(rows["text_input_ids"]).tolist() == base.tokenizer.encode_captions(list(rows["caption"])).tolist()
    )

    common = [
        "--pretrained_model_name_or_path", str(base_dir), "--pretokenized_dataset", str(tokens),
        "--learning_rate", "3e-3", "--max_train_steps", "8", "--train_batch_size", "4", "--logging_steps", "1",
        "--checkpointing_steps", "100", "--validation_steps", "100", "--num_validation_images", "1",
        "--caption_dropout", "0.25", "--seed", "0",
    ]  # fmt: skip
    result = run_script("train_dalle", *common, "--output_dir", str(tmp_path / "full"))
    assert result.returncode == 0, result.stderr
    losses = [log["loss"] for log in training_logs(tmp_path / "full")]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    tuned = DallePipeline.from_pretrained(tmp_path / "full")
    assert isinstance(tuned.transformer, DalleBartForImageGeneration)
    # Mega's sampling defaults and the VQGAN with its encoder carry over; the transformer trained.
    assert tuned.config.default_guidance_scale == 16.0 and tuned.transformer.generation_config.top_k == 256
    assert tuned.vae.config.has_encoder and tuned.clip_model is not None
    before, after = transformer_weights(base_dir), transformer_weights(tmp_path / "full")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    images = tuned("a red circle", num_candidates=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert images.images.shape == (1, 3, 16, 16) and len(images.scores) == 1
    assert "DalleBartForImageGeneration" in (tmp_path / "full" / "README.md").read_text()

    result = run_script("train_dalle", *common, "--lora_rank", "4", "--output_dir", str(tmp_path / "lora"))
    assert result.returncode == 0, result.stderr
    losses = [log["loss"] for log in training_logs(tmp_path / "lora")]
    assert losses[-1] < losses[0], losses
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == set(DalleBartForImageGeneration.lora_target_modules)
    pipe = DallePipeline.from_pretrained(base_dir)
    kwargs = {"num_candidates": 2, "output_type": "latent"}
    base_codes = pipe("a red circle", generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs)
    pipe.load_lora_weights(tmp_path / "lora")
    lora_codes = pipe("a red circle", generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs)
    assert not torch.equal(lora_codes.images, base_codes.images)  # the adapter trained and changes the samples
