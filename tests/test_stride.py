"""Overlapping patches: labkit.models.set_stride and labkit.geometry's rule for their grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.attention import extract
from labkit.geometry import (
    check_grid,
    frame_to_grid,
    grid_index,
    grid_to_frame,
    pixel_to_patch,
    stride_grid,
    upsample_grid,
)
from labkit.models import load_backbone, patch_stride, prepare_images, set_stride, weights_label
from labkit.video import open_video

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 3}


# ---- geometry: known answers ------------------------------------------------------------------


def test_grid_index_stride_known_answers() -> None:
    # p = 16, s = 8 on 32 pixels: 3 patches, centres at 8, 16, 24; a pixel goes to the nearest
    assert stride_grid(32, 16, 8) == 3
    expected = [0] * 12 + [1] * 8 + [2] * 12
    assert grid_index(32, 3, 16, 8).tolist() == expected
    # the strip past the grid (a 37-pixel side is cropped to 32) repeats the edge patch
    assert stride_grid(37, 16, 8) == 3
    assert grid_index(37, 3, 16, 8).tolist() == expected + [2] * 5
    # p = 14, s = 7 (odd): pixel 10's centre 10.5 is 3.5 from centres 7 and 14: the later patch
    idx = grid_index(28, 3, 14, 7)
    assert idx[9] == 0 and idx[10] == 1
    assert idx.tolist() == [0] * 10 + [1] * 7 + [2] * 11
    # p = 4, s = 1 (odd): centres at 2 .. 6, every pixel from 2 on is a tie, won by the later
    assert grid_index(8, 5, 4, 1).tolist() == [0, 0, 1, 2, 3, 4, 4, 4]


@pytest.mark.parametrize("n, p", [(64, 16), (70, 16), (100, 14), (8, 8), (33, 8)])
def test_stride_equal_to_patch_size_is_the_crop_rule_bit_for_bit(n: int, p: int) -> None:
    g = n // p
    np.testing.assert_array_equal(grid_index(n, g, p, p), grid_index(n, g, p))
    rng = np.random.default_rng(0)
    a = rng.random((2, g, g + 1)).astype(np.float32)
    size = (n, n + p)
    for mode in ("nearest", "bilinear"):
        np.testing.assert_array_equal(
            upsample_grid(a, size, patch_size=p, mode=mode, stride=p),
            upsample_grid(a, size, patch_size=p, mode=mode),
        )
        assert torch.equal(
            grid_to_frame(a, size, patch_size=p, mode=mode, stride=p),
            grid_to_frame(a, size, patch_size=p, mode=mode),
        )
    labels = rng.integers(0, 5, size=size)
    assert torch.equal(
        frame_to_grid(labels, (g, g + 1), patch_size=p, stride=p),
        frame_to_grid(labels, (g, g + 1), patch_size=p),
    )
    for y, x in [(0, 0), (n - 1, n + p - 1), (p, p - 1)]:
        assert pixel_to_patch(y, x, (g, g + 1), p, stride=p) == pixel_to_patch(y, x, (g, g + 1), p)


def test_strided_maps_on_pixels() -> None:
    p, s, size = 16, 8, (37, 48)
    grid = (stride_grid(37, p, s), stride_grid(48, p, s))
    assert grid == (3, 5)
    check_grid(grid, size, p, "test", stride=s)
    with pytest.raises(ValueError, match="does not fit"):
        check_grid((2, 3), size, p, "test", stride=s)
    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    up = upsample_grid(a, size, patch_size=p, stride=s)
    rows, cols = grid_index(37, 3, p, s), grid_index(48, 5, p, s)
    np.testing.assert_array_equal(up, a[rows][:, cols])
    assert torch.equal(grid_to_frame(a, size, patch_size=p, stride=s), torch.from_numpy(up))
    # bilinear: each patch's value sits at its centre i*s + p/2, the numpy and torch paths agree
    bil = upsample_grid(a, size, patch_size=p, mode="bilinear", stride=s)
    torch.testing.assert_close(
        grid_to_frame(a, size, patch_size=p, mode="bilinear", stride=s), torch.from_numpy(bil)
    )
    # pixel 15 (centre 15.5) is half a pixel before patch 1's centre at 16 in both directions
    assert bil[15, 15] == pytest.approx(a[0, 0] + 0.9375 * (a[1, 1] - a[0, 0]), abs=1e-5)
    assert pixel_to_patch(20, 27, grid, p, stride=s) == (int(rows[20]), int(cols[27])) == (2, 2)
    labels = np.arange(37 * 48).reshape(37, 48)
    sampled = frame_to_grid(labels, grid, patch_size=p, stride=s)  # pixel i*s + p // 2
    assert sampled[1, 2].item() == labels[16, 24]
    with pytest.raises(ValueError, match="stride"):
        grid_index(32, 3, 16, 17)


# ---- the model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(2, 70, 100, 3), dtype=np.uint8)


def test_stride_equal_to_patch_size_gives_identical_features(frames: np.ndarray) -> None:
    plain = load_backbone("vit_small_patch16_224", seed=0, **TINY)
    strided = set_stride(load_backbone("vit_small_patch16_224", seed=0, **TINY), 16)
    assert patch_stride(strided) == 16 and weights_label(strided) == weights_label(plain)
    x = prepare_images(frames, plain)
    kinds = ("tokens", "keys", "queries", "values")
    a, b = extract(plain, x, kinds=kinds), extract(strided, x, kinds=kinds)
    assert torch.equal(a.attention, b.attention)
    for kind in kinds:
        assert torch.equal(a.features[kind], b.features[kind]), kind
    assert torch.equal(plain.forward_features(x), strided.forward_features(x))


def test_half_stride_grid_and_label(frames: np.ndarray) -> None:
    model = set_stride(load_backbone("vit_small_patch16_224", seed=0, **TINY), 8)
    x = prepare_images(frames, model)  # 64 x 96 after the crop to multiples of 16
    out = extract(model, x, kinds=("tokens", "keys"))
    # gh = (64 - 16) // 8 + 1 = 7, gw = (96 - 16) // 8 + 1 = 11
    assert out.attention.shape == (2, 3, 7, 11)
    assert out.features["keys"].shape == (2, 7, 11, 96)
    sums = out.attention.flatten(2).sum(-1)
    assert torch.all(sums <= 1 + 1e-5) and torch.all(sums > 0)
    assert patch_stride(model) == 8
    assert weights_label(model).endswith(", stride 8")
    set_stride(model, None)  # back to the patch size
    assert extract(model, x, kinds=()).attention.shape == (2, 3, 4, 6)
    for bad in (3, 0, 32, 5.0):
        with pytest.raises(ValueError, match="divisor"):
            set_stride(model, bad)  # type: ignore[arg-type]


def test_half_stride_map_looks_like_the_full_stride_map(small_video) -> None:
    """On a real frame (DAVIS where the shared data is, else the synthetic video), the [CLS]
    maps at stride 8 and 16, both upsampled to the frame, correlate (random weights, seed 0)."""
    shared = Path(os.environ.get("LABKIT_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))
    davis = shared / "davis2016" / "JPEGImages" / "480p" / "cows"
    source = davis if davis.is_dir() else small_video
    with open_video(source, size=224) as video:
        frame = video.get([0])  # (1, 224, W, 3)
    model = load_backbone("vit_small_patch16_224", seed=0, depth=4)
    x = prepare_images(frame, model)
    size = tuple(x.shape[-2:])
    full = extract(model, x, kinds=()).attention[0]  # (h, gh, gw)
    set_stride(model, 8)
    dense = extract(model, x, kinds=()).attention[0]  # (h, 2 gh - 1, 2 gw - 1)
    assert dense.shape[-2:] == (2 * full.shape[-2] - 1, 2 * full.shape[-1] - 1)
    a = grid_to_frame(full.mean(0), size, patch_size=16, mode="bilinear").flatten()
    b = grid_to_frame(dense.mean(0), size, patch_size=16, stride=8, mode="bilinear").flatten()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert corr > 0.7, corr
