"""The evaluation lab's runner: backbones x DAVIS-format sequences -> every score, streamed.

What :func:`evaluate` measures for each model on each sequence (one forward pass per frame gives
the [CLS] attention, patch tokens, keys and queries of the last block):

- ``"propagation"``  semi-supervised VOS by label propagation, DINO's protocol and defaults
  (:class:`labkit.propagation.LabelPropagator`), J, F per object and frame at the masks'
  resolution, DAVIS statistics (first and last frames not scored).
- ``"attention"``    each head's [CLS] attention and the head average, thresholded to keep
  ``keep`` (0.6) of the mass, J against the foreground; best head, mean over heads, stability.
- ``"tracking"``     DoRA: objects discovered on the first frame from the first ``dora_objects``
  heads (:func:`labkit.tracking.discover_objects`), tracked through the sequence
  (:func:`labkit.tracking.track_objects`, DoRA's per-map mean threshold); the best object per
  sequence and per frame, stability.
- ``"discovery"``    one object per frame by LOST, TokenCut, DINO's thresholded attention (its
  largest component) and DoRA (the union of the tracked objects), :mod:`labkit.discovery`: J
  against the foreground, CorLoc of the box, stability of consecutive masks
  (:mod:`labkit.eval.discovery`). Not run unless named.
- ``"segmentation"`` k-means on L2-normalised patch tokens, TimeTuning's protocols: per frame,
  per clip (the sequence), and over the dataset; Hungarian matching with as many clusters as
  classes, and overclustering (``overclusters`` clusters, many-to-one); mIoU.
- ``"knn"``          weighted k-NN on [CLS] embeddings of a labelled image folder (DINO's).

Resolution, as DINO's DAVIS evaluation (:func:`labkit.eval.sequence.model_input_size`): the
shorter side of each frame becomes ``resolution``, the longer side is rounded down to a multiple
of ``size_multiple`` (64); with ``resolution=480`` a 854 x 480 DAVIS frame becomes 832 x 480,
exactly DINO's input. Every score is computed against the masks at their own resolution.

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

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from labkit.data import default_dataset
from labkit.environment import describe, threads_for
from labkit.eval.config import (
    DEFAULT_EVALUATIONS,
    EVALUATIONS,
    VIDEO_EVALUATIONS,
    EvalConfig,
)
from labkit.eval.datasets import (
    DatasetError,
    DavisSequence,
    davis_sequences,
    image_folder_split,
    load_image_batch,
)
from labkit.eval.knn import knn_classify
from labkit.eval.results import EvalResult, ModelResult
from labkit.eval.sequence import dataset_segmentation, evaluate_sequence, model_input_size
from labkit.models import patch_size, prepare_images, weights_label
from labkit.pos_embed import model_rule
from labkit.specs import ModelSpec

__all__ = [
    "EVALUATIONS",
    "VIDEO_EVALUATIONS",
    "DEFAULT_EVALUATIONS",
    "EvalConfig",
    "model_input_size",
    "evaluate",
    "evaluate_sequence",
]


def _cls_embeddings(
    model: torch.nn.Module, paths: Sequence[Path], cfg: EvalConfig, progress: bool, desc: str
) -> torch.Tensor:
    """Pooled ([CLS]) embeddings ``(n, D)`` of images, batch by batch."""
    from tqdm.auto import tqdm

    out = []
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(paths), cfg.batch_size), desc=desc, leave=False, disable=not progress
        ):
            images = load_image_batch(paths[start : start + cfg.batch_size], cfg.knn_resolution)
            out.append(model(prepare_images(images, model, device=cfg.device)).float().cpu())
    return torch.cat(out)


def _knn(model: torch.nn.Module, cfg: EvalConfig, progress: bool) -> dict[str, Any]:
    split = image_folder_split(cfg.knn_root)
    train = _cls_embeddings(model, [p for p, _ in split.train], cfg, progress, "k-NN train")
    test = _cls_embeddings(model, [p for p, _ in split.test], cfg, progress, "k-NN test")
    k = min(cfg.knn_k, len(split.train))
    res = knn_classify(
        train,
        torch.tensor([y for _, y in split.train]),
        test,
        k,
        cfg.knn_temperature,
        num_classes=len(split.classes),
        test_labels=torch.tensor([y for _, y in split.test]),
    )
    return {
        "top1": res.top1,
        "top5": res.top5,
        "k": k,
        "temperature": cfg.knn_temperature,
        "classes": list(split.classes),
        "num_train": len(split.train),
        "num_test": len(split.test),
        "predictions": res.predictions,
    }


# --------------------------------------------------------------------------------------------
# k-NN on a labelled image folder, and the whole run
# --------------------------------------------------------------------------------------------


def _model_info(spec: ModelSpec, model: torch.nn.Module, cfg: EvalConfig) -> dict[str, Any]:
    vit: Any = model  # timm's blocks and embed_dim (untyped on nn.Module)
    heads = vit.blocks[0].attn.num_heads
    depth = len(vit.blocks)
    info: dict[str, Any] = {
        "arch": spec.arch,
        "weights": spec.weights,
        "weights_label": weights_label(model),  # in words, for tables and figure titles
        "pos_embed_rule": model_rule(model),
        "network": spec.which if spec.checkpoint else None,
        "model_kwargs": cfg.kwargs_for(spec.label),
        "patch_size": patch_size(model),
        "embed_dim": int(vit.embed_dim),
        "depth": depth,
        "heads": int(heads),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    if (cfg.runs("tracking") or cfg.runs("discovery")) and cfg.dora_objects > heads:
        raise ValueError(
            f"model {spec.label!r}: dora_objects={cfg.dora_objects} but the model has only "
            f"{heads} heads (DoRA takes one head per object)"
        )
    if not -depth <= cfg.layer < depth:
        raise ValueError(f"model {spec.label!r}: layer {cfg.layer} out of range ({depth} blocks)")
    if getattr(model, "cls_token", None) is None and any(
        cfg.runs(e) for e in ("attention", "tracking", "discovery")
    ):
        raise ValueError(f"model {spec.label!r} has no [CLS] token: no [CLS] attention to score")
    return info


def _progress_lines() -> bool:
    """Progress as plain lines on stderr instead of bars: in a notebook run by papermill
    (``LABKIT_HEADLESS=1``), where bar widgets reach neither the pipeline's log nor the HTML
    export, and a cell may run for many minutes."""
    return os.environ.get("LABKIT_HEADLESS", "") not in ("", "0")


def _progress_line(text: str) -> None:
    """One ``[labkit] ...`` progress line on stderr (labkit.notebooks forwards these lines)."""
    print(f"[labkit] {text}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def score_sequences(
    model: torch.nn.Module,
    sequences: Sequence[DavisSequence],
    cfg: EvalConfig,
    result: ModelResult,
    *,
    progress: bool = True,
    position: tuple[int, int] | None = None,
) -> None:
    """Run the video evaluations of ``cfg`` for one loaded model over the sequences.

    Appends one :class:`labkit.eval.results.SequenceResult` per sequence to ``result.sequences``
    and, with segmentation on, sets ``result.dataset_segmentation`` (the dataset-level k-means,
    fitted on patches stashed in a temporary folder while the sequences stream).

    With ``progress``: a tqdm bar per model (and per sequence's frames) or, under papermill, one
    line per sequence on stderr (``[labkit] evaluate dino (model 2/3): sequence 4/14 cows ...``).
    ``position`` is ``(i, n)``: the model's place among the run's models, for those lines.
    """
    from tqdm.auto import tqdm

    lines = progress and _progress_lines()
    where = result.label + (f" (model {position[0]}/{position[1]})" if position else "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labkit-eval-") as tmp:
        stash = Path(tmp) if cfg.runs("segmentation") else None
        todo = sequences if lines else tqdm(sequences, desc=where, unit="seq", disable=not progress)
        for done, seq in enumerate(todo, 1):
            t0 = time.perf_counter()
            result.sequences.append(
                evaluate_sequence(model, seq, cfg, progress=progress and not lines, stash=stash)
            )
            if lines:
                elapsed = time.perf_counter() - start
                left = elapsed / done * (len(sequences) - done)
                _progress_line(
                    f"evaluate {where}: sequence {done}/{len(sequences)} {seq.name} "
                    f"({result.sequences[-1].num_frames} frames) in "
                    f"{_duration(time.perf_counter() - t0)}; "
                    f"{_duration(elapsed)} so far, about {_duration(left)} left for this model"
                )
        if stash is not None and sequences:
            result.dataset_segmentation = dataset_segmentation(stash, result.sequences, cfg)


def evaluate(cfg: EvalConfig, *, progress: bool = True) -> EvalResult:
    """Evaluate every model of ``cfg`` on its dataset; checks everything before the first frame.

    Runs with ``cfg.threads`` torch threads (0: the CPUs available to the process, see
    :func:`labkit.environment.configure_threads`); torch's previous count is restored after.

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
    with threads_for(cfg.threads or None):
        return _evaluate(cfg, progress=progress)


def _evaluate(cfg: EvalConfig, *, progress: bool) -> EvalResult:
    start = time.perf_counter()
    video_on = any(cfg.runs(e) for e in VIDEO_EVALUATIONS)
    if cfg.data_root:
        root = Path(cfg.data_root).expanduser()
    elif video_on:
        root = default_dataset()
    else:
        root = Path("")
    sequences = davis_sequences(root, cfg.sequences, folder=cfg.davis_folder) if video_on else []
    if cfg.runs("propagation"):
        short = [s.name for s in sequences if min(s.num_frames, cfg.max_frames or s.num_frames) < 3]
        if short:
            raise DatasetError(
                f"sequences {short}: label propagation scores frames 1..T-2, "
                "so it needs at least 3 frames"
            )
    if cfg.runs("knn"):
        image_folder_split(cfg.knn_root)
    infos = {}
    for spec in cfg.specs:  # every spec must load before any data goes through a model
        model = spec.load(
            device="cpu",
            seed=cfg.seed,
            model_kwargs=cfg.kwargs_for(spec.label),
            pos_embed_rule=cfg.pos_embed_rule,
        )
        infos[spec.label] = _model_info(spec, model, cfg)
        del model

    results = []
    lines = progress and _progress_lines()
    for i, spec in enumerate(cfg.specs, 1):
        t_model = time.perf_counter()
        if lines:
            _progress_line(
                f"evaluate: model {i}/{len(cfg.specs)} {spec.label} "
                f"({infos[spec.label].get('weights_label') or spec.text}), "
                f"{len(sequences)} sequence{'' if len(sequences) == 1 else 's'}"
            )
        model = spec.load(
            device=cfg.device,
            seed=cfg.seed,
            model_kwargs=cfg.kwargs_for(spec.label),
            pos_embed_rule=cfg.pos_embed_rule,
        )
        res = ModelResult(label=spec.label, spec=spec.text, info=infos[spec.label])
        score_sequences(model, sequences, cfg, res, progress=progress, position=(i, len(cfg.specs)))
        if cfg.runs("knn"):
            res.knn = _knn(model, cfg, progress)
        res.seconds = time.perf_counter() - t_model
        if lines:
            _progress_line(
                f"evaluate: model {i}/{len(cfg.specs)} {spec.label} done in "
                f"{_duration(res.seconds)}"
            )
        results.append(res)
        del model
    return EvalResult(
        config=cfg.to_dict(),
        models=results,
        environment=describe(str(cfg.device)),
        data_root=str(root) if video_on else "",
        sequences=[s.name for s in sequences],
        seconds=time.perf_counter() - start,
    )
