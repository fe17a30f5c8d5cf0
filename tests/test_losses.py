"""Tests of labkit.losses against independent, straightforward implementations written here."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from labkit.losses import (
    DINOHead,
    DINOLoss,
    cancel_last_layer_gradients,
    dora_pair_weights,
    sinkhorn_knopp,
)

# ----------------------------------------------------------------------------------------------
# Sinkhorn-Knopp
# ----------------------------------------------------------------------------------------------


def max_shift_sinkhorn(logits: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The textbook version: shift by the max, exponentiate, alternately rescale columns and rows.

    logits (B, N, k); returns (B, N, k) with rows summing to 1 and columns to N / k. No log domain.
    """
    batch, n, k = logits.shape
    plan = torch.exp((logits - logits.amax(dim=(1, 2), keepdim=True)) / epsilon)
    plan = plan / plan.sum(dim=(1, 2), keepdim=True)
    for _ in range(iterations):
        plan = plan / plan.sum(dim=1, keepdim=True) / k  # column j -> 1/k of the total
        plan = plan / plan.sum(dim=2, keepdim=True) / n  # row i -> 1/n of the total
    return plan * n


def column_error(plan: torch.Tensor) -> float:
    n, k = plan.shape[-2:]
    return ((plan.sum(dim=-2) - n / k).abs().max() / (n / k)).item()


def randn_logits() -> torch.Tensor:
    """(256, 196, 3) standard normal logits; about 2% of such items NaN in the max-shift version."""
    return torch.randn(256, 196, 3, generator=torch.Generator().manual_seed(0))


def test_max_shift_version_nans_on_randn_and_labkit_does_not():
    logits = randn_logits()
    naive = max_shift_sinkhorn(logits, 0.05, 30)
    nan_items = torch.isnan(naive).flatten(1).any(dim=1)
    assert nan_items.any(), "the max-shift version should underflow to NaN here"
    # the failure: some patch's k logits all lie > ~5 below the max -> exp underflows to a zero row
    shifted = (logits - logits.amax(dim=(1, 2), keepdim=True)) / 0.05
    assert (torch.exp(shifted).sum(dim=2) == 0).any()

    plan = sinkhorn_knopp(logits, 0.05, 30)
    assert torch.isfinite(plan).all()
    assert (plan >= 0).all() and (plan <= 1 + 1e-5).all()  # float32 exp of logits / eps ~ 1e2
    torch.testing.assert_close(plan.sum(dim=2), torch.ones(256, 196), atol=1e-5, rtol=0)
    # spread / epsilon ~ 60 here: 30 iterations are far from balanced; more iterations get there
    assert column_error(plan) > 1e-2
    assert column_error(sinkhorn_knopp(logits[:16], 0.05, 300)) < 1e-3


def test_log_domain_matches_float64_where_max_shift_partially_underflows():
    logits = randn_logits()
    naive = max_shift_sinkhorn(logits, 0.05, 30)
    finite = torch.isfinite(naive).flatten(1).all(dim=1)
    plan = sinkhorn_knopp(logits, 0.05, 30)
    reference = sinkhorn_knopp(logits.double(), 0.05, 30)
    torch.testing.assert_close(plan.double(), reference, atol=1e-4, rtol=0)
    # even the finite items of the max-shift version are off: entries that underflowed carried
    # mass the column rescaling would have amplified
    assert (naive[finite].double() - reference[finite]).abs().max() > 1e-2


@pytest.mark.parametrize(("scale", "epsilon"), [(1.0, 0.5), (0.1, 0.05), (0.3, 0.1), (1.0, 0.2)])
@pytest.mark.parametrize("iterations", [1, 3, 30])
def test_agrees_with_max_shift_version_where_it_is_finite(scale, epsilon, iterations):
    logits = torch.randn(8, 50, 4, dtype=torch.float64) * scale
    naive = max_shift_sinkhorn(logits, epsilon, iterations)
    assert torch.isfinite(naive).all()
    # same iterates, not only the same fixed point
    torch.testing.assert_close(
        sinkhorn_knopp(logits, epsilon, iterations), naive, atol=1e-10, rtol=1e-8
    )
    torch.testing.assert_close(
        sinkhorn_knopp(logits.float(), epsilon, iterations), naive.float(), atol=2e-6, rtol=1e-5
    )


@pytest.mark.parametrize(
    ("shape", "scale", "epsilon", "iterations"),
    [
        ((4, 196, 3), 0.1, 0.05, 30),  # cosine-like logits at the DoRA default
        ((4, 196, 3), 1.0, 0.5, 30),
        ((2, 64, 8), 0.3, 0.05, 100),
        ((3, 17, 5), 1.0, 0.1, 300),  # N not divisible by k: columns sum to 3.4
        ((1, 5, 5), 1.0, 0.5, 50),
    ],
)
def test_marginals(shape, scale, epsilon, iterations):
    logits = torch.randn(*shape) * scale
    plan = sinkhorn_knopp(logits, epsilon, iterations)
    batch, n, k = shape
    assert plan.shape == shape and plan.dtype == torch.float32
    torch.testing.assert_close(plan.sum(dim=2), torch.ones(batch, n), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        plan.sum(dim=1), torch.full((batch, k), n / k), atol=1e-4 * n / k, rtol=0
    )


def test_plan_is_a_diagonal_scaling_of_the_kernel():
    # the Sinkhorn solution is diag(a) exp(L / eps) diag(b): log P - L / eps is additive u_n + v_j
    logits = torch.randn(3, 40, 4, dtype=torch.float64)
    epsilon = 0.2
    residual = torch.log(sinkhorn_knopp(logits, epsilon, 50)) - logits / epsilon
    centred = (
        residual
        - residual.mean(dim=2, keepdim=True)
        - residual.mean(dim=1, keepdim=True)
        + residual.mean(dim=(1, 2), keepdim=True)
    )
    assert centred.abs().max() < 1e-9


def test_convergence_is_monotone_in_iterations():
    logits = torch.randn(4, 100, 3)
    errors = [column_error(sinkhorn_knopp(logits, 0.05, it)) for it in (5, 20, 80, 320)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_unbatched_and_batched_items_are_independent():
    logits = torch.randn(5, 30, 3)
    batched = sinkhorn_knopp(logits, 0.1, 40)
    for b in range(5):
        single = sinkhorn_knopp(logits[b], 0.1, 40)
        assert single.shape == (30, 3)
        torch.testing.assert_close(single, batched[b], atol=1e-6, rtol=1e-5)


def test_equivariant_to_patch_and_object_permutations():
    logits = torch.randn(2, 30, 4)
    plan = sinkhorn_knopp(logits, 0.1, 40)
    rows, cols = torch.randperm(30), torch.randperm(4)
    permuted = sinkhorn_knopp(logits[:, rows][:, :, cols], 0.1, 40)
    torch.testing.assert_close(permuted, plan[:, rows][:, :, cols], atol=1e-6, rtol=1e-5)


def test_detached_by_default_differentiable_on_request():
    logits = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert not sinkhorn_knopp(logits).requires_grad
    plan = sinkhorn_knopp(logits, 0.5, 10, differentiable=True)
    assert plan.requires_grad
    assert torch.autograd.gradcheck(
        lambda x: sinkhorn_knopp(x, 0.5, 10, differentiable=True), (logits,)
    )


def test_dtype_is_preserved():
    logits = torch.randn(2, 20, 3)
    assert sinkhorn_knopp(logits.double()).dtype == torch.float64
    low = sinkhorn_knopp(logits.bfloat16(), 0.5)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()


@pytest.mark.parametrize(
    ("logits", "kwargs"),
    [
        (torch.randn(5), {}),
        (torch.randn(1, 2, 5, 3), {}),
        (torch.randint(0, 3, (4, 3)), {}),
        (torch.randn(4, 3), {"epsilon": 0.0}),
        (torch.randn(4, 3), {"epsilon": -1.0}),
        (torch.randn(4, 3), {"iterations": 0}),
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), {}),
        (torch.tensor([[0.0, float("inf")], [1.0, 2.0]]), {}),
    ],
)
def test_sinkhorn_rejects_bad_input(logits, kwargs):
    with pytest.raises(ValueError, match="sinkhorn_knopp"):
        sinkhorn_knopp(logits, **kwargs)


# ----------------------------------------------------------------------------------------------
# DINO head
# ----------------------------------------------------------------------------------------------


def test_head_shapes_and_normalised_last_layer():
    head = DINOHead(32, out_dim=50, hidden_dim=64, bottleneck_dim=16)
    out = head(torch.randn(7, 32))
    assert out.shape == (7, 50)
    weight = head.last_layer.weight  # (out_dim, bottleneck) = g * v / ||v||
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(50))
    # bottleneck is unit-norm and rows are unit-norm: every output is a cosine
    assert out.abs().max() <= 1 + 1e-5
    names = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original1" in names
    assert "last_layer.parametrizations.weight.original0" not in names  # g frozen at 1
    assert head.last_layer.parametrizations.weight.original0.requires_grad is False


def test_head_mlp_structure():
    head = DINOHead(8, out_dim=10, hidden_dim=12, bottleneck_dim=4, nlayers=3, use_bn=True)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    single = DINOHead(8, out_dim=10, bottleneck_dim=4, nlayers=1)
    assert isinstance(single.mlp, nn.Linear)
    assert single(torch.randn(3, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(8, out_dim=10, nlayers=0)


def test_head_without_norm_last_layer_trains_g():
    head = DINOHead(8, out_dim=10, hidden_dim=12, bottleneck_dim=4, norm_last_layer=False)
    scale = head.last_layer.parametrizations.weight.original0
    assert scale.requires_grad
    head(torch.randn(3, 8)).sum().backward()
    assert scale.grad is not None


def test_head_loads_old_weight_norm_names_and_deepcopies():
    head = DINOHead(8, out_dim=10, hidden_dim=12, bottleneck_dim=4)
    state = head.state_dict()
    direction = torch.randn(10, 4)
    old = {k: v for k, v in state.items() if not k.startswith("last_layer.")}
    old["last_layer.weight_g"] = torch.ones(10, 1)
    old["last_layer.weight_v"] = direction
    head.load_state_dict(old)
    torch.testing.assert_close(
        head.last_layer.weight, direction / direction.norm(dim=1, keepdim=True)
    )
    teacher = copy.deepcopy(head)
    x = torch.randn(5, 8)
    torch.testing.assert_close(teacher(x), head(x))


def test_cancel_last_layer_gradients():
    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(6, 8)
            self.head = DINOHead(
                8, out_dim=10, hidden_dim=12, bottleneck_dim=4, norm_last_layer=False
            )

        def forward(self, x):
            return self.head(self.backbone(x))

    student = Student()
    student(torch.randn(4, 6)).square().sum().backward()
    assert cancel_last_layer_gradients(student, epoch=1, freeze_epochs=1) == 0
    assert all(p.grad is not None for p in student.parameters())
    assert cancel_last_layer_gradients(student, epoch=0, freeze_epochs=1) == 2  # g and v
    for name, param in student.named_parameters():
        assert (param.grad is None) == ("last_layer" in name), name
    with pytest.raises(ValueError, match="last_layer"):
        cancel_last_layer_gradients(nn.Linear(3, 3), epoch=0, freeze_epochs=1)


# ----------------------------------------------------------------------------------------------
# DINO loss: independent references
# ----------------------------------------------------------------------------------------------


def reference_temperature(warmup: float, final: float, warmup_epochs: int, epoch: int) -> float:
    schedule = np.concatenate([np.linspace(warmup, final, warmup_epochs), np.full(100, final)])
    return float(schedule[epoch])


def reference_dino(student, teacher, center, epoch, student_temp, warmup, final, warmup_epochs):
    """DINO multi-crop by explicit loops: student (V*B, K), teacher (2*B, K), skip same view."""
    temperature = reference_temperature(warmup, final, warmup_epochs, epoch)
    batch = teacher.shape[0] // 2
    total, terms = 0.0, 0
    for g in range(2):
        for v in range(student.shape[0] // batch):
            if g == v:
                continue
            pair = 0.0
            for b in range(batch):
                q = torch.softmax((teacher[g * batch + b] - center[0]) / temperature, dim=0)
                log_p = torch.log_softmax(student[v * batch + b] / student_temp, dim=0)
                pair = pair - (q.detach() * log_p).sum()
            total = total + pair / batch
            terms += 1
    return total / terms


def reference_dora(objects, local, teacher, center, temperature, student_temp):
    """Clean DoRA loss by loops: objects (k, T, B, K), local (n, T, B, K), teacher (T, B, K)."""

    def ce(t_row, s_row):
        q = torch.softmax((t_row - center[0]) / temperature, dim=0).detach()
        return -(q * torch.log_softmax(s_row / student_temp, dim=0)).sum()

    k, frames, batch, _ = objects.shape
    total = 0.0
    for j in range(k):
        for t in range(frames):
            masked = sum(ce(teacher[t, b], objects[j, t, b]) for b in range(batch)) / batch
            local_loss = 0.0
            for c in range(local.shape[0]):
                local_loss = (
                    local_loss
                    + sum(ce(teacher[t, b], local[c, t, b]) for b in range(batch)) / batch
                )
            local_loss = local_loss / local.shape[0]
            total = total + 0.5 * (masked + local_loss)
    return total / (k * frames)


def official_like_dora(objects, local, teacher, center, temperature, student_temp):
    """The official loop structure with its two quirks (accumulator not reset, crop 0 skipped)."""

    def ce(t_rows, s_rows):
        q = torch.softmax((t_rows - center) / temperature, dim=-1).detach()
        return -(q * torch.log_softmax(s_rows / student_temp, dim=-1)).sum(-1).mean()

    k, frames = objects.shape[:2]
    accumulated, total = 0.0, 0.0
    for j in range(k):
        for t in range(frames):
            crops = [
                ce(teacher[t], local[c, t]) for c in range(1, local.shape[0])
            ]  # crop 0 skipped
            accumulated = accumulated + 0.5 * (
                ce(teacher[t], objects[j, t]) + sum(crops) / len(crops)
            )
        accumulated = accumulated / frames
        total = total + accumulated
    return total / k


SCHEDULE = {"warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 4}


@pytest.mark.parametrize(
    ("batch", "dim", "num_local"), list(itertools.product((1, 3), (5, 17), (0, 1, 4)))
)
@pytest.mark.parametrize("student_temp", [0.1, 0.3])
def test_dino_loss_and_gradients_match_loops(batch, dim, num_local, student_temp):
    loss_fn = DINOLoss(dim, student_temp=student_temp, **SCHEDULE)
    loss_fn.center.copy_(torch.randn(1, dim))
    for epoch in (0, 2, 3, 4, 9):  # in the warm-up, its last epoch, after it
        student = torch.randn((2 + num_local) * batch, dim, dtype=torch.float64, requires_grad=True)
        student_ref = student.detach().clone().requires_grad_(True)
        teacher = torch.randn(2 * batch, dim, dtype=torch.float64, requires_grad=True)
        center = loss_fn.center.clone().double()
        loss = loss_fn(student, teacher, epoch, update_center=False)
        expected = reference_dino(student_ref, teacher, center, epoch, student_temp, 0.04, 0.07, 4)
        torch.testing.assert_close(loss, expected)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(student.grad, student_ref.grad)
        assert teacher.grad is None  # no gradient reaches the teacher


def test_teacher_temperature_schedule():
    loss_fn = DINOLoss(4, 0.02, 0.08, 5)
    for epoch in range(9):
        assert math.isclose(
            loss_fn.teacher_temperature(epoch), reference_temperature(0.02, 0.08, 5, epoch)
        )
    assert loss_fn.teacher_temperature(1.5) == pytest.approx(0.02 + 0.06 * 1.5 / 4)
    assert DINOLoss(4, 0.02, 0.08, 0).teacher_temperature(0) == 0.08
    assert DINOLoss(4, 0.02, 0.08, 1).teacher_temperature(0) == 0.02  # np.linspace(a, b, 1) = [a]


def test_view_layouts_agree():
    loss_fn = DINOLoss(6)
    student = torch.randn(4, 3, 6)  # (V, B, K)
    teacher = torch.randn(2, 3, 6)
    stacked = loss_fn(student.reshape(12, 6), teacher.reshape(6, 6), 0, update_center=False)
    as_3d = loss_fn(student, teacher, 0, update_center=False)
    as_list = loss_fn(list(student), list(teacher), 0, update_center=False)
    torch.testing.assert_close(stacked, as_3d)
    torch.testing.assert_close(stacked, as_list)


def test_pair_weights_are_normalised_and_select_pairs():
    loss_fn = DINOLoss(6)
    student, teacher = torch.randn(3, 2, 6), torch.randn(2, 2, 6)
    default = loss_fn(student, teacher, 0, update_center=False)
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    torch.testing.assert_close(
        loss_fn(student, teacher, 0, pair_weights=mask, update_center=False), default
    )
    torch.testing.assert_close(
        loss_fn(student, teacher, 0, pair_weights=3 * mask, update_center=False), default
    )


@pytest.mark.parametrize(
    ("num_objects", "frames", "batch", "num_local"),
    [(3, 4, 2, 3), (1, 1, 1, 1), (2, 3, 1, 5), (4, 2, 3, 2)],
)
def test_dora_loss_and_gradients_match_loops(num_objects, frames, batch, num_local):
    dim = 7
    loss_fn = DINOLoss(dim, student_temp=0.1, **SCHEDULE)
    loss_fn.center.copy_(torch.randn(1, dim))
    objects = torch.randn(num_objects, frames, batch, dim, dtype=torch.float64, requires_grad=True)
    local = torch.randn(num_local, frames, batch, dim, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(frames, batch, dim, dtype=torch.float64)
    objects_ref = objects.detach().clone().requires_grad_(True)
    local_ref = local.detach().clone().requires_grad_(True)
    center = loss_fn.center.clone().double()
    loss = loss_fn.forward_dora(objects, local, teacher, epoch=1, update_center=False)
    expected = reference_dora(
        objects_ref, local_ref, teacher, center, 0.05, 0.1
    )  # epoch 1 of 4: 0.05
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(objects.grad, objects_ref.grad)
    torch.testing.assert_close(local.grad, local_ref.grad)
    # the list form of the official code gives the same value
    as_list = loss_fn.forward_dora(
        list(objects.detach()), local.detach(), teacher, 1, update_center=False
    )
    torch.testing.assert_close(as_list, loss.detach())


def test_dora_quirks_of_the_official_loop_are_not_reproduced():
    loss_fn = DINOLoss(7, student_temp=0.1)
    objects = torch.randn(3, 8, 2, 7, dtype=torch.float64)
    local = torch.randn(4, 8, 2, 7, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(8, 2, 7, dtype=torch.float64)
    center = loss_fn.center.double()
    clean = loss_fn.forward_dora(objects, local, teacher, 0, update_center=False)
    official = official_like_dora(objects, local, teacher, center, 0.04, 0.1)
    assert not torch.isclose(clean, official)
    official.backward()
    assert local.grad[0].abs().max() == 0  # official: local crop 0 gets no gradient
    local.grad = None
    clean.backward()
    assert local.grad[0].abs().max() > 0


def test_dora_without_local_crops_is_the_object_term():
    loss_fn = DINOLoss(5)
    objects, teacher = torch.randn(2, 3, 4, 5), torch.randn(3, 4, 5)
    loss = loss_fn.forward_dora(objects, None, teacher, 0, update_center=False)
    expected = loss_fn(
        objects.reshape(2, 12, 5),
        teacher.reshape(1, 12, 5),
        0,
        pair_weights=torch.ones(1, 2),
        update_center=False,
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(dora_pair_weights(2, 0), torch.full((1, 2), 0.5))
    torch.testing.assert_close(
        dora_pair_weights(2, 4), torch.tensor([[0.25, 0.25, 0.125, 0.125, 0.125, 0.125]])
    )


def test_center_update_with_momentum_uses_teacher_outputs():
    loss_fn = DINOLoss(4, center_momentum=0.8)
    start = torch.randn(1, 4)
    loss_fn.center.copy_(start)
    teacher = torch.randn(6, 4)
    loss_fn(torch.randn(9, 4) * 100, teacher, 0)  # 2 teacher views and 3 student views of B = 3
    expected = 0.8 * start + 0.2 * teacher.mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, expected)
    second = torch.randn(3, 2, 4)
    loss_fn.update_center(second)
    torch.testing.assert_close(
        loss_fn.center, 0.8 * expected + 0.2 * second.reshape(6, 4).mean(0, keepdim=True)
    )
    before = loss_fn.center.clone()
    loss_fn(torch.randn(9, 4), teacher, 0, update_center=False)
    torch.testing.assert_close(loss_fn.center, before)
    # DoRA: the center takes all T*B teacher rows
    loss_fn.forward_dora(
        torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4), (frames := torch.randn(5, 3, 4)), 0
    )
    torch.testing.assert_close(
        loss_fn.center, 0.8 * before + 0.2 * frames.reshape(15, 4).mean(0, keepdim=True)
    )


@pytest.mark.parametrize(
    ("student", "teacher", "kwargs", "match"),
    [
        (torch.randn(8, 5), torch.randn(4, 5), {}, "output dimension"),  # K = 5 != 4
        (torch.randn(7, 4), torch.randn(4, 4), {}, "multiple of the batch"),  # 7 rows, B = 2
        (torch.randn(8, 4), torch.randn(5, 4), {}, "divisible into 2 views"),
        (torch.randn(3, 2, 4), torch.randn(2, 3, 4), {}, "batch"),
        (
            torch.randn(1, 2, 4),
            torch.randn(1, 2, 4),
            {},
            "no \\(teacher view, student view\\) pair",
        ),  # G = V = 1
        (torch.randn(3, 2, 4), torch.randn(1, 2, 4), {"pair_weights": -torch.ones(1, 3)}, ">= 0"),
        (
            torch.randn(3, 2, 4),
            torch.randn(1, 2, 4),
            {"pair_weights": torch.zeros(1, 3)},
            "no \\(teacher",
        ),
        (
            torch.randn(3, 2, 4),
            torch.randn(1, 2, 4),
            {"pair_weights": torch.ones(1, 2)},
            "3 views, expected 2",
        ),
        ([torch.randn(2, 4), torch.randn(3, 4)], torch.randn(2, 2, 4), {}, "differ in shape"),
        (torch.randn(2, 2, 2, 4), torch.randn(2, 2, 4), {}, "got shape"),
        (torch.randn(3, 2, 4).long(), torch.randn(2, 2, 4), {}, "floating point"),
    ],
)
def test_dino_loss_raises_on_bad_shapes(student, teacher, kwargs, match):
    loss_fn = DINOLoss(4)
    with pytest.raises(ValueError, match=match):
        loss_fn(student, teacher, 0, **kwargs)


def test_dora_raises_on_bad_shapes():
    loss_fn = DINOLoss(4)
    teacher = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="student_objects"):
        loss_fn.forward_dora(torch.randn(2, 3, 1, 4), None, teacher, 0)
    with pytest.raises(ValueError, match="student_local"):
        loss_fn.forward_dora(torch.randn(2, 3, 2, 4), torch.randn(3, 2, 4), teacher, 0)
    with pytest.raises(ValueError, match="teacher_global"):
        loss_fn.forward_dora(torch.randn(2, 3, 2, 4), None, teacher[0], 0)
    with pytest.raises(ValueError, match="epoch"):
        loss_fn(torch.randn(3, 2, 4), teacher[:2], -1)


def test_center_all_reduce_path_in_a_one_rank_process_group(tmp_path):
    import torch.distributed as dist

    teacher, student = torch.randn(2, 3, 4), torch.randn(4, 3, 4)
    single = DINOLoss(4)
    expected_loss = single(student, teacher, 0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/init", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        loss_fn = DINOLoss(4)
        torch.testing.assert_close(loss_fn(student, teacher, 0), expected_loss)
        torch.testing.assert_close(loss_fn.center, single.center)
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank: int, world_size: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(rank)
        loss_fn = DINOLoss(4, center_momentum=0.5)
        teacher = torch.randn(2 * (rank + 1), 4)  # ranks hold different batch sizes
        loss_fn(torch.randn(3, rank + 1, 4), teacher.reshape(2, rank + 1, 4), 0)
        torch.save((teacher, loss_fn.center.clone()), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_center_is_all_reduced_under_ddp(tmp_path):
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    t0, c0 = torch.load(tmp_path / "rank0.pt")
    t1, c1 = torch.load(tmp_path / "rank1.pt")
    expected = 0.5 * torch.cat([t0, t1]).mean(dim=0, keepdim=True)
    torch.testing.assert_close(c0, expected)
    torch.testing.assert_close(c1, expected)
