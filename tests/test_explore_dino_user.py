"""What DINO's and dino-vit-features' users expect of the attention workflow: one image per head
and the head mean, a stride for denser maps, the animation at the source's speed and size, and
the facet the segments are made of."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.attention import extract_video
from labkit.clustering import kmeans_segments
from labkit.explore import Exploration, ExploreConfig, explore, save_exploration
from labkit.viz.heads import head_maps, head_scale, plot_head_maps

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 3}


def _config(video: Path, **changes) -> ExploreConfig:
    options = dict(
        video_path=str(video), model_kwargs=TINY, num_frames=3, frame_step=2, img_size=64, k=3
    )
    return ExploreConfig(**{**options, **changes})


@pytest.fixture(scope="module")
def exploration(small_video: Path) -> Exploration:
    return explore(_config(small_video, head_images=True), progress=False)


# ---- one image per head and the head mean ---------------------------------------------------


def test_head_maps_render() -> None:
    rng = np.random.default_rng(0)
    attn = rng.random((4, 3, 5)).astype(np.float32)
    attn /= attn.sum((1, 2), keepdims=True) * 1.25  # each head's row keeps 80% on the patches
    maps = head_maps(attn, (50, 84), patch_size=16)
    assert maps.shape == (5, 50, 84) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    np.testing.assert_array_equal(maps[-1], maps[:4].mean(0))  # the mean of the per-head maps
    np.testing.assert_array_equal(maps[:4, :16, :16], np.broadcast_to(attn[:, :1, :1], (4, 16, 16)))
    np.testing.assert_array_equal(maps, head_maps(torch.from_numpy(attn), (50, 84), patch_size=16))
    strided = head_maps(attn, (32, 48), patch_size=16, stride=8, mode="bilinear")
    assert strided.shape == (5, 32, 48)
    np.testing.assert_allclose(strided[-1], strided[:4].mean(0), atol=1e-7)
    lo, hi = head_scale(maps)
    assert (lo, hi) == (float(maps.min()), float(maps.max()))
    assert head_scale(maps, "own") == (None, None)
    with pytest.raises(ValueError, match="non-negative"):
        head_maps(-attn, (50, 84), patch_size=16)
    frame = np.zeros((50, 84, 3), np.uint8)
    fig = plot_head_maps(frame, maps, title="t")
    assert len(fig.axes) >= 6  # frame, 4 heads, the mean (and the colour bar)


def test_head_images_of_the_exploration(exploration: Exploration, tmp_path: Path) -> None:
    exp = exploration
    maps = exp.head_maps()
    h = exp.attention.shape[1]
    assert maps.shape == (h + 1, *exp.size) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps[-1], maps[:h].mean(0))
    np.testing.assert_array_equal(maps, exp.head_maps())  # deterministic
    # each head's map is its [CLS] attention: patch (0, 0) paints the top-left p x p pixels
    np.testing.assert_array_equal(maps[:h, 0, 0], exp.attention[0, :, 0, 0].numpy())
    title = exp.figure_head_maps()._suptitle.get_text()
    assert exp.weights in title and "grid 4x6" in title and "input 64x96 px" in title
    assert "the last block" in title and "block -1" not in title  # words, not an index
    written = save_exploration(exp, tmp_path)
    names = [f"head_{i:02d}" for i in range(h)] + ["head_mean", "heads_grid"]
    for name in names:
        assert written[name] == tmp_path / f"{name}.png" and written[name].stat().st_size > 0
    from PIL import Image

    with Image.open(written["heads_grid"]) as image:
        assert image.width <= 1800  # legible where it is viewed


# ---- stride ----------------------------------------------------------------------------------


def test_stride_through_the_workflow(small_video: Path) -> None:
    exp = explore(_config(small_video, stride=8, num_frames=2), progress=False)
    # 64 x 106 frames cropped to 64 x 96: (64 - 16) // 8 + 1 = 7 rows, (96 - 16) // 8 + 1 = 11
    assert exp.attention.shape[-2:] == (7, 11) and exp.features.shape[1:3] == (7, 11)
    assert exp.patch_stride == 8 and exp.weights.endswith("stride 8")
    assert exp.rgb_maps().shape == exp.mask_overlays().shape == (2, 64, 106, 3)
    assert exp.segment_overlays().shape == (2, 64, 106, 3)
    assert exp.head_maps().shape == (4, 64, 106)
    assert "grid 7x11" in exp.figure_head_maps()._suptitle.get_text()
    exp.figure_segments()
    metrics = exp.metrics()
    assert metrics["stride"] == 8 and metrics["grid"] == [7, 11]
    with pytest.raises(ValueError, match="no artifacts"):  # not computed on a strided grid
        exp.figure_artifacts(frame=0)
    with pytest.raises(ValueError, match="stride"):
        ExploreConfig(stride=-1)


# ---- facets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("facet", ["keys", "values"])
def test_facet_reaches_the_segments(small_video: Path, exploration: Exploration, facet: str):
    exp = explore(_config(small_video, facet=facet), progress=False)
    ref = extract_video(
        exp.model, exp.frames, layer=-1, attention=False, kinds=(facet,), progress=False
    ).features[facet]
    torch.testing.assert_close(exp.features, ref.float(), atol=1e-5, rtol=1e-5)
    expected = kmeans_segments(exp.features, 3, mode="clip", seed=0).labels
    assert torch.equal(exp.segments_clip, expected)
    assert not torch.equal(exp.features, exploration.features)  # not the tokens
    assert f"the last block's {facet}" in exp.figure_segments()._suptitle.get_text()
    assert exp.metrics()["facet"] == facet
    with pytest.raises(ValueError, match="facet"):
        ExploreConfig(facet="attention")  # type: ignore[arg-type]


# ---- the animation at the source's speed and size --------------------------------------------


def _mp4_rate_and_size(path: Path) -> tuple[float, int, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate), stream.codec_context.width, stream.codec_context.height


@pytest.fixture(scope="module")
def ten_fps_video(tmp_path_factory) -> Path:
    from labkit.data.synthetic import generate_synthetic

    out = tmp_path_factory.mktemp("ten_fps")
    return generate_synthetic(out, num_frames=8, size=(64, 96), fps=10, seed=1).video


def test_animation_at_the_source_fps_and_size(ten_fps_video: Path, tmp_path: Path) -> None:
    cfg = _config(ten_fps_video, img_size=32, frame_step=1, num_frames=4)
    exp = explore(cfg, progress=False)
    assert exp.frames.shape[1:3] == (32, 48) and exp.display_frames.shape[1:3] == (64, 96)
    assert exp.animation_fps() == 10.0
    plain = exp.animation_frames()
    assert plain.shape == (4, 64, 3 * 96, 3)
    band = exp.animation_frames(labels=True).shape[1] - 64
    written = save_exploration(exp, tmp_path, figures=False)
    even = (64 + band + 1) // 2 * 2  # yuv420p: an odd height gains one edge row
    assert _mp4_rate_and_size(written["animation_mp4"]) == (10.0, 3 * 96, even)
    from PIL import Image

    with Image.open(written["animation_gif"]) as gif:
        assert gif.size == (3 * 96, 64 + band) and gif.info["duration"] == 100  # 10 fps
    # every other frame: the source's speed is 5 frames per second; asked otherwise, as asked
    exp2 = explore(_config(ten_fps_video, img_size=32, num_frames=3), progress=False)
    assert exp2.animation_fps() == 5.0
    exp3 = explore(
        _config(ten_fps_video, img_size=32, num_frames=2, animation_fps=3.0, animation_size=32),
        progress=False,
    )
    assert exp3.display_frames is None and exp3.animation_frames().shape == (2, 32, 3 * 48, 3)
    written = save_exploration(exp3, tmp_path / "asked", figures=False)
    assert _mp4_rate_and_size(written["animation_mp4"])[:2] == (3.0, 3 * 48)
    metrics = json.loads(written["metrics"].read_text())
    assert metrics["config"]["animation_fps"] == 3.0


def test_film_at_the_source_fps_and_size_or_as_asked(ten_fps_video: Path, tmp_path: Path):
    from labkit.film import write_films
    from labkit.models import load_backbone

    model = load_backbone("vit_small_patch16_224", seed=0, **TINY)
    written = write_films(ten_fps_video, model, tmp_path, methods=("mean",), num_frames=3)
    assert _mp4_rate_and_size(written["mean"]) == (10.0, 96, 64)
    written = write_films(
        ten_fps_video, model, tmp_path / "asked", methods=("heads",), num_frames=2, fps=4.0
    )
    assert _mp4_rate_and_size(written["heads"]) == (4.0, 96, 64)


# ---- the command -----------------------------------------------------------------------------


def test_cli_head_images_stride_facet_fps(ten_fps_video: Path, tmp_path: Path, capsys) -> None:
    from labkit import cli

    out = tmp_path / "run"
    args = ["attention", str(ten_fps_video), "--out", str(out), "--num-frames", "2"]
    args += ["--model-kwargs", "{depth: 2, embed_dim: 96, num_heads: 3}", "--img-size", "32"]
    args += ["--k", "3", "--stride", "8", "--facet", "values", "--head-images", "--fps", "4"]
    assert cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stride"] == 8 and metrics["facet"] == "values" and metrics["grid"] == [3, 5]
    for name in ("head_00", "head_01", "head_02", "head_mean", "heads_grid"):
        assert (out / f"{name}.png").is_file()
    assert _mp4_rate_and_size(out / "attention.mp4")[:2] == (4.0, 3 * 96)
    code = cli.main(["attention", str(ten_fps_video), "--film", "--stride", "8", "--out", str(out)])
    assert code == 2 and "--stride" in capsys.readouterr().err
