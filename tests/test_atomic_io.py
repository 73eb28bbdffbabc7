"""Atomic writes: a failing write (full disk, simulated by a writer that fails mid-file) leaves the previous file
intact, no temporary file, and one OutputError naming the file and the reason."""
import errno
import os

import pytest
import torch

from vlt.utils.atomic_io import atomic_torch_save, atomic_write
from vlt.utils.errors import OutputError


def test_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    with atomic_write(str(path)) as f:
        f.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["table.json"]


def test_failed_write_keeps_the_old_file_and_names_the_target(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    with pytest.raises(OutputError, match=r"Cannot write '.*table\.json': No space left on device") as info:
        with atomic_write(str(path)) as f:
            f.write("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(info.value, OSError)  # callers catching OSError still do
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["table.json"]


def test_programming_errors_inside_the_block_propagate_unchanged(tmp_path):
    with pytest.raises(KeyError):
        with atomic_write(str(tmp_path / "x.json")) as f:
            f.write("{")
            raise KeyError("bug")
    assert os.listdir(tmp_path) == []


def test_torch_save_on_a_full_disk_says_so(tmp_path, full_disk):
    """torch.save reports a failed write of its file object as an opaque RuntimeError; the OSError is recovered."""
    path = tmp_path / "model_final.pth"
    atomic_torch_save({"w": torch.ones(3)}, str(path))
    full_disk(limit=2000)
    with pytest.raises(OutputError, match=r"model_final\.pth': No space left on device"):
        atomic_torch_save({"w": torch.zeros(10000)}, str(path))
    assert os.listdir(tmp_path) == ["model_final.pth"]  # the complete older file, no temporary file
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
