"""Discovery scores (labkit.eval.discovery) against hand-computed values, and the "discovery"
evaluation end to end: the runner's numbers equal a direct computation, tables, figures, JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.eval.discovery import (
    box_iou,
    consecutive_jaccard,
    corloc,
    discovery_scores,
    grid_boxes_to_pixels,
    label_boxes,
)
from labkit.eval.metrics import grid_to_frame, jaccard
from labkit.eval.patchgrid import patch_histogram, patch_index_map
from labkit.eval.runner import EvalConfig, evaluate
from labkit.eval.specs import parse_model_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}
SPEC = "tiny=vit_small_patch16_224"


# --------------------------------------------------------------------------------------------
# Pure functions, hand-computed
# --------------------------------------------------------------------------------------------


def test_box_iou_by_hand():
    a = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 0, 0]])
    b = torch.tensor([[1, 1, 3, 3], [2, 2, 4, 4], [1, 1, 3, 3], [0, 0, 2, 2], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [1 / 7, 0.0, 4 / 16, 1.0, 0.0])
    assert box_iou(
        torch.tensor([0.0, 0, 2, 3]), torch.tensor([1.0, 0, 3, 3])
    ).item() == pytest.approx(3 / 9)
    assert math.isnan(box_iou(torch.tensor([0, 0, 1, 1.0]), torch.full((4,), math.nan)).item())


def test_corloc_by_hand():
    pred = torch.tensor([[0, 0, 10, 10]] * 4, dtype=torch.float64)
    gt = torch.tensor(
        [
            [0, 0, 10, 10],  # IoU 1
            [5, 5, 15, 15],  # 25 / 175
            [0, 0, 10, 14],  # 100 / 140 = 0.71
            [math.nan] * 4,
        ]
    )  # no object in the frame
    hits = corloc(pred, gt)
    assert hits[:3].tolist() == [1.0, 0.0, 1.0] and math.isnan(hits[3])
    # several objects per frame: a hit on any (LOST's rule); absent objects are NaN rows
    objects = torch.tensor(
        [
            [[20, 20, 30, 30], [0, 0, 9, 10]],  # second: IoU 0.9
            [[5, 5, 15, 15], [math.nan] * 4],
        ],
        dtype=torch.float64,
    )
    assert corloc(pred[:2], objects).tolist() == [1.0, 0.0]
    assert corloc(pred[:1], torch.tensor([[0, 0, 10, 20.0]]), threshold=0.5).tolist() == [1.0]
    assert corloc(pred[:1], torch.tensor([[0, 0, 10, 21.0]]), threshold=0.5).tolist() == [0.0]


def test_label_boxes_by_hand():
    labels = torch.zeros(3, 6, 8, dtype=torch.uint8)
    labels[0, 1:3, 2:5] = 1
    labels[0, 4, 7] = 2
    labels[1, 0, 0] = 2
    labels[1, 5, 1] = 3  # an object the first frame lacks: foreground, no box of its own
    fg, objects = label_boxes(labels, 2)
    assert fg[0].tolist() == [1, 2, 5, 8] and fg[1].tolist() == [0, 0, 6, 2]
    assert torch.isnan(fg[2]).all()
    assert objects[0].tolist() == [[1, 2, 3, 5], [4, 7, 5, 8]]
    assert torch.isnan(objects[1, 0]).all() and objects[1, 1].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("grid,size", [((2, 3), (4, 6)), ((3, 4), (10, 13)), ((6, 8), (480, 854))])
def test_grid_boxes_to_pixels_are_the_drawn_masks_boxes(grid, size):
    from labkit.discovery import mask_boxes

    index_map = patch_index_map(grid, size, patch_size=16, alignment="resize")
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, *grid, generator=g) > 0.6
    masks[0] = False
    pixel_boxes = grid_boxes_to_pixels(mask_boxes(masks), index_map, grid)
    assert torch.isnan(pixel_boxes[0]).all()
    for t in range(1, 5):
        drawn = grid_to_frame(
            masks[t].to(torch.uint8), size, patch_size=16, alignment="resize"
        ).bool()
        rows, cols = drawn.any(1).nonzero().flatten(), drawn.any(0).nonzero().flatten()
        assert pixel_boxes[t].tolist() == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
    if grid == (2, 3):
        box = torch.tensor([[0, 1, 1, 3]])
        assert grid_boxes_to_pixels(box, index_map, grid).tolist() == [[0, 2, 2, 6]]


def test_consecutive_jaccard_by_hand():
    m = torch.zeros(4, 2, 3, dtype=torch.bool)
    m[0, 0, :2] = True  # 2 patches
    m[1, 0, 1:] = True  # 2 patches, 1 shared: 1/3
    m[2] = False  # empty next to non-empty: 0
    m[3] = False  # both empty: 1
    np.testing.assert_allclose(consecutive_jaccard(m).numpy(), [1 / 3, 0.0, 1.0])


def test_discovery_scores_match_pixel_computation():
    grid, size, K = (3, 4), (30, 41), 2
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(4, *grid, generator=g) > 0.5
    from labkit.discovery import mask_boxes

    boxes = mask_boxes(masks)
    labels = torch.zeros(3, *size, dtype=torch.uint8)  # frames 0, 1, 3 annotated
    labels[0, 5:20, 3:30] = 1
    labels[1, 0:10, 0:10] = 2
    labels[1, 20:30, 30:41] = 1
    annotated = torch.tensor([True, True, False, True])
    index_map = patch_index_map(grid, size, patch_size=10, alignment="resize")
    area = torch.bincount(index_map.flatten(), minlength=12)
    hist = torch.stack(
        [patch_histogram(lab, index_map, 12, K + 1) for lab in labels]
    )  # (3, P, K+1)
    scores = discovery_scores(
        masks, boxes, labels, annotated, hist[..., 1:].sum(-1), area, index_map, K
    )
    for i, t in enumerate([0, 1, 3]):
        drawn = grid_to_frame(masks[t].to(torch.uint8), size, patch_size=10, alignment="resize")
        assert scores["jaccard"][i].item() == pytest.approx(
            float(jaccard(drawn.bool(), labels[i] > 0))
        )
        fg = (labels[i] > 0).nonzero()
        if len(fg):
            gt_box = [fg[:, 0].min(), fg[:, 1].min(), fg[:, 0].max() + 1, fg[:, 1].max() + 1]
            d = drawn.bool().nonzero()
            pred_box = [d[:, 0].min(), d[:, 1].min(), d[:, 0].max() + 1, d[:, 1].max() + 1]
            iou = box_iou(torch.tensor(pred_box), torch.tensor(gt_box)).item()
            assert scores["box_iou"][i].item() == pytest.approx(iou)
            assert scores["corloc"][i].item() == float(iou >= 0.5)
        else:
            assert math.isnan(scores["corloc"][i])
    assert scores["stability_per_frame"].shape == (3,)
    assert scores["stability"] == pytest.approx(float(consecutive_jaccard(masks).mean()))
    assert scores["j"] == pytest.approx(float(scores["jaccard"].mean()))


def test_box_overlay_draws_outlines_only():
    from labkit.viz import box_overlay

    frame = np.full((32, 48, 3), 10, dtype=np.uint8)
    out = box_overlay(
        frame, torch.tensor([1, 2, 3, 4]), color=(255, 0, 0), thickness=2, patch_size=8
    )
    assert out.dtype == np.uint8 and out.shape == frame.shape
    changed = (out != frame).any(-1)
    assert changed[8:24, 16:32].sum() == changed.sum()  # within rows 8..23, columns 16..31
    assert (
        changed[8:10, 16:32].all()
        and changed[22:24, 16:32].all()
        and not changed[10:22, 18:30].any()
    )
    assert (out[8, 16] == [255, 0, 0]).all()
    np.testing.assert_array_equal(
        out, box_overlay(frame, [[1, 2, 3, 4]], color=(255, 0, 0), thickness=2, patch_size=8)
    )
    assert (box_overlay(frame, [0, 0, 0, 0]) == frame).all()  # empty box: nothing drawn
    with pytest.raises(ValueError):
        box_overlay(frame.astype(np.float32), [0, 0, 1, 1])


# --------------------------------------------------------------------------------------------
# The evaluation end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from labkit.data.synthetic import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("synthetic") / "davis", num_frames=10, size=(96, 160)
    ).root


@pytest.fixture(scope="module")
def discovery_result(synthetic_root):
    cfg = EvalConfig(
        models=(SPEC,),
        model_kwargs=TINY,
        data_root=str(synthetic_root),
        resolution=96,
        batch_size=4,
        evaluations=("discovery",),
    )
    return evaluate(cfg, progress=False)


def test_runner_equals_a_direct_computation(synthetic_root, discovery_result):
    from labkit.attention import extract_video
    from labkit.discovery import attention_discovery, dora_discovery, lost, tokencut
    from labkit.eval.discovery import discovery_scores as scores_of
    from labkit.tracking import discover_objects
    from labkit.video import load_masks, open_frames

    model = parse_model_spec(SPEC).load(seed=0, model_kwargs=TINY)
    video = open_frames(synthetic_root / "JPEGImages" / "480p" / "synthetic", size=(96, 128))
    ex = extract_video(
        model, video, kinds=("tokens", "keys", "queries"), batch_size=10, progress=False
    )
    keys = ex.features["keys"]
    gt = torch.from_numpy(load_masks(synthetic_root / "Annotations" / "480p" / "synthetic"))
    K = int(gt[0].max())
    protos = discover_objects(
        ex.attention[:1], ex.features["queries"][:1], ex.features["tokens"][:1], k=3
    ).prototypes
    direct = {
        "lost": lost(keys),
        "tokencut": tokencut(keys),
        "attention": attention_discovery(ex.attention),
        "dora": dora_discovery(keys, prototypes=protos),
    }
    seq = discovery_result.models[0].sequences[0]
    H, W = gt.shape[1:]
    index_map = patch_index_map(seq.grid, (H, W), patch_size=16, alignment="resize")
    P = seq.grid[0] * seq.grid[1]
    area = torch.bincount(index_map.flatten(), minlength=P)
    fg = torch.stack([patch_histogram((g > 0).to(torch.uint8), index_map, P, 2)[:, 1] for g in gt])
    annotated = torch.ones(len(gt), dtype=torch.bool)
    assert set(seq.discovery) == set(direct)
    for method, res in direct.items():
        ref = scores_of(res.masks, res.boxes, gt, annotated, fg, area, index_map, K)
        got = seq.discovery[method]
        for key in ("j", "corloc_mean", "corloc_any_mean", "stability"):
            assert got[key] == pytest.approx(ref[key], abs=1e-9), (method, key)
        torch.testing.assert_close(got["jaccard"], ref["jaccard"])


def test_rows_summary_json_and_figures(discovery_result, tmp_path):
    from matplotlib.figure import Figure

    from labkit.eval.report import (
        bar_metrics,
        example_panels,
        plot_examples,
        save_report,
        sequence_rows,
        summary_rows,
    )

    m = discovery_result.models[0]
    row = m.sequences[0].row()
    for name in ("LOST", "TokenCut", "attn object", "DoRA union"):
        for what in ("J", "CorLoc", "stability"):
            v = row[f"{name} {what}"]
            assert v is None or (isinstance(v, float) and (math.isnan(v) or 0.0 <= v <= 1.0))
    assert "J&F" not in row and "attn best head J" not in row
    summary = summary_rows(discovery_result)[0]
    assert summary["LOST J"] == pytest.approx(row["LOST J"])  # one sequence
    assert sequence_rows(m)[-1]["sequence"] == "mean over sequences"
    assert bar_metrics(discovery_result) == ["LOST J", "TokenCut J"]
    panels = example_panels(m.sequences[0])
    assert list(panels) == ["ground truth", "LOST", "TokenCut", "attn object", "DoRA union"]
    again = example_panels(m.sequences[0])
    for name, a in panels.items():
        assert a.dtype == np.uint8 and a.shape == (3, 96, 128, 3)
        np.testing.assert_array_equal(a, again[name])  # deterministic
    assert isinstance(plot_examples(m), Figure)
    written = save_report(discovery_result, tmp_path)
    data = json.loads(written["metrics"].read_text())
    d = data["models"]["tiny"]["sequences"][0]["discovery"]
    assert set(d) == {"lost", "tokencut", "attention", "dora"}
    assert len(d["lost"]["jaccard"]) == 10 and len(d["lost"]["stability_per_frame"]) == 9
    assert set(data["models"]["tiny"]["discovery"]["tokencut"]) == {
        "j",
        "corloc_mean",
        "corloc_any_mean",
        "stability",
    }
    assert "LOST CorLoc" in written["summary"].read_text()


def test_discovery_on_davis(davis_root: Path):
    cfg = EvalConfig(
        models=(SPEC,),
        model_kwargs=TINY,
        data_root=str(davis_root),
        sequences=("car-shadow",),
        resolution=64,
        size_multiple=16,
        max_frames=4,
        evaluations=("discovery",),
        example_frames=0,
    )
    seq = evaluate(cfg, progress=False).models[0].sequences[0]
    assert seq.grid == (4, 7)
    for d in seq.discovery.values():
        assert d["jaccard"].shape == (4,) and d["corloc"].shape == (4,)
        assert (
            0.0 <= d["j"] <= 1.0 and 0.0 <= d["corloc_mean"] <= 1.0 and 0.0 <= d["stability"] <= 1.0
        )
        assert d["corloc_any_mean"] == d["corloc_mean"]  # one object in DAVIS 2016
