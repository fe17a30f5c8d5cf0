"""Training a ViT with DoRA (multi-object tracking on video) or DINO (frames as images), or
fine-tuning one with TimeTuning (``method="timetuning"``: patch clusters kept stable over time).

Modules::

    config.py   TrainConfig (the notebook's parameters, YAML + overrides for `labkit train`)
    data.py     ClipDataset (clips of long videos, DoRA / DINO augmentations), StepBatchSampler
    step.py     networks (build_timetuning too), the teacher's tracking forward, dora_step / dino_step
    trainer.py  Trainer: schedules, EMA, checkpoints, resume, DDP, logs; train(), load_trained()
    report.py   figures: objects of a clip before/after training, the training log, a live plot

Typical use::

    from labkit.train import TrainConfig, train, load_trained
    result = train(TrainConfig(video_path="walk.mp4", steps=500, out_dir="runs/walk"))
    backbone = load_trained("runs/walk")          # the teacher's ViT, architecture from the config
    tuned = train(TrainConfig(method="timetuning", checkpoint="dino_vits16.pth", steps=300))
    backbone = load_trained(tuned.out_dir)        # TimeTuning: the tuned backbone (no teacher)

From a shell: ``labkit train --config run.yaml -o steps=500``; several processes:
``torchrun --nproc_per_node 2 -m labkit.cli train --config run.yaml``.

Importing this package imports only the config; the rest loads on first use.
"""

from __future__ import annotations

from typing import Any

from labkit.train.config import TrainConfig, load_config

__all__ = [
    "TrainConfig",
    "load_config",
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "load_trained",
    "read_log",
    "clip_objects",
    "plot_objects",
    "plot_log",
    "LiveLossPlot",
    "CollapseWarning",
]

_LAZY = {
    "Trainer": "labkit.train.trainer",
    "TrainResult": "labkit.train.trainer",
    "TrainingDiverged": "labkit.train.trainer",
    "train": "labkit.train.trainer",
    "load_trained": "labkit.train.trainer",
    "read_log": "labkit.train.trainer",
    "clip_objects": "labkit.train.report",
    "plot_objects": "labkit.train.report",
    "plot_log": "labkit.train.report",
    "LiveLossPlot": "labkit.train.report",
    "CollapseWarning": "labkit.train.watchdog",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labkit.train' has no attribute {name!r}")
