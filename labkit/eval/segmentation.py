"""Unsupervised segmentation scores: cluster-to-class matching, mIoU, attention/object masks.

Two families:

- **Clusters vs classes** (TimeTuning's protocol, ``SMSD75/Timetuning`` ``metrics.py``
  ``PredsmIoU``): predictions are cluster ids without meaning, so they are first mapped to classes,
  either one-to-one by the Hungarian algorithm on the IoU matrix (clusters left unmatched, when
  there are more clusters than classes, go to the background class 0), or many-to-one
  (overclustering: each cluster goes to the class it overlaps most, by precision
  ``|cluster & class| / |cluster|``, or by IoU). Matching and mIoU use only the classes present in
  the ground truth; mIoU is the mean IoU over those classes, background included. Everything is
  computed from a confusion matrix accumulated with ``bincount``, so a dataset is scored by
  streaming frames into a :class:`ConfusionAccumulator`; pixels labelled ``ignore_index`` (255)
  are left out. Protocols: per frame (match and score each frame, average over frames), per clip
  (one matching per clip), over the dataset (one matching for everything; stream into one
  accumulator).
- **Masks vs the foreground** (DINO's attention maps, DoRA's tracked object maps): each head's
  (or object's) map is thresholded to keep a fraction of its mass and scored by J against the
  ground-truth foreground (labels > 0); reported: each head's mean J, the best head, the mean over
  heads, the head-average map, and how stable the best head is over time.

Notation::

    n   pixels (or patches) scored        C   ground-truth classes (labels 0..C-1)
    k   clusters (predicted ids 0..k-1)   T   frames
    h   heads (or k objects)              gh, gw  patch grid;  H, W  frame size;  p  patch size

References:
    Salehi et al., "Time Does Tell: Self-Supervised Time-Tuning of Dense Image Representations",
    ICCV 2023 (protocols and matching); Ziegler & Asano, "Self-Supervised Learning of Object Parts
    for Semantic Segmentation", CVPR 2022 (overclustering, many-to-one); Caron et al., ICCV 2021
    (attention masks keeping 60% of the mass).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from labkit.attention import mass_threshold
from labkit.clustering import kmeans_segments
from labkit.eval.metrics import Alignment, grid_to_frame, jaccard
from labkit.eval.patchgrid import mask_statistics

__all__ = [
    "SegmentationScore",
    "ClusterScores",
    "ConfusionAccumulator",
    "confusion_matrix",
    "hungarian_match",
    "many_to_one_match",
    "iou_from_mapping",
    "hungarian_miou",
    "overcluster_miou",
    "cluster_scores",
    "kmeans_miou",
    "mask_scores",
    "attention_mask_scores",
    "object_mask_scores",
]

Matching = Literal["hungarian", "many_to_one"]


class SegmentationScore(NamedTuple):
    """Result of a cluster-to-class matching (unpacks as ``miou, per_class_iou, mapping``)."""

    miou: float  # mean IoU over the classes present in the ground truth
    per_class_iou: torch.Tensor  # (C,) float64; NaN for classes absent from the ground truth
    # (k,) int64 class of each cluster; -1: unmatched (Hungarian: merged into `unmatched_class`
    # when scoring) or never predicted
    mapping: torch.Tensor


def _as_long(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor or array, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise ValueError(f"{name}: expected integer labels, got {x.dtype}")
    return x.long()


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    num_classes: int,
    num_clusters: int | None = None,
    *,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Counts of (ground-truth class, predicted cluster) pairs.

    Args:
        pred: Cluster ids in ``[0, k)``, any shape.
        gt: Class labels in ``[0, C)`` or ``ignore_index``, same shape as ``pred``.
        num_classes: ``C``.
        num_clusters: ``k``; default ``num_classes``.
        ignore_index: Ground-truth label left out (``None``: none).

    Returns:
        ``(C, k)`` int64 tensor on ``pred``'s device; entry ``[c, j]`` counts pixels of class ``c``
        predicted as cluster ``j``.
    """
    k = num_classes if num_clusters is None else num_clusters
    p = _as_long(pred, "confusion_matrix: pred").reshape(-1)
    g = _as_long(gt, "confusion_matrix: gt").to(p.device).reshape(-1)
    if p.shape != g.shape:
        raise ValueError(
            f"confusion_matrix: pred and gt must have the same number of elements, got "
            f"{p.numel()} and {g.numel()}"
        )
    if num_classes < 1 or k < 1:
        raise ValueError(
            f"confusion_matrix: need num_classes >= 1 and num_clusters >= 1, got {num_classes}, {k}"
        )
    if ignore_index is not None:
        valid = g != ignore_index
        p, g = p[valid], g[valid]
    if p.numel():
        if int(g.min()) < 0 or int(g.max()) >= num_classes:
            raise ValueError(
                f"confusion_matrix: ground-truth labels must be in [0, {num_classes}) or "
                f"{ignore_index}, found {int(g.min())}..{int(g.max())}"
            )
        if int(p.min()) < 0 or int(p.max()) >= k:
            raise ValueError(
                f"confusion_matrix: cluster ids must be in [0, {k}), found "
                f"{int(p.min())}..{int(p.max())}"
            )
    return torch.bincount(g * k + p, minlength=num_classes * k).reshape(num_classes, k)


def _iou_matrix(conf: torch.Tensor) -> np.ndarray:
    """``(C, k)`` float64 IoU of class ``c`` with cluster ``j``."""
    c = conf.detach().cpu().double().numpy()
    union = c.sum(axis=1, keepdims=True) + c.sum(axis=0, keepdims=True) - c
    return np.divide(c, union, out=np.zeros_like(c), where=union > 0)


def hungarian_match(confusion: torch.Tensor) -> torch.Tensor:
    """One-to-one matching of clusters to classes maximising the summed IoU (Hungarian).

    Only classes present in the ground truth and clusters that were predicted take part; with
    more clusters than classes some clusters stay unmatched, with fewer some classes do.

    Args:
        confusion: ``(C, k)`` counts from :func:`confusion_matrix`.

    Returns:
        ``(k,)`` int64 class of each cluster, ``-1`` for unmatched clusters (on CPU).
    """
    from scipy.optimize import linear_sum_assignment

    conf = confusion.detach().cpu()
    iou = _iou_matrix(conf)
    classes = np.flatnonzero(conf.sum(dim=1).numpy() > 0)
    clusters = np.flatnonzero(conf.sum(dim=0).numpy() > 0)
    mapping = torch.full((conf.shape[1],), -1, dtype=torch.long)
    if classes.size and clusters.size:
        rows, cols = linear_sum_assignment(iou[np.ix_(classes, clusters)], maximize=True)
        mapping[torch.from_numpy(clusters[cols])] = torch.from_numpy(classes[rows])
    return mapping


def many_to_one_match(
    confusion: torch.Tensor, criterion: Literal["precision", "iou"] = "precision"
) -> torch.Tensor:
    """Many-to-one matching: each predicted cluster goes to its best class (overclustering).

    Args:
        confusion: ``(C, k)`` counts.
        criterion: ``"precision"`` (``|cluster & class| / |cluster|``: the class holding most of
            the cluster's pixels) or ``"iou"``. Only classes present in the ground truth compete;
            ties go to the lower class id.

    Returns:
        ``(k,)`` int64 class per cluster; ``-1`` for clusters that were never predicted.
    """
    if criterion not in ("precision", "iou"):
        raise ValueError(
            f"many_to_one_match: criterion must be 'precision' or 'iou', got {criterion!r}"
        )
    conf = confusion.detach().cpu()
    c = conf.double().numpy()
    if criterion == "precision":
        size = c.sum(axis=0, keepdims=True)
        score = np.divide(c, size, out=np.zeros_like(c), where=size > 0)
    else:
        score = _iou_matrix(conf)
    present = c.sum(axis=1) > 0
    score = np.where(present[:, None], score, -np.inf)
    best = np.argmax(score, axis=0)  # first maximum: lowest class id on ties
    mapping = torch.from_numpy(best.astype(np.int64))
    mapping[torch.from_numpy(c.sum(axis=0) == 0)] = -1
    return mapping


def iou_from_mapping(
    confusion: torch.Tensor, mapping: torch.Tensor, *, unmatched_class: int | None = 0
) -> torch.Tensor:
    """Per-class IoU after relabelling each cluster with its class.

    Args:
        confusion: ``(C, k)`` counts.
        mapping: ``(k,)`` class per cluster, ``-1`` for none.
        unmatched_class: Class given to clusters mapped to ``-1`` (TimeTuning merges them into
            the background, 0); ``None`` leaves their pixels unpredicted (misses only).

    Returns:
        ``(C,)`` float64 IoU; NaN for classes absent from the ground truth.
    """
    conf = confusion.detach().cpu().double()
    C, k = conf.shape
    m = mapping.detach().cpu().long().clone()
    if m.shape != (k,):
        raise ValueError(f"iou_from_mapping: mapping must have shape ({k},), got {tuple(m.shape)}")
    if unmatched_class is not None:
        m[m < 0] = unmatched_class
    assigned = m >= 0
    merged = torch.zeros(C, C, dtype=torch.float64)  # (C true, C predicted)
    merged.index_add_(1, m[assigned], conf[:, assigned])
    tp = merged.diagonal()
    gt_total = conf.sum(dim=1)
    pred_total = merged.sum(dim=0)
    union = gt_total + pred_total - tp
    iou = tp / union.clamp(min=1e-12)
    return torch.where(gt_total > 0, iou, torch.full_like(iou, float("nan")))


def _score(per_class: torch.Tensor, mapping: torch.Tensor) -> SegmentationScore:
    present = ~torch.isnan(per_class)
    miou = float(per_class[present].mean()) if bool(present.any()) else float("nan")
    return SegmentationScore(miou, per_class, mapping)


class ConfusionAccumulator:
    """Streaming confusion matrix: ``update`` with batches of frames, then match and score.

    Args:
        num_classes: ``C``.
        num_clusters: ``k``; default ``num_classes``.
        ignore_index: Ground-truth label left out (255, DAVIS/VOC "void").
        device: Where the counts live (that of the updates is fine too).
    """

    def __init__(
        self,
        num_classes: int,
        num_clusters: int | None = None,
        *,
        ignore_index: int | None = 255,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_classes = num_classes
        self.num_clusters = num_classes if num_clusters is None else num_clusters
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, self.num_clusters, dtype=torch.long, device=device)

    def update(self, pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        """Add pixels: ``pred`` cluster ids and ``gt`` labels of the same shape."""
        conf = confusion_matrix(
            pred, gt, self.num_classes, self.num_clusters, ignore_index=self.ignore_index
        )
        self.matrix += conf.to(self.matrix.device)

    def reset(self) -> None:
        self.matrix.zero_()

    def hungarian(self, *, unmatched_class: int | None = 0) -> SegmentationScore:
        """One-to-one (Hungarian) matching and mIoU of everything accumulated."""
        mapping = hungarian_match(self.matrix)
        return _score(
            iou_from_mapping(self.matrix, mapping, unmatched_class=unmatched_class), mapping
        )

    def many_to_one(
        self, criterion: Literal["precision", "iou"] = "precision"
    ) -> SegmentationScore:
        """Many-to-one matching and mIoU of everything accumulated."""
        mapping = many_to_one_match(self.matrix, criterion)
        return _score(iou_from_mapping(self.matrix, mapping, unmatched_class=None), mapping)


def hungarian_miou(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    num_classes: int,
    *,
    num_clusters: int | None = None,
    ignore_index: int | None = 255,
    unmatched_class: int | None = 0,
) -> SegmentationScore:
    """mIoU after one-to-one Hungarian matching of clusters to classes (TimeTuning).

    Args:
        pred: ``(n,)`` (or any shape) cluster ids in ``[0, k)``.
        gt: Labels in ``[0, C)`` or ``ignore_index``, same shape.
        num_classes: ``C``.
        num_clusters: ``k``; default ``num_classes``.
        ignore_index: Ground-truth label left out.
        unmatched_class: Class of the clusters left unmatched (0, background, as TimeTuning;
            ``None``: they predict nothing).

    Returns:
        :class:`SegmentationScore` ``(miou, per_class_iou (C,), mapping (k,))``; mIoU averages
        the classes present in ``gt``.
    """
    conf = confusion_matrix(pred, gt, num_classes, num_clusters, ignore_index=ignore_index)
    mapping = hungarian_match(conf)
    return _score(iou_from_mapping(conf, mapping, unmatched_class=unmatched_class), mapping)


def overcluster_miou(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    num_classes: int,
    *,
    num_clusters: int | None = None,
    ignore_index: int | None = 255,
    criterion: Literal["precision", "iou"] = "precision",
) -> SegmentationScore:
    """mIoU after many-to-one matching (overclustering: ``k`` larger than ``C``).

    Each cluster is relabelled with the class it overlaps most, by precision by default (several
    clusters can merge into one class; a class can get none).

    Returns:
        :class:`SegmentationScore` ``(miou, per_class_iou (C,), mapping (k,))``.
    """
    conf = confusion_matrix(pred, gt, num_classes, num_clusters, ignore_index=ignore_index)
    mapping = many_to_one_match(conf, criterion)
    return _score(iou_from_mapping(conf, mapping, unmatched_class=None), mapping)


class ClusterScores(NamedTuple):
    """Result of :func:`cluster_scores` / :func:`kmeans_miou`."""

    miou: float  # frame protocol: mean over frames; clip protocol: the clip's mIoU
    per_frame: torch.Tensor | None  # (T,) float64 mIoU per frame (frame protocol), else None
    scores: list[SegmentationScore]  # one per frame (frame protocol) or one (clip protocol)


def cluster_scores(
    labels: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    *,
    protocol: Literal["frame", "clip"] = "frame",
    matching: Matching = "hungarian",
    num_classes: int | None = None,
    num_clusters: int | None = None,
    patch_size: int | None = None,
    alignment: Alignment = "crop",
    ignore_index: int | None = 255,
    criterion: Literal["precision", "iou"] = "precision",
) -> ClusterScores:
    """Score cluster maps of a clip against ground-truth labels, per frame or per clip.

    Args:
        labels: ``(T, gh, gw)`` cluster ids at the patch grid (mapped to the frame by nearest
            neighbour with ``patch_size``/``alignment``) or ``(T, H, W)`` at frame resolution.
        gt: ``(T, H, W)`` labels (classes, or object ids of a video).
        protocol: ``"frame"`` (match and score each frame, mean over frames) or ``"clip"`` (one
            matching for the clip). For the dataset protocol, stream frames into a
            :class:`ConfusionAccumulator`.
        matching: ``"hungarian"`` or ``"many_to_one"``.
        num_classes: ``C``; default ``max(gt) + 1`` (ignoring ``ignore_index``).
        num_clusters: ``k``; default ``max(labels) + 1``.
        patch_size: Needed when ``labels`` is at the patch grid and ``alignment="crop"``.
        alignment: Grid-to-frame alignment, see :mod:`labkit.eval.metrics`.
        ignore_index: Ground-truth label left out.
        criterion: Many-to-one criterion.

    Returns:
        :class:`ClusterScores`.
    """
    if protocol not in ("frame", "clip"):
        raise ValueError(f"cluster_scores: protocol must be 'frame' or 'clip', got {protocol!r}")
    if matching not in ("hungarian", "many_to_one"):
        raise ValueError(
            f"cluster_scores: matching must be 'hungarian' or 'many_to_one', got {matching!r}"
        )
    lab = _as_long(labels, "cluster_scores: labels")
    g = _as_long(gt, "cluster_scores: gt").to(lab.device)
    if lab.ndim != 3 or g.ndim != 3 or lab.shape[0] != g.shape[0]:
        raise ValueError(
            f"cluster_scores: labels (T, gh, gw) and gt (T, H, W) expected, got {tuple(lab.shape)} "
            f"and {tuple(g.shape)}"
        )
    if lab.shape[1:] != g.shape[1:]:
        if alignment == "crop" and patch_size is None:
            raise ValueError("cluster_scores: patch_size is required to map grid labels to frames")
        lab = grid_to_frame(
            lab, (g.shape[1], g.shape[2]), patch_size=patch_size or 1, alignment=alignment
        )
    valid = g if ignore_index is None else g[g != ignore_index]
    C = (int(valid.max()) + 1 if valid.numel() else 1) if num_classes is None else num_classes
    k = int(lab.max()) + 1 if num_clusters is None else num_clusters

    def score(p: torch.Tensor, t: torch.Tensor) -> SegmentationScore:
        if matching == "hungarian":
            return hungarian_miou(p, t, C, num_clusters=k, ignore_index=ignore_index)
        return overcluster_miou(
            p, t, C, num_clusters=k, ignore_index=ignore_index, criterion=criterion
        )

    if protocol == "clip":
        s = score(lab, g)
        return ClusterScores(s.miou, None, [s])
    scores = [score(lab[t], g[t]) for t in range(lab.shape[0])]
    per_frame = torch.tensor([s.miou for s in scores], dtype=torch.float64)
    return ClusterScores(float(np.nanmean(per_frame.numpy())), per_frame, scores)


def kmeans_miou(
    features: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    k: int,
    *,
    protocol: Literal["frame", "clip"] = "frame",
    matching: Matching = "hungarian",
    patch_size: int,
    alignment: Alignment = "crop",
    num_classes: int | None = None,
    seed: int = 0,
    normalize: bool = False,
    ignore_index: int | None = 255,
    criterion: Literal["precision", "iou"] = "precision",
) -> ClusterScores:
    """k-means on patch features (per frame or per clip) scored against the ground truth.

    Clusters come from :func:`labkit.clustering.kmeans_segments` (``mode=protocol``), are mapped
    to the frame by nearest neighbour and scored by :func:`cluster_scores`. (TimeTuning clusters
    bilinearly upsampled features at the evaluation resolution; clustering patches and upsampling
    the labels is cheaper and what the rest of labkit does.)

    Args:
        features: ``(T, gh, gw, D)`` patch features.
        gt: ``(T, H, W)`` labels.
        k: Clusters (``k`` > classes for overclustering with ``matching="many_to_one"``).
        protocol: ``"frame"`` or ``"clip"``.
        matching: ``"hungarian"`` or ``"many_to_one"``.
        patch_size, alignment: Grid-to-frame mapping.
        num_classes: ``C``; default ``max(gt) + 1``.
        seed: k-means seed.
        normalize: L2-normalise features before k-means.
        ignore_index, criterion: As in :func:`cluster_scores`.

    Returns:
        :class:`ClusterScores`.
    """

    seg = kmeans_segments(features, k, mode=protocol, seed=seed, normalize=normalize)
    return cluster_scores(
        seg.labels,
        gt,
        protocol=protocol,
        matching=matching,
        num_classes=num_classes,
        num_clusters=k,
        patch_size=patch_size,
        alignment=alignment,
        ignore_index=ignore_index,
        criterion=criterion,
    )


# --------------------------------------------------------------------------------------------
# Attention / object masks against the foreground
# --------------------------------------------------------------------------------------------


def mask_scores(
    masks: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    *,
    patch_size: int,
    alignment: Alignment = "crop",
) -> dict[str, Any]:
    """J of each of ``h`` candidate masks per frame against the foreground, and their stability.

    Args:
        masks: ``(T, h, gh, gw)`` bool masks at the patch grid (or ``(T, h, H, W)``).
        gt: ``(T, H, W)`` labels; foreground is ``gt > 0``.
        patch_size, alignment: Grid-to-frame mapping (nearest).

    Returns:
        dict with
        ``"jaccard"``: ``(T, h)`` float64 J per frame and mask;
        ``"per_head"``: ``(h,)`` mean J over frames;
        ``"best_head"``: int, the mask with the highest mean J;
        ``"best_head_j"``: float, its mean J;
        ``"mean_over_heads"``: float, mean J over masks and frames;
        ``"oracle_j"``: float, mean over frames of the best mask's J in each frame;
        ``"oracle_gap"``: float, ``oracle_j - best_head_j`` (0 when one mask is always best);
        ``"best_per_frame"``: ``(T,)`` int64 best mask per frame (lowest index on ties);
        ``"stability"``: float in ``[0, 1]``, fraction of frames where the sequence's best mask
        is (one of) the frame's best;
        ``"switches"``: int, frames where the per-frame best mask differs from the previous
        frame's.
    """
    m = torch.from_numpy(np.asarray(masks)) if isinstance(masks, np.ndarray) else masks
    g = torch.from_numpy(np.asarray(gt)) if isinstance(gt, np.ndarray) else gt
    if m.ndim != 4 or g.ndim != 3 or m.shape[0] != g.shape[0]:
        raise ValueError(
            "mask_scores: masks (T, h, gh, gw) and gt (T, H, W) expected, got "
            f"{tuple(m.shape)} and {tuple(g.shape)}"
        )
    m = m.bool()
    g = g.to(m.device)
    size = (g.shape[1], g.shape[2])  # (H, W)
    fg = (g > 0)[:, None]  # (T, 1, H, W)
    j = torch.stack(
        [
            jaccard(
                grid_to_frame(m[t], size, patch_size=patch_size, alignment=alignment),
                fg[t].expand(m.shape[1], -1, -1),
            )
            for t in range(m.shape[0])
        ]
    ).cpu()  # (T, h)
    return mask_statistics(j)


def attention_mask_scores(
    attention: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    keep: float = 0.6,
    *,
    patch_size: int,
    alignment: Alignment = "crop",
) -> dict[str, Any]:
    """How well each [CLS] attention head (and the head average) segments the foreground.

    Each head's map is thresholded with :func:`labkit.attention.mass_threshold` (the smallest set
    of patches holding ``keep`` of the map's mass, DINO's visualisation) and scored by J against
    ``gt > 0`` at frame resolution (nearest upsampling, as DINO's masks).

    Args:
        attention: ``(T, h, gh, gw)`` [CLS] attention per frame and head.
        gt: ``(T, H, W)`` ground-truth labels (foreground = ``> 0``).
        keep: Fraction of each map's mass kept (DINO: 0.6).
        patch_size: Patch size ``p``.
        alignment: ``"crop"`` (DINO crops frames to multiples of ``p``; default) or ``"resize"``.

    Returns:
        The dict of :func:`mask_scores` over heads, plus ``"head_average_j"`` (float, mean J of
        the head-averaged map's mask), ``"head_average_jaccard"`` (``(T,)``) and ``"masks"``
        (``(T, h, gh, gw)`` bool, the thresholded heads).
    """

    a = torch.from_numpy(np.asarray(attention)) if isinstance(attention, np.ndarray) else attention
    if a.ndim != 4:
        raise ValueError(
            f"attention_mask_scores: attention must be (T, h, gh, gw), got {tuple(a.shape)}"
        )
    if not 0 < keep <= 1:
        raise ValueError(f"attention_mask_scores: keep must be in (0, 1], got {keep}")
    masks = mass_threshold(a.float(), keep)  # (T, h, gh, gw)
    avg_mask = mass_threshold(a.float().mean(dim=1, keepdim=True), keep)  # (T, 1, gh, gw)
    out = mask_scores(masks, gt, patch_size=patch_size, alignment=alignment)
    avg = mask_scores(avg_mask, gt, patch_size=patch_size, alignment=alignment)
    out["head_average_jaccard"] = avg["jaccard"][:, 0]
    out["head_average_j"] = float(avg["jaccard"].mean())
    out["masks"] = masks
    return out


def object_mask_scores(
    maps: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    keep: float = 0.6,
    *,
    patch_size: int,
    alignment: Alignment = "crop",
) -> dict[str, Any]:
    """Which tracked object (DoRA) covers the foreground, per frame, and how stably.

    Args:
        maps: ``(T, k, gh, gw)`` object maps: float maps are thresholded with
            :func:`labkit.attention.mass_threshold` (``keep``), bool masks are used as they are
            (e.g. ``labkit.tracking.Tracks.masks[b]``).
        gt: ``(T, H, W)`` labels (foreground = ``> 0``).
        keep: Mass fraction kept for float maps.
        patch_size, alignment: Grid-to-frame mapping.

    Returns:
        The dict of :func:`mask_scores`, with objects in place of heads (``"best_head"`` is the
        best object), plus ``"masks"`` (``(T, k, gh, gw)`` bool).
    """
    m = torch.from_numpy(np.asarray(maps)) if isinstance(maps, np.ndarray) else maps
    if m.ndim != 4:
        raise ValueError(f"object_mask_scores: maps must be (T, k, gh, gw), got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if not 0 < keep <= 1:
            raise ValueError(f"object_mask_scores: keep must be in (0, 1], got {keep}")

        m = mass_threshold(m.float(), keep)
    out = mask_scores(m, gt, patch_size=patch_size, alignment=alignment)
    out["masks"] = m
    return out
