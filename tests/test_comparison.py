"""Models compared frame by frame (labkit.viz.comparison.ModelComparison), headless."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from labkit.models import load_backbone
from labkit.viz.comparison import ModelComparison
from labkit.viz.explorer import PANELS

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    gen = np.random.default_rng(0)
    base = gen.integers(0, 256, (1, 48, 80, 3), dtype=np.uint8)
    return np.concatenate([np.roll(base, 8 * t, axis=2) for t in range(4)])  # a panning texture


@pytest.fixture(scope="module")
def comparison(frames: np.ndarray) -> ModelComparison:
    models = [
        ("seed 0", load_backbone("vit_small_patch16_224", seed=0, **TINY)),
        ("seed 1", load_backbone("vit_small_patch16_224", seed=1, **TINY)),
        "twin=vit_small_patch16_224",
    ]  # a spec: random init, seed 0, the same network as row 0
    return ModelComparison(
        frames,
        models,
        model_kwargs=TINY,
        indices=[10, 20, 30, 40],
        heads=(2, 0, 1),
        k=3,
        progress=False,
        image_format="png",
        seed=0,
    )


def test_rows_aligned_same_controls(comparison: ModelComparison, frames: np.ndarray) -> None:
    c = comparison
    assert c.labels == ["seed 0", "seed 1", "twin"] and c.panels == PANELS
    assert all("random init" in w for w in c.weights)
    state = c.set(frame=2, alpha=0.6)
    rows = c.rows()
    assert len(rows) == 3 and all(r.shape == (48, 4 * 80, 3) and r.dtype == np.uint8 for r in rows)
    for explorer, row in zip(c.explorers, rows):
        np.testing.assert_array_equal(row[:, :80], frames[2])  # every row on the same frame
        assert explorer._validated(state).heads == (2, 0, 1)
        np.testing.assert_array_equal(row[:, 80:160], explorer.panel("heads", state))  # same heads
        assert explorer.segments(-1, 3).max() <= 2  # same k
    np.testing.assert_array_equal(c.render(), np.concatenate(rows, axis=0))
    assert not np.array_equal(rows[0][:, 80:], rows[1][:, 80:])  # other weights, other pictures
    np.testing.assert_array_equal(rows[0], rows[2])  # the same weights (spec, seed 0) again
    before = c.rows()
    c.set(frame=3)
    after = c.rows()
    assert all(
        not np.array_equal(a, b) for a, b in zip(before, after)
    )  # the slider moves every row


def test_figure_one_row_per_model(comparison: ModelComparison) -> None:
    c = comparison
    fig = c.figure(replace(c.state, frame=1, k=4))
    assert len(fig.axes) == 3 * len(PANELS)
    labels = [ax.get_ylabel() for ax in fig.axes[:: len(PANELS)]]
    assert [lab.split("\n")[0] for lab in labels] == c.labels and "random init" in labels[1]
    assert fig.axes[3].get_title() == "k-means k=4"
    assert "frame 20" in fig._suptitle.get_text() and "(2, 0, 1)" in fig._suptitle.get_text()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.tell() > 0


def test_artifacts_per_model(comparison: ModelComparison) -> None:
    figures = comparison.figures_artifacts()
    assert len(figures) == 3
    assert all(label in f._suptitle.get_text() for label, f in zip(comparison.labels, figures))
    metrics = comparison.metrics()
    assert list(metrics) == comparison.labels
    assert len(metrics["seed 1"]["outlier_fraction_per_layer"]) == 2
    assert metrics["seed 0"] == {**metrics["twin"], "weights": metrics["seed 0"]["weights"]}


def test_widget_drives_every_row(comparison: ModelComparison) -> None:
    from PIL import Image

    c = comparison
    c.widget()
    c._refresh()
    shown = [
        np.asarray(Image.open(io.BytesIO(images["heads"].value))) for images in c._ui["images"]
    ]
    c._ui["frame"].value = 0 if c.state.frame else 1
    moved = [
        np.asarray(Image.open(io.BytesIO(images["heads"].value))) for images in c._ui["images"]
    ]
    assert all(not np.array_equal(a, b) for a, b in zip(shown, moved))
    np.testing.assert_array_equal(moved[1], c.explorers[1].panel("heads", c.state))
    c._ui["heads"][0].value = 1
    assert c.state.heads == (1, 0, 1) and all(
        e._validated(c.state).heads == (1, 0, 1) for e in c.explorers
    )


def test_mixed_models_and_validation(frames: np.ndarray) -> None:
    reg = load_backbone("vit_small_patch14_reg4_dinov2", seed=0, depth=3, embed_dim=48, num_heads=3)
    plain = load_backbone("vit_small_patch16_224", seed=0, **TINY)
    c = ModelComparison(frames, [plain, ("reg", reg)], k=2, progress=False, panels="all")
    assert c.panels[-1] == "registers" and c.labels[0].startswith("vit_small_patch16_224")
    assert c.render().shape == (
        2 * 48,
        6 * 80,
        3,
    )  # the plain model's registers panel says it has none
    assert c.explorers[0].layer_data(-1).attention.shape[-2:] == (3, 5)  # patch 16
    assert c.explorers[1].layer_data(-1).attention.shape[-2:] == (3, 5)  # patch 14
    with pytest.raises(ValueError, match="counted from the end"):
        ModelComparison(frames, [plain, reg], layer=1, progress=False)
    with pytest.raises(ValueError, match="heads"):
        ModelComparison(frames, [plain, reg], heads=(0, 1, 3), progress=False)
    with pytest.raises(ValueError, match="labels repeat"):
        ModelComparison(frames, [("a", plain), ("a", reg)], progress=False)
    with pytest.raises(ValueError, match="model spec"):
        ModelComparison(frames, ["a=vit_small_patch16_224:/no/such/checkpoint.pth"], progress=False)
    with pytest.raises(ValueError, match="at least one"):
        ModelComparison(frames, [], progress=False)
    assert c.artifacts(1).norms.shape[:2] == (4, 3) and c.artifacts(1).num_registers == 4
