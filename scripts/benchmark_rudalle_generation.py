#!/usr/bin/env python
"""Image-code generation speed of a converted ruDALL-E (hf_dalle's cached sparse decoding with ruDALL-E's blocks)
against ruDALL-E's own cached loop and a transformers GPT-2 of the same shape, in one process. Run in the reference
venv (it holds ruDALL-E's code): results in benchmarks/rudalle_generation_cpu.{md,json}.

    .venv-ref/bin/python scripts/benchmark_rudalle_generation.py --num_layers 2 --grids 16 32 --batch_sizes 1 8

(`make benchmark` runs it so, the defaults.) Shapes: Malevich's width (2048), heads (16) and 128 text positions, cut
to `--num_layers` layers, random weights. A whole 32x32 generation by ruDALL-E's loop takes hours on a CPU (each step
re-embeds the stream, runs norms and dense masked attention over every position, and the head over every position and
the full vocabulary), so every model is timed on the same sampled steps: for each of `--positions` image positions
spread over the grid, the cache is filled up to that position (untimed) and one step is timed (`--repeats` times,
median of process CPU time, one torch thread; each position starts with another model); a generation's time is
estimated as the mean step time times the number of codes. A step is what each loop does per code, sampling included
(top-k 2048 then top-p 0.995, then a draw): ruDALL-E's `DalleModel` forward with its cache followed by
`generate_images`' filtering (transformers 4.10's `top_k_top_p_filtering`), our `forward` on a `DallePrefixCache`
followed by transformers' top-k/top-p warpers, GPT-2's `forward` on a `DynamicCache` followed by the same warpers; the
transformers models fill their cache as `generate` does (logits of the last position only), ruDALL-E's loop as it does
(logits of every position). Peak memory: the increase of the resident set while filling the cache to the last
position and taking one step.
"""

import argparse
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LogitsProcessorList,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests")]
from _benchmark_utils import (  # noqa: E402
    environment,
    interleaving_order,
    markdown_table,
    peak_memory_mib,
    write_results,
)
from rudalle_reference import build_rudalle_model, import_rudalle, top_k_top_p_filtering  # noqa: E402

from hf_dalle import DalleForImageGeneration  # noqa: E402
from hf_dalle.conversion.convert_rudalle import convert_rudalle  # noqa: E402
from hf_dalle.models.dalle import DallePrefixCache  # noqa: E402


TOP_K, TOP_P = 2048, 0.995
RUDALLE, OURS, GPT2 = "ruDALL-E: its cached loop", "ours: converted, DallePrefixCache", "GPT-2: DynamicCache"


def sample(logits: torch.Tensor, warpers: LogitsProcessorList | None, stream: torch.Tensor) -> torch.Tensor:
    scores = warpers(stream, logits) if warpers is not None else top_k_top_p_filtering(logits, TOP_K, TOP_P)
    return torch.multinomial(scores.softmax(-1), 1)


class RudalleSteps:
    """ruDALL-E's `generate_images` loop body: `dalle(out, mask, use_cache=True, cache=cache)`, filter, draw."""

    def __init__(self, model):
        self.model, self.vocab = model, model.vocab_size

    def prefill(self, stream: torch.Tensor):
        total = self.model.total_seq_length
        mask = torch.tril(torch.ones(stream.shape[0], 1, total, total))
        _, cache = self.model(stream, mask, use_cache=True, cache=None)
        return mask, cache

    def step(self, stream: torch.Tensor, state) -> torch.Tensor:
        mask, cache = state
        logits, cache = self.model(stream, mask, use_cache=True, cache=cache)
        return sample(logits[:, -1, self.vocab :], None, stream)


class HfSteps:
    """A transformers model's decode step (`forward` on a cache with the last token), warpers, draw."""

    def __init__(self, model, make_cache, image_offset: int):
        self.model, self.make_cache, self.offset = model, make_cache, image_offset
        self.warpers = LogitsProcessorList([TopKLogitsWarper(TOP_K), TopPLogitsWarper(TOP_P)])

    def prefill(self, stream: torch.Tensor):
        cache = self.make_cache()
        # As `generate` prefills: the logits of the last position only.
        self.model(stream, cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    def step(self, stream: torch.Tensor, cache) -> torch.Tensor:
        logits = self.model(stream[:, -1:], cache=cache, use_cache=True).logits[:, -1, self.offset :]
        return sample(logits.float(), self.warpers, stream)


def step_workload(steps, stream: torch.Tensor):
    """One step on `stream` after filling the cache with all of it but its last token (untimed, here): every
    cache grows in the step, so each timed step needs its own fill."""
    state = steps.prefill(stream[:, :-1])
    return lambda: steps.step(stream, state).numel()


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    results = {"config": vars(args), "environment": environment(torch.device("cpu"), args.threads), "runs": []}
    with pytest.MonkeyPatch.context() as monkeypatch:
        import_rudalle(monkeypatch)  # the stand-ins ruDALL-E's modules need (see tests/rudalle_reference.py)
        for grid in args.grids:
            reference = build_rudalle_model(
                "v3", num_layers=args.num_layers, hidden_size=2048, num_attention_heads=16, text_seq_length=128,
                image_tokens_per_dim=grid, caption_vocab_size=16384, image_vocab_size=8192,
            )  # fmt: skip
            folder = Path(args.work_dir) / f"grid{grid}"
            torch.save({k: v.half() for k, v in reference.state_dict().items()}, folder.with_suffix(".bin"))
            convert_rudalle(folder.with_suffix(".bin"), reference.model_params, folder)
            ours = DalleForImageGeneration.from_pretrained(folder / "transformer", dtype=torch.float32).eval()
            config = ours.config
            gpt2 = GPT2LMHeadModel(
                GPT2Config(n_embd=2048, n_layer=args.num_layers, n_head=16, n_positions=config.max_sequence_length,
                           vocab_size=config.vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None)
            ).eval()  # fmt: skip
            models = {
                RUDALLE: RudalleSteps(reference),
                OURS: HfSteps(ours, lambda: DallePrefixCache(config), config.text_vocab_size),
                GPT2: HfSteps(gpt2, DynamicCache, config.text_vocab_size),
            }
            num_codes = grid * grid
            # The step that draws code p + 1 feeds code p: positions 0 .. num_codes - 2.
            positions = [round(i * (num_codes - 2) / max(args.positions - 1, 1)) for i in range(args.positions)]
            for batch_size in args.batch_sizes:
                generator = torch.Generator().manual_seed(0)
                text = torch.randint(4, 16384, (batch_size, 128), generator=generator)
                codes = torch.randint(0, 8192, (batch_size, num_codes), generator=generator)
                step_seconds = {name: [] for name in models}
                with torch.no_grad():
                    # Interleaved: each position starts with another model (_benchmark_utils.interleaving_order).
                    orders = interleaving_order(list(models), len(positions))
                    for position, order in zip(positions, orders):
                        for name in order:
                            steps = models[name]
                            # ruDALL-E's ids hold raw codes after the caption; the stream layout offsets them.
                            offset = 0 if name == RUDALLE else config.text_vocab_size
                            stream = torch.cat([text, codes[:, : position + 1] + offset], dim=1)
                            times = []
                            for _ in range(args.repeats):
                                workload = step_workload(steps, stream)
                                start = time.process_time()
                                workload()
                                times.append(time.process_time() - start)
                            step_seconds[name].append(sorted(times)[len(times) // 2])
                    memory = {}
                    for name, steps in models.items():
                        offset = 0 if name == RUDALLE else config.text_vocab_size
                        stream = torch.cat([text, codes[:, : num_codes - 1] + offset], dim=1)  # the last step
                        fill_and_step = lambda: step_workload(steps, stream)()  # noqa: E731
                        memory[name] = peak_memory_mib(fill_and_step, torch.device("cpu"))
                estimate = {name: num_codes * sum(s) / len(s) for name, s in step_seconds.items()}
                results["runs"].append(
                    {
                        "grid": grid,
                        "batch_size": batch_size,
                        "positions": positions,
                        "step_seconds": step_seconds,
                        "estimated_generation_seconds": estimate,
                        "codes_per_second": {name: batch_size * num_codes / t for name, t in estimate.items()},
                        "peak_memory_mib": memory,
                        "speedup_vs_rudalle": estimate[RUDALLE] / estimate[OURS],
                        "speedup_vs_gpt2": estimate[GPT2] / estimate[OURS],
                    }
                )
                print(results["runs"][-1], flush=True)
    return results


def markdown(results: dict) -> str:
    args = results["config"]
    rows = []
    for r in results["runs"]:
        for name in (OURS, RUDALLE, GPT2):
            rows.append(
                [f"{r['grid']}x{r['grid']}", r["batch_size"], name, f"{r['codes_per_second'][name]:.1f}",
                 f"{r['estimated_generation_seconds'][name]:.1f} s", f"{r['peak_memory_mib'][name]:.0f} MiB",
                 f"{r['speedup_vs_rudalle']:.1f}x / {r['speedup_vs_gpt2']:.2f}x" if name == OURS else ""]
            )  # fmt: skip
    table = markdown_table(
        ["grid", "batch", "model", "codes / s", "est. generation", "peak memory", "ours vs ruDALL-E / GPT-2"], rows
    )

    def met(condition: bool) -> str:
        return "met" if condition else "NOT met"

    goals = [
        f"- {r['grid']}x{r['grid']}: {r['speedup_vs_rudalle']:.1f}x ruDALL-E (>= 10x: "
        f"{met(r['speedup_vs_rudalle'] >= 10)}), {r['speedup_vs_gpt2']:.2f}x GPT-2 (>= 1.2x: "
        f"{met(r['speedup_vs_gpt2'] >= 1.2)}), less peak memory than both: "
        f"{met(r['peak_memory_mib'][OURS] < min(r['peak_memory_mib'][RUDALLE], r['peak_memory_mib'][GPT2]))}"
        for r in results["runs"]
        if r["batch_size"] == 8
    ]
    return (
        f"# Generation speed of a converted ruDALL-E (CPU, {args['threads']} thread, {args['num_layers']} layers, "
        f"width 2048, 16 heads, 128 text positions)\n\nEach model's time per code is the median CPU time of one "
        f"sampling step at {args['positions']} positions spread over the grid, times the number of codes (see the "
        f"script's docstring); random weights.\n\n{table}\n\nThe goals of issue 26 at batch 8:\n\n"
        + "\n".join(goals)
        + "\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--grids", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--positions", type=int, default=3, help="Image positions whose step is timed.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed steps per position (median).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work_dir", default="/tmp/rudalle-generation-benchmark")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "rudalle_generation_cpu"))
    args = parser.parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    results = run(args)
    write_results(Path(args.output), markdown(results), results)
    print(markdown(results))


if __name__ == "__main__":
    main()
