"""Command-line flags shared by the training scripts (diffusers-style argparse: each script adds its groups), and
[`TrainingConfig`], what of them the training loop reads."""

import argparse
import dataclasses
import json
import os

from transformers import SchedulerType

from .data import BAD_IMAGE_CHOICES
from .run_folder import RunFolder


@dataclasses.dataclass
class TrainingConfig:
    """What `train()` and `create_accelerator()` read: the flags of `add_common_arguments` that drive the loop (their
    help texts say what each does, their defaults are the scripts'). Built from a script's parsed flags by
    [`TrainingConfig.from_args`]."""

    output_dir: str
    seed: int
    max_train_steps: int
    train_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    adam_weight_decay: float
    max_grad_norm: float | None
    max_nonfinite_steps: int
    mixed_precision: str | None
    powersgd_rank: int | None
    powersgd_start_step: int
    checkpointing_steps: int
    checkpoints_total_limit: int | None
    resume_from_checkpoint: str | None
    overwrite_output_dir: bool
    allow_inexact_resume: bool
    report_to: str
    logging_steps: int
    # Every flag of the script (numbers, strings and booleans), recorded by the trackers with the run.
    hyperparameters: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainingConfig":
        """The loop's settings from a training script's parsed flags (`add_common_arguments` and its own)."""
        names = [field.name for field in dataclasses.fields(cls) if field.name != "hyperparameters"]
        hyperparameters = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        return cls(**{name: getattr(args, name) for name in names}, hyperparameters=hyperparameters)


def add_common_arguments(
    parser: argparse.ArgumentParser, *, learning_rate: float, train_batch_size: int, max_train_steps: int
) -> argparse.ArgumentParser:
    """The flags every training script takes: model, output, optimisation, precision, checkpoints, EMA, logging, Hub.
    The defaults that differ between stages are arguments."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Start from these weights (a pipeline folder such as hf_dalle.DEMO_MODEL_DIR, a model folder, a Hub id) "
        "instead of from scratch.",
    )
    model.add_argument(
        "--model_config",
        default=None,
        help="Architecture of a model trained from scratch: a JSON object or a JSON file with config fields "
        "(e.g. '{\"hidden_size\": 64}'); ignored with --pretrained_model_name_or_path.",
    )
    model.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute activations in the backward pass."
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir",
        required=True,
        help="Where the model, checkpoints, logs and samples go: a new or empty folder, unless resuming the run there "
        "(--resume_from_checkpoint) or starting it over (--overwrite_output_dir).",
    )
    output.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Delete the run already in --output_dir (its checkpoints, logs and model) and start over.",
    )
    output.add_argument(
        "--seed", type=int, default=0, help="Seed of every random choice (weights, data order, noise)."
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max_train_steps", type=int, default=max_train_steps, help="Optimizer steps to train for.")
    optim.add_argument("--train_batch_size", type=int, default=train_batch_size, help="Batch size per process.")
    optim.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated into each optimizer step."
    )
    optim.add_argument("--learning_rate", type=float, default=learning_rate, help="Peak learning rate of AdamW.")
    optim.add_argument(
        "--lr_scheduler",
        default="constant_with_warmup",
        choices=[s.value for s in SchedulerType],
        help="Learning-rate schedule (transformers.get_scheduler).",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=0, help="Linear warm-up steps of the schedule.")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0, help="Decoupled weight decay.")
    optim.add_argument(
        "--max_grad_norm", type=float, default=None, help="Clip the gradient norm to this (default: no clipping)."
    )
    optim.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=20,
        help="Steps with a non-finite loss or gradient are skipped; stop with an error after this many in a row.",
    )

    precision = parser.add_argument_group("precision and distribution")
    precision.add_argument(
        "--mixed_precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Autocast precision (default: the `accelerate config` value). bf16 works on CPU; fp16 needs a GPU.",
    )
    precision.add_argument(
        "--powersgd_rank",
        type=int,
        default=None,
        help="Compress DDP gradients with PowerSGD of this rank (the paper's gradient compression).",
    )
    precision.add_argument(
        "--powersgd_start_step",
        type=int,
        default=10,
        help="Plain all-reduce for this many steps before PowerSGD starts (torch's start_powerSGD_iter).",
    )
    precision.add_argument("--dataloader_num_workers", type=int, default=0, help="Data-loading worker processes.")

    checkpoints = parser.add_argument_group("checkpoints")
    checkpoints.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every this many steps."
    )
    checkpoints.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints (oldest pruned)."
    )
    checkpoints.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="Resume from a checkpoint folder, or 'latest' for the newest complete one in --output_dir/checkpoints "
        "(damaged ones are passed over).",
    )
    checkpoints.add_argument(
        "--allow_inexact_resume",
        action="store_true",
        help="Resume even if the checkpoint lacks a process's RNG state (random_states_N.pkl); the run then draws "
        "other noise than an uninterrupted one would. Without it such a resume is refused.",
    )

    ema = parser.add_argument_group("EMA")
    ema.add_argument(
        "--use_ema",
        action="store_true",
        help="Keep an exponential moving average of the weights; the saved model holds it (raw weights beside as the "
        "'non_ema' variant).",
    )
    ema.add_argument("--ema_decay", type=float, default=0.999, help="Decay of the moving average.")

    logging = parser.add_argument_group("logging and validation")
    logging.add_argument(
        "--report_to",
        default="none",
        help="Trackers for accelerate's log_with ('tensorboard', 'wandb', 'all', 'none'); metrics also go to "
        "OUTPUT_DIR/logs/metrics.jsonl.",
    )
    logging.add_argument("--logging_steps", type=int, default=10, help="Log averaged metrics every this many steps.")
    logging.add_argument(
        "--validation_steps",
        type=int,
        default=500,
        help="Write validation images every this many steps (and at the end).",
    )

    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument(
        "--push_to_hub", action="store_true", help="Upload the final model and its model card to the Hub."
    )
    hub.add_argument("--hub_model_id", default=None, help="Repo id on the Hub (default: the name of --output_dir).")
    hub.add_argument("--hub_private", action="store_true", help="Create the Hub repo as private.")
    return parser


def add_data_arguments(parser: argparse.ArgumentParser, *, resolution: int | None = 64) -> argparse.ArgumentParser:
    """Image-caption data: a `datasets` dataset (Hub id, local folder or `save_to_disk` output) or an imagefolder."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="A Hub dataset id, a local dataset folder that datasets.load_dataset reads, or a save_to_disk folder.",
    )
    data.add_argument("--dataset_config_name", default=None, help="Configuration of the dataset, if it has several.")
    data.add_argument("--dataset_split", default="train", help="Split to train on (default: train).")
    data.add_argument(
        "--train_data_dir",
        default=None,
        help="An imagefolder: images plus a metadata.jsonl with a 'file_name' and a caption field per image.",
    )
    data.add_argument("--image_column", default="image", help="Column holding the images (default: image).")
    data.add_argument("--caption_column", default="caption", help="Column holding the captions (default: caption).")
    data.add_argument("--streaming", action="store_true", help="Stream the dataset instead of downloading it whole.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first this many examples.")
    data.add_argument(
        "--bad_images",
        default="check",
        choices=BAD_IMAGE_CHOICES,
        help="Images that do not decode: 'check' (default) decodes every image up front and stops with the list of "
        "bad rows (a streamed dataset stops at the first); 'skip' leaves such rows out, each named in a warning.",
    )
    if resolution is not None:
        data.add_argument(
            "--resolution", type=int, default=resolution, help="Images are resized and centre-cropped to this side."
        )
    return parser


def parse_model_config(value: str | None) -> dict:
    """`--model_config`: a JSON object, or the path of a JSON file holding one."""
    if value is None:
        return {}
    text = open(value, encoding="utf-8").read() if os.path.isfile(value) else value
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--model_config must be a JSON object or a JSON file, got {value!r} ({error}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"--model_config must be a JSON object, got {type(config).__name__}.")
    return config


def check_common_arguments(args: argparse.Namespace) -> None:
    """Raise ValueError for flags that cannot work together, before any model is built."""
    for name in (
        "max_train_steps",
        "train_batch_size",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "logging_steps",
        "validation_steps",
        "max_nonfinite_steps",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be at least 1, got {args.checkpoints_total_limit}.")
    if args.powersgd_rank is not None and args.powersgd_rank < 1:
        raise ValueError(f"--powersgd_rank must be a positive integer, got {args.powersgd_rank}.")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1), got {args.ema_decay}.")
    if getattr(args, "dataset_name", None) is not None and getattr(args, "train_data_dir", None) is not None:
        raise ValueError("Pass either --dataset_name or --train_data_dir, not both.")
    RunFolder(args.output_dir).check_unused(args.resume_from_checkpoint is not None, args.overwrite_output_dir)


__all__ = [
    "TrainingConfig",
    "add_common_arguments",
    "add_data_arguments",
    "check_common_arguments",
    "parse_model_config",
]
