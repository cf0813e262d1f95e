"""Measurement helpers shared by `benchmark_generation.py` and `benchmark_training.py`.

Timing: every workload is a callable returning how many items (tokens, images) it produced. The workloads of one
table run in the same process, interleaved (round `r` starts at workload `r % n`, so none always runs first or right
after the same neighbour), and each is summarised by the median of its repeats: the machine is shared, and medians of
interleaved runs keep the ratios between workloads meaningful when the absolute times drift.

Memory: the peak increase of resident memory during one run of a workload. On CPU, `tracemalloc` does not see torch's
allocations and `ru_maxrss` only ever grows, so we reset the kernel's high-water mark (`VmHWM`, by writing 5 to
`/proc/self/clear_refs`) after a `gc.collect()` + `malloc_trim(0)`, run once and read `VmHWM - VmRSS(before)`. On CUDA,
`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. Measured around every timed run (the reset costs
far less than the runs), and reported as the largest over the repeats.

Ratios: on a CPU shared with other jobs, wall time includes the time a runnable process waits for a core, which
changes from one minute to the next. With one torch thread, process CPU time is the work itself, so CPU-run ratios use
CPU time (`ratio_basis`); GPU runs use wall time.
"""

import ctypes
import gc
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_dalle.io_utils import write_file_atomically


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    items: int
    peak_memory_mib: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(workload: Callable[[], int], device: torch.device, measure_memory: bool = False) -> Sample:
    """Wall-clock and process CPU time (all threads) of one call, and with `measure_memory` its peak memory
    increase (see `peak_memory_mib`)."""
    start_memory = _start_memory_measurement(device) if measure_memory else None
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    items = workload()
    synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _peak_memory_since(device, start_memory) if start_memory is not None else None
    return Sample(wall, cpu, int(items), peak)


def interleaving_order(names: list[str], repeats: int) -> list[list[str]]:
    """The order of each round: round `r` is `names` rotated left by `r`."""
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(repeats)]


def interleaved_timings(
    workloads: dict[str, Callable[[], int]],
    repeats: int,
    device: torch.device = torch.device("cpu"),
    warmup: int = 1,
    repeats_of: dict[str, int] | None = None,
    measure_memory: bool = False,
    warmup_of: dict[str, int] | None = None,
) -> dict[str, list[Sample]]:
    """
    Time every workload `repeats` times in interleaved rounds, after `warmup` untimed calls each (compilation,
    allocator and cache warm-up). Slow workloads can be given fewer repeats (`repeats_of[name]`, they then sit out the
    later rounds); one with at most 1 repeat is not warmed up either (eager code without compilation: the first call
    differs little, and it is the one that takes minutes). `warmup_of[name]` overrides `warmup` (compiled code with
    CUDA graphs records them over its first calls).
    """
    repeats_of, warmup_of = repeats_of or {}, warmup_of or {}
    for name, workload in workloads.items():
        for _ in range(warmup_of.get(name, warmup if repeats_of.get(name, repeats) > 1 else 0)):
            workload()
    samples = {name: [] for name in workloads}
    for order in interleaving_order(list(workloads), repeats):
        for name in order:
            if len(samples[name]) < repeats_of.get(name, repeats):
                samples[name].append(time_once(workloads[name], device, measure_memory))
    return samples


def summarize(samples: list[Sample]) -> dict:
    """Medians of the repeats (peak memory: the largest); throughput is items over the median wall time, and over
    the median CPU time."""
    wall = statistics.median(s.wall_s for s in samples)
    cpu = statistics.median(s.cpu_s for s in samples)
    items = samples[0].items
    if any(s.items != items for s in samples):
        raise ValueError(f"A workload produced a varying number of items: {[s.items for s in samples]}.")
    peaks = [s.peak_memory_mib for s in samples if s.peak_memory_mib is not None]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "items": items,
        "items_per_s": items / wall,
        "items_per_cpu_s": items / cpu,
        "peak_memory_mib": max(peaks) if peaks else None,
        "repeats": len(samples),
        "wall_s_all": [round(s.wall_s, 5) for s in samples],
        "cpu_s_all": [round(s.cpu_s, 5) for s in samples],
    }


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed memory may stay resident, the delta is then a lower bound
        pass


def _start_memory_measurement(device: torch.device) -> float | None:
    """Reset the peak counter; returns the baseline (bytes on CUDA, KiB of RSS on CPU), or None if unsupported."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if device.type != "cpu" or not os.path.exists("/proc/self/clear_refs"):
        return None
    _release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    return _proc_status_kib("VmRSS")


def _peak_memory_since(device: torch.device, baseline: float) -> float:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    return (_proc_status_kib("VmHWM") - baseline) / 1024


def peak_memory_mib(workload: Callable[[], int], device: torch.device) -> float | None:
    """Peak memory increase (MiB) during one call of `workload`, or None where this platform cannot tell."""
    return time_once(workload, device, measure_memory=True).peak_memory_mib


def environment(device: torch.device, threads: int) -> dict:
    """What the numbers were measured on."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                info["cpu"] = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE).group(1)
        except (OSError, AttributeError):
            info["cpu"] = platform.processor()
    try:
        with open("/proc/loadavg") as loadavg:
            info["load_average_at_start"] = float(loadavg.read().split()[0])
    except OSError:
        pass
    return info


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(stem: Path, markdown: str, data: dict) -> None:
    """`<stem>.md` and `<stem>.json`, each written atomically."""
    text = json.dumps(data, indent=2) + "\n"
    write_file_atomically(stem.with_suffix(".json"), lambda path: path.write_text(text))
    write_file_atomically(stem.with_suffix(".md"), lambda path: path.write_text(markdown.rstrip() + "\n"))


def format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def format_ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"
