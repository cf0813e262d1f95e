"""Big-model inference: accelerate `device_map` with disk offload gives the in-memory model's outputs, and
`hf-dalle estimate-memory` counts what a hand computation counts."""

import pytest
import torch
from dalle_mega_utils import make_tiny_dalle_bart_pipeline

from hf_dalle import DalleBartConfig, DalleBartForImageGeneration, DalleConfig, DalleForImageGeneration, DallePipeline
from hf_dalle.cli import main as cli_main
from hf_dalle.memory import estimate_memory
from hf_dalle.testing_utils import make_tiny_pipeline


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def greedy(model, text_ids, new_tokens):
    return model.generate(
        text_ids, do_sample=False, max_new_tokens=new_tokens, attention_mask=torch.ones_like(text_ids)
    )


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_disk_offloaded_model_generates_the_in_memory_tokens(tmp_path, tie_word_embeddings):
    torch.manual_seed(0)
    config = DalleConfig(
        text_vocab_size=64, image_vocab_size=32, max_text_length=8, image_grid_size=4, hidden_size=32,
        num_hidden_layers=4, num_attention_heads=2, attention_types=["row", "column", "row", "conv"],
        tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip
    model = DalleForImageGeneration(config).eval()
    model.save_pretrained(tmp_path / "model")
    text_ids = torch.tensor([[5, 9, 12, 0, 0, 0, 0, 0], [7, 3, 0, 0, 0, 0, 0, 0]])
    expected = greedy(model, text_ids, config.image_seq_length)

    offloaded = DalleForImageGeneration.from_pretrained(
        tmp_path / "model",
        device_map="auto",
        max_memory={"cpu": model_bytes(model) // 2},  # about half the blocks fit: the rest stay on disk
        offload_folder=tmp_path / "offload",
    )
    placements = set(offloaded.hf_device_map.values())
    assert placements == {"cpu", "disk"}, offloaded.hf_device_map
    assert any(p.device.type == "meta" for p in offloaded.parameters())  # disk weights are not in memory
    torch.testing.assert_close(offloaded(expected).logits, model(expected).logits)
    assert torch.equal(greedy(offloaded, text_ids, config.image_seq_length), expected)


def test_pipeline_with_disk_offloaded_transformer_samples_the_same_images(tmp_path):
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    prompts = ["a red circle", "a blue square"]

    def run(pipeline):
        generators = [torch.Generator().manual_seed(i) for i in range(2 * 3)]
        return pipeline(prompts, num_candidates=3, num_images_per_prompt=2, generator=generators, output_type="pt")

    expected = run(pipe)
    offloaded = DallePipeline.from_pretrained(
        tmp_path / "pipe",
        low_cpu_mem_usage=True,
        device_map="auto",
        max_memory={"cpu": model_bytes(pipe.transformer) // 2},
        offload_folder=tmp_path / "offload",
    )
    assert "disk" in offloaded.transformer.hf_device_map.values()
    output = run(offloaded)
    assert torch.equal(output.images, expected.images)
    assert output.scores == expected.scores


def test_12b_estimate_matches_a_hand_count():
    config = DalleConfig()
    h, layers, vocab = 3968, 64, 16384 + 8192
    embeddings = vocab * h + 2 * 256 * h + 2 * 32 * h  # tokens+codes, text positions, text pads, rows, columns
    linear_weights_per_layer = 3 * h * h + h * h + 4 * h * h + 4 * h * h  # qkv, out, fc_in, fc_out
    other_per_layer = 4 * h + 3 * h + h + 4 * h + h  # 2 layer norms, the four biases
    head = vocab * h + vocab  # untied by default
    params = embeddings + layers * (linear_weights_per_layer + other_per_layer) + 2 * h + head
    linear_weights = layers * linear_weights_per_layer
    kv_entries = 2 * layers * (256 + 1024) * h

    fp32, bf16, int8 = estimate_memory(config, batch_size=3)
    assert fp32.num_parameters == params
    assert 11.5e9 < params < 12.5e9  # the paper's "12-billion parameter" model
    assert (fp32.parameter_bytes, bf16.parameter_bytes) == (4 * params, 2 * params)
    assert int8.parameter_bytes == linear_weights + 2 * (params - linear_weights)
    assert (fp32.kv_cache_bytes_per_image, bf16.kv_cache_bytes_per_image) == (4 * kv_entries, 2 * kv_entries)
    assert int8.kv_cache_bytes_per_image == 2 * kv_entries  # weight-only: the cache stays bf16
    assert fp32.total_bytes == 4 * params + 3 * 4 * kv_entries


def test_estimate_memory_cli_reads_a_saved_pipeline(tmp_path, capsys):
    pipe = make_tiny_pipeline(with_clip=False)
    pipe.save_pretrained(tmp_path / "pipe")
    assert cli_main(["estimate-memory", "--config", str(tmp_path / "pipe"), "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    num_parameters = sum(p.numel() for p in pipe.transformer.parameters())
    assert f"{num_parameters:,} parameters" in out
    assert [line.split()[0] for line in out.splitlines()[2:-1]] == ["fp32"]  # only the asked-for dtype
    with pytest.raises(ValueError, match="batch_size"):
        estimate_memory(pipe.transformer.config, batch_size=0)


def test_dalle_mega_estimate_matches_a_hand_count(capsys):
    config = DalleBartConfig()  # DALL·E Mega's shapes
    h, glu, layers = 2048, 4096, 24
    with torch.device("meta"):
        params = DalleBartForImageGeneration(config).num_parameters()
    glu_weights = 3 * h * glu  # fc0, fc1, fc2
    linear_weights = layers * (4 * h * h + glu_weights) + layers * (8 * h * h + glu_weights)  # + cross-attention
    kv_entries = 2 * layers * (256 + 64) * h  # the codes' self-attention and the caption's cross-attention

    fp32, bf16, int8 = estimate_memory(config, batch_size=2)
    assert fp32.num_parameters == params and 2.55e9 < params < 2.65e9  # "Mega, ~2.6B parameters"
    assert (fp32.parameter_bytes, bf16.parameter_bytes) == (4 * params, 2 * params)
    assert int8.parameter_bytes == linear_weights + 2 * (params - linear_weights)
    assert (fp32.kv_cache_bytes_per_image, int8.kv_cache_bytes_per_image) == (4 * kv_entries, 2 * kv_entries)
    assert cli_main(["estimate-memory", "--config", "mega"]) == 0
    assert f"DALL·E Mini / Mega transformer: {params:,} parameters, 24 + 24 layers" in capsys.readouterr().out


def test_estimate_memory_cli_reads_a_converted_dalle_mega(tmp_path, capsys):
    pipe = make_tiny_dalle_bart_pipeline(tmp_path, with_clip=False)
    assert cli_main(["estimate-memory", "--config", str(tmp_path / "pipeline"), "--dtype", "fp32", "int8"]) == 0
    out = capsys.readouterr().out
    assert f"{pipe.transformer.num_parameters():,} parameters, 2 + 2 layers" in out
    assert [line.split()[0] for line in out.splitlines()[2:-1]] == ["fp32", "int8"]
