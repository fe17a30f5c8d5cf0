"""The TimeTuning notebook under papermill with a tiny model: it tunes, shows the segment maps
before and after, scores mIoU before and after, and writes metrics.json; an absent DAVIS folder is
skipped.
"""

from __future__ import annotations

import json
import math

import pytest

from labkit.eval.miou import PROTOCOLS
from labkit.notebooks import notebook_parameters, run_notebook
from labkit.train import TrainConfig

pytestmark = pytest.mark.slow

TINY = {
    "model_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 4},
    "img_size": 64,
    "num_frames": 3,
    "batch_size": 2,
    "steps": 3,
    "head_dims": [64, 32],
    "num_prototypes": 16,
    "trainable_blocks": 1,
    "lr": 0.001,
    "checkpoint_every": 0,
    "segment_size": 64,
    "segment_frames": 6,
    "sample_frames": 4,
    "k_video": 3,
    "k_frame": 4,
    "strip_columns": 3,
    "eval_resolution": 64,
    "eval_max_frames": 4,
    "overclusters": 4,
}


def test_training_parameters_are_train_config_fields():
    params = notebook_parameters("timetuning")
    lab = {
        "segment_size",
        "segment_frames",
        "sample_frames",
        "k_video",
        "k_frame",
        "strip_columns",
        "score_data",
        "davis_root",
        "eval_sequences",
        "eval_resolution",
        "eval_max_frames",
        "overclusters",
    }
    training = {k: v for k, v in params.items() if k not in lab}
    assert set(training) <= set(TrainConfig.__dataclass_fields__), set(training)
    cfg = TrainConfig(method="timetuning", **training)  # the defaults form a valid config
    assert cfg.lr == 1e-4 and cfg.head_dims == (1024, 1024, 512, 256)


def test_notebook_tunes_and_writes_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    params = {**TINY, "out_dir": str(out), "davis_root": str(tmp_path / "no_davis_here")}
    run = run_notebook("timetuning", out, params, html=False, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "timetuning" and metrics["steps"] == 3
    assert math.isfinite(metrics["final_loss"]) and metrics["images_per_second"] > 0
    synthetic = metrics["miou"]["synthetic"]
    for when in ("before", "after"):
        scores = synthetic[when]
        assert scores["sequences"] == ["synthetic"] and scores["frames"] == 4
        for protocol in PROTOCOLS:
            assert 0 <= scores[protocol] <= 1, (when, protocol)
    assert metrics["miou"]["davis2016"]["before"]["skipped"].startswith("no folder at")
    for name in ("checkpoint.pth", "log.jsonl", "segments_before.gif", "segments_after.gif"):
        assert (out / name).is_file(), name
    nb = json.loads(run.output.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 3  # segment maps before, training curves, segment maps after
    # the animation, embedded as HTML so that nbconvert's export plays it (it drops image/gif)
    assert any(
        "data:image/gif;base64," in "".join(o.get("data", {}).get("text/html", "")) for o in outputs
    )
    table = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("clip_hungarian" in "".join(o["data"]["text/html"]) for o in table)


def test_notebook_scores_the_video_it_tunes_on(tmp_path, monkeypatch):
    """Tuned on the hard synthetic variant, the first mIoU is that video's ground truth (score_data)
    under its folder's name, not the default video's under "synthetic"."""
    from labkit.data.synthetic import generate_synthetic

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    hard = generate_synthetic(
        tmp_path / "synthetic-hard", num_frames=12, size=(64, 96), seed=1, variant="hard"
    )
    out = tmp_path / "run"
    params = {
        **TINY,
        "steps": 1,
        "segment_frames": 3,
        "video_path": str(hard.video),
        "score_data": str(hard.root),
        "davis_root": "",
        "out_dir": str(out),
    }
    run_notebook("timetuning", out, params, html=False, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["miou"]) == {"synthetic-hard", "davis2016"}
    for when in ("before", "after"):
        scores = metrics["miou"]["synthetic-hard"][when]
        assert scores["data_root"] == str(hard.root) and scores["frames"] == 4
        assert all(0 <= scores[protocol] <= 1 for protocol in PROTOCOLS), when
    assert metrics["miou"]["davis2016"]["before"] == {"skipped": "no data root given"}
