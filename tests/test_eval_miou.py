"""Segmentation mIoU of a model in memory: the evaluation lab's numbers, skipped datasets,
tables.
"""

from __future__ import annotations

import math

import pytest
import torch

from labkit.eval.miou import PROTOCOLS, miou_rows, segmentation_miou, segmentation_scores
from labkit.eval.runner import EvalConfig, evaluate
from labkit.models import IMAGENET_MEAN, IMAGENET_STD, load_backbone

ARCH = dict(depth=2, embed_dim=64, num_heads=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    # the evaluation lab reads the weights back from a file, which resizes position embeddings
    # with DINO's rule (labkit.pos_embed): the model in memory does the same
    m = load_backbone("vit_small_patch16_224", seed=0, pos_embed_rule="dino", **ARCH)
    assert m.pretrained_cfg["mean"] == IMAGENET_MEAN and m.pretrained_cfg["std"] == IMAGENET_STD
    return m


def test_equals_the_evaluation_lab_on_the_same_weights(model, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    options = dict(max_frames=6, resolution=64, overclusters=6)
    model.train()
    ours = segmentation_miou(model, progress=False, **options)
    assert model.training  # put back in the mode it was in
    result = evaluate(
        EvalConfig(
            models=(f"m=vit_small_patch16_224:{path}",),
            model_kwargs=ARCH,
            evaluations=("segmentation",),
            **options,
        ),
        progress=False,
    )
    lab = result.models[0].segmentation_summary()
    assert set(lab) == set(PROTOCOLS)
    for name in PROTOCOLS:
        assert ours[name] == pytest.approx(lab[name], abs=1e-12), name
        assert 0 <= ours[name] <= 1
    assert ours["sequences"] == ["synthetic"] and ours["frames"] == 6
    assert set(ours["per_sequence"]["synthetic"]) == {
        "frame_hungarian",
        "clip_hungarian",
        "frame_overcluster",
        "clip_overcluster",
    }


def test_absent_datasets_are_skipped_and_rows_line_up(model, tmp_path):
    datasets = {"synthetic": "", "none": None, "gone": str(tmp_path / "nowhere")}
    scores = segmentation_scores(model, datasets, max_frames=3, resolution=64, progress=False)
    assert scores["none"] == {"skipped": "no data root given"}
    assert scores["gone"]["skipped"].startswith("no folder at")
    assert math.isfinite(scores["synthetic"]["clip_hungarian"])
    shifted = {"synthetic": {**scores["synthetic"], "clip_hungarian": 1.0}}
    rows = miou_rows(scores, shifted)
    assert [r["protocol"] for r in rows] == list(PROTOCOLS)  # skipped datasets have no rows
    clip = rows[1]
    assert clip["dataset"] == "synthetic" and clip["after"] == 1.0
    assert clip["change"] == pytest.approx(1.0 - clip["before"])
    with pytest.raises(ValueError, match="data_root"):
        segmentation_miou(model, tmp_path / "nowhere", progress=False)


def test_sequences_are_chosen_per_dataset(model, davis_root):
    """A DAVIS sequence list applies to DAVIS only; the synthetic video keeps its own sequence."""
    datasets = {"synthetic": "", "davis2016": str(davis_root)}
    scores = segmentation_scores(
        model,
        datasets,
        sequences={"davis2016": ["cows"]},
        max_frames=2,
        resolution=64,
        progress=False,
    )
    assert scores["synthetic"]["sequences"] == ["synthetic"]
    assert scores["davis2016"]["sequences"] == ["cows"]
    with pytest.raises(ValueError, match="not among the datasets"):
        segmentation_scores(model, datasets, sequences={"davis": ["cows"]})
