"""Tests of labkit.tracking: synthetic scenes with a known answer and straightforward loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit.losses import sinkhorn_knopp
from labkit.tracking import (
    Discovery,
    Tracks,
    binarize_maps,
    discover_objects,
    masked_views,
    masks_to_frames,
    prototype_spread,
    track_objects,
)

GH, GW, DIM = 6, 6, 16


def band_labels(shift: int = 0, order: tuple[int, ...] = (0, 1, 2)) -> torch.Tensor:
    """(GH, GW) labels: three vertical bands, two patches wide, moved right by ``shift``."""
    bands = torch.arange(GW) // 2  # 0 0 1 1 2 2
    labels = torch.tensor(order)[bands].expand(GH, GW)
    return torch.roll(labels, shifts=shift, dims=1)


def cluster_scene(batch: int = 2, frames: int = 4, num_heads: int = 4, noise: float = 0.02):
    """Clips whose tokens, queries and keys are the embeddings of three clusters (bands).

    Head j < 3 of clip b looks at cluster ``heads_to_cluster[b, j]``; the last head is uniform.
    Frame t has the bands moved right by t patches. Returns inputs and the known answer.
    """
    basis = torch.linalg.qr(torch.randn(DIM, DIM))[0][:3]  # (3, D) orthonormal cluster embeddings
    orders = [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)][:batch]
    labels = torch.stack([band_labels(0, o) for o in orders]).flatten(1)  # (B, N)
    tokens = basis[labels] + noise * torch.randn(batch, GH * GW, DIM)  # (B, N, D)
    queries = 3.0 * basis[labels] + noise * torch.randn(batch, GH * GW, DIM)
    heads_to_cluster = torch.stack([torch.randperm(3) for _ in range(batch)])  # (B, 3)
    attn = torch.full((batch, num_heads, GH * GW), 0.1 / (GH * GW))
    for b in range(batch):
        for j in range(3):
            attn[b, j] += 0.8 * (labels[b] == heads_to_cluster[b, j]).float() / 12
    attn[:, -1] = 0.9 / (GH * GW)
    frame_labels = torch.stack(
        [torch.stack([band_labels(t, o) for t in range(frames)]) for o in orders]
    )  # (B, T, GH, GW)
    keys = basis[frame_labels] + noise * torch.randn(
        batch, frames, GH, GW, DIM
    )  # (B, T, GH, GW, D)
    return attn, queries, tokens, keys, basis, heads_to_cluster, frame_labels


def test_discovery_and_tracking_follow_the_clusters():
    attn, queries, tokens, keys, basis, heads_to_cluster, frame_labels = cluster_scene()
    found = discover_objects(attn, queries, tokens, k=3, heads=(0, 1, 2))
    assert isinstance(found, Discovery)
    assert found.prototypes.shape == (2, 3, DIM) and found.assignment.shape == (2, GH * GW, 3)
    cosine = F.normalize(found.prototypes, dim=-1) @ basis.T  # (B, k, clusters)
    assert torch.equal(cosine.argmax(dim=-1), heads_to_cluster)
    assert cosine.max(dim=-1).values.min() > 0.99
    initial_cosine = F.normalize(found.initial_prototypes, dim=-1) @ basis.T
    assert torch.equal(initial_cosine.argmax(dim=-1), heads_to_cluster)
    # the plan splits the 36 patches evenly (12 per object) along the clusters
    torch.testing.assert_close(
        found.assignment.sum(dim=1), torch.full((2, 3), 12.0), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        found.assignment.sum(dim=2), torch.ones(2, GH * GW), atol=1e-5, rtol=0
    )
    first = frame_labels[:, 0].flatten(1)  # (B, N)
    assert torch.equal(heads_to_cluster.gather(1, found.assignment.argmax(dim=2)), first)

    tracks = track_objects(found.prototypes, keys)
    assert isinstance(tracks, Tracks)
    assert tracks.maps.shape == (2, 4, 3, GH, GW) and tracks.masks.dtype == torch.bool
    torch.testing.assert_close(tracks.maps.sum(dim=(-2, -1)), torch.ones(2, 4, 3))
    expected = (
        frame_labels[:, :, None] == heads_to_cluster[:, None, :, None, None]
    )  # (B, T, k, GH, GW)
    assert torch.equal(tracks.masks, expected)
    assert torch.equal(
        track_objects(found.prototypes, keys, threshold="batch_mean").masks, expected
    )
    core = track_objects(
        found.prototypes, keys, threshold=0.5
    ).masks  # half the mass: inside the band
    assert not (core & ~expected).any() and core.flatten(-2).any(-1).all()


def test_without_sinkhorn_the_plan_is_the_row_softmax_and_unbalanced():
    # clusters of 24, 6 and 6 patches: heads 0, 1 and 2 look at one each
    labels = torch.zeros(GH, GW, dtype=torch.long)
    labels[:, 4] = 1
    labels[:, 5] = 2
    labels = labels.flatten()[None]  # (1, N)
    basis = torch.eye(DIM)[:3]
    tokens = basis[labels] + 0.01 * torch.randn(1, GH * GW, DIM)
    queries = basis[labels]
    attn = torch.stack([(labels[0] == c).float() / (labels[0] == c).sum() for c in range(3)])[None]
    plain = discover_objects(attn, queries, tokens, k=3, sinkhorn=False, epsilon=0.1)
    expected = torch.softmax(plain.logits / 0.1, dim=-1)
    torch.testing.assert_close(plain.assignment, expected)
    torch.testing.assert_close(plain.assignment.sum(dim=2), torch.ones(1, GH * GW))
    torch.testing.assert_close(
        plain.assignment.sum(dim=1), torch.tensor([[24.0, 6.0, 6.0]]), atol=0.1, rtol=0
    )
    balanced = discover_objects(
        attn, queries, tokens, k=3, sinkhorn=True, epsilon=0.1, iterations=200
    )
    torch.testing.assert_close(
        balanced.assignment.sum(dim=1), torch.full((1, 3), 12.0), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(balanced.logits, plain.logits)
    torch.testing.assert_close(balanced.initial_prototypes, plain.initial_prototypes)


def reference_discovery(attn, queries, tokens, heads, epsilon, iterations):
    """Loops over clips and objects; the plan from labkit's (separately tested) sinkhorn_knopp."""
    batch, k = heads.shape
    initial = torch.zeros(batch, k, queries.shape[-1])
    for b in range(batch):
        for j in range(k):
            for n in range(queries.shape[1]):
                initial[b, j] += attn[b, heads[b, j], n] * queries[b, n]
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    logits = torch.stack([unit[b] @ initial[b].T for b in range(batch)])  # (B, N, k)
    plan = torch.stack([sinkhorn_knopp(logits[b], epsilon, iterations) for b in range(batch)])
    refined = torch.stack([plan[b].T @ unit[b] for b in range(batch)])
    return initial, logits, plan, refined


def random_inputs(batch=4, num_heads=5, frames=3, dim=12):
    attn = torch.softmax(torch.randn(batch, num_heads, GH * GW), dim=-1) * 0.9
    queries = torch.randn(batch, GH * GW, dim)
    tokens = torch.randn(batch, GH * GW, dim)
    keys = torch.randn(batch, frames, GH * GW, dim)
    return attn, queries, tokens, keys


def test_discovery_matches_loops():
    attn, queries, tokens, _ = random_inputs()
    heads = torch.tensor([[0, 1, 2], [4, 3, 2], [1, 1, 0], [3, 0, 4]])
    found = discover_objects(attn, queries, tokens, k=3, heads=heads, epsilon=0.5, iterations=20)
    initial, logits, plan, refined = reference_discovery(attn, queries, tokens, heads, 0.5, 20)
    torch.testing.assert_close(found.initial_prototypes, initial, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(found.logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(found.assignment, plan, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(found.prototypes, refined, atol=1e-4, rtol=1e-4)
    assert torch.equal(found.heads, heads)


def test_grid_shaped_inputs_equal_flat_ones():
    attn, queries, tokens, keys = random_inputs()
    flat = discover_objects(attn, queries, tokens)
    grid = discover_objects(
        attn.reshape(4, 5, GH, GW), queries.reshape(4, GH, GW, -1), tokens.reshape(4, GH, GW, -1)
    )
    for a, b in zip(flat, grid):
        torch.testing.assert_close(a, b)
    tracks_flat = track_objects(flat.prototypes, keys, (GH, GW))
    tracks_grid = track_objects(flat.prototypes, keys.reshape(4, 3, GH, GW, -1))
    torch.testing.assert_close(tracks_flat.maps, tracks_grid.maps)
    assert torch.equal(tracks_flat.masks, tracks_grid.masks)


def test_heads_options():
    attn, queries, tokens, _ = random_inputs()
    assert torch.equal(
        discover_objects(attn, queries, tokens, k=2).heads, torch.tensor([[0, 1]] * 4)
    )
    fixed = discover_objects(attn, queries, tokens, k=2, heads=[4, 1])
    assert torch.equal(fixed.heads, torch.tensor([[4, 1]] * 4))
    first = discover_objects(
        attn, queries, tokens, k=3, heads="random", generator=torch.Generator().manual_seed(3)
    )
    again = discover_objects(
        attn, queries, tokens, k=3, heads="random", generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(first.heads, again.heads)
    assert (first.heads == first.heads[0]).all()  # shared by the batch
    assert len(set(first.heads[0].tolist())) == 3 and first.heads.max() < 5
    drawn = {
        tuple(
            discover_objects(
                attn,
                queries,
                tokens,
                k=3,
                heads="random",
                generator=torch.Generator().manual_seed(s),
            )
            .heads[0]
            .tolist()
        )
        for s in range(6)
    }
    assert len(drawn) > 1


def test_batch_order_invariance():
    attn, queries, tokens, keys = random_inputs()
    perm = torch.tensor([2, 0, 3, 1])
    per_clip_heads = torch.tensor([[0, 1, 2], [4, 3, 2], [1, 2, 0], [3, 0, 4]])
    for heads in (None, per_clip_heads, "random"):
        kwargs = {"heads": heads, "generator": torch.Generator().manual_seed(0)}
        found = discover_objects(attn, queries, tokens, **kwargs)
        kwargs = {
            "heads": heads[perm] if isinstance(heads, torch.Tensor) else heads,
            "generator": torch.Generator().manual_seed(0),
        }
        permuted = discover_objects(attn[perm], queries[perm], tokens[perm], **kwargs)
        for a, b in zip(found, permuted):
            torch.testing.assert_close(a[perm], b)
        for threshold in ("mean", "batch_mean", 0.6):
            tracks = track_objects(found.prototypes, keys, (GH, GW), threshold)
            tracks_permuted = track_objects(permuted.prototypes, keys[perm], (GH, GW), threshold)
            torch.testing.assert_close(tracks.maps[perm], tracks_permuted.maps)
            assert torch.equal(tracks.masks[perm], tracks_permuted.masks)


def test_track_maps_match_loops():
    attn, queries, tokens, keys = random_inputs()
    prototypes = discover_objects(attn, queries, tokens).prototypes
    tracks = track_objects(prototypes, keys, (GH, GW))
    batch, frames, _, dim = keys.shape
    for b in range(batch):
        for t in range(frames):
            for j in range(3):
                scores = torch.stack([prototypes[b, j] @ keys[b, t, n] for n in range(GH * GW)])
                expected = torch.softmax(scores / dim**0.5, dim=0).reshape(GH, GW)
                torch.testing.assert_close(tracks.maps[b, t, j], expected)
                assert torch.equal(tracks.masks[b, t, j], expected > 1.0 / (GH * GW))


def test_binarize_batch_mean_is_the_official_rule():
    maps = torch.softmax(torch.randn(3, 2, 4, GH, GW) * 2, dim=-1)
    masks = binarize_maps(maps, "batch_mean")
    for t in range(2):
        for j in range(4):
            tube = maps[:, t, j].flatten(1)  # (B, N), as the official code holds it
            tube = tube / tube.norm(dim=-1, keepdim=True)
            assert torch.equal(masks[:, t, j].flatten(1), tube > tube.mean())


def test_per_map_threshold_ignores_other_clips_and_batch_mean_does_not():
    maps = torch.softmax(torch.randn(2, 1, 1, GH, GW), dim=-1)
    other = maps.clone()
    other[1] = 0.0
    other[1, 0, 0, 0, 0] = 1.0  # clip 1 replaced by a one-patch map
    assert torch.equal(binarize_maps(maps, "mean")[0], binarize_maps(other, "mean")[0])
    assert not torch.equal(
        binarize_maps(maps, "batch_mean")[0], binarize_maps(other, "batch_mean")[0]
    )


def test_keep_mass_masks():
    maps = torch.zeros(1, 2, 2)
    maps[0] = torch.tensor([[0.125, 0.5], [0.125, 0.25]])
    assert binarize_maps(maps, 0.75).tolist() == [[[False, True], [False, True]]]
    assert binarize_maps(maps, 0.76).tolist() == [[[True, True], [True, True]]]  # ties all kept
    assert binarize_maps(maps, 0.4).tolist() == [[[False, True], [False, False]]]
    assert binarize_maps(maps, 1.0).all()

    random_maps = torch.rand(5, 3, 4) ** 4
    for keep in (0.3, 0.6, 0.9):
        masks = binarize_maps(random_maps, keep)
        for m, mask in zip(random_maps, masks):
            values = m.flatten().tolist()
            order = sorted(range(len(values)), key=lambda i: -values[i])
            chosen, mass = [], 0.0
            for i in order:  # greedy: the largest patches until the mass is reached
                if mass >= keep * sum(values):
                    break
                chosen.append(i)
                mass += values[i]
            expected = torch.zeros(len(values), dtype=torch.bool)
            expected[chosen] = True
            assert torch.equal(mask.flatten(), expected)


@pytest.mark.parametrize("threshold", ["median", 0.0, 1.5, True])
def test_binarize_rejects_bad_thresholds(threshold):
    with pytest.raises(ValueError, match="threshold"):
        binarize_maps(torch.rand(2, GH, GW), threshold)


def test_masks_to_frames():
    masks = torch.rand(2, 3, 5) > 0.5  # (..., gh, gw)
    frames = masks_to_frames(masks, 4, (14, 22))  # 2-pixel strips at the bottom and right
    assert frames.shape == (2, 14, 22) and frames.dtype == torch.bool
    for y in range(14):
        for x in range(22):
            # the strips take the nearest edge patch (labkit.geometry's border rule)
            expected = masks[:, min(y // 4, 2), min(x // 4, 4)]
            assert torch.equal(frames[:, y, x], expected), (y, x)
    heat = masks_to_frames(torch.rand(3, 5), 4, (12, 20))
    assert heat.dtype == torch.float32 and heat.shape == (12, 20)
    for size in ((16, 22), (11, 20), (12, 24)):
        with pytest.raises(ValueError, match="does not fit"):
            masks_to_frames(masks, 4, size)


def test_masked_views():
    batch, frames, k, p = 2, 3, 2, 4
    images = torch.rand(batch, frames, 3, 14, 22)
    masks = torch.rand(batch, frames, k, 3, 5) > 0.4
    views = masked_views(images, masks, p)
    assert views.shape == (k, batch, frames, 3, 14, 22) and views.dtype == images.dtype
    pixel_masks = masks_to_frames(masks, p, (14, 22))
    for j in range(k):
        for b in range(batch):
            for t in range(frames):
                torch.testing.assert_close(views[j, b, t], images[b, t] * pixel_masks[b, t, j])
    torch.testing.assert_close(masked_views(images, pixel_masks), views)
    as_uint8 = masked_views((images * 255).to(torch.uint8), masks, p)
    assert as_uint8.dtype == torch.uint8
    with pytest.raises(ValueError, match="patch_size"):
        masked_views(images, masks)  # grid masks without patch_size
    with pytest.raises(ValueError, match="differ in"):
        masked_views(images, masks[:1], p)


def test_shape_errors():
    attn, queries, tokens, keys = random_inputs()
    with pytest.raises(ValueError, match="queries"):
        discover_objects(attn, queries[:, :-1], tokens)
    with pytest.raises(ValueError, match="same channels"):
        discover_objects(attn, queries, tokens[..., :-1])
    with pytest.raises(ValueError, match="only 5 heads"):
        discover_objects(attn, queries, tokens, k=6)
    with pytest.raises(ValueError, match="head indices"):
        discover_objects(attn, queries, tokens, k=2, heads=[0, 5])
    with pytest.raises(ValueError, match="k=3 entries"):
        discover_objects(attn, queries, tokens, k=3, heads=[0, 1])
    with pytest.raises(ValueError, match="heads must be"):
        discover_objects(attn, queries, tokens, heads="first")
    prototypes = torch.randn(4, 3, 12)
    with pytest.raises(ValueError, match="grid"):
        track_objects(prototypes, keys)  # (B, T, N, D) keys need the grid
    with pytest.raises(ValueError, match="grid"):
        track_objects(prototypes, keys, (5, 7))
    with pytest.raises(ValueError, match="do not match"):
        track_objects(prototypes[..., :-1], keys, (GH, GW))


def test_prototype_spread_separates_distinct_from_parallel_heads():
    """Distinct heads: orthogonal prototypes, logits apart by many epsilon, a hard plan. Heads
    that pool the same queries: parallel prototypes, equal logits, the uniform plan."""
    attn, queries, tokens, _, _, _, _ = cluster_scene()
    distinct = prototype_spread(discover_objects(attn, queries, tokens, k=3, heads=(0, 1, 2)), 0.05)
    assert abs(distinct["prototype_cosine"]) < 0.2  # orthonormal clusters, 10% uniform attention
    assert distinct["logit_spread_per_epsilon"] > 20  # token . prototype: ~2.4 against ~0.3
    assert distinct["plan_peak"] > 0.95 and distinct["uniform_peak"] == pytest.approx(1 / 3)
    same = attn.clone()
    same[:, :3] = attn[:, -1:]  # three copies of the uniform head
    parallel = prototype_spread(discover_objects(same, queries, tokens, k=3, heads=(0, 1, 2)), 0.05)
    assert parallel["prototype_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert parallel["logit_spread"] == pytest.approx(0.0, abs=1e-5)
    assert parallel["plan_peak"] == pytest.approx(1 / 3, abs=1e-4)


def test_prototype_spread_matches_loops():
    torch.manual_seed(3)
    batch, n, k, d, eps = 2, 10, 4, 5, 0.1
    initial = torch.randn(batch, k, d, dtype=torch.float64)
    logits = torch.randn(batch, n, k, dtype=torch.float64)
    plan = torch.rand(batch, n, k, dtype=torch.float64)  # rows not normalised: the rule must do it
    found = Discovery(initial, initial, plan, torch.zeros(batch, k, dtype=torch.long), logits)
    got = prototype_spread(found, eps)
    cosines, spreads, peaks = [], [], []
    for b in range(batch):
        for i in range(k):
            for j in range(i + 1, k):
                a, c = initial[b, i], initial[b, j]
                cosines.append(float(a @ c / (a.norm() * c.norm())))
        for row, weights in zip(logits[b], plan[b]):
            spreads.append(float(row.max() - row.min()))
            peaks.append(float(weights.max() / weights.sum()))
    assert got["prototype_cosine"] == pytest.approx(sum(cosines) / len(cosines))
    assert got["logit_spread"] == pytest.approx(sum(spreads) / len(spreads))
    assert got["logit_spread_per_epsilon"] == pytest.approx(sum(spreads) / len(spreads) / eps)
    assert got["plan_peak"] == pytest.approx(sum(peaks) / len(peaks))
    with pytest.raises(ValueError, match="epsilon"):
        prototype_spread(found, 0.0)


def test_prototype_spread_describes_the_chosen_heads_attention():
    """Known answers: uniform heads have entropy 1 and distance 0; heads on one patch each,
    entropy 0 and distance 1; the (gh, gw) layout gives the same numbers as (N,)."""
    batch, h, gh, gw, d = 2, 4, 3, 4, 6
    n = gh * gw
    queries, tokens = torch.randn(batch, n, d), torch.randn(batch, n, d)
    uniform = torch.full((batch, h, n), 0.3)  # rows need not sum to 1
    found = discover_objects(uniform, queries, tokens, k=3, heads=(0, 2, 3))
    got = prototype_spread(found, 0.05, uniform.reshape(batch, h, gh, gw))
    assert got["head_entropy"] == pytest.approx(1.0) and got["head_distance"] == pytest.approx(0.0)
    assert got == prototype_spread(found, 0.05, uniform)  # (gh, gw) and (N,): the same
    peaked = torch.zeros(batch, h, n)
    peaked[:, torch.arange(h), torch.arange(h) * 2] = 5.0  # head i on patch 2i
    found = discover_objects(peaked, queries, tokens, k=3, heads=(0, 2, 3))
    got = prototype_spread(found, 0.05, peaked)
    assert got["head_entropy"] == pytest.approx(0.0) and got["head_distance"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="attn_cls"):
        prototype_spread(found, 0.05, peaked[:, :, :-1])


def test_prototype_spread_heads_match_loops():
    """The chosen heads (per clip) through gather, against loops over clips, heads and pairs."""
    torch.manual_seed(5)
    batch, h, n, d, k = 3, 5, 9, 4, 3
    attn = torch.rand(batch, h, n, dtype=torch.float64) ** 3
    heads = torch.tensor([[4, 1, 0], [2, 3, 1], [0, 4, 2]])
    found = discover_objects(
        attn,
        torch.randn(batch, n, d, dtype=torch.float64),
        torch.randn(batch, n, d).double(),
        k,
        heads,
    )
    got = prototype_spread(found, 0.1, attn)
    entropies, distances = [], []
    for b in range(batch):
        rows = [attn[b, int(i)] / attn[b, int(i)].sum() for i in heads[b]]
        entropies += [float(-(r * r.log()).sum() / math.log(n)) for r in rows]
        distances += [
            float(0.5 * (rows[i] - rows[j]).abs().sum()) for i in range(k) for j in range(i + 1, k)
        ]
    assert got["head_entropy"] == pytest.approx(sum(entropies) / len(entropies))
    assert got["head_distance"] == pytest.approx(sum(distances) / len(distances))
