"""scripts/benchmark_vqgan.py at a tiny size: ours alone (any venv), and against taming-transformers (reference venv),
where it first checks that the converted model gives taming's codes."""

import json
import sys
from pathlib import Path

import pytest
import torch
from reference_models import import_reference


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY = ["--image-size", "32", "--width", "32", "--vocab-size", "64", "--batch-size", "2", "--repeats", "2"]


def run_benchmark(tmp_path, *extra) -> dict:
    sys.path.insert(0, str(SCRIPTS))
    threads = torch.get_num_threads()
    try:
        import benchmark_vqgan

        benchmark_vqgan.main([*TINY, "--no-memory", "--output", str(tmp_path / "vqgan"), *extra])
    finally:
        sys.path.remove(str(SCRIPTS))
        torch.set_num_threads(threads)
    return json.loads((tmp_path / "vqgan.json").read_text())


def test_benchmark_times_encode_and_decode(tmp_path):
    data = run_benchmark(tmp_path, "--no-reference")
    for step in ("encode", "decode"):
        (result,) = data[step]["results"].values()
        assert result["items"] == 2 and result["repeats"] == 2
        assert data[step]["ratio"] is None
    assert "| encode | ours: DalleVQGAN |" in (tmp_path / "vqgan.md").read_text()


@pytest.mark.parity
def test_benchmark_against_taming(tmp_path):
    import_reference("taming.modules.diffusionmodules.model")
    data = run_benchmark(tmp_path)  # raises if the converted model's codes differ from taming's
    for step in ("encode", "decode"):
        results = data[step]["results"]
        assert set(results) == {"ours: DalleVQGAN", "taming-transformers"}
        assert data[step]["ratio"] == pytest.approx(
            results["taming-transformers"]["cpu_s"] / results["ours: DalleVQGAN"]["cpu_s"]
        )
    assert "Targets (same run):" in (tmp_path / "vqgan.md").read_text()
