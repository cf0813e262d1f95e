#!/usr/bin/env python
"""Install a trained shapes-world pipeline as the package's demo model (`hf_dalle.DEMO_MODEL_DIR`), with its card.

    python scripts/package_demo_model.py --run_dir runs/demo --output_dir src/hf_dalle/demo_model

Reads the run folder of `scripts/train_demo.sh`: `pipeline/` (saved again, so only what `DallePipeline` loads is
kept: safetensors weights, configs, tokenizer and processor files; not the `non_ema` variant, checkpoints or logs),
`eval/` and `vae_eval/` (`scripts/evaluate_shapes.py`) and `stage_seconds.tsv`. Writes the pipeline (its
`default_guidance_scale` set to the evaluation's guidance scale), `samples.png`,
`evaluation.md` / `.json` and a model card rendered from `model_cards/demo_model.md`, under a temporary name next to
`--output_dir`, which then replaces it. Refuses a result larger than `--max_megabytes`.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from huggingface_hub import ModelCardData

from hf_dalle import DallePipeline
from hf_dalle.data import HELD_OUT_ARRANGEMENTS, HELD_OUT_COMBINATIONS, HELD_OUT_PAIRINGS, all_captions
from hf_dalle.hub_utils import render_model_card, write_model_card
from hf_dalle.io_utils import replace_folder_atomically


sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_shapes import markdown_table  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True, help="The run folder of scripts/train_demo.sh.")
    parser.add_argument("--output_dir", required=True, help="Where the demo model goes (replaced).")
    parser.add_argument("--max_megabytes", type=float, default=60.0, help="Size limit of the result (default: 60).")
    return parser.parse_args(argv)


def folder_megabytes(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def describe_objects(objects) -> str:
    return ", ".join(f"{color} {shape}" for color, shape in objects)


def caption_words() -> list[str]:
    """Every word of the shapes world's captions, in their order of first appearance."""
    return list(dict.fromkeys(word for caption in all_captions() for word in caption.split()))


def card_values(run_dir: Path, pipe: DallePipeline, evaluation: dict) -> dict:
    vae_evaluation = json.loads((run_dir / "vae_eval" / "evaluation.json").read_text())
    stage_lines = (run_dir / "stage_seconds.tsv").read_text().splitlines()
    stage_seconds = {name: int(seconds) for name, seconds in (line.split("\t") for line in stage_lines)}
    paragraphs = (run_dir / "eval" / "evaluation.md").read_text().strip().split("\n\n")
    setup, samples_note = paragraphs[1], paragraphs[-1]
    grid = pipe.transformer.config.image_grid_size
    parts = [
        ("transformer", f"`DalleForImageGeneration`, {pipe.transformer.config.num_hidden_layers} layers x "
         f"{pipe.transformer.config.hidden_size}, EMA weights", pipe.transformer),
        ("vae", f"`DalleVAE`, {pipe.vae.config.vocab_size} codes, {pipe.image_size}x{pipe.image_size} pixels -> "
         f"{grid}x{grid} codes", pipe.vae),
        ("clip_model", "transformers `CLIPModel` (+ `clip_processor/`), the reranker", pipe.clip_model),
    ]  # fmt: skip
    return {
        # Wall time: the CLIP stages run beside stages 4-6, and "waiting for CLIP" counts what they took beyond them.
        "train_minutes": round(
            sum(seconds for name, seconds in stage_seconds.items() if not name.startswith("CLIP")) / 60
        ),
        "image_size": pipe.image_size,
        "words": ", ".join(f'"{word}"' for word in caption_words()),
        "held_out_pairings": describe_objects(HELD_OUT_PAIRINGS),
        "held_out_combinations": "; ".join(f"{describe_objects(pair)}" for pair in HELD_OUT_COMBINATIONS),
        "held_out_arrangements": "; ".join(
            f"a {a[0]} {a[1]} {relation} a {b[0]} {b[1]}" for a, relation, b in HELD_OUT_ARRANGEMENTS
        ),
        "evaluation_setup": setup,
        "evaluation_table": markdown_table(evaluation["results"]),
        "samples_note": samples_note,
        "vae_table": markdown_table(vae_evaluation["results"]),
        "parts": [
            {"folder": folder, "what": what, "parameters": sum(p.numel() for p in model.parameters())}
            for folder, what, model in parts
        ],
        "stage_seconds": stage_seconds,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    run_dir, output_dir = Path(args.run_dir), Path(args.output_dir)
    pipe = DallePipeline.from_pretrained(run_dir / "pipeline")
    evaluation = json.loads((run_dir / "eval" / "evaluation.json").read_text())
    # Calls that name no guidance scale get the one the evaluation used.
    pipe.register_to_config(default_guidance_scale=float(evaluation["args"]["guidance_scale"]))
    values = card_values(run_dir, pipe, evaluation)

    def write(folder: Path) -> None:
        pipe.save_pretrained(folder)
        for name in ("samples.png", "evaluation.md", "evaluation.json"):
            shutil.copyfile(run_dir / "eval" / name, folder / name)
        card = render_model_card(
            "demo_model",
            ModelCardData(license="mit", tags=["dall-e", "hf_dalle", "text-to-image", "shapes"]),
            **values,
        )
        write_model_card(card, folder)
        size = folder_megabytes(folder)
        if size > args.max_megabytes:
            raise SystemExit(
                f"The demo model would take {size:.1f} MB, more than --max_megabytes {args.max_megabytes}."
            )

    replace_folder_atomically(output_dir, write)
    print(f"Installed the demo model in {output_dir} ({folder_megabytes(output_dir):.1f} MB).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
