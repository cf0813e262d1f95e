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
`checkpoint_complete.json`, the size and SHA-256 of every other file: a checkpoint is complete when that marker is
there and every file it lists has its size and checksum (markers of older versions hold sizes only).
`--resume_from_checkpoint latest` takes the newest complete checkpoint, passing over damaged ones.

Resuming verifies every state before it is restored ([`verify_checkpoint`]): the files against the marker, the
progress in `training_state.json` against the checkpoint's step, the weights, the EMA and the optimizer state finite,
the RNG states readable, and every pickle readable with `torch.load(weights_only=True)` (a refused one is named, with
the reason and without torch's advice to load it unsafely). A damaged or missing RNG state is refused unless
`--allow_inexact_resume` (the run would go on, but draw other noise than an uninterrupted one); anything else damaged
is always refused, naming the file.
"""

import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..hub_utils import sha256_of
from ..io_utils import move_into_place, remove_stale_temporaries
from ..loading_utils import unpickling_reason
from .run_folder import CHECKPOINT_PREFIX, RunFolder


logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
TRAINING_STATE_FILE = "training_state.json"
EMA_FILE = "ema.safetensors"
_RANDOM_STATES = re.compile(r"^random_states_\d+\.pkl$")
_PICKLED_CUSTOM_STATE = re.compile(r"^custom_checkpoint_\d+\.pkl$")
# The files Accelerate writes with `torch.save` (optimizer, scheduler, sampler, gradient scaler, RNG states).
_PICKLED_SUFFIXES = (".bin", ".pt", ".pkl")


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
        negative = [f"{name}={value}" for name, value in state.items() if value < 0]
        if negative:
            raise ValueError(f"Not a TrainingState: {', '.join(negative)} (counts are never negative).")
        vars(self).update(state)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint folders of a run, oldest first (see `RunFolder.checkpoints`)."""
    return RunFolder(output_dir).checkpoints()


def _damaged_files(checkpoint: Path) -> tuple[str | None, list[str], list[str]]:
    """`(problem, missing, damaged)`: what makes the folder no checkpoint at all (no marker, pickled custom states),
    else the files its marker lists that are missing, and those whose size or SHA-256 is not the recorded one."""
    if not checkpoint.is_dir():
        return "there is no such folder", [], []
    pickled = sorted(p.name for p in checkpoint.iterdir() if _PICKLED_CUSTOM_STATE.match(p.name))
    if pickled:
        return f"it holds pickled states {pickled}, which are not loaded (they could run code)", [], []
    try:
        marker = json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))
        files, checksums = marker["files"], marker.get("sha256", {})
        sizes = {str(name): int(size) for name, size in files.items()}
        checksums = {str(name): str(digest) for name, digest in checksums.items()}
    except FileNotFoundError:
        return (
            f"it has no {COMPLETE_MARKER} (not a checkpoint of these scripts, or a save that did not finish)",
            [],
            [],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"its {COMPLETE_MARKER} is damaged ({error!r})", [], []
    missing, damaged = [], []
    for name, size in sorted(sizes.items()):
        path = checkpoint / name
        if not path.resolve().is_relative_to(checkpoint.resolve()):
            return f"its {COMPLETE_MARKER} names a file outside the checkpoint ({name!r})", [], []
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != size or (name in checksums and sha256_of(path) != checksums[name]):
            damaged.append(name)
    return None, missing, damaged


def _problem(found: tuple[str | None, list[str], list[str]], allow_inexact_resume: bool) -> str | None:
    """What `_damaged_files` found, in words, or `None` if nothing that `allow_inexact_resume` does not excuse."""
    problem, missing, damaged = found
    if problem is not None:
        return problem
    if allow_inexact_resume:
        missing, damaged = ([name for name in names if not _RANDOM_STATES.match(name)] for names in (missing, damaged))
    if not missing and not damaged:
        return None
    kinds = (("missing:", missing), ("of the wrong size or SHA-256 (damaged since they were saved):", damaged))
    return "files are " + "; ".join(f"{kind} {names}" for kind, names in kinds if names)


def checkpoint_problem(checkpoint: str | os.PathLike, allow_inexact_resume: bool = False) -> str | None:
    """Why `checkpoint` cannot be resumed from (missing marker, missing files, files whose size or SHA-256 differs from
    the marker's, pickled custom states), or `None` if it is complete. With `allow_inexact_resume`, missing or damaged
    `random_states_*.pkl` are tolerated."""
    return _problem(_damaged_files(Path(checkpoint)), allow_inexact_resume)


def resolve_checkpoint(
    output_dir: str | os.PathLike, resume_from_checkpoint: str | None, allow_inexact_resume: bool = False
) -> Path | None:
    """`--resume_from_checkpoint`: `None` (start fresh), `"latest"` (the newest complete checkpoint of `output_dir`,
    passing over damaged ones, or `None` if there is none yet), or the path of a checkpoint folder, which must be
    complete (`checkpoint_problem`)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        for checkpoint in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(checkpoint, allow_inexact_resume)
            if problem is None:
                return checkpoint
            logger.warning("Passing over the damaged checkpoint %s: %s.", checkpoint, problem)
        logger.info("No complete checkpoint in %s yet: starting from scratch.", RunFolder(output_dir).checkpoints_dir)
        return None
    problem = checkpoint_problem(resume_from_checkpoint, allow_inexact_resume)
    if problem is not None:
        found = [p.name for p in list_checkpoints(output_dir) if checkpoint_problem(p) is None]
        raise ValueError(
            f"--resume_from_checkpoint {str(resume_from_checkpoint)!r} is not a complete checkpoint: {problem}. Pass "
            f"a {CHECKPOINT_PREFIX}<step> folder written by the training scripts, or 'latest' (complete checkpoints "
            f"in {RunFolder(output_dir).checkpoints_dir}: {found})."
            + (
                " To resume without the RNG states (not exact: the noise differs from an uninterrupted run), pass "
                "--allow_inexact_resume."
                if "random_states_" in problem and not allow_inexact_resume
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
        paths = {str(p.relative_to(temporary)): p for p in sorted(temporary.rglob("*")) if p.is_file()}
        files = {name: path.stat().st_size for name, path in paths.items()}
        checksums = {name: sha256_of(path) for name, path in paths.items()}
        with open(
            temporary / COMPLETE_MARKER, "w", encoding="utf-8"
        ) as marker:  # written last: see checkpoint_problem
            json.dump({"step": state.global_step, "files": files, "sha256": checksums}, marker, indent=2)
            marker.flush()
            os.fsync(marker.fileno())
        move_into_place(temporary, final)  # the same step saved again (a run resumed from an earlier one) replaces it
        if total_limit is not None:
            for old in run.checkpoints()[:-total_limit]:
                shutil.rmtree(old)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in a loaded state (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def verify_checkpoint(
    checkpoint: str | os.PathLike, process_index: int = 0, allow_inexact_resume: bool = False
) -> dict:
    """
    Check every state a resume restores from `checkpoint`, before any is restored (see the module docstring), and
    return the saved `TrainingState` fields. Raises a `ValueError` that names the file and what is wrong with it. With
    `allow_inexact_resume`, a missing or damaged RNG state only warns.
    """
    checkpoint = Path(checkpoint)

    def refuse(problem: str):
        return ValueError(f"Cannot resume from {checkpoint}: {problem}.")

    found = _damaged_files(checkpoint)
    problem = _problem(found, allow_inexact_resume)
    if problem is not None:
        inexact = ". Pass --allow_inexact_resume to resume with fresh random states (not exact)"
        raise refuse(problem + (inexact if "random_states_" in problem else ""))
    random_states = checkpoint / f"random_states_{process_index}.pkl"
    if not random_states.is_file():
        if not allow_inexact_resume:
            raise refuse(
                f"it has no {random_states.name} (RNG state of process {process_index}; was it saved by fewer "
                "processes?). Pass --allow_inexact_resume to resume with fresh random states"
            )
        logger.warning("Resuming from %s without %s: not exact.", checkpoint, random_states.name)
    for name in found[2]:  # only RNG states are left damaged here (allow_inexact_resume)
        logger.warning("Resuming from %s with a damaged %s: not exact.", checkpoint, name)

    # The progress, consistent with the checkpoint it was saved in.
    try:
        saved_state = json.loads((checkpoint / TRAINING_STATE_FILE).read_text(encoding="utf-8"))
        TrainingState().load_state_dict(saved_state)
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise refuse(f"{TRAINING_STATE_FILE} is not a saved TrainingState ({error})") from None
    marker_step = json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8")).get("step")
    named = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", checkpoint.name)
    steps = {"its " + COMPLETE_MARKER: marker_step, "the folder's name": int(named[1]) if named else None}
    for where, step in steps.items():
        if step is not None and step != saved_state["global_step"]:
            raise refuse(f"{TRAINING_STATE_FILE} says step {saved_state['global_step']}, but {where} says step {step}")

    # The weights (model, EMA): finite.
    for path in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(path, "pt") as file:
                for key in file.keys():
                    if not torch.isfinite(file.get_tensor(key)).all():
                        raise refuse(f"{path.name} holds NaN or infinite values in {key!r}")
        except (OSError, SafetensorError) as error:
            raise refuse(f"{path.name} is not a readable safetensors file ({error})") from None

    # The pickles Accelerate restores, read as it reads them (torch.load(weights_only=True)): data only, finite.
    for path in sorted(p for p in checkpoint.iterdir() if p.suffix in _PICKLED_SUFFIXES and p.is_file()):
        try:
            loaded = accelerate_load(path, map_location="cpu", mmap=True)
        except pickle.UnpicklingError as error:
            raise refuse(
                f"{path.name} holds objects other than tensors and plain data, and is not loaded for safety. "
                f"{unpickling_reason(error)}"
            ) from None
        except Exception as error:  # anything else torch.load raises on a damaged file
            if _RANDOM_STATES.match(path.name) and allow_inexact_resume:
                logger.warning("Resuming from %s without the unreadable %s: not exact.", checkpoint, path.name)
                continue
            raise refuse(f"{path.name} is not a readable torch.save file ({error!r})") from None
        non_finite = [t for t in _tensors(loaded) if t.is_floating_point() and not torch.isfinite(t).all()]
        if non_finite:
            raise refuse(f"{path.name} holds NaN or infinite values (e.g. a diverged optimizer state)")
    return saved_state


def load_checkpoint(
    accelerator: Accelerator,
    checkpoint: str | os.PathLike,
    state: TrainingState,
    ema: EMAModel | None = None,
    allow_inexact_resume: bool = False,
) -> None:
    """Restore a checkpoint written by `save_checkpoint` into the prepared objects, `state` and `ema`, once every
    state in it is verified ([`verify_checkpoint`]). Without `allow_inexact_resume`, a process whose RNG state file is
    absent (a damaged folder, or more processes than the run that saved it) or damaged refuses: the run would go on,
    but not as an uninterrupted one would."""
    checkpoint = Path(checkpoint)
    saved_state = verify_checkpoint(checkpoint, accelerator.process_index, allow_inexact_resume)
    has_ema = (checkpoint / EMA_FILE).is_file()
    if has_ema != (ema is not None):
        raise ValueError(
            f"{checkpoint} was saved {'with' if has_ema else 'without'} --use_ema; resume it the same way."
        )
    state.load_state_dict(saved_state)
    if ema is not None:
        _load_ema(ema, checkpoint / EMA_FILE)
    accelerator.load_state(str(checkpoint))  # model, optimizer, scheduler, RNG states: torch.load(weights_only=True)


__all__ = [
    "CHECKPOINT_PREFIX",
    "COMPLETE_MARKER",
    "TrainingState",
    "checkpoint_problem",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]
