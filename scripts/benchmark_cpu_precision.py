#!/usr/bin/env python
"""Why the CPU runs in float32 (`hf_dalle.device_utils`): the matrix products of a transformer layer in float32,
bfloat16 and float16, timed in one process (interleaved medians, one torch thread, CPU time; see `_benchmark_utils.py`).

    python scripts/benchmark_cpu_precision.py --output benchmarks/cpu_precision

At a transformer's width (default 2048, ruDALL-E Malevich's, with its 4x wider MLP):

- `linear, R rows`: `F.linear(x, weight)`, the product of every `nn.Linear` (weights stored `[out, in]`), for a decode
  step of `--decode-rows` candidates and for a prefill or training batch of `--batch-rows` positions;
- `matmul, R rows`: `x @ y` with both operands in row-major layout (activations times activations, as in attention).
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_utils import environment, interleaved_timings, markdown_table, summarize, write_results  # noqa: E402


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=2048, help="Transformer width (default: 2048).")
    parser.add_argument("--decode-rows", type=int, default=8, help="Rows of a decode step (default: 8 candidates).")
    parser.add_argument(
        "--batch-rows", type=int, default=512, help="Rows of a prefill / training batch (default: 512)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each (default: 3).")
    parser.add_argument("--output", default="benchmarks/cpu_precision", help="Results stem (.md, .json).")
    return parser.parse_args(argv)


def matrix_workloads(args) -> dict[str, dict[str, callable]]:
    """{shape label: {dtype name: workload}}; the operands are made once, in each dtype."""
    width, mlp = args.hidden_size, 4 * args.hidden_size
    generator = torch.Generator().manual_seed(0)
    shapes = {
        f"linear, {args.decode_rows} rows": ("linear", args.decode_rows),
        f"linear, {args.batch_rows} rows": ("linear", args.batch_rows),
        f"matmul, {args.decode_rows} rows": ("matmul", args.decode_rows),
    }
    workloads = {}
    for label, (kind, rows) in shapes.items():
        x = torch.randn(rows, width, generator=generator)
        other = torch.randn(mlp, width, generator=generator) if kind == "linear" else torch.randn(width, mlp)
        workloads[label] = {}
        for name, dtype in DTYPES.items():

            def run(x=x.to(dtype), other=other.to(dtype), kind=kind) -> int:
                F.linear(x, other) if kind == "linear" else x @ other
                return 1

            workloads[label][name] = run
    return workloads


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    groups = matrix_workloads(args)
    rows, results = [], {}
    for label, workloads in groups.items():
        # The dtypes of one shape interleaved: their ratios are measured under the same load.
        samples = interleaved_timings(workloads, repeats=args.repeats)
        summary = {name: summarize(s) for name, s in samples.items()}
        results[label] = summary
        base = summary["float32"]["cpu_s"]
        cells = [f"{summary[name]['cpu_s'] * 1000:.1f} ms ({summary[name]['cpu_s'] / base:.1f}x)" for name in DTYPES]
        rows.append([label, *cells])
    width = args.hidden_size
    environment_info = environment(torch.device("cpu"), 1)
    markdown = (
        "# Half precision on the CPU\n\n"
        f"Matrix products at width {width} (MLP {4 * width}): `linear` is `F.linear(x, weight)`, `x` `[rows, {width}]` "
        f"against a `[{4 * width}, {width}]` weight (every `nn.Linear`); `matmul` is `x @ y` with `y` "
        f"`[{width}, {4 * width}]` in row-major layout. CPU time per call, medians of {args.repeats} interleaved "
        f"runs, 1 torch thread, {environment_info.get('cpu', 'CPU')} (torch {torch.__version__}, capability "
        f"{torch.backends.cpu.get_cpu_capability()}); in brackets, against float32.\n\n"
        + markdown_table(["workload", *DTYPES], rows)
        + "\n\nWhy `hf_dalle.device_utils` keeps the CPU in float32 unless asked: a half-precision model on this CPU "
        "is never faster, and its prefill, training and attention products are many times slower.\n"
    )
    data = {"args": vars(args), "environment": environment_info, "results": results}
    write_results(Path(args.output), markdown, data)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
