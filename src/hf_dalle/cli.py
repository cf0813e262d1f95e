"""The `hf-dalle` command line: one subcommand per job, each importing only what it needs (torch and transformers
load when a command runs, not for `--help` or a usage error)."""

import argparse
import sys
from pathlib import Path

from .demo import DEMO_PROMPTS, load_pipeline
from .device_utils import DEVICE_NAMES, DTYPE_NAMES
from .io_utils import check_output_dir, write_file_atomically


def _save_png(image, path: Path) -> None:
    write_file_atomically(path, lambda temporary: image.save(temporary, format="PNG"))


def _image_tokenizer(name: str):
    """The dVAE or VQGAN that `reconstruct --model` names: its own folder or Hub id, or a pipeline's (its `vae/`)."""
    import os

    from transformers import AutoModel

    from . import models  # noqa: F401 (registers DalleVAE and DalleVQGAN with AutoModel)

    is_pipeline = os.path.isfile(os.path.join(name, "model_index.json"))
    try:
        return AutoModel.from_pretrained(name, subfolder="vae" if is_pipeline else "").eval()
    except OSError:
        if is_pipeline or os.path.isdir(name):
            raise
        return AutoModel.from_pretrained(name, subfolder="vae").eval()  # a pipeline repo on the Hub


def reconstruct(args: argparse.Namespace) -> int:
    """Encode images into dVAE codes and decode them back (the dVAE round trip)."""
    import numpy as np
    import torch
    from PIL import Image

    from .image_utils import to_rgb

    vae = _image_tokenizer(args.model)
    size = args.image_size or vae.config.image_size
    for path in args.images:
        image = to_rgb(Image.open(path))
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            codes = vae.encode(pixels).indices
            sample = vae.decode(codes).sample[0]
        out = Path(args.output_dir) / f"{Path(path).stem}_reconstruction.png"
        pixels = (sample.clamp(0, 1).permute(1, 2, 0).float().numpy() * 255).round().astype(np.uint8)
        _save_png(Image.fromarray(pixels), out)
        print(f"{out}  ({codes.shape[-2]}x{codes.shape[-1]} codes, {codes.unique().numel()} distinct)")
    return 0


def _image_paths(output_dir: Path, prompts: list[str], num_images: int) -> list[Path]:
    """`{slug}_{i}.png` for each prompt's images, the slug made of the prompt's lowercase letters and digits (any
    script); prompts that give the same slug (`"A red circle!"`, `"a red circle"`, or none at all) get `-2`, `-3`..."""
    import re

    stems = []
    for prompt in prompts:
        slug = re.sub(r"\W+", "_", prompt.lower()).strip("_")[:60] or "image"
        stem, n = slug, 1
        while stem in stems:
            n += 1
            stem = f"{slug}-{n}"
        stems.append(stem)
    return [output_dir / f"{stem}_{i}.png" for stem in stems for i in range(num_images)]


def _generate_and_save(pipe, prompts: list[str], args: argparse.Namespace) -> int:
    """Run the pipeline, write one PNG per image and a grid, print each file with its CLIP score."""
    import torch

    from .image_utils import captioned_grid

    num_rows = len(prompts) * args.num_candidates
    # One generator per candidate, seeded seed + index: each candidate is reproducible on its own.
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(num_rows)]
    output = pipe(
        prompts,
        negative_prompt=args.negative_prompt,
        num_candidates=args.num_candidates,
        num_images_per_prompt=args.num_images,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=args.guidance_scale,
        generator=generators,
        candidate_batch_size=args.candidate_batch_size,
    )
    output_dir = Path(args.output_dir)
    for index, (image, path) in enumerate(zip(output.images, _image_paths(output_dir, prompts, args.num_images))):
        prompt = prompts[index // args.num_images]
        _save_png(image, path)
        score = f"{output.scores[index]:.4f}" if output.scores is not None else "n/a (no CLIP model)"
        print(f"{path}  score={score}  prompt={prompt!r}")
    for prompt, warning in zip(prompts, output.prompt_warnings):
        if warning is not None:
            print(f"note: {prompt!r}: {warning}")
    _save_png(captioned_grid(output.images, prompts, cols=args.num_images), output_dir / "grid.png")
    print(f"{output_dir / 'grid.png'}  ({len(prompts)} prompts x {args.num_images} images)")
    return 0


def _check_generation_arguments(prompts: list[str], args: argparse.Namespace) -> None:
    """What the pipeline cannot check for the CLI: the seeds `seed .. seed + candidates - 1` must be valid
    `torch.Generator` seeds, and the output folder must be writable, before anything is generated; and what one
    flag's type cannot check."""
    if any(not prompt.strip() for prompt in prompts):
        raise ValueError("a caption is empty: give each caption some words, e.g. 'a red circle'.")
    if args.num_images > args.num_candidates:
        raise ValueError(
            f"argument --num-images: must be at most --num-candidates ({args.num_candidates}), got {args.num_images}."
        )
    max_seed = 2**64 - len(prompts) * max(args.num_candidates, 1)  # candidate i uses seed + i <= 2**64 - 1
    if not 0 <= args.seed <= max_seed:
        raise ValueError(
            f"--seed must be between 0 and {max_seed} (candidate i uses seed + i, and torch seeds end at 2**64 - 1), "
            f"got {args.seed}."
        )
    check_output_dir(args.output_dir, "--output-dir")


def generate(args: argparse.Namespace) -> int:
    """Caption(s) in, reranked PNGs and a grid out."""
    _check_generation_arguments(args.prompts, args)
    return _generate_and_save(load_pipeline(args.model, args.device, args.dtype), args.prompts, args)


def demo(args: argparse.Namespace) -> int:
    """The bundled demo model on demo-world captions (seen and held out)."""
    prompts = list(args.prompts or DEMO_PROMPTS)
    _check_generation_arguments(prompts, args)
    return _generate_and_save(load_pipeline(None, args.device, args.dtype), prompts, args)


def serve(args: argparse.Namespace) -> int:
    """Serve the Gradio web demo (`hf_dalle.app`) on one pipeline until interrupted."""
    try:
        from .app import create_demo, launch_demo, trusted_proxies_from
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise SystemExit("`hf-dalle serve` needs Gradio: pip install 'hf_dalle[web]'.") from error
    trusted_proxies = trusted_proxies_from(args.trusted_proxy)  # checked before the model is loaded
    demo = create_demo(load_pipeline(args.model, args.device, args.dtype))
    launch_demo(demo, trusted_proxies, server_name=args.host, server_port=args.port)
    return 0


def _transformer_config(name: str):
    """The `DalleConfig` or `DalleBartConfig` that `estimate-memory --config` names: `12b` (the paper's DALL-E),
    `mega` (DALL·E Mega), a transformer folder, a pipeline folder (its `transformer/`), or a Hub id of either; anything
    else, a `ValueError` saying what is wrong."""
    import os

    from transformers import PretrainedConfig

    from .hub_utils import hub_repo_id
    from .models.dalle import DalleConfig
    from .models.dalle_bart import DalleBartConfig

    presets = {"12b": DalleConfig, "mega": DalleBartConfig}  # the defaults of each config are these models
    if name in presets:
        return presets[name]()
    if not os.path.isdir(name):
        hub_repo_id(name, "transformer or pipeline")
    subfolder = "transformer" if os.path.isfile(os.path.join(name, "model_index.json")) else ""
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, subfolder, "config.json")):
        raise ValueError(
            f"--config {name!r} has no {os.path.join(subfolder, 'config.json')}: expected a DALL-E or DALL·E Mini / "
            "Mega transformer folder, a pipeline folder, a Hub id of either, '12b' or 'mega'."
        )
    try:
        try:
            config_dict, _ = PretrainedConfig.get_config_dict(name, subfolder=subfolder)
        except OSError:
            if subfolder or os.path.isdir(name):
                raise
            # A pipeline repo on the Hub: the transformer's config is in its subfolder.
            config_dict, _ = PretrainedConfig.get_config_dict(name, subfolder="transformer")
    except OSError as error:  # not JSON, or nothing found under that name
        raise ValueError(f"--config {name!r}: {error}") from None
    config_classes = {cls.model_type: cls for cls in presets.values()}
    config_class = config_classes.get(config_dict.get("model_type"))
    if config_class is None:
        raise ValueError(
            f"--config {name!r} is the config of a {config_dict.get('model_type')!r} model, not of a "
            f"DALL-E transformer (model_type {' or '.join(repr(t) for t in config_classes)})."
        )
    try:
        return config_class.from_dict(config_dict)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--config {name!r} is not a valid {config_class.__name__}: {error}") from None


def estimate_memory(args: argparse.Namespace) -> int:
    """Parameter and KV-cache memory of a transformer config, in fp32 / bf16 / int8."""
    from .memory import estimate_memory as estimate
    from .memory import format_estimates

    config = _transformer_config(args.config)
    print(format_estimates(config, estimate(config, batch_size=args.batch_size, dtypes=args.dtype)))
    return 0


def _number_type(convert, check, expected: str):
    """An argparse `type` that refuses what `check` rejects: 'argument --top-p: must be in (0, 1], got 2'."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number_type(int, lambda n: n >= 1, "a positive whole number")
_top_k = _number_type(int, lambda n: n >= 0, "a whole number >= 0 (0 = all codes)")
_temperature = _number_type(float, lambda x: 0 < x < float("inf"), "a number > 0")
_top_p = _number_type(float, lambda x: 0 < x <= 1, "in (0, 1]")
_guidance_scale = _number_type(float, lambda x: 1 <= x < float("inf"), "a number >= 1 (1 = off)")


def add_generation_arguments(parser: argparse.ArgumentParser, num_candidates: int, num_images: int) -> None:
    parser.add_argument(
        "--negative-prompt", default=None, help="Caption to steer away from (with --guidance-scale > 1)."
    )
    parser.add_argument(
        "--num-candidates",
        type=_positive_int,
        default=num_candidates,
        help=f"Candidates sampled per prompt (default: {num_candidates}).",
    )
    parser.add_argument(
        "--num-images",
        type=_positive_int,
        default=num_images,
        help=f"Best candidates kept per prompt (default: {num_images}).",
    )
    parser.add_argument("--temperature", type=_temperature, default=1.0, help="Sampling temperature (default: 1.0).")
    parser.add_argument(
        "--top-k", type=_top_k, default=None, help="Sample among the k most likely codes (default: all)."
    )
    parser.add_argument("--top-p", type=_top_p, default=None, help="Nucleus sampling threshold (default: off).")
    parser.add_argument(
        "--guidance-scale",
        type=_guidance_scale,
        default=None,
        help="Classifier-free guidance scale (default: the pipeline's default_guidance_scale; 1 = off).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Candidate i is drawn with seed + i (default: 0).")
    parser.add_argument(
        "--candidate-batch-size", type=_positive_int, default=16, help="Candidates sampled together (default: 16)."
    )
    parser.add_argument("--output-dir", default="outputs", help="Where the PNGs go (default: outputs).")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help=f"Where the model runs: {', '.join(DEVICE_NAMES)} or e.g. cuda:1 (default: auto, the best available).",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="Precision of the weights (default: auto: bfloat16 on CUDA, float16 on GPUs without bfloat16, "
        "float32 on a CPU, where half precision is many times slower).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-dalle", description="DALL-E on the Hugging Face stack.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="Generate CLIP-reranked images for captions.")
    gen.add_argument("prompts", nargs="+", help="Caption(s), e.g. 'a red circle above a blue square'.")
    gen.add_argument("--model", default=None, help="Pipeline directory or Hub id (default: the bundled demo model).")
    add_generation_arguments(gen, num_candidates=16, num_images=4)
    add_device_arguments(gen)
    gen.set_defaults(func=generate)

    dem = commands.add_parser("demo", help="Generate images for demo-world captions with the bundled demo model.")
    dem.add_argument("prompts", nargs="*", help="Captions (default: two seen and two held-out demo-world captions).")
    add_generation_arguments(dem, num_candidates=16, num_images=4)
    add_device_arguments(dem)
    dem.set_defaults(func=demo)

    rec = commands.add_parser("reconstruct", help="Round-trip images through a dVAE (encode to codes, decode).")
    rec.add_argument("images", nargs="+", help="Image files.")
    rec.add_argument(
        "--model", required=True, help="A dVAE / VQGAN folder or Hub id, or a pipeline's (its vae/ is used)."
    )
    rec.add_argument("--image-size", type=int, default=None, help="Resize to this side (default: the model's).")
    rec.add_argument("--output-dir", default="outputs", help="Where the PNGs go (default: outputs).")
    rec.set_defaults(func=reconstruct)

    web = commands.add_parser("serve", help="Serve the web demo (Gradio; needs the `web` extra).")
    web.add_argument("--model", default=None, help="Pipeline directory or Hub id (default: the bundled demo model).")
    web.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1; 0.0.0.0 for all).")
    web.add_argument("--port", type=int, default=7860, help="Port (default: 7860).")
    web.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="ADDRESS",
        help="A reverse proxy in front (IP address or network, e.g. 10.0.0.2 or 10.0.0.0/8; repeat for several) whose "
        "X-Forwarded-For header names the client. Without it, forwarded headers are never believed (unless the "
        "FORWARDED_ALLOW_IPS environment variable names proxies) and the one-request-per-client limit counts the "
        "address that connects: behind a proxy not named, all users share the proxy's one slot.",
    )
    add_device_arguments(web)
    web.set_defaults(func=serve)

    mem = commands.add_parser("estimate-memory", help="Parameter and KV-cache memory of a transformer, per dtype.")
    mem.add_argument(
        "--config",
        default="12b",
        help="'12b' (the paper's model, default), 'mega' (DALL·E Mega), or a transformer/pipeline directory or Hub id.",
    )
    mem.add_argument("--batch-size", type=int, default=1, help="Images generated together (default: 1).")
    mem.add_argument(
        "--dtype",
        nargs="+",
        default=["fp32", "bf16", "int8"],
        choices=["fp32", "bf16", "int8"],
        help="Storage dtypes to report (default: all).",
    )
    mem.set_defaults(func=estimate_memory)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as error:
        # Bad values and missing files (the library's checks name them): the message, not a traceback.
        raise SystemExit(f"hf-dalle {args.command}: error: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
