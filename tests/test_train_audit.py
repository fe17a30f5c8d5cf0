"""Fixes from the audit against the official DINO and DoRA code (docs/science.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import labkit.train.trainer as trainer_module
from labkit.losses import DINOLoss
from labkit.train import TrainConfig, train
from labkit.train.trainer import clip_gradients

from tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def official_clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """DINO's utils.clip_gradients, verbatim but for style (facebookresearch/dino utils.py)."""
    norms = []
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def model_with_gradients(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    (model(torch.randn(5, 8)).pow(2).sum() * scale).backward()
    return model


@pytest.mark.parametrize("clip", [0.01, 0.5, 3.0, 1e6])
def test_per_parameter_clipping_matches_dino(clip):
    ours, theirs = model_with_gradients(50.0), model_with_gradients(50.0)
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours.parameters()]))
    total = clip_gradients(list(ours.parameters()), clip, "per_parameter")
    norms = official_clip_gradients(theirs, clip)
    assert total == pytest.approx(float(before), rel=1e-6)
    assert total == pytest.approx(sum(n * n for n in norms) ** 0.5, rel=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
        assert float(a.grad.norm()) <= clip * (1 + 1e-5)


def test_global_clipping_is_torchs_and_differs_from_per_parameter():
    ours, reference = model_with_gradients(50.0), model_with_gradients(50.0)
    total = clip_gradients(list(ours.parameters()), 1.0, "global")
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    assert total == pytest.approx(float(expected))
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    joint = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours.parameters()]))
    assert float(joint) == pytest.approx(1.0, rel=1e-4)  # per parameter would leave it above 1
    unclipped = model_with_gradients(50.0)
    unclipped_norm = clip_gradients(list(unclipped.parameters()), 0.0, "per_parameter")
    assert unclipped_norm == pytest.approx(total)
    with pytest.raises(ValueError, match="mode"):
        clip_gradients(list(unclipped.parameters()), 1.0, "layer")


@pytest.mark.parametrize("mode", ["global", "per_parameter"])
def test_frozen_last_layer_stays_out_of_the_clipping_norm(tmp_path, monkeypatch, mode):
    seen = []
    original = trainer_module.clip_gradients

    def spy(parameters, max_norm, how):
        names = [n for n, _ in trainer.student.named_parameters()]
        seen.append(({n for n, p in zip(names, parameters) if p.grad is not None}, how))
        return original(parameters, max_norm, how)

    monkeypatch.setattr(trainer_module, "clip_gradients", spy)
    cfg = tiny_config(
        tmp_path, steps=3, clip_grad_mode=mode, norm_last_layer=False, freeze_last_layer=1
    )
    trainer = trainer_module.Trainer(cfg, progress=False)
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert [how for _, how in seen] == [mode] * 3
    frozen, free = seen[0][0], seen[2][0]  # steps 1-2: epoch 0 (2 steps per epoch); step 3: 1
    assert not any("last_layer" in n for n in frozen)
    assert any("last_layer" in n for n in free)


def test_center_starts_from_the_first_batch():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 16) + 3.0  # (G, B, K), far from a zero center
    student = torch.randn(4 * 6, 16)
    first = DINOLoss(16, center_init="first_batch")
    loss = first(student, teacher, 0)
    mean = teacher.reshape(-1, 16).mean(0, keepdim=True)
    torch.testing.assert_close(first.center, mean)  # EMA of the same mean leaves it there
    by_hand = DINOLoss(16)
    by_hand.center.copy_(mean)
    torch.testing.assert_close(loss, by_hand(student, teacher, 0))
    zeros = DINOLoss(16)
    assert not torch.allclose(zeros(student, teacher, 0), loss)
    torch.testing.assert_close(zeros.center, 0.1 * mean)
    # the second batch is an ordinary EMA update
    second = torch.randn(2, 6, 16)
    first(student, second, 0)
    torch.testing.assert_close(first.center, 0.9 * mean + 0.1 * second.reshape(-1, 16).mean(0))


def test_a_loaded_center_is_not_replaced():
    trained = DINOLoss(16)
    trained.center.fill_(0.5)
    resumed = DINOLoss(16, center_init="first_batch")
    resumed.load_state_dict(copy.deepcopy(trained.state_dict()))
    resumed.start_center(torch.randn(8, 16))
    torch.testing.assert_close(resumed.center, torch.full((1, 16), 0.5))
    with pytest.raises(ValueError, match="center_init"):
        DINOLoss(16, center_init="mean")


def test_trainer_uses_the_first_batch_center(tmp_path):
    cfg = tiny_config(tmp_path / "a", steps=1)
    zeros = train(cfg, progress=False)
    first = train(
        cfg.replace(out_dir=str(tmp_path / "b"), center_init="first_batch"), progress=False
    )
    # step 1's statistics use the center the loss used: centred on the batch, flatter targets
    assert first.log[0]["teacher_entropy"] > zeros.log[0]["teacher_entropy"]
    assert first.log[0]["loss"] != zeros.log[0]["loss"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("clip_grad_mode", "layer"),
        ("center_init", "mean"),
        ("threads", -1),
        ("collapse_patience", -2),
    ],
)
def test_new_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory):
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(
            folder / f"{i:05d}.png"
        )
    return folder


def test_dora_pre_crop_feeds_the_global_view_and_the_local_crops(frames_folder):
    from labkit.train.data import ClipDataset

    args = dict(
        num_frames=3, frame_step=2, img_size=32, local_size=16, num_local=2, photometric=False
    )
    ds = ClipDataset(frames_folder, pre_crop=True, **args)
    seen = {"global": [], "local": []}

    def spy(name, crop):
        def call(x):
            seen[name].append(tuple(x.shape))
            return crop(x)

        return call

    ds._global_crop = spy("global", ds._global_crop)
    ds._local_crop = spy("local", ds._local_crop)
    item = ds[(0, 7)]
    side = round(32 * 300 / 224)  # DoRA's 300 px at 224
    assert seen["global"] == [(3, 3, side, side)]  # one crop of the whole pre-cropped clip
    assert seen["local"] == [(3, side, side)] * 6  # n local crops per frame, from the pre-crop
    assert item["global"].shape == (1, 3, 3, 32, 32) and item["local"].shape == (2, 3, 3, 16, 16)
    again = ClipDataset(frames_folder, pre_crop=True, **args)[(0, 7)]
    torch.testing.assert_close(again["global"], item["global"])  # seeded, as without it
    plain = ClipDataset(frames_folder, **args)[(0, 7)]
    assert not torch.allclose(plain["global"], item["global"])
    with pytest.raises(ValueError, match="pre_crop"):
        ClipDataset(frames_folder, pre_crop=True, mode="dino", **args)


def test_trainer_passes_pre_crop_for_dora_only(tmp_path):
    from labkit.train import Trainer

    for method, expected in (("dora", True), ("dino", False)):
        cfg = tiny_config(tmp_path / method, steps=1, method=method, pre_crop=True)
        trainer = Trainer(cfg, progress=False)
        try:
            assert trainer.dataset.pre_crop is expected
            if method == "dora":
                trainer.fit()  # a step runs on the pre-cropped clips
        finally:
            trainer.close()
