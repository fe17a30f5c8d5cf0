"""Labelled animations (panel titles, frame number, weights) and animations embedded in HTML."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from labkit.viz import write_animation
from labkit.viz.animate import animation_html
from labkit.viz.render import label_panels

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 3}


def _clip(T: int = 3, H: int = 48, W: int = 3 * 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


def test_label_panels_adds_a_band_above_and_keeps_the_frames():
    clip = _clip()
    out = label_panels(
        clip, ["frame", "heads", "k-means"], [f"frame {t}" for t in range(3)], font_size=12
    )
    band = out.shape[1] - clip.shape[1]
    assert out.dtype == np.uint8 and out.shape[0] == 3 and out.shape[2:] == clip.shape[2:]
    assert band == round(12 * 2.9)
    np.testing.assert_array_equal(out[:, band:], clip)  # nothing of the picture is covered
    # text is drawn: bright pixels on the dark band, titles over each of the three panels
    for i in range(3):
        panel = out[0, : round(12 * 1.45), i * 64 : (i + 1) * 64]
        assert (panel.max(-1) > 200).sum() > 10
    # the info line differs between frames, the titles do not
    assert not np.array_equal(out[0, :band], out[1, :band])
    np.testing.assert_array_equal(out[0, : round(12 * 1.4)], out[1, : round(12 * 1.4)])
    again = label_panels(
        clip, ["frame", "heads", "k-means"], [f"frame {t}" for t in range(3)], font_size=12
    )
    np.testing.assert_array_equal(out, again)  # deterministic


def test_label_panels_forms_and_errors():
    clip = _clip(T=2)
    one = label_panels(clip[0], ["a"])
    assert one.ndim == 3 and one.shape[0] > clip.shape[1]
    same = label_panels(clip, ["a", "b"], "weights")  # one info line for every frame
    np.testing.assert_array_equal(same[0, : -clip.shape[1]], same[1, : -clip.shape[1]])
    long = label_panels(clip, ["a very long title " * 20], "x" * 500)  # cut, not an error
    assert long.shape[2] == clip.shape[2]
    with pytest.raises(ValueError, match="info lines"):
        label_panels(clip, ["a"], ["one"])
    with pytest.raises(ValueError, match="uint8"):
        label_panels(clip.astype(np.float32), ["a"])
    with pytest.raises(ValueError, match="panel title"):
        label_panels(clip, [])


@pytest.mark.parametrize("suffix, mime", [(".gif", "image/gif"), (".mp4", "video/mp4")])
def test_animation_html_embeds_the_file(tmp_path: Path, suffix: str, mime: str):
    path = write_animation(_clip(T=4, H=32, W=48), tmp_path / f"a{suffix}", fps=4)
    text = animation_html(path, width=300)
    found = re.search(rf'data:{mime};base64,([A-Za-z0-9+/=]+)"', text)
    assert found and base64.b64decode(found.group(1)) == path.read_bytes()
    assert "width: 300px" in text
    with pytest.raises(ValueError, match="suffix"):
        animation_html(tmp_path / "a.png")


def test_exploration_animation_is_labelled(small_video: Path):
    from labkit.explore import ExploreConfig, explore

    exp = explore(
        ExploreConfig(
            video_path=str(small_video),
            model_kwargs=TINY,
            num_frames=3,
            img_size=64,
            k=3,
            heads=(2, 0, 1),
        ),
        progress=False,
    )
    plain = exp.animation_frames()
    labelled = exp.animation_frames(labels=True)
    band = labelled.shape[1] - plain.shape[1]
    assert band > 0 and labelled.shape[0] == 3 and labelled.shape[2] == plain.shape[2]
    np.testing.assert_array_equal(labelled[:, band:], plain)
    assert not np.array_equal(labelled[0, :band], labelled[1, :band])  # the frame number changes


@pytest.mark.slow
def test_notebook_html_export_plays_the_animation(small_video: Path, tmp_path: Path):
    from labkit.notebooks import run_notebook

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
        },
        progress=False,
    )
    page = run.html.read_text()
    assert "data:image/gif;base64," in page
    assert "IPython.core.display.Image object" not in page
    gif = (out / "attention.gif").read_bytes()
    assert base64.b64encode(gif).decode()[:200] in page  # the very file written
    nb = json.loads(run.output.read_text())
    assert any(
        "data:image/gif;base64," in "".join(o.get("data", {}).get("text/html", ""))
        for c in nb["cells"]
        for o in c.get("outputs", [])
    )
