"""The `hf-dalle` command line: one subcommand per job, each importing only what it needs."""

import argparse
import sys
from pathlib import Path


def _save_png(image, path: Path) -> None:
    """Write a PIL image atomically: a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def reconstruct(args: argparse.Namespace) -> int:
    """Encode images into dVAE codes and decode them back (the dVAE round trip)."""
    import numpy as np
    import torch
    from PIL import Image

    from hf_dalle import DalleVAE

    vae = DalleVAE.from_pretrained(args.model).eval()
    size = args.image_size or vae.config.image_size
    for path in args.images:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            codes = vae.encode(pixels).indices
            sample = vae.decode(codes).sample[0]
        out = Path(args.output_dir) / f"{Path(path).stem}_reconstruction.png"
        _save_png(Image.fromarray((sample.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)), out)
        print(f"{out}  ({codes.shape[-2]}x{codes.shape[-1]} codes, {codes.unique().numel()} distinct)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-dalle", description="DALL-E on the Hugging Face stack.")
    commands = parser.add_subparsers(dest="command", required=True)

    rec = commands.add_parser("reconstruct", help="Round-trip images through a dVAE (encode to codes, decode).")
    rec.add_argument("images", nargs="+", help="Image files.")
    rec.add_argument("--model", required=True, help="DalleVAE directory or Hub id.")
    rec.add_argument("--image-size", type=int, default=None, help="Resize to this side (default: the model's).")
    rec.add_argument("--output-dir", default="outputs", help="Where the PNGs go (default: outputs).")
    rec.set_defaults(func=reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
