"""The training notebook under papermill with a tiny model: it trains, writes metrics.json and the
checkpoint, and shows the before/after figures."""

from __future__ import annotations

import json
import math

import pytest

from labkit.notebooks import notebook_parameters, run_notebook
from labkit.train import TrainConfig

from tiny import TINY_ARCH

pytestmark = pytest.mark.slow

TINY = {
    "model": "vit_small_patch16_224",
    "model_kwargs": TINY_ARCH,  # the shared tiny model; the rest are the notebook's parameters
    "img_size": 64,
    "local_size": 32,
    "num_local": 1,
    "num_frames": 2,
    "frame_step": 3,
    "out_dim": 256,
    "steps": 3,
    "batch_size": 2,
    "num_workers": 0,
    "checkpoint_every": 0,
}


def test_parameters_are_train_config_fields():
    params = notebook_parameters("train_dora")
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(params) <= fields, set(params) - fields
    TrainConfig(**params)  # the defaults form a valid config


def test_notebook_trains_and_writes_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "OMP_NUM_THREADS", "1"
    )  # the kernel's torch: tiny tensors, no thread contention
    out = tmp_path / "run"
    params = {**TINY, "out_dir": str(out), "control": True}  # with the frozen-network control
    run = run_notebook("train_dora", out, params, html=False, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["method"] == "dora"
    assert "control_last10" in metrics and "learning" in metrics
    assert math.isfinite(metrics["final_loss"]) and metrics["images_per_second"] > 0
    assert (out / "checkpoint.pth").is_file() and (out / "log.jsonl").is_file()
    nb = json.loads(run.output.read_text())
    images = sum(
        "image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])
    )
    assert images >= 3  # objects before, training curves, objects after
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert f"frozen control {metrics['control_last10']:.2f}" in printed  # the verdict's sentence
    errors = [
        o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
