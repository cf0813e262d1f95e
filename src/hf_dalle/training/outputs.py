"""What the training scripts write besides checkpoints: image grids, the final model folder (atomically), the model
card with the training summary, and the upload to the Hub."""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jinja2
import numpy as np
import torch
from diffusers.utils import make_image_grid
from huggingface_hub import ModelCardData
from PIL import Image

from ..hub_utils import (
    MODEL_CARDS_DIR,
    command_for_card,
    path_for_card,
    push_folder_to_hub,
    render_model_card,
    write_model_card,
)
from .checkpointing import remove_stale_temporary_folders, temporary_folder_prefix


# Temporary folders of `write_folder_atomically`; one a killed run left is removed by the next save or run.
TEMPORARY_SAVE_PREFIX = ".tmp-save-"


# Training flags shown in the model card (the rest are paths or bookkeeping).
_CARD_FLAGS = (
    "max_train_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "max_grad_norm",
    "mixed_precision",
    "use_ema",
    "ema_decay",
    "resolution",
    "seed",
)


def tensors_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`[B, 3, H, W]` floats in [0, 1] -> PIL images."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(image)) for image in array]


def save_image_grid(images: list[Image.Image], rows: int, path: str | os.PathLike) -> Path:
    """Save `images` as a grid of `rows` rows (row-major) to `path` (PNG, through a temporary file)."""
    cols = -(-len(images) // rows)
    blank = Image.new("RGB", images[0].size, (255, 255, 255))
    grid = make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    grid.save(temporary, format="PNG")
    os.replace(temporary, path)
    return path


def write_folder_atomically(output_dir: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_folder)`, then move what it wrote into `output_dir` entry by entry (replacing entries of
    the same name), so an interrupted save leaves no half-written file there. Several processes may write into one
    `output_dir` at once (the ranks of `scripts/generate.py`): each removes only the temporary folders of dead ones."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporary_folders(output_dir, TEMPORARY_SAVE_PREFIX)
    with tempfile.TemporaryDirectory(
        dir=output_dir, prefix=temporary_folder_prefix(TEMPORARY_SAVE_PREFIX)
    ) as temporary:
        write(Path(temporary))
        for entry in sorted(Path(temporary).iterdir()):
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def training_summary(
    args, script: str, argv: list[str] | None, metrics: dict[str, float], sample_grid: str | None
) -> str:
    """The "Training" section of a model card (markdown): the command, the flags, the data, the final metrics and the
    sample grid, rendered from `model_cards/_training_section.md`."""
    template = jinja2.Template((MODEL_CARDS_DIR / "_training_section.md").read_text(encoding="utf-8"))
    return template.render(
        command=command_for_card(script, argv),
        flags={name: getattr(args, name) for name in _CARD_FLAGS if hasattr(args, name)},
        data=path_for_card(getattr(args, "dataset_name", None) or getattr(args, "train_data_dir", None)),
        metrics={name: f"{value:.4g}" for name, value in sorted(metrics.items())},
        sample_grid=sample_grid,
    ).strip()


def write_card_and_push(
    args,
    template: str,
    tags: list[str],
    template_kwargs: dict,
    commit_message: str,
) -> None:
    """Render `model_cards/{template}.md` into `OUTPUT_DIR/README.md` and, with `--push_to_hub`, upload what the output
    folder is meant to hold (`hub_utils.UPLOAD_ALLOW_PATTERNS`: weights, configs, tokenizer files, the card, the
    validation grids; checkpoints, logs and any other file stay local)."""
    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    card = render_model_card(
        template,
        ModelCardData(license=getattr(args, "license", None), tags=["dall-e", "hf_dalle", *tags]),
        repo_id=repo_id if args.push_to_hub else path_for_card(args.output_dir),
        **template_kwargs,
    )
    write_model_card(card, args.output_dir)
    if args.push_to_hub:
        commit = push_folder_to_hub(
            args.output_dir,
            repo_id,
            private=args.hub_private or None,
            commit_message=commit_message,
        )
        print(f"Pushed to {commit.repo_url} ({commit.commit_url})")


__all__ = [
    "MODEL_CARDS_DIR",
    "save_image_grid",
    "tensors_to_pil",
    "training_summary",
    "write_card_and_push",
    "write_folder_atomically",
]
