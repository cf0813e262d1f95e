#!/usr/bin/env python
"""Peak memory of converting a released-size ruDALL-E checkpoint (random weights under its names and shapes) with
`hf_dalle.conversion.convert_rudalle`: results in benchmarks/rudalle_conversion_cpu.{md,json}.

    python scripts/benchmark_rudalle_conversion.py --model_name Malevich --work_dir /tmp/rudalle-bench

The checkpoint is written by a child process first, so the measuring process starts clean. Two figures, both above
the memory held right before the conversion: the peak of anonymous memory (`RssAnon`, what the conversion itself
allocates: shards being built, new tables), sampled every 5 ms; and the peak resident set (`VmHWM`), which also counts
the pages of the memory-mapped checkpoint that were read, which the kernel can drop again under memory pressure.
"""

import argparse
import multiprocessing
import shutil
import threading
import time
from pathlib import Path

import torch
from _benchmark_utils import _proc_status_kib, _release_freed_memory, markdown_table, write_results

from hf_dalle.conversion.convert_rudalle import RUDALLE_MODELS, convert_rudalle, rudalle_model_params
from hf_dalle.testing_utils import random_rudalle_state_dict


def write_checkpoint(model_params: dict, path: str) -> None:
    torch.save(random_rudalle_state_dict(model_params), path)


class AnonymousMemoryPeak:
    """Samples `RssAnon` in a background thread while active; `.peak_kib` is the largest value seen."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self.peak_kib, self._stop = interval_s, 0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _proc_status_kib("RssAnon"))
            time.sleep(self.interval_s)

    def __enter__(self):
        self.peak_kib = _proc_status_kib("RssAnon")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _proc_status_kib("RssAnon"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", choices=list(RUDALLE_MODELS), default="Malevich")
    parser.add_argument("--num_layers", type=int, default=None, help="Cut the model to this many layers.")
    parser.add_argument("--work_dir", required=True, help="Scratch folder for the checkpoint and the output.")
    parser.add_argument("--max_shard_size_mb", type=int, default=500)
    parser.add_argument("--output", default="benchmarks/rudalle_conversion_cpu", help="Results stem (.md, .json).")
    args = parser.parse_args(argv)

    model_params = rudalle_model_params(args.model_name)
    if args.num_layers:
        model_params["num_layers"] = args.num_layers
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, output_dir = work_dir / "pytorch_model.bin", work_dir / "converted"
    shutil.rmtree(output_dir, ignore_errors=True)
    child = multiprocessing.get_context("spawn").Process(target=write_checkpoint, args=(model_params, str(checkpoint)))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"error: writing the random checkpoint failed (exit code {child.exitcode})")

    _release_freed_memory()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    baseline_rss, baseline_anon = _proc_status_kib("VmRSS"), _proc_status_kib("RssAnon")
    start = time.perf_counter()
    with AnonymousMemoryPeak() as anonymous:
        convert_rudalle(checkpoint, model_params, output_dir, max_shard_bytes=args.max_shard_size_mb << 20)
    seconds = time.perf_counter() - start
    results = {
        "model_name": args.model_name,
        "model_params": model_params,
        "checkpoint_gib": checkpoint.stat().st_size / 2**30,
        "max_shard_size_mb": args.max_shard_size_mb,
        "shards": len(list((output_dir / "transformer").glob("*.safetensors"))),
        "seconds": seconds,
        "peak_anonymous_mib": (anonymous.peak_kib - baseline_anon) / 1024,
        "peak_rss_mib": (_proc_status_kib("VmHWM") - baseline_rss) / 1024,
    }
    table = markdown_table(
        ["model", "layers", "checkpoint", "shards", "time", "peak anonymous memory", "peak RSS (incl. mapped file)"],
        [
            [
                args.model_name,
                model_params["num_layers"],
                f"{results['checkpoint_gib']:.2f} GiB",
                f"{results['shards']} x <= {args.max_shard_size_mb} MiB",
                f"{seconds:.0f} s",
                f"{results['peak_anonymous_mib']:.0f} MiB",
                f"{results['peak_rss_mib']:.0f} MiB",
            ]
        ],
    )
    markdown = f"# Converting a ruDALL-E checkpoint: peak memory above the baseline (CPU)\n\n{table}\n"
    write_results(Path(args.output), markdown, results)
    print(markdown)


if __name__ == "__main__":
    main()
