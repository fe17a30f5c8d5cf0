"""labkit.viz: shapes, dtypes, ranges, patch alignment and agreement with reference computations."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import viz
from labkit.viz import (
    features_to_rgb,
    heads_to_rgb,
    mask_overlay,
    overlay,
    palette,
    plot_attention_strip,
    plot_grid,
    plot_strip,
    segment_overlay,
    segments_to_rgb,
    upsample_map,
    write_animation,
)

GH, GW, P = 3, 4, 8
H, W = GH * P + 5, GW * P + 7  # a frame that is not a multiple of the patch size


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, H, W, 3), dtype=np.uint8)


def test_import_is_light():
    code = (
        "import sys, labkit.viz; heavy = [m for m in ('matplotlib', 'av', 'PIL', 'torch', "
        "'scipy') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(viz.__all__) == sorted(n for n in viz.__all__ if callable(getattr(viz, n)))


# ------------------------------------------------------------------------------------- palette
def test_palette_fixed_distinct_and_prefix_stable():
    import matplotlib

    p = palette(300)
    assert p.shape == (300, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 300  # all distinct
    tab20 = {tuple(int(round(v * 255)) for v in c) for c in matplotlib.colormaps["tab20"].colors}
    assert {tuple(int(v) for v in c) for c in p[:20]} == tab20
    np.testing.assert_array_equal(palette(7), p[:7])  # colours don't depend on n
    np.testing.assert_array_equal(palette(300), p)
    assert palette(0).shape == (0, 3)
    # the first ten are far apart
    d = np.abs(p[:10, None].astype(int) - p[None, :10].astype(int)).sum(-1)
    assert d[~np.eye(10, dtype=bool)].min() > 60
    with pytest.raises(ValueError, match="palette"):
        palette(-1)


# ---------------------------------------------------------------------------------- upsampling
def test_upsample_nearest_one_hot_lands_on_its_patch():
    for i in range(GH):
        for j in range(GW):
            grid = np.zeros((GH, GW), np.float32)
            grid[i, j] = 1.0
            up = upsample_map(grid, (H, W), patch_size=P)
            assert up.shape == (H, W) and up.dtype == np.float32
            expected = np.zeros((GH * P, GW * P), np.float32)
            expected[i * P : (i + 1) * P, j * P : (j + 1) * P] = 1.0
            np.testing.assert_array_equal(up[: GH * P, : GW * P], expected)
            # the strip beyond the grid repeats the last row / column
            np.testing.assert_array_equal(up[GH * P :], np.repeat(up[GH * P - 1 : GH * P], 5, 0))
            last_col = up[:, GW * P - 1 : GW * P]
            np.testing.assert_array_equal(up[:, GW * P :], np.repeat(last_col, 7, 1))


def test_upsample_bilinear_matches_torch_and_infers_patch_size():
    grid = np.random.default_rng(1).uniform(size=(2, GH, GW)).astype(np.float32)
    up = upsample_map(torch.from_numpy(grid), (H, W), mode="bilinear")  # patch size inferred
    assert up.shape == (H, W, 2)
    ref = (
        F.interpolate(
            torch.from_numpy(grid)[None], scale_factor=P, mode="bilinear", align_corners=False
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )  # (GH*P, GW*P, 2)
    np.testing.assert_allclose(up[: GH * P, : GW * P], ref, atol=1e-6)
    np.testing.assert_array_equal(up[-1, : GW * P], up[GH * P - 1, : GW * P])
    assert up.min() >= grid.min() - 1e-6 and up.max() <= grid.max() + 1e-6


@pytest.mark.parametrize(
    "grid,size,expected",
    [
        ((14, 14), (224, 224), 16),
        ((14, 14), (238, 239), 16),
        ((30, 53), (480, 854), 16),
        ((60, 106), (480, 854), 8),
        ((16, 16), (224, 224), 14),
        ((3, 4), (29, 39), 8),
    ],
)
def test_upsample_infers_the_patch_size(grid, size, expected):
    one_hot = np.zeros(grid, np.float32)
    one_hot[-1, -1] = 1.0
    up = upsample_map(one_hot, size)
    gh, gw = grid
    assert up[gh * expected - 1, gw * expected - 1] == 1.0
    assert up[(gh - 1) * expected - 1, (gw - 1) * expected - 1] == 0.0
    assert up[(gh - 1) * expected, (gw - 1) * expected] == 1.0


def test_upsample_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="patch_size"):
        upsample_map(np.zeros((GH, GW)), (H, W), patch_size=P + 2)
    with pytest.raises(ValueError, match="patch size"):
        upsample_map(np.zeros((GH, GW)), (H, 3 * W))
    with pytest.raises(ValueError, match="mode"):
        upsample_map(np.zeros((GH, GW)), (H, W), mode="cubic")


# -------------------------------------------------------------------------------- heads_to_rgb
def test_heads_to_rgb_normalises_each_head():
    scales = np.array([1, 5, 0.1, 2, 1, 3], np.float32)[:, None, None]
    attn = np.random.default_rng(2).uniform(size=(6, GH, GW)).astype(np.float32) * scales
    rgb = heads_to_rgb(attn, heads=(3, 0, 5))
    assert rgb.shape == (GH, GW, 3) and rgb.dtype == np.uint8
    for c, h in enumerate((3, 0, 5)):
        a = attn[h]
        expected = np.rint((a - a.min()) / (a.max() - a.min()) * 255)
        np.testing.assert_array_equal(rgb[..., c], expected)
    np.testing.assert_array_equal(heads_to_rgb(torch.from_numpy(attn), heads=(3, 0, 5)), rgb)


def test_heads_to_rgb_constant_head_is_zero_and_upsampling_is_aligned():
    attn = np.zeros((3, GH, GW), np.float32)
    attn[0, 1, 2] = 0.7  # one hot patch in the red head
    attn[1] = 0.25  # a constant head
    attn[2] = np.arange(GH * GW).reshape(GH, GW)
    rgb = heads_to_rgb(attn, size=(H, W), patch_size=P)
    assert rgb.shape == (H, W, 3)
    red = np.zeros((H, W), np.uint8)
    red[P : 2 * P, 2 * P : 3 * P] = 255
    np.testing.assert_array_equal(rgb[..., 0], red)
    assert (rgb[..., 1] == 0).all()  # constant -> 0, no NaN
    assert rgb[..., 2].min() == 0 and rgb[..., 2].max() == 255
    smooth = heads_to_rgb(attn, size=(H, W), mode="bilinear")
    assert smooth.shape == (H, W, 3) and smooth[..., 1].max() == 0


def test_heads_to_rgb_clip_normalisation():
    attn = torch.rand(4, 3, GH, GW)
    attn[2] *= 10  # frame 2 is much brighter
    per_frame = heads_to_rgb(attn)
    per_clip = heads_to_rgb(attn, norm="clip")
    assert per_frame.shape == per_clip.shape == (4, GH, GW, 3)
    assert (per_frame.reshape(4, -1, 3).max(1) == 255).all()
    assert per_clip[2].max() == 255 and per_clip[[0, 1, 3]].max() < 64
    with pytest.raises(ValueError, match="heads"):
        heads_to_rgb(attn, heads=(0, 1))
    with pytest.raises(ValueError, match="heads"):
        heads_to_rgb(attn, heads=(0, 1, 3))


# ------------------------------------------------------------------------------------- overlay
def test_overlay_alpha_endpoints_and_rgb(frames):
    rgb = heads_to_rgb(torch.rand(3, GH, GW), size=(H, W))
    f = frames[0]
    np.testing.assert_array_equal(overlay(f, rgb, alpha=0.0), f)
    np.testing.assert_array_equal(overlay(f, rgb, alpha=1.0), rgb)
    half = overlay(f, rgb, alpha=0.5)
    np.testing.assert_array_equal(half, np.rint((f.astype(float) + rgb) / 2).astype(np.uint8))
    # an RGB map at grid resolution is upsampled to the frame
    small = heads_to_rgb(torch.rand(3, GH, GW))
    big = overlay(f, small, alpha=1.0, mode="nearest")
    assert big[P + 1, P + 1].tolist() == small[1, 1].tolist()


def test_overlay_heat_uses_the_colormap(frames):
    import matplotlib

    heat = np.random.default_rng(3).uniform(size=(H, W)) * 4 + 1
    out = overlay(frames[0], heat, alpha=1.0, cmap="viridis")
    unit = (heat - heat.min()) / (heat.max() - heat.min())
    ref = np.rint(matplotlib.colormaps["viridis"](unit)[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, ref)
    fixed = overlay(frames[0], heat, alpha=1.0, cmap="viridis", vmin=0, vmax=10)
    assert fixed.max() < ref.max()  # a wider range leaves the top of the colormap unused
    clip = overlay(frames, torch.rand(3, GH, GW))  # (T,) frames with grid-resolution heat
    assert clip.shape == frames.shape and clip.dtype == np.uint8
    with pytest.raises(ValueError, match="overlay"):
        overlay(frames[0], heat, alpha=1.5)


# --------------------------------------------------------------------------------- mask_overlay
def test_mask_overlay_fill_and_contour(frames):
    f = frames[0]
    mask = np.zeros((H, W), bool)
    mask[5:15, 6:20] = True
    out = mask_overlay(f, mask, color=(255, 0, 0), alpha=0.5)
    assert out.shape == f.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], f[~mask])  # outside untouched
    contour = mask.copy()
    contour[6:14, 7:19] = False  # one-pixel ring
    assert (out[contour] == [255, 0, 0]).all()
    inner = mask & ~contour
    expected = np.rint(f[inner] * 0.5 + [127.5, 0, 0]).astype(np.uint8)
    np.testing.assert_array_equal(out[inner], expected)
    no_line = mask_overlay(f, mask, color=(255, 0, 0), alpha=0.0, contour=False)
    np.testing.assert_array_equal(no_line, f)


def test_mask_overlay_patch_masks_several_and_clip(frames):
    grid = np.zeros((2, GH, GW), bool)
    grid[0, 0, 0] = True
    grid[1, 2, 3] = True
    out = mask_overlay(frames[0], torch.from_numpy(grid), alpha=1.0, contour=False)
    colours = palette(6)
    assert (out[:P, :P] == colours[3]).all()  # first mask: red
    assert (out[2 * P :, 3 * P :] == colours[0]).all()  # second: blue, down into the edge strip
    untouched = np.ones((H, W), bool)
    untouched[:P, :P] = False
    untouched[2 * P :, 3 * P :] = False
    np.testing.assert_array_equal(out[untouched], frames[0][untouched])
    clip = mask_overlay(frames, np.ones((3, GH, GW), bool), color=(0, 255, 0))
    assert clip.shape == frames.shape
    per_head = mask_overlay(frames, np.ones((3, 2, GH, GW), bool), color=[(0, 255, 0), (0, 0, 9)])
    assert per_head.shape == frames.shape


# ------------------------------------------------------------------------------------- segments
def test_segments_to_rgb_colours_and_upsampling():
    labels = np.array([[0, 1, 2, -1], [3, 3, 0, 1], [2, 2, 2, 2]])
    rgb = segments_to_rgb(torch.from_numpy(labels))
    assert rgb.shape == (GH, GW, 3) and rgb.dtype == np.uint8
    pal = palette(4)
    for (i, j), lab in np.ndenumerate(labels):
        assert rgb[i, j].tolist() == ([0, 0, 0] if lab < 0 else pal[lab].tolist())
    up = segments_to_rgb(labels, size=(H, W))
    np.testing.assert_array_equal(up[: GH * P : P, : GW * P : P], rgb)
    np.testing.assert_array_equal(up[P : 2 * P, 2 * P : 3 * P], np.broadcast_to(pal[0], (P, P, 3)))
    custom = segments_to_rgb(labels.clip(0, 1), palette=[[1, 2, 3], [4, 5, 6]])
    assert custom[0, 1].tolist() == [4, 5, 6]
    with pytest.raises(ValueError, match="palette"):
        segments_to_rgb(labels, palette=[[1, 2, 3]])
    with pytest.raises(ValueError, match="integer"):
        segments_to_rgb(labels.astype(float))


def test_segment_overlay_same_label_same_colour_over_a_clip():
    frames = np.full((3, H, W, 3), 100, np.uint8)
    labels = torch.zeros(3, GH, GW, dtype=torch.long)
    labels[:, 1, 1] = 5
    labels[1, 1, 1] = 2
    out = segment_overlay(frames, labels, alpha=0.6)
    assert out.shape == frames.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0, 0, 0], out[1, 0, 0])  # label 0 everywhere the same colour
    assert not np.array_equal(out[0, P + 1, P + 1], out[1, P + 1, P + 1])
    full = segment_overlay(frames[0], labels[0], alpha=1.0)
    np.testing.assert_array_equal(full, segments_to_rgb(labels[0], size=(H, W)))
    labels[0, 0, 0] = -1
    assert segment_overlay(frames[0], labels[0])[0, 0].tolist() == [100, 100, 100]
    pixel_labels = np.zeros((H, W), np.int64)  # labels already at frame resolution
    pixel_labels[3, 4] = 1
    out = segment_overlay(frames[0], pixel_labels, alpha=1.0, patch_size=P)
    assert out[3, 4].tolist() == palette(2)[1].tolist()
    assert out[3, 5].tolist() == palette(1)[0].tolist()


# ---------------------------------------------------------------------------------- features_to_rgb
def test_features_to_rgb_shared_over_frames():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(3, GH, GW, 16)).astype(np.float32)
    feats[2, 0, 0] = feats[0, 1, 1]  # the same feature in two frames
    rgb = features_to_rgb(torch.from_numpy(feats))
    assert rgb.shape == (3, GH, GW, 3) and rgb.dtype == np.uint8
    assert rgb[2, 0, 0].tolist() == rgb[0, 1, 1].tolist()
    flat = rgb.reshape(-1, 3)
    assert (flat.min(0) == 0).all() and (flat.max(0) == 255).all()  # range over the whole clip
    # reference: numpy SVD with the same sign rule, min-max over all frames
    x = feats.reshape(-1, 16).astype(np.float64)
    xc = x - x.mean(0)
    vt = np.linalg.svd(xc, full_matrices=False)[2][:3]
    vt *= np.sign(vt[np.arange(3), np.abs(vt).argmax(1)])[:, None]
    z = xc @ vt.T
    ref = np.rint((z - z.min(0)) / (z.max(0) - z.min(0)) * 255)
    assert np.abs(flat.astype(int) - ref).max() <= 1
    np.testing.assert_array_equal(features_to_rgb(feats), rgb)  # deterministic
    one = features_to_rgb(feats[0], size=(H, W))
    assert one.shape == (H, W, 3)
    robust = features_to_rgb(feats, quantile=0.1)
    assert robust.shape == rgb.shape


# ------------------------------------------------------------------------------------- animate
def gradient_frames(T: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [
            np.stack([(xx * 4 + 20 * t) % 256, (yy * 4) % 256, np.full_like(xx, 30 * t)], -1)
            for t in range(T)
        ]
    ).astype(np.uint8)


def test_write_gif_reads_back(tmp_path):
    from PIL import Image, ImageSequence

    frames = gradient_frames(5, 37, 50)
    path = write_animation(frames, tmp_path / "sub" / "a.gif", fps=10)
    assert path == tmp_path / "sub" / "a.gif" and path.is_file()
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (50, 37)
        assert im.info["loop"] == 0 and im.info["duration"] == 100
        back = np.stack([np.asarray(fr.convert("RGB")) for fr in ImageSequence.Iterator(im)])
    assert np.abs(back.astype(int) - frames).mean() < 4


def test_write_mp4_reads_back_with_even_size(tmp_path):
    import av

    frames = gradient_frames(7, 37, 51)
    path = write_animation(list(frames), tmp_path / "a.mp4", fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "libx264")
        decoded = [fr.to_ndarray(format="rgb24") for fr in container.decode(stream)]
        assert float(stream.average_rate) == pytest.approx(8)
    assert len(decoded) == 7
    assert decoded[0].shape == (38, 52, 3)  # padded to even
    err = np.abs(np.stack(decoded)[:, :37, :51].astype(int) - frames).mean()
    assert err < 6


def test_write_animation_rejects_bad_input(tmp_path):
    frames = gradient_frames(2, 8, 8)
    with pytest.raises(ValueError, match="suffix"):
        write_animation(frames, tmp_path / "a.avi")
    with pytest.raises(ValueError, match="uint8"):
        write_animation(frames.astype(np.float32), tmp_path / "a.gif")
    with pytest.raises(ValueError, match="fps"):
        write_animation(frames, tmp_path / "a.gif", fps=0)
    with pytest.raises(ValueError, match="shapes"):
        write_animation([frames[0], frames[0, :4]], tmp_path / "a.gif")


# ---------------------------------------------------------------------------------------- plots
def _no_pyplot_figures():
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_plot_strip_and_grid_return_figures(frames):
    from matplotlib.figure import Figure

    fig = plot_strip(frames, titles=["a", "b", "c"])
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    grid = plot_grid(
        [[frames[0], frames[1]], [np.random.rand(H, W)]],
        row_titles=["rgb", "heat"],
        col_titles=["x", "y"],
    )
    axes = np.array(grid.axes).reshape(2, 2)
    assert axes[0, 0].get_ylabel() == "rgb" and axes[1, 0].get_ylabel() == "heat"
    assert not axes[1, 1].axison  # ragged row: blank panel
    assert len(axes[0, 0].images) == 1 and len(axes[1, 1].images) == 0
    with pytest.raises(ValueError, match="titles"):
        plot_strip(frames, titles=["a"])
    with pytest.raises(ValueError, match="image"):
        plot_strip([np.zeros((4, 4, 5))])
    _no_pyplot_figures()


def test_plot_attention_strip(frames):
    attn = torch.rand(3, 6, GH, GW)
    fig = plot_attention_strip(frames, attn, heads=(2, 0, 1))
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["frame", "heads 2, 0, 1 as RGB", "overlay"]
    shown = axes[1, 1].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown), heads_to_rgb(attn[1], (2, 0, 1), size=(H, W)))
    with pytest.raises(ValueError, match="same"):
        plot_attention_strip(frames, attn[:2])
    _no_pyplot_figures()
