#!/usr/bin/env python
"""Peak memory of converting DALL·E Mega's files (random weights of Mega's shapes, in min-dalle's `models_root`
layout) with `hf_dalle.convert_dalle_mega`: results in benchmarks/dalle_mega_conversion_cpu.{md,json}.

    python scripts/benchmark_dalle_mega_conversion.py --work_dir /tmp/dalle-mega-bench [--num_layers 24] [--dtype float16]

The files are written by a child process first (encoder.pt, decoder.pt of Mega's width, tables and `--num_layers`
layers, detoker.pt of its one size, a small BPE), so the measuring process starts clean. Two figures, both above the
memory held right before the conversion (`AnonymousMemoryPeak` of `benchmark_rudalle_conversion.py`): the peak of
anonymous memory (what the conversion itself allocates: shards being written, the VQGAN, the checks), sampled every
5 ms, and the peak resident set, which also counts the pages of the memory-mapped files that were read (the kernel
drops those again under memory pressure).
"""

import argparse
import multiprocessing
import shutil
import time
from pathlib import Path

import torch
from _benchmark_utils import _proc_status_kib, _release_freed_memory, markdown_table, write_results
from benchmark_rudalle_conversion import AnonymousMemoryPeak

from hf_dalle import DalleBartConfig, DalleBartForImageGeneration
from hf_dalle.conversion.convert_dalle_mega import convert_dalle_mega
from hf_dalle.testing_utils import detoker_state_dict, random_taming_vqgan_state_dict, write_min_dalle_models_root


def write_files(root: str, config: DalleBartConfig, dtype: str) -> None:
    detoker = detoker_state_dict(random_taming_vqgan_state_dict())  # min-dalle's detoker.pt, 46.7M parameters
    write_min_dalle_models_root(root, config, "mega", detoker=detoker, dtype=getattr(torch, dtype))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", required=True, help="Scratch folder for the files and the output.")
    parser.add_argument("--num_layers", type=int, default=24, help="Encoder and decoder layers (Mega: 24).")
    parser.add_argument("--hidden_size", type=int, default=2048, help="Width (Mega: 2048; smaller for a smoke run).")
    parser.add_argument("--num_attention_heads", type=int, default=32)
    parser.add_argument("--intermediate_size", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="Dtype of the files.")
    parser.add_argument("--max_shard_size_mb", type=int, default=500)
    parser.add_argument("--output", default="benchmarks/dalle_mega_conversion_cpu", help="Results stem (.md, .json).")
    args = parser.parse_args(argv)

    work_dir = Path(args.work_dir)
    root, output_dir = work_dir / "models_root", work_dir / "converted"
    shutil.rmtree(work_dir, ignore_errors=True)
    config = DalleBartConfig(  # Mega's tables and, by default, its shapes
        encoder_layers=args.num_layers,
        decoder_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=args.intermediate_size,
    )
    child = multiprocessing.get_context("spawn").Process(target=write_files, args=(str(root), config, args.dtype))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"error: writing the random files failed (exit code {child.exitcode})")

    _release_freed_memory()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    baseline_rss, baseline_anon = _proc_status_kib("VmRSS"), _proc_status_kib("RssAnon")
    start = time.perf_counter()
    with AnonymousMemoryPeak() as anonymous:
        config = convert_dalle_mega(
            output_dir, "mega", root, num_attention_heads=args.num_attention_heads,
            max_shard_bytes=args.max_shard_size_mb << 20,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    files_gib = sum(p.stat().st_size for p in root.rglob("*.pt")) / 2**30
    with torch.device("meta"):
        parameters = DalleBartForImageGeneration(config).num_parameters()
    results = {
        "num_layers": args.num_layers,
        "dtype": args.dtype,
        "parameters": parameters,
        "files_gib": files_gib,
        "max_shard_size_mb": args.max_shard_size_mb,
        "shards": len(list((output_dir / "transformer").glob("*.safetensors"))),
        "seconds": seconds,
        "peak_anonymous_mib": (anonymous.peak_kib - baseline_anon) / 1024,
        "peak_rss_mib": (_proc_status_kib("VmHWM") - baseline_rss) / 1024,
    }
    table = markdown_table(
        [
            "layers",
            "parameters",
            "files (dtype)",
            "shards",
            "time",
            "peak anonymous memory",
            "peak RSS (incl. mapped)",
        ],
        [
            [
                f"{args.num_layers} + {args.num_layers}",
                f"{parameters / 1e9:.2f}B",
                f"{files_gib:.2f} GiB ({args.dtype})",
                f"{results['shards']} x <= {args.max_shard_size_mb} MiB",
                f"{seconds:.0f} s",
                f"{results['peak_anonymous_mib']:.0f} MiB",
                f"{results['peak_rss_mib']:.0f} MiB",
            ]
        ],
    )
    markdown = (
        "# Converting DALL·E Mega's files: peak memory above the baseline (CPU)\n\n"
        f"Random weights of width {args.hidden_size} (GLU {args.intermediate_size}) with Mega's tables in min-dalle's layout (encoder.pt, decoder.pt, detoker.pt), converted with "
        f"`hf_dalle.convert_dalle_mega` (every tensor checked, then written shard by shard from the memory-mapped "
        f"files).\n\n{table}\n"
    )
    write_results(Path(args.output), markdown, results)
    print(markdown)


if __name__ == "__main__":
    main()
