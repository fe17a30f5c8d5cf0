"""labkit.geometry: grid <-> pixels with one border rule, every drawer and scorer agreeing on it.

Known answers on small grids; then the same patch mask drawn (labkit.viz, the explorer, DoRA's
object masks) and scored (labkit.eval's patch index map and Jaccard) covers the same pixels,
on frames whose sides are and are not multiples of the patch size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.eval.patchgrid import mask_jaccard, patch_index_map
from labkit.geometry import (
    check_grid,
    frame_to_grid,
    grid_to_frame,
    infer_patch_size,
    pixel_to_patch,
    upsample_grid,
)
from labkit.tracking import masks_to_frames
from labkit.viz.render import mask_overlay, segments_to_rgb, upsample_map

# (grid, patch size, frame): exact multiples, and 2 / 3 pixel strips below and right
CASES = [
    ((2, 3), 4, (8, 12)),
    ((2, 3), 4, (10, 15)),
    ((3, 5), 16, (63, 95)),
    ((4, 6), 14, (56, 90)),
]


def test_known_answer_nearest_with_strips():
    grid = torch.tensor([[1, 2, 3], [4, 5, 6]])
    got = grid_to_frame(grid, (5, 7), patch_size=2)  # strips: 1 row below, 1 column right
    want = torch.tensor(
        [
            [1, 1, 2, 2, 3, 3, 3],
            [1, 1, 2, 2, 3, 3, 3],
            [4, 4, 5, 5, 6, 6, 6],
            [4, 4, 5, 5, 6, 6, 6],
            [4, 4, 5, 5, 6, 6, 6],
        ]
    )
    assert torch.equal(got, want)
    assert torch.equal(frame_to_grid(got, (2, 3), patch_size=2), grid)  # round trip
    as_array = grid_to_frame(grid.numpy().astype(bool), (5, 7), patch_size=2)
    assert as_array.dtype == torch.bool and as_array.shape == (5, 7)


def test_known_answer_bilinear_with_strips():
    grid = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    got = grid_to_frame(grid, (5, 5), patch_size=2, mode="bilinear")
    # pixel centres in patch-centre units: (y + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, 1.75
    # clamped to [0, 1]: 0, 0.25, 0.75, 1, 1; value = 2 * row + col
    pos = torch.tensor([0.0, 0.25, 0.75, 1.0, 1.0])
    want = 2 * pos[:, None] + pos[None, :]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert torch.equal(got[4], got[3]) and torch.equal(got[:, 4], got[:, 3])  # strip = edge
    ints = grid_to_frame(torch.tensor([[0, 4]]), (1, 4), patch_size=2, mode="bilinear")
    assert ints.dtype == torch.float32
    torch.testing.assert_close(ints, torch.tensor([[0.0, 1.0, 3.0, 4.0]]))
    with pytest.raises(ValueError, match="bilinear"):
        grid_to_frame(grid, (4, 4), patch_size=2, alignment="resize", mode="bilinear")
    with pytest.raises(ValueError, match="mode"):
        grid_to_frame(grid, (4, 4), patch_size=2, mode="cubic")  # type: ignore[arg-type]


def test_bilinear_matches_torch_interpolate_on_the_covered_pixels():
    g = torch.Generator().manual_seed(0)
    grid = torch.rand(3, 4, 5, generator=g)
    got = grid_to_frame(grid, (4 * 8 + 5, 5 * 8 + 7), patch_size=8, mode="bilinear")
    ref = torch.nn.functional.interpolate(
        grid[None], scale_factor=8, mode="bilinear", align_corners=False
    )[0]  # (3, 32, 40)
    torch.testing.assert_close(got[:, :32, :40], ref, atol=1e-6, rtol=0)
    assert torch.equal(got[:, 32:], got[:, 31:32].expand(-1, 5, -1))  # strip repeats the edge
    assert torch.equal(got[:, :, 40:], got[:, :, 39:40].expand(-1, -1, 7))


@pytest.mark.parametrize("grid, p, size", CASES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_numpy_and_torch_paths_are_the_same_rule(grid, p, size, mode):
    a = np.random.default_rng(0).random((2, *grid)).astype(np.float32)
    got = upsample_grid(a, size, patch_size=p, mode=mode)
    assert got.dtype == np.float32 and got.shape == (2, *size)
    assert np.array_equal(got, grid_to_frame(a, size, patch_size=p, mode=mode).numpy())
    labels = (a * 5).astype(np.int64)
    assert np.array_equal(
        upsample_grid(labels, size, patch_size=p), grid_to_frame(labels, size, patch_size=p).numpy()
    )


def test_pixel_to_patch_check_grid_and_infer_patch_size():
    assert pixel_to_patch(0, 0, (2, 3), 4) == (0, 0)
    assert pixel_to_patch(7.9, 11.2, (2, 3), 4) == (1, 2)
    assert pixel_to_patch(9, 14, (2, 3), 4) == (1, 2)  # the strip belongs to the edge patch
    assert pixel_to_patch(-1, 3, (2, 3), 4) is None
    check_grid((2, 3), (11, 15), 4, "t")
    for size in ((12, 12), (7, 12), (8, 16)):
        with pytest.raises(ValueError, match="t: .*does not fit"):
            check_grid((2, 3), size, 4, "t")
    assert infer_patch_size((14, 14), (224, 224)) == 16  # 15 fits too; 16 is a ViT patch size
    assert infer_patch_size((4, 6), (63, 95), 14) == 14
    with pytest.raises(ValueError, match="patch_size=16"):
        infer_patch_size((4, 6), (63, 95), 16)


@pytest.mark.parametrize("grid, p, size", CASES)
def test_every_grid_to_pixel_mapping_agrees(grid, p, size):
    """One mask, drawn by every drawer and scored by the evaluation: the same pixels."""
    g = torch.Generator().manual_seed(sum(size))
    mask = torch.rand(grid, generator=g) > 0.5
    mask[0, 0], mask[-1, -1] = True, False  # some in, some out, edge patches included
    rule = torch.zeros(size, dtype=torch.bool)  # the border rule written out pixel by pixel
    for y in range(size[0]):
        for x in range(size[1]):
            edge = (min(y // p, grid[0] - 1), min(x // p, grid[1] - 1))
            rule[y, x] = mask[edge]
            assert pixel_to_patch(y, x, grid, p) == edge
    assert torch.equal(grid_to_frame(mask, size, patch_size=p), rule)

    # drawn: DoRA's masks over frames, render's upsampling and mask / segment overlays
    assert torch.equal(masks_to_frames(mask, p, size), rule)
    assert np.array_equal(upsample_map(mask.numpy(), size, p) > 0.5, rule.numpy())
    frame = np.zeros((*size, 3), np.uint8)
    drawn = mask_overlay(frame, mask.numpy(), (255, 255, 255), 1.0, contour=False, patch_size=p)
    assert np.array_equal(drawn.any(-1), rule.numpy())
    labels = mask.long().numpy()
    colours = segments_to_rgb(labels, size=size, palette=[(0, 0, 0), (9, 9, 9)], patch_size=p)
    assert np.array_equal(colours[..., 0] == 9, rule.numpy())

    # the explorer's blend of a colour grid over the frame
    from labkit.viz.explorer import _blend_grid

    colour_grid = np.where(mask.numpy()[..., None], 255, 0).astype(np.uint8).repeat(3, -1)
    assert np.array_equal(_blend_grid(frame, colour_grid, 1.0, p)[..., 0] == 255, rule.numpy())

    # scored: the evaluation's patch index map and its pixel-exact Jaccard
    index = patch_index_map(grid, size, patch_size=p, alignment="crop")
    assert torch.equal(mask.flatten()[index], rule)
    area = torch.bincount(index.flatten(), minlength=mask.numel())  # (P,) pixels per patch
    truth = rule.clone()
    truth[0, :] = True  # a ground truth that differs from the mask
    per_patch_truth = torch.zeros(mask.numel()).index_add_(
        0, index.flatten(), truth.flatten().float()
    )  # (P,) foreground pixels under each patch
    j = mask_jaccard(mask.flatten()[None, None], per_patch_truth[None], area)[0, 0]
    want = (rule & truth).sum() / (rule | truth).sum()
    torch.testing.assert_close(j.float(), want.float(), atol=1e-6, rtol=0)
