"""Semi-supervised video object segmentation by label propagation (DINO's DAVIS protocol).

Given the first frame's labels, each later frame's patches take a weighted vote of the labels of
the most similar patches in a context of earlier frames:

1. The first frame's labels are sampled at the patch grid (nearest, PIL's resize in DINO) and
   one-hot encoded; later context frames carry the *soft* patch-level label distributions that
   were predicted for them.
2. Context = the first frame + the ``n_last`` most recent frames (a queue; 7 by default).
3. Patch features are L2-normalised; the affinity of target patch ``q`` to context patch ``c`` is
   ``exp(<f_q, f_c> / temperature)``, but only for context patches within ``radius`` patches of
   ``q`` in both grid directions (a square window, DINO's ``restrict_neighborhood``; other
   patches get affinity 0).
4. For each target patch only the ``topk`` largest affinities over the whole context (all context
   frames together) are kept, ties at the k-th value included; they are normalised to sum to 1.
5. The target's soft labels are the affinity-weighted sum of the context's soft labels.
6. For the output the soft labels are upsampled bilinearly by the patch size, each label channel
   is min-max normalised over the frame (``norm_mask``), arg-maxed, and resized to the output size
   by nearest neighbour (PIL's, for ``alignment="resize"``). The first frame's output is its given
   labels.

Differences from ``facebookresearch/dino`` ``eval_video_segmentation.py`` (none changes a result
except through float rounding): the top-k selection compares similarities rather than their
exponentials, and the weights are a max-shifted softmax over the kept entries (no overflow at small
temperatures); out-of-window patches get similarity -inf instead of affinity 0; target patches are
processed in chunks (bounded memory); a label channel that is constant and positive over the frame
(DINO divides 0 by 0 and the NaN channel wins the arg-max) wins the arg-max here too, explicitly.
``n_last = 0`` means the first frame only (``queue.Queue(0)`` in DINO is unbounded). The tests
compare against a literal re-implementation of DINO's loop.

Notation::

    T   frames               H, W   output (label map) size
    gh, gw  patch grid       P = gh * gw patches per frame
    D   feature channels     K   labels (0 background, 1..K-1 objects)
    C   context frames (1 + at most n_last)

References:
    Jabri et al., "Space-Time Correspondence as a Contrastive Random Walk", NeurIPS 2020 (the
    protocol); Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV
    2021 (``eval_video_segmentation.py``, the defaults used here).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from labkit.geometry import Alignment, frame_to_grid, grid_to_frame, resize_nearest

__all__ = [
    "PropagatedFrame",
    "LabelPropagator",
    "propagation_step",
    "propagate_soft_labels",
    "labels_from_soft",
    "iter_propagate_labels",
    "propagate_labels",
]

FeatureSource = torch.Tensor | np.ndarray | Iterable[torch.Tensor] | Callable[[int], torch.Tensor]


class PropagatedFrame(NamedTuple):
    """One propagated frame."""

    soft: torch.Tensor  # (K, gh, gw) float32 label distribution per patch (sums to 1 over K)
    labels: torch.Tensor  # (H, W) uint8 labels in [0, K)


@functools.lru_cache(maxsize=4)
def _window_mask(gh: int, gw: int, radius: int, device: torch.device) -> torch.Tensor:
    """``(P, P)`` bool: context patch ``c`` is within ``radius`` of target patch ``q`` in both grid
    directions (a square window, DINO's ``restrict_neighborhood``)."""
    ys = torch.arange(gh, device=device).repeat_interleave(gw)  # (P,) row of each patch
    xs = torch.arange(gw, device=device).repeat(gh)  # (P,) column of each patch
    near_y = (ys[:, None] - ys[None, :]).abs() <= radius
    return near_y & ((xs[:, None] - xs[None, :]).abs() <= radius)


def _window(
    grid: tuple[int, int], start: int, stop: int, radius: int | None, device
) -> torch.Tensor | None:
    """``(stop - start, P)`` rows of the window mask, or ``None`` when nothing is excluded."""
    if radius is None or radius <= 0 or radius >= max(grid) - 1:
        return None
    return _window_mask(grid[0], grid[1], int(radius), torch.device(device))[start:stop]


def propagation_step(
    target: torch.Tensor,
    context_features: torch.Tensor,
    context_labels: torch.Tensor,
    *,
    grid: tuple[int, int],
    topk: int = 5,
    temperature: float = 0.1,
    radius: int | None = 12,
    max_elements: int = 2**24,
) -> torch.Tensor:
    """Soft labels of one frame from its context (the inner step of :func:`propagate_labels`).

    Vectorised over the target's patches (in chunks of at most ``max_elements`` affinities).

    Args:
        target: ``(P, D)`` features of the target frame's patches (row-major over the grid).
        context_features: ``(C, P, D)`` features of the context frames.
        context_labels: ``(C, P, K)`` soft labels of the context patches (rows sum to 1).
        grid: ``(gh, gw)`` with ``gh * gw == P``.
        topk: Number of context patches (over all context frames) that vote, ties included.
        temperature: Softmax temperature of the affinities.
        radius: Neighbourhood radius in patches (square window); ``None`` or ``0`` disables it
            (as ``--size_mask_neighborhood 0`` in DINO).
        max_elements: Affinities computed at once (memory bound).

    Returns:
        ``(P, K)`` float32 soft labels on the target's device, rows summing to 1.
    """
    if target.ndim != 2 or context_features.ndim != 3 or context_labels.ndim != 3:
        raise ValueError(
            "propagation_step: expected target (P, D), context_features (C, P, D), context_labels "
            f"(C, P, K); got {tuple(target.shape)}, {tuple(context_features.shape)}, "
            f"{tuple(context_labels.shape)}"
        )
    P, D = target.shape
    C = context_features.shape[0]
    if context_features.shape[1:] != (P, D) or context_labels.shape[:2] != (C, P):
        raise ValueError(
            "propagation_step: shapes disagree: target "
            f"{tuple(target.shape)}, context_features {tuple(context_features.shape)}, "
            f"context_labels {tuple(context_labels.shape)}"
        )
    if grid[0] * grid[1] != P:
        raise ValueError(f"propagation_step: grid {grid} does not have {P} patches")
    if topk < 1 or temperature <= 0:
        raise ValueError(
            f"propagation_step: need topk >= 1 and temperature > 0, got {topk}, {temperature}"
        )
    device = target.device
    q = F.normalize(target.float(), dim=-1)  # (P, D)
    ctx = F.normalize(context_features.to(device).float(), dim=-1)  # (C, P, D)
    labels = context_labels.to(device).float().reshape(C * P, -1)  # (C*P, K)
    k = min(topk, C * P)
    out = torch.empty(P, labels.shape[1], dtype=torch.float32, device=device)
    chunk = max(1, max_elements // (C * P))
    for start in range(0, P, chunk):
        rows = torch.arange(start, min(start + chunk, P), device=device)
        sim = torch.einsum("qd,cpd->qcp", q[rows], ctx)  # (n, C, P) cosine similarities
        window = _window(grid, start, start + len(rows), radius, device)  # (n, P) or None
        if window is not None:
            sim.masked_fill_(~window[:, None, :], float("-inf"))
        sim = sim.reshape(len(rows), C * P)  # (n, C*P)
        # one more than k: if the (k+1)-th value is below the k-th there are no extra ties and the
        # weights are a softmax over the top k; otherwise every entry tied with the k-th is kept
        top, top_idx = sim.topk(min(k + 1, C * P), dim=1)  # (n, k[+1]), sorted, descending
        kth = top[:, k - 1 : k]  # (n, 1) k-th largest similarity
        simple = torch.isfinite(kth[:, 0])
        if top.shape[1] > k:
            simple &= top[:, k] < top[:, k - 1]
        weight = torch.softmax(top[:, :k] / temperature, dim=1)  # (n, k)
        out[rows] = torch.einsum("qk,qkl->ql", weight, labels[top_idx[:, :k]])  # (n, K)
        if not bool(simple.all()):  # ties at the k-th value (all kept), or fewer than k in range
            hard = torch.nonzero(~simple).flatten()
            s_h = sim[hard]  # (m, C*P)
            keep = (s_h >= kth[hard]) & torch.isfinite(s_h)
            w = torch.exp((s_h - top[hard, :1]) / temperature) * keep
            out[rows[hard]] = (w / w.sum(dim=1, keepdim=True)) @ labels  # (m, K)
    return out


def _first_argmax(x: torch.Tensor) -> torch.Tensor:
    """``argmax`` over dim 0 (first maximum on ties), as a loop over the few channels: a reduction
    over the outer dimension of a ``(K, H, W)`` tensor is slow on CPU."""
    best = x[0].clone()
    index = torch.zeros(x.shape[1:], dtype=torch.long, device=x.device)
    for c in range(1, x.shape[0]):
        better = x[c] > best
        index[better] = c
        best = torch.where(better, x[c], best)
    return index


def labels_from_soft(
    soft: torch.Tensor,
    *,
    patch_size: int,
    out_size: tuple[int, int],
    alignment: Alignment = "resize",
) -> torch.Tensor:
    """Hard labels at frame resolution from patch-level soft labels, as DINO does.

    Bilinear upsampling by ``patch_size`` (``align_corners=False``), min-max normalisation of each
    label channel over the frame (channels whose maximum is not positive are left as they are; a
    constant positive channel wins), arg-max over labels (first on ties), then nearest resizing to
    ``out_size`` (``"resize"``: PIL's; ``"crop"``: the upsampled map covers the top-left corner
    and the rest repeats the edge).

    Args:
        soft: ``(K, gh, gw)`` label distribution per patch.
        patch_size: Upsampling factor ``p``.
        out_size: ``(H, W)``.
        alignment: ``"resize"`` (DINO) or ``"crop"``; see :mod:`labkit.eval.metrics`.

    Returns:
        ``(H, W)`` uint8 labels on ``soft``'s device.
    """
    if soft.ndim != 3:
        raise ValueError(
            f"labels_from_soft: soft must be (K, gh, gw), got shape {tuple(soft.shape)}"
        )
    if patch_size < 1:
        raise ValueError(f"labels_from_soft: patch_size must be >= 1, got {patch_size}")
    up = F.interpolate(
        soft[None].float(),
        scale_factor=patch_size,
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )[0]  # (K, gh*p, gw*p)
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    normed = (up - lo) / torch.where(span > 0, span, torch.ones_like(span))
    constant = torch.full_like(up, float("inf"))  # 0/0 in DINO: the NaN channel wins the arg-max
    normed = torch.where(span > 0, normed, constant)
    normed = torch.where(hi > 0, normed, up)
    labels = _first_argmax(normed).to(torch.uint8)  # (gh*p, gw*p)
    if alignment == "resize":
        return resize_nearest(labels, out_size)
    # "crop": the upsampled map is pixel-aligned at the top-left, the edge repeats beyond
    return grid_to_frame(labels, out_size, patch_size=1, alignment="crop")


def _as_labels(labels: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(labels)) if isinstance(labels, np.ndarray) else labels
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor or array, got {type(labels).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name}: expected (H, W) labels, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        t = t.long()
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name}: labels must be integers, got {t.dtype}")
    t = t.long()
    if t.numel() == 0 or int(t.min()) < 0:
        raise ValueError(f"{name}: labels must be non-negative")
    if int(t.max()) >= 255:
        raise ValueError(
            f"{name}: label {int(t.max())} found; labels must be 0..254 (a binary 0/255 DAVIS 2016 "
            "mask must be mapped to 0/1 first, as labkit.video.load_masks does)"
        )
    return t


def _as_features(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor) or t.ndim != 3:
        shape = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
        raise ValueError(f"{name}: one frame's features must be (gh, gw, D), got {shape}")
    return t


class LabelPropagator:
    """Streaming label propagation: give it the first frame, then one frame's features at a time.

    Holds the context queue (features and soft labels of the first frame and of the ``n_last``
    most recent frames); memory does not grow with the sequence.

    Args:
        first_features: ``(gh, gw, D)`` features of the first frame.
        first_labels: ``(H0, W0)`` integer labels of the first frame (0..254).
        n_last: Recent frames kept as context besides the first frame (DINO: 7).
        topk: Voting context patches per target patch (DINO: 5).
        temperature: Affinity temperature (DINO: 0.1).
        radius: Neighbourhood radius in patches; ``None``/``0`` disables it (DINO: 12).
        patch_size: Patch size ``p`` in pixels (bilinear upsampling factor).
        out_size: Output ``(H, W)``; default ``first_labels``' size.
        alignment: How the grid sits on the frame: ``"resize"`` (DINO, default) or ``"crop"``.
        num_labels: ``K``; default ``first_labels.max() + 1``.
        max_elements: Memory bound of :func:`propagation_step`.
    """

    def __init__(
        self,
        first_features: torch.Tensor | np.ndarray,
        first_labels: torch.Tensor | np.ndarray,
        *,
        n_last: int = 7,
        topk: int = 5,
        temperature: float = 0.1,
        radius: int | None = 12,
        patch_size: int,
        out_size: tuple[int, int] | None = None,
        alignment: Alignment = "resize",
        num_labels: int | None = None,
        max_elements: int = 2**24,
    ) -> None:
        feats = _as_features(first_features, "LabelPropagator: first_features")
        if n_last < 0:
            raise ValueError(f"LabelPropagator: n_last must be >= 0, got {n_last}")
        if topk < 1:
            raise ValueError(f"LabelPropagator: topk must be >= 1, got {topk}")
        if temperature <= 0:
            raise ValueError(f"LabelPropagator: temperature must be > 0, got {temperature}")
        if patch_size < 1:
            raise ValueError(f"LabelPropagator: patch_size must be >= 1, got {patch_size}")
        if alignment not in ("resize", "crop"):
            raise ValueError(
                f"LabelPropagator: alignment must be 'resize' or 'crop', got {alignment!r}"
            )
        self.device = feats.device
        labels = _as_labels(first_labels, "LabelPropagator: first_labels").to(self.device)
        K = int(labels.max()) + 1 if num_labels is None else int(num_labels)
        if K < int(labels.max()) + 1:
            raise ValueError(
                f"LabelPropagator: num_labels={K} but first_labels contains {int(labels.max())}"
            )
        self.num_labels = K
        self.grid = (int(feats.shape[0]), int(feats.shape[1]))
        size = labels.shape if out_size is None else out_size  # labels: (H, W)
        self.out_size = (int(size[0]), int(size[1]))
        self.n_last, self.topk, self.temperature = n_last, topk, temperature
        self.radius, self.patch_size, self.alignment = radius, patch_size, alignment
        self.max_elements = max_elements
        small = frame_to_grid(labels, self.grid, patch_size=patch_size, alignment=alignment)
        P = self.grid[0] * self.grid[1]
        self._first = (
            F.normalize(feats.reshape(P, -1).float(), dim=-1),
            F.one_hot(small.reshape(P), K).float(),  # (P, K)
        )
        # (features (P, D) L2-normalised, soft labels (P, K)) of the most recent frames
        self._recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last)
        first_out = resize_nearest(labels, self.out_size)
        self.first_frame_labels = first_out.to(torch.uint8)  # (H, W) output for frame 0

    def step(self, features: torch.Tensor | np.ndarray) -> PropagatedFrame:
        """Propagate to the next frame and push it into the context.

        Args:
            features: ``(gh, gw, D)`` features of the next frame.

        Returns:
            :class:`PropagatedFrame` ``(soft (K, gh, gw), labels (H, W) uint8)``.
        """
        f = _as_features(features, "LabelPropagator.step: features").to(self.device)
        if tuple(f.shape[:2]) != self.grid or f.shape[2] != self._first[0].shape[1]:
            raise ValueError(
                f"LabelPropagator.step: features of shape {tuple(f.shape)} do not match the first "
                f"frame's {(*self.grid, self._first[0].shape[1])}"
            )
        P = self.grid[0] * self.grid[1]
        target = F.normalize(f.reshape(P, -1).float(), dim=-1)
        context = [self._first, *self._recent]
        soft = propagation_step(
            target,
            torch.stack([c[0] for c in context]),
            torch.stack([c[1] for c in context]),
            grid=self.grid,
            topk=self.topk,
            temperature=self.temperature,
            radius=self.radius,
            max_elements=self.max_elements,
        )  # (P, K)
        self._recent.append((target, soft))
        soft_map = soft.T.reshape(self.num_labels, *self.grid)  # (K, gh, gw)
        labels = labels_from_soft(
            soft_map, patch_size=self.patch_size, out_size=self.out_size, alignment=self.alignment
        )
        return PropagatedFrame(soft_map, labels)


def _frames(features: FeatureSource, num_frames: int | None) -> Iterator[torch.Tensor]:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if isinstance(features, torch.Tensor):
        if features.ndim != 4:
            raise ValueError(
                "propagate_labels: features must be (T, gh, gw, D), got shape "
                f"{tuple(features.shape)}"
            )
        n = features.shape[0] if num_frames is None else min(num_frames, features.shape[0])
        return (features[t] for t in range(n))
    if callable(features):
        if num_frames is None:
            raise ValueError("propagate_labels: num_frames is required when features is a callable")
        return (features(t) for t in range(num_frames))
    it = iter(features)
    if num_frames is None:
        return it
    return (f for _, f in zip(range(num_frames), it))


def propagate_soft_labels(
    features: torch.Tensor,
    first_soft: torch.Tensor,
    *,
    n_last: int = 7,
    topk: int = 5,
    temperature: float = 0.1,
    radius: int | None = 12,
    max_elements: int = 2**24,
) -> torch.Tensor:
    """Soft labels in, soft labels out: the propagation loop at patch level, without any resizing.

    The same context rule as :class:`LabelPropagator` (the first frame plus the ``n_last`` most
    recent frames with their predicted soft labels, each step :func:`propagation_step`), but the
    first frame's labels are a given ``(gh, gw, K)`` distribution per patch instead of an integer
    mask, and the output stays at the patch grid (no upsampling, no arg-max). TimeTuning's feature
    forwarder (:func:`labkit.timetuning.forward_assignments`) carries Sinkhorn cluster assignments
    through a clip with it.

    The output is linear in ``first_soft`` for fixed features. Autograd flows through it (to
    ``first_soft`` and ``features``) where it is enabled; the choice of the top-k neighbours is
    piecewise constant. Wrap the call in ``torch.no_grad()`` to use the result as a target.

    Args:
        features: ``(T, gh, gw, D)`` patch features of the frames, frame 0 first (any float dtype;
            computed in float32 on ``features``' device).
        first_soft: ``(gh, gw, K)`` label distribution of frame 0's patches (non-negative; rows
            summing to 1 give rows summing to 1).
        n_last: Recent frames in the context besides the first (DINO: 7; ``0``: the first only).
        topk: Voting context patches per target patch, ties included (DINO: 5).
        temperature: Affinity temperature (DINO: 0.1).
        radius: Neighbourhood radius in patches (square window); ``None``/``0`` disables it.
        max_elements: Memory bound of :func:`propagation_step`.

    Returns:
        ``(T, gh, gw, K)`` float32 soft labels on ``features``' device; frame 0 is ``first_soft``.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        shape = tuple(features.shape) if hasattr(features, "shape") else type(features).__name__
        raise ValueError(f"propagate_soft_labels: features must be (T, gh, gw, D), got {shape}")
    if not isinstance(first_soft, torch.Tensor) or first_soft.ndim != 3:
        shape = (
            tuple(first_soft.shape) if hasattr(first_soft, "shape") else type(first_soft).__name__
        )
        raise ValueError(f"propagate_soft_labels: first_soft must be (gh, gw, K), got {shape}")
    T, gh, gw, _ = features.shape
    if T < 1 or tuple(first_soft.shape[:2]) != (gh, gw) or first_soft.shape[2] < 1:
        raise ValueError(
            f"propagate_soft_labels: features {tuple(features.shape)} and first_soft "
            f"{tuple(first_soft.shape)} must share the grid (gh, gw), with T >= 1 and K >= 1"
        )
    if n_last < 0:
        raise ValueError(f"propagate_soft_labels: n_last must be >= 0, got {n_last}")
    P = gh * gw
    flat = features.reshape(T, P, -1)  # (T, P, D)
    first = (flat[0], first_soft.to(features.device).float().reshape(P, -1))  # (P, D), (P, K)
    recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last)
    out = [first[1]]
    for t in range(1, T):
        context = [first, *recent]
        soft = propagation_step(
            flat[t],
            torch.stack([c[0] for c in context]),  # (C, P, D)
            torch.stack([c[1] for c in context]),  # (C, P, K)
            grid=(gh, gw),
            topk=topk,
            temperature=temperature,
            radius=radius,
            max_elements=max_elements,
        )  # (P, K)
        if n_last:
            recent.append((flat[t], soft))
        out.append(soft)
    return torch.stack(out).reshape(T, gh, gw, -1)  # (T, gh, gw, K)


def iter_propagate_labels(
    features: FeatureSource,
    first_labels: torch.Tensor | np.ndarray,
    *,
    num_frames: int | None = None,
    n_last: int = 7,
    topk: int = 5,
    temperature: float = 0.1,
    radius: int | None = 12,
    patch_size: int,
    out_size: tuple[int, int] | None = None,
    alignment: Alignment = "resize",
    num_labels: int | None = None,
) -> Iterator[torch.Tensor]:
    """Like :func:`propagate_labels` but yields one ``(H, W)`` uint8 label map per frame.

    Frame 0 yields ``first_labels`` (resized to ``out_size`` if needed). Features are pulled one
    frame at a time, so a runner can extract, propagate, score and drop each frame in turn.
    """
    frames = _frames(features, num_frames)
    try:
        first = next(frames)
    except StopIteration:
        raise ValueError("propagate_labels: no frames given") from None
    prop = LabelPropagator(
        first,
        first_labels,
        n_last=n_last,
        topk=topk,
        temperature=temperature,
        radius=radius,
        patch_size=patch_size,
        out_size=out_size,
        alignment=alignment,
        num_labels=num_labels,
    )
    yield prop.first_frame_labels
    for f in frames:
        yield prop.step(f).labels


def propagate_labels(
    features: FeatureSource,
    first_labels: torch.Tensor | np.ndarray,
    *,
    num_frames: int | None = None,
    n_last: int = 7,
    topk: int = 5,
    temperature: float = 0.1,
    radius: int | None = 12,
    patch_size: int,
    out_size: tuple[int, int] | None = None,
    alignment: Alignment = "resize",
    num_labels: int | None = None,
) -> torch.Tensor:
    """Propagate the first frame's labels through a sequence (DINO's DAVIS protocol).

    Args:
        features: Patch features per frame: a ``(T, gh, gw, D)`` tensor, an iterable of
            ``(gh, gw, D)`` tensors, or a callable ``t -> (gh, gw, D)`` (then ``num_frames`` is
            required). Any float dtype; computation in float32 on the features' device.
        first_labels: ``(H0, W0)`` labels of frame 0 (0 background, 1..K-1 objects; DAVIS 2017
            palette indices or DAVIS 2016 masks mapped to 0/1).
        num_frames: Number of frames to take (all if ``None``; required for a callable).
        n_last: Recent frames in the context besides the first (DINO: 7).
        topk: Voting context patches per target patch (DINO: 5).
        temperature: Affinity temperature (DINO: 0.1).
        radius: Neighbourhood radius in patches (DINO: 12); ``None``/``0`` disables it.
        patch_size: Patch size ``p`` (upsampling factor of the soft labels).
        out_size: Output ``(H, W)``; default ``first_labels``' size.
        alignment: ``"resize"`` (the grid spans the frame, DINO) or ``"crop"`` (the grid covers
            the top-left ``gh*p x gw*p`` pixels, as ``labkit.models.prepare_images``).
        num_labels: ``K``; default ``first_labels.max() + 1``.

    Returns:
        ``(T, H, W)`` uint8 labels in ``[0, K)`` on the features' device; frame 0 is
        ``first_labels``.
    """
    out = list(
        iter_propagate_labels(
            features,
            first_labels,
            num_frames=num_frames,
            n_last=n_last,
            topk=topk,
            temperature=temperature,
            radius=radius,
            patch_size=patch_size,
            out_size=out_size,
            alignment=alignment,
            num_labels=num_labels,
        )
    )
    return torch.stack(out)
