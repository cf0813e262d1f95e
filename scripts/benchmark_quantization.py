"""The same DallePipeline loaded in fp32, bf16 and int8 weight-only (torchao through transformers' `TorchAoConfig`,
the rest in bf16), compared in one process: transformer weight memory, peak memory and speed of sampling candidates,
how far the image-code logits move from fp32, and, with `--model` pointing at a shapes-world model (the bundled demo
model), the shapes judge's accuracy on demo-world captions (goal: int8 within 2 points of fp32).

Without `--model` the pipeline is randomly initialised (hidden 256, 4 layers, 8x8 codes by default): memory, speed
and logit error are meaningful, accuracy is not (it needs a trained model) and is reported as pending.

    .venv/bin/python scripts/benchmark_quantization.py                                  # random model, CPU
    .venv/bin/python scripts/benchmark_quantization.py --model src/hf_dalle/demo_model          # once it ships
    .venv/bin/python scripts/benchmark_quantization.py --device cuda --output benchmarks/quantization_cuda

Timings are interleaved medians (see `_benchmark_utils.py`); results go to `<output>.md` and `<output>.json`.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torchao.quantization import Int8WeightOnlyConfig
from transformers import TorchAoConfig

from hf_dalle import DalleConfig, DalleForImageGeneration, DallePipeline, DalleTokenizer, DalleVAE, DalleVAEConfig
from hf_dalle.data.shapes import all_captions, is_held_out
from hf_dalle.data.shapes_judge import judge_image
from hf_dalle.memory import parameter_bytes


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_utils import (  # noqa: E402
    environment,
    interleaved_timings,
    markdown_table,
    summarize,
    write_results,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Pipeline directory or Hub id (default: a random pipeline).")
    parser.add_argument("--hidden-size", type=int, default=256, help="Random pipeline: transformer width.")
    parser.add_argument("--num-layers", type=int, default=4, help="Random pipeline: transformer depth.")
    parser.add_argument("--num-heads", type=int, default=8, help="Random pipeline: attention heads.")
    parser.add_argument("--grid", type=int, default=8, help="Random pipeline: image codes per side.")
    parser.add_argument("--num-candidates", type=int, default=8, help="Candidates sampled per timed call.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per variant.")
    parser.add_argument("--judge-captions", type=int, default=60, help="With --model: captions judged per variant.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time is the work).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="benchmarks/quantization_cpu", help="Results stem (.md and .json).")
    return parser.parse_args(argv)


def save_random_pipeline(path: Path, args: argparse.Namespace) -> None:
    """A randomly initialised shapes-world-sized pipeline (no CLIP: reranking is not what is measured)."""
    torch.manual_seed(0)
    tokenizer = DalleTokenizer.train_from_texts(all_captions(), vocab_size=320, max_text_length=16)
    vae = DalleVAE(DalleVAEConfig(hidden_size=16, vocab_size=512, num_blocks_per_group=1, image_size=8 * args.grid))
    transformer = DalleForImageGeneration(
        DalleConfig(
            text_vocab_size=len(tokenizer), image_vocab_size=512, max_text_length=16, image_grid_size=args.grid,
            hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
        )
    )  # fmt: skip
    DallePipeline(tokenizer=tokenizer, transformer=transformer, vae=vae).save_pretrained(path)


def load_variants(path: str, device: str) -> dict[str, DallePipeline]:
    variants = {
        "fp32": DallePipeline.from_pretrained(path),
        "bf16": DallePipeline.from_pretrained(path, dtype=torch.bfloat16),
        # bf16 for everything that is not a quantized Linear (embeddings, head, norms; activations and KV cache).
        "int8 weight-only": DallePipeline.from_pretrained(
            path, dtype=torch.bfloat16, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
        ),
    }
    return {name: pipe.to(device) for name, pipe in variants.items()}


@torch.no_grad()
def image_logits(pipe: DallePipeline, stream: torch.LongTensor) -> torch.Tensor:
    config = pipe.transformer.config
    logits = pipe.transformer(stream.to(pipe.transformer.device)).logits
    return logits[:, config.max_text_length - 1 :, config.text_vocab_size :].float().cpu()


def judge_accuracy(pipe: DallePipeline, captions: list[str]) -> float:
    """Share of captions whose best-of-4 image (seeded, so every variant gets the same random numbers) the shapes
    judge accepts."""
    correct = 0
    for index, caption in enumerate(captions):
        generators = [torch.Generator().manual_seed(1000 * index + i) for i in range(4)]
        image = pipe(caption, num_candidates=4, generator=generators).images[0]
        correct += judge_image(image, caption).correct
    return correct / len(captions)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model
        if path is None:
            path = str(Path(scratch) / "random_pipeline")
            save_random_pipeline(Path(path), args)
        variants = load_variants(path, args.device)
        fp32 = variants["fp32"]
        config = fp32.transformer.config
        torch.manual_seed(0)
        captions = ["a red circle above a blue square", "a green triangle"]
        text_ids = fp32.tokenizer.encode_captions(captions, max_length=config.max_text_length)
        codes = torch.randint(0, config.image_vocab_size, (len(captions), config.image_seq_length - 1))
        stream = fp32.transformer.prepare_input_ids(text_ids, codes)
        reference_logits = image_logits(fp32, stream)

        def sampler(pipe):
            def sample() -> int:
                generators = [torch.Generator().manual_seed(i) for i in range(args.num_candidates)]
                pipe(
                    captions[0],
                    num_candidates=args.num_candidates,
                    num_images_per_prompt=args.num_candidates,  # no CLIP: keep them all, nothing to rerank
                    generator=generators,
                    output_type="pt",
                )
                return args.num_candidates

            return sample

        samples = interleaved_timings(
            {name: sampler(pipe) for name, pipe in variants.items()},
            repeats=args.repeats,
            device=torch.device(args.device),
            measure_memory=True,
        )
        judged = None
        if args.model is not None:
            pool = all_captions()
            step = max(1, len(pool) // args.judge_captions)
            judged = pool[::step][: args.judge_captions]

        rows, results = [], {}
        for name, pipe in variants.items():
            timing = summarize(samples[name])
            error = (image_logits(pipe, stream) - reference_logits).abs().max().item()
            accuracy = judge_accuracy(pipe, judged) if judged else None
            results[name] = {
                "transformer_weight_bytes": parameter_bytes(pipe.transformer),
                "max_abs_logit_error": error,
                "relative_logit_error": error / reference_logits.abs().max().item(),
                "judge_accuracy": accuracy,
                **timing,
            }
            r = results[name]
            rows.append(
                [
                    name,
                    f"{r['transformer_weight_bytes'] / 2**20:.2f} MiB",
                    f"{r['transformer_weight_bytes'] / results['fp32']['transformer_weight_bytes']:.2f}x",
                    f"{r['peak_memory_mib']:.1f} MiB" if r["peak_memory_mib"] is not None else "n/a",
                    f"{r['items_per_cpu_s']:.2f}",
                    f"{results['fp32']['cpu_s'] / r['cpu_s']:.2f}x",
                    f"{r['relative_logit_error']:.2e}",
                    f"{100 * accuracy:.1f}%" if accuracy is not None else "pending (random weights)",
                ]
            )

    source = args.model or (
        f"random pipeline: hidden {args.hidden_size}, {args.num_layers} layers, {args.num_heads} heads, "
        f"{args.grid}x{args.grid} codes"
    )
    table = markdown_table(
        [
            "variant", "transformer weights", "vs fp32", "peak memory while sampling", "images / CPU s",
            "speed vs fp32 (CPU time)", "max logit error / max logit", "shapes judge accuracy",
        ],
        rows,
    )  # fmt: skip
    held_out = sum(map(is_held_out, judged)) if judged else 0
    notes = (
        f"Model: {source}. {args.num_candidates} candidates per call, {args.repeats} interleaved repeats, "
        f"{args.threads} torch thread(s), device {args.device}."
    )
    if judged:
        notes += f" Judge: best of 4 for {len(judged)} captions ({held_out} held out)."
    else:
        notes += " Accuracy is pending a trained model (run with --model DEMO_MODEL_DIR once the demo model ships)."
    markdown = f"# Quantized inference\n\n{notes}\n\n{table}\n"
    data = {"environment": environment(torch.device(args.device), args.threads), "model": source, "results": results}
    write_results(Path(args.output), markdown, data)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
