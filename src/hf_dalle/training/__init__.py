"""Shared code of the training scripts in `scripts/` (Accelerate): flags, data, the training loop, EMA, schedules,
atomic resumable checkpoints, and the outputs (image grids, the model card's training section)."""

from .arguments import (
    TrainingConfig,
    add_common_arguments,
    add_data_arguments,
    check_common_arguments,
    parse_model_config,
)
from .checkpointing import TrainingState, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from .data import (
    ImageCaptionCollator,
    check_batch_size,
    image_to_tensor,
    load_image_caption_dataset,
    load_pretokenized_dataset,
    make_dataloader,
)
from .ema import NON_EMA_VARIANT, averaged_weights, create_ema, save_model
from .loading import load_component, load_image_tokenizer
from .loop import NonFiniteLossError, create_accelerator, train
from .outputs import save_image_grid, tensors_to_pil, training_summary
from .run_folder import RunFolder
from .schedules import annealed_value


__all__ = [
    "NON_EMA_VARIANT",
    "ImageCaptionCollator",
    "NonFiniteLossError",
    "RunFolder",
    "TrainingConfig",
    "TrainingState",
    "add_common_arguments",
    "add_data_arguments",
    "annealed_value",
    "averaged_weights",
    "check_common_arguments",
    "create_accelerator",
    "check_batch_size",
    "create_ema",
    "image_to_tensor",
    "list_checkpoints",
    "load_checkpoint",
    "load_component",
    "load_image_tokenizer",
    "load_image_caption_dataset",
    "load_pretokenized_dataset",
    "make_dataloader",
    "parse_model_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_image_grid",
    "save_model",
    "tensors_to_pil",
    "train",
    "training_summary",
]
