"""The benchmark scripts' measurement helpers: interleaving, medians, peak memory, the matmul floor, and (with
.venv-bench) that the DALLE-pytorch cache loop samples what `generate_images` samples."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hf_dalle import DalleConfig, DalleForImageGeneration


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
BENCH_PYTHON = SCRIPTS.parent / ".venv-bench" / "bin" / "python"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


utils = load_script("_benchmark_utils")
generation = load_script("benchmark_generation")


def tiny_config() -> DalleConfig:
    return DalleConfig(
        text_vocab_size=40,
        image_vocab_size=24,
        max_text_length=6,
        image_grid_size=3,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        conv_kernel_size=3,
    )


def test_interleaving_rotates_every_workload_through_every_slot():
    names = ["a", "b", "c"]
    rounds = utils.interleaving_order(names, 6)
    assert all(sorted(order) == names for order in rounds)
    for slot in range(len(names)):
        assert sorted(order[slot] for order in rounds) == sorted(names * 2)


def test_interleaved_timings_call_order_and_slow_repeats():
    calls = []

    def workload(name, items):
        def run():
            calls.append(name)
            return items

        return run

    samples = utils.interleaved_timings(
        {"fast": workload("fast", 4), "slow": workload("slow", 8)}, repeats=4, repeats_of={"slow": 2}
    )
    # Warm-up once each, then rounds alternating who goes first; the slow one sits out once it has its 2 repeats.
    assert calls == ["fast", "slow", "fast", "slow", "slow", "fast", "fast", "fast"]
    assert [s.items for s in samples["fast"]] == [4] * 4 and [s.items for s in samples["slow"]] == [8] * 2

    calls.clear()
    utils.interleaved_timings(
        {"compiled": workload("compiled", 1), "slow": workload("slow", 1)},
        repeats=2,
        repeats_of={"slow": 1},
        warmup_of={"compiled": 3},
    )
    # A workload timed once is not warmed up; `warmup_of` overrides the default warm-up.
    assert calls == ["compiled"] * 3 + ["compiled", "slow", "compiled"]


def test_summarize_takes_medians_and_rejects_varying_item_counts():
    samples = [utils.Sample(3.0, 1.0, 10), utils.Sample(1.0, 3.0, 10), utils.Sample(2.0, 2.5, 10)]
    summary = utils.summarize(samples)
    assert (summary["wall_s"], summary["cpu_s"], summary["items_per_s"]) == (2.0, 2.5, 5.0)
    with pytest.raises(ValueError, match="varying number of items"):
        utils.summarize([utils.Sample(1.0, 1.0, 10), utils.Sample(1.0, 1.0, 11)])


def test_peak_memory_sees_a_transient_allocation():
    def allocate_64_mib():
        buffer = torch.ones(64 * 2**20 // 4)  # written, so resident
        return int(buffer[-1])

    peak = utils.peak_memory_mib(allocate_64_mib, torch.device("cpu"))
    if peak is None:
        pytest.skip("this platform cannot reset the resident-memory high-water mark")
    assert 60 <= peak <= 80
    assert utils.peak_memory_mib(lambda: 0, torch.device("cpu")) < 8


def test_matmul_floor_is_the_models_matmul_chain_and_yields_as_many_tokens():
    config = tiny_config()
    torch.manual_seed(0)
    model = DalleForImageGeneration(config).eval()
    # The floor multiplies by the same matrices as the model's blocks and the image rows of its head.
    block_weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    head_image_rows = config.image_vocab_size * config.hidden_size
    floor_weights = generation.matmul_floor_weights(config, "cpu", torch.float32)
    assert sum(w.numel() for layer in floor_weights for w in layer) == block_weights + head_image_rows

    batch_size = 3
    text = torch.randint(1, config.text_vocab_size, (batch_size, config.max_text_length))
    with torch.no_grad():
        ours = generation.ours_generate(model, text, top_k=5, variant=generation.OURS)()
    floor = generation.matmul_floor(config, batch_size, torch.device("cpu"), torch.float32)()
    assert ours == floor == batch_size * config.image_seq_length


def test_generation_script_writes_consistent_tables(tmp_path):
    output = tmp_path / "generation"
    threads = torch.get_num_threads()
    try:
        generation.main(
            [
                "--batch-sizes",
                "2",
                "--grid-sizes",
                "3",
                "--text-length",
                "4",
                "--text-vocab-size",
                "32",
                "--image-vocab-size",
                "16",
                "--hidden-size",
                "32",
                "--num-layers",
                "2",
                "--num-heads",
                "4",
                "--top-k",
                "4",
                "--repeats",
                "2",
                "--threads",
                "1",
                "--no-compile",
                "--no-reference",
                "--output",
                str(output),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    data = json.loads(output.with_suffix(".json").read_text())
    (run,) = data["generation"]
    results = run["results"]
    assert set(results) == {generation.OURS, generation.OURS_DYNAMIC, generation.GPT2, generation.FLOOR}
    assert {r["items"] for r in results.values()} == {2 * 9} and all(r["repeats"] == 2 for r in results.values())
    assert run["ratio_basis"] == "cpu_s"  # one thread on CPU: CPU time, immune to waiting for a shared core
    ours, gpt2, floor = (results[name]["cpu_s"] for name in (generation.OURS, generation.GPT2, generation.FLOOR))
    assert run["ratios_default"][generation.GPT2] == pytest.approx(gpt2 / ours)
    assert run["ratios_default"][generation.FLOOR] == pytest.approx(ours / floor)
    markdown = output.with_suffix(".md").read_text()
    assert f"| 3x3 | 2 | {generation.GPT2} |" in markdown and "Targets at batch 2" in markdown


@pytest.mark.skipif(not BENCH_PYTHON.exists(), reason="needs .venv-bench (make bench-env)")
def test_dalle_pytorch_cache_loop_samples_what_generate_images_samples():
    program = f"""
import sys, types, torch
sys.path.insert(0, {str(SCRIPTS)!r})
import benchmark_generation as g
args = types.SimpleNamespace(hidden_size=64, num_layers=2, num_heads=4)
config = g.DalleConfig(text_vocab_size=40, image_vocab_size=24, max_text_length=6, image_grid_size=4,
                       hidden_size=64, num_hidden_layers=2, num_attention_heads=4, conv_kernel_size=3)
torch.manual_seed(0)
dalle = g.dalle_pytorch_models(args, config, torch.device("cpu"), torch.float32)
text = torch.randint(1, 40, (3, 6))
torch.manual_seed(1)
shipped = dalle.generate_images(text, filter_thres=g.dalle_pytorch_filter_thres(dalle, 6), use_cache=True)
torch.manual_seed(1)
looped = g.dalle_pytorch_sample_with_cache(dalle, text, top_k=6)
print(tuple(shipped.shape) == (3, 16), torch.equal(shipped, looped))
"""
    result = subprocess.run([str(BENCH_PYTHON), "-W", "ignore", "-c", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["True", "True"]


def test_cpu_precision_script_writes_the_dtype_table(tmp_path):
    """`scripts/benchmark_cpu_precision.py`'s command line (tiny sizes): one row per workload, each dtype's time
    against float32's."""
    stem = tmp_path / "cpu_precision"
    command = [
        sys.executable, str(SCRIPTS / "benchmark_cpu_precision.py"), "--hidden-size", "32",
        "--decode-rows", "2", "--batch-rows", "4", "--repeats", "1", "--output", str(stem),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(stem.with_suffix(".json").read_text())
    assert list(data["results"]) == ["linear, 2 rows", "linear, 4 rows", "matmul, 2 rows"]
    assert all(list(row) == ["float32", "bfloat16", "float16"] for row in data["results"].values())
    table = stem.with_suffix(".md").read_text()
    assert "| workload | float32 | bfloat16 | float16 |" in table and table.count("ms (1.0x)") == 3
