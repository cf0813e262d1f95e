"""Resumable checkpoints on top of `Accelerator.save_state` / `load_state`, written atomically.

A checkpoint is `OUTPUT_DIR/checkpoints/checkpoint-{step}`: what `save_state` writes (model, optimizer, scheduler,
gradient scaler, RNG states of every process, and the objects registered with `register_for_checkpointing`: the
EMA and the `TrainingState` below). It is saved into a hidden temporary folder and renamed when complete, so a
process killed while saving leaves the previous checkpoints intact; old checkpoints are pruned only after the new
one is in place. (Accelerate's `automatic_checkpoint_naming` writes in place and prunes before saving, so a kill
during the save could leave no loadable checkpoint: naming and pruning are done here instead.)
"""

import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator


logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
_TEMPORARY_PREFIX = ".tmp-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class TrainingState:
    """The progress a resumed run needs besides the weights and RNG states: optimizer steps taken, the epoch and the
    number of batches already consumed in it (for `skip_first_batches`), and the non-finite steps skipped so far."""

    def __init__(self):
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.skipped_steps = 0
        self.nonfinite_in_a_row = 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - set(vars(self))
        if unknown:
            raise ValueError(f"Not a TrainingState: unexpected fields {sorted(unknown)}.")
        vars(self).update(state)


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run, oldest first (temporary folders of unfinished saves are not listed)."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), path)
        for path in folder.iterdir()
        if (m := _CHECKPOINT_NAME.match(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """`--resume_from_checkpoint`: `None` (start fresh), `"latest"` (the newest complete checkpoint of `output_dir`,
    or `None` if there is none yet), or the path of a checkpoint folder."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.info("No checkpoint in %s yet: starting from scratch.", checkpoints_dir(output_dir))
            return None
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint folder; pass a "
            f"{CHECKPOINT_PREFIX}<step> folder or 'latest'. Found: {[str(p) for p in list_checkpoints(output_dir)]}."
        )
    return path


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None
) -> Path:
    """Save the training state as `checkpoint-{step}` atomically (see the module docstring) and keep at most
    `total_limit` checkpoints. Every process must call it."""
    folder = checkpoints_dir(output_dir)
    final = folder / f"{CHECKPOINT_PREFIX}{step}"
    temporary = folder / f"{_TEMPORARY_PREFIX}{final.name}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{_TEMPORARY_PREFIX}*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (a run resumed from an earlier checkpoint): replace it
            replaced = folder / f"{_TEMPORARY_PREFIX}old-{final.name}"
            os.replace(final, replaced)
            os.replace(temporary, final)
            shutil.rmtree(replaced)
        else:
            os.replace(temporary, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


__all__ = [
    "CHECKPOINT_PREFIX",
    "TrainingState",
    "checkpoints_dir",
    "list_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
]
