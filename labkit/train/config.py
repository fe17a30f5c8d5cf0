"""The training run's configuration: a frozen dataclass in sections, read from YAML with overrides.

The same :class:`TrainConfig` drives the notebook (its parameters cell uses the field names), the
``labkit train --config run.yaml -o lr=1e-4`` command and ``torchrun`` jobs. Every field is a plain
YAML value (numbers, strings, booleans, lists, one dict), so a config round-trips through YAML and
is stored in every checkpoint.

Vocabulary:

* A **step** is one optimiser update on one global batch (``batch_size`` clips per process times
  the number of processes). Schedules (learning rate, weight decay, teacher momentum) run over
  ``steps``.
* An **epoch** has no natural meaning for a long video: clips overlap, and any frame can start
  one. Here it is a fixed number of steps, ``steps_per_epoch``; 0 picks one pass over the
  non-overlapping clips of the data (every frame seen about once per epoch). Epochs only set
  DINO's epoch-based knobs: ``warmup_epochs``, ``freeze_last_layer`` and
  ``warmup_teacher_temp_epochs``.

Methods (``method``):

* ``"dora"``: DoRA, multi-object tracking on the clips; ``"dino"``: frames as independent images.
  Both train a student and an EMA teacher with a DINO head.
* ``"timetuning"``: TimeTuning (:mod:`labkit.timetuning`) fine-tunes the last
  ``trainable_blocks`` blocks of a (pretrained) backbone with a projection head and
  ``num_prototypes`` prototypes, so that patch clusters stay put over time. No teacher. Fields it
  reads besides the common ones: ``num_prototypes``, ``head_dims``, ``trainable_blocks``,
  ``train_norm``, ``epsilon`` and ``sinkhorn_iterations`` (its Sinkhorn-Knopp), ``student_temp``
  (the temperature of its cross-entropy), ``hard_targets``, the ``forwarder_*`` fields and
  ``backbone_lr_ratio``. The DINO-head, teacher and DoRA fields (``k``, ``heads``, ``sinkhorn``,
  ``threshold``, ``out_dim`` ... ``momentum_teacher``, ``teacher_temp`` ...) are ignored.

Method-dependent defaults: a field left at ``None`` takes its method's default on construction
(:data:`METHOD_DEFAULTS`), so ``TrainConfig(method="timetuning")`` gets TimeTuning's learning rate
and ``to_dict()`` (and every checkpoint) stores the value actually used.

Sections. The fields fall into six sections (:data:`SECTIONS`): ``data`` (what the clips are),
``model`` (the networks and their initial weights), ``method`` (DoRA / DINO / TimeTuning and
their own knobs), ``optimisation`` (steps, batch, schedules, clipping), ``run`` (device,
precision, threads, seed) and ``output`` (out_dir, checkpoints, resume). The design keeps the
flat dataclass as the one source of truth and makes the sections **views** of it:

* ``TrainConfig(steps=5)``, ``config.steps``, ``dataclasses.fields(TrainConfig)``, checkpoints'
  stored configs (``to_dict()``: flat) and the notebooks' parameters (papermill ``-p lr 1e-4``)
  all stay flat, so nothing written before the sections breaks;
* ``config.sections.optimisation.lr`` (or ``config.section("optimisation")``) reads a section,
  a frozen dataclass whose fields are those of :data:`SECTIONS`; ``to_dict(nested=True)`` writes
  the sectioned YAML;
* :func:`load_config` reads a file in either form (``lr: 1e-4`` or ``optimisation: {lr: 1e-4}``)
  and overrides as ``-o lr=1e-4`` or ``-o optimisation.lr=1e-4`` (:func:`labkit.config.load_config`,
  the loader every command uses). The ``model`` and ``method`` sections share their names with
  the fields ``model`` (the timm name) and ``method``: a mapping is the section, a string the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from labkit.config import load_config as load_dataclass
from labkit.config import parse_overrides
from labkit.pos_embed import PosEmbedRule, check_rule
from labkit.validation import (
    check_device,
    check_fields,
    check_model_kwargs,
    check_output_dir,
    resolve_device,
)

__all__ = [
    "TrainConfig",
    "TrainSections",
    "SECTIONS",
    "load_config",
    "parse_overrides",
    "ARCHITECTURE_FIELDS",
    "METHODS",
    "METHOD_DEFAULTS",
    "IGNORED_FIELDS",
    "architecture_fields",
]

METHODS = ("dora", "dino", "timetuning")

# Fields that fix the networks' shapes: a checkpoint resumes only under the same values.
ARCHITECTURE_FIELDS = (
    "method",
    "model",
    "model_kwargs",
    "img_size",
    "out_dim",
    "hidden_dim",
    "bottleneck_dim",
    "norm_last_layer",
)
# ... and for TimeTuning, its head and which parameters train (the optimiser's state follows them)
TIMETUNING_ARCHITECTURE_FIELDS = (
    "method",
    "model",
    "model_kwargs",
    "img_size",
    "num_prototypes",
    "head_dims",
    "trainable_blocks",
    "train_norm",
)

# Defaults of the fields left at None, per method. DoRA / DINO: DINO's recipe. TimeTuning: the
# official code (SMSD75/Timetuning time_tuning.py): head lr 1e-4 with the backbone at a tenth,
# not scaled by the batch, cosine annealing without warm-up, no stochastic depth (DINO's ViT
# default), 10 Sinkhorn iterations (TimeT.get_loss's default).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lr": {"dora": 5e-4, "dino": 5e-4, "timetuning": 1e-4},
    "scale_lr": {"dora": True, "dino": True, "timetuning": False},
    "warmup_epochs": {"dora": 1.0, "dino": 1.0, "timetuning": 0.0},
    "drop_path_rate": {"dora": 0.1, "dino": 0.1, "timetuning": 0.0},
    "sinkhorn_iterations": {"dora": 30, "dino": 30, "timetuning": 10},
}


# Fields a method does not read (the pipeline passes its `train` options to each method's
# notebook less these: `train: {num_local: 4}` reaches DoRA and DINO, not TimeTuning)
_DINO_FIELDS = (
    "local_size",
    "num_local",
    "local_scale",
    "out_dim",
    "hidden_dim",
    "bottleneck_dim",
    "norm_last_layer",
    "momentum_teacher",
    "teacher_temp",
    "warmup_teacher_temp",
    "warmup_teacher_temp_epochs",
    "student_temp",
    "center_momentum",
    "center_init",
    "collapse_patience",
    "control",
    "freeze_last_layer",
)
_DORA_FIELDS = ("k", "heads", "sinkhorn", "threshold", "dora_loss", "pre_crop")
_TIMETUNING_FIELDS = (
    "num_prototypes",
    "head_dims",
    "trainable_blocks",
    "train_norm",
    "hard_targets",
    "forwarder_n_last",
    "forwarder_topk",
    "forwarder_temperature",
    "forwarder_radius",
    "backbone_lr_ratio",
)
IGNORED_FIELDS: dict[str, tuple[str, ...]] = {
    "dora": _TIMETUNING_FIELDS,
    "dino": _DORA_FIELDS + ("epsilon", "sinkhorn_iterations") + _TIMETUNING_FIELDS,
    "timetuning": _DINO_FIELDS + _DORA_FIELDS,
}


def architecture_fields(method: str) -> tuple[str, ...]:
    """The fields a checkpoint of ``method`` must share with the config that resumes it."""
    return TIMETUNING_ARCHITECTURE_FIELDS if method == "timetuning" else ARCHITECTURE_FIELDS


# The sections of TrainConfig's fields: each field in exactly one (tests/test_train_config.py)
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": (
        "video_path",
        "num_frames",
        "frame_step",
        "decode_size",
        "video_backend",
        "img_size",
        "local_size",
        "num_local",
        "global_scale",
        "local_scale",
        "pre_crop",
        "num_workers",
    ),
    "model": (
        "model",
        "model_kwargs",
        "pretrained",
        "checkpoint",
        "pos_embed_rule",
        "drop_path_rate",
        "out_dim",
        "hidden_dim",
        "bottleneck_dim",
        "norm_last_layer",
        "num_prototypes",
        "head_dims",
    ),
    "method": (
        "method",
        "k",
        "heads",
        "sinkhorn",
        "epsilon",
        "sinkhorn_iterations",
        "threshold",
        "dora_loss",
        "momentum_teacher",
        "teacher_temp",
        "warmup_teacher_temp",
        "warmup_teacher_temp_epochs",
        "student_temp",
        "center_momentum",
        "center_init",
        "collapse_patience",
        "control",
        "trainable_blocks",
        "train_norm",
        "hard_targets",
        "forwarder_n_last",
        "forwarder_topk",
        "forwarder_temperature",
        "forwarder_radius",
    ),
    "optimisation": (
        "steps",
        "steps_per_epoch",
        "batch_size",
        "lr",
        "scale_lr",
        "warmup_epochs",
        "min_lr",
        "weight_decay",
        "weight_decay_end",
        "clip_grad",
        "clip_grad_mode",
        "freeze_last_layer",
        "backbone_lr_ratio",
    ),
    "run": ("device", "precision", "compile", "threads", "seed"),
    "output": ("out_dir", "checkpoint_every", "resume"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a DoRA, DINO or TimeTuning training run needs; validated on construction.

    Defaults follow DINO / DoRA where those are sensible on one long video, and the official
    TimeTuning code for its own fields and for the ``None`` fields under ``method="timetuning"``
    (see :data:`METHOD_DEFAULTS`); a CPU run wants a smaller model, ``img_size``, ``num_frames``
    and ``out_dim`` (see the notebooks' parameters).
    """

    # -- data ---------------------------------------------------------------------------------
    video_path: str | tuple[str, ...] = ""  # mp4 / frame folder, or a list; "": synthetic video
    num_frames: int = 8  # T, frames per clip (DoRA: 8)
    frame_step: int = 10  # frames between the clip's frames in the video (DoRA: 30 at 30 fps)
    decode_size: int = 0  # shorter side frames are decoded at; 0: 1.5 x img_size (4K videos!)
    video_backend: Literal["auto", "decord", "pyav"] = "auto"
    img_size: int = 224  # side of the global crops (teacher and object views)
    local_size: int = 96  # side of the local crops
    num_local: int = 4  # n, local crops per frame (DINO and DoRA use 8 or 10 on GPUs)
    global_scale: tuple[float, float] = (0.4, 1.0)  # area range of the global crop
    local_scale: tuple[float, float] = (0.05, 0.4)  # area range of a local crop
    # DoRA only: the official pre-crop of each clip (area 0.2 to 1, 300 px at img_size 224) that
    # the global view and the local crops are then cut from (docs/science.md)
    pre_crop: bool = False
    # -- method -------------------------------------------------------------------------------
    # dino: frames as independent images, no tracking; timetuning: see the module docstring
    method: Literal["dora", "dino", "timetuning"] = "dora"
    k: int = 3  # objects discovered per clip (heads used)
    heads: str | tuple[int, ...] = "random"  # "random" per step (seeded), or k fixed head indices
    sinkhorn: bool = True  # DoRA: refine the prototypes with Sinkhorn-Knopp (False: row softmax)
    epsilon: float = 0.05  # temperature of the transport plan (DoRA and TimeTuning)
    sinkhorn_iterations: int | None = None  # None: DoRA 30, TimeTuning 10
    threshold: str | float = "mean"  # mask rule: "mean", "batch_mean" (official) or keep-mass
    # DoRA's loss: "corrected" weighs every object and local crop equally; "published" is the
    # official code's (objects weighted unequally, local crop 0 never scored; needs num_local >= 2)
    dora_loss: Literal["corrected", "published"] = "corrected"
    # -- TimeTuning ---------------------------------------------------------------------------
    num_prototypes: int = 200  # K, clusters of the Sinkhorn assignment
    head_dims: tuple[int, ...] = (1024, 1024, 512, 256)  # projection MLP widths; the last is E
    trainable_blocks: int = 2  # last backbone blocks that train (official: 2 of ViT-S/16's 12)
    train_norm: bool = False  # also train the final LayerNorm (official: frozen)
    hard_targets: bool = True  # arg-max of the forwarded assignment (official) or the distribution
    forwarder_n_last: int = 7  # recent frames in the feature forwarder's context besides frame 0
    forwarder_topk: int = 5  # voting context patches per patch
    forwarder_temperature: float = 0.1  # exp(cos / t) affinities
    forwarder_radius: int = 6  # window in patches (size_mask_neighborhood); 0: the whole frame
    backbone_lr_ratio: float = 0.1  # trainable blocks' lr as a fraction of lr (official: 1 / 10)
    # -- model --------------------------------------------------------------------------------
    model: str = "vit_small_patch16_224"  # timm ViT architecture
    model_kwargs: dict = field(default_factory=dict)  # extra timm arguments (depth, embed_dim ...)
    # start from timm's weights of a tagged model name (hub or local cache): true, false, "auto"
    # (if in the local cache now, else a random init), None (true where the name has a tag)
    pretrained: bool | Literal["auto"] | None = None
    checkpoint: str = ""  # start from a local checkpoint's backbone (timm, DINO, DoRA, labkit)
    # position embeddings resized to each crop's grid: "dino", "dinov2", "timm"; "auto" follows the
    # initial weights (timm's for a random init); checkpoints record the rule actually used
    pos_embed_rule: PosEmbedRule = "auto"
    drop_path_rate: float | None = None  # stochastic depth of the student; None: 0.1, TimeT 0
    out_dim: int = 65536  # K, output dimension of the DINO head
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True  # freeze the head's weight-norm scale (stabler, DINO)
    # -- optimisation -------------------------------------------------------------------------
    steps: int = 1000  # optimiser steps of the whole run
    steps_per_epoch: int = 0  # 0: one pass over the non-overlapping clips (see module doc)
    batch_size: int = 16  # clips per process and step
    # peak learning rate (TimeTuning: of the head and prototypes), for a global batch of 256 clips
    # if scale_lr; None: DoRA / DINO 5e-4, TimeTuning 1e-4
    lr: float | None = None
    scale_lr: bool | None = None  # DINO's linear rule: lr * global batch / 256; None: TimeT off
    warmup_epochs: float | None = None  # linear learning-rate warm-up; None: 1, TimeTuning 0
    min_lr: float = 1e-6  # learning rate at the end of the cosine
    weight_decay: float = 0.04  # start of the cosine weight-decay schedule
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # max gradient norm; 0 disables
    # "global": one norm over all parameters (torch's clip_grad_norm_); "per_parameter": each
    # tensor clipped on its own, as DINO's and DoRA's utils.clip_gradients (docs/science.md)
    clip_grad_mode: Literal["global", "per_parameter"] = "global"
    freeze_last_layer: int = 1  # epochs during which the head's last layer stays fixed
    momentum_teacher: float = 0.996  # EMA momentum at step 0, cosine to 1 at the end
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1  # DINO: student softmax; TimeTuning: its cross-entropy's (0.1)
    center_momentum: float = 0.9
    # the teacher centre at step 0: "zeros" (DINO, DoRA), or "first_batch": the mean teacher
    # output of the first batch, so the first steps are centred too (docs/science.md)
    center_init: Literal["zeros", "first_batch"] = "zeros"
    # steps the teacher must look collapsed (entropy within 1% of log K, or the batch-mean
    # distribution's top dimension above half the mass) before a CollapseWarning; 0: no watchdog
    collapse_patience: int = 20
    # DoRA / DINO: the frozen-network control. Every step also runs the same step function on
    # the same batch with frozen copies of the initial student and teacher and a DINO loss of
    # their own, whose centre moves as in training; the log gets its `control_loss` (and
    # `control_teacher_entropy`), the loss of a network that learns nothing. A falling loss counts
    # as learning only below it (metrics.json's `learning`). Costs a forward pass of each
    # network per step and one more network in the checkpoint. TimeTuning: ignored.
    control: bool = False
    # -- run ----------------------------------------------------------------------------------
    device: str = (
        "auto"  # "auto": CUDA when available, else the CPU; "cuda" under torchrun: cuda:LOCAL_RANK
    )
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on cuda only
    compile: bool = False  # torch.compile the student
    num_workers: int = 0  # DataLoader workers per process (each opens its own video readers)
    # torch CPU threads; 0: the CPUs this process may use (affinity, cgroup quota) less the
    # workers (labkit.environment.configure_threads)
    threads: int = 0
    seed: int = 0
    out_dir: str = "runs/train"  # checkpoint.pth, log.jsonl, log.csv, metrics.json
    checkpoint_every: int = 100  # steps between checkpoints (and one at the end); 0: end only
    # continue from out_dir/checkpoint.pth when it exists; off, a run already in out_dir is
    # refused (labkit train --force moves it to out_dir/replaced-<time>/ instead)
    resume: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name, defaults in METHOD_DEFAULTS.items():
            if getattr(self, name) is None:
                set_(name, defaults[self.method])
        check_fields(self)  # every value of the type its annotation says, or the key is named
        # normalise YAML's lists into tuples (hashable, immutable) and check types
        paths = self.video_path
        if isinstance(paths, (list, tuple)):
            if not all(isinstance(p, (str, Path)) for p in paths):
                raise ValueError(f"video_path must be a path or a list of paths, got {paths!r}")
            paths = tuple(str(p) for p in paths)
            if len(paths) == 1:
                paths = paths[0]
        elif isinstance(paths, Path):
            paths = str(paths)
        elif not isinstance(paths, str):
            raise ValueError(f"video_path must be a path or a list of paths, got {paths!r}")
        set_("video_path", paths)
        for p in paths if isinstance(paths, tuple) else ([paths] if paths else []):
            if not Path(p).expanduser().exists():
                raise ValueError(f"video_path: {p!r} does not exist")

        ints = {
            "num_frames": 1,
            "frame_step": 1,
            "decode_size": 0,
            "img_size": 8,
            "local_size": 8,
            "num_local": 0,
            "k": 1,
            "sinkhorn_iterations": 1,
            "out_dim": 1,
            "hidden_dim": 1,
            "bottleneck_dim": 1,
            "steps": 1,
            "steps_per_epoch": 0,
            "batch_size": 1,
            "freeze_last_layer": 0,
            "warmup_teacher_temp_epochs": 0,
            "num_workers": 0,
            "checkpoint_every": 0,
            "seed": 0,
            "threads": 0,
            "collapse_patience": 0,
            "num_prototypes": 1,
            "trainable_blocks": 0,
            "forwarder_n_last": 0,
            "forwarder_topk": 1,
            "forwarder_radius": 0,
        }
        for name, minimum in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if self.method == "timetuning" and self.num_frames < 2:
            raise ValueError(
                f"num_frames must be >= 2 for timetuning (frame 0 is carried to the last), "
                f"got {self.num_frames}"
            )
        floats = {
            "epsilon": (0.0, None),
            "drop_path_rate": (None, 1.0),
            "lr": (0.0, None),
            "min_lr": (None, None),
            "warmup_epochs": (None, None),
            "weight_decay": (None, None),
            "weight_decay_end": (None, None),
            "clip_grad": (None, None),
            "momentum_teacher": (None, 1.0),
            "teacher_temp": (0.0, None),
            "warmup_teacher_temp": (0.0, None),
            "student_temp": (0.0, None),
            "center_momentum": (None, 1.0),
            "forwarder_temperature": (0.0, None),
            "backbone_lr_ratio": (None, None),
        }
        for name, (positive_above, at_most) in floats.items():
            value = getattr(self, name)
            if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            value = float(value)
            set_(name, value)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            if positive_above is not None and not value > positive_above:
                raise ValueError(f"{name} must be > {positive_above}, got {value}")
            if positive_above is None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            if at_most is not None and value > at_most:
                raise ValueError(f"{name} must be <= {at_most}, got {value}")
        for name in (
            "sinkhorn",
            "norm_last_layer",
            "pretrained",
            "scale_lr",
            "compile",
            "resume",
            "train_norm",
            "hard_targets",
            "pre_crop",
            "control",
        ):
            if name == "pretrained" and self.pretrained in (None, "auto"):
                continue
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_rule(self.pos_embed_rule)

        for name in ("global_scale", "local_scale"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"{name} must be two numbers (low, high), got {value!r}")
            low, high = (float(v) for v in value)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {value!r}")
            set_(name, (low, high))

        dims = self.head_dims
        if isinstance(dims, int) and not isinstance(dims, bool):
            dims = (dims,)
        if (
            not isinstance(dims, (list, tuple))
            or not dims
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)
        ):
            raise ValueError(f"head_dims must be a list of widths >= 1, got {self.head_dims!r}")
        set_("head_dims", tuple(dims))

        choices = {
            "precision": ("auto", "fp32", "bf16"),
            "video_backend": ("auto", "decord", "pyav"),
            "dora_loss": ("corrected", "published"),
            "clip_grad_mode": ("global", "per_parameter"),
            "center_init": ("zeros", "first_batch"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.method == "dora" and self.dora_loss == "published" and self.num_local < 2:
            raise ValueError(
                f"dora_loss='published' needs num_local >= 2, got {self.num_local}: the official "
                "loss never scores local crop 0 and divides by zero without a second crop"
            )

        heads = self.heads
        if isinstance(heads, str):
            if heads != "random":
                raise ValueError(
                    f"heads must be 'random' or a list of k head indices, got {heads!r}"
                )
        else:
            if not isinstance(heads, (list, tuple)) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in heads
            ):
                raise ValueError(
                    f"heads must be 'random' or a list of head indices >= 0, got {heads!r}"
                )
            if len(heads) != self.k:
                raise ValueError(f"heads lists {len(heads)} heads but k is {self.k}")
            if len(set(heads)) != len(heads):
                raise ValueError(f"heads must be distinct, got {list(heads)}")
            set_("heads", tuple(heads))

        threshold = self.threshold
        if isinstance(threshold, str):
            if threshold not in ("mean", "batch_mean"):
                raise ValueError(
                    "threshold must be 'mean', 'batch_mean' or a number in (0, 1], got "
                    f"{threshold!r}"
                )
        elif (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0 < threshold <= 1
        ):
            raise ValueError(
                f"threshold must be 'mean', 'batch_mean' or a number in (0, 1], got {threshold!r}"
            )

        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a timm architecture name, got {self.model!r}")
        if not isinstance(self.model_kwargs, Mapping) or not all(
            isinstance(k, str) for k in self.model_kwargs
        ):
            raise ValueError(
                f"model_kwargs must be a mapping of timm argument names, got {self.model_kwargs!r}"
            )
        reserved = sorted(
            {"img_size", "num_classes", "drop_path_rate", "dynamic_img_size"}
            & set(self.model_kwargs)
        )
        if reserved:
            raise ValueError(
                f"model_kwargs must not set {reserved}: img_size and drop_path_rate are fields of "
                "their own, num_classes and dynamic_img_size are fixed by labkit"
            )
        set_("model_kwargs", dict(self.model_kwargs))
        check_model_kwargs("model_kwargs", self.model_kwargs)
        if self.checkpoint and not Path(self.checkpoint).expanduser().is_file():
            raise ValueError(f"checkpoint: {self.checkpoint!r} is not a file")
        if self.checkpoint and self.pretrained is True:
            raise ValueError(
                "checkpoint and pretrained both set; choose one source of initial weights"
            )
        check_device("device", self.device)
        set_("device", resolve_device(self.device))
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"out_dir must be a folder path, got {self.out_dir!r}")
        check_output_dir("out_dir", self.out_dir)

    # -- conversions ----------------------------------------------------------------------------

    def to_dict(self, nested: bool = False) -> dict[str, Any]:
        """Plain YAML/JSON types only (tuples become lists): what checkpoints and logs store.

        Args:
            nested: group the fields by section (``{"data": {...}, "model": {...}, ...}``), as a
                sectioned YAML file holds them; default flat, as checkpoints store them.
        """
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                list(value)
                if isinstance(value, tuple)
                else (dict(value) if isinstance(value, Mapping) else value)
            )
        if nested:
            return {name: {k: out[k] for k in keys} for name, keys in SECTIONS.items()}
        return out

    def section(self, name: str) -> Any:
        """One section's fields as a frozen dataclass (``config.section("optimisation").lr``).

        Raises:
            ValueError: ``name`` is not a section.
        """
        if name not in SECTIONS:
            raise ValueError(f"TrainConfig has no section {name!r}; sections: {list(SECTIONS)}")
        return _SECTION_CLASSES[name](**{k: getattr(self, k) for k in SECTIONS[name]})

    @property
    def sections(self) -> TrainSections:
        """All sections: ``config.sections.data.num_frames``, ``config.sections.model.model``."""
        return TrainSections(**{name: self.section(name) for name in SECTIONS})

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @property
    def video_paths(self) -> tuple[str, ...]:
        """``video_path`` as a tuple (empty for the default synthetic video)."""
        if isinstance(self.video_path, tuple):
            return self.video_path
        return (self.video_path,) if self.video_path else ()


def _section_class(name: str) -> type:
    """A frozen dataclass of one section's fields, typed as TrainConfig's."""
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    title = "".join(part.title() for part in name.split("_"))
    return dataclasses.make_dataclass(
        f"{title}Section",
        [(k, by_name[k].type) for k in SECTIONS[name]],
        frozen=True,
        namespace={"__doc__": f"The {name} section of a TrainConfig (a read-only view)."},
    )


_SECTION_CLASSES = {name: _section_class(name) for name in SECTIONS}


@dataclass(frozen=True)
class TrainSections:
    """The sections of a :class:`TrainConfig`, each a frozen dataclass of its fields."""

    data: Any
    model: Any
    method: Any
    optimisation: Any
    run: Any
    output: Any


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_names(values: Mapping[str, Any], source: str = "") -> None:
    names = _field_names()
    for key in values:
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            where = f" in {source}" if source else ""
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(
                f"unknown config key {key!r}{where}{suggestion} "
                f"(TrainConfig has: {', '.join(names)})"
            )


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> TrainConfig:
    """Read a :class:`TrainConfig` from a YAML mapping, then apply overrides.

    The one loader of every command (:func:`labkit.config.load_config`) with TrainConfig's
    sections. ``parse_overrides`` is :func:`labkit.config.parse_overrides`, re-exported.

    Args:
        path: YAML file whose top level maps field names (or sections, as nested mappings) to
            values; None starts from defaults.
        overrides: ``key=value`` strings (or a mapping) applied on top; ``model_kwargs.depth=2``
            sets one entry of the ``model_kwargs`` dict, ``optimisation.lr=1e-4`` is ``lr=1e-4``.

    Returns:
        The validated config.

    Raises:
        ValueError: the file is missing or not a mapping, a key is unknown (the message names it
            and the nearest valid one), or a value is invalid (named by ``TrainConfig``).
    """
    return load_dataclass(TrainConfig, path, overrides, sections=SECTIONS)
