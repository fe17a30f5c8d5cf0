"""Results of the evaluation lab: per sequence, per model, per run; flat summaries; JSON dicts.

Compute lives in :mod:`labkit.eval.runner`; these dataclasses only hold what it measured and turn
it into plain numbers (:meth:`ModelResult.summary`, :meth:`EvalResult.to_dict`). Tensors stay
tensors here; ``to_dict`` gives lists and floats (NaN as ``None``) ready for ``json.dumps``.

Averaging: propagation follows DAVIS (every object of every sequence counts once, see
:func:`labkit.eval.metrics.davis_summary`); attention, tracking and per-frame / per-clip k-means
scores are means over sequences of each sequence's mean over its frames; so are the discovery
scores (J, CorLoc, stability per method).

Notation::

    T  frames    h  heads    k  tracked objects    gh, gw  patch grid    K  objects in the masks
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from labkit.eval.metrics import SequenceScores, davis_summary
from labkit.eval.seeds import aggregate_seeds, aggregate_to_dict

__all__ = ["SequenceExamples", "SequenceResult", "ModelResult", "EvalResult", "to_jsonable"]

# names of the discovery methods in tables and figures (labkit.discovery.METHODS)
DISCOVERY_NAMES = {
    "lost": "LOST",
    "tokencut": "TokenCut",
    "attention": "attn object",
    "dora": "DoRA union",
}


def to_jsonable(x: Any) -> Any:
    """Tensors, arrays and numpy scalars to lists and Python numbers; NaN and inf to ``None``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


@dataclass
class SequenceExamples:
    """A few frames of a sequence kept for figures (model input resolution, ``h x w``)."""

    indices: list[int]  # frame indices in the sequence
    frames: np.ndarray  # (n, h, w, 3) uint8 frames as fed to the model
    gt: np.ndarray  # (n, h, w) uint8 ground-truth labels (nearest-resized)
    propagated: np.ndarray | None  # (n, h, w) uint8 propagated labels (nearest-resized)
    head_masks: torch.Tensor | None  # (n, heads, gh, gw) bool attention masks per head
    average_mask: torch.Tensor | None  # (n, gh, gw) bool mask of the head-averaged attention
    object_masks: torch.Tensor | None  # (n, k, gh, gw) bool DoRA object masks
    # discovery method -> (masks (n, gh, gw) bool, boxes (n, 4) int64 grid boxes)
    discovery: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class SequenceResult:
    """Everything measured on one sequence for one model."""

    name: str
    num_frames: int  # T
    num_objects: int  # K
    source_size: tuple[int, int]  # (H, W) of frames and masks, where scores are computed
    input_size: tuple[int, int]  # (h, w) fed to the model
    grid: tuple[int, int]  # (gh, gw)
    propagation: SequenceScores | None = None  # J, F per object and scored frame
    attention: dict[str, Any] | None = None  # labkit.eval.segmentation.attention_mask_scores
    tracking: dict[str, Any] | None = None  # object_mask_scores of DoRA's tracked objects
    segmentation: dict[str, float] | None = None  # k-means mIoU per protocol
    # discovery method -> labkit.eval.discovery.discovery_scores (J, CorLoc, stability)
    discovery: dict[str, dict[str, Any]] | None = None
    examples: SequenceExamples | None = field(default=None, repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    # (T', P, 2) int64 background / foreground pixels under each patch of the annotated frames
    # (dataset-level k-means)
    histograms: torch.Tensor | None = field(default=None, repr=False)
    unannotated_frames: tuple[int, ...] = ()  # frames without a mask: run, not scored

    def row(self) -> dict[str, Any]:
        """One flat row of numbers for tables (missing evaluations leave their keys out)."""
        r: dict[str, Any] = {
            "sequence": self.name,
            "frames": self.num_frames,
            "objects": self.num_objects,
        }
        if self.propagation is not None:
            p = self.propagation
            r.update({"J&F": p.jf_mean, "J": p.j_mean, "F": p.f_mean})
        if self.attention is not None:
            a = self.attention
            r.update(
                {
                    "attn best head J": a["best_head_j"],
                    "attn head avg J": a["head_average_j"],
                    "attn best head": a["best_head"],
                    "attn stability": a["stability"],
                }
            )
        if self.tracking is not None:
            t = self.tracking
            r.update({"DoRA best object J": t["best_head_j"], "DoRA stability": t["stability"]})
            if "best_precision" in t:  # the best object's pixels on the foreground, vs chance
                r["DoRA object on foreground"] = t["best_precision"]
                r["foreground share"] = t["foreground_share"]
        if self.segmentation is not None:
            r.update({f"k-means {k} mIoU": v for k, v in self.segmentation.items()})
        if self.discovery is not None:
            for method, d in self.discovery.items():
                name = DISCOVERY_NAMES.get(method, method)
                r.update(
                    {
                        f"{name} J": d["j"],
                        f"{name} CorLoc": d["corloc_mean"],
                        f"{name} stability": d["stability"],
                    }
                )
        r["seconds"] = sum(self.seconds.values())
        return r

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "num_frames": self.num_frames,
            "num_objects": self.num_objects,
            "source_size": list(self.source_size),
            "input_size": list(self.input_size),
            "grid": list(self.grid),
            "seconds": self.seconds,
            "unannotated_frames": list(self.unannotated_frames),
        }
        if self.propagation is not None:
            p = self.propagation
            js, fs = p.j_stats, p.f_stats
            d["propagation"] = {
                "J&F-Mean": p.jf_mean,
                "J-Mean": p.j_mean,
                "F-Mean": p.f_mean,
                "objects": [
                    {
                        "object": i + 1,
                        "J-Mean": js[i, 0],
                        "J-Recall": js[i, 1],
                        "J-Decay": js[i, 2],
                        "F-Mean": fs[i, 0],
                        "F-Recall": fs[i, 1],
                        "F-Decay": fs[i, 2],
                    }
                    for i in range(p.num_objects)
                ],
                "scored_frames": p.frames,
                "J_per_frame": p.j,  # (K, T') per object
                "F_per_frame": p.f,
            }
        for key in ("attention", "tracking"):
            scores = getattr(self, key)
            if scores is not None:
                d[key] = {k: v for k, v in scores.items() if k != "masks"}
        if self.segmentation is not None:
            d["segmentation"] = self.segmentation
        if self.discovery is not None:
            d["discovery"] = self.discovery
        return to_jsonable(d)


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass
class ModelResult:
    """One model on the whole dataset."""

    label: str
    spec: str  # the model spec as given
    info: dict[str, Any]  # architecture facts: arch, weights, patch_size, heads, depth, ...
    sequences: list[SequenceResult] = field(default_factory=list)
    dataset_segmentation: dict[str, Any] | None = None  # one k-means over every sequence
    knn: dict[str, Any] | None = None  # k-NN accuracy on a labelled image folder
    seconds: float = 0.0

    def propagation_summary(self) -> dict[str, float] | None:
        """DAVIS dataset scores (J&F-Mean, J-Mean, J-Recall, ...) or None."""
        seqs = [s.propagation for s in self.sequences if s.propagation is not None]
        return davis_summary(seqs) if seqs else None

    def attention_summary(self) -> dict[str, Any] | None:
        """Attention masks over sequences; ``best_head`` is the one head best on average."""
        seqs = [s.attention for s in self.sequences if s.attention is not None]
        if not seqs:
            return None
        per_head = torch.stack([torch.as_tensor(a["per_head"]) for a in seqs]).mean(dim=0)  # (h,)
        best = int(per_head.argmax())
        return {
            "best_head": best,
            "best_head_j": float(per_head[best]),
            "per_head": per_head,
            "best_head_per_sequence_j": _mean([a["best_head_j"] for a in seqs]),
            "head_average_j": _mean([a["head_average_j"] for a in seqs]),
            "head_average_precision": _mean([a.get("head_average_precision") for a in seqs]),
            "mean_over_heads": _mean([a["mean_over_heads"] for a in seqs]),
            "oracle_j": _mean([a["oracle_j"] for a in seqs]),
            "stability": _mean([a["stability"] for a in seqs]),
        }

    def tracking_summary(self) -> dict[str, float] | None:
        """DoRA's tracked objects over sequences (the best object is chosen per sequence).

        ``best_object_precision``: the share of the best object's mask pixels that are foreground;
        ``foreground_share``: the foreground's share of the frame, the precision of a mask that
        ignores the objects (means over sequences of means over frames; a frame whose mask is
        empty is skipped).
        """
        seqs = [s.tracking for s in self.sequences if s.tracking is not None]
        if not seqs:
            return None
        return {
            "best_object_j": _mean([t["best_head_j"] for t in seqs]),
            "best_object_precision": _mean([t.get("best_precision") for t in seqs]),
            "foreground_share": _mean([t.get("foreground_share") for t in seqs]),
            "mean_over_objects": _mean([t["mean_over_heads"] for t in seqs]),
            "oracle_j": _mean([t["oracle_j"] for t in seqs]),
            "stability": _mean([t["stability"] for t in seqs]),
            "switches": _mean([float(t["switches"]) for t in seqs]),
        }

    def segmentation_summary(self) -> dict[str, float] | None:
        """Mean over sequences of each per-frame / per-clip mIoU, plus the dataset protocol."""
        seqs = [s.segmentation for s in self.sequences if s.segmentation is not None]
        if not seqs and self.dataset_segmentation is None:
            return None
        out = {k: _mean([s[k] for s in seqs]) for k in (seqs[0] if seqs else {})}
        if self.dataset_segmentation is not None:
            out["dataset_hungarian"] = self.dataset_segmentation["hungarian"]
            out["dataset_overcluster"] = self.dataset_segmentation["overcluster"]
        return out

    def discovery_summary(self) -> dict[str, dict[str, float]] | None:
        """Per discovery method, means over sequences of J, CorLoc (both rules) and stability."""
        seqs = [s.discovery for s in self.sequences if s.discovery is not None]
        if not seqs:
            return None
        return {
            method: {
                key: _mean([s[method][key] for s in seqs if method in s])
                for key in ("j", "corloc_mean", "corloc_any_mean", "stability")
            }
            for method in seqs[0]
        }

    def summary(self) -> dict[str, Any]:
        """The headline numbers as one flat row (keys are table column names)."""
        r: dict[str, Any] = {"model": self.label, "weights": self.info.get("weights", "")}
        p = self.propagation_summary()
        if p is not None:
            r.update({"J&F": p["J&F-Mean"], "J": p["J-Mean"], "F": p["F-Mean"]})
        a = self.attention_summary()
        if a is not None:
            r.update(
                {
                    "attn best head J": a["best_head_j"],
                    "attn head avg J": a["head_average_j"],
                    "attn mean heads J": a["mean_over_heads"],
                    "attn stability": a["stability"],
                }
            )
        t = self.tracking_summary()
        if t is not None:
            r.update(
                {
                    "DoRA best object J": t["best_object_j"],
                    "DoRA object on foreground": t["best_object_precision"],
                    "foreground share": t["foreground_share"],
                    "DoRA stability": t["stability"],
                }
            )
        s = self.segmentation_summary()
        if s is not None:
            r.update({f"k-means {k} mIoU": v for k, v in s.items()})
        disc = self.discovery_summary()
        if disc is not None:
            for method, d in disc.items():
                name = DISCOVERY_NAMES.get(method, method)
                r.update(
                    {
                        f"{name} J": d["j"],
                        f"{name} CorLoc": d["corloc_mean"],
                        f"{name} stability": d["stability"],
                    }
                )
        if self.knn is not None:
            r.update({"k-NN top-1": self.knn["top1"], "k-NN top-5": self.knn["top5"]})
        r["seconds"] = self.seconds
        return r

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "label": self.label,
                "spec": self.spec,
                "info": self.info,
                "summary": self.summary(),
                "propagation": self.propagation_summary(),
                "attention": self.attention_summary(),
                "tracking": self.tracking_summary(),
                "segmentation": self.segmentation_summary(),
                "discovery": self.discovery_summary(),
                "dataset_segmentation": self.dataset_segmentation,
                "knn": self.knn,
                "sequences": [s.to_dict() for s in self.sequences],
                "seconds": self.seconds,
            }
        )


@dataclass
class EvalResult:
    """A whole evaluation run: its configuration, the machine, and one result per model."""

    config: dict[str, Any]  # the EvalConfig as a dict
    models: list[ModelResult]
    environment: dict[str, Any]  # date, machine, torch version, device
    data_root: str
    sequences: list[str]
    seconds: float = 0.0

    def summary_rows(self) -> list[dict[str, Any]]:
        """One :meth:`ModelResult.summary` row per model."""
        return [m.summary() for m in self.models]

    def model(self, label: str) -> ModelResult:
        for m in self.models:
            if m.label == label:
                return m
        raise KeyError(f"no model labelled {label!r}; models: {[m.label for m in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        """Every number of the run, JSON-ready (what ``metrics.json`` holds).

        ``by_method``: the summary's numbers per method over its seeds (models labelled
        ``<method>@s<seed>``, :func:`labkit.eval.seeds.aggregate_seeds`): mean, sample standard
        deviation (``null`` with one seed), n, per-seed values and seeds.
        """
        rows = self.summary_rows()
        return to_jsonable(
            {
                "config": self.config,
                "environment": self.environment,
                "data_root": self.data_root,
                "sequences": self.sequences,
                "summary": rows,
                "by_method": aggregate_to_dict(aggregate_seeds(rows)),
                "models": {m.label: m.to_dict() for m in self.models},
                "seconds": self.seconds,
            }
        )
