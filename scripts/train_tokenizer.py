#!/usr/bin/env python
"""Train the DALL-E caption tokenizer (lowercased byte-level BPE) from a text file or a `datasets` column.

    python scripts/train_tokenizer.py --text_file captions.txt --output_dir dalle-tokenizer
    python scripts/train_tokenizer.py --dataset_name my_images --caption_column caption --output_dir dalle-tokenizer

`--text_file` holds one caption per line. `--dataset_name` is a Hub dataset id, a local dataset folder that
`datasets.load_dataset` reads (e.g. an imagefolder with `metadata.jsonl`), or a folder written by `save_to_disk`.
"""

import argparse
import os
from pathlib import Path

import datasets

from hf_dalle import DalleTokenizer
from hf_dalle.io_utils import write_folder_atomically


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text_file", help="A UTF-8 text file with one caption per line.")
    source.add_argument("--dataset_name", help="A Hub dataset id or a local dataset folder.")
    parser.add_argument("--dataset_config_name", default=None, help="Configuration of the dataset, if it has several.")
    parser.add_argument("--split", default="train", help="Split of the dataset to read (default: train).")
    parser.add_argument("--caption_column", default="caption", help="Column holding the captions (default: caption).")
    parser.add_argument("--output_dir", required=True, help="Folder for the tokenizer files (created if needed).")
    parser.add_argument("--vocab_size", type=int, default=16384, help="Size of the BPE vocabulary (paper: 16384).")
    parser.add_argument("--max_text_length", type=int, default=256, help="Tokens per caption (paper: 256).")
    parser.add_argument("--min_frequency", type=int, default=2, help="Minimum count of a pair to be merged.")
    return parser.parse_args(argv)


def load_captions(args) -> list[str] | datasets.Dataset:
    if args.text_file is not None:
        if not os.path.isfile(args.text_file):
            raise SystemExit(f"error: --text_file {args.text_file!r} is not a file.")
        with open(args.text_file, encoding="utf-8") as file:
            return [line.rstrip("\n") for line in file if line.strip()]
    if os.path.isfile(os.path.join(args.dataset_name, "dataset_info.json")) or os.path.isfile(
        os.path.join(args.dataset_name, "state.json")
    ):
        dataset = datasets.load_from_disk(args.dataset_name)
    else:
        dataset = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    if isinstance(dataset, datasets.DatasetDict):
        if args.split not in dataset:
            raise SystemExit(f"error: the dataset has no split {args.split!r}; it has {list(dataset)}.")
        dataset = dataset[args.split]
    if args.caption_column not in dataset.column_names:
        raise SystemExit(
            f"error: the dataset has no column {args.caption_column!r}; it has {dataset.column_names} "
            "(pick one with --caption_column)."
        )
    return dataset.select_columns([args.caption_column])


def caption_batches(captions, column: str, batch_size: int = 1000):
    """Captions in batches, for `train_from_iterator` (a dataset is read without loading its other columns)."""
    if isinstance(captions, list):
        for start in range(0, len(captions), batch_size):
            yield captions[start : start + batch_size]
    else:
        for batch in captions.iter(batch_size=batch_size):
            yield batch[column]


def main(argv=None):
    args = parse_args(argv)
    captions = load_captions(args)
    if len(captions) == 0:
        raise SystemExit("error: no captions to train on.")
    try:
        tokenizer = DalleTokenizer.train_from_texts(
            caption_batches(captions, args.caption_column),
            vocab_size=args.vocab_size,
            max_text_length=args.max_text_length,
            min_frequency=args.min_frequency,
            show_progress=True,  # the tokenizers trainer's own bars: counting pairs, computing merges
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}")

    output_dir = Path(args.output_dir)
    write_folder_atomically(output_dir, tokenizer.save_pretrained)  # an interrupted run leaves no half-written file
    print(
        f"Trained a BPE tokenizer of {len(tokenizer)} tokens (max_text_length {args.max_text_length}) on "
        f"{len(captions)} captions; written to {output_dir}. "
        f"Use DalleConfig(text_vocab_size={len(tokenizer)}) or larger."
    )
    return tokenizer


if __name__ == "__main__":
    main()
