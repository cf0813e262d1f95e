"""Helpers shared by the training tests: running the scripts in-process, and a clean, single-threaded environment."""

import importlib.util
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

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
