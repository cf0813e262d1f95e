"""What the training scripts write besides checkpoints: image grids and the model card's training summary."""

import os
from pathlib import Path

import jinja2
import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image

from ..hub_utils import MODEL_CARDS_DIR, command_for_card, path_for_card
from ..io_utils import write_file_atomically


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
    return write_file_atomically(path, lambda temporary: grid.save(temporary, format="PNG"))


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


__all__ = ["save_image_grid", "tensors_to_pil", "training_summary"]
