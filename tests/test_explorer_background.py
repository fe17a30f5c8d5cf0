"""The explorer's background work, facets and patch similarity, headless (no front end).

Behaviour only: what is computed, in which thread, what the pictures and titles say; no timing
is asserted (timings: bench/explorer_browser.py and docs/benchmarks.md). References are computed
independently: cosine similarity with torch.nn.functional, facets with extract_video.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit.viz.explorer
from labkit.attention import extract_video
from labkit.embedding import nearest_patch, patch_similarity
from labkit.viz.embedding import EmbeddingView
from labkit.viz.explorer import AttentionExplorer
from labkit.viz.similarity import CLICKED_RGB, colour_bar, placeholder, similarity_strip

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 3}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from labkit.models import load_backbone

    return load_backbone("vit_small_patch16_224", seed=2, **TINY)


@pytest.fixture()
def explorer(small_video: Path, model: torch.nn.Module) -> AttentionExplorer:
    return AttentionExplorer(
        small_video,
        model,
        num_frames=6,
        frame_step=2,
        img_size=64,
        k=3,
        batch_size=4,
        progress=False,
        image_format="png",
    )


def test_patch_similarity_against_cosine() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 4, 5, 8, generator=gen)
    sim = patch_similarity(feats, 1, 2, 3)
    assert sim.shape == (3, 4, 5) and sim.dtype == torch.float32
    ref = torch.nn.functional.cosine_similarity(feats, feats[1, 2, 3].expand_as(feats), dim=-1)
    torch.testing.assert_close(sim, ref, rtol=1e-5, atol=1e-6)
    assert abs(float(sim[1, 2, 3]) - 1.0) < 1e-6 and float(sim.min()) >= -1.0
    index = np.array([[0, 0, 0], [2, 3, 4], [1, 2, 3]])
    q, cos = nearest_patch(feats, index, 1, 2, 3)
    assert q == 2 and abs(cos - 1.0) < 1e-6  # the patch itself when it is sampled
    q, cos = nearest_patch(feats, index[:2], 1, 2, 3)
    best = int(torch.argmax(ref[index[:2, 0], index[:2, 1], index[:2, 2]]))
    assert q == best and abs(cos - float(ref[tuple(index[best])])) < 1e-6
    with pytest.raises(ValueError, match="outside"):
        patch_similarity(feats, 3, 0, 0)


def test_similarity_pictures() -> None:
    bar = colour_bar(120, -0.25, 1.0)
    assert bar.shape == (120, 72, 3) and bar.dtype == np.uint8 and bar.std() > 0
    grey = placeholder((64, 106), "computing layer 1: 4/6 frames")
    assert grey.shape == (64, 106, 3) and (grey > 200).any()  # text on grey
    frames = np.full((3, 32, 48, 3), 100, np.uint8)
    maps = np.linspace(0, 1, 3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3)
    strip = similarity_strip(
        frames,
        maps,
        ["a", "b", "c"],
        patch_size=16,
        vmin=0.0,
        per_row=2,
        scale=1.0,
        patch=(1, 0, 0),
    )
    assert strip.shape == (2 * 32 + 4, 2 * 48 + 4 + 72, 3)
    # the clicked patch outlined on the second tile (row 0, column 1), not on the first
    assert (strip[14, 52 : 52 + 16] == CLICKED_RGB).all(-1).all()  # the patch's lower edge
    assert not (strip[14, :48] == CLICKED_RGB).all(-1).any()


def test_facets(explorer: AttentionExplorer) -> None:
    layer = explorer.state.layer
    for facet in ("tokens", "keys", "queries", "values"):
        want = extract_video(
            explorer.model,
            explorer.frames,
            layer=layer,
            attention=False,
            kinds=(facet,),
            batch_size=4,
            progress=False,
        ).features[facet]
        torch.testing.assert_close(explorer.features(layer, facet), want.float())
    before = {n: explorer.panel(n) for n in ("heads", "objects", "segments")}
    explorer.set(facet="values")
    after = {n: explorer.panel(n) for n in ("heads", "objects", "segments")}
    assert np.array_equal(before["heads"], after["heads"])
    assert np.array_equal(before["objects"], after["objects"])
    assert (layer, 3, "values") in explorer._segments and (layer, 3, "tokens") in explorer._segments
    assert "k-means k=3 of the values" in explorer.title()
    with pytest.raises(ValueError, match="facet"):
        explorer.set(facet="attention")


def test_similarity_in_the_explorer(explorer: AttentionExplorer) -> None:
    p = explorer.patch_size
    assert explorer.state.patch is None
    empty = explorer.panel("similarity")
    assert empty.shape == explorer.frames.shape[1:] and not np.array_equal(
        empty, explorer.frames[0]
    )
    explorer.select_patch(2, 1, 3)
    s = explorer.state
    assert s.patch == (2, 1, 3)
    sims = explorer.similarity(s.layer, s.facet, s.patch)
    ref = patch_similarity(explorer.features(s.layer, "tokens"), 2, 1, 3).numpy()
    np.testing.assert_allclose(sims, ref, rtol=1e-6, atol=1e-6)
    on = explorer.panel("similarity", replace(s, frame=2))
    assert (on[p * 1 + 8, p * 3 : p * 3 + p] == CLICKED_RGB).all(-1).any()  # outlined here
    off = explorer.panel("similarity", replace(s, frame=0))
    assert not (off == CLICKED_RGB).all(-1).any()  # the patch is in another frame
    head, strip = explorer.similarity_pictures()
    assert head.shape[0] == explorer.frames.shape[1] and head.shape[1] > explorer.frames.shape[2]
    assert strip.ndim == 3 and strip.dtype == np.uint8
    assert "similarity to patch (1,3)" in explorer.title()
    with pytest.raises(ValueError, match="patch"):
        explorer.set(patch=(0, 99, 0))
    ex = AttentionExplorer(
        explorer.frames,
        explorer.model,
        progress=False,
        panels=("frame", "similarity"),
        patch=(0, 0, 0),
    )
    assert ex.render().shape == (64, 2 * 106, 3)


def test_background_worker(explorer: AttentionExplorer, monkeypatch) -> None:
    pytest.importorskip("ipywidgets")
    ks: list[int] = []
    threads: list[str] = []
    kmeans = labkit.viz.explorer.kmeans_segments

    def counting(features, k, **kwargs):
        ks.append(int(k))
        threads.append(threading.current_thread().name)
        return kmeans(features, k, **kwargs)

    monkeypatch.setattr(labkit.viz.explorer, "kmeans_segments", counting)
    explorer.widget()
    explorer.background = True  # as show() does in the live app
    images = explorer._ui["images"]
    explorer._refresh()  # returns at once: nothing was computed yet
    assert "labkit-pending" not in images["frame"]._dom_classes
    assert all("labkit-pending" in images[n]._dom_classes for n in ("heads", "objects", "segments"))
    assert explorer.wait(timeout=120)
    deadline = threading.Event()  # the worker then swaps the pictures in
    for _ in range(200):
        if not any("labkit-pending" in i._dom_classes for i in images.values()):
            break
        deadline.wait(0.05)
    for name, image in images.items():
        assert "labkit-pending" not in image._dom_classes
        assert image.value == explorer.encoded(name)
    assert ks == [3] and threads == ["labkit-explorer"]

    # a burst of key presses on k: one k-means, for the last value
    for k in (4, 5, 6):
        explorer._ui["k"].value = k
    assert explorer.wait(timeout=120)
    assert ks == [3, 6]
    # a new layer, then at once another: the first is never extracted
    layers: list[int] = []
    extract = explorer._extract

    def counting_extract(layer, kinds, attention):
        layers.append(layer)
        return extract(layer, kinds, attention)

    monkeypatch.setattr(explorer, "_extract", counting_extract)
    explorer.set(layer=0)
    explorer.set(layer=1)
    assert explorer.wait(timeout=120)
    assert 0 not in explorer._layers and 0 not in layers  # layer 1 was cached already
    # a failure is said in the app, the worker lives on
    monkeypatch.setattr(
        labkit.viz.explorer,
        "kmeans_segments",
        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")),
    )
    explorer.set(k=7)
    for _ in range(200):
        if "failed" in explorer._ui["busy"].value:
            break
        deadline.wait(0.05)
    assert "RuntimeError: boom" in explorer._ui["busy"].value
    assert explorer._worker.is_alive()


def test_embedding_click_and_umap_title(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    frames = np.zeros((4, 32, 48, 3), np.uint8)
    feats = torch.randn(4, 2, 3, 8, generator=gen)
    view = EmbeddingView(frames, feats, patch_size=16, max_points=8)
    missing = next(
        (t, i, j)
        for t in range(4)
        for i in range(2)
        for j in range(3)
        if view.shown.point_of(t, i, j) is None
    )
    assert view.click_patch(*missing) is None
    q, cos = view.nearest
    sims = patch_similarity(feats, *missing)[tuple(view.shown.index.T)]
    assert q == int(torch.argmax(sims)) and abs(cos - float(sims.max())) < 1e-6

    # UMAP asked for, still running: the title and the saved PNG say PCA; rewritten when done
    view.method = "umap"
    release = threading.Event()
    view._thread = threading.Thread(target=release.wait, daemon=True)
    view._thread.start()
    assert "PCA (UMAP still running)" in view._title()
    out = view.save_png(tmp_path / "embedding.png", wait=0.01)
    assert out.is_file() and view._save_when_done == [(out, 100)]
    assert "PCA (UMAP still running)" in view.figure()._suptitle.get_text()
    release.set()
