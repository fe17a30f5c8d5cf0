"""Training a ViT with DoRA (multi-object tracking on video) or DINO (frames as images), or
fine-tuning one with TimeTuning (``method="timetuning"``: patch clusters kept stable over time).

Modules::

    config.py             TrainConfig in sections (the notebooks' parameters, YAML + overrides)
    data.py               ClipDataset (clips of long videos, DoRA / DINO augmentations), batches
    augment.py            DINO's crops and colour augmentations, drawn per image, batched
    step.py               networks, the teacher's tracking forward, dora_step / dino_step
    method.py             Method: what the trainer asks of a method (networks, step, state, logs)
    dora_dino.py          DoRA and DINO as a Method (student, EMA teacher, DINO loss)
    timetuning_method.py  TimeTuning as a Method (one tuned model, no teacher)
    methods.py            method_for(config): the Method of config.method
    schedules.py          cosine_schedule: warm-up and half cosine
    trainer.py            Trainer: the method-agnostic loop (checkpoints, resume, DDP, logs)
    report.py             figures: a clip's objects before/after training, the log, a live plot

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
