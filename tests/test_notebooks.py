"""Notebook hygiene and the papermill runner's errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nbformat
import pytest

from labkit import kernel_config
from labkit.config import parse_value
from labkit.notebooks import (
    NotebookError,
    find_notebook,
    kernel_arguments,
    list_notebooks,
    notebook_dir,
    notebook_parameters,
    run_notebook,
)

NOTEBOOKS = sorted(notebook_dir().glob("*.ipynb"))


def test_the_lab_has_notebooks() -> None:
    assert "attention_explorer" in list_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path: Path) -> None:
    """Committed without outputs, python3 kernel, one parameters cell of plain literals, no defs."""
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown", "the first cell says what the notebook shows"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = notebook_parameters(path)  # raises if a value is not a literal
    assert "out_dir" in params and "device" in params
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            for line in cell.source.splitlines():
                assert not line.lstrip().startswith(("def ", "class ")), f"{path.name}: {line}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path: Path) -> None:
    import papermill as pm

    assert set(pm.inspect_notebook(str(path))) == set(notebook_parameters(path))


def test_notebook_dir_installed_or_checkout(tmp_path: Path, monkeypatch) -> None:
    import labkit.notebooks as notebooks

    monkeypatch.delenv("LABKIT_NOTEBOOKS", raising=False)
    assert notebook_dir() == Path(notebooks.__file__).resolve().parents[1] / "notebooks"
    # installed from a wheel: the notebooks ship inside the package (setup.py)
    shipped = tmp_path / "labkit" / "lab_notebooks"
    shipped.mkdir(parents=True)
    (shipped / "only_here.ipynb").write_text("{}")
    monkeypatch.setattr(notebooks.resources, "files", lambda package: tmp_path / package)
    assert notebook_dir() == shipped and list_notebooks() == ["only_here"]
    monkeypatch.setenv("LABKIT_NOTEBOOKS", str(tmp_path))
    assert notebook_dir() == tmp_path


def test_find_notebook_errors() -> None:
    with pytest.raises(FileNotFoundError, match="attention_explorer"):
        find_notebook("no_such_notebook")


def test_unknown_parameter_fails_before_running(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no parameter.*kk"):
        run_notebook("attention_explorer", tmp_path, {"kk": 3})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text, value",
    [
        ("5", 5),
        ("0.1", 0.1),
        ("true", True),
        ("[0,1,2]", [0, 1, 2]),
        ("", ""),
        ("runs/x.mp4", "runs/x.mp4"),
        ("{depth: 2}", {"depth": 2}),
        ("null", "null"),
    ],
)
def test_parse_value(text: str, value) -> None:
    assert parse_value(text) == value


@pytest.mark.slow
def test_failing_notebook_names_the_cell(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("a failing notebook"),
        params,
        nbformat.v4.new_code_cell("y = x + 1"),
        nbformat.v4.new_code_cell("raise KeyError('boom')"),
    ]
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError) as err:
        run_notebook(path, tmp_path / "out", {"x": 2}, progress=False, html=False)
    assert "KeyError" in str(err.value) and "failing.ipynb" in str(err.value)
    assert err.value.output.is_file()  # the partly executed copy is kept
    executed = json.loads(err.value.output.read_text())
    assert any("x = 2" in "".join(c["source"]) for c in executed["cells"])


TRANSPORT_WARNING = (
    "Kernel is running over TCP without encryption. All communication (including code and "
    "outputs) is sent in plain text and is susceptible to eavesdropping."
)


def _logged_with(app, error: BaseException) -> None:
    try:
        raise error
    except BaseException:
        app.log.error("Exception in message handler:", exc_info=True)


def test_kernel_config_drops_only_the_kernel_noise(capsys) -> None:
    """labkit/kernel_config.py read as a traitlets config file, as the kernel reads it: the
    transport warning, the shutdown's interrupt notice and a reply on a closed socket go,
    everything else stays."""
    import zmq
    from traitlets.config import Application

    class IPKernelApp(Application):  # the kernel's logger is named after its application class
        pass

    path = Path(kernel_config.__file__)
    logger = logging.getLogger("IPKernelApp")
    try:
        app = IPKernelApp()
        app.load_config_file(path.name, path=[str(path.parent)])
        app.log.warning(TRANSPORT_WARNING)
        app.log.warning("Kernel is running over TCP on a port that is taken")
        app.log.error("KeyboardInterrupt caught in kernel.")  # ipykernel, at papermill's shutdown
        app.log.error("KeyboardInterrupt caught in kernel")  # its event-loop variant
        app.log.warning("KeyboardInterrupt caught in kernel.")  # not ipykernel's record: kept
        _logged_with(app, zmq.ZMQError(zmq.ENOTSOCK))
        _logged_with(app, zmq.ZMQError(zmq.ETERM))
        err = capsys.readouterr().err
        assert "without encryption" not in err and "Traceback" not in err
        assert "a port that is taken" in err
        assert err.count("KeyboardInterrupt caught in kernel") == 1  # the warning only
        _logged_with(app, zmq.ZMQError(zmq.EAGAIN))
        _logged_with(app, KeyError("boom"))
        err = capsys.readouterr().err
    finally:
        logger.handlers.clear()
        logger.filters.clear()
    assert err.count("Exception in message handler") == 2 and "KeyError: 'boom'" in err


def test_kernel_arguments(monkeypatch) -> None:
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    (argument,) = kernel_arguments()
    assert argument.startswith("--config=") and Path(argument[9:]).is_file()
    monkeypatch.setenv("LABKIT_DEBUG", "1")
    assert kernel_arguments() == []


@pytest.mark.slow
def test_kernel_starts_without_the_transport_warning(tmp_path: Path, capfd, monkeypatch) -> None:
    """The kernel writes its log straight to this process's stderr (file descriptor 2)."""
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("a quiet notebook"), params]
    nb.cells.append(nbformat.v4.new_code_cell("y = x + 1"))
    path = tmp_path / "quiet.ipynb"
    nbformat.write(nb, path)
    run = run_notebook(path, tmp_path / "out", {"x": 2}, progress=False, html=False)
    assert run.output.is_file()
    err = capfd.readouterr().err
    assert "without encryption" not in err


def _record(name: str, message: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, exc_info)


def test_after_ctrl_c_only_the_abandoned_cells_records_go(monkeypatch) -> None:
    """The filter on papermill's and asyncio's loggers passes everything until a Ctrl-C; after
    one it drops the records of the cell papermill abandoned, and nothing else."""
    import threading

    from nbclient.exceptions import DeadKernelError

    from labkit import notebooks

    monkeypatch.setattr(notebooks, "_CTRL_C", threading.Event())
    pending = (
        "Task was destroyed but it is pending!\ntask: <Task pending name='Task-8' "
        "coro=<NotebookClient.async_execute_cell() running at client.py:1002>>"
    )
    gone = [
        _record("papermill", "Kernel died while waiting for execute reply."),
        _record("asyncio", "Task exception was never retrieved", DeadKernelError("Kernel died")),
        _record("asyncio", pending),
    ]
    kept = [
        _record("papermill", "Executing notebook with kernel: python3"),
        _record("asyncio", "Task exception was never retrieved", KeyError("boom")),
    ]
    for name in ("papermill", "asyncio"):
        assert notebooks._AFTER_CTRL_C in logging.getLogger(name).filters
    assert all(notebooks._AFTER_CTRL_C.filter(r) for r in gone + kept)  # no Ctrl-C yet
    notebooks._CTRL_C.set()
    assert not any(notebooks._AFTER_CTRL_C.filter(r) for r in gone)
    assert all(notebooks._AFTER_CTRL_C.filter(r) for r in kept)
    # the next run_notebook forgets the Ctrl-C: a kernel that dies in it is reported again
    with notebooks._noting_ctrl_c():
        assert not notebooks._CTRL_C.is_set()
        assert all(notebooks._AFTER_CTRL_C.filter(r) for r in gone + kept)


# Runs a notebook whose cell sleeps, in a process of its own; the kernel manager waits 2.5 s
# after the kernel is gone before it cleans up (as it may under load), so papermill's event loop
# runs on long enough for the abandoned cell to notice the dead kernel every time.
_SLEEPER = """
import asyncio, sys
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager

from labkit.notebooks import run_notebook

cleanup = AsyncKernelManager._async_cleanup_resources


async def slow_cleanup(self, restart=False):
    await asyncio.sleep(2.5)
    return await cleanup(self, restart=restart)


AsyncKernelManager._async_cleanup_resources = slow_cleanup
folder = Path(sys.argv[1])
parameters = nbformat.v4.new_code_cell("seconds = 60")
parameters.metadata["tags"] = ["parameters"]
busy = f"import pathlib\\npathlib.Path({str(folder / 'busy')!r}).touch()\\n"
sleep = busy + "import time\\ntime.sleep(seconds)"
nb = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell(sleep)])
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbformat.write(nb, folder / "sleeper.ipynb")
try:
    run_notebook(folder / "sleeper.ipynb", folder / "out", html=False, progress=False)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_in_a_cell_leaves_no_dead_kernel_traceback(tmp_path) -> None:
    """U (CI): after Ctrl-C in a pipeline, nbclient's "Kernel died" line and an unretrieved
    DeadKernelError's traceback came after labkit's one line (the kernel that papermill shut
    down under the running cell)."""
    import sys

    from test_reliability import press_ctrl_c

    script = tmp_path / "sleeper.py"
    script.write_text(_SLEEPER)
    busy = tmp_path / "busy"
    code, err = press_ctrl_c(
        [sys.executable, str(script), str(tmp_path)], busy.exists, tmp_path, "the cell's start"
    )
    assert code == 130 and err.strip() == "interrupted", err
