"""Notebook hygiene and the papermill runner's errors."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from labkit.config import parse_value
from labkit.notebooks import (
    NotebookError,
    find_notebook,
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
