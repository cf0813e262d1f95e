#!/usr/bin/env python
"""Teach a shapes-world pipeline a word it has never seen with a LoRA adapter, and check with the pixel judge that it
learned it without forgetting the rest.

The concept: a new color word (`--new-word`, default `leaf`) meaning a palette color (`--meaning`, default `green`).
The demo model's tokenizer splits the unknown word into byte-level pieces it never saw in a caption, so the base
model draws some arbitrary color for it. The script draws `--num-images` training-split pictures with objects of that
color, captioned with the new word instead, plus a `--replay-fraction` of ordinary training pictures (so the rest is
not forgotten), pre-tokenizes them with the pipeline's own dVAE and tokenizer, trains an adapter with
`train_dalle.py --lora_rank`, and judges best-of-`--num-candidates` images for new-word captions (judged as their
originals) and for ordinary training captions, before and after loading the adapter.

The new word must leave every caption within the model's text length (12 tokens for the demo model): a word split
into many pieces (`crimson` is 7 for the demo tokenizer) would cut the second object off two-object captions, in
training and at generation. The script refuses such a word.

    python scripts/lora_demo.py                                  # the bundled demo model, output in runs/lora-demo
    python scripts/lora_demo.py --new-word tan --meaning yellow --max-train-steps 600 --output-dir runs/lora-tan

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
from hf_dalle.data import COLORS, SHAPES, make_shapes_dataset, split_captions
from hf_dalle.io_utils import write_file_atomically
from hf_dalle.training.validation import shapes_judge_accuracy


SCRIPTS = Path(__file__).resolve().parent


def word_pattern(word: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(word)}\b")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL_DIR, help="Shapes-world pipeline (default: the demo model).")
    parser.add_argument("--output-dir", default="runs/lora-demo")
    parser.add_argument("--new-word", default="leaf", help="The word to teach (default: leaf).")
    parser.add_argument(
        "--meaning", default="green", choices=COLORS, help="The palette color it means (default: green)."
    )
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
    if not re.fullmatch(r"[a-z]+", args.new_word) or args.new_word in COLORS + SHAPES:
        raise ValueError(
            f"--new-word must be one new lowercase word, not a color or shape of the grammar; got {args.new_word!r}."
        )
    return args


def check_captions_fit(pipe: DallePipeline, captions: list[str], new_word: str) -> None:
    """Refuse a new word that makes captions longer than the model reads (they would be silently cut)."""
    max_length = pipe.transformer.config.max_text_length
    length, longest = max((len(pipe.tokenizer.tokenize(caption)), caption) for caption in captions)
    if length > max_length:
        pieces = pipe.tokenizer.tokenize(f" {new_word}")
        raise ValueError(
            f"With {new_word!r} (split into {len(pieces)} tokens: {pieces}) the caption {longest!r} is {length} "
            f"tokens, more than the model's {max_length}; choose a word the tokenizer splits into fewer pieces."
        )


def run_script(name: str, arguments: list[str]) -> None:
    subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *arguments], check=True)


def evenly_spaced(captions: list[str], count: int) -> list[str]:
    return captions[:: max(1, len(captions) // count)][:count]


def judge(pipe: DallePipeline, captions: list[str], meanings: list[str], num_candidates: int, seed: int) -> float:
    """Best-of-`num_candidates` accuracy for `captions`, each judged as what it means (`meanings`)."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(captions) * num_candidates)]
    images = pipe(captions, num_candidates=num_candidates, generator=generators).images
    return shapes_judge_accuracy(images, meanings)


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    pipe = DallePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.image_size

    meaning = word_pattern(args.meaning)

    def with_new_word(caption: str) -> str:
        return meaning.sub(args.new_word, caption)

    colored_captions = [c for c in split_captions("train") if meaning.search(c)]
    check_captions_fit(pipe, [with_new_word(c) for c in colored_captions], args.new_word)

    # Training-split pictures with an object of that color (about a quarter hold one), captioned with the new word.
    drawings = make_shapes_dataset(8 * args.num_images, seed=args.seed, image_size=size)
    colored = drawings.filter(lambda caption: meaning.search(caption) is not None, input_columns="caption")
    if len(colored) < args.num_images:
        raise ValueError(
            f"Only {len(colored)} of {len(drawings)} drawings hold a {args.meaning} object; lower --num-images."
        )
    data = colored.select(range(args.num_images)).map(lambda row: {"caption": with_new_word(row["caption"])})
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

    new_word_originals = evenly_spaced(colored_captions, args.eval_captions)
    training_captions = evenly_spaced(split_captions("train"), args.eval_captions)
    groups = {  # captions -> what the judge checks
        f"new word ({args.new_word} = {args.meaning})": (
            [with_new_word(c) for c in new_word_originals],
            new_word_originals,
        ),
        "training captions": (training_captions, training_captions),
    }
    results = {}
    for group, (captions, meanings) in groups.items():
        before = judge(pipe, captions, meanings, args.num_candidates, args.seed)
        pipe.load_lora_weights(output_dir / "adapter")
        after = judge(pipe, captions, meanings, args.num_candidates, args.seed)
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
            f"pictures captioned with '{args.new_word}' + {num_replay} replayed; best of {args.num_candidates} per "
            "caption, judged by the pixel judge.",
            "",
            "| captions | n | judge accuracy, base | with the adapter |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    data = json.dumps({"args": vars(args), "results": results}, indent=2) + "\n"
    write_file_atomically(output_dir / "lora_demo.md", lambda path: path.write_text(markdown + "\n"))
    write_file_atomically(output_dir / "lora_demo.json", lambda path: path.write_text(data))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
