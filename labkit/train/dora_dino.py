"""DoRA and DINO as a :class:`labkit.train.method.Method`: student, EMA teacher, DINO loss.

``method="dora"``: the teacher discovers k objects on each clip's first frame and tracks them;
the student learns from the masked object views and the local crops
(:func:`labkit.train.step.dora_step`). ``method="dino"``: frames are independent images with
DINO's multi-crop (:func:`labkit.train.step.dino_step`). Both:

* AdamW groups of DINO (weight decay on weight matrices only, :func:`param_groups`);
* schedules besides lr and wd: the teacher momentum on a cosine from ``momentum_teacher`` to 1,
  and the teacher temperature of :meth:`labkit.losses.DINOLoss.teacher_temperature`;
* the head's last layer gets no gradient for the first ``freeze_last_layer`` epochs (dropped
  before clipping, so it does not shrink the other gradients);
* after the update the teacher follows the student (EMA, :func:`labkit.train.step.update_teacher`)
  and the record gets the collapse signals of :func:`labkit.train.step.teacher_statistics`,
  watched by a :class:`labkit.train.watchdog.CollapseWatchdog`;
* checkpoint entries ``student``, ``teacher`` (``backbone.*``, ``head.*``) and ``dino_loss``
  (the center).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from labkit.losses import DINOLoss, cancel_last_layer_gradients
from labkit.train.config import ARCHITECTURE_FIELDS, TrainConfig
from labkit.train.data import step_seed
from labkit.train.method import GroupRule, MethodStep
from labkit.train.schedules import cosine_schedule
from labkit.train.step import (
    build_networks,
    dino_step,
    dora_step,
    teacher_statistics,
    update_teacher,
)
from labkit.train.watchdog import CollapseWatchdog

__all__ = ["DoraDinoMethod", "LOG_COLUMNS", "TEACHER_METRICS", "param_groups"]

LOG_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "teacher_entropy",
    "teacher_kl_uniform",
    "teacher_top_mass",
    "lr",
    "wd",
    "momentum",
    "teacher_temp",
    "grad_norm",
    "images_per_s",
    "seconds",
)
TEACHER_METRICS = ("teacher_entropy", "teacher_kl_uniform", "teacher_top_mass")
_HEADS_TAG = 0x68656164  # "head": keeps the heads' random stream apart from the data's


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """DINO's AdamW groups: ``[regularised weights, biases and norms (no weight decay)]``."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


class DoraDinoMethod:
    """DoRA or DINO (``config.method``); see the module docstring and
    :class:`labkit.train.method.Method` for the protocol."""

    log_columns = LOG_COLUMNS
    architecture_fields = ARCHITECTURE_FIELDS
    checkpoint_keys = ("student", "teacher", "dino_loss")

    def __init__(self, config: TrainConfig) -> None:
        if config.method not in ("dora", "dino"):
            raise ValueError(f"DoraDinoMethod: method must be dora or dino, got {config.method!r}")
        self.config = config
        self.name = config.method
        self.display_name = "DoRA" if config.method == "dora" else "DINO"
        self.student, self.teacher = build_networks(config)
        self.loss_fn: DINOLoss | None = DINOLoss(
            config.out_dim,
            warmup_teacher_temp=config.warmup_teacher_temp,
            teacher_temp=config.teacher_temp,
            warmup_teacher_temp_epochs=config.warmup_teacher_temp_epochs,
            student_temp=config.student_temp,
            center_momentum=config.center_momentum,
            dora_loss=config.dora_loss,
            center_init=config.center_init,
        )
        self.watchdog: CollapseWatchdog | None = CollapseWatchdog(
            config.out_dim, config.collapse_patience
        )
        self.dataset_options = {
            "mode": config.method,
            "num_local": config.num_local,
            "pre_crop": config.pre_crop and config.method == "dora",
        }

    @property
    def dino_loss(self) -> DINOLoss:
        assert self.loss_fn is not None
        return self.loss_fn

    @property
    def backbone(self) -> nn.Module:
        return self.teacher.backbone

    def to(self, device: torch.device) -> None:
        self.student.to(device)
        self.teacher.to(device)
        self.dino_loss.to(device)

    def param_groups(self) -> tuple[list[dict[str, Any]], list[GroupRule]]:
        return param_groups(self.student), [(1.0, True), (1.0, False)]  # biases, norms: no wd

    def schedules(self, step: int, epoch: int, lr: float, wd: float) -> dict[str, float]:
        cfg = self.config
        return {
            "lr": lr,
            "wd": wd,
            "momentum": cosine_schedule(step, cfg.steps, cfg.momentum_teacher, 1.0),
            "teacher_temp": self.dino_loss.teacher_temperature(epoch),
        }

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
        cfg = self.config
        if cfg.method == "dora":
            generator = torch.Generator().manual_seed(step_seed(cfg.seed, step, _HEADS_TAG))
            out = dora_step(
                runner,
                self.teacher,
                self.dino_loss,
                batch,
                epoch=epoch,
                k=cfg.k,
                heads=cfg.heads,  # type: ignore[arg-type]
                sinkhorn=cfg.sinkhorn,
                epsilon=cfg.epsilon,
                iterations=cfg.sinkhorn_iterations,  # type: ignore[arg-type]
                threshold=cfg.threshold,  # type: ignore[arg-type]
                generator=generator,
                autocast_dtype=autocast_dtype,
            )
        else:
            out = dino_step(
                runner,
                self.teacher,
                self.dino_loss,
                batch,
                epoch=epoch,
                autocast_dtype=autocast_dtype,
            )
        shared = out.loss.detach().float().reshape(1).clone()
        return MethodStep(out.loss, shared, out.images, out)

    def after_backward(self, epoch: int) -> None:
        # a frozen layer's gradient must not enter the clipping norm
        cancel_last_layer_gradients(self.student, epoch, self.config.freeze_last_layer)

    def after_update(
        self, out: MethodStep, shared: torch.Tensor, schedules: Mapping[str, float]
    ) -> dict[str, float]:
        update_teacher(self.teacher, self.student, schedules["momentum"])
        step = out.output
        return teacher_statistics(step.teacher_logits, step.center, schedules["teacher_temp"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.dino_loss.load_state_dict(state["dino_loss"])

    def metrics(self, last: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "out_dim": self.config.out_dim,  # K of the DINO head: the report judges a collapse
            **{name: last.get(name) for name in TEACHER_METRICS},
            "collapse": self.watchdog.event if self.watchdog is not None else None,
        }
