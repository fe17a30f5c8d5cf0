"""labkit as a user gets it from a wheel: the notebooks ship inside it, and ``labkit notebooks``,
``labkit run`` and ``labkit pipeline`` work from a folder outside the checkout.

The wheel is built offline from a copy of the source (nothing is written into the checkout) and
installed into a fresh venv. The venv borrows the test interpreter's site-packages through a
``.pth`` file, so torch and the rest are not downloaded again; a ``.pth`` line adds a folder to
``sys.path`` without running the ``.pth`` files inside it, so the checkout's editable labkit (an
import hook installed by such a file) stays out, and the test checks that it does.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = "{depth: 2, embed_dim: 96, num_heads: 3}"
# what a wheel is built from (the rest of the checkout is not part of the package)
SOURCES = ("pyproject.toml", "setup.py", "README.md", "labkit", "notebooks")


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run a command; on failure the assertion shows its output."""
    done = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(out: Path) -> Path:
    """A wheel of the working tree, built offline from a copy of its sources."""
    source = out / "source"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    wheels = out / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source],
        cwd=out,
        env=dict(os.environ),
    )
    (wheel,) = wheels.glob("labkit-*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    """A venv without pip or packages whose ``sys.path`` ends with this interpreter's
    site-packages; returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    borrowed = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]])
    (Path(purelib) / "labkit_test_borrowed.pth").write_text("\n".join(borrowed) + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the venv's python with the wheel installed, the environment to run it in)."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root)
    python = fresh_venv(root / "venv")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LABKIT_NOTEBOOKS", "LABKIT_DEBUG")
    }
    env.update(
        PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
        LABKIT_DATA=str(root / "data"),  # not the checkout's data/ nor ~/.cache
        # the borrowed packages' data files (nbconvert's templates, the python3 kernel spec)
        JUPYTER_PATH=os.pathsep.join(
            [str(Path(sys.prefix) / "share" / "jupyter"), *filter(None, [env.get("JUPYTER_PATH")])]
        ),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    # pip comes from the borrowed site-packages; --ignore-installed: the editable labkit that pip
    # sees there is left alone, the wheel goes into the new venv
    _run(
        [python, "-m", "pip", "--disable-pip-version-check", "install", "--no-deps"]
        + ["--no-index", "--ignore-installed", wheel],
        cwd=root,
        env=env,
    )
    return python, env


def test_wheel_ships_the_notebooks(tmp_path: Path) -> None:
    """Every notebook of the checkout is in the wheel under labkit/lab_notebooks/, unchanged."""
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        shipped = {
            Path(n).name: zf.read(n) for n in zf.namelist() if n.startswith("labkit/lab_notebooks/")
        }
        assert "labkit/notebooks.py" in zf.namelist()
    # the copy the wheel was built from (the checkout's notebooks may change meanwhile)
    ours = {p.name: p.read_bytes() for p in (tmp_path / "source" / "notebooks").glob("*.ipynb")}
    assert ours and shipped == ours
    assert set(ours) == {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
    # the pipeline's recipes (labkit pipeline --config cpu-long) ship as well
    with zipfile.ZipFile(wheel) as zf:
        recipes = {Path(n).name for n in zf.namelist() if n.startswith("labkit/recipes/")}
    assert {p.name for p in (REPO / "labkit" / "recipes").glob("*.yaml")} <= recipes
    assert "__init__.py" in recipes and len(recipes) >= 4


@pytest.mark.slow
def test_installed_wheel_runs_notebooks_and_pipeline(installed, small_video: Path, tmp_path):
    python, env = installed
    venv_dir = python.parent.parent
    labkit = python.parent / ("labkit.exe" if os.name == "nt" else "labkit")
    work = tmp_path / "elsewhere"  # outside the checkout: no notebooks/ to fall back on
    work.mkdir()

    where = _run([python, "-c", "import labkit; print(labkit.__file__)"], work, env).strip()
    assert Path(where).resolve().is_relative_to(venv_dir.resolve()), where

    listing = _run([labkit, "notebooks"], work, env)
    assert "lab_notebooks" in listing.splitlines()[0]
    for name in ("attention_explorer", "train_dora", "evaluate", "dora_step_by_step"):
        assert f"  {name}\n" in listing

    out = work / "explore"
    _run(
        [labkit, "run", "attention_explorer", "--out", out, "--quiet"]
        + ["-p", "video_path", small_video, "-p", "model", "vit_small_patch16_224"]
        + ["-p", "pretrained", "false", "-p", "model_kwargs", TINY_MODEL]
        + ["-p", "num_frames", "3", "-p", "img_size", "64", "-p", "device", "cpu"],
        work,
        env,
    )
    assert (out / "attention_explorer.ipynb").is_file()
    assert (out / "attention_explorer.html").is_file()
    assert json.loads((out / "metrics.json").read_text())["num_frames"] == 3

    (work / "lab.yaml").write_text(
        f"name: tiny\nruns_dir: {work / 'runs'}\nvideo_path: {small_video}\n"
        f"methods: [dora]\nseeds: 1\nteaching: false\npretrained: false\ndevice: cpu\n"
        f"model_kwargs: {TINY_MODEL}\nsteps: 2\nimg_size: 64\nbatch_size: 2\nnum_frames: 3\n"
        "explore_frames: 3\nexplore_img_size: 64\n"
        f"eval_data: [{small_video.parent}]\neval_resolution: 64\neval_max_frames: 4\n"
        "train: {out_dim: 256, num_local: 1, local_size: 32, num_workers: 0}\n"
    )
    printed = _run([labkit, "pipeline", "--config", "lab.yaml", "--quiet"], work, env, timeout=600)
    run = work / "runs" / "tiny"
    assert f"report: {run.resolve() / 'report.html'}" in printed
    assert (run / "train_dora" / "checkpoint.pth").is_file()
    (evaluate,) = [p.name for p in run.glob("evaluate_*")]
    for stage in ("train_dora", "explore_dora", evaluate):
        assert any((run / stage).glob("*.html")), stage
    # the kernels imported the installed labkit too: its environment record has no git checkout
    evaluation = json.loads((run / evaluate / "metrics.json").read_text())
    assert evaluation["environment"]["git_commit"] is None
