#!/usr/bin/env python
"""Convert a released ruDALL-E model (Malevich, Malevich v2, Emojich, Surrealist XL, Kandinsky) into an hf_dalle
folder: the transformer, and the caption tokenizer, Sber VQGAN and ruCLIP reranker if given, as `DallePipeline`
subfolders (a complete pipeline with a tokenizer and a VQGAN), with a model card.

    python scripts/convert_rudalle.py --checkpoint pytorch_model_v3.bin --model_name Malevich --tokenizer bpe.model \\
        --vqgan_checkpoint vqgan.gumbelf8-sber.model.ckpt --vqgan_config vqgan.gumbelf8-sber.config.yml \\
        [--ruclip_dir ruclip-vit-base-patch32-384] --output_dir rudalle-malevich
    python scripts/convert_rudalle.py --from_hub --model_name Kandinsky \\
        --vqgan_config vqgan.gumbelf8-sber.config.yml [--dwt] --output_dir rudalle-kandinsky

The VQGAN's YAML config ships inside the `rudalle` package (`rudalle/vae/vqgan.gumbelf8-sber.config.yml`), not on
the Hub: `--from_hub` downloads the VQGAN checkpoint (with `--dwt`, its wavelet variant) when `--vqgan_config` is given.

`--rudalle_config` takes a JSON file of ruDALL-E's own `model_params` (`num_layers`, `hidden_size`, ...,
`"hf_version": "v3"` or `"v2"`) in place of `--model_name` (with `--from_hub`, the tokenizer and VQGAN still come from
the Hub). Checkpoints are memory-mapped and written shard by shard (see `hf_dalle.conversion.convert_rudalle`), so
converting Kandinsky (23 GB) needs little more memory than one shard.
"""

import argparse
import json
from pathlib import Path

from huggingface_hub import ModelCardData, hf_hub_download

from hf_dalle.conversion.convert_rudalle import (
    RUDALLE_MODELS,
    RUDALLE_TOKENIZER_FILENAME,
    RUDALLE_TOP_K,
    RUDALLE_TOP_P,
    RUDALLE_UTILS_REPO,
    RUDALLE_VQGAN_FILENAMES,
    convert_rudalle,
    rudalle_model_params,
)
from hf_dalle.hub_utils import command_for_card, write_card_and_push


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model_name", choices=list(RUDALLE_MODELS), help="A released ruDALL-E model.")
    which.add_argument("--rudalle_config", help="JSON file of ruDALL-E `model_params` plus `hf_version`.")
    parser.add_argument("--checkpoint", help="ruDALL-E's pytorch_model*.bin (a state dict of its DalleModel).")
    parser.add_argument("--tokenizer", help="ruDALL-E's YouTokenToMe bpe.model (the caption tokenizer).")
    parser.add_argument("--vqgan_checkpoint", help="ruDALL-E's Sber VQGAN checkpoint (vqgan.gumbelf8-sber*.ckpt).")
    parser.add_argument("--vqgan_config", help="taming's YAML config of the VQGAN (vqgan.gumbelf8-sber.config.yml).")
    parser.add_argument(
        "--dwt", action="store_true", help="With --from_hub: the wavelet VQGAN (512x512 images from a 32x32 grid)."
    )
    parser.add_argument("--ruclip_dir", help="A ruCLIP folder (config.json, pytorch_model.bin, bpe.model): reranker.")
    parser.add_argument(
        "--from_hub",
        action="store_true",
        help="Download from the Hub (ruDALL-E's repo ids) what is not given: --model_name's checkpoint (without "
        "--checkpoint), ruDALL-E's bpe.model (without --tokenizer) and, with --vqgan_config, its VQGAN (without "
        "--vqgan_checkpoint).",
    )
    parser.add_argument("--output_dir", required=True, help="Folder for the converted model (created if needed).")
    parser.add_argument(
        "--max_shard_size_mb", type=int, default=500, help="Largest safetensors shard, in MiB (bounds memory)."
    )
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the converted folder to the Hub.")
    parser.add_argument("--hub_model_id", default=None, help="Hub repo id; defaults to the name of --output_dir.")
    parser.add_argument("--hub_private", action="store_true", help="Create the Hub repo as private.")
    args = parser.parse_args(argv)
    if args.checkpoint is None and not (args.from_hub and args.model_name):
        parser.error("Give --checkpoint, or --from_hub with --model_name (the released model whose file to download).")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        rudalle_config = json.loads(Path(args.rudalle_config).read_text()) if args.rudalle_config else None
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: cannot read --rudalle_config {args.rudalle_config}: {error}")
    checkpoint, tokenizer, vqgan_checkpoint = args.checkpoint, args.tokenizer, args.vqgan_checkpoint
    if args.from_hub:
        if checkpoint is None:
            release = RUDALLE_MODELS[args.model_name]
            checkpoint = hf_hub_download(release.repo_id, release.filename)
        tokenizer = tokenizer or hf_hub_download(RUDALLE_UTILS_REPO, RUDALLE_TOKENIZER_FILENAME)
        if args.vqgan_config and not vqgan_checkpoint:
            vqgan_checkpoint = hf_hub_download(RUDALLE_UTILS_REPO, RUDALLE_VQGAN_FILENAMES[args.dwt])
    try:
        model_params = rudalle_model_params(args.model_name, rudalle_config)
        config = convert_rudalle(
            checkpoint,
            model_params,
            args.output_dir,
            tokenizer=tokenizer,
            vqgan_checkpoint=vqgan_checkpoint,
            vqgan_config=args.vqgan_config,
            ruclip_dir=args.ruclip_dir,
            max_shard_bytes=args.max_shard_size_mb << 20,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}")

    output_dir = Path(args.output_dir)
    print(
        f"Converted ruDALL-E transformer ({config.num_hidden_layers} layers, hidden {config.hidden_size}) "
        f"{'+ tokenizer ' if tokenizer else ''}{'+ VQGAN ' if vqgan_checkpoint else ''}"
        f"{'+ ruCLIP ' if args.ruclip_dir else ''}written to {output_dir}"
    )
    write_card_and_push(
        output_dir,
        "rudalle",
        ModelCardData(tags=["dall-e", "rudalle", "text-to-image", "russian"], language=["ru"]),
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        hub_private=args.hub_private,
        commit_message="Add ruDALL-E converted with hf_dalle",
        model_name=f"ruDALL-E {args.model_name or 'model'} (hf_dalle)",
        rudalle_name=args.model_name or "model",
        hf_version=model_params.get("hf_version", "v3"),
        config=config,
        dtype=str(config.dtype).removeprefix("torch."),
        has_tokenizer=tokenizer is not None,
        has_vqgan=vqgan_checkpoint is not None,
        has_ruclip=args.ruclip_dir is not None,
        top_k=RUDALLE_TOP_K,
        top_p=RUDALLE_TOP_P,
        command=command_for_card("convert_rudalle.py", argv),
    )


if __name__ == "__main__":
    main()
