"""One sequence through one model: every video score of the evaluation lab, frames streamed.

:func:`evaluate_sequence` reads a DAVIS sequence batch by batch, runs one forward pass per batch
(``labkit.attention.extract``: [CLS] attention, patch tokens, keys, queries of one block) and
scores, as the frames go by: label propagation (J, F per object and frame), attention masks and
DoRA's tracked objects (J per frame and mask), single-object discovery (LOST, TokenCut, DINO's
attention, DoRA: J, CorLoc, stability, :mod:`labkit.eval.discovery`), and k-means segments once
the sequence's tokens are in. :func:`dataset_segmentation` runs the dataset-level k-means over
the tokens every sequence left in a temporary folder. Configuration and the loop over models and
sequences live in :mod:`labkit.eval.runner`.

Resolution, as DINO's DAVIS evaluation: each frame is resized so that its shorter side is
``resolution`` (rounded down to a multiple of the patch size) and its longer side is the aspect-
kept length rounded down to a multiple of ``size_multiple`` (64 in DINO) -- see
:func:`model_input_size`; the patch grid spans the whole resized frame (``alignment="resize"`` in
:mod:`labkit.eval.metrics`) and every score is computed against the masks at their own
resolution. Patch-level predictions are scored pixel-exactly through per-patch label histograms
(:mod:`labkit.eval.patchgrid`).

Notation::

    T  frames    h  heads    k  clusters or tracked objects    D  channels
    gh, gw  patch grid    P = gh * gw    p  patch size    H, W  mask size    K  objects
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from labkit.attention import FeatureKind, extract, image_batches, mass_threshold
from labkit.clustering import kmeans, kmeans_segments
from labkit.discovery import attention_discovery, dora_discovery, lost, tokencut
from labkit.eval.config import EvalConfig
from labkit.eval.datasets import DatasetError, DavisSequence, read_masks
from labkit.eval.discovery import discovery_scores
from labkit.eval.metrics import SequenceScores, davis_frame_scores, resize_nearest
from labkit.eval.patchgrid import (
    confusion_from_histograms,
    foreground_share,
    mask_jaccard,
    mask_precision,
    mask_statistics,
    patch_histogram,
    patch_index_map,
)
from labkit.eval.results import SequenceExamples, SequenceResult
from labkit.eval.segmentation import hungarian_match, iou_from_mapping, many_to_one_match
from labkit.models import patch_size as get_patch_size
from labkit.propagation import LabelPropagator
from labkit.tracking import discover_objects, track_objects
from labkit.video import open_frames

__all__ = ["model_input_size", "evaluate_sequence", "dataset_segmentation"]


def model_input_size(
    size: tuple[int, int], resolution: int, patch_size: int, multiple: int = 64
) -> tuple[int, int]:
    """Frame size fed to the model, DINO's rule (``eval_video_segmentation.read_frame``).

    The shorter side becomes ``resolution`` rounded down to a multiple of ``patch_size``; the
    longer side keeps the aspect ratio and is rounded down to a multiple of ``multiple`` (itself
    first rounded down to a multiple of the patch size, at least one patch).

    Args:
        size: ``(H, W)`` of the frame in the file.
        resolution: Target shorter side.
        patch_size: ``p``.
        multiple: Rounding of the longer side (DINO: 64).

    Returns:
        ``(h, w)``, both multiples of ``p``; e.g. ``(480, 854) -> (480, 832)`` at 480 and
        ``(224, 384)`` at 224 for ``p = 16``.
    """
    H, W = int(size[0]), int(size[1])
    short = max(patch_size, resolution // patch_size * patch_size)
    step = max(patch_size, multiple // patch_size * patch_size)
    long = max(step, int(resolution * max(H, W) / min(H, W)) // step * step)
    return (short, long) if H <= W else (long, short)


# --------------------------------------------------------------------------------------------
# One sequence
# --------------------------------------------------------------------------------------------


Matching = Literal["hungarian", "many_to_one"]
_T = TypeVar("_T")


def _present(value: _T | None, what: str) -> _T:
    """``value``, which the evaluations that asked for it guarantee; ValueError if missing."""
    if value is None:
        raise ValueError(f"evaluate_sequence: {what} missing for the evaluations asked")
    return value


def _example_indices(num_frames: int, count: int) -> list[int]:
    if count == 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, count)})


def _miou(conf: torch.Tensor, matching: Matching) -> float:
    """mIoU over the labels present, after matching clusters to labels (TimeTuning's rules:
    Hungarian leaves extra clusters to the background, many-to-one by precision)."""

    if matching == "hungarian":
        iou = iou_from_mapping(conf, hungarian_match(conf), unmatched_class=0)
    else:
        iou = iou_from_mapping(conf, many_to_one_match(conf), unmatched_class=None)
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if bool(present.any()) else float("nan")


def _segmentation_scores(
    features: torch.Tensor, histograms: torch.Tensor, cfg: EvalConfig
) -> dict[str, float]:
    """k-means per frame and per clip, Hungarian (one cluster per label) and overclustering.

    Args:
        features: ``(T, gh, gw, D)`` patch tokens.
        histograms: ``(T, P, C)`` pixels of each label 0..K under each patch (labels scored).
    """

    T, gh, gw, _ = features.shape
    classes = histograms.shape[-1]
    out = {}
    protocols: tuple[tuple[str, int, Matching], ...] = (
        ("hungarian", classes, "hungarian"),
        ("overcluster", cfg.overclusters, "many_to_one"),
    )
    for name, k, matching in protocols:
        k = min(k, gh * gw)
        for protocol in ("frame", "clip"):
            seg = kmeans_segments(features, k, mode=protocol, seed=cfg.seed, normalize=True)
            ids = seg.labels.reshape(T, gh * gw).to(histograms.device)  # (T, P)
            if protocol == "clip":
                miou = _miou(confusion_from_histograms(histograms, ids, k), matching)
            else:
                per_frame = [
                    _miou(confusion_from_histograms(histograms[t], ids[t], k), matching)
                    for t in range(T)
                ]
                miou = float(np.nanmean(per_frame)) if np.isfinite(per_frame).any() else math.nan
            out[f"{protocol}_{name}"] = miou
    return out


def evaluate_sequence(
    model: torch.nn.Module,
    seq: DavisSequence,
    cfg: EvalConfig,
    *,
    progress: bool = True,
    stash: Path | None = None,
) -> SequenceResult:
    """Run every video evaluation of ``cfg`` on one sequence, streaming its frames.

    Ground truth: masks as :func:`labkit.video.load_masks` reads them (DAVIS 2016 0/255 -> 0/1,
    2017 palette indices), 255 (void) read as background as the official DAVIS code does;
    ``K`` objects = the largest label of the first mask. Per-patch predictions (attention and
    object masks, clusters) are scored pixel-exactly at the masks' resolution through per-patch
    label histograms (:mod:`labkit.eval.patchgrid`).

    Args:
        model: A timm ViT on ``cfg.device`` (:meth:`labkit.eval.specs.ModelSpec.load`).
        seq: A checked sequence (:func:`labkit.eval.datasets.davis_sequences`).
        cfg: The evaluation's parameters.
        progress: A progress bar over the frames.
        stash: Folder where the sequence's patch tokens are written (``<name>.npy``, float16,
            ``(T, gh, gw, D)``) for the dataset-level k-means; ``None``: not written.

    Returns:
        :class:`labkit.eval.results.SequenceResult` (with ``histograms`` for the dataset
        protocol).
    """
    from tqdm.auto import tqdm

    seconds = {"read": 0.0, "model": 0.0, "propagation": 0.0, "scores": 0.0}
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    p = get_patch_size(model)
    T = seq.num_frames if cfg.max_frames == 0 else min(cfg.max_frames, seq.num_frames)
    # (T, H, W) uint8 labels paired with the frames by file name; (T,) which frames have a mask
    masks, annotated_np = read_masks(seq, T)
    annotated = torch.from_numpy(annotated_np)  # frames without a mask are run, not scored
    gt = torch.from_numpy(masks)  # (T, H, W) uint8 on the CPU
    gt = torch.where(gt == 255, 0, gt)  # DAVIS reads 255 (void) as background
    K = int(gt[0].max())
    H, W = seq.size
    size = model_input_size(seq.size, cfg.resolution, p, cfg.size_multiple)
    grid = (size[0] // p, size[1] // p)
    P = grid[0] * grid[1]
    video = open_frames(seq.frames[0].parent, size=size)
    if len(video) != seq.num_frames:
        raise DatasetError(
            f"sequence {seq.name!r}: {len(video)} images in {seq.frames[0].parent} but "
            f"{seq.num_frames} frames were listed; keep only the frames in that folder"
        )
    index_map = patch_index_map(grid, (H, W), patch_size=p, alignment="resize", device=device)
    area = torch.bincount(index_map.reshape(-1), minlength=P)  # (P,) pixels under each patch
    seconds["read"] += time.perf_counter() - t0

    prop_on, attn_on = cfg.runs("propagation"), cfg.runs("attention")
    track_on, seg_on = cfg.runs("tracking"), cfg.runs("segmentation")
    disc_on = cfg.runs("discovery")
    kinds: list[FeatureKind] = []
    if prop_on or seg_on or track_on or disc_on or stash is not None:
        kinds.append("tokens")
    if track_on or disc_on:
        kinds += ["keys", "queries"]
    want_attention = attn_on or track_on or disc_on
    examples_at = _example_indices(T, cfg.example_frames)
    ex_frames, ex_prop = {}, {}

    propagator: LabelPropagator | None = None
    scored, js, fs = [], [], []
    tokens_seq, attn_seq, object_masks, histograms = [], [], [], []
    found: dict[str, list] = {}  # discovery method -> [(masks (n, gh, gw), boxes (n, 4)), ...]
    prototypes = None
    bar = tqdm(total=T, desc=seq.name, unit="frame", leave=False, disable=not progress)
    t0 = time.perf_counter()
    # the frames read, cropped to the patch grid and normalised on the device, batch by batch
    batches = image_batches(model, video, np.arange(T), batch_size=cfg.batch_size, device=device)
    for idx, frames, images in batches:  # (n,), (n, h, w, 3) uint8, (n, 3, h, w)
        seconds["read"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = extract(model, images, cfg.layer, attention=want_attention, kinds=tuple(kinds))
        tokens = out.features.get("tokens")  # (n, gh, gw, D)
        if want_attention:
            attn_seq.append(_present(out.attention, "attention").cpu())  # (n, h, gh, gw)
        if (track_on or disc_on) and prototypes is None:
            # the first batch starts with frame 0: DoRA discovers there
            prototypes = discover_objects(
                _present(out.attention, "attention")[:1],
                out.features["queries"][:1],
                _present(tokens, "tokens")[:1],
                k=cfg.dora_objects,
            ).prototypes  # (1, k, D)
        if track_on:
            tracks = track_objects(
                _present(prototypes, "DoRA prototypes"), out.features["keys"][None]
            )  # (1, n, k, gh, gw)
            object_masks.append(tracks.masks[0].cpu())  # (n, k, gh, gw)
        if disc_on:
            t_disc = time.perf_counter()
            keys = out.features["keys"]  # (n, gh, gw, D)
            for method, res in (
                ("lost", lost(keys)),
                ("tokencut", tokencut(keys)),
                (
                    "attention",
                    attention_discovery(_present(out.attention, "attention"), keep=cfg.keep),
                ),
                ("dora", dora_discovery(keys, prototypes=prototypes)),
            ):
                found.setdefault(method, []).append((res.masks.cpu(), res.boxes.cpu()))
            spent = time.perf_counter() - t_disc
            seconds["discovery"] = seconds.get("discovery", 0.0) + spent
            t0 += spent  # not counted twice: "model" is the forward pass
        if seg_on or stash is not None:
            tokens_seq.append(_present(tokens, "tokens").float().cpu())
        seconds["model"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        for i, t in enumerate(idx.tolist()):
            labels_t = gt[t].to(device)  # (H, W)
            # labels 0..K, and K+1 for any object the first frame does not have
            histograms.append(
                patch_histogram(labels_t.clamp(max=K + 1), index_map, P, K + 2).cpu()
            )  # (P, K+2)
            if t in examples_at:
                ex_frames[t] = frames[i]
            if not prop_on:
                continue
            if t == 0:
                propagator = LabelPropagator(
                    _present(tokens, "tokens")[0],
                    labels_t,
                    n_last=cfg.n_last,
                    topk=cfg.topk,
                    temperature=cfg.temperature,
                    radius=cfg.radius or None,
                    patch_size=p,
                    out_size=(H, W),
                    alignment="resize",
                    num_labels=K + 1,
                )
                labels = propagator.first_frame_labels
            else:
                step = _present(propagator, "label propagator").step
                labels = step(_present(tokens, "tokens")[i]).labels  # (H, W) uint8
            if 0 < t < T - 1 and annotated_np[t]:
                j, f = davis_frame_scores(labels, labels_t, K)
                scored.append(t)
                js.append(j)
                fs.append(f)
            if t in examples_at:
                ex_prop[t] = resize_nearest(labels, size).cpu().numpy()
        seconds["propagation"] += time.perf_counter() - t0
        bar.update(len(idx))
        t0 = time.perf_counter()
    bar.close()
    video.close()

    t0 = time.perf_counter()
    hist = torch.stack(histograms)[annotated]  # (T', P, K+2): the annotated frames are scored
    foreground = hist[..., 1:].sum(dim=-1)  # (T', P)
    result = SequenceResult(
        name=seq.name,
        num_frames=T,
        num_objects=K,
        source_size=(H, W),
        input_size=size,
        grid=grid,
        seconds=seconds,
        histograms=torch.stack([hist[..., 0], foreground], dim=-1),  # (T', P, 2)
        unannotated_frames=tuple(int(t) for t in (~annotated).nonzero().flatten()),
    )
    if prop_on:
        result.propagation = SequenceScores.from_frames(seq.name, scored, js, fs)
    attention = torch.cat(attn_seq) if want_attention else None  # (T, h, gh, gw)
    head_masks = average_mask = objects = None
    if attn_on:
        attention = _present(attention, "attention")
        head_masks = mass_threshold(attention, cfg.keep)  # (T, h, gh, gw)
        average_mask = mass_threshold(attention.mean(dim=1), cfg.keep)  # (T, gh, gw)
        result.attention = mask_statistics(mask_jaccard(head_masks[annotated], foreground, area))
        j_avg = mask_jaccard(average_mask[annotated][:, None], foreground, area)[:, 0]  # (T',)
        result.attention["head_average_jaccard"] = j_avg
        result.attention["head_average_j"] = float(j_avg.mean())
        # share of the head-average mask's pixels on the foreground; NaN frames (empty mask) skipped
        prec_avg = mask_precision(average_mask[annotated][:, None], foreground, area)[:, 0]
        result.attention["head_average_precision"] = float(torch.nanmean(prec_avg))
    if track_on:
        objects = torch.cat(object_masks)  # (T, k, gh, gw)
        result.tracking = mask_statistics(mask_jaccard(objects[annotated], foreground, area))
        # does the best object (by J) prefer the objects? Its precision against the foreground's
        # share of the frame (a mask of random pixels has that precision)
        precision = mask_precision(objects[annotated], foreground, area)  # (T', k)
        best = result.tracking["best_head"]
        result.tracking["precision"] = precision
        result.tracking["best_precision"] = float(torch.nanmean(precision[:, best]))
        result.tracking["foreground_share"] = float(foreground_share(foreground, area).mean())
    discovered = {}  # method -> ((T, gh, gw) masks, (T, 4) boxes)
    if disc_on:
        discovered = {
            m: (torch.cat([x for x, _ in parts]), torch.cat([b for _, b in parts]))
            for m, parts in found.items()
        }
        result.discovery = {
            m: discovery_scores(
                masks_m, boxes_m, gt[annotated], annotated, foreground, area, index_map.cpu(), K
            )
            for m, (masks_m, boxes_m) in discovered.items()
        }
    seconds["scores"] += time.perf_counter() - t0
    features = torch.cat(tokens_seq) if tokens_seq else None  # (T, gh, gw, D)
    if seg_on:
        t0 = time.perf_counter()
        result.segmentation = _segmentation_scores(
            _present(features, "tokens")[annotated].to(device), hist[..., : K + 1], cfg
        )
        seconds["segmentation"] = time.perf_counter() - t0
    if stash is not None:
        stashed = _present(features, "tokens")[annotated].half().numpy()
        np.save(stash / f"{seq.name}.npy", stashed)  # as histograms
    if examples_at:
        sel = torch.tensor(examples_at)
        result.examples = SequenceExamples(
            indices=examples_at,
            frames=np.stack([ex_frames[t] for t in examples_at]),
            gt=resize_nearest(gt[sel], size).numpy(),
            propagated=np.stack([ex_prop[t] for t in examples_at]) if prop_on else None,
            head_masks=head_masks[sel] if head_masks is not None else None,
            average_mask=average_mask[sel] if average_mask is not None else None,
            object_masks=objects[sel] if objects is not None else None,
            discovery={
                m: (masks_m[sel], boxes_m[sel]) for m, (masks_m, boxes_m) in discovered.items()
            }
            or None,
        )
    return result


# --------------------------------------------------------------------------------------------
# Dataset-level k-means
# --------------------------------------------------------------------------------------------


def dataset_segmentation(
    stash: Path, results: Sequence[SequenceResult], cfg: EvalConfig
) -> dict[str, Any]:
    """One k-means over the whole dataset, fitted on a seeded sample of at most
    ``dataset_samples`` patches, every patch assigned to its nearest centroid, scored foreground
    vs background (object ids mean nothing across sequences)."""

    device = torch.device(cfg.device)
    arrays = [np.load(stash / f"{r.name}.npy", mmap_mode="r") for r in results]  # (T, gh, gw, D)
    counts = [a.shape[0] * a.shape[1] * a.shape[2] for a in arrays]
    total = int(sum(counts))
    n = min(cfg.dataset_samples, total)
    chosen = np.sort(np.random.default_rng(cfg.seed).choice(total, size=n, replace=False))
    starts = np.cumsum([0, *counts])
    sample = []
    for a, lo, hi in zip(arrays, starts[:-1], starts[1:]):
        local = chosen[(chosen >= lo) & (chosen < hi)] - lo
        sample.append(np.asarray(a.reshape(-1, a.shape[-1])[local], dtype=np.float32))
    x = F.normalize(torch.from_numpy(np.concatenate(sample)).to(device), dim=-1)  # (n, D)
    out: dict[str, Any] = {
        "num_samples": n,
        "num_patches": total,
        "classes": ["background", "foreground"],
    }
    protocols: tuple[tuple[str, int, Matching], ...] = (
        ("hungarian", 2, "hungarian"),
        ("overcluster", cfg.overclusters, "many_to_one"),
    )
    for name, k, matching in protocols:
        centroids = kmeans(x, min(k, n), seed=cfg.seed).centroids  # (k, D)
        conf = torch.zeros(2, centroids.shape[0], dtype=torch.long)
        for res, a in zip(results, arrays):
            if res.histograms is None:  # a result read back from JSON keeps none
                raise ValueError(f"dataset_segmentation: {res.name!r} has no patch histograms")
            for t in range(a.shape[0]):
                f = torch.from_numpy(np.asarray(a[t], dtype=np.float32)).to(device)
                f = F.normalize(f.reshape(-1, f.shape[-1]), dim=-1)  # (P, D)
                ids = torch.cdist(f, centroids).argmin(dim=1)  # (P,)
                conf += confusion_from_histograms(res.histograms[t], ids.cpu(), centroids.shape[0])
        out[name] = _miou(conf, matching)
        out[f"{name}_clusters"] = int(centroids.shape[0])
        out[f"{name}_confusion"] = conf
    del arrays
    return out
