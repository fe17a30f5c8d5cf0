"""Unsupervised segmentation mIoU of a model in memory, and before/after comparisons.

The evaluation lab's k-means protocols (:mod:`labkit.eval.sequence`, TimeTuning's: k-means on
L2-normalised patch tokens per frame, per clip (a whole sequence) and over the dataset; Hungarian
matching with one cluster per label, and overclustering with ``overclusters`` clusters matched
many-to-one; mIoU over the labels present, pixel-exact at the masks' resolution) for a model that
is not a checkpoint on disk: one being trained, before and after. :func:`segmentation_miou` scores
one model on one DAVIS-layout dataset; :func:`segmentation_scores` scores it on several, skipping
the ones that are not there; :func:`miou_rows` lines two such results up as a table.

Protocol keys (each a mIoU in [0, 1], NaN where nothing was scored)::

    frame_hungarian   clip_hungarian   dataset_hungarian
    frame_overcluster clip_overcluster dataset_overcluster

``frame`` and ``clip`` are means over sequences; the ``dataset`` protocol fits one k-means on a
sample of every sequence's patches and scores foreground against background.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from labkit.data import default_dataset
from labkit.eval.datasets import davis_sequences
from labkit.eval.results import ModelResult
from labkit.eval.runner import EvalConfig, score_sequences

__all__ = ["PROTOCOLS", "segmentation_miou", "segmentation_scores", "miou_rows"]

PROTOCOLS = (
    "frame_hungarian",
    "clip_hungarian",
    "dataset_hungarian",
    "frame_overcluster",
    "clip_overcluster",
    "dataset_overcluster",
)


def segmentation_miou(
    model: torch.nn.Module,
    data_root: str | Path = "",
    *,
    sequences: Sequence[str] = (),
    davis_folder: str = "480p",
    resolution: int = 224,
    size_multiple: int = 64,
    max_frames: int = 0,
    overclusters: int = 10,
    dataset_samples: int = 100_000,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """k-means segmentation mIoU of one model on a DAVIS-layout dataset (the evaluation lab's).

    The same numbers as ``labkit.eval.runner.evaluate(EvalConfig(evaluations=("segmentation",),
    ...))`` gives for this model's weights, without writing them to a checkpoint. The model runs
    in eval mode and is put back in the mode it was in.

    Args:
        model: a timm VisionTransformer on ``device``.
        data_root: DAVIS-layout root (``JPEGImages/<davis_folder>/<seq>``,
            ``Annotations/<davis_folder>/<seq>``); empty: the lab's synthetic video
            (:func:`labkit.data.default_dataset`).
        sequences: sequence names; empty: ``sequences.txt``, else every sequence folder.
        davis_folder: resolution folder under ``JPEGImages`` and ``Annotations``.
        resolution: shorter side fed to the model (DINO's rule, see
            :func:`labkit.eval.sequence.model_input_size`).
        size_multiple: the longer side is rounded down to a multiple of this.
        max_frames: only the first N frames of each sequence; 0: all.
        overclusters: clusters of the many-to-one protocol.
        dataset_samples: patches sampled to fit the dataset-level k-means.
        batch_size: frames per forward pass.
        device: where the model and the k-means run.
        seed: k-means and sampling seed.
        progress: tqdm progress bars.

    Returns:
        ``{protocol: mIoU}`` for the six :data:`PROTOCOLS`, plus ``"per_sequence"`` (name ->
        frame/clip mIoUs), ``"sequences"`` (names), ``"frames"`` (frames scored), ``"data_root"``
        and ``"seconds"``.

    Raises:
        ValueError: a bad setting or dataset (the evaluation lab's checks, before any frame).
    """

    start = time.perf_counter()
    cfg = EvalConfig(
        data_root=str(data_root),
        sequences=tuple(sequences),
        davis_folder=davis_folder,
        resolution=resolution,
        size_multiple=size_multiple,
        evaluations=("segmentation",),
        overclusters=overclusters,
        dataset_samples=dataset_samples,
        example_frames=0,
        max_frames=max_frames,
        batch_size=batch_size,
        device=str(device),
        seed=seed,
    )
    if cfg.data_root:
        root = Path(cfg.data_root).expanduser()
    else:
        root = default_dataset()
    seqs = davis_sequences(root, cfg.sequences, folder=cfg.davis_folder)
    result = ModelResult(label="k-means mIoU", spec="", info={})
    training = model.training
    model.eval()
    try:
        score_sequences(model, seqs, cfg, result, progress=progress)
    finally:
        model.train(training)
    summary = result.segmentation_summary() or {}
    return {
        **{name: float(summary.get(name, math.nan)) for name in PROTOCOLS},
        "per_sequence": {  # every sequence has one: evaluations=("segmentation",)
            s.name: dict(s.segmentation) for s in result.sequences if s.segmentation is not None
        },
        "sequences": [s.name for s in result.sequences],
        "frames": int(sum(s.num_frames for s in result.sequences)),
        "data_root": str(root),
        "seconds": time.perf_counter() - start,
    }


def segmentation_scores(
    model: torch.nn.Module,
    datasets: Mapping[str, str | Path | None],
    *,
    sequences: Mapping[str, Sequence[str]] | None = None,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`segmentation_miou` on several datasets; absent ones are skipped, not errors.

    Args:
        model: a timm VisionTransformer.
        datasets: name -> DAVIS-layout root; ``""`` is the lab's synthetic video; ``None`` or a
            folder that does not exist is skipped (a notebook parameter left empty, shared data
            not present on this machine).
        sequences: dataset name -> the sequences to score there; a dataset not named, or an empty
            list, scores all its sequences. Per dataset, as sequence names belong to one dataset.
        **options: passed to :func:`segmentation_miou` (``resolution``, ``max_frames`` ...).

    Returns:
        name -> the scores of :func:`segmentation_miou`, or ``{"skipped": reason}``.
    """
    sequences = dict(sequences or {})
    unknown = sorted(set(sequences) - set(datasets))
    if unknown:
        raise ValueError(f"sequences: {unknown} are not among the datasets {list(datasets)}")
    out: dict[str, dict[str, Any]] = {}
    for name, root in datasets.items():
        if root is None:
            out[name] = {"skipped": "no data root given"}
        elif str(root) and not Path(root).expanduser().is_dir():
            out[name] = {"skipped": f"no folder at {root}"}
        else:
            out[name] = segmentation_miou(
                model, root, sequences=sequences.get(name) or (), **options
            )
    return out


def miou_rows(
    before: Mapping[str, Mapping[str, Any]],
    after: Mapping[str, Mapping[str, Any]],
    protocols: Sequence[str] = PROTOCOLS,
) -> list[dict[str, Any]]:
    """Two results of :func:`segmentation_scores` side by side, one row per dataset and protocol.

    Returns:
        Rows ``{"dataset", "protocol", "before", "after", "change"}`` (mIoU in [0, 1], change
        = after - before) for the datasets scored in both; for
        :func:`labkit.eval.report.html_table`.
    """
    rows = []
    for name, first in before.items():
        second = after.get(name, {})
        if "skipped" in first or "skipped" in second or not second:
            continue
        for protocol in protocols:
            a, b = float(first[protocol]), float(second[protocol])
            rows.append(
                {"dataset": name, "protocol": protocol, "before": a, "after": b, "change": b - a}
            )
    return rows
