"""Atomic writes: a reader finds a file or folder whole or not at all, whatever stops the writer.

Everything is written under a temporary name first and moved into place with `os.replace` (atomic within one
filesystem). The one naming scheme, [`temporary_path`]: `.tmp-{owner}-{name}`, hidden, beside the target (or inside
the folder it writes into), `owner` being the id of the writing process. [`remove_stale_temporaries`] deletes what a
killed writer left and keeps the temporaries of live ones (another rank of the same job writing into the folder).

- [`write_file_atomically`]: one file.
- [`write_folder_atomically`]: entries added to a folder together (moved in one by one, replacing entries of the same
  name), e.g. a model folder's files into an output folder that also holds logs and checkpoints.
- [`replace_folder_atomically`]: a whole folder that appears at once, replacing the previous one.
- [`move_into_place`]: the last step of that for a temporary folder filled by other means (a checkpoint, which every
  process of a training job writes into).
- [`check_output_dir`]: an output folder created and found writable before the work whose results go there.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


logger = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".tmp-"


def temporary_path(target: str | os.PathLike, owner: int | str | None = None) -> Path:
    """Where `target` is written before it is moved into place: `.tmp-{owner}-{name}` beside it. `owner` is this
    process's id by default; a folder that several processes fill together (a checkpoint) names an owner they all
    know, and is then stale whenever its owner is not a live process id (see [`remove_stale_temporaries`])."""
    target = Path(target)
    return target.with_name(f"{TEMPORARY_PREFIX}{os.getpid() if owner is None else owner}-{target.name}")


def _owner_is_alive(owner: str) -> bool:
    """Whether `owner` (the tag of a temporary name) is the id of a process running on this machine."""
    if not owner.isdigit():
        return False
    try:
        os.kill(int(owner), 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, target_name: str | None = None) -> None:
    """Delete the temporaries in `folder` (see [`temporary_path`]) whose owner is not a live process: what writers
    killed mid-write left. With `target_name`, only the temporaries of that target (for folders that are not ours
    alone, such as the parent of an output folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.glob(f"{TEMPORARY_PREFIX}*"):
        owner, _, name = entry.name[len(TEMPORARY_PREFIX) :].partition("-")
        if target_name is not None and name not in (target_name, f"{target_name}.old"):
            continue
        if _owner_is_alive(owner):
            continue
        logger.info("Removing %s, left by an interrupted write.", entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary_file)` (e.g. `lambda p: p.write_text(text)`, `lambda p: image.save(p, format="PNG")`),
    then move the file to `path`, creating its folder if needed. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    temporary = temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_folder_atomically(output_dir: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(temporary_folder)`, then move what it wrote into `output_dir` entry by entry (replacing entries of
    the same name), so an interrupted save leaves no half-written file there. The temporary folder lies inside
    `output_dir` (one filesystem even when `output_dir` is a mount point). Several processes may write into one
    `output_dir` at once (the ranks of `scripts/generate.py`): each removes only the temporaries of dead ones."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)
    temporary = temporary_path(output_dir / "entries")  # `.tmp-{pid}-entries` inside `output_dir`
    _remove(temporary)  # left by a killed process whose id this one reuses
    temporary.mkdir()
    try:
        write(temporary)
        for entry in sorted(temporary.iterdir()):
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def move_into_place(temporary: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the complete folder `temporary` to `target`. A `target` that exists is first renamed aside and deleted
    once the new folder is in place: at every moment the old or the new folder is whole under its own name."""
    temporary, target = Path(temporary), Path(target)
    if not target.exists():
        os.replace(temporary, target)
        return target
    previous = temporary_path(target.with_name(f"{target.name}.old"))
    _remove(previous)
    os.replace(target, previous)
    os.replace(temporary, target)
    _remove(previous)
    return target


def replace_folder_atomically(output_dir: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary_folder)`, then put that folder in place of `output_dir` ([`move_into_place`]): readers
    see the old folder or the new one, whole. Returns `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir.parent, output_dir.name)
    temporary = temporary_path(output_dir)
    _remove(temporary)  # left by a killed process whose id this one reuses
    temporary.mkdir()
    try:
        write(temporary)
        return move_into_place(temporary, output_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def check_output_dir(output_dir: str | os.PathLike, argument: str = "--output_dir") -> Path:
    """Create `output_dir` (the command line's `argument`) if needed and check that a file can be written there, before
    any work: a `ValueError` naming the argument and why otherwise (a file in the way, no permission, a read-only
    filesystem), rather than a failure once the work is done."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=TEMPORARY_PREFIX):
            pass
    except OSError as error:
        raise ValueError(f"{argument} {os.fspath(output_dir)!r} cannot be written to: {error.strerror}.") from None
    return path


__all__ = [
    "TEMPORARY_PREFIX",
    "check_output_dir",
    "move_into_place",
    "remove_stale_temporaries",
    "replace_folder_atomically",
    "temporary_path",
    "write_file_atomically",
    "write_folder_atomically",
]
