"""Resumable checkpoints on top of `Accelerator.save_state` / `load_state`, written atomically, holding data only.

A checkpoint is `OUTPUT_DIR/checkpoints/checkpoint-{step}` (`RunFolder`): what `save_state` writes
(`model.safetensors`, optimizer, scheduler, gradient scaler, the RNG states of every process), plus
`training_state.json` (the `TrainingState` below) and, with EMA, `ema.safetensors`. Accelerate would keep those two as
pickles loaded with `torch.load(weights_only=False)`, which runs whatever code a crafted file carries; here they are
JSON and safetensors, and Accelerate loads the rest with `torch.load(weights_only=True)` (tensors, numbers, strings and
containers only). A folder that holds Accelerate's pickled custom states (`custom_checkpoint_*.pkl`) is refused unread.

A checkpoint is saved into a hidden temporary folder (`io_utils`) and renamed when complete, so a process killed while
saving leaves the previous checkpoints intact; old checkpoints are pruned only after the new one is in place.
(Accelerate's `automatic_checkpoint_naming` writes in place and prunes before saving, so a kill during the save could
leave no loadable checkpoint: naming and pruning are done here instead.) The last file written is
`checkpoint_complete.json`, the size of every other file: a checkpoint is complete when that marker is there and every
file it lists has its size. `--resume_from_checkpoint latest` takes the newest complete checkpoint, passing over
damaged ones.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..io_utils import move_into_place, remove_stale_temporaries
from .run_folder import CHECKPOINT_PREFIX, RunFolder


logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
TRAINING_STATE_FILE = "training_state.json"
EMA_FILE = "ema.safetensors"
_RANDOM_STATES = re.compile(r"^random_states_\d+\.pkl$")
_PICKLED_CUSTOM_STATE = re.compile(r"^custom_checkpoint_\d+\.pkl$")


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
        if not isinstance(state, dict) or set(state) != set(vars(self)):
            fields = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"Not a TrainingState: expected the fields {sorted(vars(self))}, got {fields}.")
        bad = [name for name, value in state.items() if not isinstance(value, int) or isinstance(value, bool)]
        if bad:
            raise ValueError(f"Not a TrainingState: the fields {bad} are not integers.")
        vars(self).update(state)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint folders of a run, oldest first (see `RunFolder.checkpoints`)."""
    return RunFolder(output_dir).checkpoints()


def checkpoint_problem(checkpoint: str | os.PathLike, allow_missing_random_states: bool = False) -> str | None:
    """Why `checkpoint` cannot be resumed from (missing marker, missing or truncated files, pickled custom states), or
    `None` if it is complete. With `allow_missing_random_states`, absent `random_states_*.pkl` are tolerated."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return "there is no such folder"
    pickled = sorted(p.name for p in checkpoint.iterdir() if _PICKLED_CUSTOM_STATE.match(p.name))
    if pickled:
        return f"it holds pickled states {pickled}, which are not loaded (they could run code)"
    try:
        files = json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"it has no {COMPLETE_MARKER} (not a checkpoint of these scripts, or a save that did not finish)"
    except (ValueError, KeyError, TypeError) as error:
        return f"its {COMPLETE_MARKER} is damaged ({error!r})"
    missing, wrong_size = [], []
    for name, size in sorted(files.items()):
        path = checkpoint / name
        if not path.is_file():
            if not (allow_missing_random_states and _RANDOM_STATES.match(name)):
                missing.append(name)
        elif path.stat().st_size != size:
            wrong_size.append(name)
    if missing or wrong_size:
        return "files are " + "; ".join(
            f"{kind} {names}" for kind, names in (("missing:", missing), ("of the wrong size:", wrong_size)) if names
        )
    return None


def resolve_checkpoint(
    output_dir: str | os.PathLike, resume_from_checkpoint: str | None, allow_missing_random_states: bool = False
) -> Path | None:
    """`--resume_from_checkpoint`: `None` (start fresh), `"latest"` (the newest complete checkpoint of `output_dir`,
    passing over damaged ones, or `None` if there is none yet), or the path of a checkpoint folder, which must be
    complete (`checkpoint_problem`)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        for checkpoint in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(checkpoint, allow_missing_random_states)
            if problem is None:
                return checkpoint
            logger.warning("Passing over the damaged checkpoint %s: %s.", checkpoint, problem)
        logger.info("No complete checkpoint in %s yet: starting from scratch.", RunFolder(output_dir).checkpoints_dir)
        return None
    problem = checkpoint_problem(resume_from_checkpoint, allow_missing_random_states)
    if problem is not None:
        found = [p.name for p in list_checkpoints(output_dir) if checkpoint_problem(p) is None]
        raise ValueError(
            f"--resume_from_checkpoint {str(resume_from_checkpoint)!r} is not a complete checkpoint: {problem}. Pass "
            f"a {CHECKPOINT_PREFIX}<step> folder written by the training scripts, or 'latest' (complete checkpoints "
            f"in {RunFolder(output_dir).checkpoints_dir}: {found})."
            + (
                " To resume without the RNG states (not exact: the noise differs from an uninterrupted run), pass "
                "--allow_inexact_resume."
                if "random_states_" in problem and not allow_missing_random_states
                else ""
            )
        )
    return Path(resume_from_checkpoint)


def _save_ema(ema: EMAModel, path: Path) -> None:
    state = ema.state_dict()
    tensors = {f"shadow_params.{i}": p.detach().contiguous().cpu() for i, p in enumerate(state.pop("shadow_params"))}
    save_file(tensors, path, metadata={"ema": json.dumps(state)})


def _load_ema(ema: EMAModel, path: Path) -> None:
    with safe_open(path, "pt") as file:
        state = json.loads((file.metadata() or {}).get("ema", "{}"))
    tensors = load_file(path)
    shadow = [tensors.pop(f"shadow_params.{i}", None) for i in range(len(ema.shadow_params))]
    mismatched = [
        i
        for i, (saved, current) in enumerate(zip(shadow, ema.shadow_params))
        if saved is None or saved.shape != current.shape
    ]
    if mismatched or tensors:
        raise ValueError(
            f"{path} does not hold the moving average of this model: {len(ema.shadow_params)} tensors expected, "
            f"mismatched or missing at {mismatched[:5]}, unexpected {sorted(tensors)[:5]}."
        )
    device = ema.shadow_params[0].device if ema.shadow_params else torch.device("cpu")
    ema.load_state_dict({**state, "shadow_params": [p.to(device) for p in shadow]})


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    state: TrainingState,
    ema: EMAModel | None = None,
    total_limit: int | None = None,
) -> Path:
    """Save the training state as `checkpoint-{state.global_step}` atomically (see the module docstring) and keep at
    most `total_limit` checkpoints. Every process must call it."""
    run = RunFolder(output_dir)
    final, temporary = run.checkpoint(state.global_step), run.checkpoint_temporary(state.global_step)
    if accelerator.is_main_process:
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run.checkpoints_dir)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / TRAINING_STATE_FILE).write_text(json.dumps(state.state_dict(), indent=2) + "\n", encoding="utf-8")
        if ema is not None:
            _save_ema(ema, temporary / EMA_FILE)
        files = {str(p.relative_to(temporary)): p.stat().st_size for p in sorted(temporary.rglob("*")) if p.is_file()}
        with open(
            temporary / COMPLETE_MARKER, "w", encoding="utf-8"
        ) as marker:  # written last: see checkpoint_problem
            json.dump({"step": state.global_step, "files": files}, marker, indent=2)
            marker.flush()
            os.fsync(marker.fileno())
        move_into_place(temporary, final)  # the same step saved again (a run resumed from an earlier one) replaces it
        if total_limit is not None:
            for old in run.checkpoints()[:-total_limit]:
                shutil.rmtree(old)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator,
    checkpoint: str | os.PathLike,
    state: TrainingState,
    ema: EMAModel | None = None,
    allow_missing_random_states: bool = False,
) -> None:
    """Restore a checkpoint written by `save_checkpoint` into the prepared objects, `state` and `ema`. Without
    `allow_missing_random_states`, a process whose RNG state file is absent (a damaged folder, or more processes
    than the run that saved it) refuses: the run would go on, but not as an uninterrupted one would."""
    checkpoint = Path(checkpoint)
    problem = checkpoint_problem(checkpoint, allow_missing_random_states)
    if problem is not None:
        raise ValueError(f"Cannot resume from {checkpoint}: {problem}.")
    random_states = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    if not random_states.is_file():
        if not allow_missing_random_states:
            raise ValueError(
                f"Cannot resume exactly from {checkpoint}: it has no {random_states.name} (RNG state of process "
                f"{accelerator.process_index}; was it saved by fewer processes?). Pass --allow_inexact_resume to "
                "resume with fresh random states."
            )
        logger.warning("Resuming from %s without %s: not exact.", checkpoint, random_states.name)
    has_ema = (checkpoint / EMA_FILE).is_file()
    if has_ema != (ema is not None):
        raise ValueError(
            f"{checkpoint} was saved {'with' if has_ema else 'without'} --use_ema; resume it the same way."
        )
    try:
        saved_state = json.loads((checkpoint / TRAINING_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"Cannot resume from {checkpoint}: {TRAINING_STATE_FILE} is not JSON ({error}).") from None
    state.load_state_dict(saved_state)
    if ema is not None:
        _load_ema(ema, checkpoint / EMA_FILE)
    accelerator.load_state(str(checkpoint))  # optimizer, scheduler, RNG states: torch.load(weights_only=True)


__all__ = [
    "CHECKPOINT_PREFIX",
    "COMPLETE_MARKER",
    "TrainingState",
    "checkpoint_problem",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]
