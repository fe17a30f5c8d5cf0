"""labkit pipeline: config validation, the plan, and a tiny run end to end (train -> report)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labkit.pipeline import (
    PipelineConfig,
    StageFailed,
    is_complete,
    load_pipeline_config,
    plan,
    run_pipeline,
)

TINY_MODEL = {"depth": 2, "embed_dim": 96, "num_heads": 3}


def tiny(runs: Path, video: Path, **changes) -> PipelineConfig:
    values = dict(
        name="tiny",
        runs_dir=str(runs),
        video_path=str(video),
        model_kwargs=TINY_MODEL,
        steps=3,
        img_size=64,
        batch_size=2,
        num_frames=3,
        explore_frames=3,
        explore_img_size=96,
        eval_data=["synthetic"],
        eval_resolution=96,
        eval_max_frames=6,
        train={
            "out_dim": 256,
            "num_local": 1,
            "local_size": 32,
            "checkpoint_every": 2,
            "num_workers": 0,
        },
    )
    values.update(changes)
    return PipelineConfig(**values)


@pytest.mark.parametrize(
    "override, key",
    [
        ("k=-1", "k"),
        ("steps=0", "steps"),
        ("model=not_a_vit", "model"),
        ("video_path=/no/such.mp4", "video_path"),
        ("methods=[dora, byol]", "methods"),
        ("name=a/b", "name"),
        ("stepz=3", "stepz"),
        ("train=5", "train"),
    ],
)
def test_bad_config_fails_before_any_work(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=key):
        load_pipeline_config(None, [override, f"runs_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())


def test_config_from_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("name: gpu\nsteps: 500\ndevice: cpu\ntrain:\n  num_local: 6\n")
    cfg = load_pipeline_config(path, ["steps=7", "eval_data=[synthetic]"])
    assert (cfg.name, cfg.steps, cfg.train, cfg.eval_data) == (
        "gpu",
        7,
        {"num_local": 6},
        ("synthetic",),
    )


def test_plan_wires_the_stages(tmp_path: Path) -> None:
    cfg = PipelineConfig(
        runs_dir=str(tmp_path), eval_data=("synthetic", str(tmp_path / "davis2016"))
    )
    stages = plan(cfg)
    names = [s.name for s in stages]
    assert names == [
        "train_dora",
        "train_dino",
        "explore_dora",
        "explore_dino",
        "step_by_step",
        "evaluate_synthetic",
        "evaluate_davis2016",
        "report",
    ]
    by = {s.name: s for s in stages}
    ckpt = str(by["train_dora"].out_dir / "checkpoint.pth")
    assert by["explore_dora"].params["checkpoint"] == ckpt
    assert by["train_dora"].params["resume"] is True
    models = by["evaluate_synthetic"].params["models"]
    assert models[0] == f"random={cfg.model}" and f"dora={cfg.model}:{ckpt}" in models
    # the same budget for both methods: only the method differs
    a, b = dict(by["train_dora"].params), dict(by["train_dino"].params)
    assert {k for k in a if a[k] != b[k]} == {"method", "out_dir"}
    # a parameter change changes the fingerprint (the stage reruns), the same config does not
    again = {s.name: s for s in plan(cfg)}
    assert again["train_dora"].fingerprint == by["train_dora"].fingerprint
    changed = {s.name: s for s in plan(PipelineConfig(runs_dir=str(tmp_path), steps=7))}
    assert changed["train_dora"].fingerprint != by["train_dora"].fingerprint


def test_only_needs_completed_stages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs train_dora"):
        run_pipeline(PipelineConfig(runs_dir=str(tmp_path)), only="evaluate", say=lambda m: None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_video: Path) -> tuple[PipelineConfig, list[str]]:
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny(runs, small_video)
    messages: list[str] = []
    report = run_pipeline(cfg, progress=False, say=messages.append)
    assert report == cfg.run_dir.resolve() / "report.html"
    return cfg, messages


@pytest.mark.slow
def test_end_to_end(finished) -> None:
    cfg, messages = finished
    run = cfg.run_dir.resolve()
    for stage in plan(cfg):
        assert is_complete(stage), stage.name
        if stage.notebook:
            assert (stage.out_dir / f"{stage.notebook}.ipynb").is_file()
            assert (stage.out_dir / f"{stage.notebook}.html").is_file()
    assert sum("done in" in m for m in messages) == len(plan(cfg))
    env = json.loads((run / "environment.json").read_text())
    assert env["device"] == "cpu" and env["packages"]["torch"] and "git_commit" in env
    assert "steps: 3" in (run / "config.yaml").read_text()
    train = json.loads((run / "train_dora" / "metrics.json").read_text())
    assert train["steps"] == 3 and train["method"] == "dora"
    ev = json.loads((run / "evaluate_synthetic" / "metrics.json").read_text())
    assert [r["model"] for r in ev["summary"]] == ["random", "dora", "dino"]
    report = (run / "report.html").read_text()
    assert "Verdict" in report and "Label propagation J&amp;F: DoRA" in report
    assert re.search(
        r"DoRA beats dino and random on (none of the 4|all 4|[1-3] of 4) measures", report
    )
    assert "explore_dora/heads.png" in report and "train_dora/log.png" in report
    assert (run.parent / "latest").resolve() == run


@pytest.mark.slow
def test_rerun_skips_complete_stages(finished) -> None:
    cfg, _ = finished
    messages: list[str] = []
    run_pipeline(cfg, progress=False, say=messages.append)
    stages = [m for m in messages if m.startswith("[")]
    assert stages and all("complete, skipped" in m for m in stages)


@pytest.mark.slow
def test_interrupted_training_resumes(finished) -> None:
    cfg, _ = finished
    stage = next(s for s in plan(cfg) if s.name == "train_dino")
    # an interruption after the last checkpoint: no stage.json, no metrics.json
    (stage.out_dir / "stage.json").unlink()
    (stage.out_dir / "metrics.json").unlink()
    messages: list[str] = []
    run_pipeline(cfg, only="train", progress=False, say=messages.append)
    metrics = json.loads((stage.out_dir / "metrics.json").read_text())
    assert (
        metrics["steps"] == cfg.steps and metrics["steps_this_run"] == 0
    )  # resumed, not restarted
    assert any("train_dora: complete, skipped" in m for m in messages)


@pytest.mark.slow
def test_bad_data_root_fails_before_any_stage(finished, tmp_path: Path) -> None:
    # a folder without the DAVIS layout is found by the checks before any stage runs (a stage
    # failing inside its notebook: tests/test_reliability_pipeline.py)
    cfg, _ = finished
    bad = tmp_path / "not_davis"
    (bad / "some_folder").mkdir(parents=True)
    broken = tiny(Path(cfg.runs_dir), Path(cfg.video_path), eval_data=[str(bad)])
    with pytest.raises(ValueError, match=r"stage evaluate_not_davis: .*JPEGImages") as err:
        run_pipeline(broken, only="evaluate", progress=False, say=lambda m: None)
    assert not isinstance(err.value, StageFailed)
    assert not (cfg.run_dir / "evaluate_not_davis").exists()
    assert (cfg.run_dir / "train_dora" / "checkpoint.pth").is_file()  # earlier work kept


def test_cli_exit_code_on_a_failed_stage(monkeypatch, capsys) -> None:
    from labkit import cli

    def fail(*args, **kwargs):
        raise StageFailed(
            "stage evaluate_x failed after 3s: notebook evaluate.ipynb failed in cell 4"
        )

    monkeypatch.setattr("labkit.pipeline.run_pipeline", fail)
    assert cli.main(["pipeline", "--quiet"]) == 1
    assert "evaluate_x" in capsys.readouterr().err
    assert cli.main(["pipeline", "-o", "k=-3"]) == 2  # a bad value: exit code 2, before any work
    assert "k must be" in capsys.readouterr().err


@pytest.mark.slow
def test_same_config_same_numbers(finished, tmp_path: Path) -> None:
    cfg, _ = finished
    again = tiny(tmp_path, Path(cfg.video_path))
    run_pipeline(again, only="train", progress=False, say=lambda m: None)
    run_pipeline(again, only="evaluate", progress=False, say=lambda m: None)
    for method in ("dora", "dino"):
        a = json.loads((cfg.run_dir / f"train_{method}" / "metrics.json").read_text())
        b = json.loads((again.run_dir / f"train_{method}" / "metrics.json").read_text())
        assert (a["first_loss"], a["final_loss"]) == (b["first_loss"], b["final_loss"])

    def numbers(path: Path) -> list[dict]:
        rows = json.loads(path.read_text())["summary"]
        return [{k: v for k, v in r.items() if k not in ("seconds", "weights")} for r in rows]

    assert numbers(cfg.run_dir / "evaluate_synthetic" / "metrics.json") == numbers(
        again.run_dir / "evaluate_synthetic" / "metrics.json"
    )


def test_one_loader_for_pipeline_and_training(tmp_path: Path) -> None:
    # labkit.config.load_config reads both: dotted keys reach a mapping's entries
    cfg = load_pipeline_config(None, ["train.num_local=6", "train.out_dim=512", "steps=4"])
    assert cfg.train == {"num_local": 6, "out_dim": 512} and cfg.steps == 4
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        load_pipeline_config(None, ["stepz=3"])
    with pytest.raises(ValueError, match="lr.x"):
        load_pipeline_config(None, ["lr.x=3"])
