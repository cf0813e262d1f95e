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
from pathlib import Path

from ..io_utils import remove_stale_temporaries, temporary_path


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

    def remove_stale_temporaries(self) -> None:
        """Delete what writes killed in a past run left: a final save's temporary folder in the run folder, a
        checkpoint's in `checkpoints/`. Call it on the main process while no other process writes a checkpoint."""
        remove_stale_temporaries(self.path)
        remove_stale_temporaries(self.checkpoints_dir)


__all__ = ["CHECKPOINT_PREFIX", "RunFolder"]
