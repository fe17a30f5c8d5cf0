"""Run the lab's notebooks with papermill: find them, execute them with parameters, export HTML.

Each notebook in ``notebooks/`` has one cell tagged ``parameters`` whose names equal the fields of
the workflow's config dataclass, so ``labkit run attention_explorer -p k 5`` maps one to one.
Executed copies go to a run folder (git-ignored ``runs/`` by default), never back into
``notebooks/``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from labkit.validation import check_device, check_model_kwargs, check_value, field_types

__all__ = [
    "NotebookError",
    "NotebookRun",
    "notebook_dir",
    "list_notebooks",
    "find_notebook",
    "notebook_parameters",
    "check_parameters",
    "run_notebook",
    "export_html",
    "kernel_arguments",
]


class NotebookError(RuntimeError):
    """A notebook failed: names the notebook, the cell and the error it raised."""

    def __init__(
        self, notebook: Path, cell_index: int | None, ename: str, evalue: str, output: Path
    ):
        self.notebook = notebook
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.output = output
        where = f"cell {cell_index}" if cell_index is not None else "before any cell ran"
        evalue = "; ".join(line.strip() for line in str(evalue).splitlines() if line.strip())
        super().__init__(
            f"notebook {notebook.name} failed in {where}: {ename}: {evalue} (the partly "
            f"executed notebook is at {output})"
        )


@dataclass(frozen=True)
class NotebookRun:
    """Where an executed notebook and its HTML export were written, and how long it took."""

    notebook: Path
    output: Path
    html: Path | None
    seconds: float


# where setup.py puts the top-level notebooks/ inside the installed package
_SHIPPED_NOTEBOOKS = "lab_notebooks"


def notebook_dir() -> Path:
    """The folder with the lab's notebooks.

    Resolution order:
        1. ``$LABKIT_NOTEBOOKS`` when set and non-empty.
        2. The notebooks shipped in the installed package (``labkit/lab_notebooks`` of a wheel),
           found with :mod:`importlib.resources`.
        3. ``notebooks/`` of the checkout labkit is imported from (an editable install).

    Returns:
        The folder (it may not exist when labkit is neither installed with its notebooks nor run
        from a checkout).
    """
    env = os.environ.get("LABKIT_NOTEBOOKS", "").strip()
    if env:
        return Path(env).expanduser()
    shipped = resources.files("labkit").joinpath(_SHIPPED_NOTEBOOKS)
    if isinstance(shipped, Path) and shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parent.parent / "notebooks"


def list_notebooks() -> list[str]:
    """Names (without ``.ipynb``) of the notebooks in :func:`notebook_dir`."""
    return sorted(p.stem for p in notebook_dir().glob("*.ipynb"))


def find_notebook(name: str | os.PathLike) -> Path:
    """Resolve a notebook name (``attention_explorer``) or path to an existing ``.ipynb`` file."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    candidate = notebook_dir() / f"{path.stem}.ipynb"
    if candidate.is_file():
        return candidate
    known = ", ".join(list_notebooks()) or "none"
    raise FileNotFoundError(f"no notebook named {str(name)!r}; the lab has: {known}")


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """The defaults of a notebook's ``parameters`` cell, as papermill infers them.

    Returns:
        Mapping of parameter name to its default value (plain Python literals).
    """
    import ast

    nb = json.loads(find_notebook(notebook).read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            params: dict[str, Any] = {}
            for node in ast.parse(source).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                    if isinstance(target, ast.Name) and node.value is not None:
                        params[target.id] = ast.literal_eval(node.value)
            return params
    raise ValueError(f"{notebook}: no cell tagged 'parameters'")


# the config dataclass whose fields a notebook's parameters are (their annotations give the types)
_CONFIGS = {
    "train_dora": ("labkit.train.config", "TrainConfig"),
    "timetuning": ("labkit.train.config", "TrainConfig"),
    "attention_explorer": ("labkit.explore", "ExploreConfig"),
    "evaluate": ("labkit.eval.runner", "EvalConfig"),
}


def _parameter_types(notebook: Path) -> dict[str, Any]:
    """Each parameter's type: the annotation of the config field of its name, else its default's
    type (a float default takes any number, ``None`` anything)."""
    import importlib

    hints: dict[str, Any] = {}
    if notebook.stem in _CONFIGS:
        module, name = _CONFIGS[notebook.stem]
        hints = field_types(getattr(importlib.import_module(module), name))
    from labkit.pos_embed import PosEmbedRule

    # parameters every model-loading notebook shares, whatever its config class
    shared: dict[str, Any] = {
        "pretrained": bool | Literal["auto"] | None,
        "pos_embed_rule": PosEmbedRule,
    }
    types = {}
    for key, default in notebook_parameters(notebook).items():
        if key in hints:
            types[key] = hints[key]
        elif key in shared:
            types[key] = shared[key]
        elif default is None:
            types[key] = Any
        elif isinstance(default, (list, tuple)):
            types[key] = list
        elif isinstance(default, Mapping):
            types[key] = dict
        else:
            types[key] = type(default)
    return types


def check_parameters(notebook: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
    """Parameters a notebook has, each of the type it expects, before anything runs.

    Raises:
        ValueError: an unknown name (with the known ones), or a value of the wrong type or a
            mapping key without a value (``{depth:2}``), naming the parameter and its form.
    """

    source = find_notebook(notebook)
    types = _parameter_types(source)
    unknown = sorted(set(parameters) - set(types))
    if unknown:
        raise ValueError(
            f"{source.name} has no parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {', '.join(types)}"
        )
    for key, value in parameters.items():
        try:
            check_value(key, value, types[key])
            if key == "model_kwargs":
                check_model_kwargs(key, value)
            elif key == "device":
                check_device(key, value)
        except ValueError as err:
            raise ValueError(f"{source.name}: parameter {err}") from None


_check_parameters = check_parameters


def export_html(executed: Path, html: Path | None = None) -> Path:
    """Export an executed notebook to a self-contained HTML file beside it (nbconvert)."""
    import nbformat
    from nbconvert import HTMLExporter

    html = html or executed.with_suffix(".html")
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    html.write_text(body, encoding="utf-8")
    return html


# read by the kernels run_notebook starts (a traitlets config file; not imported here)
_KERNEL_CONFIG = Path(__file__).resolve().with_name("kernel_config.py")


def kernel_arguments() -> list[str]:
    """Command-line arguments for the kernels :func:`run_notebook` starts.

    Returns:
        ``--config`` with :mod:`labkit.kernel_config`, which drops two records of the kernel's
        log: its warning that its TCP sockets on 127.0.0.1 are not encrypted (on every start)
        and the traceback of a reply sent on a closed socket (a kernel stopped by Ctrl-C);
        nothing with ``LABKIT_DEBUG`` set (the kernel's log as it is).
    """
    if os.environ.get("LABKIT_DEBUG", "") not in ("", "0"):
        return []
    return [f"--config={_KERNEL_CONFIG}"]


class _ProgressLines:
    """A file papermill writes the kernel's stream output to: passes on only whole lines that
    start with ``[labkit] `` (labkit's progress lines, e.g. the evaluation's one per sequence)."""

    def __init__(self, out: Any) -> None:
        self.out, self.pending = out, ""

    def write(self, text: str) -> None:
        self.pending += text
        *done, self.pending = self.pending.split("\n")
        for line in done:
            if line.startswith("[labkit] "):
                self.out.write(line + "\n")

    def flush(self) -> None:
        self.out.flush()


# Set by a Ctrl-C (SIGINT) that lands in run_notebook; cleared when the next run_notebook starts.
_CTRL_C = threading.Event()


class _AfterCtrlC(logging.Filter):
    """After a Ctrl-C in :func:`run_notebook`, drops nbclient's records about the kernel that
    papermill shut down under the running cell; before one, passes everything.

    A Ctrl-C reaches papermill inside its event loop and leaves the cell's task behind. Papermill
    then shuts the kernel down, and while the loop still runs, that task logs "Kernel died while
    waiting for execute reply." and ends with a DeadKernelError that nobody retrieves (asyncio
    logs it with its traceback when the task is collected, often after labkit's one line) or is
    collected still pending. The kernel was shut down on purpose, and labkit says so in one line.
    A kernel that dies by itself, with no Ctrl-C, is still logged and raised.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _CTRL_C.is_set():
            return True
        message = str(record.msg)
        if record.name == "papermill":
            return not message.startswith("Kernel died while waiting for execute reply")
        from nbclient.exceptions import DeadKernelError

        error = record.exc_info[1] if record.exc_info else None
        abandoned = "coro=<NotebookClient." in message  # collected still pending
        return not (abandoned or isinstance(error, DeadKernelError))


_AFTER_CTRL_C = _AfterCtrlC()
for _name in ("papermill", "asyncio"):  # nbclient logs through papermill's logger
    if _AFTER_CTRL_C not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_AFTER_CTRL_C)


@contextlib.contextmanager
def _noting_ctrl_c() -> Any:
    """While papermill runs: a Ctrl-C sets :data:`_CTRL_C`, then does what it did before (a
    KeyboardInterrupt). Only in the main thread, and only where Ctrl-C raises.

    A Ctrl-C in an earlier run (a Jupyter session that interrupted run_notebook and runs it
    again) is forgotten first, so a kernel that dies in this run is reported; what that earlier
    run abandoned is collected before, while its records are still dropped."""
    if _CTRL_C.is_set():
        gc.collect()  # the abandoned cell's task, if nothing else holds it
        _CTRL_C.clear()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return

    def note(signum: int, frame: Any) -> None:
        _CTRL_C.set()
        previous(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_notebook(
    notebook: str | os.PathLike,
    out_dir: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    html: bool = True,
    progress: bool = True,
    log_output: bool = False,
    timeout: float | None = None,
    progress_lines: bool = True,
) -> NotebookRun:
    """Execute a notebook with papermill into ``out_dir``.

    Args:
        notebook: name in :func:`notebook_dir` or a path to an ``.ipynb``.
        out_dir: folder for the executed copy (``<name>.ipynb``) and its HTML export.
        parameters: values for the ``parameters`` cell; unknown names fail before anything runs.
        html: also write ``<name>.html`` with nbconvert.
        progress: papermill's per-cell progress bar.
        log_output: stream the notebook's own output (stdout and stderr: prints, progress) to this
            process's stderr.
        timeout: seconds allowed per cell (None: no limit).
        progress_lines: without ``log_output``, still pass the notebook's ``[labkit] ...``
            progress lines (a long cell's per-sequence progress) on to this process's stderr.

    Returns:
        A :class:`NotebookRun` with the paths written.

    Raises:
        NotebookError: a cell raised; the partly executed notebook is kept in ``out_dir``.
    """
    import papermill as pm

    source = find_notebook(notebook)
    parameters = dict(parameters or {})
    _check_parameters(source, parameters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / source.name
    start = time.perf_counter()
    # The kernel inherits this process's environment: widgets then render static figures.
    previous = os.environ.get("LABKIT_HEADLESS")
    os.environ["LABKIT_HEADLESS"] = "1"
    try:
        with _noting_ctrl_c():
            pm.execute_notebook(
                str(source),
                str(output),
                parameters=parameters,
                kernel_name="python3",
                progress_bar=progress,
                stdout_file=sys.stderr if log_output else None,
                stderr_file=sys.stderr
                if log_output
                else _ProgressLines(sys.stderr)
                if progress_lines
                else None,
                execution_timeout=timeout,
                extra_arguments=kernel_arguments(),
            )
    except pm.PapermillExecutionError as err:
        raise NotebookError(source, err.cell_index, err.ename, err.evalue, output) from None
    finally:
        if previous is None:
            os.environ.pop("LABKIT_HEADLESS", None)
        else:
            os.environ["LABKIT_HEADLESS"] = previous
    seconds = time.perf_counter() - start
    html_path = export_html(output) if html else None
    return NotebookRun(notebook=source, output=output, html=html_path, seconds=seconds)
