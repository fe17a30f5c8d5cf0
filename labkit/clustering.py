"""Clustering of ViT patch features: batched k-means, label alignment over time, PCA.

Everything here is compute: inputs are torch tensors (numpy arrays are accepted and converted),
outputs are torch tensors on the input's device. Rendering lives in :mod:`labkit.viz`.

Notation::

    B   independent problems solved at once (usually frames)
    n   points per problem (patches of a frame, or of a whole clip)
    D   feature channels
    k   clusters
    L   candidate centres tried per k-means++ step
    T   frames;  gh, gw  patch grid;  P = gh * gw patches per frame

References:
    Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007 (the greedy
    variant with ``2 + log k`` candidates per step is the one scikit-learn uses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "KMeans",
    "Segments",
    "kmeans",
    "hungarian",
    "align_labels",
    "kmeans_segments",
    "fit_video_kmeans",
    "assign",
    "pca",
]


class KMeans(NamedTuple):
    """Result of :func:`kmeans`; a leading ``B`` dimension is present iff the input had one."""

    labels: torch.Tensor  # ([B,] n) int64 in [0, k)
    centroids: torch.Tensor  # ([B,] k, D) float
    inertia: torch.Tensor  # ([B,]) float: sum of squared distances of points to their centroid


class Segments(NamedTuple):
    """Result of :func:`kmeans_segments`."""

    labels: torch.Tensor  # (T, gh, gw) int64 in [0, k), ids consistent over time
    centroids: torch.Tensor  # (T, k, D) float; row j of frame t is the centroid of segment j


def _as_float_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: expected a real-valued tensor, got dtype {x.dtype}")
    if x.dtype != torch.float64:
        x = x.float()  # half/bfloat16/int -> float32: distances need the precision
    return x


def _sqnorm(a: torch.Tensor) -> torch.Tensor:
    """Squared norms over the last dimension, (..., D) -> (...)."""
    return torch.einsum("...d,...d->...", a, a)


def _sqdist(
    a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor | None = None, b2: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances, (B, m, D) x (B, k, D) -> (B, m, k), clamped at 0.

    ``a2``/``b2`` are the precomputed squared norms (B, m) / (B, k) where the caller has them.
    """
    a2 = _sqnorm(a) if a2 is None else a2
    b2 = _sqnorm(b) if b2 is None else b2
    d = torch.baddbmm(b2[:, None, :], a, b.transpose(1, 2), alpha=-2.0)  # (B, m, k)
    d += a2[:, :, None]
    return d.clamp_min_(0.0)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding, batched: (B, n, D) -> (B, k, D)."""
    B, n, D = x.shape
    ar = torch.arange(B, device=x.device)
    L = 2 + int(math.log(k))  # candidates per step, as in scikit-learn
    x2 = _sqnorm(x)  # (B, n)
    centers = x.new_empty(B, k, D)
    first = torch.randint(n, (B,), generator=gen, device=x.device)
    centers[:, 0] = x[ar, first]
    d2 = _sqdist(x, centers[:, :1], x2)[..., 0]  # (B, n) distance to the closest chosen centre
    for c in range(1, k):
        # Rows whose points all coincide with chosen centres: sample uniformly instead.
        weights = d2 + (d2.sum(-1, keepdim=True) <= 0).to(d2.dtype)
        cand = torch.multinomial(weights, L, replacement=True, generator=gen)  # (B, L)
        cand_pts = x[ar[:, None], cand]  # (B, L, D)
        cand_d2 = _sqdist(cand_pts, x, x2[ar[:, None], cand], x2)  # (B, L, n)
        new_d2 = torch.minimum(d2[:, None, :], cand_d2)
        best = new_d2.sum(-1).argmin(-1)  # (B,) candidate that lowers the potential most
        centers[:, c] = cand_pts[ar, best]
        d2 = new_d2[ar, best]
    return centers


def _random_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct points drawn uniformly per problem: (B, n, D) -> (B, k, D)."""
    B, n, _ = x.shape
    idx = torch.rand(B, n, generator=gen, device=x.device).argsort(-1)[:, :k]  # (B, k)
    return x[torch.arange(B, device=x.device)[:, None], idx]


def _lloyd(
    x: torch.Tensor, centers: torch.Tensor, iters: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd iterations on (B, n, D) from (B, k, D) -> labels (B, n), centroids, inertia (B,)."""
    B, n, D = x.shape
    k = centers.shape[1]
    # Convergence threshold relative to the data's scale, as in scikit-learn.
    tol_b = tol * x.var(dim=1, unbiased=False).mean(-1)  # (B,)
    x2 = _sqnorm(x)  # (B, n)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for _ in range(iters):
        dist = _sqdist(x, centers, x2)  # (B, n, k)
        min_d, labels = dist.min(-1)  # (B, n)
        onehot = F.one_hot(labels, k).to(x.dtype)  # (B, n, k)
        counts = onehot.sum(1)  # (B, k)
        new = (onehot.transpose(1, 2) @ x) / counts.clamp_min(1.0)[..., None]  # (B, k, D)
        empty = counts == 0  # (B, k)
        if bool(empty.any()):
            # Re-seed each empty cluster at one of the points farthest from their centroid:
            # the e-th empty cluster of a problem gets its e-th farthest point.
            order = min_d.argsort(dim=1, descending=True, stable=True)  # (B, n)
            rank = (empty.cumsum(-1) - 1).clamp_min(0)  # (B, k)
            far = order.gather(1, rank)  # (B, k)
            far_pts = x.gather(1, far[..., None].expand(-1, -1, D))  # (B, k, D)
            new = torch.where(empty[..., None], far_pts, new)
        shift = ((new - centers) ** 2).sum((-1, -2))  # (B,)
        # Problems that converged earlier stay frozen, so a result does not depend on the batch.
        new = torch.where(done[:, None, None], centers, new)
        done = done | (shift <= tol_b)
        centers = new
        if bool(done.all()):
            break
    min_d, labels = _sqdist(x, centers, x2).min(-1)
    return labels, centers, min_d.sum(-1)


def kmeans(
    x: torch.Tensor | np.ndarray,
    k: int,
    *,
    seed: int = 0,
    iters: int = 100,
    tol: float = 1e-4,
    init: Literal["k-means++", "random"] | torch.Tensor = "k-means++",
    n_init: int = 1,
) -> KMeans:
    """k-means (Lloyd) in torch, batched over independent problems, on the input's device.

    ``(B, n, D)`` runs ``B`` independent k-means at once with tensor operations (no Python loop over
    ``B``): the usual case is one problem per frame. Seeding is greedy k-means++ (``2 + log k``
    candidates per step) drawn from a ``torch.Generator`` seeded with ``seed``, so results are
    deterministic for a given seed, input and device. A cluster that loses all its points is
    re-seeded at the point farthest from its centroid. Iteration stops per problem when the squared
    centroid shift is at most ``tol`` times the mean per-channel variance of its points (the
    scikit-learn criterion); converged problems are frozen while the rest go on.

    Args:
        x: Points ``(n, D)`` or ``(B, n, D)``; float64 stays float64, anything else is float32.
        k: Number of clusters, ``1 <= k <= n``.
        seed: Seed of the generator used for the initialisation.
        iters: Maximum Lloyd iterations.
        tol: Relative tolerance on the centroid shift (see above).
        init: ``"k-means++"``, ``"random"`` (k distinct points) or initial centroids
            ``([B,] k, D)``.
        n_init: Number of initialisations per problem (run together, batched); the one with the
            lowest inertia is kept. Must be 1 when ``init`` is a tensor.

    Returns:
        ``KMeans(labels, centroids, inertia)``: labels ``([B,] n)`` int64 in ``[0, k)``, centroids
        ``([B,] k, D)`` float, inertia ``([B,])`` float (sum of squared distances to the centroid).
    """
    x = _as_float_tensor(x, "kmeans: x")
    if x.ndim not in (2, 3):
        raise ValueError(f"kmeans: x must be (n, D) or (B, n, D), got shape {tuple(x.shape)}")
    single = x.ndim == 2
    X = x[None] if single else x  # (B, n, D)
    B, n, D = X.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be in [1, n={n}], got k={k}")
    if iters < 1 or tol < 0 or n_init < 1:
        raise ValueError(
            f"kmeans: need iters >= 1, tol >= 0, n_init >= 1 (got {iters}, {tol}, {n_init})"
        )
    if not bool(torch.isfinite(X).all()):
        raise ValueError("kmeans: x contains NaN or infinite values")

    gen = torch.Generator(device=X.device)
    gen.manual_seed(int(seed))
    if isinstance(init, (torch.Tensor, np.ndarray)):
        if n_init != 1:
            raise ValueError("kmeans: n_init must be 1 when init is a tensor of centroids")
        centers = torch.as_tensor(init, dtype=X.dtype, device=X.device)
        centers = centers[None] if centers.ndim == 2 else centers
        if centers.shape != (B, k, D):
            raise ValueError(
                f"kmeans: init must have shape {(k, D) if single else (B, k, D)}, "
                f"got {tuple(torch.as_tensor(init).shape)}"
            )
        labels, cents, inertia = _lloyd(X, centers.clone(), iters, tol)
    elif init in ("k-means++", "random"):
        Xr = X.repeat_interleave(n_init, dim=0) if n_init > 1 else X  # (B * n_init, n, D)
        seeding = _kmeans_pp if init == "k-means++" else _random_init
        labels, cents, inertia = _lloyd(Xr, seeding(Xr, k, gen), iters, tol)
        if n_init > 1:
            best = inertia.view(B, n_init).argmin(-1)  # (B,)
            pick = torch.arange(B, device=X.device) * n_init + best
            labels, cents, inertia = labels[pick], cents[pick], inertia[pick]
    else:
        raise ValueError(f"kmeans: init must be 'k-means++', 'random' or a tensor, got {init!r}")

    if single:
        return KMeans(labels[0], cents[0], inertia[0])
    return KMeans(labels, cents, inertia)


def hungarian(
    cost: np.ndarray | torch.Tensor, maximize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment (Hungarian algorithm, via ``scipy.optimize.linear_sum_assignment``).

    Args:
        cost: Cost matrix ``(r, c)``; square ``(k, k)`` in the usual use.
        maximize: Maximise the total instead of minimising it.

    Returns:
        ``(rows, cols)``: int64 arrays of length ``min(r, c)``; row ``rows[i]`` is matched with
        column ``cols[i]``, rows in increasing order.
    """
    from scipy.optimize import linear_sum_assignment

    if isinstance(cost, torch.Tensor):
        cost = cost.detach().cpu().double().numpy()
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"hungarian: cost must be a 2-D matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("hungarian: cost contains NaN or infinite values")
    rows, cols = linear_sum_assignment(cost, maximize=maximize)
    return rows.astype(np.int64), cols.astype(np.int64)


def _alignment(centroids: torch.Tensor) -> torch.Tensor:
    """Per-frame relabelling maps (T, k): old label j of frame t becomes ``maps[t, j]``.

    Frame 0 keeps its labels; frame t's centroids are matched to frame t-1's (already relabelled)
    centroids by the Hungarian algorithm on squared Euclidean distances.
    """
    T, k, _ = centroids.shape
    maps = torch.empty(T, k, dtype=torch.int64)
    maps[0] = torch.arange(k)
    ref = centroids[0]
    for t in range(1, T):
        cost = _sqdist(ref[None], centroids[t][None])[0]  # (k ref slots, k clusters of frame t)
        rows, cols = hungarian(cost)
        maps[t, torch.from_numpy(cols)] = torch.from_numpy(rows)
        ref = centroids[t][torch.from_numpy(np.argsort(maps[t].numpy()))]  # centroid of new label j
    return maps.to(centroids.device)


def _apply_maps(labels: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """labels (T, ...) in [0, k) relabelled frame by frame through maps (T, k)."""
    T = labels.shape[0]
    flat = labels.reshape(T, -1)  # (T, M)
    return maps.gather(1, flat).reshape(labels.shape)


def align_labels(
    labels: torch.Tensor | np.ndarray, centroids: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """Relabel per-frame clusterings so that a segment keeps its id (and colour) over time.

    Frame 0 keeps its ids; each later frame's centroids are matched one-to-one with the previous
    frame's (already aligned) centroids by the Hungarian algorithm on squared distances, and its
    labels are renamed accordingly.

    Args:
        labels: ``(T, ...)`` integer labels in ``[0, k)`` (e.g. ``(T, n)`` or ``(T, gh, gw)``).
        centroids: ``(T, k, D)``; row ``j`` of frame ``t`` is the centroid of label ``j``.

    Returns:
        int64 tensor shaped like ``labels`` (on the labels' device) with aligned ids in ``[0, k)``.
    """
    labels = torch.as_tensor(labels)
    centroids = _as_float_tensor(centroids, "align_labels: centroids")
    if centroids.ndim != 3:
        raise ValueError(f"align_labels: centroids must be (T, k, D), got {tuple(centroids.shape)}")
    T, k, _ = centroids.shape
    if labels.ndim < 1 or labels.shape[0] != T:
        raise ValueError(
            f"align_labels: labels must be (T={T}, ...), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"align_labels: labels must be integers, got {labels.dtype}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"align_labels: labels must lie in [0, k={k})")
    maps = _alignment(centroids.detach().cpu()).to(labels.device)
    return _apply_maps(labels, maps)


def _size_order(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Map (k,) renaming clusters by decreasing size (ties by old id): largest becomes 0."""
    counts = torch.bincount(labels.reshape(-1), minlength=k)
    order = torch.argsort(-counts, stable=True)  # old ids, largest first
    mapping = torch.empty_like(order)
    mapping[order] = torch.arange(k, device=order.device)
    return mapping


def kmeans_segments(
    features: torch.Tensor | np.ndarray,
    k: int,
    *,
    mode: Literal["frame", "clip"] = "frame",
    seed: int = 0,
    iters: int = 100,
    n_init: int = 1,
    normalize: bool = False,
) -> Segments:
    """Segment frames by k-means on their patch features, with ids that persist over time.

    ``mode="frame"`` clusters each frame on its own (batched, one k-means per frame) and then
    aligns the ids with :func:`align_labels`; ``mode="clip"`` runs one k-means over the patches of
    all frames at once, so ids are shared by construction. In both modes the ids of the first
    frame (frame mode) or of the clip (clip mode) are ordered by segment size, largest first, so
    that segment 0 is usually the background.

    Args:
        features: Patch features ``(T, gh, gw, D)``.
        k: Segments per frame.
        mode: ``"frame"`` or ``"clip"`` (see above).
        seed: k-means seed.
        iters: Maximum Lloyd iterations.
        n_init: k-means initialisations (best kept).
        normalize: L2-normalise each feature vector first (cosine-like clustering).

    Returns:
        ``Segments(labels, centroids)``: labels ``(T, gh, gw)`` int64 in ``[0, k)``; centroids
        ``(T, k, D)`` float in the (possibly normalised) feature space, row ``j`` being segment
        ``j``'s centroid in that frame (the same for every frame in clip mode).
    """
    f = _as_float_tensor(features, "kmeans_segments: features")
    if f.ndim != 4:
        raise ValueError(
            f"kmeans_segments: features must be (T, gh, gw, D), got shape {tuple(f.shape)}"
        )
    if normalize:
        f = F.normalize(f, dim=-1)
    T, gh, gw, D = f.shape
    if mode == "frame":
        km = kmeans(f.reshape(T, gh * gw, D), k, seed=seed, iters=iters, n_init=n_init)
        first = _size_order(km.labels[0], k)  # (k,) old id -> new id, for frame 0
        cents = km.centroids.clone()  # (T, k, D)
        cents[0] = km.centroids[0][torch.argsort(first)]
        labels = km.labels.clone()  # (T, P)
        labels[0] = first[km.labels[0]]
        maps = _alignment(cents.detach().cpu()).to(labels.device)  # (T, k)
        labels = _apply_maps(labels, maps)
        inv = torch.argsort(maps, dim=1)  # (T, k): new id -> old id
        cents = cents.gather(1, inv[..., None].expand(-1, -1, D))
    elif mode == "clip":
        km = kmeans(f.reshape(T * gh * gw, D), k, seed=seed, iters=iters, n_init=n_init)
        order = _size_order(km.labels, k)
        labels = order[km.labels].reshape(T, gh * gw)  # (T, P)
        cents = km.centroids[torch.argsort(order)].expand(T, k, D).contiguous()
    else:
        raise ValueError(f"kmeans_segments: mode must be 'frame' or 'clip', got {mode!r}")
    return Segments(labels.reshape(T, gh, gw), cents)


def fit_video_kmeans(
    features: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
    k: int,
    *,
    seed: int = 0,
    iters: int = 100,
    n_init: int = 1,
    normalize: bool = False,
    max_points: int | None = None,
) -> torch.Tensor:
    """Centroids of one k-means over the patches of many frames (a whole clip, or a sample of a
    video).

    The fitting half of whole-video segmentation: fit here on the features of a sample of frames,
    then label every frame with :func:`assign`, batch by batch, so that a segment has the same id
    (and colour) in every frame of the video. Fitting on all frames of a clip and assigning them
    gives the labels of ``kmeans_segments(features, k, mode="clip")`` (same seed, same order).

    Args:
        features: Patch features ``(..., D)`` (e.g. ``(S, gh, gw, D)`` of S sampled frames), or an
            iterable of such tensors (e.g. batches of frames), all with the same ``D``; they are
            concatenated, so the sample must fit in memory.
        k: Number of segments, ``1 <= k <=`` number of points.
        seed: k-means seed (also the seed of the ``max_points`` subsample).
        iters: Maximum Lloyd iterations.
        n_init: k-means initialisations (best kept).
        normalize: L2-normalise each feature vector first (pass the same to :func:`assign`).
        max_points: If set and there are more points, fit on this many drawn uniformly without
            replacement (bounds the cost of the fit).

    Returns:
        ``(k, D)`` float centroids on the features' device, ordered by cluster size in the fit,
        largest first (segment 0 is usually the background).
    """
    if isinstance(features, (torch.Tensor, np.ndarray)):
        parts = [_as_float_tensor(features, "fit_video_kmeans: features")]
    else:
        parts = [_as_float_tensor(f, "fit_video_kmeans: features") for f in features]
    if not parts:
        raise ValueError("fit_video_kmeans: no features given")
    dims = {p.shape[-1] if p.ndim else None for p in parts}
    if len(dims) != 1 or None in dims:
        raise ValueError(
            "fit_video_kmeans: every feature tensor must be (..., D) with the same D, got shapes "
            f"{[tuple(p.shape) for p in parts]}"
        )
    D = parts[0].shape[-1]
    device = parts[0].device
    x = torch.cat([p.to(device).reshape(-1, D) for p in parts])  # (n, D)
    if normalize:
        x = F.normalize(x, dim=-1)
    if max_points is not None:
        if max_points < 1:
            raise ValueError(f"fit_video_kmeans: max_points must be >= 1, got {max_points}")
        if x.shape[0] > max_points:
            gen = torch.Generator(device=x.device)
            gen.manual_seed(int(seed))
            keep = torch.randperm(x.shape[0], generator=gen, device=x.device)[:max_points]
            x = x[keep.sort().values]  # (max_points, D), original order kept
    km = kmeans(x, k, seed=seed, iters=iters, n_init=n_init)
    order = _size_order(km.labels, k)  # old id -> new id
    return km.centroids[torch.argsort(order)]  # (k, D), row j = segment j


def assign(
    features: torch.Tensor | np.ndarray,
    centroids: torch.Tensor | np.ndarray,
    *,
    normalize: bool = False,
    chunk_size: int = 65536,
) -> torch.Tensor:
    """Label each feature vector with its nearest centroid (squared Euclidean distance).

    The assigning half of whole-video segmentation (see :func:`fit_video_kmeans`). Points are
    processed in chunks of ``chunk_size`` (memory ``chunk_size * k`` distances). On ties the lower
    id wins.

    Args:
        features: ``(..., D)`` points, e.g. ``(n, gh, gw, D)`` for a batch of frames.
        centroids: ``(k, D)``.
        normalize: L2-normalise the points first (use the value the centroids were fitted with).
        chunk_size: Points per distance computation.

    Returns:
        int64 labels of shape ``features.shape[:-1]`` in ``[0, k)``, on the features' device.
    """
    x = _as_float_tensor(features, "assign: features")
    c = _as_float_tensor(centroids, "assign: centroids")
    if c.ndim != 2 or x.ndim < 1 or x.shape[-1] != c.shape[1] or c.shape[0] < 1:
        raise ValueError(
            f"assign: need features (..., D) and centroids (k, D) with the same D, got "
            f"{tuple(x.shape)} and {tuple(c.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"assign: chunk_size must be >= 1, got {chunk_size}")
    flat = x.reshape(-1, x.shape[-1])  # (n, D)
    if normalize:
        flat = F.normalize(flat, dim=-1)
    c = c.to(device=flat.device, dtype=flat.dtype)[None]  # (1, k, D)
    c2 = _sqnorm(c)  # (1, k)
    labels = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
    for start in range(0, flat.shape[0], chunk_size):
        part = flat[start : start + chunk_size][None]  # (1, m, D)
        labels[start : start + part.shape[1]] = _sqdist(part, c, b2=c2)[0].argmin(-1)  # (m,)
    return labels.reshape(x.shape[:-1])


def pca(x: torch.Tensor | np.ndarray, n_components: int = 3) -> torch.Tensor:
    """Project points on their principal components.

    Exact PCA: the components are the top eigenvectors of the ``(D, D)`` scatter matrix of the
    centred data, computed in float64 (the same subspace as the SVD of the centred data, at a
    fraction of the cost when ``n >> D``, e.g. all patches of a clip). Sign convention
    (deterministic, the same as scikit-learn's ``PCA``): each component is flipped so that its
    loading of largest absolute value is positive.

    Args:
        x: Points ``(n, D)``.
        n_components: Number of components, ``1 <= n_components <= min(n, D)``.

    Returns:
        Scores ``(n, n_components)`` float (float64 for float64 input, else float32), centred,
        in order of decreasing variance.
    """
    x = _as_float_tensor(x, "pca: x")
    if x.ndim != 2:
        raise ValueError(f"pca: x must be (n, D), got shape {tuple(x.shape)}")
    n, D = x.shape
    if not 1 <= n_components <= min(n, D):
        raise ValueError(
            f"pca: n_components must be in [1, min(n, D)={min(n, D)}], got {n_components}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("pca: x contains NaN or infinite values")
    xc = x.double() - x.double().mean(0, keepdim=True)  # (n, D)
    _, vecs = torch.linalg.eigh(xc.T @ xc)  # ascending eigenvalues; vecs (D, D), columns
    comps = vecs[:, -n_components:].flip(-1).T  # (c, D), largest variance first
    big = comps.abs().argmax(-1)  # (c,)
    signs = torch.sign(comps.gather(1, big[:, None]))  # (c, 1)
    signs[signs == 0] = 1.0
    return (xc @ (comps * signs).T).to(x.dtype)  # (n, c)
