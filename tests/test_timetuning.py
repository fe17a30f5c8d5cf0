"""TimeTuning: the soft-label forwarder against a dense loop, a known motion, the step's gradients.

``ref_soft_propagation`` is written for this test from the official forwarder's description
(``SMSD75/Timetuning`` ``mask_propagation.label_propagation``): dense ``exp(cos / t)`` affinities
over every context patch, a (P, P) window built with loops, everything below the k-th largest
affinity over all context patches zeroed, column normalisation, soft labels times affinities, a
queue of the ``n_last`` previous predictions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit.losses import sinkhorn_knopp
from labkit.models import load_backbone
from labkit.propagation import LabelPropagator, propagate_soft_labels
from labkit.timetuning import (
    TimeTuningConfig,
    TimeTuningHead,
    TimeTuningModel,
    backbone_tokens,
    forward_assignments,
    freeze_backbone,
    timetuning_loss,
    trainable_parameters,
)


def tiny_backbone(depth: int = 3) -> torch.nn.Module:
    return load_backbone(
        "vit_small_patch16_224", depth=depth, embed_dim=48, num_heads=3, patch_size=8, img_size=32
    )


TINY = TimeTuningConfig(num_prototypes=10, head_dims=(64, 32), trainable_blocks=1)


def window(h: int, w: int, r: int | None) -> torch.Tensor:
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for y in range(h):
                for x in range(w):
                    if r is None or (abs(y - i) <= r and abs(x - j) <= r):
                        mask[i, j, y, x] = 1
    return mask.reshape(h * w, h * w)


def ref_soft_propagation(feats, first, n_last, topk, temp, r):
    """feats (T, h, w, D), first (h, w, K) -> (T, h, w, K), float64 dense loops."""
    T, h, w, D = feats.shape
    K = first.shape[-1]
    f = F.normalize(feats.double().reshape(T, h * w, D), dim=-1)
    ctx_feats, ctx_segs = [f[0]], [first.double().reshape(h * w, K)]
    queue: list = []
    out = [first.double().reshape(h * w, K)]
    mask = window(h, w, r).double()
    for t in range(1, T):
        src_f = torch.stack(ctx_feats + [q[0] for q in queue])  # (C, P, D)
        src_s = torch.cat(ctx_segs + [q[1] for q in queue])  # (C*P, K)
        aff = torch.exp(torch.einsum("qd,cpd->cpq", f[t], src_f) / temp)  # (C, P src, P tar)
        aff = aff * mask.T[None]  # mask[q, p] -> (p, q)
        aff = aff.reshape(-1, h * w)  # (C*P, P tar)
        kth = aff.topk(topk, dim=0).values.min(dim=0).values
        aff[aff < kth] = 0
        aff = aff / aff.sum(dim=0, keepdim=True)
        seg = aff.T @ src_s  # (P, K)
        if len(queue) == n_last:
            queue = queue[1:] if n_last else queue
        if n_last:
            queue.append((f[t], seg))
        out.append(seg)
    return torch.stack(out).reshape(T, h, w, K)


# ----------------------------------------------------------------------------------------------
# Soft label propagation (the shared code in labkit.propagation)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_last,topk,radius", [(2, 3, 1), (0, 5, None), (7, 4, 2)])
def test_propagate_soft_labels_matches_dense_reference(n_last, topk, radius):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(6, 4, 5, 8, generator=g)
    first = torch.rand(4, 5, 3, generator=g)
    first = first / first.sum(-1, keepdim=True)
    got = propagate_soft_labels(
        feats, first, n_last=n_last, topk=topk, temperature=0.1, radius=radius
    )
    want = ref_soft_propagation(feats, first, n_last, topk, 0.1, radius)
    assert got.shape == (6, 4, 5, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.sum(-1), torch.ones(6, 4, 5))


def test_propagate_soft_labels_one_hot_equals_label_propagator():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(5, 4, 6, 8, generator=g)
    labels = torch.randint(0, 3, (4, 6), generator=g)
    soft = propagate_soft_labels(feats, F.one_hot(labels, 3).float(), n_last=2, topk=3, radius=2)
    prop = LabelPropagator(
        feats[0], labels, n_last=2, topk=3, radius=2, patch_size=1, alignment="crop", num_labels=3
    )
    for t in range(1, 5):
        torch.testing.assert_close(soft[t], prop.step(feats[t]).soft.permute(1, 2, 0))


def test_propagate_soft_labels_is_linear_and_differentiable():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(4, 3, 4, 6, generator=g)
    a, b = torch.rand(3, 4, 5, generator=g), torch.rand(3, 4, 5, generator=g)
    pa, pb = (propagate_soft_labels(feats, s, topk=3) for s in (a, b))
    torch.testing.assert_close(propagate_soft_labels(feats, 2 * a + 3 * b, topk=3), 2 * pa + 3 * pb)
    first = a.clone().requires_grad_(True)
    propagate_soft_labels(feats, first, topk=3)[-1, 0, 0, 0].backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_propagate_soft_labels_rejects_bad_shapes():
    with pytest.raises(ValueError, match="grid"):
        propagate_soft_labels(torch.randn(3, 4, 5, 8), torch.rand(4, 4, 2))
    with pytest.raises(ValueError, match=r"\(T, gh, gw, D\)"):
        propagate_soft_labels(torch.randn(4, 5, 8), torch.rand(4, 5, 2))


# ----------------------------------------------------------------------------------------------
# The feature forwarder
# ----------------------------------------------------------------------------------------------


def moving_features(T: int, h: int, w: int, shift: int) -> torch.Tensor:
    """Content moving ``shift`` columns right per frame; new content enters on the left.

    Patch (i, j) of frame t shows the content of patch (i, j - shift * t) of frame 0 (a one-hot
    code per content), or a fresh code never seen before when that column is off the frame.
    """
    codes = h * w * (T + 1)
    feats = torch.zeros(T, h, w, codes)
    fresh = h * w
    for t in range(T):
        for i in range(h):
            for j in range(w):
                src = j - shift * t
                if src >= 0:
                    feats[t, i, j, i * w + src] = 1
                else:
                    feats[t, i, j, fresh] = 1
                    fresh += 1
    return feats


@pytest.mark.parametrize("radius", [None, 6, 2])
def test_forwarded_assignment_follows_a_known_shift(radius):
    T, h, w, shift, K = 4, 5, 8, 1, 6
    feats = moving_features(T, h, w, shift)
    g = torch.Generator().manual_seed(4)
    first = torch.softmax(3 * torch.randn(h, w, K, generator=g), dim=-1)
    out = forward_assignments(feats, first, n_last=7, topk=5, temperature=0.1, radius=radius)
    assert out.shape == (T, h, w, K)
    torch.testing.assert_close(out[0], first)
    for t in range(1, T):
        src = torch.arange(w) - shift * t
        seen = src >= 0
        # every patch whose content was visible in frame 0 carries that patch's assignment
        # (the rest of the top-k, at cosine 0, weighs exp(-10) each: < 1 % in all)
        torch.testing.assert_close(out[t][:, seen], first[:, src[seen]], atol=1e-2, rtol=0)
        assert torch.equal(out[t][:, seen].argmax(-1), first[:, src[seen]].argmax(-1))


def test_forward_assignments_batched_equals_per_clip_and_carries_no_grad():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 3, 4, 4, 8, generator=g).requires_grad_(True)
    first = torch.softmax(torch.randn(2, 4, 4, 5, generator=g), -1).requires_grad_(True)
    out = forward_assignments(feats, first, topk=3)
    assert out.shape == (2, 3, 4, 4, 5)
    assert not out.requires_grad and out.grad_fn is None
    for b in range(2):
        torch.testing.assert_close(out[b], forward_assignments(feats[b], first[b], topk=3))
    with pytest.raises(ValueError, match="disagree"):
        forward_assignments(feats, first[:1])


# ----------------------------------------------------------------------------------------------
# Backbone freezing, tokens, head, loss
# ----------------------------------------------------------------------------------------------


def test_trainable_parameters_and_freezing():
    bb = tiny_backbone(depth=3)
    last = list(bb.blocks[2].parameters())
    got = trainable_parameters(bb, 1)
    assert [id(p) for p in got] == [id(p) for p in last]
    assert len(trainable_parameters(bb, 0)) == 0
    assert len(trainable_parameters(bb, 1, train_norm=True)) == len(last) + 2
    keep = freeze_backbone(bb, 2)
    assert {id(p) for p in keep} == {id(p) for b in bb.blocks[1:] for p in b.parameters()}
    assert all(p.requires_grad == (id(p) in {id(q) for q in keep}) for p in bb.parameters())
    assert not bb.norm.weight.requires_grad and not bb.patch_embed.proj.weight.requires_grad
    with pytest.raises(ValueError, match="num_blocks"):
        trainable_parameters(bb, 4)


@pytest.mark.parametrize("num_blocks", [0, 1, 3])
def test_backbone_tokens_equal_forward_features(num_blocks):
    bb = tiny_backbone(depth=3)
    freeze_backbone(bb, num_blocks)
    x = torch.randn(2, 3, 32, 40)
    tokens = backbone_tokens(bb, x)
    want = bb.forward_features(x)[:, bb.num_prefix_tokens :].reshape(2, 4, 5, 48)
    assert tokens.shape == (2, 4, 5, 48)
    torch.testing.assert_close(tokens, want)
    assert tokens.requires_grad == (num_blocks > 0)
    with pytest.raises(ValueError, match="multiples"):
        backbone_tokens(bb, torch.randn(1, 3, 30, 32))


def test_head_scores_are_cosines_and_prototypes_renormalise():
    head = TimeTuningHead(48, (64, 64, 32, 16), num_prototypes=7)
    linear = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    gelus = [m for m in head.mlp if isinstance(m, torch.nn.GELU)]
    assert [m.out_features for m in linear] == [64, 64, 32, 16] and len(gelus) == 3
    assert isinstance(head.mlp[-1], torch.nn.Linear)
    x = torch.randn(2, 3, 4, 48)
    s = head(x)
    assert s.shape == (2, 3, 4, 7) and s.abs().max() <= 1 + 1e-5
    torch.testing.assert_close(s, F.normalize(head.mlp(x), dim=-1) @ head.prototypes.T)
    torch.testing.assert_close(head.prototypes.norm(dim=1), torch.ones(7))
    with torch.no_grad():
        head.prototypes.mul_(3.0)
    head.normalize_prototypes()
    torch.testing.assert_close(head.prototypes.norm(dim=1), torch.ones(7))


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_loss_against_straightforward_cross_entropy(temperature):
    g = torch.Generator().manual_seed(6)
    scores = (2 * torch.rand(2, 3, 4, 5, generator=g) - 1).requires_grad_(True)
    targets = torch.softmax(2 * torch.randn(2, 3, 4, 5, generator=g), -1)
    hard = timetuning_loss(scores, targets, temperature=temperature)
    flat_s, flat_t = scores.reshape(-1, 5), targets.reshape(-1, 5)
    want = 0.0
    for row_s, row_t in zip(flat_s, flat_t):
        z = row_s / temperature
        want = want - (z[row_t.argmax()] - torch.logsumexp(z, 0))
    torch.testing.assert_close(hard, want / flat_s.shape[0])
    soft = timetuning_loss(scores, targets, temperature=temperature, hard=False)
    soft.backward()
    p = torch.softmax(flat_s.detach() / temperature, -1)
    want_soft = -(flat_t * torch.log(p)).sum(-1).mean()
    torch.testing.assert_close(soft, want_soft)
    grad = ((p - flat_t) / temperature / flat_s.shape[0]).reshape(scores.shape)
    torch.testing.assert_close(scores.grad, grad)
    with pytest.raises(ValueError, match="must both be"):
        timetuning_loss(scores, targets[..., :4])


def test_config_validates():
    with pytest.raises(ValueError, match="num_prototypes"):
        TimeTuningConfig(num_prototypes=0)
    with pytest.raises(ValueError, match="epsilon"):
        TimeTuningConfig(epsilon=0.0)
    with pytest.raises(ValueError, match="head_dims"):
        TimeTuningConfig(head_dims=())
    assert TimeTuningConfig().head_dims == (1024, 1024, 512, 256)


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


def clips(seed: int = 0, B: int = 2, T: int = 3) -> torch.Tensor:
    return torch.randn(B, T, 3, 32, 48, generator=torch.Generator().manual_seed(seed))


def test_step_shapes_targets_and_defaults():
    model = TimeTuningModel(tiny_backbone(), TINY)
    x = clips()
    out = model(x)
    assert out.loss.ndim == 0 and out.loss.requires_grad
    for t in (out.scores, out.targets, out.first_assignments):
        assert t.shape == (2, 4, 6, 10) and not t.requires_grad
    # the first frames' assignments: one Sinkhorn problem over the batch's first-frame patches
    with torch.no_grad():
        scores0 = model.head(backbone_tokens(model.backbone, x[:, 0]))
        want = sinkhorn_knopp(scores0.reshape(-1, 10), epsilon=0.05, iterations=10)
    torch.testing.assert_close(out.first_assignments.reshape(-1, 10), want)
    torch.testing.assert_close(out.targets.sum(-1), torch.ones(2, 4, 6))
    # the targets: forwarding the assignments with the backbone's tokens of all frames
    with torch.no_grad():
        feats = backbone_tokens(model.backbone, x.flatten(0, 1)).reshape(2, 3, 4, 6, 48)
    torch.testing.assert_close(
        out.targets, forward_assignments(feats, out.first_assignments, radius=6)[:, -1]
    )
    loss, metrics = model.step(x)
    assert set(metrics) == {
        "loss",
        "agreement",
        "target_confidence",
        "target_clusters",
        "first_clusters",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    assert 0 <= metrics["agreement"] <= 1 and 1 <= metrics["target_clusters"] <= 10
    # official sizes build and run: 48 -> 1024 -> 1024 -> 512 -> 256, 200 prototypes
    full = TimeTuningModel(tiny_backbone(), TimeTuningConfig())
    assert full.head.prototypes.shape == (200, 256)
    assert full(x[:1]).scores.shape == (1, 4, 6, 200)
    with pytest.raises(ValueError, match="T >= 2"):
        model(x[:, :1])


def test_gradients_reach_only_trainable_blocks_head_and_prototypes():
    bb = tiny_backbone(depth=3)
    model = TimeTuningModel(bb, TINY)  # last block trains
    loss, _ = model.step(clips())
    loss.backward()
    for name, p in bb.named_parameters():
        if name.startswith("blocks.2."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_forwarding_path_gets_no_gradient():
    """The step's gradients equal those of the loss with its targets fed in as constants."""
    cfg = TimeTuningConfig(
        num_prototypes=10, head_dims=(64, 32), trainable_blocks=2, hard_targets=False
    )
    model = TimeTuningModel(tiny_backbone(), cfg)
    x = clips(1)
    out = model(x)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    scores = model.head(backbone_tokens(model.backbone, x[:, -1]))
    timetuning_loss(scores, out.targets.clone(), hard=False).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and len(got) > 0
    for name in got:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_prototypes_stay_normalised_after_optimizer_steps():
    model = TimeTuningModel(tiny_backbone(), TINY)
    optimizer = torch.optim.SGD(model.param_groups(lr=1.0, backbone_lr=0.1), lr=1.0)
    for seed in range(3):
        loss, _ = model.step(clips(seed))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        norms = model.head.prototypes.norm(dim=1)
        assert (norms - 1).abs().max() > 1e-4  # the step moved them off the sphere
        model.after_optimizer_step()
        torch.testing.assert_close(model.head.prototypes.norm(dim=1), torch.ones(10))


def test_param_groups_cover_trainable_parameters_once():
    model = TimeTuningModel(tiny_backbone(), TINY)
    groups = model.param_groups(lr=1e-4, backbone_lr=1e-5, weight_decay=0.04)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))
    proto = [g for g in groups if any(p is model.head.prototypes for p in g["params"])][0]
    assert proto["lr"] == 1e-4 and proto["weight_decay"] == 0.04
    qkv_bias = model.backbone.blocks[2].attn.qkv.bias
    bias = [g for g in groups if any(p is qkv_bias for p in g["params"])]
    assert bias[0]["lr"] == 1e-5 and bias[0]["weight_decay"] == 0.0


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = TimeTuningModel(tiny_backbone(), TINY)
    optimizer = torch.optim.AdamW(model.param_groups(lr=1e-3, backbone_lr=1e-3))
    x = clips(2)
    losses = []
    for _ in range(12):
        loss, metrics = model.step(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step()
        losses.append(metrics["loss"])
    assert min(losses[-3:]) < 0.6 * losses[0], losses


def test_step_takes_a_clip_dataset_batch_and_autocast():
    model = TimeTuningModel(tiny_backbone(), TINY)
    x = clips(3)
    batch = {"global": x[:, None], "local": torch.zeros(2, 0, 3, 3, 16, 16)}
    a, b = model(x), model(batch)
    torch.testing.assert_close(a.loss, b.loss)
    assert a.images == 6
    loss, metrics = model.step(batch, autocast_dtype=torch.bfloat16)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.head.prototypes.grad is not None
    with pytest.raises(ValueError, match="global"):
        model({"local": x})


@pytest.mark.gpu
def test_cuda_step_matches_cpu():
    import copy

    cfg = TimeTuningConfig(
        num_prototypes=10, head_dims=(64, 32), trainable_blocks=1, hard_targets=False
    )
    cpu = TimeTuningModel(tiny_backbone(), cfg)
    gpu = copy.deepcopy(cpu).to("cuda")
    x = clips(4)
    a, b = cpu(x), gpu(x.cuda())
    assert b.loss.is_cuda and b.targets.is_cuda
    torch.testing.assert_close(b.first_assignments.cpu(), a.first_assignments, atol=5e-3, rtol=0)
    torch.testing.assert_close(b.targets.cpu(), a.targets, atol=5e-3, rtol=0)
    torch.testing.assert_close(b.loss.cpu(), a.loss, atol=5e-3, rtol=1e-3)
    loss, metrics = gpu.step(x.cuda(), autocast_dtype=torch.bfloat16)
    loss.backward()
    assert torch.isfinite(loss) and gpu.head.prototypes.grad is not None
