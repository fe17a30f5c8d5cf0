"""The frozen-network control (TrainConfig.control) and the learning verdict (labkit.train.verdict).

The control is checked against an independent computation: a run whose networks cannot move
(learning rate 1e-30, teacher momentum 1) is a frozen network trained through the ordinary path,
so its training loss must equal another run's control loss at every step.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml

from labkit.train import TrainConfig, Trainer, read_log, train
from labkit.train.config import IGNORED_FIELDS
from labkit.train.dora_dino import CONTROL_LOG_COLUMNS, LOG_COLUMNS
from labkit.train.verdict import (
    learning_sentence,
    learning_summary,
    learning_verdict,
    window_means,
)

from tiny import TINY_TRAIN, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def column(log, name):
    return [r[name] for r in log]


# -- the verdict on known numbers ------------------------------------------------------------


def test_window_means_on_known_numbers():
    assert window_means([1.0, 2.0, 3.0]) == (1.0, 3.0)  # fewer than 10 steps: one each
    values = [float(v) for v in range(1, 21)]  # 20 steps: two each
    assert window_means(values) == (1.5, 19.5)
    assert window_means(values, fraction=0.25) == (3.0, 18.0)  # five each
    with pytest.raises(ValueError, match="no values"):
        window_means([])
    with pytest.raises(ValueError, match="fraction"):
        window_means([1.0], fraction=0.0)


def test_learning_verdict_on_known_numbers():
    good = learning_verdict(8.1, 6.3, 6.88, 0.84, 0.31)
    assert good == {
        "loss_falls": True,
        "below_control": True,
        "entropy_ratio": 0.84,
        "kl_uniform": 0.31,
        "teacher_healthy": True,
        "learns": True,
    }
    # the demo: the loss rises, the teacher ends at log K (uniform collapse)
    demo = learning_verdict(8.03, 8.32, 8.40, 1.0, 0.0)
    assert demo["loss_falls"] is False and demo["below_control"] is True
    assert demo["teacher_healthy"] is False and demo["learns"] is False
    # falls, but not below a control whose loss falls further: no learning
    assert learning_verdict(8.0, 7.0, 6.9, 0.5, 0.5)["learns"] is False
    # the limits themselves are healthy, just past them is not
    assert learning_verdict(8.0, 7.0, 7.5, 0.9, 0.1)["teacher_healthy"] is True
    assert learning_verdict(8.0, 7.0, 7.5, 0.901, 0.1)["teacher_healthy"] is False
    assert learning_verdict(8.0, 7.0, 7.5, 0.9, 0.099)["teacher_healthy"] is False
    # without a control: cannot tell, unless something else already fails
    no_control = learning_verdict(8.0, 7.0, None, 0.5, 0.5)
    assert no_control["below_control"] is None and no_control["learns"] is None
    assert learning_verdict(8.0, 9.0, None, 0.5, 0.5)["learns"] is False


def test_learning_summary_of_a_log():
    k = 100
    log = [
        {
            "step": s,
            "loss": 10.0 - s,
            "control_loss": 10.0 - 0.5 * s,
            "teacher_entropy": math.log(k) * (0.5 if s > 18 else 1.0),
            "teacher_kl_uniform": 0.2,
        }
        for s in range(1, 21)
    ]
    out = learning_summary(log, k)
    assert out["loss_first10"] == pytest.approx(8.5) and out["loss_last10"] == pytest.approx(-9.5)
    assert out["control_first10"] == pytest.approx(9.25)
    assert out["control_last10"] == pytest.approx(0.25)
    assert out["learning"]["entropy_ratio"] == pytest.approx(0.5)  # the last two steps' mean
    assert out["learning"]["learns"] is True
    without = learning_summary(
        [{k_: v for k_, v in r.items() if k_ != "control_loss"} for r in log], k
    )
    assert "control_last10" not in without and without["learning"]["below_control"] is None
    assert "learning" not in learning_summary(log, None)  # TimeTuning: no teacher
    assert learning_summary([], k) == {}


def test_learning_sentence():
    metrics = {
        "loss_first10": 8.1,
        "loss_last10": 6.3,
        "control_last10": 6.88,
        "learning": learning_verdict(8.1, 6.3, 6.88, 0.84, 0.31),
    }
    assert learning_sentence(metrics) == (
        "Loss 8.10 -> 6.30 (first/last 10% of steps), frozen control 6.88: below control. "
        "Teacher entropy 0.84 log K, KL 0.31: healthy. Verdict: learns."
    )
    bad = {**metrics, "control_last10": 6.0, "learning": learning_verdict(8.1, 6.3, 6.0, 1.0, 0)}
    assert "not below control" in learning_sentence(bad)
    assert "not healthy" in learning_sentence(bad) and "does not learn" in learning_sentence(bad)
    assert "predate" in learning_sentence({"steps": 3})


# -- the control in training -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dora", "dino"])
def test_control_is_the_frozen_network_and_leaves_training_alone(tmp_path, method):
    steps = 4
    run = train(
        tiny_config(tmp_path / "a", steps=steps, method=method, control=True), progress=False
    )
    plain = train(tiny_config(tmp_path / "b", steps=steps, method=method), progress=False)
    # a network that cannot move: lr 1e-30 changes no float32 weight, momentum 1 no teacher
    frozen = train(
        tiny_config(
            tmp_path / "c",
            steps=steps,
            method=method,
            lr=1e-30,
            min_lr=0.0,
            momentum_teacher=1.0,
        ),
        progress=False,
    )
    # before the first update the networks are the same: the same loss
    assert run.log[0]["control_loss"] == run.log[0]["loss"]
    # the control is the frozen network's loss at every step, its centre moving as in training
    assert column(run.log, "control_loss") == pytest.approx(column(frozen.log, "loss"), abs=1e-5)
    assert column(run.log, "control_teacher_entropy") == pytest.approx(
        column(frozen.log, "teacher_entropy"), abs=1e-4
    )
    # ... while the run itself trains away from it
    assert abs(run.log[-1]["loss"] - run.log[-1]["control_loss"]) > 1e-3
    # the control changes nothing of the training (no random numbers taken from the step)
    timing = ("images_per_s", "seconds", "control_loss", "control_teacher_entropy")
    assert [{k: v for k, v in r.items() if k not in timing} for r in run.log] == [
        {k: v for k, v in r.items() if k not in timing} for r in plain.log
    ]
    # log columns: present with the control, absent without
    assert all(set(CONTROL_LOG_COLUMNS) <= set(r) for r in run.log)
    assert not any("control_loss" in r for r in plain.log)
    with open(tmp_path / "a" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CONTROL_LOG_COLUMNS) and len(rows) == steps
    assert [float(r["control_loss"]) for r in rows] == pytest.approx(
        column(run.log, "control_loss")
    )
    with open(tmp_path / "b" / "log.csv") as f:
        assert next(csv.reader(f)) == list(LOG_COLUMNS)


def test_control_resumes_exactly(tmp_path):
    straight = train(tiny_config(tmp_path / "a", steps=6, control=True), progress=False)
    first = train(tiny_config(tmp_path / "b", steps=6, control=True), until=3, progress=False)
    assert len(first.log) == 3
    state = torch.load(first.checkpoint, weights_only=True)
    assert set(state["control"]) == {"student", "teacher", "dino_loss"}
    # the control's networks are the initial ones: the run's student has moved away from them
    key = "head.mlp.0.weight"
    assert not torch.equal(state["control"]["student"][key], state["student"][key])
    resumed = train(tiny_config(tmp_path / "b", steps=6, control=True, resume=True), progress=False)
    assert column(resumed.log, "step") == list(range(1, 7))
    for name in ("loss", "control_loss", "control_teacher_entropy"):
        assert column(resumed.log, name)[3:] == column(straight.log, name)[3:], name
    a = torch.load(straight.checkpoint, weights_only=True)["control"]
    b = torch.load(resumed.checkpoint, weights_only=True)["control"]
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    assert all(torch.equal(v, b["student"][k]) for k, v in a["student"].items())
    # the frozen teacher is the initial student: stored once, read back from the student
    assert a["teacher"] is None and b["teacher"] is None
    assert len(read_log(tmp_path / "b")) == 6


def test_control_stores_a_teacher_only_where_it_differs(tmp_path):
    from labkit.train.dora_dino import FrozenControl

    trainer = Trainer(tiny_config(tmp_path, steps=2, control=True), progress=False)
    control = trainer.method.control
    assert isinstance(control, FrozenControl)
    assert control.state_dict()["teacher"] is None  # the teacher starts as the student's copy
    with torch.no_grad():
        next(control.teacher.parameters()).add_(1.0)  # a teacher that differs is kept
    kept = control.state_dict()
    assert kept["teacher"] is not None
    name = next(iter(kept["teacher"]))
    assert not torch.equal(kept["teacher"][name], kept["student"][name])
    control.load_state_dict({**kept, "teacher": None})  # None reads the student's weights
    assert all(
        torch.equal(t, s)
        for t, s in zip(
            control.teacher.state_dict().values(), control.student.state_dict().values()
        )
    )
    control.load_state_dict(kept)  # a stored teacher is read as it is
    assert torch.equal(control.teacher.state_dict()[name], kept["teacher"][name])
    trainer.close()


def test_control_needs_a_checkpoint_with_a_control(tmp_path):
    train(tiny_config(tmp_path, steps=4), until=2, progress=False)
    with pytest.raises(ValueError, match="no frozen-network control"):
        Trainer(tiny_config(tmp_path, steps=4, control=True, resume=True), progress=False)
    # the other way round the control entry is not needed
    trainer = Trainer(tiny_config(tmp_path, steps=4, resume=True), progress=False)
    assert trainer.step == 2
    trainer.close()


def test_metrics_judge_learning(tmp_path):
    steps = 12
    result = train(tiny_config(tmp_path, steps=steps, control=True), progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    log = result.log
    loss, control = column(log, "loss"), column(log, "control_loss")
    assert metrics["loss_first10"] == pytest.approx(loss[0])  # 12 steps: one step each
    assert metrics["loss_last10"] == pytest.approx(loss[-1])
    assert metrics["control_first10"] == pytest.approx(control[0])
    assert metrics["control_last10"] == pytest.approx(control[-1])
    learning = metrics["learning"]
    ratio = log[-1]["teacher_entropy"] / math.log(TINY_TRAIN["out_dim"])
    assert learning["entropy_ratio"] == pytest.approx(ratio)
    assert learning["kl_uniform"] == pytest.approx(log[-1]["teacher_kl_uniform"])
    assert learning["below_control"] == (loss[-1] < control[-1])
    assert learning["loss_falls"] == (loss[-1] < loss[0])
    assert learning["learns"] == (
        learning["below_control"] and learning["loss_falls"] and learning["teacher_healthy"]
    )
    assert learning_sentence(metrics).startswith(f"Loss {loss[0]:.2f} -> {loss[-1]:.2f}")


def test_plot_log_draws_the_control_and_the_limits(tmp_path):
    from labkit.train.report import plot_log

    result = train(tiny_config(tmp_path, steps=3, control=True), progress=False)
    fig = plot_log(tmp_path)  # out_dim read from the run's metrics.json
    labels = [str(line.get_label()) for line in fig.axes[0].lines]
    (control,) = [
        line for line in fig.axes[0].lines if line.get_label() == "frozen-network control"
    ]
    assert control.get_linestyle() == "--"
    assert list(control.get_ydata()) == pytest.approx(column(result.log, "control_loss"))
    assert "loss" in labels
    limits = {str(line.get_label()): line for line in fig.axes[1].lines}
    log_k = math.log(TINY_TRAIN["out_dim"])
    assert list(limits[f"log K (K={TINY_TRAIN['out_dim']})"].get_ydata()) == pytest.approx(
        [log_k] * 2
    )
    assert list(limits["0.9 log K"].get_ydata()) == pytest.approx([0.9 * log_k] * 2)
    assert "entropy, frozen control" in limits
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "entropy, frozen control" in legend and not any("log K" in t for t in legend)
    plain = plot_log(result.log)  # records alone: no K, no limits
    assert not any("log K" in str(line.get_label()) for line in plain.axes[1].lines)


def test_timetuning_ignores_the_control_and_the_cli_sets_it(tmp_path, capsys):
    from labkit.cli import main

    assert "control" in IGNORED_FIELDS["timetuning"]
    assert "student_temp" in IGNORED_FIELDS["timetuning"]  # TimeTuning has no DINO loss
    assert "control" not in IGNORED_FIELDS["dora"] + IGNORED_FIELDS["dino"]
    assert TrainConfig(method="timetuning", control=True).control is True
    with pytest.raises(ValueError, match="control must be true or false"):
        TrainConfig(control="yes")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", steps=2).to_dict()))
    assert main(["train", "--config", str(path), "-o", "control=true", "--quiet"]) == 0
    log = read_log(tmp_path / "run")
    assert all("control_loss" in r for r in log)
    assert log[0]["control_loss"] == log[0]["loss"]
