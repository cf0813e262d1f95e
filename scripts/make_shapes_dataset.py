#!/usr/bin/env python
"""Draw a shapes-world dataset (the demo model's data) and save it with `datasets.Dataset.save_to_disk`.

    python scripts/make_shapes_dataset.py --num_samples 100000 --split train --output_dir runs/demo/data

The rows are samples 0 .. N-1 of the stream `(--seed, --split)` of `hf_dalle.data.make_shapes_dataset`: columns
`image` (a PNG-encoded `datasets.Image`) and `caption`. The `train` split never holds a held-out caption (see
`hf_dalle.data.shapes`). The training scripts read the folder with `--dataset_name OUTPUT_DIR`. The folder is written
under a temporary name and renamed when complete.
"""

import argparse
import os
from pathlib import Path

from hf_dalle.data import SPLITS, make_shapes_dataset
from hf_dalle.io_utils import replace_folder_atomically


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_samples", type=int, required=True, help="Number of image-caption pairs.")
    parser.add_argument("--split", default="train", choices=SPLITS, help="Captions to draw (default: train).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the stream (default: 0).")
    parser.add_argument("--image_size", type=int, default=64, help="Side of the images in pixels (default: 64).")
    parser.add_argument(
        "--one_object_fraction", type=float, default=0.25, help="Share of one-object captions (default: 0.25)."
    )
    parser.add_argument("--output_dir", required=True, help="Folder to write (must not exist yet).")
    args = parser.parse_args(argv)
    if os.path.exists(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} already exists; pick a new folder.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dataset = make_shapes_dataset(args.num_samples, args.seed, args.split, args.image_size, args.one_object_fraction)
    output_dir = Path(args.output_dir)
    replace_folder_atomically(output_dir, lambda folder: dataset.save_to_disk(str(folder)))
    print(f"Wrote {len(dataset)} {args.split!r} pairs of {args.image_size}x{args.image_size} to {output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
