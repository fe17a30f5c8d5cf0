"""Feature embeddings linked to the frames: subsampling rule, selection -> (frame, row, col) exact,
clicks, the plotly widgets' events, the HTML export, and the link with the explorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.embedding import PatchEmbedding, embed_patches, sample_patches
from labkit.viz.embedding import CLICKED_RGB, SELECTED_RGB, EmbeddingView

T, GH, GW, P = 5, 4, 6, 16  # clip: 5 frames, 4 x 6 patches of 16 pixels


def labelled_clip(seed: int = 0) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Frames, features whose first principal component is the patch's flat id, segments."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(
        0, 256, (T, GH * P + 5, GW * P + 3, 3), dtype=np.uint8
    )  # with uncovered strips
    flat = torch.arange(T * GH * GW, dtype=torch.float32).reshape(T, GH, GW)
    feats = torch.zeros(T, GH, GW, 8)
    feats[..., 0] = flat  # large spread along channel 0
    feats[..., 1:] = torch.from_numpy(rng.normal(0, 1e-3, (T, GH, GW, 7))).float()
    segments = (np.arange(T * GH * GW).reshape(T, GH, GW) % 3).astype(np.int64)
    return frames, feats, segments


def test_sample_patches_rule() -> None:
    everything = sample_patches(T, (GH, GW), max_points=1000)
    assert everything.shape == (T * GH * GW, 3)
    t, i, j = np.meshgrid(np.arange(T), np.arange(GH), np.arange(GW), indexing="ij")
    np.testing.assert_array_equal(everything, np.stack([t.ravel(), i.ravel(), j.ravel()], 1))

    some = sample_patches(T, (GH, GW), max_points=23, seed=1)
    assert some.shape == (23, 3)
    np.testing.assert_array_equal(
        np.bincount(some[:, 0], minlength=T), [5, 5, 5, 4, 4]
    )  # equal shares
    flat = (some[:, 0] * GH + some[:, 1]) * GW + some[:, 2]
    assert (np.diff(flat) > 0).all()  # sorted, unique
    np.testing.assert_array_equal(
        some, sample_patches(T, (GH, GW), max_points=23, seed=1)
    )  # seeded
    assert not np.array_equal(some, sample_patches(T, (GH, GW), max_points=23, seed=2))

    thin = sample_patches(10, (GH, GW), max_points=4, seed=0)  # more frames than points
    np.testing.assert_array_equal(thin[:, 0], [0, 3, 6, 9])
    with pytest.raises(ValueError, match="max_points"):
        sample_patches(T, (GH, GW), max_points=0)


def test_selection_maps_back_to_patches_exactly() -> None:
    frames, feats, segments = labelled_clip()
    view = EmbeddingView(frames, feats, segments, patch_size=P, max_points=50, seed=3)
    emb = view.shown
    assert (
        isinstance(emb, PatchEmbedding)
        and emb.coords.shape == (50, 2)
        and emb.coords.dtype == np.float32
    )
    ids = (emb.index[:, 0] * GH + emb.index[:, 1]) * GW + emb.index[:, 2]
    # PC1 is the flat id up to a shift (largest loading positive): x increases with it
    np.testing.assert_allclose(emb.coords[:, 0] - emb.coords[0, 0], ids - ids[0], atol=1e-2)

    lo, hi = 30, 75  # select the points of flat ids 30..75 with a box over x
    x0 = emb.coords[0, 0] - ids[0]
    points = view.select_box((x0 + lo - 0.5, x0 + hi + 0.5), (-1e3, 1e3))
    expected_ids = ids[(ids >= lo) & (ids <= hi)]
    t, rest = np.divmod(expected_ids, GH * GW)
    expected = np.stack([t, rest // GW, rest % GW], 1)
    np.testing.assert_array_equal(view.selected_patches(), expected)
    np.testing.assert_array_equal(emb.patches(points), expected)
    for q, (tt, i, j) in zip(points, expected):
        assert emb.point_of(tt, i, j) == q
        torch.testing.assert_close(
            feats[tt, i, j], feats.reshape(-1, 8)[ids[q]]
        )  # the point's own features

    masks = emb.frame_masks(points)
    assert masks.sum() == len(points) and masks[tuple(expected.T)].all()
    counts = dict(view.selection_counts())
    assert counts == {
        int(f): int(c) for f, c in zip(*np.unique(expected[:, 0], return_counts=True))
    }
    assert f"{len(points)} patches selected" in view.selection_summary()

    # on the frames: exactly the selected patches change, filled or outlined in the selection colour
    for tt in range(T):
        out = view.render_frame(tt)
        differs = (out != frames[tt]).any(-1)
        patch_changed = differs[: GH * P, : GW * P].reshape(GH, P, GW, P).any(axis=(1, 3))
        np.testing.assert_array_equal(patch_changed, masks[tt])
        pixels = np.pad(
            masks[tt].repeat(P, 0).repeat(P, 1), ((0, 5), (0, 3)), mode="edge"
        )  # strip: edge patch
        assert not differs[~pixels].any()
        if masks[tt].any():
            i, j = np.argwhere(masks[tt])[0]
            assert tuple(out[i * P, j * P]) == SELECTED_RGB or masks[tt, max(i - 1, 0), j]
    strip = view.render_strip()
    assert strip.shape == (
        frames.shape[1],
        len(counts) * frames.shape[2] + 4 * (len(counts) - 1),
        3,
    )
    view.clear()
    assert len(view.selection) == 0 and view.render_strip() is None


def test_clicks() -> None:
    frames, feats, segments = labelled_clip()
    view = EmbeddingView(frames, feats, segments, patch_size=P, max_points=40, seed=0, frame=2)
    emb = view.shown
    t, i, j = (int(v) for v in emb.index[17])
    view.frame = t
    q = view.click_pixel(x=j * P + 7.0, y=i * P + 15.0)
    assert q == 17 and view.clicked == (t, i, j)
    out = view.render_frame()
    assert tuple(out[i * P, j * P + 5]) == CLICKED_RGB  # outline on the patch's top edge
    view.frame = 0
    q = view.click_pixel(x=GW * P + 1.0, y=GH * P + 2.0)  # the uncovered strip shows the edge patch
    assert view.clicked == (0, GH - 1, GW - 1) and q == emb.point_of(0, GH - 1, GW - 1)
    assert view.click_pixel(x=-3.0, y=2.0) is None  # outside the frame
    missing = next(
        (a, b, c)
        for a in range(T)
        for b in range(GH)
        for c in range(GW)
        if emb.point_of(a, b, c) is None
    )
    assert view.click_patch(*missing) is None and view.frame == missing[0]
    assert (
        view.click_point(5) == tuple(int(v) for v in emb.index[5]) and view.frame == emb.index[5, 0]
    )
    with pytest.raises(ValueError, match="outside"):
        emb.point_of(T, 0, 0)
    with pytest.raises(ValueError, match="point indices"):
        view.select([40])


def points_message(event: str, xs, ys, inds, selector: bool = False) -> dict:
    msg = {
        "event_type": event,
        "device_state": None,
        "points": {
            "xs": list(xs),
            "ys": list(ys),
            "point_indexes": list(inds),
            "trace_indexes": [0] * len(xs),
        },
    }
    if selector:
        msg["selector"] = {"type": "lasso", "selector_state": {"xs": [0, 1, 1], "ys": [0, 0, 1]}}
    return msg


def test_widget_events_from_the_browser() -> None:
    """The messages the front end sends: plotly's for a lasso and a click on a point, ipyevents'
    for a click on the frame (pixel coordinates in the image's own resolution)."""
    frames, feats, segments = labelled_clip()
    view = EmbeddingView(frames, feats, segments, patch_size=P, max_points=60)
    view.widget()
    scatter, image, events = view._ui["scatter"], view._ui["image"], view._ui["events"]
    before = image.value
    lasso = points_message("plotly_selected", [0, 0, 0], [0, 0, 0], [4, 9, 13], selector=True)
    scatter._handler_js2py_pointsCallback({"new": lasso})
    np.testing.assert_array_equal(view.selected_patches(), view.shown.index[[4, 9, 13]])
    assert "3 patches selected" in view._ui["summary"].value
    assert image.value != before and view._ui["strip"].layout.display != "none"

    t, i, j = (int(v) for v in view.shown.index[30])
    scatter._handler_js2py_pointsCallback(
        {"new": points_message("plotly_click", [0.0], [0.0], [30])}
    )
    assert view.clicked == (t, i, j) and view.frame == t and view._ui["frame"].value == t
    assert list(scatter.data[1].x) == [view.shown.coords[30, 0]]

    events._handle_mouse_msg(
        None, {"type": "click", "dataX": 2 * P + 3, "dataY": P + 1, "relativeX": 77}, None
    )
    assert view.clicked == (t, 1, 2)
    assert f"patch (1, 2) of frame {t}" in view._ui["image_title"].value

    view._ui["color_by"].value = "frame"
    np.testing.assert_array_equal(scatter.data[0].marker.color, view.shown.index[:, 0])
    view._ui["color_by"].value = "segment"
    assert len(set(scatter.data[0].marker.color)) == 3
    scatter._handler_js2py_pointsCallback({"new": points_message("plotly_deselect", [], [], [])})
    assert len(view.selection) == 0


def test_html_export(tmp_path: Path) -> None:
    frames, feats, segments = labelled_clip()
    view = EmbeddingView(
        frames, feats, segments, patch_size=P, max_points=60, indices=[10, 12, 14, 16, 18]
    )
    inline = view.write_html(tmp_path / "share" / "embedding.html")
    text = inline.read_text()
    assert (
        len(text) > 3_000_000 and "plotly_selected" in text
    )  # plotly.js inlined, the selection script
    assert "data:image\\u002fjpeg;base64," in text  # the frames (plotly escapes "/" in its JSON)
    cdn = view.write_html(tmp_path / "cdn.html", include_plotlyjs="cdn")
    assert cdn.stat().st_size < 1_000_000 and "cdn.plot.ly" in cdn.read_text()
    fig = view.plotly_figure()
    assert [s["label"] for s in fig.layout.sliders[0].steps] == ["10", "12", "14", "16", "18"]
    np.testing.assert_array_equal(np.asarray(fig.data[0].customdata)[:, :3], view.shown.index)


def test_static_figure_and_validation() -> None:
    frames, feats, segments = labelled_clip()
    view = EmbeddingView(frames, feats, None, patch_size=P, color_by="segment")
    assert isinstance(view.point_colors(), np.ndarray)  # no segments: coloured by frame
    view.select([1, 2])
    fig = view.figure()
    assert len(fig.axes) >= 3
    with pytest.raises(ValueError, match="grid"):
        EmbeddingView(frames, feats, patch_size=8)
    with pytest.raises(ValueError, match="method"):
        EmbeddingView(frames, feats, patch_size=P, method="tsne")
    with pytest.raises(ValueError, match="segments"):
        EmbeddingView(frames, feats, segments[:2], patch_size=P)


def test_linked_to_the_explorer(tmp_path: Path) -> None:
    from labkit.data.synthetic import generate_synthetic
    from labkit.viz.explorer import AttentionExplorer

    video = generate_synthetic(tmp_path, num_frames=8, size=(96, 160), seed=1).video
    ex = AttentionExplorer(
        video,
        "vit_small_patch16_224",
        model_kwargs={"depth": 2, "embed_dim": 96, "num_heads": 3},
        num_frames=4,
        img_size=64,
        k=3,
        progress=False,
    )
    ex.widget()
    ex._refresh()
    view = ex.embedding_view(max_points=50)
    np.testing.assert_array_equal(view.segments, ex.segments(ex.state.layer, 3))
    view.widget()
    ex.set(frame=2)
    assert view.frame == 2 and view._ui["frame"].value == 2
    view._ui["frame"].value = 3
    assert ex.state.frame == 3
    ex.set(k=4)
    np.testing.assert_array_equal(view.segments, ex.segments(ex.state.layer, 4))


@pytest.mark.slow
def test_umap_embedding() -> None:
    frames, feats, segments = labelled_clip()
    first = embed_patches(feats, "umap", max_points=80, seed=0)
    assert first.coords.shape == (80, 2) and np.isfinite(first.coords).all()
    again = embed_patches(feats, "umap", max_points=80, seed=0)
    np.testing.assert_allclose(first.coords, again.coords)  # seeded
    view = EmbeddingView(frames, feats, segments, patch_size=P, method="umap", max_points=80)
    view.widget()  # UMAP starts in the background, PCA shown meanwhile
    assert view.wait(timeout=300)
    assert (
        view.shown.method == "umap" and "UMAP took" in view.note
    )  # computed in the worker process
    np.testing.assert_allclose(
        view.shown.coords,
        embed_patches(feats, "umap", max_points=80, seed=0).coords,
        rtol=1e-4,
        atol=1e-4,
    )  # the same fit as in this process
