"""The trainer: exact resume, NaN stop, checkpoint layout and loading, logs, frozen last layer,
CLI.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from labkit.losses import DINOLoss
from labkit.models import load_backbone, load_checkpoint_state
from labkit.train import TrainConfig, Trainer, TrainingDiverged, load_trained, read_log, train
from labkit.train.trainer import LOG_COLUMNS, cosine_schedule

from tiny import TINY_ARCH, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def losses(log):
    return [r["loss"] for r in log]


# TimeTuning's fields for the same tiny backbone (the DoRA / DINO fields are ignored by it)
TIMETUNING = dict(method="timetuning", head_dims=(64, 32), num_prototypes=16, trainable_blocks=1)


@pytest.mark.parametrize("method", ["dora", "timetuning"])
def test_resume_repeats_an_uninterrupted_run(tmp_path, method):
    extra = TIMETUNING if method == "timetuning" else {}
    straight = train(tiny_config(tmp_path / "a", steps=6, **extra), progress=False)
    first = train(tiny_config(tmp_path / "b", steps=6, **extra), until=3, progress=False)
    assert first.metrics["steps"] == 3 and len(first.log) == 3
    resumed = train(tiny_config(tmp_path / "b", steps=6, resume=True, **extra), progress=False)
    assert [r["step"] for r in resumed.log] == list(range(1, 7))
    assert losses(resumed.log) == pytest.approx(losses(straight.log), abs=1e-6)
    assert losses(resumed.log)[3:] == losses(straight.log)[3:]  # bit for bit on the CPU
    assert (
        resumed.log[3:]
        == [  # every diagnostic too, but the timings
            {**r, "images_per_s": s["images_per_s"], "seconds": s["seconds"]}
            for r, s in zip(straight.log[3:], resumed.log[3:])
        ]
    )
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for name in ("student", "teacher"):
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), (name, key)
    if method == "dora":
        assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    assert len(read_log(tmp_path / "b")) == 6  # the log continues, no duplicates


def test_resume_rejects_another_architecture(tmp_path):
    train(tiny_config(tmp_path, steps=1), progress=False)
    with pytest.raises(ValueError, match="out_dim"):
        Trainer(tiny_config(tmp_path, steps=2, out_dim=128, resume=True), progress=False)


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = DINOLoss.forward_dora
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(DINOLoss, "forward_dora", poisoned)
    cfg = tiny_config(tmp_path, steps=6, checkpoint_every=1)
    trainer = Trainer(cfg, progress=False)
    with pytest.raises(TrainingDiverged, match=r"step 4.*checkpoint\.pth") as info:
        trainer.fit()
    assert info.value.step == 4 and info.value.checkpoint == tmp_path / "checkpoint.pth"
    good = torch.load(info.value.checkpoint, weights_only=True)
    assert good["step"] == 3 and trainer.step == 3
    for key, value in good["student"].items():  # the failing step updated nothing
        assert torch.equal(value, trainer.student.state_dict()[key])
    assert all(torch.isfinite(v).all() for v in good["teacher"].values())
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []  # no temp files


def test_a_huge_learning_rate_is_stopped(tmp_path):
    with pytest.raises(TrainingDiverged, match="loss is (nan|inf)"):
        train(
            tiny_config(tmp_path, steps=8, lr=1e30, clip_grad=0.0, scale_lr=False), progress=False
        )


def test_checkpoint_layout_and_loading(tmp_path):
    result = train(tiny_config(tmp_path, steps=2, seed=3), progress=False)
    state = torch.load(result.checkpoint, weights_only=True)  # plain tensors and containers
    assert set(state) >= {
        "student",
        "teacher",
        "optimizer",
        "dino_loss",
        "step",
        "epoch",
        "config",
        "rng",
        "labkit_version",
    }
    assert (
        state["step"] == 2 and state["epoch"] == 1 and state["config"]["model_kwargs"]["depth"] == 2
    )
    assert all(k.startswith(("backbone.", "head.")) for k in state["teacher"])
    assert set(state["rng"]) >= {"torch", "numpy", "python", "data"}
    # the checkpoint records the position-embedding rule actually used ("auto" resolved)
    assert state["config"]["pos_embed_rule"] == "timm"
    assert TrainConfig(**state["config"]) == tiny_config(tmp_path, steps=2, seed=3).replace(
        pos_embed_rule="timm"
    )

    images = torch.randn(2, 3, 64, 64)
    trainer = Trainer(tiny_config(tmp_path, steps=2, seed=3, resume=True), progress=False)
    with torch.no_grad():
        expected = trainer.teacher.backbone.eval()(images)
        # labkit.models reads the teacher by default (architecture given by the caller) ...
        model = load_backbone(
            "vit_small_patch16_224", checkpoint=result.checkpoint, img_size=64, **TINY_ARCH
        )
        torch.testing.assert_close(model(images), expected)
        # at timm's default img_size the position embedding is resampled (4x4 -> 14x14 -> 4x4)
        resampled = load_backbone(
            "vit_small_patch16_224", checkpoint=result.checkpoint, **TINY_ARCH
        )
        torch.testing.assert_close(resampled(images), expected, atol=0.05, rtol=0.05)
        # ... and load_trained rebuilds it from the stored config
        rebuilt = load_trained(tmp_path)
        torch.testing.assert_close(rebuilt(images), expected)
        student = load_trained(result.checkpoint, which="student")
        torch.testing.assert_close(student(images), trainer.student.backbone.eval()(images))
        assert not torch.allclose(student(images), expected)  # teacher and student really differ
    assert set(load_checkpoint_state(result.checkpoint)) == set(model.state_dict())
    with pytest.raises(ValueError, match="no checkpoint"):
        load_trained(tmp_path / "nowhere")


def test_logs_schedules_and_metrics(tmp_path):
    from labkit.train.report import plot_log

    cfg = tiny_config(tmp_path, steps=3, warmup_epochs=1.0, lr=1e-3, scale_lr=False)
    result = train(cfg, progress=False)
    log = read_log(tmp_path / "log.jsonl")
    assert log == result.log and [r["step"] for r in log] == [1, 2, 3]
    assert set(LOG_COLUMNS) <= set(log[0])
    assert [r["lr"] for r in log] == pytest.approx(
        [cosine_schedule(s, 3, 1e-3, 1e-6, 2) for s in range(3)]
    )
    assert [r["momentum"] for r in log] == pytest.approx(
        [cosine_schedule(s, 3, 0.996, 1.0) for s in range(3)]
    )
    assert all(r["images_per_s"] > 0 and r["teacher_entropy"] >= 0 for r in log)
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].split(",") == list(LOG_COLUMNS) and len(rows) == 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["final_loss"] == pytest.approx(log[-1]["loss"])
    assert metrics["images_per_second"] > 0 and metrics["checkpoint"].endswith("checkpoint.pth")
    # the configuration that ran (resolved: pos_embed_rule "auto" became the rule used), as the
    # checkpoint stores it; the pipeline's report lists it
    stored = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["config"]
    assert metrics["config"] == stored and stored["pos_embed_rule"] == "timm"
    assert {k: v for k, v in stored.items() if k != "pos_embed_rule"} == {
        k: v for k, v in cfg.to_dict().items() if k != "pos_embed_rule"
    }
    assert "config" not in result.metrics  # printed by `labkit train`: the numbers only
    fig = plot_log(tmp_path)
    assert len(fig.axes) == 4  # loss, collapse signals, lr (+ weight-decay twin)
    # a fresh run in the same folder is refused; forced, it starts a new log, the old one kept
    with pytest.raises(ValueError, match="already holds a finished training run"):
        train(tiny_config(tmp_path, steps=1), progress=False)
    train(tiny_config(tmp_path, steps=1), progress=False, force=True)
    assert len(read_log(tmp_path)) == 1
    (backup,) = tmp_path.glob("replaced-*")
    assert len(read_log(backup / "log.jsonl")) == 3


def test_last_layer_frozen_for_the_first_epoch(tmp_path):
    trainer = Trainer(
        tiny_config(tmp_path, steps=4, steps_per_epoch=2, freeze_last_layer=1), progress=False
    )

    def last():
        return trainer.student.head.last_layer.parametrizations.weight.original1.detach().clone()

    def other():
        return trainer.student.head.mlp[0].weight.detach().clone()

    start, start_other = last(), other()
    trainer.fit(until=2)
    assert torch.equal(last(), start) and not torch.equal(other(), start_other)
    trainer.fit(until=3)
    assert not torch.equal(last(), start)


def test_dino_method_trains(tmp_path):
    result = train(tiny_config(tmp_path, steps=2, method="dino"), progress=False)
    assert result.metrics["method"] == "dino" and len(result.log) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.log)


def test_cli_train(tmp_path, capsys):
    from labkit.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({**tiny_config(tmp_path / "run", steps=5).to_dict(), "num_local": 0})
    )
    assert main(["train", "--config", str(path), "-o", "steps=2", "-o", "k=2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint:" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert state["config"]["k"] == 2 and state["config"]["num_local"] == 0
    assert main(["train", "--config", str(path), "-o", "k=0"]) == 2
    assert "k must be >= 1" in capsys.readouterr().err


def test_headless_progress_prints_a_line_per_interval_not_per_step(tmp_path, monkeypatch, capsys):
    """Under papermill the training's progress bar is plain text in the notebook's output: a few
    lines for a short run (its start and end), not one or two per step."""
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    train(tiny_config(tmp_path, steps=6), progress=True)
    err = capsys.readouterr().err
    lines = [part for part in err.replace("\r", "\n").splitlines() if "/6 [" in part]
    assert lines and lines[-1].lstrip().startswith("dora: 100%")
    assert len(lines) <= 3, lines  # 0/6, perhaps one within 10 s, 6/6
