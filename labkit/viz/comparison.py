"""Models compared frame by frame: one explorer row per model over the same clip and controls.

Each row is an :class:`labkit.viz.explorer.AttentionExplorer` of one model on the *same* frames
(read once), showing the same panels::

    model 1:  frame | [CLS] heads as R, G, B | DoRA objects | k-means segments [| norms ...]
    model 2:  frame | ...

One state drives every row: the frame (one slider), the block, the three heads, k, the opacity
and Sinkhorn-Knopp. ``layer`` may count from the end (``-1``: each model's last block), so
models of different depths stay comparable; heads must exist in every model. Each row's label
comes with its weights (:func:`labkit.models.weights_label`). Caching is the explorers' own.

Models are given as loaded backbones, ``(label, backbone)`` pairs, or model specs of the
evaluation lab, ``"LABEL=ARCH[:CHECKPOINT|:pretrained|:auto|:random]"``
(:func:`labkit.specs.parse_model_spec`), e.g. ``["random=vit_small_patch16_224",
"dino=vit_small_patch16_224.dino", "demo=vit_small_patch16_224:runs/train/checkpoint.pth"]``.

Notation: M models, T frames, H x W frame pixels, n panels per row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch

from labkit.artifacts import Artifacts, token_artifacts
from labkit.environment import is_headless
from labkit.models import prepare_images, weights_label
from labkit.pos_embed import PosEmbedRule
from labkit.specs import ModelSpec, parse_model_spec
from labkit.viz.artifacts import plot_artifacts
from labkit.viz.explorer import (
    PANELS,
    AttentionExplorer,
    ExplorerState,
    _load_clip,
    _shared_controls,
    _state_controls,
    _state_of,
)
from labkit.viz.plot import plot_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ModelComparison"]

ModelEntry = Any  # torch.nn.Module | str | labkit.specs.ModelSpec | tuple[str, torch.nn.Module]


class ModelComparison:
    """Several models on one clip, one row of panels each, on one frame slider.

    Args:
        video: as :class:`AttentionExplorer` (path, Video, or uint8 frames (T, H, W, 3)).
        models: backbones, ``(label, backbone)`` pairs, model spec strings or
            :class:`labkit.specs.ModelSpec` (see the module docstring); at least one.
        labels: one label per model, overriding the spec's or the default (the weights' label).
        start_frame, num_frames, frame_step, indices, img_size: the clip, read once for all rows.
        model_kwargs, pos_embed_rule: passed when a spec is loaded (e.g. ``{"depth": 2}`` in tests).
        layer, heads, k, alpha, sinkhorn: the shared initial state (:class:`ExplorerState`).
        device, batch_size, seed, progress, image_format, cache_mb, panel_width, panels: as
            :class:`AttentionExplorer`, for every row (``seed`` also seeds random-init specs).
        name: what titles call the clip (default: the video's file name, ``"frames"`` for an array).
    """

    def __init__(
        self,
        video: Any,
        models: Sequence[ModelEntry],
        *,
        labels: Sequence[str] | None = None,
        start_frame: int = 0,
        num_frames: int = 100,
        frame_step: int = 1,
        indices: Sequence[int] | None = None,
        img_size: int | tuple[int, int] | None = 224,
        model_kwargs: dict[str, Any] | None = None,
        pos_embed_rule: PosEmbedRule = "auto",
        layer: int = -1,
        heads: Sequence[int] = (0, 1, 2),
        k: int = 5,
        alpha: float = 0.5,
        sinkhorn: bool = True,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = True,
        image_format: Literal["jpeg", "png"] = "jpeg",
        cache_mb: float = 256.0,
        panel_width: int | None = None,
        panels: Sequence[str] | Literal["all"] = PANELS,
        name: str | None = None,
    ) -> None:
        models = list(models)
        if not models:
            raise ValueError("ModelComparison: give at least one model")
        if labels is not None and len(labels) != len(models):
            raise ValueError(f"ModelComparison: {len(models)} models but {len(labels)} labels")
        clip_name = name
        frames, numbers, name = _load_clip(
            video, indices, start_frame, num_frames, frame_step, img_size
        )
        loaded = [
            _load(
                entry,
                device=device,
                seed=seed,
                model_kwargs=model_kwargs,
                pos_embed_rule=pos_embed_rule,
            )
            for entry in models
        ]
        self.labels = (
            [str(lab) for lab in labels] if labels is not None else [lab for lab, _ in loaded]
        )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(
                f"ModelComparison: labels repeat ({self.labels}); give each model its own"
            )
        blocks: list[Any] = [m.blocks for _, m in loaded]  # timm's Blocks (untyped attributes)
        depths = [len(b) for b in blocks]
        num_heads = [int(b[0].attn.num_heads) for b in blocks]
        self.min_depth, self.min_heads = min(depths), min(num_heads)
        if not -self.min_depth <= layer < self.min_depth:
            raise ValueError(
                f"layer {layer} out of range: the shallowest model has {self.min_depth} blocks"
            )
        self.same_depth = len(set(depths)) == 1
        if not self.same_depth and layer >= 0:
            raise ValueError(
                f"the models have {sorted(set(depths))} blocks: give layer counted from the "
                f"end (-1: each model's last block), not {layer}"
            )
        self.explorers = [
            AttentionExplorer(
                frames,
                model,
                indices=numbers,
                layer=layer,
                heads=heads,
                k=k,
                alpha=alpha,
                sinkhorn=sinkhorn,
                device=device,
                batch_size=batch_size,
                seed=seed,
                progress=progress,
                image_format=image_format,
                cache_mb=cache_mb / len(loaded),
                panel_width=panel_width,
                panels=panels,
            )
            for _, model in loaded
        ]
        panel_sets = {e.panels for e in self.explorers}
        if len(panel_sets) != 1:  # "all" gives a registers panel only to register models
            union = [p for p in self.explorers[0].panels]
            for e in self.explorers[1:]:
                union += [p for p in e.panels if p not in union]
            for e in self.explorers:
                e.panels = tuple(union)
        self.frames = self.explorers[0].frames
        self.indices = numbers
        self.name = name if clip_name is None else str(clip_name)
        self.weights = [e.weights for e in self.explorers]
        self._ui: dict[str, Any] = {}
        self.last_update_ms: float | None = None
        self._artifacts: dict[int, Artifacts] = {}
        self.state = self._validated(
            ExplorerState(
                0, layer, cast("tuple[int, int, int]", tuple(heads)), k, alpha, bool(sinkhorn)
            )
        )

    # ---- state ----------------------------------------------------------------------------
    def _validated(self, state: ExplorerState) -> ExplorerState:
        if not -self.min_depth <= state.layer < self.min_depth:
            raise ValueError(
                f"layer {state.layer} out of range: the shallowest model has {self.min_depth} "
                "blocks"
            )
        if not self.same_depth and state.layer >= 0:
            raise ValueError(
                f"the models differ in depth: give layer counted from the end, not {state.layer}"
            )
        for explorer in self.explorers:
            explorer._validated(state)  # heads, frame, k, alpha for every model
        heads = cast("tuple[int, int, int]", tuple(int(h) for h in state.heads))  # three: checked
        return ExplorerState(
            int(state.frame),
            int(state.layer),
            heads,
            int(state.k),
            float(state.alpha),
            bool(state.sinkhorn),
        )

    def set(self, **changes: Any) -> ExplorerState:
        """Change the shared state (``frame``, ``layer``, ``heads``, ``k``, ``alpha``,
        ``sinkhorn``).

        Returns:
            The new, validated state (``layer`` as given; each row normalises it to its depth).
        """
        self.state = self._validated(replace(self.state, **changes))
        if self._ui:
            self._sync_controls()
            self._refresh()
        return self.state

    @property
    def panels(self) -> tuple[str, ...]:
        """The panels of every row, in order."""
        return self.explorers[0].panels

    # ---- render ---------------------------------------------------------------------------
    def rows(self, state: ExplorerState | None = None) -> list[np.ndarray]:
        """Each model's row of panels for a state: M arrays uint8 (H, n W, 3)."""
        s = self.state if state is None else self._validated(state)
        return [explorer.render(s) for explorer in self.explorers]

    def render(self, state: ExplorerState | None = None) -> np.ndarray:
        """The rows stacked, one per model in order: uint8 (M H, n W, 3)."""
        return np.concatenate(self.rows(state), axis=0)

    def title(self, state: ExplorerState | None = None) -> str:
        """One line saying what every row shows."""
        s = self.state if state is None else state
        layer = s.layer if self.same_depth else f"{s.layer} (counted from each model's end)"
        return (
            f"{self.name} frame {self.indices[s.frame]} ({s.frame + 1}/{len(self.frames)}) | "
            f"layer {layer} | heads {s.heads} as R,G,B | DoRA objects, Sinkhorn-Knopp "
            f"{'on' if s.sinkhorn else 'off'} | k-means k={s.k} | opacity {s.alpha:.2f}"
        )

    def figure(self, state: ExplorerState | None = None) -> Figure:
        """A state as a static Figure: one row per model (label and weights at its left), one
        column per panel, every row on the same frame, block, heads and k; past four panels each
        model's row goes on in lines of at most three (row title ``"label (cont.)"``)."""

        s = self.state if state is None else self._validated(state)
        n = len(self.panels)
        per = (
            n if n <= 4 else -(-n // -(-n // 3))
        )  # more than 4 panels: each model's row in lines of <= 3
        rows, row_titles, titles = [], [], []
        for label, weights, explorer in zip(self.labels, self.weights, self.explorers):
            images, names = (
                [explorer.panel(name, s) for name in self.panels],
                explorer.panel_titles(s),
            )
            for start in range(0, n, per):
                rows.append(images[start : start + per])
                titles.append(names[start : start + per])
                row_titles.append(
                    f"{label}\n{_wrap(weights)}" if start == 0 else f"{label} (cont.)"
                )
        same = all(t == titles[0] for t in titles) and per == n
        return plot_grid(
            rows,
            row_titles=row_titles,
            col_titles=titles[0] if same else titles,
            suptitle=self.title(s),
            panel_size=2.6,
            max_columns=None,
        )

    def save_png(self, path: str | Path, state: ExplorerState | None = None) -> Path:
        """Write :meth:`figure` as a PNG (110 dpi); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure(state).savefig(path, dpi=110, bbox_inches="tight")
        return path

    # ---- artifacts ------------------------------------------------------------------------
    def artifacts(self, model: int) -> Artifacts:
        """Token norms, outliers and attention of every block of one model over the clip, cached
        (:func:`labkit.artifacts.token_artifacts`; register maps at the state's block when first
        asked).

        Args:
            model: the row, 0 .. M-1.
        """
        if model not in self._artifacts:
            explorer = self.explorers[model]
            layer = self.state.layer % explorer.depth
            parts = [
                token_artifacts(
                    explorer.model,
                    prepare_images(
                        self.frames[i : i + explorer.batch_size],
                        explorer.model,
                        device=explorer.device,
                    ),
                    register_layers=(layer,),
                ).cpu()
                for i in range(0, len(self.frames), explorer.batch_size)
            ]
            self._artifacts[model] = Artifacts.concat(parts)
        return self._artifacts[model]

    def figures_artifacts(self, frame: int | None = None, max_layers: int = 8) -> list[Figure]:
        """One artifacts figure per model (:func:`labkit.viz.artifacts.plot_artifacts`), label and
        weights in each title.

        Args:
            frame: position in the clip; default: per model, the frame with the most outliers at
                its last block.
            max_layers: most norm maps per figure.
        """

        figures = []
        for i, (label, weights) in enumerate(zip(self.labels, self.weights)):
            art = self.artifacts(i)
            t = (
                int(art.outliers[:, -1].flatten(1).sum(-1).argmax())
                if frame is None
                else int(frame)
            )
            figures.append(
                plot_artifacts(
                    art,
                    self.frames,
                    self.explorers[i].patch_size,
                    frame=t,
                    frame_label=f"frame {self.indices[t]}",
                    title=f"{label}: high-norm tokens, [CLS] and register attention ({weights})",
                    max_layers=max_layers,
                    register_layer=art.register_layers[0] if art.register_layers else None,
                )
            )
        return figures

    def metrics(self) -> dict[str, Any]:
        """Per model label: its weights and the artifact numbers of every block
        (JSON-serialisable).
        """
        out = {}
        for i, (label, weights) in enumerate(zip(self.labels, self.weights)):
            art = self.artifacts(i)
            register = art.cls_register_mass
            out[label] = {
                "weights": weights,
                "num_registers": int(art.num_registers),
                "outlier_fraction_per_layer": [
                    round(float(v), 5) for v in art.outlier_fraction().mean(0)
                ],
                "cls_outlier_mass_per_layer": [
                    round(float(v), 5) for v in art.cls_outlier_mass.mean((0, 2))
                ],
                "cls_register_mass_per_layer": None
                if register is None
                else [round(float(v), 5) for v in register.mean((0, 2))],
            }
        return out

    # ---- widgets --------------------------------------------------------------------------
    def widget(self) -> Any:
        """The ipywidgets app (built once): one frame slider with play, block, heads,
        Sinkhorn-Knopp, k, opacity, a progress bar, then one row of panels per model under its
        label."""
        if self._ui:
            return self._ui["app"]
        import ipywidgets as w

        s, ui = self.state, self._ui
        last = len(self.frames) - 1
        ui.update(_shared_controls(w, s, last_frame=last, num_heads=self.min_heads, interval=150))
        options = (
            list(range(self.min_depth))
            if self.same_depth
            else [
                (f"{i} ({'last' if i == -1 else 'from the end'})", i)
                for i in range(-1, -self.min_depth - 1, -1)
            ]
        )
        ui["layer"] = w.Dropdown(
            options=options,
            value=s.layer % self.min_depth if self.same_depth else s.layer,
            description="layer",
            layout=w.Layout(width="200px"),
        )
        ui["status"] = w.Label(self.title())
        ui["images"] = []
        rows = []
        for label, weights, explorer in zip(self.labels, self.weights, self.explorers):
            images = {}
            for name in self.panels:
                image = w.Image(
                    format=explorer.image_format, layout=w.Layout(width=f"{explorer.panel_width}px")
                )
                image.add_class(f"labkit-panel-{name}")
                images[name] = image
            ui["images"].append(images)
            rows.append(
                w.VBox([w.HTML(f"<b>{label}</b> ({weights})"), w.HBox(list(images.values()))])
            )
        ui["syncing"] = False

        def on_change(_: Any = None) -> None:
            if ui["syncing"]:
                return
            self.state = self._validated(_state_of(ui))
            self._refresh()

        for control in _state_controls(ui):
            control.observe(on_change, names="value")

        def progress(done: int, total: int, what: str) -> None:
            ui["progress"].max = max(int(total), 1)
            ui["progress"].value = int(done)
            ui["busy"].value = f"{what}: {done}/{total}" if done < total else ""
            ui["progress"].layout.visibility = "visible" if done < total else "hidden"

        ui["on_progress"] = progress
        ui["progress"].layout.visibility = "hidden"
        ui["app"] = w.VBox(
            [
                w.HBox([ui["play"], ui["frame"], ui["layer"]]),
                w.HBox([*ui["heads"], ui["sinkhorn"], ui["k"], ui["alpha"]]),
                w.HBox([ui["progress"], ui["busy"]]),
                ui["status"],
                *rows,
            ]
        )
        ui["app"].add_class("labkit-comparison")
        return ui["app"]

    def _sync_controls(self) -> None:
        ui, s = self._ui, self.state
        ui["syncing"] = True
        try:
            ui["frame"].value = s.frame
            ui["layer"].value = s.layer % self.min_depth if self.same_depth else s.layer
            for control, h in zip(ui["heads"], s.heads):
                control.value = h
            ui["k"].value, ui["alpha"].value, ui["sinkhorn"].value = s.k, s.alpha, s.sinkhorn
        finally:
            ui["syncing"] = False

    def _refresh(self) -> None:
        """Compute what is missing (progress bar), then swap in every row's panels."""
        ui, s = self._ui, self.state
        start = time.perf_counter()
        for explorer, images in zip(self.explorers, ui["images"]):
            explorer._on_progress = ui["on_progress"]
            try:
                explorer.compute(s)
                for name, image in images.items():
                    data = explorer.encoded(name, s)
                    if image.value != data:
                        image.value = data
            finally:
                explorer._on_progress = None
        self.last_update_ms = (time.perf_counter() - start) * 1e3
        ui["status"].value = self.title(s)

    def show(self, static: bool | None = None) -> None:
        """Display the live app, or the static :meth:`figure` when headless (``static=None``:
        detect).
        """
        from IPython.display import display

        static = is_headless() if static is None else static
        if static:
            display(self.figure())
            return
        display(self.widget())
        self._refresh()


def _wrap(text: str, width: int = 24) -> str:
    """Break a weights label at ', ' so a row title stays narrow."""
    lines, line = [], ""
    for part in text.split(", "):
        candidate = f"{line}, {part}" if line else part
        if line and len(candidate) > width:
            lines.append(line + ",")
            line = part
        else:
            line = candidate
    return "\n".join([*lines, line])


def _load(
    entry: ModelEntry,
    *,
    device: str | torch.device,
    seed: int,
    model_kwargs: dict[str, Any] | None,
    pos_embed_rule: PosEmbedRule,
) -> tuple[str, torch.nn.Module]:
    """(label, backbone) of one model entry (module, (label, module), spec string or ModelSpec)."""

    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], torch.nn.Module):
        return str(entry[0]), entry[1]
    if isinstance(entry, torch.nn.Module):
        return weights_label(entry), entry
    if isinstance(entry, str):
        entry = parse_model_spec(entry)
    if isinstance(entry, ModelSpec):
        model = entry.load(
            device=device, seed=seed, model_kwargs=model_kwargs, pos_embed_rule=pos_embed_rule
        )
        return entry.label, model
    raise ValueError(
        f"ModelComparison: a model must be a backbone, a (label, backbone) pair or a model spec "
        f"'LABEL=ARCH[:CHECKPOINT|:pretrained]', got {type(entry).__name__}"
    )
