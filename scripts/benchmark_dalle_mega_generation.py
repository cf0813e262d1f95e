#!/usr/bin/env python
"""Image-code generation speed of DALL·E Mega at its width: hf_dalle's `DalleBartForImageGeneration.generate` against
min-dalle 0.4.11's own decoding loop and a stock transformers BART of the same shape, in one process. Run in the
reference venv (it holds min-dalle): results in benchmarks/dalle_mega_generation_cpu.{md,json}.

    .venv-ref/bin/python scripts/benchmark_dalle_mega_generation.py --num_layers 2 --images_per_prompt 1 8

(`make benchmark` runs it so, the defaults.) Shapes: Mega's width 2048, 32 heads, GLU width 4096, 64 text positions,
its text and image tables (50272 and 16416 rows), 256 codes, cut to `--num_layers` encoder and decoder layers; random
weights, float32, one torch thread. Every workload generates `--num_codes` codes for one prompt, with
`--images_per_prompt` images and min-dalle's defaults (top-k 256, super-conditioning 16), from its encoder pass to its
last code:

- min-dalle: `MinDalle.generate_raw_image_stream`'s loop (tests/min_dalle_reference.py), `decoder.sample_tokens` per
  code (it projects the 64 caption states into keys and values again in every layer at every step);
- ours: `generate(input_ids, do_sample=True, top_k=256, guidance_scale=16, num_return_sequences=k)`, with the same
  weights (min-dalle's modules, converted);
- BART: transformers' `BartForConditionalGeneration.generate` on the same number of decoder rows (2k: transformers has
  no batched guidance for BART, so it samples the guided batch's rows as plain sequences, `num_return_sequences=2k`,
  the caption encoded once), d_model 2048, 32 heads, its head over 16416 codes, FFN width 6144 (the weights of the
  GLU's three 2048 x 4096 matrices in BART's two), biases.

Times are medians of interleaved repeats of process CPU time (one thread: the work itself, whatever the other jobs on a
shared machine do); peak memory is the largest increase of the resident set during a run (the models are loaded
before), so it is the memory a generation needs besides the weights.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests")]
from _benchmark_utils import environment, interleaved_timings, markdown_table, summarize, write_results  # noqa: E402
from min_dalle_reference import min_dalle_generate_codes, min_dalle_models  # noqa: E402

from hf_dalle import DalleBartConfig, DalleBartForImageGeneration  # noqa: E402


TOP_K, GUIDANCE = 256, 16.0
MIN_DALLE, OURS, BART = "min-dalle: its decoding loop", "ours: generate", "BART: generate"


def build_models(num_layers: int, hidden_size: int, heads: int, glu: int, seed: int = 0):
    """min-dalle's encoder and decoder (random weights), our model holding the same weights, and a BART."""
    models = min_dalle_models()
    torch.manual_seed(seed)
    sizes = {"layer_count": num_layers, "embed_count": hidden_size, "attention_head_count": heads}
    encoder = models.DalleBartEncoder(
        text_vocab_count=50272, text_token_count=64, glu_embed_count=glu, device="cpu", **sizes
    ).eval()
    decoder = models.DalleBartDecoder(image_vocab_count=16415, glu_embed_count=glu, device="cpu", **sizes).eval()
    config = DalleBartConfig(
        hidden_size=hidden_size,
        encoder_layers=num_layers,
        decoder_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=glu,
        decoder_start_token_id=2**14 - 1,
    )
    ours = DalleBartForImageGeneration(config).eval()
    state_dict = {f"model.encoder.{k}": v for k, v in encoder.state_dict().items()}
    state_dict.update({f"model.decoder.{k}": v for k, v in decoder.state_dict().items() if k != "lm_head.weight"})
    state_dict["lm_head.weight"] = decoder.state_dict()["lm_head.weight"]
    ours.load_state_dict(state_dict)
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=16416,
            d_model=hidden_size,
            encoder_layers=num_layers,
            decoder_layers=num_layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=glu * 3 // 2,
            decoder_ffn_dim=glu * 3 // 2,
            max_position_embeddings=256,
            forced_eos_token_id=None,
        )
    ).eval()
    return encoder, decoder, ours, bart


@torch.no_grad()  # not torch.set_grad_enabled(False): the tests run main() in their process
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_layers", type=int, default=2, help="Encoder and decoder layers (Mega: 24).")
    parser.add_argument("--hidden_size", type=int, default=2048)
    parser.add_argument("--num_attention_heads", type=int, default=32)
    parser.add_argument("--intermediate_size", type=int, default=4096, help="GLU width.")
    parser.add_argument("--images_per_prompt", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num_codes", type=int, default=256, help="Codes per image (256: the whole image).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/dalle_mega_generation_cpu", help="Results stem (.md, .json).")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    encoder, decoder, ours, bart = build_models(
        args.num_layers, args.hidden_size, args.num_attention_heads, args.intermediate_size
    )
    caption = torch.ones(1, 64, dtype=torch.long)
    caption[0, :12] = torch.tensor([0, 102, 2116, 1451, 14, 1326, 101, 10, 3, 12, 5, 2])
    text_tokens = torch.cat([ours.unconditional_input_ids(1), caption])  # min-dalle's rows: [unconditional, caption]
    rows = []
    results = {"environment": environment(torch.device("cpu"), 1), "args": vars(args), "runs": []}
    for images in args.images_per_prompt:

        def run_min_dalle(images=images) -> int:
            codes = min_dalle_generate_codes(
                encoder, decoder, text_tokens, images, TOP_K, GUIDANCE, num_codes=args.num_codes
            )
            return codes.shape[0]

        def run_ours(images=images) -> int:
            sequences = ours.generate(
                caption,
                do_sample=True,
                top_k=TOP_K,
                guidance_scale=GUIDANCE,
                num_return_sequences=images,
                max_new_tokens=args.num_codes,
            )
            return sequences.shape[0]

        def run_bart(images=images) -> int:
            sequences = bart.generate(
                caption,
                num_return_sequences=2 * images,
                do_sample=True,
                top_k=TOP_K,
                min_new_tokens=args.num_codes,
                max_new_tokens=args.num_codes,
                decoder_start_token_id=2,
            )
            return sequences.shape[0] // 2

        samples = interleaved_timings(
            {MIN_DALLE: run_min_dalle, OURS: run_ours, BART: run_bart},
            args.repeats,
            warmup=0,
            measure_memory=True,
        )
        summary = {name: summarize(s) for name, s in samples.items()}
        for name, entry in summary.items():
            entry["images_per_prompt"] = images
            entry["workload"] = name
            results["runs"].append(entry)
        for name in (MIN_DALLE, OURS, BART):
            entry = summary[name]
            rows.append(
                [
                    images,
                    name,
                    f"{entry['cpu_s']:.2f} s",
                    f"{entry['items_per_cpu_s'] * 60:.2f}",
                    f"{summary[MIN_DALLE]['cpu_s'] / entry['cpu_s']:.2f}x",
                    f"{summary[BART]['cpu_s'] / entry['cpu_s']:.2f}x",
                    f"{entry['peak_memory_mib']:.0f} MiB",
                ]
            )
    table = markdown_table(
        [
            "images / prompt",
            "workload",
            f"{args.num_codes} codes (CPU time)",
            "images / min",
            "speed vs min-dalle",
            "speed vs BART",
            "peak memory (above weights)",
        ],
        rows,
    )
    env = results["environment"]
    markdown = (
        f"# DALL·E Mega generation on a CPU: hf_dalle vs min-dalle 0.4.11 vs transformers BART\n\n"
        f"Mega's width ({args.hidden_size}, {args.num_attention_heads} heads, GLU {args.intermediate_size}), "
        f"{args.num_layers} + {args.num_layers} layers, random weights, float32, 1 thread, top-k {TOP_K}, guidance "
        f"{GUIDANCE:g}; medians of {args.repeats} interleaved repeats, {env.get('cpu', '')}, torch {env['torch']}, "
        f"{env['date_utc']} UTC. See `scripts/benchmark_dalle_mega_generation.py` for what each workload does.\n\n"
        f"{table}\n"
    )
    write_results(Path(args.output), markdown, results)
    print(markdown)


if __name__ == "__main__":
    main()
