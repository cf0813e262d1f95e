#!/usr/bin/env python
"""FID, Inception Score and CLIP score of generated images (scripts/generate.py's output) against reference images,
as the paper measures them (section 3.2, Figure 9): both sets blurred by a Gaussian filter of each --blur_radii.

    python scripts/evaluate.py --generated_dir runs/coco --reference_dir val2014 --resolution 256 \\
        --blur_radii 0 1 2 4 8 --clip_score_model openai/clip-vit-base-patch32 --output_dir runs/coco/eval

The metrics are torchmetrics' (`FrechetInceptionDistance`, `InceptionScore`, `CLIPScore`). With --features inception
(the default) they use the standard InceptionV3 of FID papers (torch-fidelity's port of the TensorFlow graph, 2048
pooled features; logits for IS; its weights are downloaded on first use), so the numbers compare with published ones.
--features clip --features_model M computes the Frechet distance in the image-embedding space of a CLIP model instead
(normalised projected embeddings; a folder, Hub id or a pipeline folder whose clip_model/ is used): the demo world's
drawings mean nothing to Inception. IS needs a classifier's logits and is reported with Inception only.

Images: --select best takes each caption's rank-0 image (the reranked output, what the paper evaluates), first the
image of candidate 0 (a single sample, no reranking; generate with --num_images_per_prompt equal to --num_candidates so
that it is kept), all every image of the manifest. Reference images (--reference_dir, every .png / .jpg / .jpeg below
it, or --reference_shapes: each evaluated caption drawn by the shapes world's renderer) and generated ones are
center-cropped to a square and resized to --resolution (bicubic), then blurred; each image is read once and its
blurred versions go to every radius's metrics. CLIP score (torchmetrics: 100 * cosine, floored at 0) scores the
unblurred generated images against their captions.

Writes OUTPUT_DIR/evaluation.json (settings of the generation run, the reranking among them, and of this one; results
per radius), evaluation.md and fid_vs_blur.png (FID and IS against blur radius, as the paper's Figure 9 draws them).
"""

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image, ImageFilter, ImageOps
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.multimodal.clip_score import CLIPScore
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from hf_dalle.io_utils import check_output_dir, write_folder_atomically
from hf_dalle.loading_utils import load_complete_model


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated_dir", required=True, help="A scripts/generate.py output folder (manifest.jsonl).")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference_dir", help="Folder of reference images (searched recursively).")
    reference.add_argument(
        "--reference_shapes",
        action="store_true",
        help="Reference = each evaluated caption drawn by the shapes world's renderer (demo-world captions only).",
    )
    parser.add_argument("--output_dir", required=True, help="Where evaluation.json, .md and fid_vs_blur.png go.")
    parser.add_argument(
        "--select", default="best", choices=["best", "first", "all"], help="Images per caption (default: best)."
    )
    parser.add_argument("--resolution", type=int, default=256, help="Side both sets are compared at (default: 256).")
    parser.add_argument(
        "--blur_radii", type=float, nargs="+", default=[0.0], help="Gaussian blur radii (paper: 0 1 2 4 8)."
    )
    parser.add_argument("--features", default="inception", choices=["inception", "clip"], help="Feature space.")
    parser.add_argument("--features_model", default=None, help="With --features clip: the CLIP model or pipeline.")
    parser.add_argument(
        "--clip_score_model",
        default=None,
        help="CLIP model (Hub id, folder, or a pipeline folder) for the CLIP score; omitted: no CLIP score.",
    )
    parser.add_argument("--max_reference_images", type=int, default=None, help="Use at most this many references.")
    parser.add_argument("--batch_size", type=int, default=50, help="Images per metric update (default: 50).")
    parser.add_argument("--reference_seed", type=int, default=0, help="With --reference_shapes: drawing seed offset.")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Device (default: cuda if any)."
    )
    args = parser.parse_args(argv)
    if args.features == "clip" and not args.features_model:
        parser.error("--features clip needs --features_model (a CLIP model or a pipeline folder).")
    if any(radius < 0 for radius in args.blur_radii):
        parser.error(f"--blur_radii must be >= 0, got {args.blur_radii}.")
    if args.resolution < 1 or args.batch_size < 1:
        parser.error("--resolution and --batch_size must be positive.")
    if args.max_reference_images is not None and args.max_reference_images < 2:
        parser.error(
            f"--max_reference_images must be at least 2 (FID needs 2 images a set), got {args.max_reference_images}."
        )
    return args


def load_clip(name_or_path: str) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP model and processor from a Hub id or folder, or a pipeline folder's clip_model/ + clip_processor/."""
    path = Path(name_or_path)
    if (path / "model_index.json").is_file():
        return (
            load_complete_model(CLIPModel.from_pretrained, path / "clip_model"),
            CLIPProcessor.from_pretrained(path / "clip_processor"),
        )
    return load_complete_model(CLIPModel.from_pretrained, name_or_path), CLIPProcessor.from_pretrained(name_or_path)


class ProjectedCLIP(torch.nn.Module):
    """A CLIP model whose `get_image_features` / `get_text_features` return the projected embeddings as tensors, as
    torchmetrics' `CLIPScore` expects (transformers 5 returns them as the `pooler_output` of a model output)."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        features = self.model.get_image_features(*args, **kwargs)
        return getattr(features, "pooler_output", features)

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        features = self.model.get_text_features(*args, **kwargs)
        return getattr(features, "pooler_output", features)


class CLIPImageFeatures(torch.nn.Module):
    """uint8 images `[B, 3, H, W]` -> normalised projected CLIP image embeddings: a feature space for the Frechet
    distance (torchmetrics takes any module with `num_features`)."""

    def __init__(self, model: CLIPModel, processor: CLIPProcessor):
        super().__init__()
        self.clip = ProjectedCLIP(model).eval()
        self.processor = processor
        self.num_features = model.config.projection_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor.image_processor(images=list(images.cpu()), return_tensors="pt").pixel_values
        features = self.clip.get_image_features(pixel_values=pixels.to(self.clip.model.device)).float()
        return features / features.norm(dim=-1, keepdim=True)


def to_square(image: Image.Image, resolution: int) -> Image.Image:
    """Center-crop to a square and resize to `resolution` (bicubic), in RGB."""
    image = image.convert("RGB")
    if image.size == (resolution, resolution):
        return image
    return ImageOps.fit(image, (resolution, resolution), method=Image.BICUBIC)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> uint8 `[B, 3, H, W]` (what torchmetrics' Inception expects)."""
    return (
        torch.stack([torch.frombuffer(bytearray(i.tobytes()), dtype=torch.uint8) for i in images])
        .view(len(images), images[0].size[1], images[0].size[0], 3)
        .permute(0, 3, 1, 2)
    )


def blurred(images: list[Image.Image], radius: float) -> list[Image.Image]:
    return images if radius == 0 else [image.filter(ImageFilter.GaussianBlur(radius)) for image in images]


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def compute_metrics(
    reference: Iterable[Image.Image],
    generated: Iterable[tuple[Image.Image, str]],
    blur_radii: list[float],
    resolution: int,
    fid_feature: int | torch.nn.Module = 2048,
    is_feature: str | torch.nn.Module | None = "logits_unbiased",
    clip_score: CLIPScore | None = None,
    batch_size: int = 50,
    device: str = "cpu",
    inception_splits: int = 10,
) -> dict:
    """FID (and IS of the generated images, with an `is_feature`) at every blur radius, and the CLIP score of the
    unblurred generated images, in one pass over each set. `fid_feature` / `is_feature` are torchmetrics' `feature`
    arguments: the standard Inception's layer (2048, "logits_unbiased") or any module (uint8 images -> features,
    or -> class logits for IS). IS is the mean over `inception_splits` random splits, as usual (10)."""
    fid = {r: FrechetInceptionDistance(feature=fid_feature).to(device) for r in blur_radii}
    inception = (
        {r: InceptionScore(feature=is_feature, splits=inception_splits).to(device) for r in blur_radii}
        if is_feature
        else {}
    )
    counts = {"reference": 0, "generated": 0}
    for name, images in (("reference", ((image, None) for image in reference)), ("generated", generated)):
        for batch in tqdm(batched(images, batch_size), desc=f"{name} images", unit="batch"):
            squares = [to_square(image, resolution) for image, _ in batch]
            counts[name] += len(squares)
            for radius in blur_radii:
                pixels = to_tensor(blurred(squares, radius)).to(device)
                fid[radius].update(pixels, real=name == "reference")
                if name == "generated" and radius in inception:
                    inception[radius].update(pixels)
            if name == "generated" and clip_score is not None:
                clip_score.update(to_tensor(squares).to(device), [caption for _, caption in batch])
    results = []
    for radius in blur_radii:
        row = {"blur_radius": radius, "fid": float(fid[radius].compute())}
        if radius in inception:
            mean, std = inception[radius].compute()
            row.update(inception_score=float(mean), inception_score_std=float(std))
        results.append(row)
    return {
        "num_reference_images": counts["reference"],
        "num_generated_images": counts["generated"],
        "per_blur_radius": results,
        "clip_score": float(clip_score.compute()) if clip_score is not None else None,
    }


def read_manifest(generated_dir: Path, select: str) -> list[dict]:
    """The manifest entries to evaluate (see --select), in caption order."""
    path = generated_dir / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{generated_dir} has no manifest.jsonl: run scripts/generate.py into it first.")
    try:
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged ({error}): run scripts/generate.py into the folder again.") from None
    if select == "all":
        return entries
    key = "rank" if select == "best" else "candidate"
    chosen = {e["caption_index"]: e for e in entries if e[key] == 0}
    missing = sorted({e["caption_index"] for e in entries} - set(chosen))
    if missing:
        raise ValueError(
            f"--select {select}: {len(missing)} captions have no image of {key} 0 (first: {missing[:5]}); for "
            "--select first, generate with --num_images_per_prompt equal to --num_candidates."
        )
    return [chosen[i] for i in sorted(chosen)]


def read_rgb(path: Path, what: str) -> Image.Image:
    """The image at `path` in RGB; a `ValueError` naming it (`what`: "reference image", ...) if it does not decode (a
    truncated or damaged file), where PIL would not say which."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:  # PIL's UnidentifiedImageError and "image file is truncated" are OSErrors
        raise ValueError(f"The {what} {path} does not decode: {error}.") from None


def reference_paths(args) -> list[Path]:
    """The --reference_dir images to read (at most --max_reference_images), at least 2."""
    paths = sorted(p for p in Path(args.reference_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise ValueError(f"--reference_dir {args.reference_dir} holds {len(paths)} images; FID needs at least 2.")
    return paths[: args.max_reference_images]


def reference_images(args, entries: list[dict]) -> Iterator[Image.Image]:
    if args.reference_shapes:
        from hf_dalle.data import render_caption

        size = read_rgb(Path(args.generated_dir) / entries[0]["file"], "generated image").size[0]
        drawings = (render_caption(e["caption"], args.reference_seed + i, size) for i, e in enumerate(entries))
        yield from (drawing for _, drawing in zip(range(args.max_reference_images or len(entries)), drawings))
        return
    for path in reference_paths(args):
        yield read_rgb(path, "reference image")


def markdown_report(report: dict) -> str:
    generation, results = report["generation"], report["results"]
    lines = [
        f"# Evaluation of {report['evaluation']['generated_dir']}",
        "",
        f"Model {generation.get('model')}: {generation.get('num_candidates')} candidates per caption, "
        f"{generation.get('num_images_per_prompt')} kept after CLIP reranking; images evaluated: "
        f"{report['evaluation']['select']} ({results['num_generated_images']}), against "
        f"{results['num_reference_images']} reference images, at {report['evaluation']['resolution']}x"
        f"{report['evaluation']['resolution']}; features: {report['evaluation']['feature_space']}.",
        "",
    ]
    has_is = "inception_score" in results["per_blur_radius"][0]
    lines += ["| blur radius | FID |" + (" IS |" if has_is else ""), "|---|---|" + ("---|" if has_is else "")]
    for row in results["per_blur_radius"]:
        cells = [f"{row['blur_radius']:g}", f"{row['fid']:.4g}"]
        if has_is:
            cells.append(f"{row['inception_score']:.2f} +- {row['inception_score_std']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if results["clip_score"] is not None:
        lines += ["", f"CLIP score ({report['evaluation']['clip_score_model']}): {results['clip_score']:.2f}"]
    if results.get("reranker_clip_score") is not None:
        lines += [
            "",
            f"Mean reranker CLIP score of the evaluated images (manifest): {results['reranker_clip_score']:.4f}",
        ]
    return "\n".join(lines) + "\n"


def plot_fid_vs_blur(results: dict, path: Path) -> None:
    """FID (and IS) against blur radius, the paper's Figure 9 layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["per_blur_radius"]
    radii = [row["blur_radius"] for row in rows]
    has_is = "inception_score" in rows[0]
    figure, axes = plt.subplots(1, 2 if has_is else 1, figsize=(8 if has_is else 4, 3), squeeze=False)
    axes[0][0].plot(radii, [row["fid"] for row in rows], marker="o")
    axes[0][0].set(xlabel="blur radius", ylabel="FID", title="FID (lower is better)")
    if has_is:
        axes[0][1].plot(radii, [row["inception_score"] for row in rows], marker="o")
        axes[0][1].set(xlabel="blur radius", ylabel="IS", title="Inception Score (higher is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return evaluate(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None


def evaluate(args) -> int:
    generated_dir = Path(args.generated_dir)
    # What can fail is checked before the hours of work: the output folder, and 2 images a set (torchmetrics would
    # fail on fewer only after both passes).
    check_output_dir(args.output_dir)
    entries = read_manifest(generated_dir, args.select)
    if len(entries) < 2:
        raise ValueError(
            f"--generated_dir {generated_dir} gives {len(entries)} image(s) with --select {args.select}; FID needs at "
            "least 2."
        )
    if args.reference_dir:
        reference_paths(args)
    config_path = generated_dir / "generation_config.json"
    generation = json.loads(config_path.read_text()) if config_path.is_file() else {}

    if args.features == "inception":
        if importlib.util.find_spec("torch_fidelity") is None:
            raise SystemExit(
                "--features inception needs torch-fidelity (torchmetrics' standard InceptionV3), which needs a "
                "torchvision built for your torch: pip install torch-fidelity torchvision==<the one matching torch>. "
                "Without it (or offline: its weights are downloaded on first use), --features clip --features_model M."
            )
        fid_feature, is_feature, feature_space = 2048, "logits_unbiased", "InceptionV3 pool (2048)"
    else:
        fid_feature, is_feature = CLIPImageFeatures(*load_clip(args.features_model)).to(args.device), None
        feature_space = f"CLIP image embeddings of {args.features_model}"
    clip_score = None
    if args.clip_score_model:
        model, processor = load_clip(args.clip_score_model)
        clip_score = CLIPScore(model_name_or_path=lambda: (ProjectedCLIP(model), processor)).to(args.device)

    def generated() -> Iterator[tuple[Image.Image, str]]:
        for entry in entries:
            yield read_rgb(generated_dir / entry["file"], "generated image"), entry["caption"]

    results = compute_metrics(
        reference_images(args, entries), generated(), args.blur_radii, args.resolution, fid_feature, is_feature,
        clip_score, args.batch_size, args.device,
    )  # fmt: skip
    scores = [e["clip_score"] for e in entries if e.get("clip_score") is not None]
    results["reranker_clip_score"] = sum(scores) / len(scores) if scores else None
    evaluation = {**vars(args), "feature_space": feature_space}
    report = {"generation": generation, "evaluation": evaluation, "results": results}
    markdown = markdown_report(report)

    def write(folder: Path) -> None:
        (folder / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "evaluation.md").write_text(markdown, encoding="utf-8")
        plot_fid_vs_blur(results, folder / "fid_vs_blur.png")

    write_folder_atomically(args.output_dir, write)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
