"""The evaluation's parameters (:class:`EvalConfig`) and the names of its evaluations.

Its own module below :mod:`labkit.eval.sequence` and :mod:`labkit.eval.runner`, which both use it
(the runner re-exports it): the config imports nothing of the evaluation's machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from labkit.pos_embed import PosEmbedRule
from labkit.specs import ModelSpec, parse_model_spec
from labkit.validation import (
    check_device,
    check_fields,
    check_model_kwargs,
    check_output_dir,
    resolve_device,
)

__all__ = ["EVALUATIONS", "VIDEO_EVALUATIONS", "DEFAULT_EVALUATIONS", "EvalConfig", "Evaluation"]

Evaluation = Literal["propagation", "attention", "tracking", "segmentation", "discovery", "knn"]
VIDEO_EVALUATIONS = ("propagation", "attention", "tracking", "segmentation", "discovery")
EVALUATIONS = (*VIDEO_EVALUATIONS, "knn")
# run when none are named: discovery is asked for by name (TokenCut's N x N eigenproblem per
# frame costs seconds a frame at 480 on a CPU)
DEFAULT_EVALUATIONS = ("propagation", "attention", "tracking", "segmentation")


@dataclass(frozen=True)
class EvalConfig:
    """Parameters of an evaluation; ``notebooks/evaluate.ipynb`` and ``labkit eval`` use these
    names.
    """

    models: tuple[str, ...] = ("vit_small_patch16_224",)  # specs (labkit.specs): random ViT-S/16
    # position-embedding resize for every model: "dino", "dinov2", "timm"; "auto": as each model's
    # weights' authors (DINO's rule for DINO/DoRA files and .dino tags, DINOv2's, timm's)
    pos_embed_rule: PosEmbedRule = "auto"
    # timm arguments for every model ({"depth": 2}), or per model label ({"tiny": {"depth": 2}})
    model_kwargs: dict = field(default_factory=dict)
    data_root: str = ""  # DAVIS-layout root; empty: the lab's synthetic video as a dataset
    sequences: tuple[str, ...] = ()  # empty: sequences.txt, else every sequence folder
    davis_folder: str = "480p"  # JPEGImages/<davis_folder>, Annotations/<davis_folder>
    # shorter side fed to the model; DINO evaluates at 480; at 224 a ViT-S/16 takes the 14 shared
    # DAVIS sequences in ~3 min on an idle 2-core CPU (15-35 min with other jobs running)
    resolution: int = 224
    size_multiple: int = 64  # longer side rounded down to this (DINO: 64), see the module doc
    evaluations: tuple[str, ...] = DEFAULT_EVALUATIONS  # any of EVALUATIONS
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
    device: str = "auto"  # "auto": CUDA when available, else the CPU
    seed: int = 0  # k-means, random weights, the dataset sample
    # torch CPU threads; 0: the CPUs this process may use (affinity, cgroup quota)
    threads: int = 0
    out_dir: str = "runs/evaluate"

    def __post_init__(self) -> None:
        for name in ("models", "sequences", "evaluations"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,) if value else ()
            if isinstance(value, (list, tuple)):
                value = tuple(str(v) for v in value)
            object.__setattr__(self, name, value)
        check_fields(self)  # every value of its annotated type, or the key is named
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
        if self._per_model_kwargs():
            unknown = sorted(set(self.model_kwargs) - set(labels))
            if unknown:
                raise ValueError(f"model_kwargs: no models labelled {unknown}; labels: {labels}")
            for label, kwargs in self.model_kwargs.items():
                check_model_kwargs(f"model_kwargs.{label}", kwargs)
        else:
            check_model_kwargs("model_kwargs", self.model_kwargs)
        unknown = [e for e in self.evaluations if e not in EVALUATIONS]
        if unknown or not self.evaluations:
            raise ValueError(
                f"evaluations: unknown {unknown} (choose from {list(EVALUATIONS)})"
                if unknown
                else f"evaluations: choose at least one of {list(EVALUATIONS)}"
            )
        if "knn" in self.evaluations and not self.knn_root:
            raise ValueError(
                "evaluations has 'knn' but knn_root is empty: give a labelled image folder"
            )
        if self.data_root and not Path(self.data_root).expanduser().is_dir():
            raise ValueError(f"data_root {self.data_root!r}: no such folder")
        if self.knn_root and not Path(self.knn_root).expanduser().is_dir():
            raise ValueError(f"knn_root {self.knn_root!r}: no such folder")
        for name in (
            "resolution",
            "size_multiple",
            "topk",
            "dora_objects",
            "knn_k",
            "knn_resolution",
            "batch_size",
            "dataset_samples",
        ):
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
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: automatic), got {self.threads}")
        check_device("device", self.device)
        object.__setattr__(self, "device", resolve_device(self.device))
        check_output_dir("out_dir", self.out_dir)

    @property
    def specs(self) -> list[ModelSpec]:
        return [parse_model_spec(m) for m in self.models]

    def _per_model_kwargs(self) -> bool:
        """``model_kwargs`` maps model labels to dicts (rather than timm arguments to values)."""
        kw = self.model_kwargs
        return (
            bool(kw)
            and all(isinstance(v, dict) for v in kw.values())
            and any(k in {s.label for s in self.specs} for k in kw)
        )

    def kwargs_for(self, label: str) -> dict[str, Any]:
        """The timm arguments of the model labelled ``label``."""
        if self._per_model_kwargs():
            return dict(self.model_kwargs.get(label, {}))
        return dict(self.model_kwargs)

    def runs(self, evaluation: str) -> bool:
        return evaluation in self.evaluations

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
