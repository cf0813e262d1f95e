"""Helpers shared by the training tests: running the scripts in-process, a clean, single-threaded environment, a
simulated kill, and comparing runs (weights, logged losses)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file


REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """The module `scripts/{name}.py` (its `main(argv)` runs the script in this process)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO_ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(autouse=True, scope="module")
def training_environment():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster than two fighting. And a
    fresh Accelerate state: it is process-wide, and an earlier test's precision must not leak into these runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


class Interrupt(Exception):
    """Stands in for the process being killed."""


def interrupt_on_call(monkeypatch, cls, method: str, call: int):
    """Make the `call`-th call (1-based) of `cls.method` raise `Interrupt`."""
    original, calls = getattr(cls, method), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Interrupt(f"interrupted at call {call} of {cls.__name__}.{method}")
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, method, wrapper)


def assert_same_weights(dir_a: Path, dir_b: Path, filename: str = "model.safetensors", atol: float = 1e-6):
    a, b = load_file(dir_a / filename), load_file(dir_b / filename)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def training_logs(output_dir: Path) -> list[dict]:
    """The training averages in OUTPUT_DIR/logs/metrics.jsonl (not the validation lines)."""
    logs = [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [log for log in logs if "loss" in log]
