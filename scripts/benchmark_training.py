"""Training-side speed against the reference implementations, in one process.

- Transformer forward + backward tokens/s: `DalleForImageGeneration(stream, labels=stream).loss.backward()` against
  DALLE-pytorch 1.6.6 `DALLE(text, image_codes, return_loss=True).backward()` at the same width, depth and heads
  (defaults: hidden 256, 4 layers, 8 heads, 32-token caption, image grids 8x8 and 16x16).
- dVAE encode images/s: `DalleVAE.encode(pixels)` (pixel mapping, encoder, argmax codes) against OpenAI's `dall_e`
  `Encoder` at the same size, called as its README does (`argmax(encoder(map_pixels(x)), 1)`).

Timings are interleaved medians (see `_benchmark_utils.py`); ratios compare workloads of the same run. Results go to
`<output>.md` and `<output>.json`.

    .venv-bench/bin/python scripts/benchmark_training.py
    .venv-bench/bin/python scripts/benchmark_training.py --device cuda --dtype bf16 --output benchmarks/training_cuda
"""

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from hf_dalle import DalleConfig, DalleForImageGeneration, DalleVAE, DalleVAEConfig


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_utils import (  # noqa: E402
    environment,
    format_ratio,
    format_seconds,
    interleaved_timings,
    markdown_table,
    summarize,
    synchronize,
    write_results,
)


OURS, DALLE_PYTORCH = "ours: DalleForImageGeneration", "DALLE-pytorch: DALLE"
OURS_VAE, OPENAI_VAE = "ours: DalleVAE.encode", "OpenAI dall_e: Encoder"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"transformer": 1.2, "dvae": 1.0}


def train_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], tokens: int) -> Callable[[], int]:
    def run() -> int:
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        return tokens

    return run


def transformer_workloads(args, grid: int, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    config = DalleConfig(
        text_vocab_size=args.text_vocab_size,
        image_vocab_size=args.image_vocab_size,
        max_text_length=args.text_length,
        image_grid_size=grid,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
    )
    generator = torch.Generator().manual_seed(0)
    batch = args.batch_size
    text = torch.randint(1, config.text_vocab_size, (batch, config.max_text_length), generator=generator).to(device)
    codes = torch.randint(0, config.image_vocab_size, (batch, config.image_seq_length), generator=generator).to(device)
    tokens = batch * config.max_sequence_length
    torch.manual_seed(0)
    ours = DalleForImageGeneration(config).to(device, dtype).train()
    stream = ours.prepare_input_ids(text, codes)
    workloads = {OURS: train_step(ours, lambda: ours(stream, labels=stream).loss, tokens)}
    parameters = {OURS: ours.num_parameters()}
    if args.reference:
        from dalle_pytorch import DALLE, DiscreteVAE

        vae = DiscreteVAE(
            image_size=grid * 8, num_layers=3, num_tokens=config.image_vocab_size, codebook_dim=64, hidden_dim=16
        )
        dalle = (
            DALLE(
                dim=args.hidden_size,
                vae=vae,
                num_text_tokens=config.text_vocab_size,
                text_seq_len=config.max_text_length,
                depth=args.num_layers,
                heads=args.num_heads,
                dim_head=args.hidden_size // args.num_heads,
            )
            .to(device, dtype)
            .train()
        )
        # DALLE-pytorch's forward drops its last input position (nothing to predict), so it trains on the same count.
        workloads[DALLE_PYTORCH] = train_step(dalle, lambda: dalle(text, codes, return_loss=True), tokens)
        parameters[DALLE_PYTORCH] = sum(p.numel() for n, p in dalle.named_parameters() if not n.startswith("vae."))
    return workloads, parameters


def dvae_workloads(args, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    config = DalleVAEConfig(
        hidden_size=args.vae_hidden_size, vocab_size=args.vae_vocab_size, image_size=args.image_size
    )
    torch.manual_seed(0)
    ours = DalleVAE(config).to(device, dtype).eval()
    pixels = torch.rand(args.vae_batch_size, 3, args.image_size, args.image_size, device=device)
    workloads = {OURS_VAE: lambda: ours.encode(pixels).indices.shape[0]}
    parameters = {OURS_VAE: sum(p.numel() for p in ours.encoder.parameters())}
    if args.reference:
        from dall_e import Encoder, map_pixels

        # As shipped: float32 parameters; on CUDA its convolutions run in float16 (use_mixed_precision=True).
        openai = Encoder(n_hid=args.vae_hidden_size, vocab_size=args.vae_vocab_size, device=device).eval()
        workloads[OPENAI_VAE] = lambda: torch.argmax(openai(map_pixels(pixels)), dim=1).shape[0]
        parameters[OPENAI_VAE] = sum(p.numel() for p in openai.parameters())
    return workloads, parameters


def measure(workloads: dict, parameters: dict, args, device: torch.device, item_name: str, **labels) -> dict:
    """Interleaved timings; `ratio`: the second workload's time over the first's (ours first), on CPU time for
    single-threaded CPU runs and on wall time otherwise (see `_benchmark_utils.py`)."""
    samples = interleaved_timings(workloads, args.repeats, device, measure_memory=args.memory)
    results = {name: summarize(samples[name]) for name in workloads}
    for name in results:
        results[name]["parameters"] = parameters[name]
    basis = "cpu_s" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall_s"
    names = list(results)
    ratio = results[names[1]][basis] / results[names[0]][basis] if len(names) > 1 else None
    for name, result in results.items():
        print(f"  {labels} {name:35s} wall {result['wall_s']:8.3f} s  CPU {result['cpu_s']:8.3f} s", flush=True)
    return {**labels, "results": results, "ratio_basis": basis, "ratio": ratio}


def rows_of(run: dict, first_columns: list) -> list[list]:
    rows = []
    for index, (name, result) in enumerate(run["results"].items()):
        memory = result.get("peak_memory_mib")
        rows.append(
            first_columns
            + [
                name,
                f"{result['parameters']:,}",
                format_seconds(result["wall_s"]),
                format_seconds(result["cpu_s"]),
                f"{result['items_per_s']:.1f}",
                f"{result['items_per_cpu_s']:.1f}",
                "" if memory is None else f"{memory:.1f}",
                format_ratio(run["ratio"]) if index == 0 else "",
            ]
        )
    return rows


def training_markdown(transformer_runs: list[dict], dvae_run: dict, info: dict, args) -> str:
    basis = transformer_runs[0]["ratio_basis"] if transformer_runs else "wall_s"
    basis_name = "CPU time (one thread)" if basis == "cpu_s" else "wall time"
    common = ["implementation", "parameters", "wall s", "CPU s"]
    lines = [
        "## Transformer training step (forward + backward)",
        "",
        f"{info['device']} ({info.get('gpu') or info.get('cpu')}), torch {info['torch']}, {args.dtype}, "
        f"{info['torch_threads']} thread(s), {info['date_utc']} UTC. Hidden {args.hidden_size}, {args.num_layers} "
        f"layers, {args.num_heads} heads, {args.text_length}-token caption, vocab {args.text_vocab_size} text + "
        f"{args.image_vocab_size} image, batch {args.batch_size}. Medians of {args.repeats} interleaved repeats. "
        f"Ratio: DALLE-pytorch's {basis_name} over ours (how many times faster ours is). DALLE-pytorch's parameter "
        "count leaves out its dVAE; its feed-forward is GEGLU (more parameters at the same width). Peak memory: "
        "largest increase of resident memory during a run (CUDA: allocated memory).",
        "",
        markdown_table(
            ["grid"] + common + ["tokens/s", "tokens/CPU-s", "peak mem MiB", "ratio"],
            [row for run in transformer_runs for row in rows_of(run, [f"{run['grid']}x{run['grid']}"])],
        ),
    ]
    if dvae_run:
        lines += [
            "",
            "## dVAE encode",
            "",
            f"{args.vae_batch_size} images of {args.image_size}x{args.image_size}, n_hid {args.vae_hidden_size}, vocab "
            f"{args.vae_vocab_size} (OpenAI's released encoder: n_hid 256, vocab 8192, 256x256). Ratio: dall_e's "
            f"{basis_name} over ours.",
            "",
            markdown_table(common + ["images/s", "images/CPU-s", "peak mem MiB", "ratio"], rows_of(dvae_run, [])),
        ]
    lines += ["", "Targets (same run):", ""]
    for run in transformer_runs:
        if run["ratio"] is not None:
            met = "met" if run["ratio"] >= TARGETS["transformer"] else "NOT met"
            lines.append(
                f"- training {run['grid']}x{run['grid']}: {run['ratio']:.2f}x DALLE-pytorch "
                f"(target >= {TARGETS['transformer']}): {met}"
            )
    if dvae_run and dvae_run["ratio"] is not None:
        met = "met" if dvae_run["ratio"] >= TARGETS["dvae"] else "NOT met"
        lines.append(f"- dVAE encode: {dvae_run['ratio']:.2f}x dall_e (target >= {TARGETS['dvae']}): {met}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps shared-CPU runs steady)")
    parser.add_argument("--grid-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=32)
    parser.add_argument("--text-vocab-size", type=int, default=1024)
    parser.add_argument("--image-vocab-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--vae-hidden-size", type=int, default=64)
    parser.add_argument("--vae-vocab-size", type=int, default=8192)
    parser.add_argument("--vae-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="do not measure peak memory")
    parser.add_argument("--no-dvae", dest="dvae", action="store_false", help="skip the dVAE encode table")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help="skip the references (also when not installed)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="results stem (default benchmarks/training_<device>)"
    )
    args = parser.parse_args(argv)
    if min(args.grid_sizes + [args.batch_size, args.vae_batch_size, args.repeats]) < 1:
        raise ValueError("Grid sizes, batch sizes and repeats must be positive.")
    return args


def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    missing = [name for name in ("dalle_pytorch", "dall_e") if importlib.util.find_spec(name) is None]
    if args.reference and missing:
        print(f"{', '.join(missing)} not installed (make bench-env): skipping the references.", file=sys.stderr)
        args.reference = False
    info = environment(device, torch.get_num_threads())
    transformer_runs = []
    for grid in args.grid_sizes:
        workloads, parameters = transformer_workloads(args, grid, device, dtype)
        transformer_runs.append(measure(workloads, parameters, args, device, "tokens", grid=grid))
    dvae_run = None
    if args.dvae:
        with torch.no_grad():
            workloads, parameters = dvae_workloads(args, device, dtype)
            dvae_run = measure(workloads, parameters, args, device, "images")
    synchronize(device)
    output = args.output or Path("benchmarks") / f"training_{device.type}"
    data = {
        "environment": info,
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "transformer": transformer_runs,
        "dvae_encode": dvae_run,
    }
    write_results(output, training_markdown(transformer_runs, dvae_run, info, args), data)
    print(f"wrote {output}.md and {output}.json")


if __name__ == "__main__":
    main()
