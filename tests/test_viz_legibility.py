"""Figures legible where they are viewed: wrapped strips, fixed text sizes, colour bars, head
colours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.viz import mask_overlay, plot_grid, plot_strip
from labkit.viz.plot import MAX_WIDTH, TITLE_SIZE
from labkit.viz.render import HEAD_COLOURS

H, W = 36, 64  # a 16:9 frame


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8))


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_strip_of_eight_wraps_into_two_rows_of_four():
    fig = plot_strip(_frames(8), titles=[f"frame {i}" for i in range(8)])
    axes = _image_axes(fig)
    assert len(axes) == 8
    rows = sorted({round(ax.get_position().y0, 3) for ax in axes})
    cols = sorted({round(ax.get_position().x0, 3) for ax in axes})
    assert len(rows) == 2 and len(cols) == 4
    assert [ax.get_title() for ax in axes] == [f"frame {i}" for i in range(8)]
    one_row = plot_strip(_frames(8), max_columns=None)
    assert len({round(ax.get_position().y0, 3) for ax in _image_axes(one_row)}) == 1


@pytest.mark.parametrize("n, widths", [(5, [3, 2]), (6, [3, 3]), (12, [4, 4, 4]), (3, [3])])
def test_wrapping_is_balanced(n, widths):
    fig = plot_grid([_frames(n)], max_columns=4)
    axes = np.array(fig.axes).reshape(len(widths), -1)
    assert [sum(bool(ax.images) for ax in row) for row in axes] == widths


def test_equal_rows_wrap_in_blocks_keeping_a_frame_in_one_column():
    frames = _frames(8)
    rows = [frames, [f // 2 for f in frames], [255 - f for f in frames]]
    fig = plot_grid(rows, row_titles=["a", "b", "c"], col_titles=[f"t{i}" for i in range(8)])
    axes = np.array(fig.axes).reshape(6, 4)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b", "c", "a", "b", "c"]
    assert [ax.get_title() for ax in axes[0]] == ["t0", "t1", "t2", "t3"]
    assert [ax.get_title() for ax in axes[3]] == ["t4", "t5", "t6", "t7"]
    assert [ax.get_title() for ax in axes[1]] == ["", "", "", ""]
    np.testing.assert_array_equal(axes[4, 1].images[0].get_array(), rows[1][5])  # row b, frame 5


def test_ragged_rows_wrap_one_after_the_other():
    frames = _frames(6)
    fig = plot_grid(
        [frames, frames[:2]],
        row_titles=["heads", "rgb"],
        col_titles=[[f"h{i}" for i in range(6)], ["x", "y"]],
    )
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["heads", "heads", "rgb"]
    assert [ax.get_title() for ax in axes[1]] == ["h3", "h4", "h5"]
    assert [ax.get_title() for ax in axes[2][:2]] == ["x", "y"] and not axes[2, 2].axison


def test_text_is_legible_on_a_1400_px_page():
    """Titles at least ~12 px once the figure (saved at 110 dpi) is shown 1400 px wide or less."""
    fig = plot_grid(
        [_frames(8)] * 3,
        row_titles=["a", "b", "c"],
        col_titles=[str(i) for i in range(8)],
        suptitle="title",
    )
    width_in = fig.get_size_inches()[0]
    assert width_in <= MAX_WIDTH + 1.0
    shown = min(1.0, 1400 / (width_in * 110))  # scale of the PNG on the page
    title = next(ax for ax in fig.axes if ax.get_title()).title
    assert title.get_fontsize() == TITLE_SIZE
    assert title.get_fontsize() * 110 / 72 * shown >= 12
    assert fig.axes[0].yaxis.label.get_fontsize() == TITLE_SIZE


def test_colour_bars_on_single_channel_maps():
    rng = np.random.default_rng(0)
    heat = [rng.random((H, W)) for _ in range(3)]
    own = plot_grid([heat], colorbar="norm")
    assert len(own.axes) == 3 + 3  # one bar per panel, each map on its own scale
    assert own.axes[3].get_ylabel() == "norm"
    shared = plot_grid([heat], colorbar=True, vmin=0.0, vmax=1.0)
    assert len(shared.axes) == 3 + 1
    assert shared.axes[0].images[0].get_clim() == (0.0, 1.0)
    rgb = plot_grid([_frames(3)], colorbar=True)
    assert len(rgb.axes) == 3  # nothing to scale: no bars
    none = plot_grid([heat])
    assert len(none.axes) == 3


def test_heat_map_over_a_frame():
    frame = _frames(1)[0]
    heat = np.linspace(0, 1, H * W).reshape(H, W)
    fig = plot_grid(
        [[(frame, heat)]], colorbar=True, vmin=0, vmax=1, heat_alpha=0.7, cmap="inferno"
    )
    ax = fig.axes[0]
    assert len(ax.images) == 2
    np.testing.assert_array_equal(ax.images[0].get_array(), frame)
    assert ax.images[1].get_alpha() == 0.7 and ax.images[1].get_cmap().name == "inferno"
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="pair"):
        plot_grid([[(frame, heat[:-1])]])
    with pytest.raises(ValueError, match="max_columns"):
        plot_grid([[frame]], max_columns=0)


def test_mask_overlay_halo():
    frame = np.full((20, 20, 3), 200, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    plain = mask_overlay(frame, mask, color=(255, 0, 0), alpha=0.0)
    halo = mask_overlay(frame, mask, color=(255, 0, 0), alpha=0.0, halo=True)
    np.testing.assert_array_equal(halo[mask], plain[mask])  # inside: the same
    ring = np.zeros_like(mask)
    ring[4:16, 4:16] = True
    ring &= ~mask
    assert (halo[ring] == 0).all() and (plain[ring] == 200).all()
    outside = ~np.pad(np.ones((12, 12), bool), 4)
    np.testing.assert_array_equal(halo[outside], frame[outside])
    clip = mask_overlay(np.stack([frame, frame]), np.stack([mask, mask]), halo=True)
    assert clip.shape == (2, 20, 20, 3) and clip.dtype == np.uint8


def test_exploration_masks_in_their_heads_colours():
    from labkit.explore import Exploration, ExploreConfig

    T, h, g, p = 2, 4, 4, 8
    masks = torch.zeros(T, h, g, g, dtype=torch.bool)
    masks[:, 2, :2, :2] = True  # head 2, top left
    masks[:, 0, 2:, 2:] = True  # head 0, bottom right
    masks[:, 3, :2, 2:] = True  # head 3 (not chosen), top right
    exp = Exploration(
        config=ExploreConfig(heads=(2, 0, 3)),
        indices=np.arange(T),
        frames=np.full((T, g * p, g * p, 3), 128, np.uint8),
        attention=torch.rand(T, h, g, g),
        features=torch.rand(T, g, g, 8),
        masks=masks,
        segments_frame=torch.zeros(T, g, g, dtype=torch.long),
        segments_clip=torch.zeros(T, g, g, dtype=torch.long),
        patch_size=p,
    )
    out = exp.mask_overlays()
    assert out.shape == (T, g * p, g * p, 3) and out.dtype == np.uint8
    # contour pixels (inner edges; the frame border is not an edge) in the head's colour:
    # R for heads[0] = 2, G for heads[1] = 0, B for heads[2] = 3
    np.testing.assert_array_equal(out[0, 15, 0], HEAD_COLOURS[0])
    np.testing.assert_array_equal(out[0, 31, 16], HEAD_COLOURS[1])
    np.testing.assert_array_equal(out[0, 0, 16], HEAD_COLOURS[2])
    one = exp.mask_overlays(0)
    np.testing.assert_array_equal(one[1, 31, 16], HEAD_COLOURS[1])
    np.testing.assert_array_equal(one[1, 0, 0], [128, 128, 128])  # head 2 not drawn
    np.testing.assert_array_equal(exp.mask_overlays(), out)  # deterministic


def test_token_norm_maps_have_colour_bars(small_video):
    from labkit.explore import ExploreConfig, explore

    exp = explore(
        ExploreConfig(
            video_path=str(small_video),
            model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 3},
            num_frames=2,
            img_size=64,
            k=2,
        ),
        progress=False,
    )
    fig = exp.figure_artifacts(frame=0)
    bars = [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    norms = exp.artifacts.norms[0]  # (L, gh, gw)
    assert len(bars) == norms.shape[0]  # one per block shown (2 blocks)
    for bar, n in zip(bars, norms):
        lo, hi = bar.mappable.get_clim()
        assert lo == pytest.approx(float(n.min()))
        assert hi == pytest.approx(exp.artifacts.factor * float(n.flatten().median()))
        assert bar.mappable.get_cmap().name == "magma"
