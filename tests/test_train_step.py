"""DoRA / DINO steps against frame-by-frame loops, batch-order invariance, collapse statistics, EMA,
and a tiny model that genuinely learns on a repeated batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit.attention import extract
from labkit.losses import DINOLoss
from labkit.tracking import discover_objects, masked_views, track_objects
from labkit.train import TrainConfig
from labkit.train.step import (
    build_networks,
    dino_step,
    discover_and_track,
    dora_step,
    teacher_forward,
    teacher_statistics,
    update_teacher,
)

from tiny import TINY_NETWORK

TINY = {**TINY_NETWORK, "drop_path_rate": 0.0}  # no stochastic depth: deterministic steps
B, T, N_LOCAL, K_OBJ = 2, 3, 2, 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    student, teacher = build_networks(TrainConfig(**TINY))
    # make the teacher differ from the student, so that mixing them up shows
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return student.eval(), teacher


def batch(views=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "global": torch.randn(B, views, T, 3, 64, 64, generator=g),
        "local": torch.randn(B, N_LOCAL, T, 3, 32, 32, generator=g),
    }


def test_teacher_forward_equals_the_model_and_extract(nets):
    _, teacher = nets
    images = torch.randn(5, 3, 64, 48)
    out = teacher_forward(teacher, images)
    torch.testing.assert_close(out.logits, teacher(images), rtol=1e-5, atol=1e-6)
    ref = extract(teacher.backbone, images, kinds=("tokens", "keys", "queries"))
    torch.testing.assert_close(out.attention, ref.attention)
    for name, value in (("tokens", out.tokens), ("keys", out.keys), ("queries", out.queries)):
        torch.testing.assert_close(value, ref.features[name])
    assert out.attention.shape == (5, 4, 4, 3) and out.keys.shape == (5, 4, 3, 64)
    assert not out.logits.is_inference()  # usable as a loss target


def test_dora_step_shapes(nets):
    student, teacher = nets
    out = dora_step(student, teacher, DINOLoss(256), batch(), epoch=0, k=K_OBJ, heads=[0, 1, 2])
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item()) and out.loss.requires_grad
    assert out.discovery.prototypes.shape == (B, K_OBJ, 64)
    assert out.discovery.assignment.shape == (B, 16, K_OBJ)
    assert out.tracks.maps.shape == (B, T, K_OBJ, 4, 4) and out.tracks.masks.dtype == torch.bool
    assert out.teacher_logits.shape == (T * B, 256) and out.images == B * T
    assert out.center.shape == (1, 256)


def test_dora_step_equals_a_frame_by_frame_loop(nets):
    """Everything batched (teacher over B*T frames, student over k*T*B views) equals the official
    code's loops: teacher per frame, discovery per clip on its first frame, student per object and
    per frame, local crops per frame."""
    student, teacher = nets
    data = batch(seed=1)
    ours_loss = DINOLoss(256, center_momentum=0.5)
    out = dora_step(student, teacher, ours_loss, data, epoch=0, k=K_OBJ, heads=[2, 0, 3])

    frames = data["global"][:, 0]  # (B, T, 3, S, S)
    masks = []
    with torch.no_grad():
        teacher_t = torch.stack([teacher(frames[:, t]) for t in range(T)])  # (T, B, K)
    for b in range(B):
        ref = extract(teacher.backbone, frames[b], kinds=("tokens", "keys", "queries"))
        found = discover_objects(
            ref.attention[:1].clone(),
            ref.features["queries"][:1].clone(),
            ref.features["tokens"][:1].clone(),
            k=K_OBJ,
            heads=[2, 0, 3],
        )
        tracks = track_objects(found.prototypes, ref.features["keys"][None].clone())
        torch.testing.assert_close(
            found.prototypes[0], out.discovery.prototypes[b], rtol=1e-4, atol=1e-5
        )
        masks.append(tracks.masks[0])
    masks = torch.stack(masks)  # (B, T, k, gh, gw)
    assert torch.equal(masks, out.tracks.masks)
    views = masked_views(frames, masks, 16)  # (k, B, T, 3, S, S)
    objects = torch.stack(
        [torch.stack([student(views[j, :, t]) for t in range(T)]) for j in range(K_OBJ)]
    )
    local = torch.stack(
        [torch.stack([student(data["local"][:, c, t]) for t in range(T)]) for c in range(N_LOCAL)]
    )
    ref_loss = DINOLoss(256, center_momentum=0.5)
    expected = ref_loss.forward_dora(objects, local, teacher_t, 0)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_loss.center, ref_loss.center)
    torch.testing.assert_close(
        out.teacher_logits, teacher_t.reshape(T * B, -1), rtol=1e-5, atol=1e-6
    )


def test_dino_step_equals_per_view_loops(nets):
    student, teacher = nets
    data = batch(views=2, seed=2)
    out = dino_step(student, teacher, DINOLoss(256), data, epoch=0)
    images = lambda v: data["global"][:, v].flatten(0, 1)  # (B*T, 3, S, S), clip-major  # noqa: E731
    with torch.no_grad():
        teacher_views = [teacher(images(v)) for v in range(2)]
    student_views = [student(images(v)) for v in range(2)]
    student_views += [student(data["local"][:, c].flatten(0, 1)) for c in range(N_LOCAL)]
    # DINO: every (teacher view, student view) pair but a view against itself
    expected, pairs = 0.0, 0
    for g, q in enumerate(teacher_views):
        target = F.softmax(q / 0.04, dim=-1)
        for v, s in enumerate(student_views):
            if v != g:
                expected = expected + (-(target * F.log_softmax(s / 0.1, dim=-1)).sum(-1)).mean()
                pairs += 1
    torch.testing.assert_close(out.loss, expected / pairs, rtol=1e-5, atol=1e-6)
    assert out.discovery is None and out.images == B * T


@pytest.mark.parametrize("heads", [[1, 3, 0], "random"])
def test_objects_do_not_depend_on_batch_order(nets, heads):
    _, teacher = nets
    data = torch.randn(4, T, 3, 64, 64)
    order = torch.tensor([2, 0, 3, 1])
    results = []
    for frames in (data, data[order]):
        out = teacher_forward(teacher, frames.flatten(0, 1))
        g = torch.Generator().manual_seed(5)
        results.append(discover_and_track(out, 4, k=K_OBJ, heads=heads, generator=g))
    (d0, t0), (d1, t1) = results
    torch.testing.assert_close(d1.prototypes, d0.prototypes[order], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d1.assignment, d0.assignment[order], rtol=1e-5, atol=1e-6)
    assert torch.equal(t1.masks, t0.masks[order])
    assert torch.equal(d1.heads, d0.heads[order])


def test_teacher_statistics_against_definitions():
    k = 64
    uniform = teacher_statistics(torch.zeros(10, k), torch.zeros(1, k), 0.04)
    assert uniform["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-6)
    assert uniform["teacher_kl_uniform"] == pytest.approx(0.0, abs=1e-6)
    one_dim = torch.zeros(10, k)
    one_dim[:, 5] = 10.0  # every row puts (nearly) all its mass on dimension 5
    collapsed = teacher_statistics(one_dim, torch.zeros(1, k), 0.04)
    assert collapsed["teacher_entropy"] < 1e-3
    assert collapsed["teacher_kl_uniform"] == pytest.approx(math.log(k), rel=1e-3)
    # the center is subtracted before sharpening: centering this collapse away restores uniformity
    centred = teacher_statistics(one_dim, one_dim[:1], 0.04)
    assert centred["teacher_kl_uniform"] == pytest.approx(0.0, abs=1e-6)
    logits, center = torch.randn(7, k), torch.randn(1, k)
    q = torch.softmax(((logits - center) / 0.07).double(), -1)
    h = float(-torch.special.xlogy(q, q).sum(-1).mean())
    m = q.mean(0)
    kl = float((m * (m * k).log()).sum())
    stats = teacher_statistics(logits, center, 0.07)
    assert stats["teacher_entropy"] == pytest.approx(h, rel=1e-5)
    assert stats["teacher_kl_uniform"] == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_update_teacher_is_an_ema():
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    update_teacher(teacher, student, 0.9)
    for old, new, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * s.detach())


def test_a_tiny_model_learns_a_repeated_batch(tmp_path):
    """Fixed targets (teacher frozen: momentum 1, center frozen), one batch repeated: the loss
    must fall clearly; with a negligible learning rate (the control) it must not move."""
    from labkit.train import Trainer

    common = dict(
        **TINY,
        num_frames=2,
        frame_step=3,
        num_local=1,
        batch_size=2,
        steps=20,
        warmup_epochs=0.0,
        freeze_last_layer=0,
        scale_lr=False,
        momentum_teacher=1.0,
        center_momentum=1.0,
        out_dir=str(tmp_path),
    )
    curves = {}
    for lr, steps in ((1e-3, 6), (1e-9, 3)):
        trainer = Trainer(TrainConfig(**common, lr=lr, min_lr=lr), progress=False)
        fixed = next(iter(trainer.loader(0, 1)))
        curves[lr] = [trainer.train_step(fixed)["loss"] for _ in range(steps)]
    learned, control = curves[1e-3], curves[1e-9]
    assert learned[-1] < 0.8 * learned[0], learned
    assert max(learned[3:]) < learned[0] - 0.3, learned
    assert max(abs(c - control[0]) for c in control) < 1e-3, control
    assert learned[0] == pytest.approx(control[0], rel=1e-6)  # same start
