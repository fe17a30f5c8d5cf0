"""labkit.clustering against independent implementations (scikit-learn, numpy, brute force)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SKKMeans
from sklearn.decomposition import PCA as SKPCA
from sklearn.metrics import adjusted_rand_score

from labkit.clustering import align_labels, hungarian, kmeans, kmeans_segments, pca


def blobs(k: int, n_per: int, D: int, *, seed: int, sep: float = 20.0):
    """k well-separated Gaussian blobs, shuffled: (k * n_per, D) float32 and the true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, D)) * sep
    truth = np.repeat(np.arange(k), n_per)
    x = centres[truth] + rng.normal(size=(k * n_per, D))
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), truth[order]


# ---------------------------------------------------------------------------------------- kmeans
def test_kmeans_shapes_dtypes():
    x = torch.randn(50, 8)
    r = kmeans(x, 4)
    assert r.labels.shape == (50,) and r.labels.dtype == torch.int64
    assert r.centroids.shape == (4, 8) and r.centroids.dtype == torch.float32
    assert r.inertia.shape == () and float(r.inertia) > 0
    assert 0 <= int(r.labels.min()) and int(r.labels.max()) < 4

    rb = kmeans(torch.randn(3, 50, 8, dtype=torch.float64), 4)
    assert rb.labels.shape == (3, 50) and rb.centroids.shape == (3, 4, 8)
    assert rb.centroids.dtype == torch.float64 and rb.inertia.shape == (3,)

    rn = kmeans(np.random.default_rng(0).normal(size=(20, 3)), 2)  # numpy in, tensors out
    assert isinstance(rn.labels, torch.Tensor)


def test_kmeans_deterministic_with_seed():
    x = torch.rand(4, 120, 6)
    a, b = kmeans(x, 7, seed=3), kmeans(x, 7, seed=3)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    torch.manual_seed(123)  # the global RNG must not matter
    c = kmeans(x, 7, seed=3)
    assert torch.equal(a.labels, c.labels)
    d = kmeans(x, 7, seed=4)
    assert not torch.equal(a.centroids, d.centroids)


@pytest.mark.parametrize("k,D,seed", [(2, 2, 0), (4, 8, 1), (6, 32, 2), (10, 64, 3)])
def test_kmeans_blobs_agree_with_sklearn(k, D, seed):
    x, truth = blobs(k, 40, D, seed=seed)
    ours = kmeans(torch.from_numpy(x), k, seed=seed)
    sk = SKKMeans(k, n_init=1, random_state=seed).fit(x)
    assert adjusted_rand_score(sk.labels_, ours.labels.numpy()) == 1.0
    assert adjusted_rand_score(truth, ours.labels.numpy()) == 1.0
    # Same partition -> same centroids (up to their order) and the same inertia.
    cost = ((ours.centroids.numpy()[:, None] - sk.cluster_centers_[None]) ** 2).sum(-1)
    rows, cols = hungarian(cost)
    np.testing.assert_allclose(ours.centroids.numpy()[rows], sk.cluster_centers_[cols], atol=1e-3)
    assert float(ours.inertia) == pytest.approx(sk.inertia_, rel=1e-4)


def test_kmeans_batched_equals_independent_runs():
    problems = [blobs(5, 30, 16, seed=s) for s in range(6)]
    x = torch.from_numpy(np.stack([p[0] for p in problems]))  # (6, 150, 16)
    batched = kmeans(x, 5, seed=0)
    assert batched.labels.shape == (6, 150)
    for b, (xb, truth) in enumerate(problems):
        single = kmeans(torch.from_numpy(xb), 5, seed=b)
        assert adjusted_rand_score(truth, batched.labels[b].numpy()) == 1.0
        assert adjusted_rand_score(single.labels.numpy(), batched.labels[b].numpy()) == 1.0
        assert float(batched.inertia[b]) == pytest.approx(float(single.inertia), rel=1e-5)


def test_kmeans_inertia_close_to_sklearn_on_random_data():
    """No structure to find: compare like with like (one init vs one init, 8 vs 8)."""
    x = np.random.default_rng(0).uniform(size=(400, 8)).astype(np.float32)
    k, seeds = 8, range(8)
    ours_1 = np.mean([float(kmeans(torch.from_numpy(x), k, seed=s).inertia) for s in seeds])
    sk_1 = np.mean([SKKMeans(k, n_init=1, random_state=s).fit(x).inertia_ for s in seeds])
    assert ours_1 <= 1.03 * sk_1
    ours_8 = float(kmeans(torch.from_numpy(x), k, seed=0, n_init=8).inertia)
    sk_8 = SKKMeans(k, n_init=8, random_state=0).fit(x).inertia_
    assert ours_8 <= 1.02 * sk_8
    assert ours_8 <= ours_1  # the best of 8 inits beats the average single init


def test_kmeans_result_is_a_lloyd_fixed_point():
    x = np.random.default_rng(1).normal(size=(2, 200, 5))
    r = kmeans(torch.from_numpy(x), 6, tol=0.0, iters=500)
    for b in range(2):
        labels, cents = r.labels[b].numpy(), r.centroids[b].numpy()
        d = ((x[b][:, None] - cents[None]) ** 2).sum(-1)  # (n, k) numpy reference
        np.testing.assert_array_equal(labels, d.argmin(1))
        for j in range(6):
            np.testing.assert_allclose(cents[j], x[b][labels == j].mean(0), atol=1e-10)
        assert float(r.inertia[b]) == pytest.approx(d.min(1).sum(), rel=1e-10)


def test_kmeans_reseeds_empty_clusters_from_the_farthest_point():
    x, truth = blobs(3, 30, 4, seed=5)
    means = np.stack([x[truth == j].mean(0) for j in range(3)])
    # Two starting centroids on blob 0 and 1; the third so far away that it gets no point at all.
    init = np.stack([means[0], means[1], np.full(4, 1e4)]).astype(np.float32)
    r = kmeans(torch.from_numpy(x), 3, init=torch.from_numpy(init))
    assert torch.bincount(r.labels, minlength=3).min() > 0
    assert adjusted_rand_score(truth, r.labels.numpy()) == 1.0
    # Batched, with the empty cluster in a different slot per problem.
    xb = torch.from_numpy(np.stack([x, x]))
    initb = torch.from_numpy(np.stack([init, init[[2, 0, 1]]]))
    rb = kmeans(xb, 3, init=initb)
    for b in range(2):
        assert adjusted_rand_score(truth, rb.labels[b].numpy()) == 1.0


def test_kmeans_edge_cases():
    x = torch.randn(12, 3)
    assert torch.all(kmeans(x, 1).labels == 0)
    full = kmeans(x, 12)
    assert float(full.inertia) == pytest.approx(0.0, abs=1e-5)
    assert len(torch.unique(full.labels)) == 12
    dup = torch.zeros(10, 2)  # all points identical: no NaN, no crash
    r = kmeans(dup, 3)
    assert torch.isfinite(r.centroids).all() and float(r.inertia) == 0.0


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((torch.randn(5, 2), 6), {}),
        ((torch.randn(5, 2), 0), {}),
        ((torch.randn(5), 2), {}),
        ((torch.full((5, 2), float("nan")), 2), {}),
        ((torch.randn(5, 2), 2), {"init": "bogus"}),
        ((torch.randn(5, 2), 2), {"init": torch.zeros(3, 2)}),
    ],
)
def test_kmeans_rejects_bad_input(args, kwargs):
    with pytest.raises(ValueError, match="kmeans"):
        kmeans(*args, **kwargs)


def test_kmeans_speed_batched_frames():
    """100 frames of 14x14 ViT-S patches, k=10: one batched call, well under a few seconds."""
    x = torch.randn(100, 196, 384)
    kmeans(x[:2], 10)  # warm-up
    t0 = time.perf_counter()
    r = kmeans(x, 10, seed=0)
    elapsed = time.perf_counter() - t0
    assert r.labels.shape == (100, 196)
    assert elapsed < 4.0, f"batched kmeans took {elapsed:.2f} s"


@pytest.mark.gpu
def test_kmeans_runs_on_the_input_device():
    x, truth = blobs(5, 40, 16, seed=0)
    r = kmeans(torch.from_numpy(x).cuda(), 5, seed=0)
    assert r.labels.device.type == "cuda" and r.centroids.device.type == "cuda"
    assert adjusted_rand_score(truth, r.labels.cpu().numpy()) == 1.0
    feats, seg_truth = segment_video()
    for mode in ("frame", "clip"):
        seg = kmeans_segments(feats.cuda(), 3, mode=mode)
        assert seg.labels.device.type == "cuda"
        labels = seg.labels.cpu().numpy().reshape(-1)
        assert adjusted_rand_score(seg_truth.reshape(-1), labels) == 1.0


# ------------------------------------------------------------------------------------- hungarian
@pytest.mark.parametrize("maximize", [False, True])
def test_hungarian_matches_brute_force(maximize):
    cost = np.random.default_rng(2).uniform(size=(6, 6))
    rows, cols = hungarian(torch.from_numpy(cost), maximize=maximize)
    assert rows.dtype == np.int64 and sorted(cols) == list(range(6))
    totals = [cost[range(6), list(p)].sum() for p in itertools.permutations(range(6))]
    best = max(totals) if maximize else min(totals)
    assert cost[rows, cols].sum() == pytest.approx(best)


# --------------------------------------------------------------------------- alignment over time
def drifting_segments(T: int, k: int, n: int, D: int, seed: int):
    """True segment ids per frame (T, n) and centroids (T, k, D) that drift slowly."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(k, D)) * 10
    drift = np.cumsum(rng.normal(size=(T, k, D)) * 0.3, axis=0)
    truth = rng.integers(0, k, size=(T, n))
    return truth, base[None] + drift


def test_align_labels_undoes_per_frame_permutations():
    T, k = 8, 5
    truth, cents = drifting_segments(T, k, 60, 12, seed=0)
    rng = np.random.default_rng(1)
    perms = np.stack([rng.permutation(k) for _ in range(T)])  # true id j is called perms[t, j]
    observed = np.stack([perms[t][truth[t]] for t in range(T)])
    obs_cents = np.empty_like(cents)
    for t in range(T):
        obs_cents[t, perms[t]] = cents[t]
    assert not (observed == perms[0][truth]).all()  # ids really are scrambled over time
    aligned = align_labels(torch.from_numpy(observed), torch.from_numpy(obs_cents))
    assert aligned.dtype == torch.int64 and aligned.shape == (T, 60)
    np.testing.assert_array_equal(aligned.numpy(), perms[0][truth])  # frame 0's names throughout


def test_align_labels_rejects_bad_shapes():
    with pytest.raises(ValueError, match="align_labels"):
        align_labels(torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="align_labels"):
        align_labels(torch.full((2, 4), 7), torch.zeros(2, 3, 5))


def segment_video(T=6, gh=6, gw=7, D=16, seed=0):
    """Features (T, gh, gw, D) of 3 regions (background, two moving bars) and their true ids."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((T, gh, gw), dtype=np.int64)
    for t in range(T):
        truth[t, 1:3, t % 3 : t % 3 + 3] = 1
        truth[t, 4:6, 2 + (t % 2) : 5 + (t % 2)] = 2
    centres = rng.normal(size=(3, D)) * 8
    drift = np.cumsum(rng.normal(size=(T, 3, D)) * 0.2, axis=0)
    feats = (centres[None] + drift)[np.arange(T)[:, None, None], truth]  # (T, gh, gw, D)
    feats = feats + rng.normal(size=feats.shape) * 0.5
    return torch.from_numpy(feats.astype(np.float32)), truth


def test_kmeans_segments_frame_mode_keeps_ids_over_time():
    feats, truth = segment_video()
    T, gh, gw, D = feats.shape
    # Per-frame k-means alone names the segments differently in different frames...
    raw = kmeans(feats.reshape(T, gh * gw, D), 3, seed=0).labels.numpy()
    assert adjusted_rand_score(truth.reshape(-1), raw.reshape(-1)) < 1.0
    # ...after alignment the whole clip is labelled consistently.
    seg = kmeans_segments(feats, 3, mode="frame", seed=0)
    assert seg.labels.shape == (T, gh, gw) and seg.labels.dtype == torch.int64
    assert seg.centroids.shape == (T, 3, D)
    assert adjusted_rand_score(truth.reshape(-1), seg.labels.numpy().reshape(-1)) == 1.0
    assert int(torch.bincount(seg.labels[0].reshape(-1)).argmax()) == 0  # largest segment is 0
    for t in range(T):  # centroid row j is the mean of the patches labelled j
        f, lab = feats[t].reshape(-1, D), seg.labels[t].reshape(-1)
        for j in range(3):
            torch.testing.assert_close(seg.centroids[t, j], f[lab == j].mean(0), atol=1e-4, rtol=0)


def test_kmeans_segments_clip_mode_shares_labels():
    feats, truth = segment_video(seed=1)
    seg = kmeans_segments(feats, 3, mode="clip", seed=0)
    assert adjusted_rand_score(truth.reshape(-1), seg.labels.numpy().reshape(-1)) == 1.0
    assert torch.equal(seg.centroids[0], seg.centroids[-1])
    assert int(torch.bincount(seg.labels.reshape(-1)).argmax()) == 0
    again = kmeans_segments(feats, 3, mode="clip", seed=0)
    assert torch.equal(seg.labels, again.labels)
    with pytest.raises(ValueError, match="mode"):
        kmeans_segments(feats, 3, mode="video")
    with pytest.raises(ValueError, match="kmeans_segments"):
        kmeans_segments(feats[0], 3)


# -------------------------------------------------------------------------------------------- pca
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pca_matches_sklearn_including_signs(dtype):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10))) * [10, 5, 3, 2, 1, 1, 1, 1, 1, 1]
    z = pca(torch.from_numpy(x).to(dtype), 3)
    assert z.shape == (300, 3) and z.dtype == dtype
    ref = SKPCA(3, svd_solver="full").fit_transform(x)
    np.testing.assert_allclose(z.numpy(), ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    assert torch.equal(pca(torch.from_numpy(x).to(dtype), 3), z)  # deterministic
    # Sign convention, checked independently: the largest loading of each component is positive.
    xc = x - x.mean(0)
    comps = np.linalg.lstsq(xc, z.double().numpy(), rcond=None)[0].T  # (3, D) recovered loadings
    assert (comps[np.arange(3), np.abs(comps).argmax(1)] > 0).all()


def test_pca_rejects_bad_input():
    with pytest.raises(ValueError, match="pca"):
        pca(torch.randn(10, 2), 3)
    with pytest.raises(ValueError, match="pca"):
        pca(torch.randn(2, 10, 4))
