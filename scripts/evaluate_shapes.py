#!/usr/bin/env python
"""Judge what a shapes-world model draws, from the pixels alone: accuracy on seen and held-out captions.

    python scripts/evaluate_shapes.py --model src/hf_dalle/demo_model --output_dir runs/demo/eval
    python scripts/evaluate_shapes.py --vae runs/demo/vae --output_dir runs/demo/vae_eval     # the dVAE gate

A pipeline (`--model`): for every caption of a group, `--num_candidates` candidates (candidate `i` seeded `--seed + i`)
are sampled, decoded, scored by the pipeline's CLIP and judged by `hf_dalle.data.judge_image` (nearest palette
colour per pixel, connected objects, bounding-box fill ratio for the shape, centroids for the relation), which never
sees the model's scores or codes. Reported per group:

- `N=1`: the share of correct candidates, the accuracy of a single sample;
- `best of N` for each N of `--best_of`: the accuracy of the CLIP-best of N candidates, estimated from all
  `--num_candidates` (`best_of_k_accuracy`: every N-subset weighted alike), N = `--num_candidates` being the
  pipeline's own reranked output;
- `any of N`: the share of captions where at least one of N candidates is correct, what a perfect reranker gets.

Groups: seen captions (one object; two objects), held-out captions (one object: the held-out pairings; two objects:
all held-out kinds together, then each kind). Results go to OUTPUT_DIR/evaluation.md and .json, and the best images
of a few captions to OUTPUT_DIR/samples.png.

A dVAE (`--vae`): fresh drawings of each split are encoded, decoded from their argmax codes and judged against their
captions. Since the transformer only ever picks codes, this bounds what any pipeline with this dVAE can draw.
"""

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image
from tqdm.auto import tqdm

from hf_dalle import DallePipeline, DalleVAE
from hf_dalle.data import (
    any_of_k_accuracy,
    best_of_k_accuracy,
    caption_split,
    generate_sample,
    judge_image,
    split_captions,
)
from hf_dalle.io_utils import write_file_atomically


HELD_OUT_KINDS = ("held_out_pairing", "held_out_combination", "held_out_arrangement")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="A shapes-world DallePipeline (folder or Hub id).")
    source.add_argument(
        "--vae", help="A DalleVAE (folder or Hub id, or a pipeline's vae/ folder): judge its argmax reconstructions."
    )
    parser.add_argument("--output_dir", required=True, help="Where evaluation.md, evaluation.json and samples.png go.")
    parser.add_argument("--num_candidates", type=int, default=64, help="Candidates sampled per caption (default: 64).")
    parser.add_argument(
        "--best_of", type=int, nargs="+", default=[16, 64], help="Reranking sizes N to report (default: 16 64)."
    )
    parser.add_argument(
        "--captions_per_group",
        type=int,
        default=64,
        help="Two-object captions judged per group, drawn at random (seeded) from the split (default: 64; the "
        "one-object groups are judged whole).",
    )
    parser.add_argument("--top_k", type=int, default=None, help="Top-k sampling (default: the full distribution).")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (default: 1).")
    parser.add_argument(
        "--guidance_scale", type=float, default=1.0, help="Classifier-free guidance (default: 1, off)."
    )
    parser.add_argument(
        "--candidate_batch_size", type=int, default=64, help="Candidates sampled together (default: 64)."
    )
    parser.add_argument(
        "--num_images", type=int, default=400, help="With --vae: drawings judged per split (default: 400)."
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the caption choice and of the candidates (default: 0)."
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Device (default: cuda if available)."
    )
    args = parser.parse_args(argv)
    if args.num_candidates < 1 or any(not 1 <= n <= args.num_candidates for n in args.best_of):
        parser.error(
            f"--best_of sizes must be between 1 and --num_candidates ({args.num_candidates}), got {args.best_of}."
        )
    if args.captions_per_group < 1 or args.num_images < 1:
        parser.error("--captions_per_group and --num_images must be positive.")
    return args


def caption_groups(captions_per_group: int, seed: int) -> dict[str, list[str]]:
    """The captions to judge, by group (see the module doc); two-object groups are a seeded random sample."""
    rng = random.Random(seed)

    def sample(captions: list[str]) -> list[str]:
        return sorted(rng.sample(captions, min(captions_per_group, len(captions))))

    held_out_two = sample(split_captions("held_out", num_objects=2))
    groups = {
        "seen, one object": split_captions("train", num_objects=1),
        "seen, two objects": sample(split_captions("train", num_objects=2)),
        "held-out pairing, one object": split_captions("held_out_pairing", num_objects=1),
        "held-out, two objects": held_out_two,
    }
    for kind in HELD_OUT_KINDS:
        of_kind = [c for c in held_out_two if caption_split(c) == kind]
        if of_kind:  # a small sample may hold none of a rare kind
            groups[f"  of which {kind.removeprefix('held_out_')}"] = of_kind
    return groups


def evaluate_pipeline(args) -> tuple[dict, list[Image.Image], list[str]]:
    pipe = DallePipeline.from_pretrained(args.model).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    groups = caption_groups(args.captions_per_group, args.seed)
    unique = sorted({caption for captions in groups.values() for caption in captions})
    n = args.num_candidates
    verdicts, samples = {}, {}  # caption -> judge verdicts of its candidates, best-scored first; its best 4 images
    prompts_per_call = max(1, args.candidate_batch_size // n)
    for start in tqdm(range(0, len(unique), prompts_per_call), desc="captions", unit_scale=prompts_per_call):
        prompts = unique[start : start + prompts_per_call]
        generators = [torch.Generator().manual_seed(args.seed + i) for _ in prompts for i in range(n)]
        output = pipe(
            prompts,
            num_candidates=n,
            num_images_per_prompt=n,
            top_k=args.top_k,
            temperature=args.temperature,
            guidance_scale=args.guidance_scale,
            generator=generators,
            candidate_batch_size=args.candidate_batch_size,
            output_type="pil",
        )
        for p, prompt in enumerate(prompts):
            images = output.images[p * n : (p + 1) * n]
            verdicts[prompt] = [judge_image(image, prompt).correct for image in images]
            samples[prompt] = images[:4]

    results = {}
    for group, captions in groups.items():
        row = {"captions": len(captions), "N=1": float(np.mean([np.mean(verdicts[c]) for c in captions]))}
        for k in args.best_of:
            row[f"best of {k}"] = float(np.mean([best_of_k_accuracy(verdicts[c], k) for c in captions]))
        k_any = min(args.best_of)
        row[f"any of {k_any}"] = float(np.mean([any_of_k_accuracy(sum(verdicts[c]), n, k_any) for c in captions]))
        results[group] = row

    shown = (
        groups["seen, two objects"][:3] + groups["held-out, two objects"][:3] + ["a red square", "a green triangle"]
    )
    grid_images = [image for caption in shown for image in samples[caption]]
    return results, grid_images, shown


def evaluate_vae(args) -> tuple[dict, list[Image.Image], list[str]]:
    source = args.vae
    if os.path.isfile(os.path.join(source, "model_index.json")):
        source = os.path.join(source, "vae")
    vae = DalleVAE.from_pretrained(source).to(args.device).eval()
    size = vae.config.image_size
    results, grid_images, shown = {}, [], []
    for split in ("train", *HELD_OUT_KINDS):
        drawings = [generate_sample(i, args.seed + 1, split, size) for i in range(args.num_images)]
        judged = []
        for start in range(0, len(drawings), 64):
            batch = drawings[start : start + 64]
            pixels = torch.from_numpy(np.stack([np.asarray(image) for image, _ in batch])).permute(0, 3, 1, 2)
            with torch.no_grad():
                reconstructions = vae.decode(vae.encode(pixels.float().div(255).to(args.device)).indices).sample
            arrays = (reconstructions.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            judged += [judge_image(array, caption) for array, (_, caption) in zip(arrays, batch)]
            if start == 0:
                grid_images += [image for image, _ in batch[:4]] + [Image.fromarray(a) for a in arrays[:4]]
                shown += [caption for _, caption in batch[:4]]
        results[split.replace("_", "-")] = {
            "images": len(judged),
            "correct": float(np.mean([v.correct for v in judged])),
            "colors": float(np.mean([v.colors_correct for v in judged])),
            "shapes": float(np.mean([v.shapes_correct for v in judged])),
            "relation": mean_or_none([v.relation_correct for v in judged if v.relation_correct is not None]),
        }
    return results, grid_images, shown


def mean_or_none(values: list) -> float | None:
    """The mean, or None when there is nothing to average (a split drawn with one object only has no relations)."""
    return float(np.mean(values)) if values else None


def markdown_table(results: dict) -> str:
    columns = list(next(iter(results.values())))
    lines = ["| group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for group, row in results.items():
        cells = [str(v) if isinstance(v, int) else "n/a" if v is None else f"{100 * v:.1f}%" for v in row.values()]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model:
        results, grid_images, shown = evaluate_pipeline(args)
        title = f"Shapes-world evaluation of {args.model}"
        setup = (
            f"{args.num_candidates} candidates per caption (seeds {args.seed}..{args.seed + args.num_candidates - 1}), "
            f"top_k={args.top_k}, temperature={args.temperature}, guidance_scale={args.guidance_scale}; CLIP reranking; "
            "verdicts of the pixel judge (colors, shapes and relation all right)."
        )
        grid = make_image_grid(grid_images, rows=len(shown), cols=len(grid_images) // len(shown))
    else:
        results, grid_images, shown = evaluate_vae(args)
        title = f"dVAE argmax reconstructions of {args.vae}"
        setup = f"{args.num_images} fresh drawings per split (seed {args.seed + 1}), judged after encode -> argmax -> decode."
        grid = make_image_grid(grid_images, rows=len(grid_images) // 8, cols=8)
    table = markdown_table(results)
    samples_note = (
        "Rows of samples.png (best-scored first): " + "; ".join(shown)
        if args.model
        else ("samples.png: per split, 4 drawings then their reconstructions.")
    )
    markdown = f"# {title}\n\n{setup}\n\n{table}\n\n{samples_note}\n"
    output_dir = Path(args.output_dir)
    write_file_atomically(output_dir / "evaluation.md", lambda p: p.write_text(markdown, encoding="utf-8"))
    payload = {"args": vars(args), "results": results, "samples": shown}
    write_file_atomically(output_dir / "evaluation.json", lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))
    write_file_atomically(output_dir / "samples.png", lambda p: grid.save(p, format="PNG"))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
