"""Quantized inference: int8 weight-only (torchao, through transformers' `TorchAoConfig`) on the CPU."""

import json

import pytest
import torch
from torch import nn

from hf_dalle import DallePipeline
from hf_dalle.memory import stored_bytes
from hf_dalle.testing_utils import make_tiny_pipeline


torchao = pytest.importorskip("torchao")
from torchao.quantization import Int8WeightOnlyConfig  # noqa: E402
from transformers import TorchAoConfig  # noqa: E402


def block_linear_bytes(transformer) -> int:
    return sum(stored_bytes(m.weight) for m in transformer.model.layers.modules() if isinstance(m, nn.Linear))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(path)
    quantized = DallePipeline.from_pretrained(path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    return pipe, quantized


def test_int8_weights_are_smaller(pipelines):
    pipe, quantized = pipelines
    full, int8 = block_linear_bytes(pipe.transformer), block_linear_bytes(quantized.transformer)
    # One byte per weight plus one fp32 scale per output row (32 inputs per row here, so scales add 1/8).
    assert int8 < 0.3 * full, (int8, full)
    assert isinstance(quantized.transformer.model.layers[0].mlp.fc_in.weight, torchao.quantization.Int8Tensor)
    # The dVAE and CLIP are left as they are.
    assert all(p.dtype == torch.float32 and type(p) is nn.Parameter for p in quantized.vae.parameters())


def test_int8_logits_are_close_to_fp32_and_generation_runs(pipelines):
    pipe, quantized = pipelines
    config = pipe.transformer.config
    text_ids = pipe.tokenizer.encode_captions(["a red circle", "a blue square"], max_length=config.max_text_length)
    stream = pipe.transformer.prepare_input_ids(text_ids, torch.randint(0, 32, (2, config.image_seq_length - 1)))
    with torch.no_grad():
        reference = pipe.transformer(stream).logits[:, config.max_text_length - 1 :, config.text_vocab_size :]
        logits = quantized.transformer(stream).logits[:, config.max_text_length - 1 :, config.text_vocab_size :]
    # Stated tolerance: every image-code logit within 2% of the largest |logit| (per-row int8 rounding error).
    torch.testing.assert_close(logits, reference, atol=0.02 * reference.abs().max().item(), rtol=0)
    assert not torch.equal(logits, reference)  # the weights really were rounded

    def sample(pipeline):
        generators = [torch.Generator().manual_seed(i) for i in range(8)]
        return pipeline(
            "a red circle", num_candidates=8, num_images_per_prompt=8, generator=generators, output_type="pt"
        )

    output, expected = sample(quantized), sample(pipe)
    assert output.images.shape == (8, 3, 32, 32) and output.scores == sorted(output.scores, reverse=True)
    # Same random numbers, nearly the same distribution: most candidates draw exactly the fp32 model's codes.
    same = sum(any(torch.equal(image, other) for other in expected.images) for image in output.images)
    assert same >= 6, f"only {same} of 8 candidates match fp32"


def test_benchmark_script_compares_the_three_variants(tmp_path):
    from training_utils import load_script

    benchmark = load_script("benchmark_quantization")
    argv = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--grid", "4", "--num-candidates", "2"]
    assert benchmark.main([*argv, "--repeats", "1", "--output", str(tmp_path / "quantization")]) == 0
    results = json.loads((tmp_path / "quantization.json").read_text())["results"]
    fp32, bf16, int8 = results["fp32"], results["bf16"], results["int8 weight-only"]
    assert fp32["max_abs_logit_error"] == 0
    assert 0 < bf16["relative_logit_error"] < 0.05 and 0 < int8["relative_logit_error"] < 0.05
    assert bf16["transformer_weight_bytes"] == fp32["transformer_weight_bytes"] // 2
    assert int8["transformer_weight_bytes"] < bf16["transformer_weight_bytes"]  # Linears int8, the rest bf16
    assert all(r["judge_accuracy"] is None for r in results.values())  # random weights: nothing to judge
    assert "pending" in (tmp_path / "quantization.md").read_text()
