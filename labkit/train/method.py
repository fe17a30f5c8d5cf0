"""What the training loop asks of a method: one small protocol, two implementations.

:class:`labkit.train.trainer.Trainer` owns everything every method shares: the run folder and its
lock, the data and its per-step seeds, AdamW with the learning-rate and weight-decay cosines,
autocast, DDP, gradient clipping, divergence, checkpoints and resume, logs, Ctrl-C and the
collapse watchdog's warning. It never names a method; what differs is a :class:`Method`:

* :class:`labkit.train.dora_dino.DoraDinoMethod`: DoRA (``method="dora"``) and DINO
  (``"dino"``): a student, an EMA teacher and a :class:`labkit.losses.DINOLoss`;
* :class:`labkit.train.timetuning_method.TimeTuningMethod`: TimeTuning (``"timetuning"``): one
  tuned model, no teacher.

:func:`labkit.train.methods.method_for` picks the implementation of a config's ``method``.

One step, as the trainer runs it::

    values = {lr, wd} + method.schedules(step, epoch, lr, wd)   # the step's schedule values
    out = method.forward(runner, batch, step=..., epoch=..., schedules=values, autocast_dtype=...)
    shared = all-reduce mean of out.shared over processes        # shared[0]: the loss
    (stop on a non-finite loss)  out.loss.backward()
    method.after_backward(epoch)                                 # e.g. a frozen last layer
    clip, optimizer.step()
    statistics = method.after_update(out, shared, values)        # e.g. EMA, prototype norms
    record = {step, epoch, loss, **statistics, **values, grad_norm, images_per_s, seconds}

The checkpoint is the trainer's entries (``optimizer``, ``step``, ``epoch``, ``config``, ``rng``,
``labkit_version``) plus :meth:`Method.state_dict` (``student``, ``teacher`` and, for DoRA and
DINO, ``dino_loss``): the layout of checkpoints written before this protocol, which still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from labkit.train.watchdog import CollapseWatchdog

__all__ = ["Method", "MethodStep", "GroupRule"]

# (learning-rate scale, regularised) of an optimiser group: its lr is the scheduled lr times the
# scale; a regularised group takes the scheduled weight decay, the others keep theirs (0)
GroupRule = tuple[float, bool]


@dataclass
class MethodStep:
    """What :meth:`Method.forward` computed for one batch.

    Attributes:
        loss: () the loss with autograd (NaN when the step diverged: the trainer stops).
        shared: (1 + m,) float: the loss and m diagnostics, averaged over the processes by the
            trainer in one call before it decides anything (every rank decides alike).
        images: frames in this process's batch (B * T), the unit of throughput.
        output: the method's own outputs, handed back to :meth:`Method.after_update`.
    """

    loss: torch.Tensor
    shared: torch.Tensor
    images: int
    output: Any = None


@runtime_checkable
class Method(Protocol):
    """A training method: its networks, one step on a batch, its state, its log columns.

    Built from a :class:`labkit.train.TrainConfig` on the CPU (``Method(config)``, inside the
    trainer's seeded RNG so every rank builds the same weights), then moved with :meth:`to`.

    Attributes:
        name: the config's ``method`` (``"dora"``, ``"dino"``, ``"timetuning"``).
        display_name: how messages name it (``"DoRA"``).
        log_columns: the keys of every ``log.jsonl`` record, the columns of ``log.csv``.
        architecture_fields: config fields a checkpoint must share with the run resuming it.
        checkpoint_keys: the entries of :meth:`state_dict` a checkpoint must hold.
        student: the module the optimiser trains (what DDP wraps).
        teacher: the EMA teacher, or None.
        loss_fn: the loss module holding state (DINO's center), or None.
        watchdog: the collapse watchdog, or None for a method without a teacher to watch.
        dataset_options: keyword arguments of :class:`labkit.train.data.ClipDataset` that depend
            on the method (``mode``, ``num_local``, ``pre_crop``).
    """

    # read-only members (properties here, so an implementation may hold narrower types)
    @property
    def name(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def log_columns(self) -> tuple[str, ...]: ...
    @property
    def architecture_fields(self) -> tuple[str, ...]: ...
    @property
    def checkpoint_keys(self) -> tuple[str, ...]: ...
    @property
    def student(self) -> nn.Module: ...
    @property
    def teacher(self) -> nn.Module | None: ...
    @property
    def loss_fn(self) -> nn.Module | None: ...
    @property
    def watchdog(self) -> CollapseWatchdog | None: ...
    @property
    def dataset_options(self) -> dict[str, Any]: ...

    @property
    def backbone(self) -> nn.Module:
        """The ViT to look at and evaluate (the teacher's, or the tuned one)."""
        ...

    def to(self, device: torch.device) -> None:
        """Move the networks and the loss state to ``device``."""
        ...

    def param_groups(self) -> tuple[list[dict[str, Any]], list[GroupRule]]:
        """AdamW's parameter groups and, per group, its :data:`GroupRule`."""
        ...

    def schedules(self, step: int, epoch: int, lr: float, wd: float) -> dict[str, float]:
        """The step's schedule values, logged in this order (``lr`` and ``wd`` included)."""
        ...

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
        """Forward and loss of one batch on the device; ``runner`` is the student, or its DDP /
        compiled wrapper. No backward, no update."""
        ...

    def after_backward(self, epoch: int) -> None:
        """Between ``backward`` and the clipping (e.g. drop a frozen layer's gradient)."""
        ...

    def after_update(
        self, out: MethodStep, shared: torch.Tensor, schedules: Mapping[str, float]
    ) -> dict[str, float]:
        """After ``optimizer.step()``: the method's own updates (EMA, prototype norms); returns
        the record's statistics (``shared`` is ``out.shared`` averaged over processes)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's network entries (:attr:`checkpoint_keys` among them)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from a checkpoint dict (errors propagate; the trainer words them)."""
        ...

    def metrics(self, last: Mapping[str, Any]) -> dict[str, Any]:
        """The method's entries of ``metrics.json`` from the last log record."""
        ...
