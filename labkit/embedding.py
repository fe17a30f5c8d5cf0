"""2-D embeddings of a clip's patch features (PCA, UMAP) and the exact map from points to patches.

Notation::

    T   frames of the clip;  gh, gw  patch grid;  P = gh * gw patches per frame
    D   feature channels;  n  points embedded (n <= max_points)
    (t, i, j)  a patch: frame t (position in the clip), row i, column j

Subsampling rule (:func:`sample_patches`), so that long clips stay responsive: a clip has T * P
patches. If that is at most ``max_points`` every patch is kept. Otherwise every frame gets an
equal share, ``max_points // T`` patches (the first ``max_points % T`` frames one more), drawn
uniformly without replacement inside the frame by one ``torch.Generator`` seeded with ``seed``;
if the clip has more frames than ``max_points``, frames are first thinned to ``max_points`` at a
uniform stride (``linspace`` rounded) and each keeps one random patch. Points are in
(frame, row, column) order, and point ``q`` is patch ``index[q]``, exactly: that is how a lasso
or box selection in the embedding goes back to the frames.

UMAP (umap-learn) runs on the first ``pca_dims`` principal components of the sampled features
(the usual denoising step; it also makes the neighbour search cheaper). Its first call in a
process compiles numba code, which takes tens of seconds on a laptop CPU and holds Python's GIL
while it does. :func:`embed_patches_in_worker` therefore runs UMAP in one persistent worker
process (spawned on first use): the compile is paid once per session, and the notebook's kernel
stays responsive meanwhile (the interactive view, :mod:`labkit.viz.embedding`, uses it and shows a
note); :func:`umap_warmed_up` says whether the compile has been paid.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from labkit.clustering import pca

__all__ = [
    "PatchEmbedding",
    "sample_patches",
    "embed_patches",
    "embed_patches_in_worker",
    "nearest_patch",
    "patch_similarity",
    "umap_2d",
    "umap_warmed_up",
]

Method = Literal["pca", "umap"]

_umap_lock = threading.Lock()  # numba compilation is not meant to run twice at once
_umap_runs = 0  # UMAP fits finished in this process or its worker (0: the next pays the compile)
_worker: Any = None  # the process that runs UMAP for embed_patches_in_worker, started on first use


def sample_patches(
    num_frames: int, grid: tuple[int, int], max_points: int, seed: int = 0
) -> np.ndarray:
    """The patches a clip's embedding shows, by the rule in the module docstring.

    Args:
        num_frames: T, frames in the clip.
        grid: (gh, gw) patch grid.
        max_points: the most points to keep, >= 1.
        seed: seed of the random choice inside each frame.

    Returns:
        int64 (n, 3) rows (t, i, j), sorted, unique; n = min(T * P, max_points).
    """
    gh, gw = (int(g) for g in grid)
    if num_frames < 1 or gh < 1 or gw < 1:
        raise ValueError(f"sample_patches: need T >= 1 and a grid >= 1x1, got {num_frames}, {grid}")
    if max_points < 1:
        raise ValueError(f"sample_patches: max_points must be >= 1, got {max_points}")
    per_frame = gh * gw
    total = num_frames * per_frame
    if total <= max_points:
        flat = np.arange(total, dtype=np.int64)
    else:
        frames = np.arange(num_frames)
        if num_frames > max_points:
            frames = np.unique(np.linspace(0, num_frames - 1, max_points).round().astype(np.int64))
        quota = np.full(len(frames), max_points // len(frames), dtype=np.int64)
        quota[: max_points % len(frames)] += 1
        gen = torch.Generator().manual_seed(int(seed))
        parts = []
        for frame, q in zip(frames, quota):
            chosen = torch.randperm(per_frame, generator=gen)[: int(q)].numpy()
            parts.append(int(frame) * per_frame + np.sort(chosen))
        flat = np.concatenate(parts).astype(np.int64)
    t, rest = np.divmod(flat, per_frame)
    i, j = np.divmod(rest, gw)
    return np.stack([t, i, j], axis=1)  # (n, 3)


@dataclass(frozen=True)
class PatchEmbedding:
    """Points in 2-D, each one patch of the clip.

    Attributes:
        coords: float32 (n, 2) embedding coordinates.
        index: int64 (n, 3) the patch (t, i, j) of each point, sorted.
        grid: (gh, gw) of the clip.
        num_frames: T of the clip.
        method: "pca" or "umap".
        seconds: wall time of the embedding.
    """

    coords: np.ndarray
    index: np.ndarray
    grid: tuple[int, int]
    num_frames: int
    method: str
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.index)

    @property
    def total_patches(self) -> int:
        """T * P: the patches of the clip, of which ``len(self)`` are shown."""
        return self.num_frames * self.grid[0] * self.grid[1]

    def _flat(self) -> np.ndarray:
        gh, gw = self.grid
        return (self.index[:, 0] * gh + self.index[:, 1]) * gw + self.index[:, 2]  # (n,) sorted

    def patches(self, points: np.ndarray | list[int]) -> np.ndarray:
        """Selected point indices -> their patches: int64 (m, 3) rows (t, i, j), in the given
        order.
        """
        pts = np.asarray(points, dtype=np.int64).reshape(-1)
        if len(pts) and (pts.min() < 0 or pts.max() >= len(self)):
            raise ValueError(
                f"patches: point indices must be in [0, {len(self)}), got {pts.min()}..{pts.max()}"
            )
        return self.index[pts]

    def point_of(self, t: int, i: int, j: int) -> int | None:
        """The point showing patch (t, i, j), or None where the subsample left it out."""
        gh, gw = self.grid
        if not (0 <= t < self.num_frames and 0 <= i < gh and 0 <= j < gw):
            raise ValueError(
                f"point_of: patch {(t, i, j)} outside a {self.num_frames}x{gh}x{gw} clip"
            )
        flat = self._flat()
        key = (t * gh + i) * gw + j
        q = int(np.searchsorted(flat, key))
        return q if q < len(flat) and flat[q] == key else None

    def frame_masks(self, points: np.ndarray | list[int]) -> np.ndarray:
        """Selected points as patch masks: bool (T, gh, gw), True at the selected patches."""
        masks = np.zeros((self.num_frames, *self.grid), dtype=bool)
        sel = self.patches(points)
        masks[sel[:, 0], sel[:, 1], sel[:, 2]] = True
        return masks


def patch_similarity(features: torch.Tensor | np.ndarray, t: int, i: int, j: int) -> torch.Tensor:
    """Cosine similarity of one patch's feature with every patch of every frame.

    The map of dino-vit-features' "click a patch" demo, over a whole clip.

    Args:
        features: (T, gh, gw, D) patch features (any facet: tokens, keys, queries, values).
        t, i, j: the patch: frame position, row, column.

    Returns:
        float32 (T, gh, gw) in [-1, 1]; 1 at (t, i, j) itself (for a non-zero feature).
    """
    feats = torch.as_tensor(
        np.asarray(features) if not isinstance(features, torch.Tensor) else features
    )
    if feats.ndim != 4:
        raise ValueError(
            f"patch_similarity: features must be (T, gh, gw, D), got {tuple(feats.shape)}"
        )
    T, gh, gw, _ = feats.shape
    if not (0 <= t < T and 0 <= i < gh and 0 <= j < gw):
        raise ValueError(f"patch_similarity: patch {(t, i, j)} outside a {T}x{gh}x{gw} clip")
    unit = torch.nn.functional.normalize(feats.float(), dim=-1)  # (T, gh, gw, D)
    return torch.einsum("thwd,d->thw", unit, unit[t, i, j]).clamp_(-1.0, 1.0)  # (T, gh, gw)


def nearest_patch(
    features: torch.Tensor | np.ndarray, index: np.ndarray, t: int, i: int, j: int
) -> tuple[int, float]:
    """The point among ``index``'s patches whose feature is closest (cosine) to patch (t, i, j).

    What a click on a patch that the embedding's subsample left out rings instead.

    Args:
        features: (T, gh, gw, D) patch features.
        index: int64 (n, 3) rows (t, i, j) of the embedded patches (``PatchEmbedding.index``).
        t, i, j: the clicked patch.

    Returns:
        (point q, its cosine similarity with the clicked patch).
    """
    idx = np.asarray(index, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[1] != 3 or len(idx) < 1:
        raise ValueError(f"nearest_patch: index must be (n, 3) with n >= 1, got {idx.shape}")
    sim = patch_similarity(features, t, i, j)  # (T, gh, gw)
    values = sim[idx[:, 0], idx[:, 1], idx[:, 2]]  # (n,)
    q = int(torch.argmax(values))
    return q, float(values[q])


def umap_warmed_up() -> bool:
    """True once a UMAP fit has finished in this process (numba's compile is then paid)."""
    return _umap_runs > 0


def umap_2d(
    x: np.ndarray | torch.Tensor,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    pca_dims: int = 50,
) -> np.ndarray:
    """UMAP of points to 2-D, on their first ``pca_dims`` principal components.

    Args:
        x: (n, D) points, n >= 4.
        n_neighbors: UMAP's neighbourhood size (capped at n - 1).
        min_dist: UMAP's minimum distance in the embedding.
        seed: UMAP's ``random_state`` (deterministic, single-threaded layout).
        pca_dims: principal components kept before UMAP (all if D is smaller).

    Returns:
        float32 (n, 2).
    """
    global _umap_runs
    import warnings

    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"umap_2d: need (n, D) points with n >= 4, got {tuple(x.shape)}")
    dims = min(pca_dims, x.shape[1], len(x))
    z = pca(x, dims).numpy().astype(np.float32)  # (n, dims)
    with _umap_lock:
        import umap

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            reducer = umap.UMAP(
                n_components=2,
                n_neighbors=max(2, min(n_neighbors, len(x) - 1)),
                min_dist=min_dist,
                random_state=seed,
                init="pca" if len(x) > 3 else "random",
            )
            out = reducer.fit_transform(z)
        _umap_runs += 1
    return np.asarray(out, dtype=np.float32)


def embed_patches(
    features: torch.Tensor | np.ndarray,
    method: Method = "pca",
    *,
    max_points: int = 3000,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int = 50,
) -> PatchEmbedding:
    """Embed a clip's patch features in 2-D.

    Args:
        features: (T, gh, gw, D) patch features (e.g. tokens from :func:`labkit.attention.extract`).
        method: ``"pca"`` (first two principal components, exact and instant) or ``"umap"``.
        max_points: the most patches embedded; longer clips are subsampled by
            :func:`sample_patches`.
        seed: subsample and UMAP seed.
        n_neighbors, min_dist, pca_dims: UMAP parameters, see :func:`umap_2d`.

    Returns:
        :class:`PatchEmbedding` with coords float32 (n, 2) and index int64 (n, 3).
    """
    import time

    feats = torch.as_tensor(
        np.asarray(features) if not isinstance(features, torch.Tensor) else features
    )
    if feats.ndim != 4:
        raise ValueError(
            f"embed_patches: features must be (T, gh, gw, D), got {tuple(feats.shape)}"
        )
    if method not in ("pca", "umap"):
        raise ValueError(f"embed_patches: method must be 'pca' or 'umap', got {method!r}")
    T, gh, gw, D = feats.shape
    index = sample_patches(T, (gh, gw), max_points, seed)
    x = feats[index[:, 0], index[:, 1], index[:, 2]].float()  # (n, D)
    start = time.perf_counter()
    if method == "pca":
        if len(x) < 2 or D < 2:
            raise ValueError(
                f"embed_patches: PCA to 2-D needs >= 2 points and channels, got {tuple(x.shape)}"
            )
        coords = pca(x, 2).numpy().astype(np.float32)
    else:
        coords = umap_2d(
            x, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed, pca_dims=pca_dims
        )
    return PatchEmbedding(
        coords=coords,
        index=index,
        grid=(int(gh), int(gw)),
        num_frames=int(T),
        method=method,
        seconds=time.perf_counter() - start,
    )


def _umap_worker() -> Any:
    global _worker
    if _worker is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent is a kernel with threads (and maybe torch's thread pools)
        _worker = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
    return _worker


def embed_patches_in_worker(
    features: torch.Tensor | np.ndarray,
    *,
    max_points: int = 3000,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int = 50,
) -> Future:
    """UMAP of :func:`embed_patches` in a separate, persistent worker process.

    The patches are sampled here (only the (n, D) sample travels to the worker); the worker
    compiles UMAP's numba code on its first call and keeps it for later calls. Where no process
    can be started, the fit runs in a thread of this process instead.

    Args:
        features: (T, gh, gw, D) patch features.
        max_points, seed, n_neighbors, min_dist, pca_dims: as in :func:`embed_patches`.

    Returns:
        A ``concurrent.futures.Future`` of the :class:`PatchEmbedding` (method ``"umap"``).
    """
    import time

    feats = torch.as_tensor(
        np.asarray(features) if not isinstance(features, torch.Tensor) else features
    )
    if feats.ndim != 4:
        raise ValueError(
            f"embed_patches_in_worker: features must be (T, gh, gw, D), got {tuple(feats.shape)}"
        )
    T, gh, gw, _ = feats.shape
    index = sample_patches(T, (gh, gw), max_points, seed)
    x = feats[index[:, 0], index[:, 1], index[:, 2]].float().numpy()  # (n, D)
    kwargs: dict[str, Any] = {
        "n_neighbors": n_neighbors,
        "min_dist": min_dist,
        "seed": seed,
        "pca_dims": pca_dims,
    }
    result: Future = Future()
    start = time.perf_counter()

    def finish(done: Future) -> None:
        global _umap_runs
        try:
            coords = done.result()
        except Exception as err:
            result.set_exception(err)
            return
        _umap_runs += 1
        result.set_result(
            PatchEmbedding(
                coords=np.asarray(coords, dtype=np.float32),
                index=index,
                grid=(int(gh), int(gw)),
                num_frames=int(T),
                method="umap",
                seconds=time.perf_counter() - start,
            )
        )

    try:
        inner = _umap_worker().submit(umap_2d, x, **kwargs)
    except Exception:  # no subprocess here: a thread of this process
        inner = Future()

        def run() -> None:
            try:
                inner.set_result(umap_2d(x, **kwargs))
            except Exception as err:
                inner.set_exception(err)

        threading.Thread(target=run, name="labkit-umap", daemon=True).start()
    inner.add_done_callback(finish)
    return result
