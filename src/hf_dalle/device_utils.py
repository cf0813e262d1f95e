"""Where a model runs and in which precision: one rule for the command line, the web app and `scripts/generate.py`.

- Device: the best available one, CUDA, else Apple's MPS, else the CPU.
- Precision: half precision only where the device computes it fast: on CUDA bfloat16 (float16 on GPUs without
  bfloat16), float32 everywhere else. On a CPU without native half-precision units, bfloat16 and float16 matrix
  products are several to tens of times slower than float32 (`scripts/benchmark_cpu_precision.py`,
  `benchmarks/cpu_precision.md`), so a CPU runs them only when asked to, and the pipeline then warns once
  ([`slow_half_precision_warning`]). MPS stays in float32 by default (float16 when asked).

The command line builds its `--device` / `--dtype` flags from the names here before torch is imported: torch is
imported only when a device is picked.
"""

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch


DEVICE_NAMES = ("auto", "cuda", "mps", "cpu")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
# The benchmark behind the rule: half-precision matmuls against float32 on this project's reference CPU.
CPU_PRECISION_BENCHMARK = "benchmarks/cpu_precision.md"


def default_device() -> str:
    """The best available device: `"cuda"`, else `"mps"`, else `"cpu"`."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device) -> "torch.dtype":
    """The precision `device` computes fast: bfloat16 on CUDA (float16 where the GPU lacks bfloat16), float32 on the
    CPU and MPS."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device_and_dtype(
    device: str | None = None, dtype: str | None = None
) -> tuple["torch.device", "torch.dtype"]:
    """
    The `torch.device` and `torch.dtype` to run on: `device` (`"cuda"`, `"cuda:1"`, `"mps"`, `"cpu"`) or, when it is
    `None` / `"auto"`, [`default_device`]; `dtype` (`"float32"`, `"bfloat16"`, `"float16"`) or, when `None` /
    `"auto"`, [`default_dtype`] of that device. A device that is not available, or an unknown name, is a `ValueError`
    saying which are.
    """
    import torch

    if device in (None, "auto"):
        device = default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"The device must be one of {', '.join(DEVICE_NAMES)} (or e.g. cuda:1), got {device!r}."
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        found = ", ".join(name for name, present in available.items() if present)
        raise ValueError(f"The device {str(device)!r} is not available on this machine (available: {found}).")
    if dtype in (None, "auto"):
        return device, default_dtype(device)
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"The dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}.")
    return device, getattr(torch, dtype)


def slow_half_precision_warning(device, dtype) -> str | None:
    """What to tell a user who runs `dtype` on `device` when that is half precision on a CPU (`None` otherwise)."""
    import torch

    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = str(dtype).removeprefix("torch.")
    return (
        f"The model runs in {name} on the CPU, where half-precision matrix products are several to tens of times "
        f"slower than float32 unless the CPU has native {name} units ({CPU_PRECISION_BENCHMARK}). Load it in float32 "
        "(DallePipeline.from_pretrained's default; or pipe.to(torch.float32)), or pass --dtype float32 on the command "
        "line (its default on a CPU)."
    )


__all__ = [
    "CPU_PRECISION_BENCHMARK",
    "DEVICE_NAMES",
    "DTYPE_NAMES",
    "default_device",
    "default_dtype",
    "resolve_device_and_dtype",
    "slow_half_precision_warning",
]
