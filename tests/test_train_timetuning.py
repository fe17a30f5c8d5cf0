"""The trainer with method="timetuning": config fields, loss decrease, frozen blocks, prototypes,
checkpoint layout and loading, exact resume, logs, divergence, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from labkit.models import load_backbone, load_checkpoint_state
from labkit.train import TrainConfig, Trainer, TrainingDiverged, load_config, load_trained, train
from labkit.train.data import ClipDataset
from labkit.train.trainer import TIMETUNING_LOG_COLUMNS, cosine_schedule, read_log

from tiny import TINY_ARCH

ARCH = {**TINY_ARCH, "depth": 3}  # one block more: the tests below name blocks 0-2
TINY = dict(
    method="timetuning",
    model_kwargs=ARCH,
    img_size=64,
    num_frames=3,
    frame_step=3,
    batch_size=2,
    steps_per_epoch=2,
    checkpoint_every=0,
    head_dims=(64, 32),
    num_prototypes=16,
    trainable_blocks=1,
    lr=1e-3,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def config(out_dir, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out_dir": str(out_dir), **kw})


def losses(log):
    return [r["loss"] for r in log]


# -- config ------------------------------------------------------------------------------------


def test_method_defaults_and_round_trip(tmp_path):
    dora, tt = TrainConfig(), TrainConfig(method="timetuning")
    assert (dora.lr, dora.scale_lr, dora.warmup_epochs) == (5e-4, True, 1.0)
    assert dora.drop_path_rate == 0.1
    assert dora.sinkhorn_iterations == 30
    # the official TimeTuning recipe: head lr 1e-4, backbone a tenth, no scaling, no warm-up
    assert (tt.lr, tt.scale_lr, tt.warmup_epochs, tt.drop_path_rate) == (1e-4, False, 0.0, 0.0)
    assert tt.sinkhorn_iterations == 10 and tt.backbone_lr_ratio == 0.1
    assert tt.num_prototypes == 200 and tt.head_dims == (1024, 1024, 512, 256)
    assert tt.trainable_blocks == 2 and tt.forwarder_n_last == 7 and tt.forwarder_radius == 6
    explicit = TrainConfig(method="timetuning", lr=3e-4, sinkhorn_iterations=5)
    assert explicit.lr == 3e-4 and explicit.sinkhorn_iterations == 5
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path).to_dict()))
    assert load_config(path) == config(tmp_path)
    over = load_config(None, ["method=timetuning", "head_dims=[32,16]", "trainable_blocks=3"])
    assert over.head_dims == (32, 16) and over.lr == 1e-4


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_prototypes", 0),
        ("head_dims", []),
        ("head_dims", [8, 0]),
        ("trainable_blocks", -1),
        ("forwarder_topk", 0),
        ("forwarder_temperature", 0.0),
        ("forwarder_radius", -1),
        ("forwarder_n_last", -1),
        ("backbone_lr_ratio", -0.1),
        ("hard_targets", "yes"),
        ("train_norm", 1),
        ("num_frames", 1),
        ("method", "timet"),
    ],
)
def test_invalid_timetuning_fields_name_their_key(key, value):
    with pytest.raises(ValueError, match=key):
        TrainConfig(**{"method": "timetuning", key: value})


def test_the_model_gets_the_config_fields(tmp_path):
    from labkit.timetuning import TimeTuningConfig

    cfg = config(
        tmp_path,
        epsilon=0.1,
        sinkhorn_iterations=4,
        student_temp=0.2,
        hard_targets=False,
        forwarder_n_last=2,
        forwarder_topk=3,
        forwarder_temperature=0.05,
        forwarder_radius=0,
        train_norm=True,
    )
    trainer = Trainer(cfg, progress=False)
    assert trainer.student.config == TimeTuningConfig(
        num_prototypes=16,
        head_dims=(64, 32),
        trainable_blocks=1,
        train_norm=True,
        epsilon=0.1,
        sinkhorn_iterations=4,
        temperature=0.2,
        hard_targets=False,
        n_last=2,
        topk=3,
        affinity_temperature=0.05,
        radius=None,
    )
    assert trainer.teacher is None and trainer.loss_fn is None
    assert trainer.backbone is trainer.student.backbone
    trainer.close()


def test_trainable_blocks_beyond_the_depth_are_refused(tmp_path):
    with pytest.raises(ValueError, match="trainable_blocks 4 exceeds the model's 3 blocks"):
        Trainer(config(tmp_path, trainable_blocks=4), progress=False)


# -- training ----------------------------------------------------------------------------------


def test_a_few_steps_lower_the_loss_on_a_fixed_clip(tmp_path, monkeypatch):
    """Every step sees the same augmented clip (the dataset is pinned to one item)."""
    original = ClipDataset.__getitem__
    monkeypatch.setattr(ClipDataset, "__getitem__", lambda self, item: original(self, (3, 7)))
    result = train(config(tmp_path, steps=8), progress=False)
    loss = losses(result.log)
    assert all(b < a for a, b in zip(loss, loss[1:])), loss
    assert loss[-1] < 0.5 * loss[0]


def test_only_the_trainable_blocks_and_the_head_change(tmp_path):
    trainer = Trainer(config(tmp_path, steps=3, trainable_blocks=1), progress=False)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.fit()
    after = trainer.student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k in before if k.startswith(("backbone.blocks.2.", "head."))}
    assert changed == trainable  # embeddings, blocks 0-1 and the final norm stay as they were
    prototypes = trainer.student.head.prototypes.detach()
    torch.testing.assert_close(prototypes.norm(dim=1), torch.ones(16))  # back on the sphere
    # the optimiser groups: head at lr, the trainable block at lr * backbone_lr_ratio
    record = trainer.log[0]
    assert record["backbone_lr"] == pytest.approx(0.1 * record["lr"])
    lrs = sorted({g["lr"] for g in trainer.optimizer.param_groups})
    assert lrs == pytest.approx([0.1 * trainer.log[-1]["lr"], trainer.log[-1]["lr"]])
    for group in trainer.optimizer.param_groups:  # weight decay on weight matrices only
        matrices = all(p.ndim > 1 for p in group["params"])
        assert group["weight_decay"] == (trainer.log[-1]["wd"] if matrices else 0.0)
    trainer.close()


def test_train_norm_and_zero_trainable_blocks(tmp_path):
    cfg = config(tmp_path, steps=2, trainable_blocks=0, train_norm=True)
    trainer = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.fit()
    after = trainer.student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith(("backbone.norm.", "head."))}
    trainer.close()


def test_resume_rejects_another_head(tmp_path):
    train(config(tmp_path, steps=1), progress=False)
    with pytest.raises(ValueError, match="num_prototypes"):
        Trainer(config(tmp_path, steps=2, num_prototypes=8, resume=True), progress=False)
    with pytest.raises(ValueError, match="method"):
        Trainer(config(tmp_path, steps=2, method="dino", resume=True), progress=False)


def test_checkpoint_layout_and_loading(tmp_path):
    result = train(config(tmp_path, steps=2, seed=3), progress=False)
    state = torch.load(result.checkpoint, weights_only=True)
    assert set(state) >= {"student", "teacher", "optimizer", "step", "config", "rng"}
    assert "dino_loss" not in state and state["config"]["method"] == "timetuning"
    assert state["teacher"].keys() == state["student"].keys()
    for key, value in state["student"].items():  # no teacher: both names hold the tuned model
        assert torch.equal(value, state["teacher"][key])
    assert "head.prototypes" in state["student"]
    # the checkpoint records the position-embedding rule actually used ("auto" resolved)
    assert TrainConfig(**state["config"]) == config(tmp_path, steps=2, seed=3).replace(
        pos_embed_rule=state["config"]["pos_embed_rule"]
    )
    assert state["config"]["pos_embed_rule"] == "timm"

    trainer = Trainer(config(tmp_path, steps=2, seed=3, resume=True), progress=False)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = trainer.backbone.eval()(images)
        for which in ("teacher", "student"):
            model = load_backbone(
                "vit_small_patch16_224",
                checkpoint=result.checkpoint,
                img_size=64,
                which=which,
                **ARCH,
            )
            torch.testing.assert_close(model(images), expected)
            torch.testing.assert_close(load_trained(tmp_path, which=which)(images), expected)
    assert set(load_checkpoint_state(result.checkpoint)) == set(model.state_dict())
    trainer.close()


def test_logs_and_metrics(tmp_path):
    from labkit.train.report import plot_log

    result = train(config(tmp_path, steps=3, lr=1e-3, min_lr=0.0), progress=False)
    log = read_log(tmp_path)
    assert log == result.log and [r["step"] for r in log] == [1, 2, 3]
    assert set(log[0]) == set(TIMETUNING_LOG_COLUMNS)
    expected = [cosine_schedule(s, 3, 1e-3, 0.0) for s in range(3)]
    assert [r["lr"] for r in log] == pytest.approx(expected)
    for r in log:
        assert 0 <= r["agreement"] <= 1 and 1 / 16 <= r["target_confidence"] <= 1
        assert 1 <= r["target_clusters"] <= 16 and 1 <= r["first_clusters"] <= 16
        assert r["images_per_s"] > 0 and r["grad_norm"] > 0
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].split(",") == list(TIMETUNING_LOG_COLUMNS) and len(rows) == 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "timetuning" and metrics["steps"] == 3
    assert metrics["final_loss"] == pytest.approx(log[-1]["loss"])
    assert metrics["agreement"] == log[-1]["agreement"] and "teacher_entropy" not in metrics
    assert metrics["images_per_step"] == 2 * 3
    fig = plot_log(tmp_path)
    assert fig.axes[0].get_title() == "TimeTuning loss" and len(fig.axes) == 5


def test_non_finite_weights_stop_with_training_diverged(tmp_path):
    trainer = Trainer(config(tmp_path, steps=3, checkpoint_every=1), progress=False)
    trainer.fit(until=1)
    with torch.no_grad():
        trainer.student.backbone.blocks[-1].mlp.fc2.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step 2"):  # counted from 1, as in the log
        trainer.fit()
    trainer.close()


def test_batches_are_clips_of_one_global_view_without_local_crops(tmp_path):
    trainer = Trainer(config(tmp_path, steps=1, num_local=4), progress=False)
    assert trainer.dataset.mode == "dora" and trainer.dataset.num_local == 0
    batch = next(iter(trainer.loader(0, 1)))
    assert batch["global"].shape == (2, 1, 3, 3, 64, 64)
    trainer.close()


def test_cli_trains_timetuning(tmp_path, capsys):
    from labkit.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "run", steps=5).to_dict()))
    assert main(["train", "--config", str(path), "-o", "steps=2", "--quiet"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "timetuning" and metrics["steps"] == 2
