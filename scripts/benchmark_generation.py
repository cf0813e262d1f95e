"""Image-token generation speed of `DalleForImageGeneration` against what a user would pick instead, in one process.

For each image grid and batch size, with models of equal width and depth (defaults: hidden 256, 4 layers, 8 heads,
a 32-token caption):

- ours: `DalleForImageGeneration.generate` with its default cache (`DallePrefixCache`: preallocated, attention reads
  the filled prefix), with a `DynamicCache` passed in (transformers' default for other models), and with a static
  cache + `torch.compile` (transformers' `CompileConfig`);
- GPT-2 of the same dimensions through `generate` (a stock dense transformers causal LM);
- DALLE-pytorch 1.6.6 `generate_images(use_cache=True)` as shipped (its default `cond_scale=1` path drops the cache,
  so every step recomputes the whole prefix), and the same sampling loop calling its `forward(cache=...)` so the
  cache is used;
- the floor: the chain of matmuls our model needs per token (qkv, attention output, MLP in/out per layer, then the
  image rows of the head), with no attention, norms, sampling or framework overhead.

Every workload samples `grid**2` image tokens per caption (top-k sampling; DALLE-pytorch's dVAE decode is left out).
Timings are interleaved medians (see `_benchmark_utils.py`); the ratios compare workloads of the same run. Results go
to `<output>.md` and `<output>.json`.

    .venv-bench/bin/python scripts/benchmark_generation.py                       # CPU, the README table
    .venv-bench/bin/python scripts/benchmark_generation.py --device cuda --dtype bf16 --output benchmarks/generation_cuda
    .venv-bench/bin/python scripts/benchmark_generation.py --device cuda --dtype bf16 --decode-step-12b-only

`--decode-step-12b` (on by default with `--device cuda`) also times one decode step of a single layer shaped like the
paper's 12B model (d_model 3968, 62 heads, row attention) at the end of the 1280-token stream, with the mask over
every position and reading only the 289 positions row attention allows (`DecodeStepKeys`), against its
memory-bandwidth floor: the bytes that step must read (the layer's weights and the keys/values it attends over) over
the measured copy bandwidth of the device.
"""

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CompileConfig, DynamicCache, GPT2Config, GPT2LMHeadModel, StaticCache

from hf_dalle import DalleConfig, DalleForImageGeneration, DalleModel
from hf_dalle.io_utils import write_file_atomically
from hf_dalle.models.dalle.masking_dalle import build_attention_masks, decode_step_keys


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


OURS, OURS_DYNAMIC = "ours: generate (default: DallePrefixCache)", "ours: generate, DynamicCache"
OURS_COMPILED = "ours: generate, static cache + compile"
OUR_VARIANTS = (OURS, OURS_DYNAMIC, OURS_COMPILED)
GPT2 = "GPT-2: generate"
DALLE_PYTORCH, DALLE_PYTORCH_CACHE = "DALLE-pytorch: generate_images (as shipped)", "DALLE-pytorch: cache loop"
FLOOR = "matmul floor"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Targets of the issue at the largest batch (ours compared with each, same run).
TARGETS = {
    GPT2: ("throughput ratio", 1.0),
    DALLE_PYTORCH: ("throughput ratio", 3.0),
    DALLE_PYTORCH_CACHE: ("throughput ratio", 1.2),
    FLOOR: ("time ratio", 1.5),
}


def dalle_config(args, grid: int) -> DalleConfig:
    return DalleConfig(
        text_vocab_size=args.text_vocab_size,
        image_vocab_size=args.image_vocab_size,
        max_text_length=args.text_length,
        image_grid_size=grid,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
    )


def matmul_floor_weights(config: DalleConfig, device: torch.device, dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """The weight matrices one token passes through in `config`'s model: per layer qkv, attention output, MLP in and
    out, then the image rows of the head (the only logits an image position needs)."""
    width, inner = config.hidden_size, config.intermediate_size

    def weight(out_features: int, in_features: int) -> torch.Tensor:
        return torch.randn(out_features, in_features, device=device, dtype=dtype) / in_features**0.5

    layers = [
        [weight(3 * width, width), weight(width, width), weight(inner, width), weight(width, inner)]
        for _ in range(config.num_hidden_layers)
    ]
    return layers + [[weight(config.image_vocab_size, width)]]


def matmul_floor(config: DalleConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> Callable[[], int]:
    """Generates `image_seq_length` "tokens" per row: the prompt through the chain once, then one row per step."""
    weights = matmul_floor_weights(config, device, dtype)
    prompt = torch.randn(batch_size, config.max_text_length, config.hidden_size, device=device, dtype=dtype)
    step_input = prompt[:, -1:]
    width = config.hidden_size

    def chain(hidden_states: torch.Tensor) -> torch.Tensor:
        for qkv, attention_out, mlp_in, mlp_out in weights[:-1]:
            hidden_states = F.linear(F.linear(hidden_states, qkv)[..., :width], attention_out)
            hidden_states = F.linear(F.linear(hidden_states, mlp_in), mlp_out)
        return F.linear(hidden_states[:, -1:], weights[-1][0])

    def run() -> int:
        with torch.no_grad():
            logits = [chain(prompt)]
            for _ in range(config.image_seq_length - 1):
                logits.append(chain(step_input))
        return batch_size * len(logits)

    return run


def our_variants(args) -> tuple[str, ...]:
    """Ours' workloads for this run: the compiled one only with --compile."""
    return OUR_VARIANTS if args.compile else (OURS, OURS_DYNAMIC)


def ours_generate(model: DalleForImageGeneration, text: torch.Tensor, top_k: int, variant: str) -> Callable[[], int]:
    num_tokens = model.config.image_seq_length
    extra = {}
    if variant == OURS_COMPILED:
        # On CPU, generate() compiles the decode step only when given a CompileConfig explicitly (it never
        # auto-compiles there).
        compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead" if text.is_cuda else "default")
        compile_config._compile_all_devices = True
        extra = {"cache_implementation": "static", "compile_config": compile_config}

    def run() -> int:
        cache = {"cache": DynamicCache()} if variant == OURS_DYNAMIC else {}  # a fresh one per call
        stream = model.generate(
            text, do_sample=True, top_k=top_k, max_new_tokens=num_tokens, min_new_tokens=num_tokens, **extra, **cache
        )
        return stream[:, text.shape[1] :].numel()

    return run


def gpt2_generate(args, config: DalleConfig, text: torch.Tensor, top_k: int, dtype: torch.dtype) -> tuple:
    gpt2_config = GPT2Config(
        n_embd=args.hidden_size,
        n_layer=args.num_layers,
        n_head=args.num_heads,
        n_positions=config.max_sequence_length,
        vocab_size=config.vocab_size,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = GPT2LMHeadModel(gpt2_config).to(text.device, dtype).eval()
    num_tokens = config.image_seq_length
    attention_mask = torch.ones_like(text)

    def run() -> int:
        stream = model.generate(
            text,
            attention_mask=attention_mask,
            do_sample=True,
            top_k=top_k,
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
        )
        return stream[:, text.shape[1] :].numel()

    return model, run


def dalle_pytorch_models(args, config: DalleConfig, device: torch.device, dtype: torch.dtype):
    """DALLE-pytorch's DALLE at the same size (its defaults otherwise: full attention, rotary embeddings, token
    shift, GEGLU feed-forward), with a tiny dVAE whose feature map is `grid x grid`."""
    from dalle_pytorch import DALLE, DiscreteVAE

    vae = DiscreteVAE(
        image_size=config.image_grid_size * 8,
        num_layers=3,
        num_tokens=config.image_vocab_size,
        codebook_dim=64,
        hidden_dim=16,
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
        .eval()
    )
    # Token generation only: leave out the dVAE decode at the end of generate_images (ours and GPT-2 stop at codes).
    dalle.vae.decode = lambda image_codes: image_codes
    return dalle


def dalle_pytorch_filter_thres(dalle, top_k: int) -> float:
    """The `filter_thres` for which DALLE-pytorch's top_k keeps `top_k` logits (it keeps `int((1 - thres) * n)`)."""
    return 1 - (top_k + 0.5) / dalle.total_tokens


def dalle_pytorch_as_shipped(dalle, text: torch.Tensor, top_k: int) -> Callable[[], int]:
    thres = dalle_pytorch_filter_thres(dalle, top_k)

    def run() -> int:
        return dalle.generate_images(text, filter_thres=thres, use_cache=True).numel()

    return run


def dalle_pytorch_sample_with_cache(dalle, text: torch.Tensor, top_k: int) -> torch.Tensor:
    """`generate_images`'s sampling loop with the cache handed to `forward` (what its `use_cache=True` means to do):
    the image codes `[B, image_seq_len]`."""
    from dalle_pytorch.dalle_pytorch import gumbel_sample
    from dalle_pytorch.dalle_pytorch import top_k as top_k_filter

    thres = dalle_pytorch_filter_thres(dalle, top_k)
    text_length, total_length = dalle.text_seq_len, dalle.text_seq_len + dalle.image_seq_len
    stream, cache = text, {}
    with torch.no_grad():
        for _ in range(text_length, total_length):
            logits = dalle(stream[:, :text_length], stream[:, text_length:], cache=cache)[:, -1, :]
            sample = gumbel_sample(top_k_filter(logits, thres=thres), temperature=1.0, dim=-1)
            stream = torch.cat((stream, sample[:, None] - dalle.num_text_tokens), dim=-1)
    return stream[:, text_length:]


def dalle_pytorch_cache_loop(dalle, text: torch.Tensor, top_k: int) -> Callable[[], int]:
    return lambda: dalle_pytorch_sample_with_cache(dalle, text, top_k).numel()


def generation_workloads(args, grid: int, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
    config = dalle_config(args, grid)
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, config.text_vocab_size, (batch_size, config.max_text_length), generator=generator)
    text = text.to(device)
    torch.manual_seed(0)
    model = DalleForImageGeneration(config).to(device, dtype).eval()
    variants = our_variants(args)
    workloads = {variant: ours_generate(model, text, args.top_k, variant) for variant in variants}
    gpt2, workloads[GPT2] = gpt2_generate(args, config, text, args.top_k, dtype)
    parameters = {variant: model.num_parameters() for variant in variants} | {GPT2: gpt2.num_parameters()}
    if args.reference:
        dalle = dalle_pytorch_models(args, config, device, dtype)
        if args.shipped_batch_sizes is None or batch_size in args.shipped_batch_sizes:
            workloads[DALLE_PYTORCH] = dalle_pytorch_as_shipped(dalle, text, args.top_k)
        workloads[DALLE_PYTORCH_CACHE] = dalle_pytorch_cache_loop(dalle, text, args.top_k)
        transformer_parameters = sum(p.numel() for n, p in dalle.named_parameters() if not n.startswith("vae."))
        parameters[DALLE_PYTORCH] = parameters[DALLE_PYTORCH_CACHE] = transformer_parameters
    workloads[FLOOR] = matmul_floor(config, batch_size, device, dtype)
    parameters[FLOOR] = sum(w.numel() for layer in matmul_floor_weights(config, "meta", dtype) for w in layer)
    return workloads, parameters


def ratio_basis(device: torch.device, threads: int) -> str:
    """The time that ratios compare (see `_benchmark_utils.py`): CPU time for single-threaded CPU runs."""
    return "cpu_s" if device.type == "cpu" and threads == 1 else "wall_s"


def ratios_against(results: dict, ours: str, basis: str) -> dict:
    """Ours against each other workload (all produce the same tokens): their time over ours (> 1: ours is faster),
    and for the floor, ours' time over the floor's."""
    ratios = {}
    for name, result in results.items():
        if name in OUR_VARIANTS:
            continue
        if name == FLOOR:
            ratios[name] = results[ours][basis] / result[basis]
        else:
            ratios[name] = result[basis] / results[ours][basis]
    return ratios


def benchmark_generation(
    args, device: torch.device, dtype: torch.dtype, on_result: Callable[[list[dict]], None]
) -> list[dict]:
    """Every grid x batch configuration; `on_result(runs so far)` after each (results are saved as they come: the
    slow references take minutes per configuration)."""
    basis = ratio_basis(device, torch.get_num_threads())
    runs = []
    for grid in args.grid_sizes:
        for batch_size in args.batch_sizes:
            with torch.no_grad():
                workloads, parameters = generation_workloads(args, grid, batch_size, device, dtype)
                samples = interleaved_timings(
                    workloads,
                    args.repeats,
                    device,
                    repeats_of={DALLE_PYTORCH: args.slow_repeats},
                    measure_memory=args.memory,
                    warmup_of={OURS_COMPILED: 3},
                )
            results = {name: summarize(samples[name]) for name in workloads}
            for name in results:
                results[name]["parameters"] = parameters[name]
            best = min((name for name in OUR_VARIANTS if name in results), key=lambda name: results[name][basis])
            run = {
                "grid": grid,
                "batch_size": batch_size,
                "results": results,
                "ratio_basis": basis,
                "ours_best": best,
                "ratios_default": ratios_against(results, OURS, basis),
                "ratios_best": ratios_against(results, best, basis),
            }
            runs.append(run)
            print(f"grid {grid}x{grid}, batch {batch_size}:", flush=True)
            for name, result in results.items():
                print(f"  {name:45s} wall {result['wall_s']:8.3f} s  CPU {result['cpu_s']:8.3f} s", flush=True)
            on_result(runs)
    return runs


def profile_ours(args, device: torch.device, dtype: torch.dtype, output: Path) -> None:
    """torch.profiler table (ops by self time) of ours' generate with each cache, at the largest batch and grid."""
    from torch.profiler import ProfilerActivity, profile

    grid, batch_size = max(args.grid_sizes), max(args.batch_sizes)
    config = dalle_config(args, grid)
    text = torch.randint(1, config.text_vocab_size, (batch_size, config.max_text_length), device=device)
    torch.manual_seed(0)
    model = DalleForImageGeneration(config).to(device, dtype).eval()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    report = []
    for variant in our_variants(args):
        workload = ours_generate(model, text, args.top_k, variant)
        with torch.no_grad():
            workload()
            with profile(activities=activities) as profiler:
                workload()
        report += [
            f"{variant}, grid {grid}x{grid}, batch {batch_size}:",
            profiler.key_averages().table(sort_by=sort_by, row_limit=25),
            "",
        ]
    write_file_atomically(output, lambda path: path.write_text("\n".join(report)))
    print(f"wrote {output}")


def decode_step_12b(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """One decode step of a single layer of the paper's 12B shape (a row-attention layer) at the last stream position,
    vs the time to read what it must read at the device's measured copy bandwidth: its weights and the keys and values
    it attends over. Variants: eager and compiled with the row's mask over all 1280 positions, and eager reading only
    the 289 keys row attention allows there (`DecodeStepKeys`, what `generate` does at this position)."""
    # The 12B model's widths, one layer, a token vocabulary too small to matter.
    config = DalleConfig(text_vocab_size=16, image_vocab_size=16, num_hidden_layers=1, attention_types=["row"])
    torch.manual_seed(0)
    layer = DalleModel(config).to(device, dtype).eval().layers[0]
    position = config.max_sequence_length - 1
    mask_row = build_attention_masks(config, device)[layer.attention_type][position]
    step_keys = decode_step_keys(config, position, mask_row)
    itemsize = torch.finfo(dtype).bits // 8
    bandwidth = copy_bandwidth(device)
    layer_bytes = sum(p.numel() for p in layer.parameters()) * itemsize
    # variant: (layer call, what it attends with, how many positions' keys and values it reads)
    variants = {"eager, mask over the stream": (layer, mask_row[None], position + 1)}
    if args.compile:
        variants["compiled, mask over the stream"] = (torch.compile(layer), mask_row[None], position + 1)
    variants["eager, decode-step keys"] = (layer, step_keys, int(mask_row.sum()))
    runs = []
    for batch_size in args.decode_batch_sizes:
        cache = StaticCache(config=config, max_cache_len=config.max_sequence_length)
        shape = (batch_size, config.num_attention_heads, position, config.hidden_size // config.num_attention_heads)
        with torch.no_grad():
            cache.update(
                torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype), 0
            )
        hidden_states = torch.randn(batch_size, 1, config.hidden_size, device=device, dtype=dtype)

        def decode_step(step, attention, cache=cache) -> Callable[[], int]:
            def run() -> int:
                with torch.no_grad():
                    step(hidden_states, attention, cache=cache)
                cache.layers[0].cumulative_length.fill_(position)  # write the same slot again on the next call
                return batch_size

            return run

        workloads = {name: decode_step(step, attention) for name, (step, attention, _) in variants.items()}
        samples = interleaved_timings(workloads, args.repeats * 4, device, warmup=3)
        for name, (_, _, positions_read) in variants.items():
            bytes_read = layer_bytes + 2 * batch_size * positions_read * config.hidden_size * itemsize
            step_time = summarize(samples[name])["wall_s"]
            floor = bytes_read / bandwidth
            runs.append(
                {
                    "variant": name,
                    "batch_size": batch_size,
                    "step_s": step_time,
                    "positions_read": positions_read,
                    "bytes_read": bytes_read,
                    "bandwidth_bytes_per_s": bandwidth,
                    "floor_s": floor,
                    "ratio_to_floor": step_time / floor,
                }
            )
            print(
                f"12B-shaped layer decode step, {name}, batch {batch_size}: {step_time * 1e3:.3f} ms, "
                f"floor {floor * 1e3:.3f} ms",
                flush=True,
            )
        del cache
    return runs


def copy_bandwidth(device: torch.device, size_bytes: int = 2**30) -> float:
    """Bytes per second moved by a large device copy (a copy reads and writes each byte: 2 x size)."""
    if device.type == "cpu":
        size_bytes //= 4
    source = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    samples = interleaved_timings({"copy": lambda: target.copy_(source).numel()}, 5, device, warmup=2)["copy"]
    return 2 * size_bytes / summarize(samples)["wall_s"]


def generation_markdown(runs: list[dict], decode_runs: list[dict], info: dict, args) -> str:
    basis = runs[0]["ratio_basis"] if runs else "wall_s"
    basis_name = (
        "CPU time (one thread; wall time on a shared machine includes waiting for a core)"
        if (basis == "cpu_s")
        else "wall time"
    )
    lines = (
        []
        if not runs
        else [
            "## Image-token generation",
            "",
            f"{info['device']} ({info.get('gpu') or info.get('cpu')}), torch {info['torch']}, {args.dtype}, "
            f"{info['torch_threads']} thread(s), {info['date_utc']} UTC. Hidden {args.hidden_size}, {args.num_layers} "
            f"layers, {args.num_heads} heads, {args.text_length}-token caption, vocab {args.text_vocab_size} text + "
            f"{args.image_vocab_size} image, top-k {args.top_k}. Medians of {args.repeats} interleaved repeats "
            f"({args.slow_repeats} for DALLE-pytorch as shipped, not warmed up). Ratio, on {basis_name}: the row's time "
            "over ours (generate's default cache), i.e. how many times faster ours is; for the floor, ours' time over the "
            "floor's. "
            "In brackets, the same for ours' fastest variant. Peak memory: largest increase of resident memory during a "
            "run (CUDA: allocated memory).",
            "",
        ]
    )
    headers = [
        "grid",
        "batch",
        "implementation",
        "wall s",
        "CPU s",
        "tokens/s",
        "tokens/CPU-s",
        "peak mem MiB",
        "ratio",
    ]
    rows = []
    for run in runs:
        for name, result in run["results"].items():
            ratio = run["ratios_default"].get(name)
            best_ratio = run["ratios_best"].get(name)
            cell = format_ratio(ratio)
            if run["ours_best"] != OURS and ratio is not None:
                cell += f" ({format_ratio(best_ratio)})"
            memory = result.get("peak_memory_mib")
            rows.append(
                [
                    f"{run['grid']}x{run['grid']}",
                    run["batch_size"],
                    name,
                    format_seconds(result["wall_s"]),
                    format_seconds(result["cpu_s"]),
                    f"{result['items_per_s']:.0f}",
                    f"{result['items_per_cpu_s']:.0f}",
                    "" if memory is None else f"{memory:.1f}",
                    cell,
                ]
            )
    if runs:
        lines.append(markdown_table(headers, rows))
        largest = max(args.batch_sizes)
        lines += ["", f"Targets at batch {largest} (ours' fastest variant):", ""]
    for run in runs:
        if run["batch_size"] != largest:
            continue
        for name, (kind, target) in TARGETS.items():
            if name not in run["ratios_best"]:
                continue
            ratio = run["ratios_best"][name]
            met = ratio >= target if kind == "throughput ratio" else ratio <= target
            bound = ">=" if kind == "throughput ratio" else "<="
            lines.append(
                f"- {run['grid']}x{run['grid']}, {run['ours_best']}: vs {name}: {kind} {ratio:.2f} "
                f"(target {bound} {target}): {'met' if met else 'NOT met'}"
            )
    if decode_runs:
        lines += [""] if lines else []
        lines += [
            "## One 12B-shaped layer (d_model 3968, 62 heads, row attention), one decode step at position 1279",
            "",
            f"{info['device']} ({info.get('gpu') or info.get('cpu')}), torch {info['torch']}, {args.dtype}. Bytes read: "
            "the layer's weights and the keys and values of the positions the variant attends over (the mask's 1280, "
            "or the 289 that row attention allows); floor: bytes over the measured copy bandwidth (a copy reads and "
            "writes each byte). Median of the step's wall time.",
            "",
            markdown_table(
                [
                    "variant",
                    "batch",
                    "positions read",
                    "step ms",
                    "bytes read MB",
                    "copy bandwidth GB/s",
                    "floor ms",
                    "step / floor",
                ],
                [
                    [
                        run["variant"],
                        run["batch_size"],
                        run["positions_read"],
                        f"{run['step_s'] * 1e3:.3f}",
                        f"{run['bytes_read'] / 1e6:.0f}",
                        f"{run['bandwidth_bytes_per_s'] / 1e9:.0f}",
                        f"{run['floor_s'] * 1e3:.3f}",
                        f"{run['ratio_to_floor']:.2f}x",
                    ]
                    for run in decode_runs
                ],
            ),
        ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps shared-CPU runs steady)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--grid-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--text-length", type=int, default=32)
    parser.add_argument("--text-vocab-size", type=int, default=1024)
    parser.add_argument("--image-vocab-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=3, help="repeats of DALLE-pytorch as shipped")
    parser.add_argument(
        "--shipped-batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="batch sizes at which to run DALLE-pytorch as shipped (default: all; it takes minutes)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled variants")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="do not measure peak memory")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help="skip DALLE-pytorch (also when not installed)"
    )
    parser.add_argument(
        "--decode-step-12b",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time a 12B-shaped layer's decode step (default: on for CUDA)",
    )
    parser.add_argument("--decode-step-12b-only", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also write a torch.profiler table of ours at the largest batch and grid",
    )
    parser.add_argument("--decode-batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--output", type=Path, default=None, help="results stem (default benchmarks/generation_<device>)"
    )
    args = parser.parse_args(argv)
    if min(args.batch_sizes + args.grid_sizes + [args.repeats, args.slow_repeats, args.top_k]) < 1:
        raise ValueError("Batch sizes, grid sizes, repeats and top-k must be positive.")
    if args.reference and any(grid & (grid - 1) for grid in args.grid_sizes):
        raise ValueError(
            f"DALLE-pytorch's dVAE needs power-of-two grid sizes, got {args.grid_sizes} (or --no-reference)."
        )
    if args.top_k > args.image_vocab_size:
        raise ValueError(f"--top-k ({args.top_k}) must not exceed --image-vocab-size ({args.image_vocab_size}).")
    return args


def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    if args.reference and importlib.util.find_spec("dalle_pytorch") is None:
        print("dalle_pytorch is not installed (make bench-env): skipping DALLE-pytorch.", file=sys.stderr)
        args.reference = False
    if args.decode_step_12b is None:
        args.decode_step_12b = device.type == "cuda" or args.decode_step_12b_only
    info = environment(device, torch.get_num_threads())
    output = args.output or Path("benchmarks") / f"generation_{device.type}"

    def save(runs: list[dict], decode_runs: list[dict]) -> None:
        data = {
            "environment": info,
            "arguments": {k: str(v) for k, v in vars(args).items()},
            "generation": runs,
            "decode_step_12b": decode_runs,
        }
        write_results(output, generation_markdown(runs, decode_runs, info, args), data)

    runs = [] if args.decode_step_12b_only else benchmark_generation(args, device, dtype, lambda runs: save(runs, []))
    decode_runs = decode_step_12b(args, device, dtype) if args.decode_step_12b else []
    synchronize(device)
    save(runs, decode_runs)
    print(f"wrote {output}.md and {output}.json")
    if args.profile:
        profile_ours(args, device, dtype, output.with_name(f"{output.name}_profile.txt"))


if __name__ == "__main__":
    main()
