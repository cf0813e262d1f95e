"""LoRA with peft: train an adapter on the transformer, save it, load it into a fresh pipeline (from a folder or the
Hub), unload it; and `scripts/train_dalle.py --lora_rank`."""

import os

import pytest
import torch
from huggingface_hub import create_repo, upload_folder
from safetensors.torch import load_file
from training_utils import load_script, training_environment  # noqa: F401 (autouse fixture)

from hf_dalle import DallePipeline
from hf_dalle.data import make_shapes_dataset
from hf_dalle.lora import add_lora_adapter, save_lora_adapter
from hf_dalle.testing_utils import make_tiny_pipeline


pytest.importorskip("peft")


def sample(pipe):
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    return pipe("a red circle", num_candidates=4, num_images_per_prompt=4, generator=generators, output_type="pt")


def stream_of(pipe):
    config = pipe.transformer.config
    text_ids = pipe.tokenizer.encode_captions(["a red circle", "a blue square"], max_length=config.max_text_length)
    return pipe.transformer.prepare_input_ids(text_ids, torch.arange(2 * 15).view(2, 15) % config.image_vocab_size)


@torch.no_grad()
def logits_of(pipe, stream):
    return pipe.transformer(stream).logits


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory):
    """A rank-4 adapter trained 20 steps on two streams, saved; with the base outputs it started from."""
    pipe = make_tiny_pipeline()
    stream = stream_of(pipe)
    base_logits, base_images = logits_of(pipe, stream), sample(pipe).images
    model = pipe.transformer
    add_lora_adapter(model, rank=4, alpha=8)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)  # only the adapter trains
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    for _ in range(20):
        model(stream, labels=stream).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    path = tmp_path_factory.mktemp("adapter")
    save_lora_adapter(model, path)
    return {
        "path": path, "stream": stream, "base_logits": base_logits, "base_images": base_images,
        "tuned_logits": logits_of(pipe, stream), "tuned_images": sample(pipe).images,
    }  # fmt: skip


def test_adapter_targets_every_projection_and_saves_only_itself(trained_adapter):
    files = set(os.listdir(trained_adapter["path"]))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    pipe = make_tiny_pipeline()
    pipe.load_lora_weights(trained_adapter["path"])
    wrapped = {name.rsplit(".", 1)[-1] for name, m in pipe.transformer.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"qkv_proj", "out_proj", "fc_in", "fc_out"} == set(pipe.transformer.lora_target_modules)


def test_training_changes_outputs_and_loading_reproduces_them_exactly(trained_adapter):
    assert not torch.allclose(trained_adapter["tuned_logits"], trained_adapter["base_logits"], atol=1e-3)
    pipe = make_tiny_pipeline()  # same seed: the same base weights, no adapter
    assert torch.equal(logits_of(pipe, trained_adapter["stream"]), trained_adapter["base_logits"])
    pipe.load_lora_weights(trained_adapter["path"])
    assert torch.equal(logits_of(pipe, trained_adapter["stream"]), trained_adapter["tuned_logits"])
    assert torch.equal(sample(pipe).images, trained_adapter["tuned_images"])

    pipe.unload_lora_weights()
    assert torch.equal(logits_of(pipe, trained_adapter["stream"]), trained_adapter["base_logits"])
    assert torch.equal(sample(pipe).images, trained_adapter["base_images"])
    pipe.unload_lora_weights()  # nothing left to unload: a no-op


def test_load_lora_weights_from_the_hub(trained_adapter, hub_server):
    create_repo("hf-dalle-tester/tiny-lora")
    upload_folder(repo_id="hf-dalle-tester/tiny-lora", folder_path=str(trained_adapter["path"]), repo_type="model")
    pipe = make_tiny_pipeline()
    pipe.load_lora_weights("hf-dalle-tester/tiny-lora")
    assert torch.equal(logits_of(pipe, trained_adapter["stream"]), trained_adapter["tuned_logits"])


def test_bad_adapter_arguments(tmp_path):
    pipe = make_tiny_pipeline()
    with pytest.raises(ValueError, match="no adapter_config.json"):
        pipe.load_lora_weights(tmp_path)
    with pytest.raises(ValueError, match="not Linear layers.*choose from"):
        add_lora_adapter(pipe.transformer, rank=4, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="rank"):
        add_lora_adapter(pipe.transformer, rank=0)


def test_train_dalle_lora_rank_trains_an_adapter_the_pipeline_loads(tmp_path):
    base_dir, tokens, output_dir = tmp_path / "base", tmp_path / "tokens", tmp_path / "lora"
    make_tiny_pipeline().save_pretrained(base_dir)
    make_shapes_dataset(8, seed=5, image_size=32).save_to_disk(str(tmp_path / "data"))
    load_script("pretokenize").main(
        ["--dataset_name", str(tmp_path / "data"), "--resolution", "32", "--pretrained_model_name_or_path",
         str(base_dir), "--output_dir", str(tokens)]
    )  # fmt: skip
    state = load_script("train_dalle").main(
        ["--pretrained_model_name_or_path", str(base_dir), "--pretokenized_dataset", str(tokens),
         "--lora_rank", "4", "--lora_alpha", "8", "--lora_target_modules", "qkv_proj", "fc_out", "--use_ema",
         "--learning_rate", "1e-2", "--max_train_steps", "3", "--train_batch_size", "4", "--output_dir",
         str(output_dir), "--logging_steps", "2", "--checkpointing_steps", "100", "--validation_steps", "100"]
    )  # fmt: skip
    assert state.global_step == 3
    files = set(os.listdir(output_dir))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= files
    assert "transformer" not in files and "model.safetensors" not in files  # no copy of the base weights

    pipe = DallePipeline.from_pretrained(base_dir)
    stream = stream_of(pipe)
    base_logits = logits_of(pipe, stream)
    pipe.load_lora_weights(output_dir)
    wrapped = {name.rsplit(".", 1)[-1] for name, m in pipe.transformer.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"qkv_proj", "fc_out"}
    assert pipe.transformer.peft_config["default"].lora_alpha == 8
    assert not torch.allclose(logits_of(pipe, stream), base_logits, atol=1e-4)  # the adapter trained
    pipe.unload_lora_weights()
    assert torch.equal(logits_of(pipe, stream), base_logits)


def test_train_dalle_lora_resumes_exactly(tmp_path):
    base_dir, tokens = tmp_path / "base", tmp_path / "tokens"
    make_tiny_pipeline().save_pretrained(base_dir)
    make_shapes_dataset(12, seed=6, image_size=32).save_to_disk(str(tmp_path / "data"))
    load_script("pretokenize").main(
        ["--dataset_name", str(tmp_path / "data"), "--resolution", "32", "--pretrained_model_name_or_path",
         str(base_dir), "--output_dir", str(tokens)]
    )  # fmt: skip
    train_dalle = load_script("train_dalle")

    def run(output_dir, *extra):
        train_dalle.main(
            ["--pretrained_model_name_or_path", str(base_dir), "--pretokenized_dataset", str(tokens),
             "--lora_rank", "4", "--learning_rate", "1e-2", "--max_train_steps", "4", "--train_batch_size", "4",
             "--checkpointing_steps", "2", "--validation_steps", "100", "--use_ema", "--output_dir",
             str(output_dir), *extra]
        )  # fmt: skip
        return load_file(output_dir / "adapter_model.safetensors")

    uninterrupted = run(tmp_path / "whole")
    resumed = run(tmp_path / "resumed", "--resume_from_checkpoint", str(tmp_path / "whole/checkpoints/checkpoint-2"))
    assert uninterrupted.keys() == resumed.keys() and uninterrupted
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_train_dalle_lora_needs_a_base_model(tmp_path):
    with pytest.raises(ValueError, match="--lora_rank fine-tunes a trained pipeline"):
        load_script("train_dalle").parse_args(
            ["--pretokenized_dataset", str(tmp_path), "--lora_rank", "4", "--output_dir", str(tmp_path / "out")]
        )
