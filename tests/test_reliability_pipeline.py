"""Issue 15 in the pipeline: a rerun never destroys a complete stage, the whole config is checked
before any stage runs, and one pipeline at a time writes a run folder.

Complete training stages are made here with real (tiny) training runs and their ``stage.json``, so
the fast tests need no notebook kernel; the tests that run a stage's notebook, or two pipelines
side by side, are ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from labkit import pipeline
from labkit.cli import main
from labkit.pipeline import PipelineConfig, StageFailed, is_complete, plan, run_pipeline
from labkit.runfolder import RunLock
from labkit.train import TrainConfig, train

from test_reliability import (
    davis_folder,
    interrupt_pipeline,
    one_line_error,
    run_cli,
    wait_for,
)

TINY_MODEL = {"depth": 2, "embed_dim": 96, "num_heads": 3}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(runs: Path, video: Path, **changes) -> PipelineConfig:
    values = dict(
        name="tiny",
        runs_dir=str(runs),
        video_path=str(video),
        seeds=1,  # one seed: stage names without _s<seed> (seeds: tests/test_pipeline.py)
        model_kwargs=TINY_MODEL,
        steps=2,
        img_size=64,
        batch_size=2,
        num_frames=3,
        explore_frames=3,
        explore_img_size=96,
        eval_data=["synthetic"],
        eval_resolution=96,
        eval_max_frames=6,
        teaching=False,
        train={
            "out_dim": 256,
            "num_local": 1,
            "local_size": 32,
            "checkpoint_every": 1,
            "num_workers": 0,
        },
    )
    values.update(changes)
    return PipelineConfig(**values)


def complete_training(cfg: PipelineConfig) -> None:
    """Run the training stages as the notebook would (tiny, real) and mark them complete."""
    names = {f.name for f in fields(TrainConfig)}
    for stage in plan(cfg):
        if stage.group == "train":
            train(
                TrainConfig(**{k: v for k, v in stage.params.items() if k in names}), progress=False
            )
            pipeline._write_marker(stage, 0.0)
            assert is_complete(stage)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def lab_yaml(cfg: PipelineConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


@pytest.fixture
def trained(tmp_path: Path, small_video: Path) -> PipelineConfig:
    cfg = tiny(tmp_path / "runs", small_video)
    complete_training(cfg)
    return cfg


def test_case1_a_bad_value_on_a_complete_run_fails_before_touching_it(trained, tmp_path, capsys):
    """1. `-o img_size=70` on a complete run emptied train_dora/ before failing."""
    run = trained.run_dir
    before = snapshot(run)
    config = lab_yaml(trained, tmp_path / "lab.yaml")
    assert main(["pipeline", "--config", str(config), "-o", "img_size=70", "--quiet"]) == 2
    one_line_error(
        capsys.readouterr().err, "stage train_dora", "img_size 70", "multiple of the patch size 16"
    )
    assert snapshot(run) == before
    assert not list(run.parent.glob(".*.previous")) and not list(run.glob(".*"))


def test_case2_a_bad_evaluate_value_keeps_the_previous_results(trained, tmp_path, capsys):
    """2. A failing evaluate rerun (`topk: 0`) deleted the previous complete results."""
    stage = next(s for s in plan(trained) if s.name == "evaluate_synthetic")
    stage.out_dir.mkdir(parents=True)
    (stage.out_dir / "metrics.json").write_text('{"previous": true}')
    pipeline._write_marker(stage, 1.0)
    before = snapshot(trained.run_dir)
    config = lab_yaml(trained, tmp_path / "lab.yaml")
    assert (
        main(
            [
                "pipeline",
                "--config",
                str(config),
                "-o",
                "evaluate={topk: 0}",
                "--only",
                "evaluate",
                "--quiet",
            ]
        )
        == 2
    )
    one_line_error(capsys.readouterr().err, "stage evaluate_synthetic", "topk")
    assert snapshot(trained.run_dir) == before


def test_killed_rerun_is_settled_on_the_next_start(trained):
    """A rerun killed (kill -9) after its stage was moved aside: the next run puts the complete
    outputs back when they are what it asks for, keeps them aside while a rerun with the new
    parameters goes on, and drops them once that rerun has finished."""
    said: list[str] = []
    stage = next(s for s in plan(trained) if s.name == "train_dora")
    before = snapshot(stage.out_dir)
    backup = pipeline._backup(stage)
    # the rerun with other parameters had moved the stage aside and started in a fresh folder
    os.replace(stage.out_dir, backup)
    stage.out_dir.mkdir()
    (stage.out_dir / "log.jsonl").write_text('{"step": 1}\n')
    # the same config again: the complete outputs go back, the partial rerun is set aside
    pipeline._recover(stage, said.append)
    assert snapshot(stage.out_dir) == before and not backup.exists()
    assert (pipeline._failed(stage) / "log.jsonl").is_file()
    assert any("previous complete outputs are back" in m for m in said)
    # the changed config again: the partial rerun goes on, the old outputs stay aside
    changed = next(
        s
        for s in plan(tiny(Path(trained.runs_dir), Path(trained.video_path), steps=3))
        if s.name == "train_dora"
    )
    os.replace(stage.out_dir, backup)
    stage.out_dir.mkdir()
    pipeline._recover(changed, said.append)
    assert backup.is_dir() and stage.out_dir.is_dir()
    # ... and once the rerun has completed, the backup is dropped
    pipeline._write_marker(changed, 0.0)
    for name in changed.outputs:
        (changed.out_dir / name).write_text("x")
    pipeline._recover(changed, said.append)
    assert not backup.exists()


def test_a_second_pipeline_on_a_busy_run_folder_fails_at_once(trained, tmp_path, capsys):
    """4. (in process) the lock is taken before any stage runs."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from labkit.runfolder import RunLock; "
            "RunLock(sys.argv[1], 'labkit pipeline').acquire(); print('held', flush=True); "
            "time.sleep(600)",
            str(trained.run_dir.resolve()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(trained.run_dir)
        config = lab_yaml(trained, tmp_path / "lab.yaml")
        start = time.monotonic()
        assert main(["pipeline", "--config", str(config), "--force", "--quiet"]) == 1
        assert time.monotonic() - start < 60
        one_line_error(capsys.readouterr().err, "in use by labkit pipeline", f"pid {holder.pid}")
        after = snapshot(trained.run_dir)
        after.pop(".labkit.lock", None)
        before.pop(".labkit.lock", None)
        assert after == before  # --force did not move anything: it never got the folder
    finally:
        holder.kill()
        holder.wait()


def corrupt_davis(root: Path) -> Path:
    """A DAVIS folder whose third mask has a valid header and truncated data: only reading the
    pixels (inside the evaluate notebook) finds it."""
    davis_folder(root)
    mask = root / "Annotations" / "480p" / "seq" / "00002.png"
    mask.write_bytes(mask.read_bytes()[:60])
    return root


@pytest.mark.slow
def test_case2_a_stage_failing_in_its_notebook_puts_the_previous_outputs_back(trained, tmp_path):
    """2. A rerun of a complete evaluate stage that fails inside its notebook: the previous
    complete results are back in place, the failed attempt kept beside them."""
    root = corrupt_davis(tmp_path / "davisbad")
    cfg = tiny(Path(trained.runs_dir), Path(trained.video_path), eval_data=[str(root)])
    stage = next(s for s in plan(cfg) if s.name == "evaluate_davisbad")
    stage.out_dir.mkdir(parents=True)
    (stage.out_dir / "metrics.json").write_text('{"previous": true}')
    pipeline._write_marker(stage, 1.0)
    info = json.loads((stage.out_dir / "stage.json").read_text())
    info["fingerprint"] = "from-other-params"  # complete, with other parameters: it reruns
    (stage.out_dir / "stage.json").write_text(json.dumps(info))
    before = snapshot(stage.out_dir)
    with pytest.raises(StageFailed) as err:
        run_pipeline(cfg, only="evaluate", progress=False, say=lambda m: None)
    text = str(err.value)
    assert "\n" not in text and "evaluate_davisbad" in text and "cell" in text
    assert "00002.png" in text and "previous complete outputs" in text
    assert snapshot(stage.out_dir) == before
    failed = pipeline._failed(stage)
    assert (failed / "evaluate.ipynb").is_file() and not pipeline._backup(stage).exists()


@pytest.mark.slow
def test_case4_two_pipelines_on_one_run_folder(trained, tmp_path):
    """4. Two pipelines started on the same run folder both ran and interleaved their logs."""
    config = lab_yaml(
        tiny(Path(trained.runs_dir), Path(trained.video_path), steps=400), tmp_path / "lab.yaml"
    )
    run = trained.run_dir.resolve()
    first = run_cli(
        "pipeline",
        "--config",
        str(config),
        "--only",
        "train",
        "--quiet",
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        wait_for((run / ".labkit.lock").exists, what="the first pipeline's lock")
        second = run_cli(
            "pipeline", "--config", str(config), "--only", "train", "--quiet", cwd=tmp_path
        )
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1, err
        one_line_error(err, str(run), "in use by labkit pipeline", f"pid {first.pid}")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the pipeline and its notebook kernel
        first.wait()
    with RunLock(run, "a test"):  # the killed pipeline's lock is gone with it
        pass
    log = run / "train_dora" / "log.jsonl"
    if log.is_file():  # every step at most once: no second writer
        steps = [
            json.loads(line)["step"]
            for line in log.read_text().splitlines()
            if line.strip().endswith("}")
        ]
        assert len(steps) == len(set(steps))


def test_case5_temporaries_of_killed_writes_are_removed_at_start(trained):
    """5. A kill -9 during a write leaves .<name>.tmp-<pid>; the next run removes it."""
    run = trained.run_dir.resolve()
    litter = [run / ".config.yaml.tmp-999999", run / "train_dora" / ".checkpoint.pth.tmp-999999"]
    for path in litter:
        path.write_bytes(b"x" * 1000)
    said: list[str] = []
    run_pipeline(trained, only="train", progress=False, say=said.append)
    assert not any(path.exists() for path in litter)
    assert sum("left by a write that was killed" in m for m in said) == 2
    assert all("complete, skipped" in m for m in said if m.startswith("["))


@pytest.mark.slow
def test_ctrl_c_in_a_pipeline_is_one_line_and_the_training_keeps_its_step(trained, tmp_path):
    """U: Ctrl-C printed a traceback and wrote no checkpoint (here in a pipeline: the terminal's
    Ctrl-C reaches the pipeline and its notebook kernel, as a process group)."""
    config = lab_yaml(
        tiny(
            Path(trained.runs_dir),
            Path(trained.video_path),
            steps=400,
            train={
                "out_dim": 256,
                "num_local": 1,
                "local_size": 32,
                "checkpoint_every": 100,
                "num_workers": 0,
            },
        ),
        tmp_path / "lab.yaml",
    )
    log = trained.run_dir.resolve() / "train_dora" / "log.jsonl"
    interrupt_pipeline(
        config,
        lambda: log.is_file() and len(log.read_text().splitlines()) >= 3,
        tmp_path,
        "the training's steps",
        OMP_NUM_THREADS="1",
    )
    import torch

    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    state = torch.load(log.parent / "checkpoint.pth", weights_only=True)
    assert state["step"] == steps[-1] and 3 <= steps[-1] < 100  # written at Ctrl-C, not at 100
