"""Precision of patch masks (the share of a mask's pixels on the foreground) and the foreground's
share of the frame: against a pixel-level computation on the upsampled masks, known answers,
empty masks, and how the per-sequence numbers reach the summary, the tables and ``metrics.json``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from labkit.eval.metrics import grid_to_frame
from labkit.eval.patchgrid import (
    foreground_share,
    mask_jaccard,
    mask_precision,
    patch_histogram,
    patch_index_map,
)
from labkit.eval.report import SUMMARY_COLUMNS, sequence_rows
from labkit.eval.results import ModelResult, SequenceResult


def _pixel_precision(up: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Straightforward: ``(up & fg).sum() / up.sum()`` per frame and mask, NaN where empty.

    ``up``: ``(T, m, H, W)`` bool upsampled masks; ``fg``: ``(T, H, W)`` bool foreground."""
    out = torch.full(up.shape[:2], math.nan, dtype=torch.float64)
    for t in range(up.shape[0]):
        for i in range(up.shape[1]):
            n = int(up[t, i].sum())
            if n:
                out[t, i] = int((up[t, i] & fg[t]).sum()) / n
    return out


@pytest.mark.parametrize("alignment", ["resize", "crop"])
@pytest.mark.parametrize("size, grid", [((37, 53), (4, 6)), ((64, 96), (4, 6)), ((50, 41), (7, 3))])
def test_precision_and_share_equal_pixel_counts(alignment, size, grid) -> None:
    """Uneven patch footprints (``resize`` at sizes that are not multiples of the grid, ``crop``
    with an uncovered strip that repeats the edge patches) are counted pixel-exactly."""
    g = torch.Generator().manual_seed(sum(size) * 7 + grid[1])
    p, T, C, m = 16 if alignment == "crop" else 9, 3, 3, 5
    gt = torch.randint(0, C, (T, *size), generator=g)
    gt[:, : size[0] // 2] = 0  # a background half
    masks = torch.rand((T, m, *grid), generator=g) > 0.6
    masks[0, 0] = False  # an empty mask
    masks[1, 1] = True  # a mask over the whole frame
    index = patch_index_map(grid, size, patch_size=p, alignment=alignment)
    P = grid[0] * grid[1]
    hist = torch.stack([patch_histogram(gt[t], index, P, C) for t in range(T)])  # (T, P, C)
    foreground = hist[..., 1:].sum(-1)  # (T, P)
    area = torch.bincount(index.reshape(-1), minlength=P)  # (P,)
    got = mask_precision(masks, foreground, area)
    up = grid_to_frame(masks, size, patch_size=p, alignment=alignment)  # (T, m, H, W)
    ref = _pixel_precision(up, gt > 0)
    assert got.dtype == torch.float64 and got.shape == (T, m)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12, equal_nan=True)
    assert math.isnan(got[0, 0]) and int(torch.isnan(got).sum()) == int(torch.isnan(ref).sum())
    share = foreground_share(foreground, area)
    torch.testing.assert_close(share, (gt > 0).double().mean(dim=(1, 2)), rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1, 1], share[1], rtol=0, atol=1e-12)  # the whole frame
    # the flat (T, m, P) layout gives the same numbers
    torch.testing.assert_close(
        mask_precision(masks.reshape(T, m, P), foreground, area), got, equal_nan=True
    )


def test_precision_known_answers() -> None:
    """Exactly the foreground -> 1, background only -> 0, empty -> NaN, whole frame -> share."""
    fg = torch.zeros(4, 6, dtype=torch.bool)
    fg[1:3, 2:5] = True  # 6 of 24 patches
    gt = grid_to_frame(fg.long(), (64, 96), patch_size=16, alignment="resize")
    index = patch_index_map((4, 6), (64, 96), patch_size=16)
    foreground = patch_histogram(gt, index, 24, 2)[None, :, 1]  # (1, P)
    area = torch.bincount(index.reshape(-1))
    masks = torch.stack(
        [fg, ~fg, torch.zeros_like(fg), torch.ones_like(fg), fg & (fg.cumsum(1) == 1)]
    )
    got = mask_precision(masks[None], foreground, area)[0]
    assert got[:2].tolist() == [1.0, 0.0] and math.isnan(got[2])
    assert got[3].item() == pytest.approx(6 / 24) and got[4].item() == 1.0  # a part of it: 1
    assert foreground_share(foreground, area).tolist() == [pytest.approx(6 / 24)]
    # J of the whole frame is the share too (what the report says a whole-frame mask scores)
    assert mask_jaccard(masks[None, 3:4], foreground, area).item() == pytest.approx(6 / 24)


def test_partial_footprints_weigh_by_area() -> None:
    """A 1 x 2 grid drawn on 1 x 3 pixels: patch 0 covers pixel 0, patch 1 pixels 1 and 2;
    pixels 0 and 1 are foreground."""
    index = patch_index_map((1, 2), (1, 3), patch_size=1, alignment="resize")
    assert index.tolist() == [[0, 1, 1]]
    area = torch.bincount(index.reshape(-1))  # [1, 2]
    foreground = patch_histogram(torch.tensor([[1, 1, 0]]), index, 2, 2)[None, :, 1]  # [[1, 1]]
    masks = torch.tensor([[[True, True], [True, False], [False, True]]])  # (1, 3, 2)
    got = mask_precision(masks, foreground, area)
    torch.testing.assert_close(got, torch.tensor([[2 / 3, 1.0, 1 / 2]], dtype=torch.float64))
    torch.testing.assert_close(foreground_share(foreground, area), torch.tensor([2 / 3]).double())


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="mask_precision"):
        mask_precision(torch.ones(2, 3, 4, dtype=torch.bool), torch.ones(2, 5), torch.ones(5))
    with pytest.raises(ValueError, match="foreground_share"):
        foreground_share(torch.ones(2, 4), torch.ones(5))


def _sequence(name: str, best_precision: float, share: float) -> SequenceResult:
    j = torch.tensor([[0.2, 0.1], [0.4, 0.3]], dtype=torch.float64)  # object 0 is the best
    precision = torch.tensor([[best_precision, 0.9], [math.nan, 0.8]], dtype=torch.float64)
    tracking = {
        "jaccard": j,
        "per_head": j.mean(0),
        "best_head": 0,
        "best_head_j": 0.3,
        "mean_over_heads": float(j.mean()),
        "oracle_j": 0.3,
        "stability": 1.0,
        "switches": 0,
        "precision": precision,
        "best_precision": float(torch.nanmean(precision[:, 0])),
        "foreground_share": share,
    }
    return SequenceResult(
        name=name,
        num_frames=2,
        num_objects=1,
        source_size=(32, 32),
        input_size=(32, 32),
        grid=(2, 2),
        tracking=tracking,
    )


def test_summary_columns_skip_empty_masks_and_serialise() -> None:
    """An empty best-object mask (NaN) is skipped in the frame mean; an all-empty sequence is
    skipped in the mean over sequences; JSON gets ``null`` for NaN."""
    model = ModelResult(
        label="dora",
        spec="dora",
        info={},
        sequences=[_sequence("a", 0.5, 0.2), _sequence("b", math.nan, 0.3)],
    )
    assert model.sequences[0].tracking["best_precision"] == 0.5  # NaN frame skipped
    t = model.tracking_summary()
    assert t["best_object_precision"] == 0.5  # sequence b has none: skipped, not 0
    assert t["foreground_share"] == pytest.approx(0.25)
    row = model.summary()
    assert row["DoRA object on foreground"] == 0.5 and row["foreground share"] == pytest.approx(
        0.25
    )
    cols = list(SUMMARY_COLUMNS)
    i = cols.index("DoRA best object J")
    assert cols[i + 1 : i + 3] == ["DoRA object on foreground", "foreground share"]
    rows = sequence_rows(model)
    on_fg = [r["DoRA object on foreground"] for r in rows]  # a, b, mean over sequences
    assert on_fg[0] == 0.5 and math.isnan(on_fg[1]) and on_fg[2] == 0.5
    d = json.loads(json.dumps(model.to_dict(), allow_nan=False))
    assert d["sequences"][0]["tracking"]["precision"] == [[0.5, 0.9], [None, 0.8]]
    assert d["tracking"]["best_object_precision"] == 0.5
