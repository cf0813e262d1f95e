#!/usr/bin/env python
"""Convert DALL·E Mega or Mini, as min-dalle ships them, into a DallePipeline-style hf_dalle folder: the transformer,
the caption tokenizer, the VQGAN and (with --clip_model) a CLIP reranker, with a model card.

    python scripts/convert_dalle_mega.py --min_dalle_dir pretrained --model_name mega --output_dir dalle-mega
    python scripts/convert_dalle_mega.py --from_hub --model_name mini --clip_model openai/clip-vit-base-patch32 \\
        --vqgan_flax_checkpoint vqgan_imagenet_f16_16384/flax_model.msgpack --output_dir dalle-mini

--min_dalle_dir is min-dalle's `models_root` (`MinDalle(models_root=...)`): `dalle_bart_mega/` (or
`dalle_bart_mini/`) with encoder.pt, decoder.pt, vocab.json, merges.txt, and `vqgan/detoker.pt`. --from_hub downloads
those files from the Hub repo kuprel/min-dalle instead. min-dalle's VQGAN file is its decoder alone: the converted
VQGAN decodes codes but cannot encode images (priming, fine-tuning) unless the whole VQGAN is given, as dalle-mini's
Flax checkpoint (--vqgan_flax_checkpoint) or a taming-transformers checkpoint + YAML (--vqgan_checkpoint,
--vqgan_config). Files are memory-mapped and written shard by shard (see `hf_dalle.convert_dalle_mega`).
"""

import argparse
from pathlib import Path

from huggingface_hub import ModelCardData

from hf_dalle.conversion.convert_dalle_mega import (
    DECODER_STARTS,
    MIN_DALLE_MODELS,
    convert_dalle_mega,
    dalle_mega_card_values,
    min_dalle_files,
)
from hf_dalle.hub_utils import command_for_card, write_card_and_push


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--min_dalle_dir", help="min-dalle's models_root folder.")
    source.add_argument("--from_hub", action="store_true", help="Download min-dalle's files (kuprel/min-dalle).")
    parser.add_argument("--model_name", choices=list(MIN_DALLE_MODELS), required=True, help="DALL·E Mega or Mini.")
    parser.add_argument(
        "--num_attention_heads", type=int, default=None, help="Attention heads (default: Mega 32, Mini 16)."
    )
    parser.add_argument("--vqgan_flax_checkpoint", help="dalle-mini's VQGAN (flax_model.msgpack): adds the encoder.")
    parser.add_argument("--vqgan_checkpoint", help="The same VQGAN as a taming-transformers checkpoint (last.ckpt).")
    parser.add_argument("--vqgan_config", help="taming's YAML config of --vqgan_checkpoint (model.yaml).")
    parser.add_argument("--clip_model", help="A CLIP folder or Hub id (e.g. openai/clip-vit-base-patch32): reranker.")
    parser.add_argument(
        "--decoder_start",
        choices=DECODER_STARTS,
        default="min-dalle",
        help="Start decoding from code 16383 as min-dalle does (its images), or from dalle-mini's start token 16384.",
    )
    parser.add_argument("--output_dir", required=True, help="Folder for the converted model (created if needed).")
    parser.add_argument(
        "--max_shard_size_mb", type=int, default=500, help="Largest safetensors shard, in MiB (bounds memory)."
    )
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the converted folder to the Hub.")
    parser.add_argument("--hub_model_id", default=None, help="Hub repo id; defaults to the name of --output_dir.")
    parser.add_argument("--hub_private", action="store_true", help="Create the Hub repo as private.")
    args = parser.parse_args(argv)
    if (args.vqgan_checkpoint is None) != (args.vqgan_config is None):
        parser.error("--vqgan_checkpoint and --vqgan_config go together.")
    return args


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    try:
        config = convert_dalle_mega(
            output_dir,
            model_name=args.model_name,
            min_dalle_dir=args.min_dalle_dir,
            from_hub=args.from_hub,
            num_attention_heads=args.num_attention_heads,
            vqgan_flax_checkpoint=args.vqgan_flax_checkpoint,
            vqgan_checkpoint=args.vqgan_checkpoint,
            vqgan_config=args.vqgan_config,
            clip_model=args.clip_model,
            decoder_start=args.decoder_start,
            max_shard_bytes=args.max_shard_size_mb << 20,
        )
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise SystemExit(f"error: {error}")
    display_name = MIN_DALLE_MODELS[args.model_name].display_name
    print(
        f"Converted {display_name} ({config.encoder_layers} + {config.decoder_layers} layers, width "
        f"{config.hidden_size}, {config.dtype}) written to {output_dir}"
    )
    vqgan_files = [path for path in (args.vqgan_flax_checkpoint, args.vqgan_checkpoint) if path is not None]
    sources = [*min_dalle_files(args.model_name, args.min_dalle_dir, args.from_hub).values(), *vqgan_files]
    write_card_and_push(
        output_dir,
        "dalle_mega",
        ModelCardData(license="apache-2.0", tags=["dall-e", "dalle-mini", "text-to-image"], language=["en"]),
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        hub_private=args.hub_private,
        commit_message=f"Add {display_name} converted with hf_dalle",
        **dalle_mega_card_values(
            config,
            args.model_name,
            vqgan_has_encoder=bool(vqgan_files),
            clip_model=args.clip_model,
            sources=sources,
            command=command_for_card("convert_dalle_mega.py", argv),
        ),
    )


if __name__ == "__main__":
    main()
