"""The collapse watchdog: conditions, patience, one warning at the right step, logs, report."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import labkit.train.dora_dino as dora_dino_module
from labkit.train import train
from labkit.train.step import teacher_statistics
from labkit.train.watchdog import (
    CollapseWarning,
    CollapseWatchdog,
    collapse_kind,
    describe_collapse,
)

from tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

K = 256  # out_dim of the runs below: the thresholds are in terms of log K
HEALTHY = {"teacher_entropy": 2.0, "teacher_top_mass": 0.1}
UNIFORM = {"teacher_entropy": 0.995 * math.log(K), "teacher_top_mass": 1.0 / K}
ONE_DIM = {"teacher_entropy": 0.3, "teacher_top_mass": 0.8}


def records(kinds):
    return [{"step": i + 1, **kind} for i, kind in enumerate(kinds)]


def test_conditions_are_the_documented_thresholds():
    log_k = math.log(K)
    assert collapse_kind({"teacher_entropy": 0.99 * log_k, "teacher_top_mass": 0.0}, K) == "uniform"
    assert collapse_kind({"teacher_entropy": 0.989 * log_k, "teacher_top_mass": 0.0}, K) is None
    assert collapse_kind({"teacher_entropy": 1.0, "teacher_top_mass": 0.51}, K) == "one_dimension"
    assert collapse_kind({"teacher_entropy": 1.0, "teacher_top_mass": 0.5}, K) is None
    assert collapse_kind({"teacher_entropy": 1.0}, K) is None  # a log from before top mass
    # from real teacher outputs: constant rows centred on themselves are uniform ...
    constant = torch.randn(1, K).repeat(12, 1)
    stats = teacher_statistics(constant, constant[:1], 0.04)
    assert collapse_kind(stats, K) == "uniform"
    # ... and uncentred, every row peaks on the same dimension
    uncentred = teacher_statistics(constant, torch.zeros(1, K), 0.04)
    assert collapse_kind(uncentred, K) == "one_dimension"
    spread = teacher_statistics(torch.randn(64, K) * 3, torch.zeros(1, K), 0.04)
    assert collapse_kind(spread, K) is None


def test_fires_once_at_patience_naming_the_first_step():
    dog = CollapseWatchdog(K, patience=3)
    fired = [dog.update(r) for r in records([HEALTHY] * 2 + [UNIFORM] * 6)]
    assert [i for i, e in enumerate(fired) if e] == [4]  # step 5 = 3rd collapsed step
    assert fired[4] == {"step": 3, "kind": "uniform", "detected_at": 5, "patience": 3}
    assert dog.event == fired[4]
    assert "step 3" in dog.message() and "momentum_teacher" in dog.message()


def test_patience_counts_consecutive_steps_only():
    dog = CollapseWatchdog(K, patience=3)
    kinds = [ONE_DIM, ONE_DIM, HEALTHY, ONE_DIM, ONE_DIM, HEALTHY, ONE_DIM, ONE_DIM, ONE_DIM]
    fired = [dog.update(r) for r in records(kinds)]
    assert [e["step"] for e in fired if e] == [7]
    assert dog.event["kind"] == "one_dimension" and dog.event["detected_at"] == 9


def test_healthy_run_and_disabled_watchdog_never_fire():
    dog = CollapseWatchdog(K, patience=3)
    assert not any(dog.update(r) for r in records([HEALTHY] * 50))
    off = CollapseWatchdog(K, patience=0)
    assert not any(off.update(r) for r in records([UNIFORM] * 50)) and off.event is None
    with pytest.raises(ValueError, match="patience"):
        CollapseWatchdog(K, patience=-1)


def _collapse_from(monkeypatch, step):
    """Teacher statistics of constant teacher outputs from the ``step``-th call on."""
    calls = {"n": 0}

    def statistics(logits, center, temperature):
        calls["n"] += 1
        if calls["n"] >= step:
            logits = torch.zeros_like(logits)  # every row the same: a uniform target
            center = torch.zeros_like(center)
        return teacher_statistics(logits, center, temperature)

    monkeypatch.setattr(dora_dino_module, "teacher_statistics", statistics)  # the DoRA method's


def test_trainer_warns_once_at_the_right_step(tmp_path, monkeypatch):
    _collapse_from(monkeypatch, 3)
    cfg = tiny_config(tmp_path, out_dim=K, steps=8, collapse_patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg, progress=False)
    collapse = [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert len(collapse) == 1
    text = str(collapse[0].message)
    assert "collapsed at step 3" in text and "detected at step 5" in text and "lr" in text
    event = {"step": 3, "kind": "uniform", "detected_at": 5, "patience": 3}
    assert [r["step"] for r in result.log if "collapse" in r] == [5]
    assert result.log[4]["collapse"] == event
    assert result.metrics["collapse"] == event
    assert json.loads((tmp_path / "metrics.json").read_text())["collapse"] == event
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged[4]["collapse"] == event


def test_trainer_healthy_or_patient_run_does_not_warn(tmp_path, monkeypatch):
    _collapse_from(monkeypatch, 3)  # collapsed for 4 steps: fewer than the patience
    cfg = tiny_config(tmp_path, out_dim=K, steps=6, collapse_patience=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg, progress=False)
    assert not [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert result.metrics["collapse"] is None and not any("collapse" in r for r in result.log)
    assert all("teacher_top_mass" in r for r in result.log)


def test_resumed_run_keeps_its_streak(tmp_path, monkeypatch):
    _collapse_from(monkeypatch, 3)
    cfg = tiny_config(tmp_path, out_dim=K, steps=8, collapse_patience=4)
    train(cfg, until=4, progress=False)  # steps 3 and 4 collapsed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg.replace(resume=True), progress=False)
    collapse = [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert len(collapse) == 1 and result.metrics["collapse"]["step"] == 3
    assert result.metrics["collapse"]["detected_at"] == 6


@pytest.mark.parametrize("method", ["DINO", "DoRA"])
def test_report_sentence(method):
    event = {"step": 12, "kind": "uniform", "detected_at": 31, "patience": 20}
    assert describe_collapse(event, method) == (
        f"the {method} teacher collapsed at step 12: entropy within 1% of log K for 20 steps."
    )
    one = describe_collapse({**event, "kind": "one_dimension"}, method)
    assert "one output dimension" in one and "step 12" in one
    assert describe_collapse(None, method) == f"the {method} teacher did not collapse."


def test_plot_log_marks_the_collapse():
    from labkit.train import plot_log

    base = {"loss": 5.0, "teacher_entropy": 5.5, "teacher_kl_uniform": 0.0, "lr": 1e-3, "wd": 0.04}
    log = [{"step": s, **base} for s in range(1, 9)]
    healthy = plot_log(log)
    assert not any("collapse" in str(line.get_label()) for line in healthy.axes[0].lines)
    log[5]["collapse"] = {"step": 3, "kind": "uniform", "detected_at": 6, "patience": 4}
    fig = plot_log(log)
    marks = [line for line in fig.axes[0].lines if "collapse" in str(line.get_label())]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]
    assert any("collapse from step 3" in str(line.get_label()) for line in fig.axes[1].lines)


def test_collapse_sentence_from_metrics():
    from labkit.train.watchdog import collapse_sentence

    event = {"step": 7, "kind": "one_dimension", "detected_at": 26, "patience": 20}
    assert collapse_sentence({"method": "dora", "collapse": event}).startswith(
        "The DoRA teacher collapsed at step 7"
    )
    assert collapse_sentence({"method": "dino", "collapse": None}) == (
        "The DINO teacher did not collapse."
    )
    assert "predates" in collapse_sentence({"method": "dino"})
    assert "TimeTuning" in collapse_sentence({"method": "timetuning"})


def test_pipeline_report_says_whether_a_run_collapsed(tmp_path):
    from labkit.pipeline import PipelineConfig, plan
    from labkit.report import write_report

    cfg = PipelineConfig(
        runs_dir=str(tmp_path), pretrained=False, eval_data=("synthetic",), seeds=1
    )
    stages = plan(cfg)
    event = {"step": 12, "kind": "uniform", "detected_at": 31, "patience": 20}
    for stage, collapse in (("train_dora", None), ("train_dino", event)):
        folder = next(s.out_dir for s in stages if s.name == stage)
        folder.mkdir(parents=True)
        metrics = {"method": stage.removeprefix("train_"), "steps": 40, "collapse": collapse}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    text = write_report(cfg.run_dir, stages).read_text()
    training = text[text.index("<h2>Training</h2>") :]
    assert "The DoRA teacher did not collapse." in training
    assert (
        "The DINO teacher collapsed at step 12: entropy within 1% of log K for 20 steps."
        in training
    )
