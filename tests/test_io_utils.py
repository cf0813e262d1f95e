"""Atomic writes (hf_dalle.io_utils): a write that fails part-way leaves the old file or folder whole and no temporary
behind; stale temporaries of dead writers are removed, those of live ones kept."""

import os
import subprocess
import sys

import pytest

from hf_dalle.io_utils import (
    TEMPORARY_PREFIX,
    move_into_place,
    remove_stale_temporaries,
    replace_folder_atomically,
    temporary_path,
    write_file_atomically,
    write_folder_atomically,
)


class Interrupt(Exception):
    pass


@pytest.fixture
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_one_naming_scheme(tmp_path):
    assert temporary_path(tmp_path / "model.safetensors") == tmp_path / f".tmp-{os.getpid()}-model.safetensors"
    assert temporary_path(tmp_path / "checkpoint-4", owner="ranks") == tmp_path / ".tmp-ranks-checkpoint-4"
    assert TEMPORARY_PREFIX == ".tmp-"


def test_write_file_atomically(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    assert write_file_atomically(path, lambda p: p.write_text("old")) == path  # creates the folder

    def torn(temporary):
        temporary.write_text("half")
        raise Interrupt()

    with pytest.raises(Interrupt):
        write_file_atomically(path, torn)
    assert path.read_text() == "old"
    assert os.listdir(path.parent) == ["a.txt"]  # no temporary left
    write_file_atomically(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and os.listdir(path.parent) == ["a.txt"]


def test_write_folder_atomically_adds_entries_together(tmp_path):
    (tmp_path / "keep.txt").write_text("keep")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.bin").write_text("old")

    def torn(folder):
        (folder / "config.json").write_text("{}")
        raise Interrupt()

    with pytest.raises(Interrupt):
        write_folder_atomically(tmp_path, torn)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "model"]  # nothing of the torn write, no temporary

    def write(folder):
        (folder / "config.json").write_text("{}")
        (folder / "model").mkdir()
        (folder / "model" / "new.bin").write_text("new")

    write_folder_atomically(tmp_path, write)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "keep.txt", "model"]
    assert os.listdir(tmp_path / "model") == ["new.bin"]  # an entry of the same name is replaced whole


def test_write_folder_atomically_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_folder_atomically(".", lambda folder: (folder / "a.txt").write_text("a"))
    assert os.listdir(tmp_path) == ["a.txt"]


def test_concurrent_writers_keep_each_others_temporary_folders(tmp_path, live_pid, dead_pid):
    """Ranks writing into one folder at once (scripts/generate.py): a save removes the temporary folders of dead
    writers only, never the one a live process is filling."""
    for pid in (live_pid, dead_pid):
        (tmp_path / f"{TEMPORARY_PREFIX}{pid}-abc").mkdir()
    (tmp_path / f"{TEMPORARY_PREFIX}untagged").mkdir()  # no process id: an older writer's, or a job's checkpoint
    write_folder_atomically(tmp_path, lambda folder: (folder / "a.txt").write_text("a"))
    assert sorted(os.listdir(tmp_path)) == sorted(["a.txt", f"{TEMPORARY_PREFIX}{live_pid}-abc"])


def test_replace_folder_atomically(tmp_path, dead_pid):
    target = tmp_path / "data"
    stale = tmp_path / f"{TEMPORARY_PREFIX}{dead_pid}-data"  # a killed writer's
    other = tmp_path / f"{TEMPORARY_PREFIX}{dead_pid}-other"  # of another target: not ours to remove
    stale.mkdir()
    other.mkdir()
    replace_folder_atomically(target, lambda folder: (folder / "a.txt").write_text("a"))
    assert os.listdir(target) == ["a.txt"]
    assert sorted(os.listdir(tmp_path)) == sorted(["data", other.name])

    def torn(folder):
        (folder / "b.txt").write_text("b")
        raise Interrupt()

    with pytest.raises(Interrupt):
        replace_folder_atomically(target, torn)
    assert os.listdir(target) == ["a.txt"]  # the old folder, whole
    assert sorted(os.listdir(tmp_path)) == sorted(["data", other.name])

    replace_folder_atomically(target, lambda folder: (folder / "b.txt").write_text("b"))
    assert os.listdir(target) == ["b.txt"]  # replaced as a whole: nothing of the old folder is left
    assert sorted(os.listdir(tmp_path)) == sorted(["data", other.name])


def test_move_into_place_replaces_a_folder(tmp_path):
    new, target = tmp_path / ".tmp-ranks-checkpoint-2", tmp_path / "checkpoint-2"
    for folder, name in ((new, "new"), (target, "old")):
        folder.mkdir()
        (folder / name).write_text(name)
    assert move_into_place(new, target) == target
    assert os.listdir(tmp_path) == ["checkpoint-2"] and os.listdir(target) == ["new"]


def test_remove_stale_temporaries_of_one_target(tmp_path, live_pid, dead_pid):
    names = [
        f".tmp-{dead_pid}-a.txt",
        f".tmp-{dead_pid}-a.txt.old",
        f".tmp-{live_pid}-a.txt",
        f".tmp-{dead_pid}-b.txt",
        ".tmp-a.txt",  # not a name of this scheme for a.txt (owner "a.txt" would be read as the owner)
        "a.txt",
    ]
    for name in names:
        (tmp_path / name).write_text("x")
    remove_stale_temporaries(tmp_path, "a.txt")
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f".tmp-{live_pid}-a.txt", f".tmp-{dead_pid}-b.txt", ".tmp-a.txt", "a.txt"]
    )
    remove_stale_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([f".tmp-{live_pid}-a.txt", "a.txt"])
    remove_stale_temporaries(tmp_path / "missing")  # no folder, nothing to do
