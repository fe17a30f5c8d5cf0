"""The evaluation lab's runner: backbones x DAVIS-format sequences -> every score, streamed.

What :func:`evaluate` measures for each model on each sequence (one forward pass per frame gives
the [CLS] attention, patch tokens, keys and queries of the last block):

- ``"propagation"``  semi-supervised VOS by label propagation, DINO's protocol and defaults
  (:class:`labkit.eval.propagation.LabelPropagator`), J, F per object and frame at the masks'
  resolution, DAVIS statistics (first and last frames not scored).
- ``"attention"``    each head's [CLS] attention and the head average, thresholded to keep
  ``keep`` (0.6) of the mass, J against the foreground; best head, mean over heads, stability.
- ``"tracking"``     DoRA: objects discovered on the first frame from the first ``dora_objects``
  heads (:func:`labkit.tracking.discover_objects`), tracked through the sequence
  (:func:`labkit.tracking.track_objects`, DoRA's per-map mean threshold); the best object per
  sequence and per frame, stability.
- ``"segmentation"`` k-means on L2-normalised patch tokens, TimeTuning's protocols: per frame,
  per clip (the sequence), and over the dataset; Hungarian matching with as many clusters as
  classes, and overclustering (``overclusters`` clusters, many-to-one); mIoU.
- ``"knn"``          weighted k-NN on [CLS] embeddings of a labelled image folder (DINO's).

Resolution, as DINO's DAVIS evaluation: each frame is resized so that its shorter side is
``resolution`` (rounded down to a multiple of the patch size) and its longer side is the aspect-
kept length rounded down to a multiple of ``size_multiple`` (64 in DINO); the patch grid spans the
whole resized frame (``alignment="resize"`` in :mod:`labkit.eval.metrics`) and every score is
computed against the masks at their own resolution (480p for DAVIS). With ``resolution=480`` a
854 x 480 DAVIS frame becomes 832 x 480, exactly DINO's input.

Streaming: sequences are read one at a time, frames in batches of ``batch_size``; propagation and
its scores run frame by frame; one sequence's patch tokens (and its masks) are held for the
per-clip k-means and the attention scores. The dataset protocol writes each sequence's tokens to a
temporary folder (float16) and reads them back, so no more than one sequence is in memory.

Everything is checked before the first forward pass: the config, the dataset layout and every
sequence's files (:func:`labkit.eval.datasets.davis_sequences`), and every model spec (each model
is built once and its weights loaded).

Notation::

    T  frames    h  heads    k  clusters or tracked objects    D  channels
    gh, gw  patch grid    p  patch size    H, W  mask size    K  objects (labels 1..K)
"""

from __future__ import annotations

import datetime
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from labkit.eval.datasets import DatasetError, DavisSequence, davis_sequences, image_folder_split
from labkit.eval.results import EvalResult, ModelResult, SequenceExamples, SequenceResult
from labkit.eval.specs import ModelSpec, parse_model_spec

__all__ = [
    "EVALUATIONS",
    "VIDEO_EVALUATIONS",
    "EvalConfig",
    "model_input_size",
    "evaluate",
    "evaluate_sequence",
]

Evaluation = Literal["propagation", "attention", "tracking", "segmentation", "knn"]
VIDEO_EVALUATIONS = ("propagation", "attention", "tracking", "segmentation")
EVALUATIONS = (*VIDEO_EVALUATIONS, "knn")


@dataclass(frozen=True)
class EvalConfig:
    """Parameters of an evaluation; ``notebooks/evaluate.ipynb`` and ``labkit eval`` use these names."""

    models: tuple[str, ...] = ("vit_small_patch16_224",)  # specs (labkit.eval.specs): random ViT-S/16
    model_kwargs: dict = field(default_factory=dict)  # timm arguments for every model, e.g. depth
    data_root: str = ""  # DAVIS-layout root; empty: the lab's synthetic video as a dataset
    sequences: tuple[str, ...] = ()  # empty: sequences.txt, else every sequence folder
    davis_folder: str = "480p"  # JPEGImages/<davis_folder>, Annotations/<davis_folder>
    # shorter side fed to the model; DINO evaluates at 480, 224 keeps 14 DAVIS sequences under
    # 15 minutes on a 2-core CPU for a ViT-S/16
    resolution: int = 224
    size_multiple: int = 64  # longer side rounded down to this (DINO: 64), see the module doc
    evaluations: tuple[str, ...] = VIDEO_EVALUATIONS  # any of EVALUATIONS
    layer: int = -1  # block read (DINO and DoRA: the last)
    # label propagation, DINO's defaults (eval_video_segmentation.py)
    n_last: int = 7  # recent frames in the context besides the first
    topk: int = 5  # voting context patches
    temperature: float = 0.1
    radius: int = 12  # neighbourhood in patches; 0 disables it
    keep: float = 0.6  # attention mass kept by the masks (DINO's figures)
    dora_objects: int = 3  # objects discovered by DoRA (heads 0..k-1); DoRA trains with 3
    overclusters: int = 10  # clusters for the many-to-one (overclustering) protocol
    dataset_samples: int = 100_000  # patches sampled to fit the dataset-level k-means
    knn_root: str = ""  # labelled image folder for "knn" (see labkit.eval.datasets)
    knn_k: int = 20  # DINO: 20 neighbours
    knn_temperature: float = 0.07  # DINO: 0.07
    knn_resolution: int = 224  # centre crop fed to the model (after a resize to 256/224 of it)
    example_frames: int = 3  # frames per sequence kept for figures
    max_frames: int = 0  # only the first N frames of each sequence (quick looks, tests); 0: all
    batch_size: int = 8  # frames per forward pass
    device: str = "cpu"
    seed: int = 0  # k-means, random weights, the dataset sample
    out_dir: str = "runs/evaluate"

    def __post_init__(self) -> None:
        for name in ("models", "sequences", "evaluations"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,) if value else ()
            object.__setattr__(self, name, tuple(str(v) for v in value))
        if not self.models:
            raise ValueError("models: give at least one model spec (e.g. vit_small_patch16_224)")
        specs = [parse_model_spec(m) for m in self.models]
        labels = [s.label for s in specs]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(
                f"models: labels {repeated} repeat; give each spec its own label as LABEL=ARCH..."
            )
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got {type(self.model_kwargs).__name__}")
        unknown = [e for e in self.evaluations if e not in EVALUATIONS]
        if unknown or not self.evaluations:
            raise ValueError(
                f"evaluations: unknown {unknown} (choose from {list(EVALUATIONS)})"
                if unknown
                else f"evaluations: choose at least one of {list(EVALUATIONS)}"
            )
        if "knn" in self.evaluations and not self.knn_root:
            raise ValueError("evaluations has 'knn' but knn_root is empty: give a labelled image folder")
        if self.data_root and not Path(self.data_root).expanduser().is_dir():
            raise ValueError(f"data_root {self.data_root!r}: no such folder")
        if self.knn_root and not Path(self.knn_root).expanduser().is_dir():
            raise ValueError(f"knn_root {self.knn_root!r}: no such folder")
        for name in ("resolution", "size_multiple", "topk", "dora_objects", "knn_k",
                     "knn_resolution", "batch_size", "dataset_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("n_last", "radius", "example_frames", "max_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.overclusters < 2:
            raise ValueError(f"overclusters must be >= 2, got {self.overclusters}")
        if not self.temperature > 0 or not self.knn_temperature > 0:
            raise ValueError("temperature and knn_temperature must be > 0")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        if not str(self.device).startswith(("cpu", "cuda", "mps")):
            raise ValueError(f"device must be 'cpu', 'cuda[:n]' or 'mps', got {self.device!r}")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: CUDA is not available on this machine")

    @property
    def specs(self) -> list[ModelSpec]:
        return [parse_model_spec(m) for m in self.models]

    def runs(self, evaluation: str) -> bool:
        return evaluation in self.evaluations

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


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


def _example_indices(num_frames: int, count: int) -> list[int]:
    if count == 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, count)})


def _miou(conf: torch.Tensor, matching: Literal["hungarian", "many_to_one"]) -> float:
    """mIoU over the labels present, after matching clusters to labels (TimeTuning's rules:
    Hungarian leaves extra clusters to the background, many-to-one by precision)."""
    from labkit.eval.segmentation import hungarian_match, iou_from_mapping, many_to_one_match

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
    from labkit.clustering import kmeans_segments
    from labkit.eval.patchgrid import confusion_from_histograms

    T, gh, gw, _ = features.shape
    classes = histograms.shape[-1]
    out = {}
    for name, k, matching in (
        ("hungarian", classes, "hungarian"),
        ("overcluster", cfg.overclusters, "many_to_one"),
    ):
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
    from labkit.attention import extract, mass_threshold
    from labkit.eval.metrics import SequenceScores, davis_frame_scores, resize_nearest
    from labkit.eval.patchgrid import (
        mask_jaccard,
        mask_statistics,
        patch_histogram,
        patch_index_map,
    )
    from labkit.eval.propagation import LabelPropagator
    from labkit.models import patch_size as get_patch_size
    from labkit.models import prepare_images
    from labkit.tracking import discover_objects, track_objects
    from labkit.video import load_masks, open_frames
    from tqdm.auto import tqdm

    seconds = {"read": 0.0, "model": 0.0, "propagation": 0.0, "scores": 0.0}
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    p = get_patch_size(model)
    T = seq.num_frames if cfg.max_frames == 0 else min(cfg.max_frames, seq.num_frames)
    masks = load_masks(seq.masks[0].parent)  # (T_all, H, W) uint8 labels
    if masks.shape != (seq.num_frames, *seq.size):
        raise DatasetError(
            f"sequence {seq.name!r}: masks read as {masks.shape}, expected "
            f"{(seq.num_frames, *seq.size)}"
        )
    gt = torch.from_numpy(masks[:T])  # (T, H, W) uint8 on the CPU
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
    kinds = []
    if prop_on or seg_on or track_on or stash is not None:
        kinds.append("tokens")
    if track_on:
        kinds += ["keys", "queries"]
    want_attention = attn_on or track_on
    examples_at = _example_indices(T, cfg.example_frames)
    ex_frames, ex_prop = {}, {}

    propagator: LabelPropagator | None = None
    scored, js, fs = [], [], []
    tokens_seq, attn_seq, object_masks, histograms = [], [], [], []
    prototypes = None
    bar = tqdm(total=T, desc=seq.name, unit="frame", leave=False, disable=not progress)
    t0 = time.perf_counter()
    for idx, frames in video.batches(np.arange(T), cfg.batch_size):
        seconds["read"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        images = prepare_images(frames, model, device=device)  # (n, 3, h, w)
        out = extract(model, images, cfg.layer, attention=want_attention, kinds=tuple(kinds))
        tokens = out.features.get("tokens")  # (n, gh, gw, D)
        if want_attention:
            attn_seq.append(out.attention.cpu())  # (n, h, gh, gw)
        if track_on:
            if prototypes is None:  # the first batch starts with frame 0: discover there
                prototypes = discover_objects(
                    out.attention[:1], out.features["queries"][:1], tokens[:1],
                    k=cfg.dora_objects,
                ).prototypes  # (1, k, D)
            tracks = track_objects(prototypes, out.features["keys"][None])  # (1, n, k, gh, gw)
            object_masks.append(tracks.masks[0].cpu())  # (n, k, gh, gw)
        if seg_on or stash is not None:
            tokens_seq.append(tokens.float().cpu())
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
                    tokens[0], labels_t, n_last=cfg.n_last, topk=cfg.topk,
                    temperature=cfg.temperature, radius=cfg.radius or None, patch_size=p,
                    out_size=(H, W), alignment="resize", num_labels=K + 1,
                )
                labels = propagator.first_frame_labels
            else:
                labels = propagator.step(tokens[i]).labels  # (H, W) uint8
            if 0 < t < T - 1:
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
    hist = torch.stack(histograms)  # (T, P, K+2)
    foreground = hist[..., 1:].sum(dim=-1)  # (T, P)
    result = SequenceResult(
        name=seq.name, num_frames=T, num_objects=K, source_size=(H, W), input_size=size,
        grid=grid, seconds=seconds,
        histograms=torch.stack([hist[..., 0], foreground], dim=-1),  # (T, P, 2)
    )
    if prop_on:
        result.propagation = SequenceScores.from_frames(seq.name, scored, js, fs)
    attention = torch.cat(attn_seq) if want_attention else None  # (T, h, gh, gw)
    head_masks = average_mask = objects = None
    if attn_on:
        head_masks = mass_threshold(attention, cfg.keep)  # (T, h, gh, gw)
        average_mask = mass_threshold(attention.mean(dim=1), cfg.keep)  # (T, gh, gw)
        result.attention = mask_statistics(mask_jaccard(head_masks, foreground, area))
        j_avg = mask_jaccard(average_mask[:, None], foreground, area)[:, 0]  # (T,)
        result.attention["head_average_jaccard"] = j_avg
        result.attention["head_average_j"] = float(j_avg.mean())
    if track_on:
        objects = torch.cat(object_masks)  # (T, k, gh, gw)
        result.tracking = mask_statistics(mask_jaccard(objects, foreground, area))
    seconds["scores"] += time.perf_counter() - t0
    features = torch.cat(tokens_seq) if tokens_seq else None  # (T, gh, gw, D)
    if seg_on:
        t0 = time.perf_counter()
        result.segmentation = _segmentation_scores(features.to(device), hist[..., : K + 1], cfg)
        seconds["segmentation"] = time.perf_counter() - t0
    if stash is not None:
        np.save(stash / f"{seq.name}.npy", features.half().numpy())
    if examples_at:
        sel = torch.tensor(examples_at)
        result.examples = SequenceExamples(
            indices=examples_at,
            frames=np.stack([ex_frames[t] for t in examples_at]),
            gt=resize_nearest(gt[sel], size).numpy(),
            propagated=np.stack([ex_prop[t] for t in examples_at]) if prop_on else None,
            head_masks=head_masks[sel] if attn_on else None,
            average_mask=average_mask[sel] if attn_on else None,
            object_masks=objects[sel] if track_on else None,
        )
    return result


# --------------------------------------------------------------------------------------------
# Dataset-level k-means and k-NN
# --------------------------------------------------------------------------------------------


def _dataset_segmentation(
    stash: Path, results: Sequence[SequenceResult], cfg: EvalConfig
) -> dict[str, Any]:
    """One k-means over the whole dataset, fitted on a seeded sample of at most
    ``dataset_samples`` patches, every patch assigned to its nearest centroid, scored foreground
    vs background (object ids mean nothing across sequences)."""
    from labkit.clustering import kmeans
    from labkit.eval.patchgrid import confusion_from_histograms

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
    out: dict[str, Any] = {"num_samples": n, "num_patches": total,
                           "classes": ["background", "foreground"]}
    for name, k, matching in (("hungarian", 2, "hungarian"),
                              ("overcluster", cfg.overclusters, "many_to_one")):
        centroids = kmeans(x, min(k, n), seed=cfg.seed).centroids  # (k, D)
        conf = torch.zeros(2, centroids.shape[0], dtype=torch.long)
        for res, a in zip(results, arrays):
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


def _cls_embeddings(
    model: torch.nn.Module, paths: Sequence[Path], cfg: EvalConfig, progress: bool, desc: str
) -> torch.Tensor:
    """Pooled ([CLS]) embeddings ``(n, D)`` of images, batch by batch."""
    from labkit.eval.datasets import load_image_batch
    from labkit.models import prepare_images
    from tqdm.auto import tqdm

    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(paths), cfg.batch_size), desc=desc, leave=False,
                          disable=not progress):
            images = load_image_batch(paths[start : start + cfg.batch_size], cfg.knn_resolution)
            out.append(model(prepare_images(images, model, device=cfg.device)).float().cpu())
    return torch.cat(out)


def _knn(model: torch.nn.Module, cfg: EvalConfig, progress: bool) -> dict[str, Any]:
    from labkit.eval.knn import knn_classify

    split = image_folder_split(cfg.knn_root)
    train = _cls_embeddings(model, [p for p, _ in split.train], cfg, progress, "k-NN train")
    test = _cls_embeddings(model, [p for p, _ in split.test], cfg, progress, "k-NN test")
    k = min(cfg.knn_k, len(split.train))
    res = knn_classify(
        train, torch.tensor([y for _, y in split.train]), test, k, cfg.knn_temperature,
        num_classes=len(split.classes), test_labels=torch.tensor([y for _, y in split.test]),
    )
    return {"top1": res.top1, "top5": res.top5, "k": k, "temperature": cfg.knn_temperature,
            "classes": list(split.classes), "num_train": len(split.train),
            "num_test": len(split.test), "predictions": res.predictions}


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


def _environment(device: str) -> dict[str, Any]:
    import os

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return env


def _model_info(spec: ModelSpec, model: torch.nn.Module, cfg: EvalConfig) -> dict[str, Any]:
    from labkit.models import patch_size

    heads = model.blocks[0].attn.num_heads
    info = {
        "arch": spec.arch,
        "weights": spec.weights,
        "network": spec.which if spec.checkpoint else None,
        "model_kwargs": dict(cfg.model_kwargs),
        "patch_size": patch_size(model),
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
        "heads": int(heads),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    if cfg.runs("tracking") and cfg.dora_objects > heads:
        raise ValueError(
            f"model {spec.label!r}: dora_objects={cfg.dora_objects} but the model has only "
            f"{heads} heads (DoRA takes one head per object)"
        )
    if not -info["depth"] <= cfg.layer < info["depth"]:
        raise ValueError(f"model {spec.label!r}: layer {cfg.layer} out of range ({info['depth']} blocks)")
    if getattr(model, "cls_token", None) is None and (cfg.runs("attention") or cfg.runs("tracking")):
        raise ValueError(f"model {spec.label!r} has no [CLS] token: no [CLS] attention to score")
    return info


def evaluate(cfg: EvalConfig, *, progress: bool = True) -> EvalResult:
    """Evaluate every model of ``cfg`` on its dataset; checks everything before the first frame.

    Args:
        cfg: Models, data and evaluations.
        progress: tqdm progress bars (sequences, frames).

    Returns:
        :class:`labkit.eval.results.EvalResult` with every number (``to_dict()`` for JSON) and a
        few example frames per sequence for figures.

    Raises:
        ValueError: (:class:`labkit.eval.datasets.DatasetError` for data) naming the spec, folder
            or file at fault, before any model runs over the data.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    video_on = any(cfg.runs(e) for e in VIDEO_EVALUATIONS)
    if cfg.data_root:
        root = Path(cfg.data_root).expanduser()
    elif video_on:
        from labkit.data import default_dataset

        root = default_dataset()
    else:
        root = Path("")
    sequences = davis_sequences(root, cfg.sequences, folder=cfg.davis_folder) if video_on else []
    if cfg.runs("propagation"):
        short = [s.name for s in sequences
                 if min(s.num_frames, cfg.max_frames or s.num_frames) < 3]
        if short:
            raise DatasetError(f"sequences {short}: label propagation scores frames 1..T-2, "
                               "so it needs at least 3 frames")
    if cfg.runs("knn"):
        image_folder_split(cfg.knn_root)
    infos = {}
    for spec in cfg.specs:  # every spec must load before any data goes through a model
        model = spec.load(device="cpu", seed=cfg.seed, model_kwargs=cfg.model_kwargs)
        infos[spec.label] = _model_info(spec, model, cfg)
        del model

    results = []
    for spec in cfg.specs:
        t_model = time.perf_counter()
        model = spec.load(device=cfg.device, seed=cfg.seed, model_kwargs=cfg.model_kwargs)
        res = ModelResult(label=spec.label, spec=spec.text, info=infos[spec.label])
        with tempfile.TemporaryDirectory(prefix="labkit-eval-") as tmp:
            stash = Path(tmp) if cfg.runs("segmentation") else None
            for seq in tqdm(sequences, desc=spec.label, unit="seq", disable=not progress):
                res.sequences.append(evaluate_sequence(model, seq, cfg, progress=progress, stash=stash))
            if stash is not None and sequences:
                res.dataset_segmentation = _dataset_segmentation(stash, res.sequences, cfg)
        if cfg.runs("knn"):
            res.knn = _knn(model, cfg, progress)
        res.seconds = time.perf_counter() - t_model
        results.append(res)
        del model
    return EvalResult(
        config=cfg.to_dict(),
        models=results,
        environment=_environment(str(cfg.device)),
        data_root=str(root) if video_on else "",
        sequences=[s.name for s in sequences],
        seconds=time.perf_counter() - start,
    )
