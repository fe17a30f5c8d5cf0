"""An ipywidgets explorer over one clip: scrub frames, switch layer, heads and k.

Computation is cached: each layer's [CLS] attention and patch features are extracted once for the
whole clip (one batched pass, progress bar while it fills), and each (layer, k) clip-level k-means
once. Moving the frame slider over cached data only renders arrays.

Outside a live JupyterLab front end (papermill, nbconvert, ``LABKIT_HEADLESS=1``) :meth:`show`
renders the current state as a static figure, so an executed notebook shows something useful.

Notation: T frames, h heads, gh x gw patch grid, D channels, H x W frame pixels.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["AttentionExplorer", "ExplorerState", "is_headless"]


def is_headless() -> bool:
    """True when widgets cannot be shown live: under ``labkit run``/papermill or outside IPython."""
    if os.environ.get("LABKIT_HEADLESS", "") not in ("", "0"):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    return shell is None or not hasattr(shell, "kernel")


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows: frame position in the clip, block, the R/G/B heads, k, opacity."""

    frame: int = 0
    layer: int = -1
    heads: tuple[int, int, int] = (0, 1, 2)
    k: int = 5
    alpha: float = 0.5


class AttentionExplorer:
    """Interactive per-head attention and k-means segments of one clip.

    Args:
        frames: uint8 (T, H, W, 3) RGB frames (already at the size fed to the model).
        model: a backbone from :func:`labkit.models.load_backbone`.
        indices: frame numbers in the video, for titles (default 0..T-1).
        layer, heads, k, alpha: the initial state.
        device: where the model runs.
        batch_size: frames per forward pass while filling the cache.
        seed: k-means seed.
        progress: show a progress bar while a layer is extracted.
    """

    def __init__(
        self,
        frames: np.ndarray,
        model: torch.nn.Module,
        *,
        indices: Sequence[int] | None = None,
        layer: int = -1,
        heads: Sequence[int] = (0, 1, 2),
        k: int = 5,
        alpha: float = 0.5,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        from labkit.models import patch_size

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        self.frames = frames
        self.model = model
        self.indices = list(range(len(frames))) if indices is None else [int(i) for i in indices]
        self.depth = len(model.blocks)
        self.num_heads = model.blocks[0].attn.num_heads
        self.patch_size = patch_size(model)
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._segments: dict[tuple[int, int], torch.Tensor] = {}
        self._widget: Any = None
        self.state = self._validated(
            ExplorerState(frame=0, layer=layer, heads=tuple(heads), k=k, alpha=alpha)
        )

    @classmethod
    def from_exploration(cls, exp: Any, **kwargs: Any) -> AttentionExplorer:
        """Reuse the model and what :func:`labkit.explore.explore` computed for its layer."""
        cfg = exp.config
        explorer = cls(
            exp.frames, exp.model, indices=exp.indices, layer=cfg.layer, heads=cfg.heads, k=cfg.k,
            device=cfg.device, batch_size=cfg.batch_size, seed=cfg.seed, **kwargs,
        )
        layer = explorer.state.layer
        explorer._layers[layer] = (exp.attention, exp.features)
        explorer._segments[(layer, cfg.k)] = exp.segments_clip
        return explorer

    # ---- state ----------------------------------------------------------------------------
    def _validated(self, state: ExplorerState) -> ExplorerState:
        layer = state.layer % self.depth if -self.depth <= state.layer < self.depth else None
        if layer is None:
            raise ValueError(f"layer {state.layer} out of range: the model has {self.depth} blocks")
        if len(state.heads) != 3 or not all(0 <= h < self.num_heads for h in state.heads):
            raise ValueError(f"heads must be three indices in 0..{self.num_heads - 1}, got {state.heads}")
        if not 0 <= state.frame < len(self.frames):
            raise ValueError(f"frame {state.frame} out of range: the clip has {len(self.frames)} frames")
        if state.k < 2:
            raise ValueError(f"k must be >= 2, got {state.k}")
        if not 0.0 <= state.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {state.alpha}")
        return ExplorerState(state.frame, layer, tuple(int(h) for h in state.heads), int(state.k),
                             float(state.alpha))

    def set(self, **changes: Any) -> ExplorerState:
        """Change the state (``frame``, ``layer``, ``heads``, ``k``, ``alpha``) and return it."""
        from dataclasses import replace

        self.state = self._validated(replace(self.state, **changes))
        return self.state

    # ---- cached compute -------------------------------------------------------------------
    def layer_data(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention (T, h, gh, gw) and patch tokens (T, gh, gw, D) of one block, cached."""
        layer = layer % self.depth
        if layer not in self._layers:
            from labkit.attention import extract
            from labkit.models import prepare_images

            attn, feats = [], []
            starts = range(0, len(self.frames), self.batch_size)
            if self.progress:
                from tqdm.auto import tqdm

                starts = tqdm(starts, desc=f"layer {layer}", unit="batch", leave=False)
            for s in starts:
                images = prepare_images(self.frames[s : s + self.batch_size], self.model, device=self.device)
                out = extract(self.model, images, layer=layer, attention=True, kinds=("tokens",))
                attn.append(out.attention.float().cpu())
                feats.append(out.features["tokens"].float().cpu())
            self._layers[layer] = (torch.cat(attn), torch.cat(feats))
        return self._layers[layer]

    def segments(self, layer: int, k: int) -> torch.Tensor:
        """One k-means over the whole clip's patch tokens: int64 (T, gh, gw), cached."""
        layer = layer % self.depth
        key = (layer, k)
        if key not in self._segments:
            from labkit.clustering import kmeans_segments

            _, feats = self.layer_data(layer)
            self._segments[key] = kmeans_segments(feats, k, mode="clip", seed=self.seed).labels
        return self._segments[key]

    # ---- render ---------------------------------------------------------------------------
    def render(self, state: ExplorerState | None = None) -> np.ndarray:
        """The view of a state: RGB heads over the frame | heads as RGB | segments. uint8 (H, 3W, 3)."""
        from labkit.viz.render import heads_to_rgb, overlay, segment_overlay

        s = self.state if state is None else self._validated(state)
        attn, _ = self.layer_data(s.layer)
        frame = self.frames[s.frame]
        size = frame.shape[:2]
        rgb = heads_to_rgb(attn[s.frame], s.heads, size=size, patch_size=self.patch_size)
        seg = segment_overlay(frame, self.segments(s.layer, s.k)[s.frame], alpha=s.alpha,
                              patch_size=self.patch_size)
        return np.concatenate([overlay(frame, rgb, alpha=s.alpha), rgb, seg], axis=1)

    def title(self, state: ExplorerState | None = None) -> str:
        s = self.state if state is None else state
        return (f"frame {self.indices[s.frame]} | layer {s.layer} | heads {s.heads} as R,G,B | "
                f"k-means k={s.k}")

    def figure(self) -> Figure:
        """The current state as a static matplotlib Figure."""
        from labkit.viz.plot import plot_strip

        return plot_strip([self.render()], suptitle=self.title(), panel_size=3.5)

    # ---- widgets --------------------------------------------------------------------------
    def _png(self) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.render()).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def widget(self) -> Any:
        """The ipywidgets app (built once): frame slider with play, layer, heads, k, opacity."""
        if self._widget is not None:
            return self._widget
        import ipywidgets as w

        s = self.state
        last = len(self.frames) - 1
        frame = w.IntSlider(value=s.frame, min=0, max=last, description="frame", continuous_update=True)
        play = w.Play(value=s.frame, min=0, max=last, interval=150, description="play")
        w.jslink((play, "value"), (frame, "value"))
        layer = w.Dropdown(options=list(range(self.depth)), value=s.layer, description="layer")
        heads = [
            w.Dropdown(options=list(range(self.num_heads)), value=h, description=c, layout=w.Layout(width="150px"))
            for h, c in zip(s.heads, ("R", "G", "B"))
        ]
        k = w.IntSlider(value=s.k, min=2, max=20, description="k", continuous_update=False)
        alpha = w.FloatSlider(value=s.alpha, min=0.0, max=1.0, step=0.05, description="opacity")
        image = w.Image(value=self._png(), format="png")
        label = w.Label(self.title())

        def update(_: Any = None) -> None:
            self.set(frame=frame.value, layer=layer.value, heads=tuple(h.value for h in heads),
                     k=k.value, alpha=alpha.value)
            image.value = self._png()
            label.value = self.title()

        for control in (frame, layer, k, alpha, *heads):
            control.observe(update, names="value")
        self._widget = w.VBox([w.HBox([play, frame, layer]), w.HBox([*heads, k, alpha]), label, image])
        return self._widget

    def show(self, static: bool | None = None) -> None:
        """Display the live widget, or a static figure when headless (``static=None``: detect)."""
        from IPython.display import display

        static = is_headless() if static is None else static
        display(self.figure() if static else self.widget())
