#!/usr/bin/env python
"""Teach a shapes-world pipeline a word it has never seen with a LoRA adapter, and check with the pixel judge that it
learned it without forgetting the rest.

The concept: a new color word, `crimson`, meaning red. The demo model's tokenizer splits the unknown word into
byte-level pieces it never saw in a caption, so the base model draws some arbitrary color for it. The script draws
`--num-images` training-split pictures with red objects, captioned with `crimson` instead of `red`, plus a
`--replay-fraction` of ordinary training pictures (so the rest is not forgotten), pre-tokenizes them with the
pipeline's own dVAE and tokenizer, trains an adapter with `train_dalle.py --lora_rank`, and judges
best-of-`--num-candidates` images for `crimson` captions (judged as their `red` originals) and for ordinary training
captions, before and after loading the adapter:

    python scripts/lora_demo.py                                  # the bundled demo model, output in runs/lora-demo
    python scripts/lora_demo.py --model PIPELINE_DIR_OR_HUB_ID --max-train-steps 600

Results: `OUTPUT_DIR/lora_demo.md` and `.json`; the adapter: `OUTPUT_DIR/adapter`.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from datasets import concatenate_datasets

from hf_dalle import DEMO_MODEL_DIR, DallePipeline
from hf_dalle.data import make_shapes_dataset, split_captions
from hf_dalle.training.validation import shapes_judge_accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_utils import write_atomic  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
NEW_WORD, MEANING = "crimson", "red"
MEANING_WORD = re.compile(rf"\b{MEANING}\b")


def with_new_word(caption: str) -> str:
    return MEANING_WORD.sub(NEW_WORD, caption)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL_DIR, help="Shapes-world pipeline (default: the demo model).")
    parser.add_argument("--output-dir", default="runs/lora-demo")
    parser.add_argument("--num-images", type=int, default=300, help="Pictures captioned with the new word.")
    parser.add_argument("--replay-fraction", type=float, default=1.0, help="Ordinary pictures added, per new one.")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--max-train-steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="train_dalle.py's.")
    parser.add_argument("--eval-captions", type=int, default=24, help="Captions judged per group.")
    parser.add_argument("--num-candidates", type=int, default=4, help="Candidates per caption (CLIP picks one).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.replay_fraction < 0:
        raise ValueError("--num-images must be positive and --replay-fraction at least 0.")
    return args


def run_script(name: str, arguments: list[str]) -> None:
    subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *arguments], check=True)


def evenly_spaced(captions: list[str], count: int) -> list[str]:
    return captions[:: max(1, len(captions) // count)][:count]


def judge(pipe: DallePipeline, captions: list[str], num_candidates: int, seed: int) -> float:
    """Best-of-`num_candidates` accuracy for `captions`, each judged as what it means (`crimson` read as `red`)."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(captions) * num_candidates)]
    images = pipe(captions, num_candidates=num_candidates, generator=generators).images
    return shapes_judge_accuracy(images, [caption.replace(NEW_WORD, MEANING) for caption in captions])


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    pipe = DallePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.image_size

    # Red pictures of the training split (about a quarter of them hold a red object), captioned with the new word.
    drawings = make_shapes_dataset(8 * args.num_images, seed=args.seed, image_size=size)
    red = drawings.filter(lambda caption: MEANING_WORD.search(caption) is not None, input_columns="caption")
    if len(red) < args.num_images:
        raise ValueError(f"Only {len(red)} of {len(drawings)} drawings hold a {MEANING} object; lower --num-images.")
    data = red.select(range(args.num_images)).map(lambda row: {"caption": with_new_word(row["caption"])})
    num_replay = round(args.num_images * args.replay_fraction)
    if num_replay:
        replay = make_shapes_dataset(num_replay, seed=args.seed + 1, image_size=size)
        data = concatenate_datasets([data, replay])
    data.shuffle(seed=args.seed).save_to_disk(str(output_dir / "data"))
    run_script(
        "pretokenize",
        ["--dataset_name", str(output_dir / "data"), "--resolution", str(size), "--pretrained_model_name_or_path",
         args.model, "--output_dir", str(output_dir / "tokens")],
    )  # fmt: skip
    run_script(
        "train_dalle",
        ["--pretrained_model_name_or_path", args.model, "--pretokenized_dataset", str(output_dir / "tokens"),
         "--lora_rank", str(args.lora_rank), "--learning_rate", str(args.learning_rate), "--max_train_steps",
         str(args.max_train_steps), "--train_batch_size", str(args.train_batch_size), "--use_ema",
         "--mixed_precision", args.mixed_precision,
         "--seed", str(args.seed), "--output_dir", str(output_dir / "adapter")],
    )  # fmt: skip

    red_captions = [c for c in split_captions("train") if MEANING_WORD.search(c)]
    groups = {
        f"new word ({NEW_WORD} = {MEANING})": [
            with_new_word(c) for c in evenly_spaced(red_captions, args.eval_captions)
        ],
        "training captions": evenly_spaced(split_captions("train"), args.eval_captions),
    }
    results = {}
    for group, captions in groups.items():
        before = judge(pipe, captions, args.num_candidates, args.seed)
        pipe.load_lora_weights(output_dir / "adapter")
        after = judge(pipe, captions, args.num_candidates, args.seed)
        pipe.unload_lora_weights()
        results[group] = {"captions": len(captions), "accuracy_before": before, "accuracy_after": after}

    rows = [
        f"| {group} | {r['captions']} | {100 * r['accuracy_before']:.1f}% | {100 * r['accuracy_after']:.1f}% |"
        for group, r in results.items()
    ]
    markdown = "\n".join(
        [
            f"# LoRA demo: {args.model}",
            "",
            f"Rank {args.lora_rank}, {args.max_train_steps} steps of {args.train_batch_size}, {args.num_images} "
            f"pictures captioned with '{NEW_WORD}' + {num_replay} replayed; best of {args.num_candidates} per "
            "caption, judged by the pixel judge.",
            "",
            "| captions | n | judge accuracy, base | with the adapter |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    write_atomic(output_dir / "lora_demo.md", markdown + "\n")
    write_atomic(output_dir / "lora_demo.json", json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
