"""The layout of a training run's output folder (`--output_dir`), in one place:

    OUTPUT_DIR/
        (the trained model or pipeline, written at the end with `io_utils.write_folder_atomically`) + README.md
        checkpoints/checkpoint-{step}/   resumable checkpoints (`checkpointing.py`)
        logs/metrics.jsonl               one JSON line per logged step (plus the trackers' own files in logs/)
        validation/step-{step:06d}.png   sample grids (train_vae.py: reconstructions/)
        .tmp-*                           temporaries of unfinished writes (`io_utils`), removed once stale

A run resumes from any folder of this layout, whichever version of the scripts wrote it.
"""

import os
import re
import shutil
from pathlib import Path

from ..io_utils import remove_stale_temporaries, temporary_path


# `--overwrite_output_dir` clears a folder only if it holds one of these: what every run writes first.
_RUN_MARKERS = ("checkpoints", "logs")


CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
# The owner in the temporary name of a checkpoint: every process writes into it (see `io_utils.temporary_path`).
_CHECKPOINT_OWNER = "ranks"


class RunFolder:
    """Paths of the parts of a run's output folder (see the module docstring)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir)
        self.checkpoints_dir = self.path / "checkpoints"
        self.logs_dir = self.path / "logs"
        self.metrics_file = self.logs_dir / "metrics.jsonl"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoint_temporary(self, step: int) -> Path:
        """Where every process writes the checkpoint of `step` before it is renamed to `checkpoint(step)`."""
        return temporary_path(self.checkpoint(step), owner=_CHECKPOINT_OWNER)

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders, oldest first (temporaries of unfinished saves are not listed; see
        `checkpointing.checkpoint_problem` for whether one is complete)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [
            (int(m.group(1)), path)
            for path in self.checkpoints_dir.iterdir()
            if (m := _CHECKPOINT_NAME.match(path.name)) and path.is_dir()
        ]
        return [path for _, path in sorted(found)]

    def sample_grid(self, step: int, folder: str = "validation") -> Path:
        return self.path / folder / f"step-{step:06d}.png"

    def is_used(self) -> bool:
        """Whether the folder exists and holds anything (a run, or other files)."""
        return self.path.is_dir() and any(self.path.iterdir())

    def check_unused(self, resume: bool, overwrite: bool) -> None:
        """Refuse (a `ValueError`) to train into a used folder unless the user said what to do with it: resume the run
        there (`--resume_from_checkpoint`) or start over (`--overwrite_output_dir`, only for a run's folder); a new
        run beside an old one would mix their checkpoints (`latest` would resume the old one) and metrics."""
        if resume and overwrite:
            raise ValueError("Pass either --resume_from_checkpoint or --overwrite_output_dir, not both.")
        if resume or not self.is_used():
            return
        if not overwrite:
            raise ValueError(
                f"--output_dir {str(self.path)!r} is not empty. Pass --resume_from_checkpoint latest to continue the "
                "run there, --overwrite_output_dir to delete it and start over, or choose another --output_dir."
            )
        if not any((self.path / name).is_dir() for name in _RUN_MARKERS):
            raise ValueError(
                f"--overwrite_output_dir deletes only a training run's folder (one with {' or '.join(_RUN_MARKERS)}/), "
                f"and {str(self.path)!r} holds other files: remove them yourself or choose another --output_dir."
            )

    def clear(self) -> None:
        """Delete the folder's contents for `--overwrite_output_dir` (after `check_unused`): it is first renamed to a
        temporary name beside it, so that a run never sees half of the old one, then removed."""
        if not self.is_used():
            return
        old = temporary_path(self.path)  # a kill mid-way leaves a stale temporary of a dead process, not a half run
        self.path.rename(old)
        shutil.rmtree(old)
        self.path.mkdir()

    def remove_stale_temporaries(self) -> None:
        """Delete what writes killed in a past run left: a final save's temporary folder in the run folder, a
        checkpoint's in `checkpoints/`. Call it on the main process while no other process writes a checkpoint."""
        remove_stale_temporaries(self.path)
        remove_stale_temporaries(self.checkpoints_dir)


__all__ = ["CHECKPOINT_PREFIX", "RunFolder"]
