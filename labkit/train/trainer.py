"""The training loop: optimiser and schedules, EMA teacher, checkpoints and resume, DDP, logging.

One :class:`Trainer` per process. ``Trainer(config).fit()`` (or :func:`train`) runs
``config.steps`` steps of the config's training method, a :class:`labkit.train.method.Method`
(:func:`labkit.train.methods.method_for`): DoRA or DINO (:mod:`labkit.train.dora_dino`: a student,
an EMA teacher, :func:`labkit.train.step.dora_step` or ``dino_step``) or TimeTuning
(:mod:`labkit.train.timetuning_method`, see the end of this docstring). The loop below knows no
method by name: the networks, the step's forward and loss, the updates after the optimiser's,
the checkpoint's network entries, the log columns and the schedules besides lr and wd are the
method's; everything else is the trainer's:

* **Optimiser**: AdamW with DINO's parameter groups (weight decay on weight matrices only, none
  on biases and norm parameters). Per step: learning rate with a linear warm-up then a cosine to
  ``min_lr``, weight decay on a cosine from ``weight_decay`` to ``weight_decay_end``, teacher
  momentum on a cosine from ``momentum_teacher`` to 1 (:func:`cosine_schedule`). The head's last
  layer gets no update during the first ``freeze_last_layer`` epochs (its gradient is dropped
  before clipping, so it does not shrink the others'); gradients are then clipped to a norm of
  ``clip_grad``, one global norm or, with ``clip_grad_mode="per_parameter"``, each tensor's own
  as DINO does (:func:`clip_gradients`). bf16 autocast on GPU (``precision``); ``compile`` wraps the
  student in ``torch.compile``.
* **Determinism**: step ``s``'s data (clips and augmentations), attention heads and the global
  torch RNG (stochastic depth) are all seeded from ``(seed, s[, rank])``, so a run resumed from a
  checkpoint repeats the losses of an uninterrupted one (on CPU: to the last bit). The user's
  global RNG state is left as it was (``torch.random.fork_rng``).
* **Checkpoints** (``out_dir/checkpoint.pth``, every ``checkpoint_every`` steps and at the end)
  are written to a temporary file in the same folder, synced, then ``os.replace``-d over the old
  one: a crash mid-write leaves the previous checkpoint intact. Layout::

      {"student": {"backbone.*", "head.*"}, "teacher": same, "optimizer", "dino_loss": {"center"},
       "step", "epoch", "config": TrainConfig.to_dict(), "rng": {"torch", "cuda", "numpy",
       "python", "data"}, "labkit_version"}

  Only tensors and plain containers, so ``torch.load(weights_only=True)`` reads it and
  ``labkit.models.load_backbone(name, checkpoint=path)`` loads the teacher's backbone;
  :func:`load_trained` rebuilds the architecture from the stored config.
* **Divergence**: a NaN or infinite loss raises :class:`TrainingDiverged` before the update,
  naming the step (counted from 1, as in the log) and the last good checkpoint, which is left
  untouched.
* **The run folder** (see ``docs/reliability.md``): a :class:`labkit.runfolder.RunLock` keeps a
  second process out of ``out_dir`` while a Trainer lives (released by :meth:`Trainer.close`, or
  by the system when the process ends); temporaries of killed checkpoint writes are removed at
  start; a run already in ``out_dir`` is refused unless ``resume`` continues it or ``force``
  moves it to ``out_dir/replaced-<time>/``. Ctrl-C stops after the step under way with a
  checkpoint at that step (:class:`TrainingInterrupted`); a checkpoint that cannot be written
  (disk full) raises :class:`CheckpointWriteError` and leaves the last good one.
* **Distributed**: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from
  the environment (gloo on CPU, nccl on GPU); the student is wrapped in DDP, each process takes
  its slice of the step's global batch, the loss's center is all-reduced, and only rank 0 writes.
* **Logging**: one JSON line per step in ``out_dir/log.jsonl`` (and ``log.csv``): step, epoch,
  loss, teacher entropy, KL to uniform and top mass (collapse signals), lr, wd, momentum,
  teacher temperature, gradient norm, images per second (with ``control``: the frozen-network
  control's loss and teacher entropy); ``metrics.json`` at the end of ``fit``, with the means of
  the loss over the first and last 10% of steps, for DoRA / DINO the learning verdict
  (:mod:`labkit.train.verdict`), and the run's configuration (``config``, flat, as checkpoints
  store it).
* **Collapse watchdog** (:mod:`labkit.train.watchdog`): when the teacher looks collapsed for
  ``collapse_patience`` steps in a row, a :class:`labkit.train.watchdog.CollapseWarning` names
  the step it began and the remedies; that step's log record and ``metrics.json`` carry
  ``collapse`` (``{"step", "kind", "detected_at", "patience"}``; None in metrics if not).
* **Threads**: torch's thread count follows the CPUs this process may use, less the data
  workers (``threads``; :func:`labkit.environment.configure_threads`), restored by ``close``.

**TimeTuning** (``method="timetuning"``, :mod:`labkit.train.timetuning_method`) runs in the
same loop, with the same data (clips of
``ClipDataset(mode="dora")``: one crop and flip per clip, colour per frame; no local crops), seeds,
checkpoints, resume, DDP and logs. What differs:

* the network is a :class:`labkit.timetuning.TimeTuningModel` (the backbone, frozen but for its
  last ``trainable_blocks`` blocks, plus a projection head and prototypes); there is **no
  teacher**, no EMA and no DINO loss. After every optimiser step the prototypes are put back on
  the unit sphere;
* AdamW groups from :meth:`TimeTuningModel.param_groups`: head and prototypes at the scheduled
  ``lr``, the trainable blocks at ``lr * backbone_lr_ratio``; weight decay (cosine
  ``weight_decay`` -> ``weight_decay_end``, as the official code's 0.04 -> 0.4) on weight
  matrices only;
* under DDP the Sinkhorn-Knopp assignment spans the global batch
  (:func:`labkit.timetuning.sinkhorn_knopp_global`), so two processes equal one with the same
  global batch, as for DoRA;
* checkpoint: ``"student"`` holds the tuned model (``backbone.*``, ``head.mlp.*``,
  ``head.prototypes``) and ``"teacher"`` **the same tensors** (stored once by ``torch.save``), so
  ``load_backbone(name, checkpoint=path)``, ``load_trained(path)`` and evaluation-lab specs read
  the tuned backbone whichever network they ask for; no ``"dino_loss"`` entry;
* log records: step, epoch, loss, ``agreement`` (last-frame patches whose best prototype is the
  forwarded target), ``target_confidence``, ``target_clusters`` and ``first_clusters`` (distinct
  clusters in the targets and the first frames' assignments; a collapse shows as a small
  number), each the mean over processes, lr, backbone_lr, wd, gradient norm, images per second.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.distributed as dist

from labkit import __version__
from labkit.data import default_video
from labkit.environment import configure_threads, is_headless
from labkit.models import load_backbone, normalization
from labkit.pos_embed import model_rule
from labkit.runfolder import (
    RunFolderWarning,
    RunLock,
    move_aside,
    read_jsonl,
    remove_stale_temporaries,
    write_atomic,
)
from labkit.train.config import TrainConfig
from labkit.train.data import ClipDataset, StepBatchSampler, preview_clip, step_seed
from labkit.train.dora_dino import LOG_COLUMNS, param_groups
from labkit.train.method import Method
from labkit.train.methods import log_columns, method_for
from labkit.train.schedules import cosine_schedule
from labkit.train.timetuning_method import TIMETUNING_LOG_COLUMNS, TIMETUNING_METRICS
from labkit.train.verdict import learning_summary
from labkit.train.watchdog import CollapseWarning, CollapseWatchdog

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "CheckpointWriteError",
    "train",
    "load_trained",
    "cosine_schedule",
    "clip_gradients",
    "param_groups",
    "read_log",
    "log_columns",
    "LOG_COLUMNS",
    "TIMETUNING_LOG_COLUMNS",
    "TIMETUNING_METRICS",
]

CHECKPOINT_NAME = "checkpoint.pth"
# what a run leaves in out_dir: a new run there moves these aside (force) or refuses
RUN_FILES = (CHECKPOINT_NAME, "log.jsonl", "log.csv", "metrics.json")
# LOG_COLUMNS (DoRA / DINO), TIMETUNING_LOG_COLUMNS, TIMETUNING_METRICS, log_columns,
# cosine_schedule and param_groups live with their methods and schedules; re-exported here

Callback = Callable[[dict, "Trainer"], Any]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped before the update.

    Attributes:
        step: the step whose loss was not finite, counted from 1 as in ``log.jsonl`` (the log's
            last record is ``step - 1``).
        checkpoint: the last good checkpoint, or None if none was written.
    """

    def __init__(self, step: int, loss: float, checkpoint: Path | None) -> None:
        self.step, self.loss, self.checkpoint = step, loss, checkpoint
        where = (
            f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint was written yet"
        )
        super().__init__(
            f"loss is {loss} at step {step}; training stopped before updating the weights "
            f"({where}). Lower lr, raise warmup_epochs or clip_grad, or check the data."
        )


class TrainingInterrupted(RuntimeError):
    """Training was interrupted (Ctrl-C, SIGTERM) and stopped after a whole step.

    Attributes:
        step: the steps done (the checkpoint's step).
        checkpoint: the checkpoint written at ``step`` (or the last good one).
    """

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint {checkpoint} holds step {step}" if checkpoint else "no checkpoint"
        super().__init__(
            f"training interrupted after step {step}; {where} (set resume=true to continue)"
        )


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the last good one is kept."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the per-step log, the checkpoint, summary metrics."""

    out_dir: Path
    log: list[dict]
    checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)


def clip_gradients(
    parameters: Sequence[torch.nn.Parameter] | Any,
    max_norm: float,
    mode: str = "global",
) -> float:
    """Clip gradients in place; returns the global gradient norm before clipping.

    Args:
        parameters: the parameters (those without a gradient are skipped).
        max_norm: the largest norm kept; 0 or inf: no clipping (the norm is still returned).
        mode: ``"global"``: scale all gradients together so that their joint L2 norm is at most
            ``max_norm`` (``torch.nn.utils.clip_grad_norm_``). ``"per_parameter"``: scale each
            tensor's gradient on its own to norm at most ``max_norm`` (DINO's and DoRA's
            ``utils.clip_gradients``: coefficient ``max_norm / (norm + 1e-6)`` where below 1).

    Returns:
        The L2 norm of all gradients together, before clipping (float).
    """
    if mode not in ("global", "per_parameter"):
        raise ValueError(f"clip_gradients: mode must be 'global' or 'per_parameter', got {mode!r}")
    with_grads = [p for p in parameters if p.grad is not None]
    if not with_grads:
        return 0.0
    limit = max_norm if max_norm > 0 else math.inf
    if mode == "global":
        return float(torch.nn.utils.clip_grad_norm_(with_grads, limit))
    grads = [p.grad for p in with_grads if p.grad is not None]  # all of them
    norms = torch._foreach_norm(grads)  # one 0-d tensor per parameter
    total = float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))
    if math.isfinite(limit):
        coefficients = [(limit / (n + 1e-6)).clamp(max=1.0) for n in norms]
        torch._foreach_mul_(grads, coefficients)
    return total


def read_log(path: str | os.PathLike) -> list[dict]:
    """Records of a ``log.jsonl`` (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.jsonl"
    if not path.is_file():
        raise ValueError(f"read_log: no training log at {path}")
    return read_jsonl(path)  # a torn last line (a killed run) is dropped with a warning


def _distributed(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call initialised the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        started = True
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    target = torch.device(device)
    if target.type == "cuda":
        if target.index is None and world > 1:
            target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(target)
    return rank, world, target, started


def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain containers (loadable with ``weights_only``)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class Trainer:
    """A training run of any :class:`labkit.train.method.Method` in this process (one rank of a
    DDP job).

    Args:
        config: the run's :class:`TrainConfig`.
        progress: show a tqdm bar (rank 0 only; plain text under papermill).

    Attributes:
        method: the run's :class:`labkit.train.method.Method` (networks, step, state, columns).
        student, teacher: the method's networks (not DDP-wrapped): for DoRA / DINO the
            :class:`labkit.train.step.MultiCropNetwork` s; for TimeTuning the student is the
            :class:`labkit.timetuning.TimeTuningModel` and the teacher is None.
        backbone: the ViT to look at and evaluate (the teacher's; TimeTuning: the tuned one).
        loss_fn: the :class:`labkit.losses.DINOLoss` (holds the center); None for TimeTuning.
        watchdog: the method's collapse watchdog, or None.
        optimizer: AdamW.
        dataset: the :class:`labkit.train.data.ClipDataset`.
        step: optimiser steps done so far.
        steps_per_epoch: the epoch length in steps.
        log: the per-step records of this run (including those before a resume).
    """

    def __init__(self, config: TrainConfig, *, progress: bool = True, force: bool = False) -> None:
        self.config = config
        self.progress = progress
        self.rank, self.world_size, self.device, self._started_group = _distributed(config.device)
        self.out_dir = Path(config.out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.last_checkpoint: Path | None = None
        self._checkpoint_step = 0  # the step last_checkpoint holds
        self._lock = RunLock(self.out_dir, what=f"{config.method} training")
        if self.rank == 0:
            self._lock.acquire()  # a second process on this folder fails here, at once
        self._threads_before = torch.get_num_threads()
        try:
            # the processes of a job on one machine share its CPUs (torchrun: LOCAL_WORLD_SIZE)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
            self.threads = configure_threads(
                config.threads or None, workers=config.num_workers, processes=local
            )
            self._claim_folder(force)
            self._build()
        except BaseException:
            self._lock.release()
            torch.set_num_threads(self._threads_before)
            raise

    def _claim_folder(self, force: bool) -> None:
        """Remove temporaries of killed writes; refuse (or, with ``force``, move aside) a run
        already in ``out_dir`` unless this one resumes it."""
        existing = [n for n in RUN_FILES if (self.out_dir / n).exists()]
        resuming = self.config.resume and self.checkpoint_path.is_file()
        if existing and not resuming and not force and not self.config.resume:
            what = "a training run"
            if self.checkpoint_path.is_file():
                what += " with a checkpoint"
            if (self.out_dir / "metrics.json").is_file():
                what = "a finished training run"
            raise ValueError(
                f"out_dir {self.out_dir} already holds {what} ({', '.join(existing)}); set "
                "resume=true to continue it, or force it (labkit train --force; in Python "
                f"Trainer(config, force=True)) to move it to {self.out_dir}/replaced-<time>/ and "
                "start afresh, or choose another out_dir"
            )
        if self.rank == 0:
            for path in remove_stale_temporaries(self.out_dir):
                warnings.warn(
                    f"removed {path}, left by a write that was killed",
                    RunFolderWarning,
                    stacklevel=3,
                )
            if existing and not resuming:  # forced, or resume with no checkpoint to resume
                backup = self.out_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                move_aside(self.out_dir, existing, backup)
                why = "" if force else f"{self.out_dir} has no checkpoint to resume from; "
                warnings.warn(
                    f"{why}moved the previous run's files to {backup}",
                    RunFolderWarning,
                    stacklevel=3,
                )
        if self.world_size > 1:
            dist.barrier()

    def _build(self) -> None:
        config = self.config
        with torch.random.fork_rng(
            devices=[]
        ):  # same initial weights on every rank, no side effect
            torch.manual_seed(config.seed)
            self.method: Method = method_for(config)
        self.method.to(self.device)
        groups, self._group_rules = self.method.param_groups()
        self.optimizer = torch.optim.AdamW(groups, lr=0.0)

        mean, std = normalization(self.backbone)  # the student's and the teacher's
        decode = config.decode_size or 2 * round(0.75 * config.img_size)  # 1.5 x img_size, even
        self.video_paths = [str(p) for p in config.video_paths] or [str(default_video())]
        self.dataset = ClipDataset(
            self.video_paths,
            num_frames=config.num_frames,
            frame_step=config.frame_step,
            img_size=config.img_size,
            local_size=config.local_size,
            global_scale=config.global_scale,
            local_scale=config.local_scale,
            decode_size=decode,
            backend=config.video_backend,
            mean=mean,
            std=std,
            **self.method.dataset_options,  # mode, num_local, pre_crop
        )
        self.global_batch = config.batch_size * self.world_size
        self.steps_per_epoch = config.steps_per_epoch or max(
            1, self.dataset.num_disjoint_clips() // self.global_batch
        )
        self.step = 0
        self.log: list[dict] = []
        if config.resume and self.checkpoint_path.is_file():
            self.load_checkpoint(self.checkpoint_path)
        else:
            self._truncate_logs(0)  # a fresh run does not append to an old run's log
        self.watchdog: CollapseWatchdog | None = self.method.watchdog
        if self.watchdog is not None:
            for record in self.log:  # a resumed run picks up its streak (and a past event)
                self.watchdog.update(record)

        if config.precision == "bf16" or (
            config.precision == "auto" and self.device.type == "cuda"
        ):
            self.autocast_dtype: torch.dtype | None = torch.bfloat16
        else:
            self.autocast_dtype = None
        self._student_run: torch.nn.Module = self.student
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._student_run = DistributedDataParallel(self.student, device_ids=ids)
        if config.compile:
            # a compiled module is a module (torch.compile's stubs say a callable)
            self._student_run = cast(torch.nn.Module, torch.compile(self._student_run))
        self._last_time: float | None = None

    # -- schedules ---------------------------------------------------------------------------

    def epoch_of(self, step: int) -> int:
        """The epoch a step falls in."""
        return step // self.steps_per_epoch

    def schedules(self, step: int) -> dict[str, float]:
        """Learning rate and weight decay at ``step``, with the method's own schedule values.

        DoRA / DINO: teacher momentum and temperature; TimeTuning: the learning rate of the
        trainable backbone blocks (``backbone_lr``).
        """
        cfg = self.config
        if cfg.lr is None or cfg.warmup_epochs is None:  # TrainConfig.__post_init__ fills them
            raise ValueError("Trainer.schedules: lr and warmup_epochs must be set")
        total = cfg.steps
        peak = cfg.lr * self.global_batch / 256.0 if cfg.scale_lr else cfg.lr
        warmup = min(int(round(cfg.warmup_epochs * self.steps_per_epoch)), total)
        lr = cosine_schedule(step, total, peak, cfg.min_lr, warmup)
        wd = cosine_schedule(step, total, cfg.weight_decay, cfg.weight_decay_end)
        return self.method.schedules(step, self.epoch_of(step), lr, wd)

    @property
    def backbone(self) -> torch.nn.Module:
        """The ViT to look at and evaluate: the teacher's, or TimeTuning's tuned backbone."""
        return self.method.backbone

    @property
    def student(self) -> torch.nn.Module:
        """The network the optimiser trains (the method's; not DDP-wrapped)."""
        return self.method.student

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The method's EMA teacher, or None (TimeTuning)."""
        return self.method.teacher

    @property
    def loss_fn(self) -> torch.nn.Module | None:
        """The method's loss with state (DINO's center), or None (TimeTuning)."""
        return self.method.loss_fn

    # -- one step ----------------------------------------------------------------------------

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Forward, loss, backward, update and EMA for one batch; returns the step's record.

        The step's random sources are seeded from ``(seed, step)``; call inside
        ``torch.random.fork_rng`` to keep the caller's global RNG (``fit`` does).

        Raises:
            TrainingDiverged: the loss is NaN or infinite (nothing is updated).
        """
        cfg = self.config
        step, epoch = self.step, self.epoch_of(self.step)
        values = self.schedules(step)
        for group, (scale, regularised) in zip(self.optimizer.param_groups, self._group_rules):
            group["lr"] = values["lr"] * scale
            if regularised:
                group["weight_decay"] = values["wd"]
        batch = {
            k: v.to(self.device, non_blocking=True)
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }
        torch.manual_seed(step_seed(cfg.seed, step, self.rank))  # stochastic depth of this step
        start = self._last_time if self._last_time is not None else time.perf_counter()
        out = self.method.forward(
            self._student_run,
            batch,
            step=step,
            epoch=epoch,
            schedules=values,
            autocast_dtype=self.autocast_dtype,
        )
        reduced = out.shared  # the loss and the method's diagnostics, averaged in one call
        if self.world_size > 1:  # every rank takes the same decision below
            dist.all_reduce(reduced)
            reduced /= self.world_size
        loss = float(reduced[0])
        if not math.isfinite(loss):
            raise TrainingDiverged(step + 1, loss, self.last_checkpoint)

        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.method.after_backward(epoch)
        grad_norm = clip_gradients(
            list(self.student.parameters()), cfg.clip_grad, cfg.clip_grad_mode
        )
        self.optimizer.step()
        statistics = self.method.after_update(out, reduced, values)
        self.step += 1

        now = time.perf_counter()
        seconds = now - start
        self._last_time = now
        record: dict[str, Any] = {
            "step": self.step,
            "epoch": epoch,
            "loss": loss,
            **statistics,
            **values,
            "grad_norm": grad_norm,
            "images_per_s": out.images * self.world_size / max(seconds, 1e-9),
            "seconds": seconds,
        }
        if self.watchdog is not None and (event := self.watchdog.update(record)):
            record["collapse"] = event
            if self.rank == 0:
                message = self.watchdog.message(self.method.display_name)
                warnings.warn(message, CollapseWarning, stacklevel=2)
        return record

    # -- the loop ----------------------------------------------------------------------------

    def loader(self, start: int, stop: int) -> torch.utils.data.DataLoader:
        """Batches of steps ``start .. stop - 1`` for this rank."""
        sampler = StepBatchSampler(
            len(self.dataset),
            self.config.batch_size,
            seed=self.config.seed,
            start=start,
            stop=stop,
            rank=self.rank,
            world_size=self.world_size,
        )
        if self.config.num_workers > 0:  # decoded once here, shared by the forked workers
            self.dataset.cache_frames()
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(step_seed(self.config.seed, start)),
            persistent_workers=False,
        )

    def fit(self, until: int | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
        """Train up to step ``until`` (default: ``config.steps``), checkpointing on the way.

        Args:
            until: stop after this many steps in all (a later ``fit`` or a resumed run goes on).
            callbacks: called as ``callback(record, trainer)`` after every step (rank 0 only).

        Returns:
            :class:`TrainResult`; ``metrics.json`` and the final checkpoint are in ``out_dir``.

        Raises:
            TrainingDiverged: on a NaN or infinite loss.
            TrainingInterrupted: on Ctrl-C, after the step under way and its checkpoint.
            CheckpointWriteError: a checkpoint could not be written (disk full); the last good
                one is kept.
        """
        stop = self.config.steps if until is None else min(int(until), self.config.steps)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        first = self.step
        wall = time.perf_counter()
        self._last_time = None
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        bar = self._progress_bar(first, stop)
        self.student.train()
        self._stop_requested = False
        try:
            with torch.random.fork_rng(devices=devices), self._stop_on_interrupt():
                for batch in self.loader(first, stop):
                    if self._stop_requested:
                        break
                    record = self.train_step(batch)
                    self.log.append(record)
                    if self.rank == 0:
                        self._append_log(record)
                        for callback in callbacks:
                            callback(record, self)
                    if bar is not None:  # the postfix waits for the bar's next refresh
                        bar.set_postfix(
                            loss=f"{record['loss']:.4f}",
                            img_s=f"{record['images_per_s']:.1f}",
                            refresh=False,
                        )
                        bar.update(1)  # at most one line per mininterval under papermill
                    every = self.config.checkpoint_every
                    if every and self.step % every == 0 and self.step < stop:
                        self.save_checkpoint()
        except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the step's state is not saved
            raise TrainingInterrupted(self._checkpoint_step, self.last_checkpoint) from None
        finally:
            if bar is not None:
                bar.close()
        if self._stop_requested:  # Ctrl-C: stop after the whole step, with its checkpoint
            self.save_checkpoint()
            raise TrainingInterrupted(self.step, self.last_checkpoint)
        if self.step > first or self.last_checkpoint is None:
            self.save_checkpoint()
        metrics = self.summary(time.perf_counter() - wall, first)
        if self.rank == 0:
            # with the configuration that ran, which the pipeline's report lists
            record = {**metrics, "config": self.config_used()}
            write_atomic(self.out_dir / "metrics.json", json.dumps(record, indent=2).encode())
        return TrainResult(self.out_dir, list(self.log), self.last_checkpoint, metrics)

    @contextlib.contextmanager
    def _stop_on_interrupt(self) -> Any:
        """While training: the first Ctrl-C (SIGINT) asks the loop to stop after the current
        step and write its checkpoint; a second one interrupts at once. Only in the main thread
        of a single-process run (each DDP rank would stop at another step)."""
        if threading.current_thread() is not threading.main_thread() or self.world_size > 1:
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self._stop_requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def summary(self, seconds: float, first: int) -> dict[str, Any]:
        """Summary metrics of the run so far (what ``metrics.json`` holds)."""
        import resource

        recent = [r for r in self.log if r["step"] > first]
        speed = [r["images_per_s"] for r in recent[1:]] or [r["images_per_s"] for r in recent]
        last = self.log[-1] if self.log else {}
        own = self.method.metrics(last)  # e.g. out_dim, the last teacher statistics, collapse
        # loss_first10 / loss_last10 (control_* with the frozen-network control) and, for a
        # method with a teacher (out_dim), the learning verdict (labkit.train.verdict)
        learning = learning_summary(self.log, own.get("out_dim"))
        return {
            "method": self.config.method,
            **({"out_dim": own.pop("out_dim")} if "out_dim" in own else {}),
            "steps": self.step,
            "steps_this_run": len(recent),
            "epochs": self.step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "final_loss": last.get("loss"),
            "first_loss": self.log[0]["loss"] if self.log else None,
            **learning,
            **own,
            "images_per_second": float(np.mean(speed)) if speed else None,
            "images_per_step": self.global_batch * self.config.num_frames,
            "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "world_size": self.world_size,
            "torch_threads": self.threads,
            "device": str(self.device),
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "out_dir": str(self.out_dir),
        }

    def _progress_bar(self, first: int, stop: int) -> Any:
        if not self.progress or self.rank != 0 or stop <= first:
            return None
        if is_headless():  # papermill / scripts: a plain bar that prints rarely
            from tqdm import tqdm

            return tqdm(
                total=stop, initial=first, desc=self.config.method, unit="step", mininterval=10.0
            )
        from tqdm.auto import tqdm

        return tqdm(total=stop, initial=first, desc=self.config.method, unit="step")

    # -- logs --------------------------------------------------------------------------------

    def _append_log(self, record: dict) -> None:
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        csv_path = self.out_dir / "log.csv"
        new = not csv_path.is_file()
        with open(csv_path, "a", newline="") as f:
            columns = self.method.log_columns
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)

    def _truncate_logs(self, step: int) -> None:
        """Drop log lines past ``step`` (written after the checkpoint a resume starts from) and a
        torn last line (a run killed while writing it), which is reported."""
        path = self.out_dir / "log.jsonl"
        if step == 0 or not path.is_file():
            self.log = []
        else:
            self.log = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        if self.rank != 0 or not path.is_file():
            return
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.log).encode())
        text = io.StringIO()
        columns = self.method.log_columns
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.log)
        write_atomic(self.out_dir / "log.csv", text.getvalue().encode())

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The checkpoint dict (see the module docstring): the method's network entries
        (:meth:`labkit.train.method.Method.state_dict`) and the trainer's.

        TimeTuning: ``"teacher"`` is the student's state dict itself (the same tensors, which
        ``torch.save`` stores once), and there is no ``"dino_loss"``.
        """
        return {
            **self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch_of(self.step),
            "config": self.config_used(),
            "rng": {**_rng_state(), "data": {"seed": self.config.seed, "next_step": self.step}},
            "labkit_version": __version__,
        }

    def config_used(self) -> dict[str, Any]:
        """The configuration as it ran, flat: ``pos_embed_rule`` "auto" resolved to the rule the
        backbone uses, so the weights load as they were trained (checkpoints and metrics.json)."""
        return {**self.config.to_dict(), "pos_embed_rule": model_rule(self.backbone)}

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write the checkpoint atomically (rank 0; the others wait). Returns its path."""
        path = Path(path) if path is not None else self.checkpoint_path
        if self.rank == 0:
            buffer = io.BytesIO()
            torch.save(self.state(), buffer)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, buffer.getvalue())
            except OSError as err:
                kept = (
                    f"the last good checkpoint, {self.last_checkpoint}, is kept"
                    if self.last_checkpoint
                    else "no checkpoint was written before"
                )
                raise CheckpointWriteError(
                    err.errno,
                    f"cannot write the checkpoint at step {self.step} to {path}: "
                    f"{err.strerror or err}; {kept}",
                ) from None
        if self.world_size > 1:
            dist.barrier()
        self.last_checkpoint, self._checkpoint_step = path, self.step
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore networks, optimiser, center, step and RNG states from a checkpoint.

        Raises:
            ValueError: the checkpoint was trained with another method or architecture (the
                fields of :func:`labkit.train.config.architecture_fields` differ), or it is not
                a labkit training checkpoint.
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, random or pickled-code files: torch raises many types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"cannot resume from {path}: not a readable checkpoint ({type(err).__name__}: "
                f"{first[:200]}); move it away, or start afresh with labkit train --force"
            ) from None
        if not isinstance(state, dict):
            raise ValueError(
                f"{path} is not a labkit training checkpoint (a {type(state).__name__})"
            )
        needed = ("student", "teacher", "optimizer", "step", "config")
        missing = [k for k in needed if k not in state]
        if missing:
            raise ValueError(f"{path} is not a labkit training checkpoint (no {missing})")
        ours = self.config.to_dict()
        fields = self.method.architecture_fields
        if not isinstance(state["config"], dict):
            raise ValueError(
                f"{path} is not a labkit training checkpoint (its config is not a mapping)"
            )
        if changed := [k for k in fields if state["config"].get(k) != ours[k]]:
            detail = ", ".join(f"{k}: {state['config'].get(k)!r} -> {ours[k]!r}" for k in changed)
            raise ValueError(f"cannot resume from {path}: the architecture changed ({detail})")
        if missing := [k for k in self.method.checkpoint_keys if k not in state]:
            raise ValueError(f"{path} is not a labkit training checkpoint (no {missing})")
        try:
            self.method.load_state_dict(state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"cannot resume from {path}: its contents do not fit this run ({first[:200]})"
            ) from None
        if "rng" in state:
            _set_rng_state(state["rng"])
        self.last_checkpoint, self._checkpoint_step = path, self.step
        self._truncate_logs(self.step)

    # -- looking at the model ------------------------------------------------------------------

    def preview_clip(self, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """An un-augmented clip of the first video at ``img_size`` (shorter side) for figures.

        Returns:
            ``(indices int64 (T,), frames uint8 (T, H, W, 3))``.
        """
        cfg = self.config
        return preview_clip(
            self.video_paths[0],
            num_frames=cfg.num_frames,
            frame_step=cfg.frame_step,
            size=cfg.img_size,
            start=start,
            backend=cfg.video_backend,
        )

    def close(self) -> None:
        """Release video readers, the run folder's lock and the process group this trainer
        started."""
        self.dataset.close()
        self._lock.release()
        torch.set_num_threads(self._threads_before)
        if self._started_group and dist.is_initialized():
            dist.destroy_process_group()
            self._started_group = False


_write_atomic = write_atomic  # the name this module used before labkit.runfolder


def train(
    config: TrainConfig,
    *,
    until: int | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    force: bool = False,
) -> TrainResult:
    """Build a :class:`Trainer`, run :meth:`Trainer.fit`, release its resources.

    ``force``: a run already in ``out_dir`` (and not resumed) is moved to
    ``out_dir/replaced-<time>/`` instead of refused.
    """
    trainer = Trainer(config, progress=progress, force=force)
    try:
        return trainer.fit(until=until, callbacks=callbacks)
    finally:
        trainer.close()


def load_trained(
    path: str | os.PathLike,
    which: Literal["teacher", "student"] = "teacher",
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """The backbone of a labkit training checkpoint, its architecture rebuilt from the stored
    config.

    Args:
        path: ``checkpoint.pth`` or the run folder holding it.
        which: ``"teacher"`` (what DINO and DoRA evaluate) or ``"student"``. A TimeTuning
            checkpoint holds the tuned backbone under both names (it has no teacher).
        device: where the model goes.

    Returns:
        A timm VisionTransformer in eval mode (as :func:`labkit.models.load_backbone` returns).

    Raises:
        ValueError: the file is not a labkit checkpoint (no stored config).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"load_trained: no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(
            f"load_trained: {path} has no labkit config; use labkit.models.load_backbone"
        )
    # no img_size: the model is built on the checkpoint's own position grid, and the rule it
    # trained with (recorded in its config) resizes it per input
    return load_backbone(
        config["model"],
        checkpoint=path,
        which=which,
        device=device,
        **config.get("model_kwargs", {}),
    )
