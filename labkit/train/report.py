"""Looking at a training run: a clip's discovered and tracked objects, the log, a live loss plot.

Compute (:func:`clip_objects`, tensors), render (:func:`objects_to_rgb`, :func:`masked_frames`,
uint8 arrays) and plot (:func:`plot_objects`, :func:`plot_log`, Figures) are separate; nothing
here saves a file. :class:`LiveLossPlot` is a :meth:`labkit.train.Trainer.fit` callback.

Notation: T frames, k objects, h heads, gh x gw patch grid, N = gh * gw, D channels,
H x W frame pixels, p patch size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from labkit.attention import extract
from labkit.environment import is_headless
from labkit.models import patch_size, prepare_images
from labkit.runfolder import read_json
from labkit.tracking import discover_objects, masks_to_frames, object_shares, track_objects
from labkit.train.trainer import read_log
from labkit.train.verdict import ENTROPY_RATIO_MAX, KL_UNIFORM_MIN
from labkit.viz import dora as dora_pictures
from labkit.viz import mask_overlay, plot_grid
from labkit.viz.palette import object_colours

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ClipObjects",
    "clip_objects",
    "objects_to_rgb",
    "masked_frames",
    "plot_objects",
    "plot_log",
    "LiveLossPlot",
]

PLANS = ("softmax", "sinkhorn")  # without / with Sinkhorn-Knopp


@dataclass
class ClipObjects:
    """DoRA's objects in one clip, discovered on its first frame with and without Sinkhorn-Knopp.

    Attributes:
        frames: uint8 (T, H, W, 3), cropped to a multiple of the patch size (top-left kept).
        indices: int64 (T,) frame numbers in the video, or None.
        heads: the k attention heads behind the objects.
        maps: plan name (``"softmax"``, ``"sinkhorn"``) -> (T, k, gh, gw) float tracking maps,
            each summing to 1 over the patches.
        masks: plan name -> (T, k, gh, gw) bool masks.
        assignment: plan name -> (gh, gw, k) transport plan on the first frame (rows sum to 1).
        patch_size: p.
    """

    frames: np.ndarray
    indices: np.ndarray | None
    heads: tuple[int, ...]
    maps: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    assignment: dict[str, torch.Tensor]
    patch_size: int

    @property
    def k(self) -> int:
        return int(self.maps["sinkhorn"].shape[1])

    def object_sizes(self, plan: str = "sinkhorn") -> np.ndarray:
        """Fraction of the frame each object's mask covers, float (T, k) in [0, 1]."""
        return self.masks[plan].flatten(2).float().mean(-1).numpy()


def clip_objects(
    backbone: torch.nn.Module,
    frames: np.ndarray | torch.Tensor,
    *,
    k: int = 3,
    heads: Sequence[int] | None = None,
    epsilon: float = 0.05,
    iterations: int = 30,
    threshold: Literal["mean", "batch_mean"] | float = "mean",
    indices: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> ClipObjects:
    """Discover k objects on a clip's first frame and track them through the clip, both plans.

    One batched pass of the backbone over the T frames (:func:`labkit.attention.extract`), then
    :func:`labkit.tracking.discover_objects` with ``sinkhorn=False`` and ``True`` on the same
    heads, and :func:`labkit.tracking.track_objects`.

    Args:
        backbone: a timm ViT (e.g. ``trainer.teacher.backbone`` or
            :func:`labkit.train.load_trained`).
        frames: uint8 (T, H, W, 3) RGB frames.
        k: objects.
        heads: k head indices; None: heads ``0 .. k-1`` (the same before and after training).
        epsilon, iterations, threshold: as in training.
        indices: frame numbers, for titles.
        device: where the backbone runs (it is not moved).

    Returns:
        :class:`ClipObjects`, tensors on the CPU.
    """

    frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    p = patch_size(backbone)
    images = prepare_images(frames, backbone, device=device)
    was_training = backbone.training
    backbone.eval()
    try:
        out = extract(backbone, images, kinds=("tokens", "keys", "queries"))
    finally:
        backbone.train(was_training)
    if out.attention is None:  # pragma: no cover - extract's attention=True gives it
        raise ValueError("clip_objects: the extraction returned no [CLS] attention")
    attention = out.attention.float()  # (T, h, gh, gw)
    tokens, keys, queries = (out.features[n].float().clone() for n in ("tokens", "keys", "queries"))
    grid = tuple(attention.shape[-2:])
    chosen = tuple(range(k)) if heads is None else tuple(int(h) for h in heads)
    maps, masks, plans = {}, {}, {}
    for name in PLANS:
        found = discover_objects(
            attention[:1].clone(),
            queries[:1],
            tokens[:1],
            k=k,
            heads=chosen,
            sinkhorn=name == "sinkhorn",
            epsilon=epsilon,
            iterations=iterations,
        )
        tracks = track_objects(found.prototypes, keys[None], threshold=threshold)
        maps[name] = tracks.maps[0].cpu()  # (T, k, gh, gw)
        masks[name] = tracks.masks[0].cpu()
        plans[name] = found.assignment[0].reshape(*grid, k).cpu()  # (gh, gw, k)
    cropped = frames[:, : grid[0] * p, : grid[1] * p]
    return ClipObjects(np.ascontiguousarray(cropped), indices, chosen, maps, masks, plans, p)


def objects_to_rgb(
    maps: torch.Tensor | np.ndarray, size: tuple[int, int], patch_size: int
) -> np.ndarray:
    """k object maps as one colour image per frame, object j in ``object_colours(k)[j]``.

    :func:`labkit.viz.dora.objects_to_rgb`: each map min-max normalised within each frame on its
    own, tinted with its object's colour (:func:`labkit.viz.palette.object_colours`, the same in
    every picture of DoRA's objects), the tints added.

    Args:
        maps: (T, k, gh, gw) maps.
        size: (H, W) frame size.
        patch_size: p.

    Returns:
        uint8 (T, H, W, 3).
    """
    return dora_pictures.objects_to_rgb(maps, size, patch_size)


def masked_frames(objects: ClipObjects, plan: str = "sinkhorn") -> np.ndarray:
    """What the student sees: every frame times each object's mask, in pixels.

    Returns:
        uint8 (k, T, H, W, 3), black outside the mask.
    """

    frames = objects.frames
    size = frames.shape[1:3]
    pixel = masks_to_frames(objects.masks[plan], objects.patch_size, size).numpy()  # (T, k, H, W)
    return (frames[None] * pixel.transpose(1, 0, 2, 3)[..., None]).astype(np.uint8)


def plot_objects(objects: ClipObjects, title: str | None = None, max_frames: int = 8) -> Figure:
    """The objects of a clip as a grid: frames; maps without and with Sinkhorn-Knopp; masks; views.

    Rows: the frames; the k tracking maps as colours (:func:`objects_to_rgb`: each object
    min-max normalised within each frame, in its colour) with the row-softmax plan and with the
    Sinkhorn-Knopp plan, each labelled with the objects' overlap (mean over the frames shown);
    the Sinkhorn masks drawn over the frames; then one row per object with the masked view the
    student is trained on. Columns: up to ``max_frames`` frames of the clip.

    Returns:
        ``matplotlib.figure.Figure``.
    """

    total = len(objects.frames)
    cols = np.unique(np.linspace(0, total - 1, min(max_frames, total)).round().astype(int))
    frames = objects.frames[cols]
    size = frames.shape[1:3]
    p = objects.patch_size
    rows = [list(frames)]
    names = ["frames"]
    for plan in PLANS:
        rows.append(list(objects_to_rgb(objects.maps[plan][cols], size, p)))
        # the objects' overlap (labkit.tracking.object_shares), mean over the frames shown:
        # near 1, the maps are one map and their colours mix to grey
        overlap = float(object_shares(objects.maps[plan][cols]).mean_overlap().mean())
        names.append(f"maps, {'no SK' if plan == 'softmax' else 'SK'}\noverlap {overlap:.2f}")
    masks = objects.masks["sinkhorn"][cols].numpy()  # (t, k, gh, gw)
    rows.append(list(mask_overlay(frames, masks, object_colours(objects.k), 0.4, patch_size=p)))
    names.append("masks, SK")
    views = masked_frames(objects)[:, cols]  # (k, t, H, W, 3)
    for j in range(objects.k):
        rows.append(list(views[j]))
        names.append(f"object {j} (head {objects.heads[j]})")
    col_titles = [
        f"frame {int(objects.indices[c])}" if objects.indices is not None else f"t={c}"
        for c in cols
    ]
    return plot_grid(rows, row_titles=names, col_titles=col_titles, panel_size=1.8, suptitle=title)


def plot_log(
    log: Sequence[dict] | str | os.PathLike,
    title: str | None = None,
    out_dim: int | None = None,
) -> Figure:
    """Training curves: loss; teacher entropy and KL to uniform; learning rate (and weight decay).

    With the frozen-network control (records with ``control_loss``, ``TrainConfig.control``) its
    loss is drawn dashed on the loss's axes ("frozen-network control"), and its teacher entropy
    dashed beside the teacher's. With ``out_dim`` (K) the collapse panel shows the limits of the
    learning verdict (:mod:`labkit.train.verdict`): ``log K`` (every output uniform), ``0.9 log
    K`` (the most a healthy teacher's entropy may be) and a KL of 0.1 (the least).

    A TimeTuning log (records with ``agreement``) shows its own diagnostics in the middle panel:
    the agreement of the last frame's best prototypes with the forwarded targets and the
    targets' confidence (left axis), and the number of distinct clusters in the targets and in
    the first frames' assignments (right axis). Where the collapse watchdog fired (a record with
    ``collapse``), a dotted line marks the step the collapse began on the first two panels.

    Args:
        log: records (``TrainResult.log``), a ``log.jsonl`` or a run folder.
        title: figure title.
        out_dim: K of the DINO head, for the ``log K`` lines; None: read from the run folder's
            ``metrics.json`` when ``log`` is a path and it is there, else no such lines.

    Returns:
        ``matplotlib.figure.Figure`` with three panels side by side.
    """
    from matplotlib.figure import Figure

    if isinstance(log, (str, os.PathLike, Path)):
        if out_dim is None:
            out_dim = _run_out_dim(Path(log))
        log = read_log(log)
    records = list(log)
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    if not records:
        for ax in axes:
            ax.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    steps = np.array([r["step"] for r in records])
    loss = np.array([r["loss"] for r in records])
    axes[0].plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    if len(loss) >= 10:
        width = max(len(loss) // 20, 5)
        smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
        axes[0].plot(steps[width - 1 :], smooth, lw=1.5, label=f"mean of {width}")
    if all(r.get("control_loss") is not None for r in records):
        control = np.array([r["control_loss"] for r in records])
        if len(control) >= 10:  # smoothed as the loss's mean, so the two compare
            control = np.convolve(control, np.ones(width) / width, mode="valid")
        axes[0].plot(
            steps[len(steps) - len(control) :],
            control,
            color="0.25",
            ls="--",
            lw=1.3,
            label="frozen-network control" + (f" (mean of {width})" if len(records) >= 10 else ""),
        )
    timetuning = "agreement" in records[0]
    loss_title = "TimeTuning loss" if timetuning else "DINO loss"
    axes[0].set(xlabel="step", ylabel="loss", title=loss_title)
    axes[0].legend(fontsize=8)
    if timetuning:
        axes[1].plot(steps, [r["agreement"] for r in records], label="agreement")
        axes[1].plot(steps, [r["target_confidence"] for r in records], label="target confidence")
        axes[1].set(xlabel="step", ylabel="fraction", title="targets", ylim=(0, 1))
        clusters = axes[1].twinx()
        clusters.plot(
            steps,
            [r["target_clusters"] for r in records],
            color="C3",
            ls="--",
            lw=0.8,
            label="target clusters",
        )
        clusters.plot(
            steps,
            [r["first_clusters"] for r in records],
            color="C4",
            ls=":",
            lw=0.8,
            label="first-frame clusters",
        )
        clusters.set_ylabel("distinct clusters")
        axes[1].legend(handles=axes[1].lines + clusters.lines, fontsize=8)
    else:
        axes[1].plot(steps, [r["teacher_entropy"] for r in records], label="entropy H(q)")
        axes[1].plot(
            steps, [r["teacher_kl_uniform"] for r in records], label="KL(mean q || uniform)"
        )
        if all(r.get("control_teacher_entropy") is not None for r in records):
            axes[1].plot(
                steps,
                [r["control_teacher_entropy"] for r in records],
                color="C0",
                ls="--",
                lw=0.9,
                label="entropy, frozen control",
            )
        if out_dim is not None and out_dim >= 2:  # the verdict's limits, named at their right end
            log_k = math.log(out_dim)
            limits = (
                (log_k, "0.4", "-", f"log K (K={out_dim})"),
                (ENTROPY_RATIO_MAX * log_k, "0.4", "--", f"{ENTROPY_RATIO_MAX} log K"),
                (KL_UNIFORM_MIN, "C1", ":", f"KL {KL_UNIFORM_MIN}"),
            )
            for y, colour, style, name in limits:
                axes[1].axhline(y, color=colour, ls=style, lw=0.8, label=name, gid="limit")
                axes[1].text(
                    0.99,
                    y,
                    name,
                    transform=axes[1].get_yaxis_transform(),  # x in axes, y in data units
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    color=colour,
                )
            axes[1].set_ylim(top=1.4 * log_k)  # room above log K for the legend
        axes[1].set(xlabel="step", ylabel="nats", title="teacher collapse signals")
        events = [r["collapse"] for r in records if r.get("collapse")]
        if events:  # the watchdog fired: mark where the collapse began
            began = events[0]["step"]
            for ax in axes[:2]:
                ax.axvline(
                    began,
                    color="C3",
                    ls=":",
                    lw=1.2,
                    label=f"collapse from step {began} ({events[0]['kind']})",
                )
            axes[0].legend(fontsize=8)
        curves = [line for line in axes[1].lines if line.get_gid() != "limit"]
        axes[1].legend(handles=curves, fontsize=8, loc="upper left")
    axes[2].plot(steps, [r["lr"] for r in records], label="lr", color="C2")
    if timetuning:
        axes[2].plot(steps, [r["backbone_lr"] for r in records], label="backbone lr", color="C1")
    axes[2].set(xlabel="step", ylabel="learning rate", title="schedules")
    twin = axes[2].twinx()
    twin.plot(steps, [r["wd"] for r in records], label="weight decay", color="C3", ls="--")
    twin.set_ylabel("weight decay")
    axes[2].legend(handles=axes[2].lines + twin.lines, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def _run_out_dim(path: Path) -> int | None:
    """The head's K stored in a run folder's ``metrics.json`` (``path``: the folder or a file in
    it), or None."""
    metrics = read_json((path if path.is_dir() else path.parent) / "metrics.json") or {}
    value = metrics.get("out_dim")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class LiveLossPlot:
    """A ``fit`` callback redrawing :func:`plot_log` every ``every`` steps in a live notebook.

    Under papermill, in scripts, or with ``LABKIT_HEADLESS=1`` it does nothing (the progress bar
    reports); show ``plot_log(result.log)`` after training there.

    Args:
        every: steps between redraws.
    """

    def __init__(self, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"LiveLossPlot: every must be >= 1, got {every}")
        self.every = every
        self._handle: Any = None
        self.draws = 0

    @property
    def active(self) -> bool:
        return not is_headless()

    def __call__(self, record: dict, trainer: Any) -> None:
        if record["step"] % self.every or not self.active:
            return
        from IPython.display import display

        fig = plot_log(
            trainer.log,
            title=f"step {record['step']} / {trainer.config.steps}",
            out_dim=None if trainer.config.method == "timetuning" else trainer.config.out_dim,
        )
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        self.draws += 1
