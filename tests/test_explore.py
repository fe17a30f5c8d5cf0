"""The attention-explorer workflow, its CLI path and its notebook under papermill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.explore import (
    Exploration,
    ExploreConfig,
    block_words,
    clip_indices_for,
    explore,
    save_exploration,
)

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 3}


@pytest.fixture(scope="module")
def exploration(small_video: Path) -> Exploration:
    cfg = ExploreConfig(
        video_path=str(small_video),
        model_kwargs=TINY,
        num_frames=6,
        frame_step=2,
        img_size=64,
        k=3,
        heads=(2, 0, 1),
    )
    return explore(cfg, progress=False)


def test_clip_indices() -> None:
    assert clip_indices_for(100, 5, 10, 3).tolist() == [10, 13, 16, 19, 22]
    assert clip_indices_for(10, 5, 4, 2).tolist() == [4, 6, 8]  # capped at the video's end
    spread = clip_indices_for(101, 5, 0, 0)
    assert spread.tolist() == [0, 25, 50, 75, 100]
    with pytest.raises(ValueError, match="past the video"):
        clip_indices_for(10, 5, 10, 1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"heads": (0, 1)}, "exactly three heads"),
        ({"k": 1}, "k must be"),
        ({"num_frames": 0}, "num_frames"),
        ({"keep": 1.5}, "keep"),
        ({"video_path": "/no/such/video.mp4"}, "does not exist"),
        ({"checkpoint": "/no/such.pth"}, "not a file"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExploreConfig(**changes)


def test_explore_shapes_and_consistency(exploration: Exploration) -> None:
    exp = exploration
    t = len(exp.indices)
    assert exp.indices.tolist() == [0, 2, 4, 6, 8, 10]
    assert exp.frames.shape == (t, 64, 106, 3) and exp.frames.dtype == np.uint8
    # 64 x 106 frames, patch 16: grid 4 x 6 (the 10-pixel strip at the right is cropped)
    assert exp.attention.shape == (t, 3, 4, 6)
    assert exp.features.shape == (t, 4, 6, 96)
    sums = exp.attention.flatten(2).sum(-1)
    assert torch.all(sums <= 1 + 1e-5) and torch.all(sums > 0)
    assert exp.masks.dtype == torch.bool and exp.masks.shape == exp.attention.shape
    for seg in (exp.segments_frame, exp.segments_clip):
        assert seg.shape == (t, 4, 6) and int(seg.min()) >= 0 and int(seg.max()) < 3


def test_renders(exploration: Exploration) -> None:
    exp = exploration
    rgb = exp.rgb_maps()
    assert rgb.shape == exp.frames.shape and rgb.dtype == np.uint8
    # heads (2, 0, 1) as R, G, B: swapping the order swaps the channels
    swapped = exp.rgb_maps(heads=(0, 2, 1))
    np.testing.assert_array_equal(rgb[..., 0], swapped[..., 1])
    np.testing.assert_array_equal(rgb[..., 1], swapped[..., 0])
    anim = exp.animation_frames()  # at the source's size, 96 x 160
    assert anim.shape == (len(exp.indices), 96, 3 * 160, 3)
    np.testing.assert_array_equal(anim[:, :, :160], exp.display_frames)
    assert exp.segment_overlays("clip").shape == exp.frames.shape
    assert exp.mask_overlays().shape == exp.frames.shape


def test_save_exploration(exploration: Exploration, tmp_path: Path) -> None:
    written = save_exploration(exploration, tmp_path)
    for key in ("heads", "masks", "segments", "animation_gif", "animation_mp4", "metrics"):
        assert written[key].is_file() and written[key].stat().st_size > 0
    metrics = json.loads(written["metrics"].read_text())
    assert metrics["num_frames"] == 6 and metrics["grid"] == [4, 6] and metrics["num_heads"] == 3
    assert 0 < metrics["attention_entropy_nats"] <= metrics["attention_entropy_uniform_nats"] + 1e-6
    assert 0 <= metrics["segment_persistence_clip"] <= 1
    assert metrics["config"]["heads"] == [2, 0, 1]


def test_artifacts_in_exploration(
    exploration: Exploration, small_video: Path, tmp_path: Path
) -> None:
    from labkit.artifacts import token_artifacts
    from labkit.models import prepare_images

    exp = exploration
    art = exp.artifacts
    assert art.norms.shape == (6, 2, 4, 6) and art.cls_attention.shape == (6, 2, 3, 4, 6)
    direct = token_artifacts(
        exp.model, prepare_images(exp.frames, exp.model)
    )  # one batch of all frames
    torch.testing.assert_close(art.norms, direct.norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        art.cls_attention[:, -1], exp.attention, rtol=1e-5, atol=1e-6
    )  # layer -1
    found = exp.metrics()["artifacts"]
    assert found["num_registers"] == 0 and found["cls_register_mass_per_layer"] is None
    assert (
        len(found["outlier_fraction_per_layer"]) == 2
        and len(found["cls_outlier_mass_per_layer"]) == 2
    )
    assert found["outlier_fraction_per_layer"][1] == pytest.approx(
        float(direct.outliers[:, 1].float().mean()), abs=1e-5
    )
    fig = exp.figure_artifacts()
    assert exp.weights in fig._suptitle.get_text() and len(fig.axes) >= 3 + 3
    written = save_exploration(exp, tmp_path, figures=True)
    assert written["artifacts"].stat().st_size > 0

    reg = explore(
        ExploreConfig(
            video_path=str(small_video),
            model="vit_small_patch14_reg4_dinov2",
            model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 3},
            num_frames=2,
            img_size=56,
            k=2,
            pretrained=False,
        ),
        progress=False,
    )
    found = reg.metrics()["artifacts"]
    assert found["num_registers"] == 4 and len(found["cls_register_mass_per_layer"]) == 2
    assert reg.artifacts.register_attention.shape == (
        2,
        1,
        4,
        3,
        4,
        6,
    ) and reg.artifacts.register_layers == (1,)
    json.dumps(reg.metrics())
    assert len(reg.figure_artifacts(frame=1).axes) > len(fig.axes)  # a row of register maps


def test_explore_is_deterministic(small_video: Path) -> None:
    cfg = ExploreConfig(
        video_path=str(small_video), model_kwargs=TINY, num_frames=3, img_size=64, k=3
    )
    torch.manual_seed(1)
    a = explore(cfg, progress=False)
    torch.manual_seed(1)
    b = explore(cfg, progress=False)
    torch.testing.assert_close(a.attention, b.attention)
    assert torch.equal(a.segments_clip, b.segments_clip)


def test_bad_heads_and_layer(small_video: Path) -> None:
    with pytest.raises(ValueError, match="heads .* out of range"):
        explore(
            ExploreConfig(video_path=str(small_video), model_kwargs=TINY, heads=(0, 1, 5)),
            progress=False,
        )
    with pytest.raises(ValueError, match="layer 4 out of range"):
        explore(
            ExploreConfig(video_path=str(small_video), model_kwargs=TINY, layer=4), progress=False
        )


def test_cli_attention_on_real_footage(tour_video: Path, tmp_path: Path) -> None:
    """The quick CLI path on the shared DAVIS tour video: real frames, right sizes, files
    written.
    """
    from labkit import cli

    out = tmp_path / "attn"
    code = cli.main(
        [
            "attention",
            str(tour_video),
            "--out",
            str(out),
            "--num-frames",
            "3",
            "--start-frame",
            "80",
            "--frame-step",
            "10",
            "--img-size",
            "96",
            "--k",
            "3",
            "--model-kwargs",
            "{depth: 2, embed_dim: 96, num_heads: 3}",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == [80, 90, 100]  # breakdance starts at frame 80 of the tour
    assert metrics["video"]["source_size"] == [480, 854]
    assert metrics["frame_size"] == [96, 170]
    assert (out / "attention.gif").stat().st_size > 0


def test_cli_reports_bad_input(tmp_path: Path, capsys) -> None:
    from labkit import cli

    code = cli.main(["attention", str(tmp_path / "missing.mp4"), "--out", str(tmp_path)])
    assert code == 2
    assert "missing.mp4" in capsys.readouterr().err


@pytest.mark.slow
def test_notebook_under_papermill(small_video: Path, tmp_path: Path) -> None:
    from labkit.notebooks import run_notebook

    out = tmp_path / "run"
    run = run_notebook(
        "attention_explorer",
        out,
        {
            "video_path": str(small_video),
            "model_kwargs": TINY,
            "num_frames": 4,
            "img_size": 64,
            "k": 3,
            "out_dir": str(out),
        },
        progress=False,
    )
    assert run.output.is_file() and run.html.is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_frames"] == 4 and metrics["k"] == 3 and metrics["grid"] == [4, 6]
    for name in ("heads.png", "masks.png", "segments.png", "attention.gif", "attention.mp4"):
        assert (out / name).stat().st_size > 0
    nb = json.loads(run.output.read_text())
    images = sum(
        "image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])
    )
    assert (
        images >= 6
    )  # every figure cell (artifacts included) and the explorer's static picture rendered
    assert (
        len(metrics["artifacts"]["outlier_fraction_per_layer"]) == 2 and "comparison" not in metrics
    )
    assert (out / "artifacts.png").stat().st_size > 0


@pytest.mark.slow
def test_notebook_compares_models_under_papermill(small_video: Path, tmp_path: Path) -> None:
    from PIL import Image

    from labkit.notebooks import run_notebook

    checkpoint = tmp_path / "other.pth"
    other = load_backbone_tiny(seed=5)
    torch.save(other.state_dict(), checkpoint)
    out = tmp_path / "run"
    run = run_notebook(
        "attention_explorer",
        out,
        {
            "video_path": str(small_video),
            "model_kwargs": TINY,
            "num_frames": 3,
            "img_size": 64,
            "k": 3,
            "out_dir": str(out),
            "compare_models": [
                "random=vit_small_patch16_224",
                f"other=vit_small_patch16_224:{checkpoint}",
            ],
        },
        progress=False,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["comparison"]) == ["random", "other"]
    assert "random init" in metrics["comparison"]["random"]["weights"]
    assert "other.pth" in metrics["comparison"]["other"]["weights"]
    assert metrics["config"]["compare_models"][0] == "random=vit_small_patch16_224"
    picture = np.asarray(Image.open(out / "comparison.png"))
    assert picture.ndim == 3 and picture.std() > 0
    nb = json.loads(run.output.read_text())
    cell = next(c for c in nb["cells"] if "exp.comparison()" in "".join(c["source"]))
    shown = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
    assert len(shown) == 3  # the comparison, then one artifacts figure per model


def load_backbone_tiny(seed: int) -> torch.nn.Module:
    from labkit.models import load_backbone

    return load_backbone("vit_small_patch16_224", seed=seed, **TINY)


def test_compare_models_field() -> None:
    cfg = ExploreConfig(
        compare_models=["a=vit_small_patch16_224", "b=vit_small_patch16_224:random"]
    )
    assert cfg.compare_models == ("a=vit_small_patch16_224", "b=vit_small_patch16_224:random")
    with pytest.raises(ValueError, match="compare_models.*repeat"):
        ExploreConfig(compare_models=("a=vit_small_patch16_224", "a=vit_tiny_patch16_224"))
    with pytest.raises(ValueError, match="compare_models.*not found"):
        ExploreConfig(compare_models=("a=vit_small_patch16_224:/no/such.pth",))
    with pytest.raises(ValueError, match="compare_models"):
        ExploreConfig(compare_models="a=vit_small_patch16_224")  # a string, not a list
    from labkit.notebooks import check_parameters

    check_parameters("attention_explorer", {"compare_models": ["a=vit_small_patch16_224"]})
    with pytest.raises(ValueError, match="compare_models"):
        check_parameters("attention_explorer", {"compare_models": 3})


def test_block_words() -> None:
    assert block_words(-1) == "the last block"
    assert block_words(-2) == "block -2 (from the end)"
    assert block_words(0) == "block 0" and block_words(3) == "block 3"
