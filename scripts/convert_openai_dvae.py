#!/usr/bin/env python
"""Convert OpenAI's released dVAE (`encoder.pkl`, `decoder.pkl`) into a `DalleVAE` folder: safetensors weights,
config.json and a model card, optionally pushed to the Hugging Face Hub.

    python scripts/convert_openai_dvae.py --encoder encoder.pkl --decoder decoder.pkl --output_dir dalle-vae-openai

The pickles are read without running code from them and without the `dall_e` package (see
`hf_dalle.conversion.convert_openai_dvae`).
"""

import argparse
import os
from pathlib import Path

import torch
from huggingface_hub import ModelCardData

from hf_dalle import __version__, convert_openai_dvae
from hf_dalle.hub_utils import command_for_card, sha256_of, write_card_and_push
from hf_dalle.io_utils import write_folder_atomically


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="OpenAI's encoder.pkl (or a state dict of a dall_e Encoder).")
    parser.add_argument("--decoder", required=True, help="OpenAI's decoder.pkl (or a state dict of a dall_e Decoder).")
    parser.add_argument("--output_dir", required=True, help="Folder for the converted model (created if needed).")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the converted model to the Hub.")
    parser.add_argument("--hub_model_id", default=None, help="Hub repo id; defaults to the name of --output_dir.")
    parser.add_argument("--hub_private", action="store_true", help="Create the Hub repo as private.")
    parser.add_argument(
        "--license", default="mit", help="License of the weights for the model card (OpenAI's DALL-E repo: MIT)."
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        vae = convert_openai_dvae(args.encoder, args.decoder)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}")

    output_dir = Path(args.output_dir)
    write_folder_atomically(output_dir, vae.save_pretrained)
    print(
        f"Converted dVAE ({vae.config.vocab_size} codes, hidden size {vae.config.hidden_size}) written to {output_dir}"
    )
    write_card_and_push(
        output_dir,
        "dalle_vae",
        ModelCardData(license=args.license, tags=["dall-e", "dvae", "discrete-vae", "image-tokenizer", "openai"]),
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        hub_private=args.hub_private,
        commit_message="Add DALL-E dVAE converted with hf_dalle",
        model_name="DALL-E dVAE (OpenAI weights)",
        model_description=(
            "The weights are OpenAI's released DALL-E dVAE (`encoder.pkl`, `decoder.pkl` of the "
            "[`dall_e` package](https://github.com/openai/DALL-E)), converted to safetensors."
        ),
        config=vae.config,
        encoder_parameters=sum(p.numel() for p in vae.encoder.parameters()),
        decoder_parameters=sum(p.numel() for p in vae.decoder.parameters()),
        conversion={
            "hf_dalle_version": __version__,
            "torch_version": torch.__version__,
            "sources": [
                {"name": os.path.basename(path), "kind": kind, "sha256": sha256_of(path)}
                for path, kind in ((args.encoder, "encoder"), (args.decoder, "decoder"))
            ],
            "command": command_for_card("convert_openai_dvae.py", argv),
        },
    )


if __name__ == "__main__":
    main()
