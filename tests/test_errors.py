"""vlt.utils.errors: which exceptions are user errors, and how run_tool reports them (last line, exit status, log)."""
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from detectron2.utils.logger import setup_logger

from vlt.data.semantic_mapper import read_image
from vlt.utils.config import load_config
from vlt.utils.errors import (
    InputError,
    LogErrors,
    is_user_error,
    quiet_console_tracebacks,
    run_tool,
    user_error_message,
)


def raised(fn, *args):
    try:
        fn(*args)
    except Exception as e:
        return e
    raise AssertionError("no exception")


def test_user_errors_and_programming_errors_are_told_apart(tmp_path):
    assert is_user_error(raised(read_image, str(tmp_path / "absent.png")))  # MissingFileError
    assert is_user_error(raised(load_config, "configs/Base-VLT.yaml", ["MODEL.NOPE", "1"]))  # ConfigKeyError
    from vlt.data.semantic_mapper import evaluation_resize_shape

    assert is_user_error(raised(evaluation_resize_shape, 1, 1, "bogus"))  # a checked ValueError raised by VLT
    assert not is_user_error(raised(np.zeros(3).reshape, 7))  # a ValueError raised inside numpy
    assert not is_user_error(raised(lambda: [][1]))  # IndexError: a bug
    assert not is_user_error(raised(lambda: int("x")))  # ValueError raised outside VLT (here: the test)
    from detectron2.modeling import build_model

    unknown = raised(build_model, load_config("configs/Base-VLT.yaml", ["MODEL.META_ARCHITECTURE", "NoSuchArch"]))
    assert is_user_error(unknown) and "NoSuchArch" in user_error_message(unknown)  # a registry's KeyError
    unpacking = RuntimeError(  # a ValueError of an operation in VLT code (not a raise statement) is a bug
        f'Traceback (most recent call last):\n  File "{sys.modules["vlt"].__path__[0]}/data/transforms.py", line 3, '
        "in f\n    height, width = size\nValueError: not enough values to unpack (expected 2, got 1)\n"
    )
    assert not is_user_error(unpacking)
    assert str(InputError("Label 'x.png' cannot be decoded")) == "Label 'x.png' cannot be decoded"


def test_errors_of_other_processes_are_read_from_their_traceback(tmp_path):
    """A DataLoader worker's error comes back with the worker's traceback in its message; so does a launcher
    worker's (torch.multiprocessing's ProcessRaisedException)."""
    path = tmp_path / "cut.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated")

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return torch.from_numpy(read_image(str(path)))

    loader = torch.utils.data.DataLoader(Images(), num_workers=1, multiprocessing_context="fork")
    error = raised(lambda: next(iter(loader)))
    assert "Original Traceback" in str(error) and is_user_error(error)
    assert user_error_message(error) == f"Image '{path}' cannot be decoded (corrupt, truncated or not an image file)"
    spawned = RuntimeError(  # as torch.multiprocessing.ProcessRaisedException words it
        "\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
        '  File "/x/torch/multiprocessing/spawn.py", line 90, in _wrap\n    fn(i, *args)\n'
        f'  File "{sys.modules["vlt"].__path__[0]}/data/semantic_mapper.py", line 9, in f\n    raise ...\n'
        "vlt.utils.errors.InputError: MODEL.SEM_SEG_HEAD.NUM_CLASSES is 7\nbut the data has 19\n"
    )
    assert is_user_error(spawned)
    assert user_error_message(spawned) == "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 7\nbut the data has 19"
    bug = RuntimeError('Traceback (most recent call last):\n  File "/x/y.py", line 1, in f\nIndexError: list index\n')
    assert not is_user_error(bug)


def _fail(exc):
    raise exc


def test_run_tool_prints_the_message_last_and_logs_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLT_DEBUG", raising=False)
    logger = setup_logger(str(tmp_path), name="vlt", abbrev_name="vlt")
    quiet_console_tracebacks(["vlt"])
    try:
        def main():
            try:
                read_image(str(tmp_path / "absent.png"))
            except Exception:
                logger.exception("Exception during training:")  # as Detectron2's train loop does
                raise

        assert run_tool(LogErrors(main)) == 1
        err = capsys.readouterr()
        assert err.err.splitlines()[-1] == f"Error: Image '{tmp_path / 'absent.png'}' does not exist"
        assert "Traceback" not in err.err + err.out  # not on the console ...
        log = (tmp_path / "log.txt").read_text()
        assert log.count("Traceback (most recent call last)") == 2  # ... but in log.txt (D2's line + ours)
        assert run_tool(lambda: 3) == 3 and run_tool(lambda: None) == 0
        with pytest.raises(IndexError):  # a bug keeps its traceback
            run_tool(_fail, IndexError("bug"))
        monkeypatch.setenv("VLT_DEBUG", "1")
        assert run_tool(_fail, InputError("bad value")) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.splitlines()[-1] == "Error: bad value"
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logging.getLogger("vlt").propagate = True


@pytest.mark.slow  # a fresh interpreter imports torch and Detectron2
def test_importing_vlt_first_silences_fvcores_torch_jit_warning():
    code = textwrap.dedent("""
        import vlt  # noqa: F401
        import detectron2.engine  # noqa: F401
    """)
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": sys.modules["vlt"].__path__[0].rsplit("/", 1)[0], "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert "torch.jit.script" not in done.stderr
