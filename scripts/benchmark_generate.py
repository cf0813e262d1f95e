#!/usr/bin/env python
"""What scripts/generate.py costs over calling the pipeline directly: the same captions, candidates and batch size,
timed in one process (interleaved medians, see `_benchmark_utils.py`; one torch thread, CPU time on a CPU).

    python scripts/benchmark_generate.py --output benchmarks/generate_cpu_demo_model

- `pipeline`: `pipe(captions, num_candidates=N, candidate_batch_size=B, generator=[one per candidate])`;
- `generate.py`: its sampling loop (`generate_captions`: pipeline calls on groups of captions whose candidates fill
  whole batches) and its writes (`write_caption`: the PNGs, atomically, and the manifest records), into a fresh folder.

Target: generate.py within 10% of the pipeline (ratio <= 1.10).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from hf_dalle import DEMO_MODEL_DIR, DallePipeline
from hf_dalle.data import split_captions


sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate  # noqa: E402
from _benchmark_utils import environment, interleaved_timings, markdown_table, summarize, write_results  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL_DIR, help="Pipeline folder or Hub id (default: the demo model).")
    parser.add_argument("--num-captions", type=int, default=8, help="Captions per run (default: 8).")
    parser.add_argument("--num-candidates", type=int, default=16, help="Candidates per caption (default: 16).")
    parser.add_argument("--num-images", type=int, default=1, help="Images kept per caption (default: 1).")
    parser.add_argument("--batch-size", type=int, default=16, help="candidate_batch_size of both (default: 16).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each (default: 3).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1).")
    parser.add_argument("--output", default="benchmarks/generate_cpu_demo_model", help="Results stem (.md, .json).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = DallePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    captions = split_captions("train", num_objects=2)[: args.num_captions]
    n, k = args.num_candidates, args.num_images
    job = generate.parse_args(
        ["--captions", "unused.txt", "--output_dir", "unused", "--num_candidates", str(n),
         "--num_images_per_prompt", str(k), "--candidate_batch_size", str(args.batch_size)]
    )  # fmt: skip
    items = [{"caption": caption, "source_index": i} for i, caption in enumerate(captions)]

    def pipeline() -> int:
        seeds = [generate.candidate_seed(0, i, j) for i in range(len(captions)) for j in range(n)]
        pipe(
            captions, num_candidates=n, num_images_per_prompt=k, candidate_batch_size=args.batch_size,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        )  # fmt: skip
        return len(seeds)

    def generate_script() -> int:
        with tempfile.TemporaryDirectory() as output_dir:
            for index, best in generate.generate_captions(pipe, list(enumerate(captions)), job):
                generate.write_caption(Path(output_dir), items[index], index, best)
        return len(captions) * n

    samples = interleaved_timings({"pipeline": pipeline, "generate.py": generate_script}, repeats=args.repeats)
    results = {name: summarize(s) for name, s in samples.items()}
    basis = "cpu_s" if args.threads == 1 else "wall_s"
    ratio = results["generate.py"][basis] / results["pipeline"][basis]
    rows = [
        [name, f"{r['cpu_s']:.2f}", f"{r['wall_s']:.2f}", f"{r[basis] / results['pipeline'][basis]:.3f}x"]
        for name, r in results.items()
    ]
    model = "the demo model" if args.model == DEMO_MODEL_DIR else args.model
    markdown = (
        f"# scripts/generate.py against the pipeline\n\n{model}: {len(captions)} captions x {n} candidates, "
        f"{k} kept, candidate_batch_size {args.batch_size}, {args.threads} torch thread(s), medians of "
        f"{args.repeats} interleaved runs.\n\n"
        + markdown_table(["workload", "CPU s", "wall s", f"vs pipeline ({basis})"], rows)
        + f"\n\ngenerate.py / pipeline: {ratio:.3f}x (target <= 1.10x: {'met' if ratio <= 1.10 else 'not met'}).\n"
    )
    data = {"args": vars(args), "environment": environment(torch.device("cpu"), args.threads), "results": results}
    write_results(Path(args.output), markdown, {**data, "ratio": ratio})
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
