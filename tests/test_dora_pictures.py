"""DoRA's pictures: object shares and overlap (against loops), per-frame/object renders, the
with/without Sinkhorn-Knopp figure, and the one palette for DoRA's objects."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from labkit.losses import sinkhorn_knopp
from labkit.tracking import object_shares
from labkit.train import report as train_report
from labkit.viz import dora as pictures
from labkit.viz import render
from labkit.viz.palette import OBJECT_RGB, object_colours, palette
from labkit.viz.plot import MAX_WIDTH, TITLE_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")

GH, GW, P = 4, 6, 8


def shares_by_loops(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Straightforward share, mass and overlap of (T, k, gh, gw) maps, one patch at a time."""
    t_count, k = maps.shape[:2]
    flat = maps.reshape(t_count, k, -1).astype(np.float64)
    share = np.zeros((t_count, k))
    mass = np.zeros((t_count, k))
    overlap = np.zeros((t_count, k, k))
    for t in range(t_count):
        n_count = flat.shape[-1]
        for n in range(n_count):
            column = flat[t, :, n]
            best = [j for j in range(k) if column[j] == column.max()]
            for j in best:
                share[t, j] += 1.0 / len(best) / n_count
            total = column.sum()
            for j in range(k):
                mass[t, j] += (column[j] / total if total > 0 else 1.0 / k) / n_count
        for i in range(k):
            for j in range(k):
                a = flat[t, i] / max(flat[t, i].sum(), 1e-30)
                b = flat[t, j] / max(flat[t, j].sum(), 1e-30)
                overlap[t, i, j] = sum(min(x, y) for x, y in zip(a, b))
    return share, mass, overlap


def test_object_shares_match_loops():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 4, GH, GW, generator=gen) ** 3
    maps[1, 2] = maps[1, 0]  # exact ties between objects 0 and 2 in frame 1
    maps[2, 3] = 0.0  # an empty map
    got = object_shares(maps)
    share, mass, overlap = shares_by_loops(maps.numpy())
    np.testing.assert_allclose(got.share.numpy(), share, atol=1e-6)
    np.testing.assert_allclose(got.mass.numpy(), mass, atol=1e-6)
    np.testing.assert_allclose(got.overlap.numpy(), overlap, atol=1e-5)
    torch.testing.assert_close(got.share.sum(-1), torch.ones(3))
    torch.testing.assert_close(got.mass.sum(-1), torch.ones(3))
    pairs = [overlap[:, i, j] for i in range(4) for j in range(i + 1, 4)]
    np.testing.assert_allclose(got.mean_overlap().numpy(), np.mean(pairs, 0), atol=1e-5)
    # batch dimensions pass through
    batched = object_shares(torch.stack([maps, maps]))
    assert batched.share.shape == (2, 3, 4) and batched.overlap.shape == (2, 3, 4, 4)


def test_identical_objects_overlap_one_disjoint_zero():
    one = torch.softmax(torch.randn(GH * GW), 0).reshape(GH, GW)
    same = object_shares(torch.stack([one, one, one]))
    torch.testing.assert_close(same.overlap, torch.ones(3, 3))
    torch.testing.assert_close(same.share, torch.full((3,), 1 / 3))  # ties split the frame
    torch.testing.assert_close(same.mass, torch.full((3,), 1 / 3))
    left, right = torch.zeros(GH, GW), torch.zeros(GH, GW)
    left[:, :2], right[:, 3:] = 1.0, 2.0
    apart = object_shares(torch.stack([left, right]))
    assert float(apart.overlap[0, 1]) == 0.0 and float(apart.mean_overlap()) == 0.0
    assert apart.share.tolist() == pytest.approx([2 / 6 + 1 / 12, 3 / 6 + 1 / 12])  # col 2: tie
    assert torch.isnan(object_shares(left[None]).mean_overlap())  # one object: no pairs


def test_object_shares_rejects_bad_maps():
    with pytest.raises(ValueError, match="nonnegative"):
        object_shares(-torch.ones(2, GH, GW))
    with pytest.raises(ValueError, match=r"\(\.\.\., k, gh, gw\)"):
        object_shares(torch.ones(GH, GW))


def rebalancing_logits() -> torch.Tensor:
    """(N, 3) scores where object 0 is the best match of most patches (a row softmax gives it
    most of the frame; Sinkhorn-Knopp must take patches away from it)."""
    gen = torch.Generator().manual_seed(1)
    logits = 0.05 * torch.randn(GH * GW, 3, generator=gen)
    logits[:, 0] += 0.1
    return logits


def test_sinkhorn_gives_equal_mass_and_softmax_does_not():
    logits = rebalancing_logits()
    sk = sinkhorn_knopp(logits, epsilon=0.05, iterations=300)  # (N, k), converged
    soft = torch.softmax(logits / 0.05, dim=-1)
    as_maps = lambda plan: plan.T.reshape(3, GH, GW)  # noqa: E731 - (N, k) -> (k, gh, gw)
    with_sk, without = object_shares(as_maps(sk)), object_shares(as_maps(soft))
    torch.testing.assert_close(with_sk.mass, torch.full((3,), 1 / 3), atol=1e-4, rtol=0)
    np.testing.assert_allclose(with_sk.mass.numpy(), pictures.plan_balance(sk), atol=1e-6)
    assert float(without.mass[0]) > 0.5 and float(without.share[0]) > 0.6
    assert float(with_sk.share[0]) < float(without.share[0]) - 0.2


def test_objects_to_rgb_per_frame_and_object():
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(3, 3, GH, GW, generator=gen)
    maps[1] *= 1e-3  # a faint frame is as bright as the others: normalised within each frame
    maps[2, 1] *= 1e-3  # a faint object too
    rgb = pictures.objects_to_rgb(maps, (GH * P, GW * P), P)
    assert rgb.shape == (3, GH * P, GW * P, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, pictures.objects_to_rgb(maps.numpy(), (GH * P, GW * P), P))
    grid = pictures.objects_to_rgb(maps)
    assert grid.shape == (3, GH, GW, 3)
    np.testing.assert_array_equal(rgb[:, ::P, ::P], grid)
    assert grid[1].max() == 255 and grid[2].max() == 255
    # three objects: exactly the heads' R, G, B picture, each map normalised per frame
    np.testing.assert_array_equal(grid, render.heads_to_rgb(maps, (0, 1, 2), norm="frame"))
    same = pictures.objects_to_rgb(maps[:, :1].expand(3, 3, GH, GW))  # identical objects: grey
    assert (same[..., 0] == same[..., 1]).all() and (same[..., 1] == same[..., 2]).all()
    # one object alone: its own colour at its maximum, black at its minimum, in every frame
    for j, colour in enumerate(object_colours(5)):
        alone = torch.zeros(2, 5, GH, GW)
        alone[0, j, 1, 2], alone[1, j, 3, 0] = 1.0, 1e-6
        out = pictures.objects_to_rgb(alone)
        np.testing.assert_array_equal(out[0, 1, 2], colour)
        np.testing.assert_array_equal(out[1, 3, 0], colour)
        assert out[0, 0, 0].tolist() == [0, 0, 0]
    labels = pictures.object_labels(maps)
    assert labels.shape == (3, GH, GW) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, maps.argmax(1).numpy())


def test_one_palette_for_dora_objects():
    assert np.array_equal(object_colours(3), OBJECT_RGB)
    assert np.array_equal(OBJECT_RGB, 255 * np.eye(3))  # equal maps mix to a neutral grey
    assert np.array_equal(object_colours(8)[:5], object_colours(5))
    assert len({tuple(c) for c in object_colours(12)}) == 12
    assert render.palette is palette
    for k in (2, 3, 5):
        for j in range(k):
            one_hot = torch.zeros(1, k, GH, GW)
            one_hot[0, j, 0, 0] = 1.0
            # the two former call sites: a training run's objects and the teaching figures
            trained = train_report.objects_to_rgb(one_hot, (GH * P, GW * P), P)[0, 0, 0]
            taught = pictures.objects_to_rgb(one_hot)[0, 0, 0]
            np.testing.assert_array_equal(trained, object_colours(k)[j])
            np.testing.assert_array_equal(taught, object_colours(k)[j])
    frame = np.zeros((GH * P, GW * P, 3), np.uint8)
    plans = {"a": torch.softmax(rebalancing_logits() / 0.05, -1)}
    fig = pictures.plot_transport_plans(frame, plans, (GH, GW), P)
    bars = fig.axes[-1].patches
    np.testing.assert_allclose(
        [b.get_facecolor()[:3] for b in bars], object_colours(3) / 255.0, atol=1e-6
    )


def clip(seed: int = 3) -> tuple[np.ndarray, dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (5, GH * P, GW * P, 3), generator=gen).to(torch.uint8).numpy()
    logits = rebalancing_logits()
    plans = {
        "with Sinkhorn-Knopp": sinkhorn_knopp(logits, iterations=100),
        "row softmax": torch.softmax(logits / 0.05, -1),
    }
    maps = {}
    for name, plan in plans.items():  # tracking maps: softmax over patches of plan-like scores
        scores = plan.T.reshape(3, GH, GW)[None] * torch.linspace(1, 3, 5)[:, None, None, None]
        maps[name] = torch.softmax(scores.flatten(2) * 4, -1).reshape(5, 3, GH, GW)
    return frames, maps, plans


def test_sinkhorn_figure_numbers_equal_object_shares():
    frames, maps, plans = clip()
    numbers = pictures.sinkhorn_numbers(maps, plans)
    for name in maps:
        got = object_shares(maps[name])
        np.testing.assert_allclose(numbers[name]["share"], got.share.numpy(), atol=1e-7)
        np.testing.assert_allclose(numbers[name]["overlap"], got.mean_overlap().numpy(), atol=1e-7)
        plan = object_shares(plans[name].T.reshape(3, GH, GW))
        np.testing.assert_allclose(numbers[name]["plan_share"], plan.share.numpy(), atol=1e-7)
    assert numbers["with Sinkhorn-Knopp"]["plan_mass"] == pytest.approx([1 / 3] * 3, abs=1e-3)
    assert numbers["row softmax"]["plan_share"][0] > numbers["with Sinkhorn-Knopp"]["plan_share"][0]

    fig = pictures.plot_sinkhorn_comparison(
        frames, maps, P, plans=plans, indices=[10, 11, 12, 13, 14], heads=[4, 0, 2], weights="W"
    )
    width = fig.get_size_inches()[0]
    assert width <= MAX_WIDTH + 1.0
    assert TITLE_SIZE * 110 / 72 * min(1.0, 1400 / (width * 110)) >= 12  # legible at 1400 px
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 2 * 5  # per plan: the plan and 4 frames spread over the clip
    for r, name in enumerate(maps):
        row = titled[5 * r : 5 * r + 5]
        assert row[0].get_title().startswith("plan on the first frame")
        for ax, t in zip(row[1:], [0, 1, 3, 4]):
            title = ax.get_title()
            assert title.startswith(f"frame {10 + t}\n")
            shares = re.search(r"shares ([\d./]+)", title)[1]
            assert shares == "/".join(f"{v:.2f}" for v in numbers[name]["share"][t])
            overlap = re.search(r"overlap ([\d.]+)", title)[1]
            assert overlap == f"{numbers[name]['overlap'][t]:.2f}"
            assert ax.title.get_fontsize() == TITLE_SIZE
    assert "weights: W" in fig._suptitle.get_text()
    assert "min-max scaled within each frame" in fig._suptitle.get_text()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "object 0 (head 4)",
        "object 1 (head 0)",
        "object 2 (head 2)",
    ]
    np.testing.assert_allclose(
        [h.get_facecolor()[:3] for h in legend.legend_handles], object_colours(3) / 255.0
    )
    again = pictures.plot_sinkhorn_comparison(frames, maps, P, plans=plans)
    first = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    second = [ax.images[0].get_array() for ax in again.axes if ax.images]
    assert len(first) == 4 * 5
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)  # deterministic
    without_plans = pictures.plot_sinkhorn_comparison(frames, maps, P, max_frames=2)
    assert sum(bool(ax.get_title()) for ax in without_plans.axes) == 2 * 2


def test_report_shows_the_sinkhorn_figure_and_its_numbers(tmp_path):
    import json
    from types import SimpleNamespace

    from labkit.report import sinkhorn_rows, write_report

    frames, maps, plans = clip()
    numbers = pictures.sinkhorn_numbers(maps, plans)
    out = tmp_path / "step_by_step"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"weights": "W", "sinkhorn": numbers}))
    pictures.plot_sinkhorn_comparison(frames, maps, P, plans=plans).savefig(out / "sinkhorn.png")
    stage = SimpleNamespace(
        name="step_by_step", group="explore", out_dir=out, params={}, notebook="dora_step_by_step"
    )
    page = write_report(tmp_path, [stage]).read_text()
    assert "<img src='step_by_step/sinkhorn.png'" in page
    assert "<h4>DoRA's objects with and without Sinkhorn-Knopp</h4>" in page
    rows, sentence = sinkhorn_rows(numbers)
    for row in rows:  # the numbers as text, the same as in the figure's titles
        name = row["plan"]
        assert row["tracked share"] == "/".join(f"{v:.2f}" for v in numbers[name]["share_mean"])
        assert row["plan share"] == "/".join(f"{v:.2f}" for v in numbers[name]["plan_share"])
        assert (
            f"<td>{row['tracked share']}</td>" in page and f"<td>{row['plan share']}</td>" in page
        )
        assert f"<td>{numbers[name]['overlap_mean']:.2f}</td>" in page
    assert "min-max scaled within each frame" in page
    same = {"a": {"overlap_mean": 0.95}, "b": {"overlap_mean": 0.97}}
    assert "more than 90%" in sinkhorn_rows(same)[1]
    assert sinkhorn_rows({"a": {"overlap_mean": 0.2}})[1] == "a: overlap 0.20."
    spread = {
        "prototype_cosine": 0.991,
        "logit_spread_per_epsilon": 0.224,
        "plan_peak": 0.361,
        "uniform_peak": 1 / 3,
    }
    reason = sinkhorn_rows(same, spread)[1]
    assert "mean cosine 0.99" in reason and "differ by 0.22 epsilon" in reason
    assert "largest share 0.36 where a uniform plan gives 0.33" in reason
    assert "cosine" not in sinkhorn_rows({"a": {"overlap_mean": 0.2}}, spread)[1]  # distinct: no
    assert "attention" not in reason  # an older run's numbers: no head measures
    heads = {**spread, "head_entropy": 0.9994, "head_distance": 0.035}
    reason = sinkhorn_rows(same, heads)[1]
    assert "head's [CLS] attention is close to uniform (entropy 0.999" in reason
    assert "differ by 0.04 in total variation" in reason and "mean cosine 0.99" in reason
    alike = sinkhorn_rows(same, {**heads, "head_entropy": 0.5})[1]  # sharp heads, one place
    assert "attend to the same patches (entropy 0.500" in alike
    apart = sinkhorn_rows(same, {**heads, "head_entropy": 0.5, "head_distance": 0.8})[1]
    assert "attention" not in apart and "mean cosine 0.99" in apart  # the heads do not explain it


def test_films_draw_dora_objects_in_their_colours(small_video):
    from labkit.film import FilmConfig, film_batches, render_film
    from labkit.models import load_backbone, patch_size
    from labkit.viz.render import mask_overlay

    model = load_backbone("vit_small_patch16_224", depth=2, embed_dim=48, num_heads=3, seed=0)
    cfg = FilmConfig(methods=("dora",), batch_size=4, captions=False)
    batch = next(iter(film_batches(small_video, model, cfg)))
    p = patch_size(model)
    objects = batch.objects.numpy()  # (n, k, gh, gw)
    thickness = max(1, batch.frames.shape[1] // 240)
    expected = mask_overlay(
        batch.frames,
        objects,
        object_colours(objects.shape[1]),
        0.45,
        thickness=thickness,
        patch_size=p,
    )
    np.testing.assert_array_equal(render_film("dora", batch, p, cfg), expected)
