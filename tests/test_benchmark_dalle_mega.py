"""The DALL·E Mega benchmark scripts at tiny sizes: they run and write their results (no timings are checked). The
generation one times min-dalle's loop, so it runs in the reference venv (marker `parity`)."""

import json
import sys
from pathlib import Path

import pytest


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    sys.path.insert(0, str(SCRIPTS))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(SCRIPTS))


def test_conversion_benchmark_writes_its_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # its file-writing child process imports the script by name
    script = load("benchmark_dalle_mega_conversion")
    stem = tmp_path / "conversion"
    script.main(
        ["--work_dir", str(tmp_path / "work"), "--num_layers", "1", "--hidden_size", "64", "--num_attention_heads",
         "4", "--intermediate_size", "96", "--dtype", "float32", "--max_shard_size_mb", "1", "--output", str(stem)]
    )  # fmt: skip
    data = json.loads(stem.with_suffix(".json").read_text())
    assert data["shards"] > 3 and data["peak_anonymous_mib"] > 0 and data["parameters"] > 4_000_000
    assert "peak anonymous memory" in stem.with_suffix(".md").read_text()


@pytest.mark.parity
def test_generation_benchmark_writes_its_results(tmp_path):
    script = load("benchmark_dalle_mega_generation")
    stem = tmp_path / "generation"
    script.main(
        ["--num_layers", "1", "--hidden_size", "64", "--num_attention_heads", "4", "--intermediate_size", "96",
         "--images_per_prompt", "1", "2", "--num_codes", "4", "--repeats", "1", "--output", str(stem)]
    )  # fmt: skip
    data = json.loads(stem.with_suffix(".json").read_text())
    assert len(data["runs"]) == 6 and {run["items"] for run in data["runs"]} == {1, 2}
    assert "speed vs min-dalle" in stem.with_suffix(".md").read_text()
