#!/usr/bin/env python
"""Pre-tokenize image-caption pairs for the DALL-E transformer (or a converted DALL·E Mini / Mega): images -> image
codes (of the dVAE or a VQGAN), captions -> token ids, once.

    python scripts/pretokenize.py --train_data_dir my_images --pretrained_model_name_or_path src/hf_dalle/demo_model \\
        --output_dir my_images_tokens

A batched `datasets` map; the result has the columns `text_input_ids` (`max_text_length` ids, pad-filled, as the
transformer reads them), `image_codes` (the argmax codes in raster order) and `caption`, and is written with
`save_to_disk` (default) or as parquet shards (`--output_format parquet`), into a temporary folder renamed when
complete. Streaming datasets (`--streaming`) are encoded as they are read. `scripts/train_dalle.py
--pretokenized_dataset OUTPUT_DIR` trains on it; `hf_dalle_pretokenized.json` beside the data records the tokenizer
and image tokenizer used.
"""

import argparse
import json
import logging
import os
from pathlib import Path

import datasets
import torch
from transformers import AutoTokenizer

from hf_dalle import DalleTokenizer, DalleVAE, DalleVQGAN
from hf_dalle.io_utils import replace_folder_atomically
from hf_dalle.tokenization_dalle_bart import DalleBartTokenizer
from hf_dalle.training import (
    add_data_arguments,
    image_to_tensor,
    load_component,
    load_image_caption_dataset,
    load_image_tokenizer,
)
from hf_dalle.training.data import PRETOKENIZED_INFO_FILE


logger = logging.getLogger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser, resolution=None)
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Images are resized and centre-cropped to this side (default: the image tokenizer's image_size).",
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="A pipeline folder or Hub id whose vae/ and tokenizer/ to use (e.g. hf_dalle.DEMO_MODEL_DIR).",
    )
    parser.add_argument(
        "--vae_model_name_or_path",
        default=None,
        help="The image tokenizer, a DalleVAE or DalleVQGAN (overrides the pipeline's).",
    )
    parser.add_argument(
        "--tokenizer_name_or_path", default=None, help="The DalleTokenizer (overrides the pipeline's)."
    )
    parser.add_argument(
        "--max_text_length",
        type=int,
        default=None,
        help="Caption positions (default: the tokenizer's model_max_length).",
    )
    parser.add_argument("--output_dir", required=True, help="Folder for the pre-tokenized data (must not exist yet).")
    parser.add_argument(
        "--output_format", default="arrow", choices=["arrow", "parquet"], help="save_to_disk or parquet shards."
    )
    parser.add_argument("--rows_per_shard", type=int, default=100_000, help="Rows per output shard.")
    parser.add_argument("--batch_size", type=int, default=64, help="Images encoded per dVAE forward pass.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Device of the dVAE.")
    args = parser.parse_args(argv)
    if args.vae_model_name_or_path is None and args.pretrained_model_name_or_path is None:
        raise ValueError(
            "Name the image tokenizer: --vae_model_name_or_path or a pipeline with --pretrained_model_name_or_path."
        )
    if args.tokenizer_name_or_path is None and args.pretrained_model_name_or_path is None:
        raise ValueError(
            "Name the tokenizer: --tokenizer_name_or_path or a pipeline with --pretrained_model_name_or_path."
        )
    if os.path.exists(args.output_dir):
        raise ValueError(f"--output_dir {args.output_dir!r} already exists; pick a new folder.")
    return args


class Pretokenizer:
    """The batched map function: `{"image": [...], "caption": [...]}` -> `text_input_ids`, `image_codes`, `caption`."""

    def __init__(
        self,
        vae: DalleVAE | DalleVQGAN,
        tokenizer: DalleTokenizer | DalleBartTokenizer,
        resolution: int,
        max_text_length: int,
        device: str,
    ):
        self.vae, self.tokenizer, self.resolution = vae, tokenizer, resolution
        self.max_text_length, self.device = max_text_length, device

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        pixels = torch.stack([image_to_tensor(image, self.resolution) for image in batch["image"]]).to(self.device)
        codes = self.vae.encode(pixels).indices.flatten(1)
        # As the pipeline encodes prompts: the tokenizer's special tokens (a converted ruDALL-E's BOS and EOS) too.
        text = self.tokenizer.encode_captions(batch["caption"], max_length=self.max_text_length).numpy()
        return {"text_input_ids": text, "image_codes": codes.cpu().numpy(), "caption": batch["caption"]}


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    vae_source = args.vae_model_name_or_path or args.pretrained_model_name_or_path
    tokenizer_source = args.tokenizer_name_or_path or args.pretrained_model_name_or_path
    vae = load_image_tokenizer(vae_source).to(args.device).eval()
    tokenizer = load_component(AutoTokenizer, tokenizer_source, "tokenizer")
    resolution = args.resolution or vae.config.image_size
    if resolution % vae.config.downsample_factor:
        raise ValueError(f"--resolution must be a multiple of {vae.config.downsample_factor}, got {resolution}.")
    max_text_length = args.max_text_length or tokenizer.model_max_length
    grid = resolution // vae.config.downsample_factor

    dataset = load_image_caption_dataset(args)
    code_dtype = "int16" if vae.config.vocab_size <= 2**15 else "int32"
    features = datasets.Features(
        {
            "text_input_ids": datasets.Sequence(datasets.Value("int32"), length=max_text_length),
            "image_codes": datasets.Sequence(datasets.Value(code_dtype), length=grid * grid),
            "caption": datasets.Value("string"),
        }
    )
    encode = Pretokenizer(vae, tokenizer, resolution, max_text_length, args.device)
    encoded = dataset.map(
        encode, batched=True, batch_size=args.batch_size, remove_columns=["image"], features=features
    )
    if isinstance(encoded, datasets.IterableDataset):
        # Streamed rows are encoded as they are read and written to Arrow files on the way (no full copy in memory).
        encoded = datasets.Dataset.from_generator(lambda: iter(encoded), features=features)

    output_dir = Path(args.output_dir)
    num_shards = max(1, -(-len(encoded) // args.rows_per_shard))
    info = {
        "num_rows": len(encoded),
        "vae": vae_source,
        "tokenizer": tokenizer_source,
        "resolution": resolution,
        "image_grid_size": grid,
        "image_vocab_size": vae.config.vocab_size,
        "max_text_length": max_text_length,
        "text_vocab_size": len(tokenizer),
        "text_pad_token_id": tokenizer.pad_token_id,
    }

    def write(folder: Path) -> None:
        if args.output_format == "arrow":
            encoded.save_to_disk(str(folder / "data"), num_shards=num_shards)
        else:
            (folder / "data").mkdir()
            for index in range(num_shards):
                shard = encoded.shard(num_shards, index, contiguous=True)
                shard.to_parquet(str(folder / "data" / f"train-{index:05d}-of-{num_shards:05d}.parquet"))
        (folder / PRETOKENIZED_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    replace_folder_atomically(output_dir, write)
    logger.info(
        "Pre-tokenized %d pairs (%dx%d codes, %d caption positions) into %s",
        len(encoded),
        grid,
        grid,
        max_text_length,
        output_dir,
    )
    return output_dir


if __name__ == "__main__":
    main()
