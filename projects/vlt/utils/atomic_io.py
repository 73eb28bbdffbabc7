"""Atomic file writes: every checkpoint, table, export zip and style bank is written to a temporary file in the target's
folder and renamed onto the target once complete, so a crash or a full disk never leaves a truncated file under the
real name (and an older complete file stays in place). A failed write raises :class:`~vlt.utils.errors.OutputError`
naming the target and the reason, and removes the temporary file.
"""
import contextlib
import os
import tempfile
from typing import IO, Any, Iterator

from .errors import OutputError

__all__ = ["atomic_write", "atomic_torch_save"]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(path, "wb") as f: ...``: ``f`` is a temporary file next to ``path``; on a clean exit it
    is flushed, synced and renamed to ``path`` (replacing it), on an error removed.

    Errors of writing (OSError: full disk, permissions, a missing folder) become :class:`OutputError` naming
    ``path``; other exceptions raised inside the block propagate unchanged (the temporary file is removed too).
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write writes new files: mode 'w', 'wt' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OutputError(f"Cannot write '{path}': {e.strerror or e}") from e
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"Cannot write '{path}': {e.strerror or e}") from e
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _WriteErrorRecorder:
    """File wrapper that remembers the OSError of a failed write: torch.save reports it as an opaque RuntimeError
    ("unexpected pos ...")."""

    def __init__(self, file: IO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write` (a full disk is reported as such, naming ``path``)."""
    import torch

    with atomic_write(path, "wb") as f:
        recorder = _WriteErrorRecorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError as e:
            if recorder.error is not None:
                raise recorder.error from e  # the real reason (e.g. ENOSPC)
            if any(k in str(e) for k in ("PytorchStreamWriter", "inline_container", "unexpected pos")):
                raise OSError(f"torch's writer failed ({str(e).strip().splitlines()[0]})") from e
            raise
