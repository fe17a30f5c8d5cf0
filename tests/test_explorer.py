"""The interactive explorer, headless: drive its state and widgets, check the rendered arrays.

References are computed independently of the explorer's caches and fast paths: attention and
features frame by frame (batch of one), DoRA discovery and tracking called directly, pictures by
the slow, general functions of labkit.viz.render.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.environment import is_headless
from labkit.viz.explorer import PANELS, AttentionExplorer, ExplorerState

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 3}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from labkit.models import load_backbone

    # seed 2: with seed 0 or 1 this 2-block model's k=3 segments happen to be the same partition
    # at layers 0 and 1 (so a layer change would not change the segments panel)
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


def reference(explorer: AttentionExplorer) -> dict[str, torch.Tensor]:
    """Attention, tokens, keys, queries of the explorer's block, one frame at a time."""
    from labkit.attention import extract
    from labkit.models import prepare_images

    parts: dict[str, list[torch.Tensor]] = {}
    for frame in explorer.frames:
        images = prepare_images(frame[None], explorer.model)
        out = extract(
            explorer.model,
            images,
            layer=explorer.state.layer,
            attention=True,
            kinds=("tokens", "keys", "queries"),
        )
        parts.setdefault("attention", []).append(out.attention)
        for kind, value in out.features.items():
            parts.setdefault(kind, []).append(value)
    return {name: torch.cat(p) for name, p in parts.items()}


def test_clip_selection(small_video: Path, model: torch.nn.Module) -> None:
    from labkit.explore import clip_indices_for
    from labkit.video import open_video

    with open_video(small_video, size=64) as video:
        expected = clip_indices_for(len(video), 5, 3, 2)
        frames = video.get(expected)
        from_video = AttentionExplorer(
            video, model, start_frame=3, num_frames=5, frame_step=2, progress=False
        )
    from_path = AttentionExplorer(
        small_video, model, start_frame=3, num_frames=5, frame_step=2, img_size=64, progress=False
    )
    from_array = AttentionExplorer(frames, model, indices=expected, progress=False)
    for ex in (from_video, from_path, from_array):
        assert ex.indices == expected.tolist()
        np.testing.assert_array_equal(ex.frames, frames)
    assert from_path.grid == (4, 6) and from_path.frames.shape == (5, 64, 106, 3)


def test_panels_match_independent_rendering(explorer: AttentionExplorer) -> None:
    from labkit.clustering import kmeans_segments
    from labkit.tracking import discover_objects, object_shares, track_objects
    from labkit.viz.render import heads_to_rgb, overlay, segment_overlay

    ref = reference(explorer)
    s = explorer.set(frame=3, heads=(2, 0, 1), alpha=0.6)
    frame = explorer.frames[3]
    size, p = frame.shape[:2], explorer.patch_size
    assert explorer.render().shape == (size[0], 4 * size[1], 3)

    np.testing.assert_array_equal(explorer.panel("frame"), frame)
    torch.testing.assert_close(
        explorer.layer_data(s.layer).attention, ref["attention"], rtol=1e-4, atol=1e-6
    )
    rgb = heads_to_rgb(ref["attention"][3], (2, 0, 1), size=size, patch_size=p)
    expected = overlay(frame, rgb, alpha=0.6, patch_size=p)
    assert (
        np.abs(explorer.panel("heads").astype(int) - expected).max() <= 1
    )  # float noise of the batch

    labels = kmeans_segments(explorer.layer_data(s.layer).tokens, 3, mode="clip", seed=0).labels[3]
    np.testing.assert_array_equal(
        explorer.panel("segments"), segment_overlay(frame, labels, 0.6, patch_size=p)
    )

    for sinkhorn in (True, False):
        found = discover_objects(
            ref["attention"][:1],
            ref["queries"][:1],
            ref["tokens"][:1],
            k=3,
            heads=[2, 0, 1],
            sinkhorn=sinkhorn,
        )
        maps = track_objects(found.prototypes, ref["keys"][None]).maps[0]  # (T, 3, gh, gw)
        torch.testing.assert_close(
            torch.from_numpy(explorer.objects(s.layer, (2, 0, 1), sinkhorn)),
            maps,
            rtol=1e-3,
            atol=1e-6,
        )
        # each object min-max scaled within the frame, tinted with its colour, tints added
        shown = maps[3]  # (3, gh, gw)
        lo = shown.amin(dim=(1, 2), keepdim=True)
        unit = (shown - lo) / (shown.amax(dim=(1, 2), keepdim=True) - lo)
        tints = torch.eye(3)  # objects 0, 1, 2: pure red, green, blue (viz.palette.OBJECT_RGB)
        mixed = torch.einsum("khw,kc->hwc", unit, tints).clamp(0, 1)
        colour = (mixed * 255).round().byte().numpy()
        expected = overlay(frame, colour, alpha=0.6, patch_size=p, mode="nearest")
        got = explorer.panel("objects", replace(s, sinkhorn=sinkhorn))
        assert np.abs(got.astype(int) - expected).max() <= 1
        assert unit.amax(dim=(1, 2)).tolist() == [1.0, 1.0, 1.0]  # every object at full colour

    # the status line: the shown frame's shares and overlap, with Sinkhorn-Knopp on and off
    explorer.compute()
    title = explorer.title()
    for sinkhorn, label in ((True, "with SK"), (False, "without")):
        got = object_shares(torch.from_numpy(explorer.objects(s.layer, (2, 0, 1), sinkhorn)[3]))
        shares = "/".join(f"{v:.2f}" for v in got.share.tolist())
        text = f"shares {shares}, overlap {float(got.mean_overlap()):.2f}"
        assert f"{label}: {text}" in title
        assert explorer.objects_numbers(sinkhorn=sinkhorn) == text
    assert explorer.objects_numbers() in explorer.panel_titles()[PANELS.index("objects")]


def changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> set[str]:
    return {name for name in PANELS if not np.array_equal(a[name], b[name])}


def test_controls_change_the_right_panels(explorer: AttentionExplorer) -> None:
    def panels() -> dict[str, np.ndarray]:
        return {name: explorer.panel(name) for name in PANELS}

    base = panels()
    explorer.set(frame=4)
    assert changed(base, panels()) == set(PANELS)  # another frame: every panel
    explorer.set(frame=0)
    assert changed(base, panels()) == set()  # back: the same pictures (deterministic)

    explorer.set(heads=(1, 2, 0))
    assert changed(base, panels()) == {"heads", "objects"}  # heads also seed DoRA's objects
    explorer.set(heads=(0, 1, 2), sinkhorn=False)
    assert changed(base, panels()) == {"objects"}
    off = explorer.objects(explorer.state.layer, (0, 1, 2), False)
    on = explorer.objects(explorer.state.layer, (0, 1, 2), True)
    assert not np.allclose(on, off)
    explorer.set(sinkhorn=True, k=4)
    assert changed(base, panels()) == {"segments"}
    assert set(np.unique(explorer.segments(explorer.state.layer, 4))) <= set(range(4))
    explorer.set(k=3, alpha=0.2)
    assert changed(base, panels()) == {"heads", "objects", "segments"}
    explorer.set(alpha=0.5, layer=0)
    assert {"heads", "objects", "segments"} <= changed(base, panels())
    explorer.set(layer=1)
    assert changed(base, panels()) == set()


def test_state_is_validated(explorer: AttentionExplorer) -> None:
    for bad, match in (
        ({"layer": 2}, "layer 2"),
        ({"heads": (0, 1, 3)}, "heads"),
        ({"heads": (0, 1)}, "heads"),
        ({"frame": 6}, "frame 6"),
        ({"k": 1}, "k must"),
        ({"alpha": 1.5}, "alpha"),
    ):
        with pytest.raises(ValueError, match=match):
            explorer.set(**bad)
    assert explorer.set(layer=-1).layer == 1  # negative counts from the end
    with pytest.raises(ValueError, match="does not exist"):
        AttentionExplorer("/no/such/video.mp4", explorer.model)


def test_caches_fill_once(explorer: AttentionExplorer, monkeypatch) -> None:
    import labkit.attention
    import labkit.viz.explorer

    calls = {"extract": 0, "kmeans": 0}
    extract, kmeans_segments = labkit.attention.extract, labkit.viz.explorer.kmeans_segments

    def counting_extract(*args, **kwargs):
        calls["extract"] += 1
        return extract(*args, **kwargs)

    def counting_kmeans(*args, **kwargs):
        calls["kmeans"] += 1
        return kmeans_segments(*args, **kwargs)

    monkeypatch.setattr(labkit.attention, "extract", counting_extract)
    monkeypatch.setattr(labkit.viz.explorer, "kmeans_segments", counting_kmeans)
    explorer.render()
    assert calls == {"extract": 2, "kmeans": 1}  # 6 frames in batches of 4, one k-means
    for t in range(len(explorer.frames)):
        explorer.set(frame=t)
        explorer.render()
        for name in PANELS:
            explorer.encoded(name)
    assert calls == {"extract": 2, "kmeans": 1}
    size = explorer._encoded.size
    explorer.set(frame=2)
    for name in PANELS:
        explorer.encoded(name)
    assert explorer._encoded.size == size  # served from the cache


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_widget_values_drive_the_pictures(explorer: AttentionExplorer) -> None:
    app = explorer.widget()
    assert app is explorer.widget()  # built once
    ui = explorer._ui
    explorer._refresh()
    images = ui["images"]

    def shown() -> dict[str, np.ndarray]:
        return {name: decode(images[name].value) for name in PANELS}

    before = shown()
    for name in PANELS:
        np.testing.assert_array_equal(before[name], explorer.panel(name))  # PNG: lossless
    ui["frame"].value = 5
    assert explorer.state.frame == 5 and changed(before, shown()) == set(PANELS)
    ui["frame"].value = 0
    ui["heads"][0].value = 2
    assert explorer.state.heads == (2, 1, 2) and changed(before, shown()) == {"heads", "objects"}
    ui["heads"][0].value = 0
    ui["sinkhorn"].value = False
    assert changed(before, shown()) == {"objects"}
    ui["sinkhorn"].value = True
    ui["k"].value = 5
    assert changed(before, shown()) == {"segments"}
    ui["k"].value = 3
    ui["alpha"].value = 1.0
    now = shown()
    assert changed(before, now) == {"heads", "objects", "segments"}
    np.testing.assert_array_equal(now["segments"], explorer.panel("segments"))
    assert explorer.title() in html.unescape(ui["status"].value)  # a wrapping HTML line
    assert explorer.last_update_ms is not None
    explorer.set(frame=3)  # the Python API moves the controls too
    assert ui["frame"].value == 3
    np.testing.assert_array_equal(decode(images["frame"].value), explorer.frames[3])


def test_progress_reported_while_filling(small_video: Path, model: torch.nn.Module) -> None:
    ex = AttentionExplorer(
        small_video,
        model,
        num_frames=6,
        frame_step=2,
        img_size=64,
        k=3,
        batch_size=2,
        progress=False,
    )
    seen = []
    ex.widget()
    bar = ex._ui["progress"]
    bar.observe(lambda change: seen.append((change["new"], bar.max)), names="value")
    ex._refresh()
    assert (2, 6) in seen and (6, 6) in seen  # three batches of two frames
    assert bar.layout.visibility == "hidden"  # done


def test_from_exploration_and_static_show(small_video: Path, monkeypatch, tmp_path: Path) -> None:
    from labkit.explore import ExploreConfig, explore
    from labkit.viz.render import heads_to_rgb, overlay

    cfg = ExploreConfig(
        video_path=str(small_video),
        model_kwargs=TINY,
        num_frames=5,
        frame_step=2,
        img_size=64,
        k=3,
        heads=(2, 0, 1),
    )
    exp = explore(cfg, progress=False)
    ex = AttentionExplorer.from_exploration(exp, progress=False)
    assert ex.state.heads == (2, 0, 1) and ex.state.k == 3 and ex.indices == exp.indices.tolist()
    rgb = heads_to_rgb(exp.attention[0], (2, 0, 1), size=exp.size, patch_size=exp.patch_size)
    np.testing.assert_array_equal(
        ex.panel("heads"), overlay(exp.frames[0], rgb, 0.5, patch_size=exp.patch_size)
    )
    import labkit.attention

    calls = []
    extract = labkit.attention.extract
    monkeypatch.setattr(
        labkit.attention, "extract", lambda *a, **k: calls.append(1) or extract(*a, **k)
    )
    assert ex.render().shape == (64, 4 * 106, 3)
    assert calls == []  # explore's one pass also gave DoRA's keys and queries: no second pass
    monkeypatch.setattr(labkit.attention, "extract", extract)
    own = AttentionExplorer(
        exp.frames, exp.model, indices=list(exp.indices), heads=(2, 0, 1), k=3, progress=False
    )  # computes its own pass
    seeded, fresh = ex.layer_data(-1), own.layer_data(-1)
    torch.testing.assert_close(seeded.keys, fresh.keys)
    torch.testing.assert_close(seeded.queries, fresh.queries)
    diff = ex.panel("objects").astype(int) - own.panel("objects").astype(int)
    assert np.abs(diff).max() <= 1  # the same DoRA objects panel

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    assert is_headless()
    ex.show()
    from matplotlib.figure import Figure

    assert isinstance(shown[0], Figure) and len(shown[0].axes) == 4
    path = ex.save_png(tmp_path / "deep" / "state.png")
    from PIL import Image

    assert np.asarray(Image.open(path)).shape == (64, 4 * 106, 3)


def test_state_dataclass_defaults() -> None:
    s = ExplorerState()
    assert (s.frame, s.layer, s.heads, s.k, s.alpha, s.sinkhorn) == (0, -1, (0, 1, 2), 5, 0.5, True)
    json.dumps(s.__dict__)  # plain values


@pytest.mark.slow
def test_notebook_under_papermill(small_video: Path, tmp_path: Path) -> None:
    from labkit.notebooks import notebook_parameters, run_notebook

    params = notebook_parameters("explorer")
    assert {
        "video_path",
        "num_frames",
        "layer",
        "heads",
        "k",
        "alpha",
        "sinkhorn",
        "embedding",
        "max_points",
        "color_by",
        "out_dir",
    } <= set(params)
    out = tmp_path / "out"
    run = run_notebook(
        "explorer",
        tmp_path / "run",
        {
            "video_path": str(small_video),
            "model_kwargs": TINY,
            "num_frames": 6,
            "frame_step": 2,
            "img_size": 64,
            "k": 3,
            "embedding": "pca",
            "max_points": 100,
            "out_dir": str(out),
        },
        progress=False,
    )
    from PIL import Image

    state = np.asarray(Image.open(out / "explorer.png"))
    assert state.shape == (64, 4 * 106, 3) and state.std() > 0
    assert np.asarray(Image.open(out / "embedding.png")).std() > 0
    html = (out / "embedding.html").read_text()
    assert "plotly_selected" in html and len(html) > 3_000_000  # plotly.js inlined: works offline
    nb = json.loads(run.output.read_text())
    images = sum(
        "image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])
    )
    assert images >= 2  # the explorer's and the embedding's static pictures


def test_artifact_panels(small_video: Path, model: torch.nn.Module, monkeypatch) -> None:
    import labkit.artifacts
    import labkit.viz.explorer
    from labkit.artifacts import token_artifacts
    from labkit.models import load_backbone, prepare_images
    from labkit.viz.artifacts import OUTLIER_COLOUR

    ex = AttentionExplorer(
        small_video,
        model,
        num_frames=4,
        frame_step=3,
        img_size=64,
        k=3,
        batch_size=3,
        progress=False,
        panels=("frame", "artifacts", "heads"),
    )
    calls = []
    real = labkit.artifacts.token_artifacts
    monkeypatch.setattr(
        labkit.viz.explorer, "token_artifacts", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    panel = ex.panel("artifacts")
    assert panel.shape == ex.frames.shape[1:] and panel.dtype == np.uint8
    assert ex.render().shape == (64, 3 * 106, 3)
    other_frame = ex.panel("artifacts", replace(ex.state, frame=2))
    other_layer = ex.panel("artifacts", replace(ex.state, layer=0))
    assert not np.array_equal(panel, other_frame) and not np.array_equal(panel, other_layer)
    np.testing.assert_array_equal(panel, ex.panel("artifacts"))  # deterministic
    assert len(calls) == 2  # the whole clip in batches of 3, once, for every layer and frame
    data = ex.artifacts()
    direct = token_artifacts(model, prepare_images(ex.frames, model))
    torch.testing.assert_close(data.norms, direct.norms, rtol=1e-5, atol=1e-5)
    assert data.register_maps is None and data.cls_register_mass is None
    assert (
        "registers" not in AttentionExplorer(ex.frames, model, progress=False, panels="all").panels
    )
    assert "outliers" in ex.title() and len(ex.figure().axes) == 3
    with pytest.raises(ValueError, match="panels"):
        AttentionExplorer(ex.frames, model, progress=False, panels=("frame", "norms"))

    # a register model with a planted high-norm token: outlined in cyan, registers panel tiled
    reg = load_backbone("vit_small_patch14_reg4_dinov2", seed=0, depth=2, embed_dim=48, num_heads=3)
    frames = np.full((2, 56, 84, 3), 120, np.uint8)
    frames[0, 14:28, 28:42] = 255  # patch (1, 2) of frame 0 bright, in a flat frame
    with torch.no_grad():
        reg.patch_embed.proj.weight.mul_(20.0)  # the bright patch's token norm grows the most
    rx = AttentionExplorer(frames, reg, k=2, progress=False, panels="all", alpha=0.5)
    assert rx.panels == ("frame", "heads", "objects", "segments", "artifacts", "registers")
    outliers = rx.artifacts().outliers
    expected = torch.zeros_like(outliers)
    expected[0, :, 1, 2] = True
    assert torch.equal(outliers, expected)
    panel = rx.panel("artifacts")
    assert (panel[14, 28:42] == OUTLIER_COLOUR).all() and (panel[27, 28:42] == OUTLIER_COLOUR).all()
    assert not (rx.panel("artifacts", replace(rx.state, frame=1)) == OUTLIER_COLOUR).all(-1).any()
    tiles = rx.panel("registers")
    assert tiles.shape == (56, 84, 3) and tiles.dtype == np.uint8 and tiles.std() > 0
    assert rx.artifacts().register_maps.shape == (2, 2, 4, 4, 6)
    assert "registers" in rx.title() and len(rx.figure().axes) == 6
