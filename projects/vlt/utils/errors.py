"""User errors, and how the tools report them: one clear message as the last line, a non-zero exit status, the full
traceback in ``log.txt`` (on the console too with ``VLT_DEBUG=1``).

A *user error* is a problem with what the user gave: missing or broken data, a bad config value, an unusable
checkpoint, an output that cannot be written. Two kinds of exceptions count as one:

- :class:`UserError` and its subclasses (which also subclass the built-in type callers already catch:
  ``InputError`` is a ``ValueError``, ``ConfigKeyError`` a ``KeyError``, ``MissingFileError`` a
  ``FileNotFoundError``, ``OutputError`` an ``OSError``);
- a ``ValueError``, ``KeyError``, ``FileNotFoundError`` or ``NotADirectoryError`` raised by a ``raise`` statement of
  VLT itself (the package or ``tools/``): VLT raises these only for checked conditions, with a message that names the
  file, key or value (the same type raised by an operation, e.g. a failed tuple unpacking, is a bug);
- the ``KeyError`` of a Detectron2 / fvcore registry: a config names a component that does not exist.

Anything else (a ``TypeError``, ``IndexError``, ``RuntimeError``, an ``AssertionError``, or any exception raised
inside torch / Detectron2 / numpy) is a programming error: it keeps its full traceback on the console.

Errors raised in another process arrive as text: Detectron2's launcher (``torch.multiprocessing``) re-raises a
worker's error as ``ProcessRaisedException`` and a ``DataLoader`` worker's error comes back as the original type with
the worker's traceback in its message. Both are classified by the innermost traceback they carry.
"""
import logging
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterable, List, Optional, Tuple

__all__ = [
    "UserError",
    "InputError",
    "ConfigKeyError",
    "MissingFileError",
    "OutputError",
    "is_user_error",
    "user_error_message",
    "debug_enabled",
    "log_traceback_to_files",
    "quiet_console_tracebacks",
    "setup_tool_logging",
    "LogErrors",
    "run_tool",
]

DEBUG_ENV = "VLT_DEBUG"
_VLT_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # the vlt package
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                 "tools"),
)
_CHECKED_NAMES = {"ValueError", "KeyError", "FileNotFoundError", "NotADirectoryError"}
# "  File "/path/x.py", line 12, in f" and "pkg.module.SomeError: message" lines of a formatted traceback.
_FRAME_LINE = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+')
_REGISTRY_FILE = os.path.join("fvcore", "common", "registry.py")
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(: (?P<message>.*))?$")


class UserError(Exception):
    """Base of the errors the user can fix (data, config, checkpoint, output); its message is the whole report."""

    def __str__(self):  # KeyError would quote its message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(UserError, ValueError):
    """Broken input: a corrupt image or label, a truncated checkpoint, a config value that cannot work."""


class ConfigKeyError(UserError, KeyError):
    """A config key that neither Detectron2 nor VLT defines (in a YAML file or a command-line override)."""


class MissingFileError(UserError, FileNotFoundError):
    """An input file or folder that does not exist."""


class OutputError(UserError, OSError):
    """An output that cannot be written (full disk, no permission); names the file and the reason."""


def debug_enabled() -> bool:
    """Whether ``VLT_DEBUG`` asks for full tracebacks on the console."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _checked_raise(name: str, where: Optional[Tuple[str, str]]) -> bool:
    """Whether an exception of type ``name`` raised at ``where`` = (file, source line) is a checked user error."""
    if where is None or name not in _CHECKED_NAMES:
        return False
    path, line = os.path.abspath(where[0]), where[1].strip()
    if name == "KeyError" and path.endswith(_REGISTRY_FILE):
        return True
    return line.startswith("raise") and any(path.startswith(d + os.sep) for d in _VLT_DIRS)


def _embedded_traceback(text: str) -> Optional[Tuple[str, str, Tuple[str, str]]]:
    """(type name, message, (file, source line) of the raising frame) of the innermost exception in a formatted
    traceback."""
    lines = text.rstrip().splitlines()
    last_frame = max((i for i, line in enumerate(lines) if _FRAME_LINE.match(line)), default=None)
    if last_frame is None:
        return None
    # The exception line follows the frame's source line; a message may span several lines.
    for start in range(last_frame + 1, len(lines)):
        match = _EXCEPTION_LINE.match(lines[start])
        if match and not lines[start].startswith(" "):
            message = "\n".join([match.group("message") or ""] + lines[start + 1 :]).strip()
            source = lines[last_frame + 1] if last_frame + 1 < start else ""
            return match.group("type"), message, (_FRAME_LINE.match(lines[last_frame]).group("file"), source)
    return None


def _raised_in(exc: BaseException) -> Optional[Tuple[str, str]]:
    """(file, source line) of the frame that raised ``exc``."""
    tb = exc.__traceback__
    if tb is None:
        return None
    frame = traceback.extract_tb(tb)[-1]
    return frame.filename, frame.line or ""


def _unwrap(exc: BaseException) -> Tuple[str, str, Optional[Tuple[str, str]], bool]:
    """(type name, message, (file, line) that raised it, is a UserError) of ``exc``, looking inside errors of other
    processes."""
    text = str(exc.args[0]) if exc.args else ""
    if "Traceback (most recent call last)" in text:  # DataLoader worker / torch.multiprocessing error
        found = _embedded_traceback(text)
        if found is not None:
            name, message, where = found
            short = name.rsplit(".", 1)[-1]
            return short, message, where, name.startswith("vlt.") and short in _user_error_names()
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return type(exc).__name__, str(message), _raised_in(exc), isinstance(exc, UserError)


def _user_error_names() -> set:
    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user error (see the module docstring), also when it came from another process."""
    name, _, where, user = _unwrap(exc)
    return user or _checked_raise(name, where)


def user_error_message(exc: BaseException) -> str:
    """The message of a user error (of the innermost error when it came from another process)."""
    return _unwrap(exc)[1]


def _file_handlers(logger_names: Iterable[str]) -> List[logging.Handler]:
    """Handlers of the named loggers that write to files (not the console), one per file."""
    found, streams = [], set()
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if stream is None or stream in (sys.stdout, sys.stderr) or id(stream) in streams:
                continue
            streams.add(id(stream))
            found.append(handler)
    return found


def log_traceback_to_files(exc: BaseException, logger_names: Iterable[str] = ("vlt", "detectron2")) -> List[str]:
    """Write ``exc`` with its traceback to the log files (log.txt) the named loggers write to, not the console.
    Returns the names of those files."""
    handlers = _file_handlers(logger_names)
    record = logging.getLogger("vlt").makeRecord(
        "vlt", logging.ERROR, __file__, 0, "%s", (f"{type(exc).__name__}: {user_error_message(exc)}",),
        (type(exc), exc, exc.__traceback__),
    )
    for handler in handlers:
        handler.handle(record)
        handler.flush()
    return [getattr(h.stream, "name", "?") for h in handlers]


class _QuietUserErrors(logging.Filter):
    """Console filter: drops records that carry a user error's traceback (the tool prints its message last)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and not debug_enabled():
            return not is_user_error(record.exc_info[1])
        return True


def quiet_console_tracebacks(logger_names: Iterable[str] = ("detectron2", "fvcore", "vlt")) -> None:
    """Keep user-error tracebacks that libraries log (Detectron2's "Exception during training:") off the console
    handlers of the named loggers; log files still get them."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if stream in (sys.stdout, sys.stderr) and not any(isinstance(f, _QuietUserErrors) for f in handler.filters):
                handler.addFilter(_QuietUserErrors())


def setup_tool_logging(output_dir: str = "", names: Iterable[str] = ("detectron2", "fvcore", "vlt")) -> None:
    """Detectron2's console + ``<output_dir>/log.txt`` logging for the named loggers (a tool outside train_net.py's
    default_setup), with user-error tracebacks kept off the console (:func:`quiet_console_tracebacks`)."""
    from detectron2.utils.logger import setup_logger

    for name in names:
        setup_logger(output_dir or None, name=name, abbrev_name={"detectron2": "d2"}.get(name, name))
    quiet_console_tracebacks(names)


class LogErrors:
    """``fn`` wrapped so that an exception is written to the process's log files before it propagates (picklable,
    for Detectron2's launcher: each process logs to its own log.txt / log.txt.rank<N>)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        try:
            return self.fn(*args, **kwargs)
        except Exception as e:
            e.vlt_log_files = log_traceback_to_files(e)
            raise


def run_tool(fn: Callable[..., Any], *args, **kwargs) -> int:
    """Run a tool's entry point; the exit status for ``sys.exit``.

    Returns ``fn``'s integer result (0 for None). A user error: its traceback goes to the log files (and the
    console with VLT_DEBUG=1), its message is printed to stderr as the last line, and the status is 1. Any other
    exception propagates with its traceback (Python exits with status 1).
    """
    try:
        result = fn(*args, **kwargs)
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:
        if not is_user_error(e):
            raise
        files = getattr(e, "vlt_log_files", None) or log_traceback_to_files(e)
        if debug_enabled():
            traceback.print_exc()
        else:
            where = f"traceback in {', '.join(files)}; " if files else ""
            if not files and "Traceback (most recent call last)" in str(e.args[0] if e.args else ""):
                where = "traceback in the failing process's log.txt; "
            print(f"({where}{DEBUG_ENV}=1 prints it here)", file=sys.stderr)
        print(f"Error: {user_error_message(e)}", file=sys.stderr)
        return 1
    return int(result) if isinstance(result, (int, bool)) else 0
