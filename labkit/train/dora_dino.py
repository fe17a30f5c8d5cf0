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

The **frozen-network control** (``config.control``, :class:`FrozenControl`): frozen copies of the
initial student and teacher and a :class:`DINOLoss` of their own run the same step function on
the same batch every step, under ``torch.no_grad`` and from the same random state (stochastic
depth, the heads' generator), so at step 1 the control's loss is the training loss; afterwards
only the control's centre moves. The record gets ``control_loss`` (averaged over processes like
the loss) and ``control_teacher_entropy``; the checkpoint an extra entry ``control``
(``{"student", "teacher", "dino_loss"}``). The training itself is unchanged: the control
consumes no random numbers of the step's (:func:`torch.random.fork_rng`).
"""

from __future__ import annotations

import copy
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
    MultiCropNetwork,
    StepOutput,
    build_networks,
    dino_step,
    dora_step,
    teacher_statistics,
    update_teacher,
)
from labkit.train.watchdog import CollapseWatchdog

__all__ = [
    "DoraDinoMethod",
    "FrozenControl",
    "LOG_COLUMNS",
    "CONTROL_LOG_COLUMNS",
    "TEACHER_METRICS",
    "param_groups",
]

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
# with config.control: the control's loss after the loss, its teacher entropy after the teacher's
CONTROL_LOG_COLUMNS = (
    *LOG_COLUMNS[:3],
    "control_loss",
    *LOG_COLUMNS[3:6],
    "control_teacher_entropy",
    *LOG_COLUMNS[6:],
)
TEACHER_METRICS = ("teacher_entropy", "teacher_kl_uniform", "teacher_top_mass")
_HEADS_TAG = 0x68656164  # "head": keeps the heads' random stream apart from the data's


def _dino_loss(config: TrainConfig) -> DINOLoss:
    return DINOLoss(
        config.out_dim,
        warmup_teacher_temp=config.warmup_teacher_temp,
        teacher_temp=config.teacher_temp,
        warmup_teacher_temp_epochs=config.warmup_teacher_temp_epochs,
        student_temp=config.student_temp,
        center_momentum=config.center_momentum,
        dora_loss=config.dora_loss,
        center_init=config.center_init,
    )


def _frozen(network: MultiCropNetwork) -> MultiCropNetwork:
    frozen = copy.deepcopy(network)
    for param in frozen.parameters():
        param.requires_grad_(False)
    return frozen


class FrozenControl:
    """The frozen-network control: the initial networks, frozen, with a DINO loss of their own.

    Args:
        student, teacher: the run's networks as built (copied here; the copies never change).
        loss_fn: the control's loss (same settings as the run's, its own centre).

    Attributes:
        student: frozen copy of the student, put in the run student's train / eval mode before
            each step (so stochastic depth acts alike).
        teacher: frozen copy of the teacher, in eval mode.
        loss_fn: the control's :class:`DINOLoss`; its centre moves as in training.
    """

    def __init__(
        self, student: MultiCropNetwork, teacher: MultiCropNetwork, loss_fn: DINOLoss
    ) -> None:
        self.student = _frozen(student)
        self.teacher = _frozen(teacher).eval()
        self.loss_fn = loss_fn

    def to(self, device: torch.device) -> None:
        self.student.to(device)
        self.teacher.to(device)
        self.loss_fn.to(device)

    def state_dict(self) -> dict[str, Any]:
        """The frozen networks and the control's loss. The teacher starts as a copy of the
        student, so where their weights are equal (always, unless a method builds them apart)
        the teacher is stored as None and read back from the student's: one copy less per
        checkpoint."""
        student = self.student.state_dict()
        teacher = self.teacher.state_dict()
        same = student.keys() == teacher.keys() and all(
            torch.equal(student[name], teacher[name]) for name in student
        )
        return {
            "student": student,
            "teacher": None if same else teacher,
            "dino_loss": self.loss_fn.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        teacher = state["teacher"]
        self.teacher.load_state_dict(state["student"] if teacher is None else teacher)
        self.loss_fn.load_state_dict(state["dino_loss"])


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

    log_columns: tuple[str, ...] = LOG_COLUMNS  # CONTROL_LOG_COLUMNS with config.control
    architecture_fields = ARCHITECTURE_FIELDS
    checkpoint_keys = ("student", "teacher", "dino_loss")

    def __init__(self, config: TrainConfig) -> None:
        if config.method not in ("dora", "dino"):
            raise ValueError(f"DoraDinoMethod: method must be dora or dino, got {config.method!r}")
        self.config = config
        self.name = config.method
        self.display_name = "DoRA" if config.method == "dora" else "DINO"
        self.student, self.teacher = build_networks(config)
        self.loss_fn: DINOLoss | None = _dino_loss(config)
        self.control = (
            FrozenControl(self.student, self.teacher, _dino_loss(config))
            if config.control
            else None
        )
        if self.control is not None:
            self.log_columns = CONTROL_LOG_COLUMNS
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
        if self.control is not None:
            self.control.to(device)

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
        control = None
        if self.control is not None:
            # the same batch from the same random state (drop path, heads) as the step below,
            # which draws the numbers it would draw without the control
            self.control.student.train(self.student.training)
            device = batch["global"].device
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                control = self._step(
                    self.control.student,
                    self.control.teacher,
                    self.control.loss_fn,
                    batch,
                    step,
                    epoch,
                    autocast_dtype,
                )
        out = self._step(runner, self.teacher, self.dino_loss, batch, step, epoch, autocast_dtype)
        shared = out.loss.detach().float().reshape(1)
        if control is not None:  # [loss, control loss]: averaged over processes together
            shared = torch.cat([shared, control.loss.detach().float().reshape(1)])
        return MethodStep(out.loss, shared.clone(), out.images, (out, control))

    def _step(
        self,
        student: nn.Module,
        teacher: MultiCropNetwork,
        loss_fn: DINOLoss,
        batch: dict[str, torch.Tensor],
        step: int,
        epoch: int,
        autocast_dtype: torch.dtype | None,
    ) -> StepOutput:
        """The method's step function (DoRA's or DINO's) on one set of networks and loss."""
        cfg = self.config
        if cfg.method == "dora":
            generator = torch.Generator().manual_seed(step_seed(cfg.seed, step, _HEADS_TAG))
            return dora_step(
                student,
                teacher,
                loss_fn,
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
        return dino_step(
            student,
            teacher,
            loss_fn,
            batch,
            epoch=epoch,
            autocast_dtype=autocast_dtype,
        )

    def after_backward(self, epoch: int) -> None:
        # a frozen layer's gradient must not enter the clipping norm
        cancel_last_layer_gradients(self.student, epoch, self.config.freeze_last_layer)

    def after_update(
        self, out: MethodStep, shared: torch.Tensor, schedules: Mapping[str, float]
    ) -> dict[str, float]:
        update_teacher(self.teacher, self.student, schedules["momentum"])
        step, control = out.output
        statistics = teacher_statistics(step.teacher_logits, step.center, schedules["teacher_temp"])
        if control is not None:
            frozen = teacher_statistics(
                control.teacher_logits, control.center, schedules["teacher_temp"]
            )
            statistics = {
                "control_loss": float(shared[1]),
                **statistics,
                "control_teacher_entropy": frozen["teacher_entropy"],
            }
        return statistics

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
            **({"control": self.control.state_dict()} if self.control is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.control is not None and "control" not in state:
            raise ValueError(
                "the checkpoint has no frozen-network control (written with control=false); "
                "resume with control=false, or start afresh"
            )
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.dino_loss.load_state_dict(state["dino_loss"])
        if self.control is not None:
            self.control.load_state_dict(state["control"])

    def metrics(self, last: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "out_dim": self.config.out_dim,  # K of the DINO head: the report judges a collapse
            **{name: last.get(name) for name in TEACHER_METRICS},
            "collapse": self.watchdog.event if self.watchdog is not None else None,
        }
