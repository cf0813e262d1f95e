"""Image-caption data for the training scripts: loading (a `datasets` dataset or an imagefolder, optionally
streamed), image preprocessing, and data loaders."""

import argparse
import json
import logging
import os

import datasets
import numpy as np
import torch
from PIL import Image

from ..image_utils import to_rgb


logger = logging.getLogger(__name__)


def is_saved_dataset(path: str) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))


def load_image_caption_dataset(args: argparse.Namespace) -> datasets.Dataset | datasets.IterableDataset:
    """
    The training split named by the data flags (`add_data_arguments`), with its image and caption columns renamed
    to `image` and `caption` and nothing else kept. `--dataset_name` may be a Hub id, a local folder that
    `load_dataset` reads or a `save_to_disk` folder; `--train_data_dir` is an imagefolder with `metadata.jsonl`.
    """
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError(
            "No training data: pass --dataset_name (a datasets dataset) or --train_data_dir (an imagefolder)."
        )
    if args.dataset_name is not None and is_saved_dataset(args.dataset_name):
        dataset = datasets.load_from_disk(args.dataset_name)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = _pick_split(dataset, args.dataset_split)
        if args.streaming:
            dataset = dataset.to_iterable_dataset()
    elif args.dataset_name is not None:
        dataset = datasets.load_dataset(
            args.dataset_name, args.dataset_config_name, split=args.dataset_split, streaming=args.streaming
        )
    else:
        if not os.path.isdir(args.train_data_dir):
            raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a folder.")
        dataset = datasets.load_dataset(
            "imagefolder", data_dir=args.train_data_dir, split=args.dataset_split, streaming=args.streaming
        )
    columns = list(dataset.features) if dataset.features is not None else dataset.column_names
    for flag, column in (("--image_column", args.image_column), ("--caption_column", args.caption_column)):
        if column not in columns:
            raise ValueError(
                f"The dataset has no column {column!r} ({flag}); its columns are {columns}."
                + (
                    " An imagefolder takes its captions from the fields of metadata.jsonl."
                    if args.train_data_dir
                    else ""
                )
            )
    dataset = dataset.select_columns([args.image_column, args.caption_column])
    renames = {old: new for old, new in ((args.image_column, "image"), (args.caption_column, "caption")) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if args.max_train_samples is not None:
        dataset = dataset.take(args.max_train_samples)
    metadata = os.path.join(args.train_data_dir, "metadata.jsonl") if args.train_data_dir else None
    return check_rows(dataset, getattr(args, "bad_images", "check"), args.caption_column, metadata)


BAD_IMAGE_CHOICES = ("check", "skip")


def _decode_row(index: int, row: dict, image_feature, caption_column: str, metadata: str | None):
    """The decoded image of a row whose image `datasets` has not decoded yet, or a message saying why it does not
    decode. A row without a caption string raises: the data is malformed, not one file."""
    image = row["image"]
    source = image.get("path") if isinstance(image, dict) else None
    where = f"Row {index}" + (f" ({source})" if source else "")
    if not isinstance(row["caption"], str):
        raise ValueError(
            f"{where} has no caption: its {caption_column!r} is {row['caption']!r}, a string is expected"
            + (f" (a {caption_column!r} field on every line of {metadata})." if metadata else ".")
        )
    try:
        decoded = image_feature.decode_example(image)
        decoded.load()
        return decoded
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # what PIL raises on bad files
        return f"{where}: the image does not decode ({type(error).__name__}: {error})"


def check_rows(
    dataset: datasets.Dataset | datasets.IterableDataset,
    bad_images: str = "check",
    caption_column: str = "caption",
    metadata: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Check every row's caption and image before a long run depends on them (`--bad_images`). A row without a caption
    string is an error naming the row and file. An image that does not decode (a truncated or corrupt file) is, with
    `"check"`, an error listing the bad rows, raised before training (for a streamed dataset, when the row is reached);
    with `"skip"`, the row is left out and named in a warning. Map-style datasets are checked up front: one decoding
    pass over the images. Streamed rows are decoded here, so their `features` are no longer known.
    """
    if bad_images not in BAD_IMAGE_CHOICES:
        raise ValueError(f"--bad_images must be one of {BAD_IMAGE_CHOICES}, got {bad_images!r}.")
    image_feature = (dataset.features or {}).get("image")
    if not isinstance(image_feature, datasets.Image):  # not decoded by datasets: left to the collator
        return dataset
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    if isinstance(dataset, datasets.IterableDataset):

        def decode(row: dict, index: int) -> dict:
            image = _decode_row(index, row, image_feature, caption_column, metadata)
            if isinstance(image, str):
                if bad_images == "check":
                    raise ValueError(f"{image}. Pass --bad_images skip to train without such rows.")
                logger.warning("Skipping %s.", image)
                image = None
            return {"image": image}

        return raw.map(decode, with_indices=True).filter(lambda row: row["image"] is not None)
    problems = {}
    for index, row in enumerate(raw):
        image = _decode_row(index, row, image_feature, caption_column, metadata)
        if isinstance(image, str):
            problems[index] = image
    if problems and bad_images == "check":
        listed = "; ".join(list(problems.values())[:10]) + ("; ..." if len(problems) > 10 else "")
        raise ValueError(
            f"{len(problems)} of {len(dataset)} images do not decode: {listed}. Fix or remove them, or pass "
            "--bad_images skip to train without them."
        )
    for problem in problems.values():
        logger.warning("Skipping %s.", problem)
    if problems:
        logger.warning("Skipped %d of %d rows whose image does not decode.", len(problems), len(dataset))
        dataset = dataset.select([index for index in range(len(dataset)) if index not in problems])
    return dataset


PRETOKENIZED_COLUMNS = ("text_input_ids", "image_codes")
# Written by scripts/pretokenize.py next to the data: the tokenizer and dVAE that made it, and the stream sizes.
PRETOKENIZED_INFO_FILE = "hf_dalle_pretokenized.json"


def load_pretokenized_dataset(
    path: str, split: str = "train", streaming: bool = False, max_samples: int | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Data made by `scripts/pretokenize.py`: a `save_to_disk` folder, a folder of parquet shards or a Hub dataset with
    the columns `text_input_ids` (`max_text_length` caption ids, pad-filled) and `image_codes` (the dVAE's codes in
    raster order), formatted as torch tensors.
    """
    saved = next((p for p in (path, os.path.join(path, "data")) if is_saved_dataset(p)), None)
    if saved is not None:
        dataset = datasets.load_from_disk(saved)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = _pick_split(dataset, split)
        if streaming:
            dataset = dataset.to_iterable_dataset()
    else:
        dataset = datasets.load_dataset(path, split=split, streaming=streaming)
    columns = list(dataset.features) if dataset.features is not None else dataset.column_names
    missing = [column for column in PRETOKENIZED_COLUMNS if column not in columns]
    if missing:
        raise ValueError(
            f"{path!r} is not pre-tokenized data: it lacks the columns {missing} (it has {columns}); make it with "
            "scripts/pretokenize.py."
        )
    dataset = dataset.select_columns(list(PRETOKENIZED_COLUMNS))
    if max_samples is not None:
        dataset = dataset.take(max_samples)
    return dataset.with_format("torch")


def read_pretokenized_info(path: str) -> dict:
    """The `hf_dalle_pretokenized.json` of a local pre-tokenized folder (tokenizer, dVAE, sizes), or `{}`."""
    info = os.path.join(path, PRETOKENIZED_INFO_FILE)
    if not os.path.isfile(info):
        return {}
    with open(info, encoding="utf-8") as file:
        return json.load(file)


def _pick_split(dataset: datasets.DatasetDict, split: str) -> datasets.Dataset:
    if split not in dataset:
        raise ValueError(
            f"The dataset has no split {split!r}; it has {list(dataset)} (pick one with --dataset_split)."
        )
    return dataset[split]


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """An RGB float tensor `[3, resolution, resolution]` in [0, 1]: the shorter side resized to `resolution`
    (bicubic), then a centre crop. No flips: captions talk about left and right. 16-bit and float images are scaled
    from their mode's range (`to_rgb`)."""
    image = to_rgb(image)
    width, height = image.size
    scale = resolution / min(width, height)
    if (width, height) != (resolution, resolution):
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


class ImageCaptionCollator:
    """Collate `{"image": PIL, "caption": str}` rows into `pixel_values` `[B, 3, R, R]` in [0, 1] and `captions`
    (a picklable class, so data-loader workers can run it)."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def __call__(self, rows: list[dict]) -> dict:
        return {
            "pixel_values": torch.stack([image_to_tensor(row["image"], self.resolution) for row in rows]),
            "captions": [row["caption"] for row in rows],
        }


def check_batch_size(dataset, train_batch_size: int, num_processes: int = 1) -> None:
    """Refuse a batch larger than the training data before any model is built: incomplete batches are dropped, so
    every process needs `train_batch_size` examples. A streaming dataset has no length: the loop says so at its first
    epoch instead."""
    if isinstance(dataset, datasets.IterableDataset):
        return
    needed = train_batch_size * num_processes
    if len(dataset) < needed:
        processes = f" x {num_processes} processes" if num_processes > 1 else ""
        raise ValueError(
            f"--train_batch_size {train_batch_size}{processes} needs at least {needed} training examples, but the "
            f"data has {len(dataset)}: lower --train_batch_size (or add data)."
        )


def make_dataloader(
    dataset: datasets.Dataset | datasets.IterableDataset,
    batch_size: int,
    collate_fn=None,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """A `DataLoader` for `Accelerator.prepare`. A map-style dataset is shuffled by the sampler, whose order Accelerate
    derives from the loader's seeded generator and the epoch; a streaming dataset through its shuffle buffer, reseeded
    every epoch (`set_epoch`). Incomplete last batches are dropped."""
    if isinstance(dataset, datasets.IterableDataset):
        if shuffle:
            dataset = dataset.shuffle(seed=seed, buffer_size=1000)
        shuffle = False
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


__all__ = [
    "BAD_IMAGE_CHOICES",
    "check_batch_size",
    "PRETOKENIZED_COLUMNS",
    "PRETOKENIZED_INFO_FILE",
    "ImageCaptionCollator",
    "check_rows",
    "image_to_tensor",
    "is_saved_dataset",
    "load_image_caption_dataset",
    "load_pretokenized_dataset",
    "make_dataloader",
    "read_pretokenized_info",
]
