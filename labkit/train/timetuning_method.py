"""TimeTuning as a :class:`labkit.train.method.Method`: one tuned model, no teacher.

The network is a :class:`labkit.timetuning.TimeTuningModel` (the backbone, frozen but for its
last ``trainable_blocks`` blocks, plus a projection head and prototypes) built by
:func:`labkit.train.step.build_timetuning`; the step is :func:`labkit.timetuning.timetuning_step`
on the clips of ``ClipDataset(mode="dora")`` without local crops. What differs from DoRA / DINO:

* AdamW groups from :meth:`TimeTuningModel.param_groups`: head and prototypes at the scheduled
  ``lr``, the trainable blocks at ``lr * backbone_lr_ratio`` (logged as ``backbone_lr``); weight
  decay on weight matrices only;
* no teacher, no EMA, no DINO loss, no collapse watchdog; after every optimiser step the
  prototypes are put back on the unit sphere;
* the record's statistics (``agreement``, ``target_confidence``, ``target_clusters``,
  ``first_clusters``; :func:`labkit.timetuning.timetuning_metrics`) are averaged over the
  processes together with the loss;
* a step whose Sinkhorn-Knopp or loss refuses non-finite scores, with non-finite weights, is a
  diverged step (a NaN loss: the trainer stops with the last good checkpoint);
* checkpoint: ``student`` holds the tuned model and ``teacher`` **the same tensors** (stored once
  by ``torch.save``), so every reader of a teacher gets the tuned backbone; no ``dino_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from labkit.timetuning import TimeTuningModel, timetuning_metrics, timetuning_step
from labkit.train.config import TIMETUNING_ARCHITECTURE_FIELDS, TrainConfig
from labkit.train.method import GroupRule, MethodStep
from labkit.train.step import build_timetuning
from labkit.train.watchdog import CollapseWatchdog

__all__ = ["TimeTuningMethod", "TIMETUNING_LOG_COLUMNS", "TIMETUNING_METRICS"]

TIMETUNING_LOG_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "agreement",
    "target_confidence",
    "target_clusters",
    "first_clusters",
    "lr",
    "backbone_lr",
    "wd",
    "grad_norm",
    "images_per_s",
    "seconds",
)
TIMETUNING_METRICS = ("agreement", "target_confidence", "target_clusters", "first_clusters")


class TimeTuningMethod:
    """TimeTuning; see the module docstring and :class:`labkit.train.method.Method`."""

    name = "timetuning"
    display_name = "TimeTuning"
    log_columns = TIMETUNING_LOG_COLUMNS
    architecture_fields = TIMETUNING_ARCHITECTURE_FIELDS
    checkpoint_keys = ("student", "teacher")

    def __init__(self, config: TrainConfig) -> None:
        if config.method != "timetuning":
            raise ValueError(f"TimeTuningMethod: method must be timetuning, got {config.method!r}")
        self.config = config
        model = build_timetuning(config)
        assert isinstance(model, TimeTuningModel)
        self.student: TimeTuningModel = model
        self.teacher: nn.Module | None = None
        self.loss_fn: nn.Module | None = None
        self.watchdog: CollapseWatchdog | None = None
        self.dataset_options = {"mode": "dora", "num_local": 0, "pre_crop": False}

    @property
    def backbone(self) -> nn.Module:
        return self.student.backbone

    def to(self, device: torch.device) -> None:
        self.student.to(device)

    def param_groups(self) -> tuple[list[dict[str, Any]], list[GroupRule]]:
        cfg = self.config
        # (lr scale, regularised) of each group; the schedules set lr and wd per step
        groups = self.student.param_groups(
            lr=1.0, backbone_lr=cfg.backbone_lr_ratio, weight_decay=1.0
        )
        rules = [(float(g["lr"]), g["weight_decay"] > 0) for g in groups]
        groups = [
            {"params": g["params"], "weight_decay": cfg.weight_decay * g["weight_decay"]}
            for g in groups
        ]  # biases and norms: 0
        return groups, rules

    def schedules(self, step: int, epoch: int, lr: float, wd: float) -> dict[str, float]:
        return {"lr": lr, "backbone_lr": lr * self.config.backbone_lr_ratio, "wd": wd}

    def forward(
        self,
        runner: nn.Module,
        batch: dict[str, torch.Tensor],
        *,
        step: int,
        epoch: int,
        schedules: Mapping[str, float],
        autocast_dtype: torch.dtype | None,
    ) -> MethodStep:
        images = int(batch["global"].shape[0] * batch["global"].shape[2])  # B * T
        try:
            out = timetuning_step(runner, batch, autocast_dtype=autocast_dtype)
        except ValueError:  # Sinkhorn and the loss refuse NaN scores: a diverged step
            if all(torch.isfinite(p).all() for p in self.student.parameters()):
                raise
            device = batch["global"].device
            nan = torch.full((1 + len(TIMETUNING_METRICS),), math.nan, device=device)
            return MethodStep(nan[0], nan.double(), images)
        diagnostics = timetuning_metrics(out)
        values = [float(out.loss.detach())] + [diagnostics[n] for n in TIMETUNING_METRICS]
        shared = torch.tensor(values, dtype=torch.float64, device=out.loss.device)
        return MethodStep(out.loss, shared, out.images, out)

    def after_backward(self, epoch: int) -> None:
        pass

    def after_update(
        self, out: MethodStep, shared: torch.Tensor, schedules: Mapping[str, float]
    ) -> dict[str, float]:
        self.student.after_optimizer_step()  # prototypes back on the unit sphere
        return {n: float(v) for n, v in zip(TIMETUNING_METRICS, shared[1:].tolist())}

    def state_dict(self) -> dict[str, Any]:
        student = self.student.state_dict()
        return {"student": student, "teacher": student}  # no teacher: both read the tuned model

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])

    def metrics(self, last: Mapping[str, Any]) -> dict[str, Any]:
        return {"out_dim": None, **{name: last.get(name) for name in TIMETUNING_METRICS}}
