"""The batched DoRA and DINO steps against the official code's loops, gradients included.

:func:`labkit.train.step.dora_step` runs the teacher once over all B*T frames and the student
once per view size (one backbone call over all k*T*B object views, one over all n*T*B local
crops, one head call over both). The official DoRA code runs the teacher once per frame, and the
student once per object with a loop over frames inside (``MultiCropWrapper``), the local crops
once per frame as one batch of n*B. The reference below is that loop structure written out
plainly, with the loss one (teacher, student view) pair at a time; the batched step must give
the same loss and the same gradient on every student parameter (to 1e-5 relative).

DINO's step is compared the same way against one student call per view.

Notation: B clips, T frames, k objects, n local crops, K head outputs, S / s crop sides.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit.attention import extract
from labkit.losses import DINOLoss
from labkit.tracking import discover_objects, masked_views, track_objects
from labkit.train import TrainConfig
from labkit.train.step import build_networks, dino_step, dora_step

from tiny import TINY_NETWORK

TINY = {**TINY_NETWORK, "drop_path_rate": 0.0}  # no stochastic depth: deterministic steps
B, T, N_LOCAL, K_OBJ, HEADS = 2, 3, 2, 3, [2, 0, 3]
TEACHER_TEMP, STUDENT_TEMP = 0.04, 0.1

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    student, teacher = build_networks(TrainConfig(**TINY))
    with torch.no_grad():  # a teacher unlike the student, so that mixing them up shows
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return student.train(), teacher  # drop path 0: train mode is deterministic


def make_batch(views: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "global": torch.randn(B, views, T, 3, 64, 64, generator=g),  # (B, G, T, 3, S, S)
        "local": torch.randn(B, N_LOCAL, T, 3, 32, 32, generator=g),  # (B, n, T, 3, s, s)
    }


def cross_entropy(target: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_K q log p, q = softmax(target / tau_t), p = softmax(student / tau_s)
    (the center is zero before the first update)."""
    q = F.softmax(target / TEACHER_TEMP, dim=-1)
    return -(q * F.log_softmax(student / STUDENT_TEMP, dim=-1)).sum(-1).mean()


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys() and len(ours) > 10
    for name, grad in reference.items():
        scale = float(grad.abs().max())
        assert scale > 0, name  # every trained parameter gets a gradient
        torch.testing.assert_close(ours[name], grad, rtol=1e-5, atol=1e-5 * scale, msg=name)


def official_dora_outputs(student, teacher, data):
    """The official loops: teacher per frame, objects per clip, student per object and frame.

    Returns:
        teacher (T, B, K), objects (k, T, B, K), local crops (n, T, B, K).
    """
    frames = data["global"][:, 0]  # (B, T, 3, S, S)
    with torch.no_grad():
        teacher_out = torch.stack([teacher(frames[:, t]) for t in range(T)])  # (T, B, K)
    masks = []
    for b in range(B):  # discovery on the clip's first frame, tracking through its frames
        ref = extract(teacher.backbone, frames[b], kinds=("tokens", "keys", "queries"))
        found = discover_objects(
            ref.attention[:1].clone(),
            ref.features["queries"][:1].clone(),
            ref.features["tokens"][:1].clone(),
            k=K_OBJ,
            heads=HEADS,
        )
        masks.append(track_objects(found.prototypes, ref.features["keys"][None].clone()).masks[0])
    views = masked_views(frames, torch.stack(masks), 16)  # (k, B, T, 3, S, S)
    objects = torch.stack(
        [torch.stack([student(views[j, :, t]) for t in range(T)]) for j in range(K_OBJ)]
    )  # (k, T, B, K)
    local = torch.stack(
        [
            student(data["local"][:, :, t].transpose(0, 1).flatten(0, 1)).reshape(N_LOCAL, B, -1)
            for t in range(T)
        ],
        dim=1,
    )  # per frame one batch of n*B crops, crop-major -> (n, T, B, K)
    return teacher_out, objects, local


def test_dora_step_loss_and_gradients_equal_the_official_loops(nets):
    student, teacher = nets
    data = make_batch(1, seed=3)
    student.zero_grad(set_to_none=True)
    out = dora_step(student, teacher, DINOLoss(256), data, epoch=0, k=K_OBJ, heads=HEADS)
    out.loss.backward()
    ours = gradients(student)

    student.zero_grad(set_to_none=True)
    teacher_out, objects, local = official_dora_outputs(student, teacher, data)
    # per frame: 0.5 * (mean over objects + mean over local crops), then the mean over frames
    expected = (
        sum(
            0.5
            * (
                sum(cross_entropy(teacher_out[t], objects[j, t]) for j in range(K_OBJ)) / K_OBJ
                + sum(cross_entropy(teacher_out[t], local[c, t]) for c in range(N_LOCAL)) / N_LOCAL
            )
            for t in range(T)
        )
        / T
    )
    expected.backward()
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-5, atol=1e-6)
    assert_same_gradients(ours, gradients(student))
    student.zero_grad(set_to_none=True)


def test_dora_step_published_loss_gradients_equal_the_official_loops(nets):
    """The published loss (official quirks) through the batched step and through the loops."""
    student, teacher = nets
    data = make_batch(1, seed=4)
    student.zero_grad(set_to_none=True)
    loss_fn = DINOLoss(256, dora_loss="published")
    out = dora_step(student, teacher, loss_fn, data, epoch=0, k=K_OBJ, heads=HEADS)
    out.loss.backward()
    ours = gradients(student)

    student.zero_grad(set_to_none=True)
    teacher_out, objects, local = official_dora_outputs(student, teacher, data)
    expected = DINOLoss(256, dora_loss="published").forward_dora(objects, local, teacher_out, 0)
    expected.backward()
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-5, atol=1e-6)
    assert_same_gradients(ours, gradients(student))
    student.zero_grad(set_to_none=True)


def test_dino_step_loss_and_gradients_equal_per_view_calls(nets):
    student, teacher = nets
    data = make_batch(2, seed=5)
    student.zero_grad(set_to_none=True)
    out = dino_step(student, teacher, DINOLoss(256), data, epoch=0)
    out.loss.backward()
    ours = gradients(student)

    student.zero_grad(set_to_none=True)
    images = [data["global"][:, v].flatten(0, 1) for v in range(2)]  # (B*T, 3, S, S) each
    images += [data["local"][:, c].flatten(0, 1) for c in range(N_LOCAL)]  # (B*T, 3, s, s)
    with torch.no_grad():
        targets = [teacher(images[v]) for v in range(2)]
    views = [student(x) for x in images]
    pairs = [(g, v) for g in range(2) for v in range(len(views)) if v != g]
    expected = sum(cross_entropy(targets[g], views[v]) for g, v in pairs) / len(pairs)
    expected.backward()
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-5, atol=1e-6)
    assert_same_gradients(ours, gradients(student))
    student.zero_grad(set_to_none=True)
