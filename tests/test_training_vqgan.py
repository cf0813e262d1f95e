"""Pre-tokenizing and fine-tuning with a VQGAN image tokenizer: scripts/pretokenize.py encodes with the pipeline's
DalleVQGAN, scripts/train_dalle.py fine-tunes the transformer of a VQGAN pipeline and writes a pipeline that keeps it."""

import datasets
import torch
from PIL import Image
from safetensors.torch import load_file
from training_utils import load_script, training_environment  # noqa: F401 (autouse fixture)

from hf_dalle import DallePipeline, DalleVQGAN
from hf_dalle.data import make_shapes_dataset
from hf_dalle.testing_utils import make_tiny_pipeline
from hf_dalle.training import image_to_tensor


def test_pretokenize_and_fine_tune_a_vqgan_pipeline(tmp_path):
    base_dir, data_dir, tokens, output_dir = (tmp_path / name for name in ("base", "data", "tokens", "tuned"))
    base = make_tiny_pipeline(vqgan=True)
    base.save_pretrained(base_dir)
    make_shapes_dataset(8, seed=5, image_size=32).save_to_disk(str(data_dir))
    load_script("pretokenize").main(
        ["--dataset_name", str(data_dir), "--pretrained_model_name_or_path", str(base_dir), "--output_dir",
         str(tokens)]
    )  # fmt: skip

    # The codes are the VQGAN's, at its encoder's size (32x32 -> 4x4), not the 64x64 it decodes to.
    rows = datasets.load_from_disk(str(tokens / "data"))
    images = datasets.load_from_disk(str(data_dir))["image"]
    with torch.no_grad():
        expected = base.vae.encode(torch.stack([image_to_tensor(image, 32) for image in images])).indices
    assert torch.tensor(rows["image_codes"]).tolist() == expected.flatten(1).tolist()

    state = load_script("train_dalle").main(
        ["--pretrained_model_name_or_path", str(base_dir), "--pretokenized_dataset", str(tokens),
         "--learning_rate", "1e-2", "--max_train_steps", "3", "--train_batch_size", "4", "--output_dir",
         str(output_dir), "--logging_steps", "1", "--checkpointing_steps", "100", "--validation_steps", "3",
         "--num_validation_images", "1"]
    )  # fmt: skip
    assert state.global_step == 3
    tuned = DallePipeline.from_pretrained(output_dir)
    assert isinstance(tuned.vae, DalleVQGAN)
    # The transformer trained; the VQGAN is the base pipeline's, unchanged.
    before = load_file(base_dir / "transformer" / "model.safetensors")
    after = load_file(output_dir / "transformer" / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert (
        load_file(base_dir / "vae" / "model.safetensors").keys()
        == load_file(output_dir / "vae" / "model.safetensors").keys()
    )
    for name, value in load_file(base_dir / "vae" / "model.safetensors").items():
        assert torch.equal(value, load_file(output_dir / "vae" / "model.safetensors")[name])
    # Validation sampled through the VQGAN's wavelet decoder: one 64x64 image per prompt (4 prompts, one column).
    with Image.open(output_dir / "validation" / "step-000003.png") as grid:
        assert grid.size == (64, 4 * 64)
