"""The lab's main job: video -> trained models -> exploration -> evaluation -> one report.

``labkit pipeline`` executes the lab's notebooks in order with papermill::

    train     once per method and seed (seeds: seed, seed + 1, ...; train_dora_s0, train_dora_s1,
              ... or train_dora with one seed), each through its own notebook (the same budget):
              notebooks/train_dora.ipynb for DoRA and the DINO baseline,
              notebooks/timetuning.ipynb for TimeTuning (methods: [timetuning])
    explore   notebooks/attention_explorer.ipynb on each trained model of the first seed, and
              notebooks/dora_step_by_step.ipynb on its DoRA model
    evaluate  notebooks/evaluate.ipynb: random init (drawn with each seed), DINO and DoRA of
              every seed side by side (labels dora@s0, ...), on each dataset
    report    runs/<name>/report.html: links, key figures, the metrics table, the verdict (mean
              ± std over seeds; "better" only where the intervals separate); runs/<name>/
              metrics.json: the aggregates

Everything of a run lives in ``runs/<name>/``: the resolved ``config.yaml``, ``environment.json``
(package versions, git commit, device), one folder per stage with its executed notebook, HTML
export, figures and ``metrics.json``, the training checkpoints, and ``report.html``.

The stages of each group (the trainings, then the explorations, then the evaluations) run
``jobs`` at a time (default: on a CPU as many as its threads, on CUDA one), each of several in a
child process with its share of the threads (trainings with no data workers); the report last.
The videos and datasets ``synthetic`` and ``synthetic-hard`` are the built-in ones
(:data:`SYNTHETIC_VIDEOS`).

A stage is complete when its folder has a ``stage.json`` written after it succeeded, with the same
parameters, and its outputs exist; complete stages are skipped unless ``force``. A stage whose
parameters changed starts afresh; an interrupted training stage resumes from its checkpoint
(the training notebook runs with ``resume=True``). A failing stage stops the run with the stage,
the cell and the error, keeps everything done before it, and the CLI exits non-zero.

Finished work is never lost (see ``docs/reliability.md``):

* the whole config is checked before any stage runs: every stage's parameters against its
  notebook and its config dataclass, the models built once, devices, paths and data roots;
* a run folder has one writer: a second pipeline on it fails at once
  (:class:`labkit.runfolder.RunLock`);
* a complete stage that runs again (changed parameters, ``force``) is first renamed to
  ``.<stage>.previous``; the new outputs go into a fresh folder, and the backup is deleted only
  when the stage has succeeded. A failing rerun puts the previous outputs back (the failed
  attempt goes to ``.<stage>.failed``); after a kill, the next run puts them back if they are
  what it asks for, or keeps them aside until the rerun in progress has finished.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from labkit.config import load_config as load_dataclass
from labkit.data import default_dataset, default_video, sequence_name
from labkit.data.synthetic import GENERATOR_VERSION
from labkit.environment import describe, threads_for
from labkit.eval.datasets import davis_sequences
from labkit.eval.runner import EvalConfig
from labkit.eval.seeds import seed_label
from labkit.explore import ExploreConfig
from labkit.models import resolve_pretrained
from labkit.notebooks import NotebookError, check_parameters, notebook_parameters, run_notebook
from labkit.pos_embed import PosEmbedRule
from labkit.report import write_report
from labkit.runfolder import RunLock, read_json, remove_stale_temporaries, write_atomic
from labkit.train.config import IGNORED_FIELDS, TrainConfig
from labkit.train.step import build_backbone
from labkit.validation import (
    check_device,
    check_fields,
    check_model_kwargs,
    check_output_dir,
    resolve_device,
)
from labkit.zoo import DEFAULT_PRETRAINED

__all__ = [
    "PipelineConfig",
    "Stage",
    "StageFailed",
    "STAGE_GROUPS",
    "load_pipeline_config",
    "plan",
    "run_pipeline",
]

STAGE_GROUPS = ("train", "explore", "evaluate", "report")
METHODS = ("dora", "dino", "timetuning")
# each method's training notebook: train_dora trains DoRA and DINO (its `method` parameter),
# timetuning trains TimeTuning and scores its segments before and after
TRAIN_NOTEBOOKS = {"dora": "train_dora", "dino": "train_dora", "timetuning": "timetuning"}
SYNTHETIC = "synthetic"
# the built-in videos by name (video_path, eval_data): the generator's variant of each
# (labkit.data.default_video / default_dataset); the bare names always mean these, a file or
# folder of the same name is given as a path (./synthetic-hard)
SYNTHETIC_VIDEOS = {SYNTHETIC: "easy", "synthetic-hard": "hard"}


class StageFailed(RuntimeError):
    """A stage of the pipeline failed; names the stage and, for notebooks, the cell and error."""


@dataclass(frozen=True)
class PipelineConfig:
    """What ``labkit pipeline`` runs. Field names are the keys of ``lab.yaml`` and of ``-o``.

    The defaults are the CPU demo (``make demo``): a small ViT trained for a few minutes per method
    on the synthetic default video. For a GPU run on a walking-tour video, set ``video_path``,
    ``device: cuda``, ``model: vit_small_patch16_224``, ``model_kwargs: {}``, ``img_size: 224`` and
    many more ``steps`` (see the README).
    """

    name: str = "demo"  # run folder: <runs_dir>/<name>
    runs_dir: str = "runs"
    # training and exploration video: a file or frame folder, or a built-in video by name:
    # "synthetic" (the synthetic default video, as empty) or "synthetic-hard" (its hard variant)
    video_path: str = ""
    device: str = (
        "auto"  # "auto": CUDA when available, else the CPU (resolved once, for every stage)
    )
    seed: int = 0
    # seeds per method: each method is trained and evaluated (and random init drawn) with seeds
    # seed, seed + 1, ..., seed + seeds - 1; the report gives mean ± standard deviation over them
    # and calls a method better only where the intervals mean ± std separate. 1: one seed, no
    # error bars (stage names without the _s<seed> suffix). Pictures: the first seed only
    seeds: int = 3
    # torch CPU threads of the pipeline and the most of every stage's kernel (OMP_NUM_THREADS);
    # 0: the CPUs this process may use (affinity, cgroup quota); a training stage leaves room
    # for its data workers (labkit.environment.configure_threads)
    threads: int = 0
    # stages of one group (trainings, explorations, evaluations) run at once; 0: automatic, on a
    # CPU as many as the threads above (at most the group's stages to run), on CUDA 1. Stages
    # running together share the threads (each max(1, threads // jobs)); trainings load their
    # data without workers (num_workers 0, unless train.num_workers is set): small models use
    # one core far better than a team of threads
    jobs: int = 0
    # ---- training: every method gets the same budget ----
    methods: tuple[str, ...] = (
        "dora",
        "dino",
    )  # trained models; the random init is always evaluated
    model: str = "vit_tiny_patch16_224"  # timm ViT
    model_kwargs: dict = field(default_factory=lambda: {"depth": 4})  # {} keeps the model whole
    checkpoint: str = ""  # start training from these weights (e.g. DINO's); empty: random init
    img_size: int = 96  # global crop side
    num_frames: int = 4  # frames per clip
    frame_step: int = 4  # frames between the frames of a clip
    k: int = 3  # DoRA objects per clip
    steps: int = 120  # optimiser steps per method
    batch_size: int = 4  # clips per step
    # peak learning rate: one for every method, or per method (a method left out gets the
    # training notebook's default). The CPU recipe's: DINO's teacher goes uniform at 5e-4 within
    # the demo's steps, DoRA's does not and learns more at 5e-4 (docs/science.md)
    lr: float | dict = field(
        default_factory=lambda: {"dora": 5e-4, "dino": 1e-4, "timetuning": 1e-4}
    )
    train: dict = field(default_factory=dict)  # any other TrainConfig field, e.g. {"num_local": 4}
    # position-embedding resize of every model: "dino", "dinov2", "timm"; auto: as the weights'
    # authors
    pos_embed_rule: PosEmbedRule = "auto"
    # ---- a pretrained reference, explored and evaluated beside the trained models ----
    # "auto": where its weights are in the local hub cache; true: always (downloads them online);
    # false: never. The report says which weights every figure and number comes from.
    pretrained: bool | Literal["auto"] = "auto"
    pretrained_model: str = DEFAULT_PRETRAINED  # a tagged timm name (labkit models lists them)
    # ---- exploration ----
    explore_frames: int = 12
    explore_img_size: int = 224
    teaching: bool = True  # also run dora_step_by_step on the DoRA model
    # ---- evaluation ----
    # datasets: "synthetic" (the default video's ground truth), "synthetic-hard" (its hard
    # variant's) and DAVIS-layout folders; a folder that does not exist is skipped with a note in
    # the report (a user's clone has no shared data). The demo measures on both synthetic videos:
    # random features already propagate labels well on the default one (J&F ~0.74), and leave the
    # room to learning on the hard one (~0.06); DAVIS (e.g. ../shared/data/davis2016) costs minutes
    # per model and seed on a CPU: the cpu-long recipe adds it
    eval_data: tuple[str, ...] = (SYNTHETIC, "synthetic-hard")
    eval_sequences: dict = field(
        default_factory=dict
    )  # per dataset: list of sequences (all if absent)
    eval_resolution: int = 224
    eval_max_frames: int = 0  # only the first N frames of each sequence; 0: all
    evaluate: dict = field(default_factory=dict)  # any other EvalConfig field

    def __post_init__(self) -> None:
        for name in ("methods", "eval_data"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
        check_fields(self)  # every value of its annotated type, or the key is named
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise ValueError(f"name {self.name!r}: give a plain folder name such as 'demo'")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods: unknown {bad}; choose from {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: {list(self.methods)} repeats a method")
        for name in (
            "img_size",
            "num_frames",
            "frame_step",
            "k",
            "steps",
            "batch_size",
            "seeds",
            "explore_frames",
            "explore_img_size",
            "eval_resolution",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: automatic), got {self.threads}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be >= 0 (0: automatic), got {self.jobs}")
        if self.eval_max_frames < 0:
            raise ValueError(f"eval_max_frames must be >= 0, got {self.eval_max_frames}")
        rates = self.lr if isinstance(self.lr, dict) else {"": self.lr}
        for method, rate in rates.items():
            key = f"lr.{method}" if method else "lr"
            if method and method not in METHODS:
                raise ValueError(f"{key}: unknown method; choose from {list(METHODS)}")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
                raise ValueError(f"{key} must be a number > 0, got {rate!r}")
        if (
            self.video_path
            and self.video_path not in SYNTHETIC_VIDEOS
            and not Path(self.video_path).expanduser().exists()
        ):
            raise ValueError(
                f"video_path {self.video_path!r} does not exist (the built-in videos: "
                f"{', '.join(SYNTHETIC_VIDEOS)})"
            )
        if self.checkpoint and not Path(self.checkpoint).expanduser().is_file():
            raise ValueError(f"checkpoint {self.checkpoint!r} is not a file")
        check_device("device", self.device)
        object.__setattr__(self, "device", resolve_device(self.device))
        for name in ("model_kwargs", "train", "evaluate", "eval_sequences"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        check_model_kwargs("model_kwargs", self.model_kwargs)
        if "." not in self.pretrained_model:
            raise ValueError(
                f"pretrained_model: {self.pretrained_model!r} has no pretrained tag; give a name "
                "such as vit_small_patch16_224.dino (labkit models lists them)"
            )
        _check_model_name(self.pretrained_model)
        keys = [_dataset_key(root) for root in self.eval_data]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"eval_data: two datasets share a folder name in {list(self.eval_data)}"
            )
        unknown = sorted(set(self.eval_sequences) - set(keys))
        if unknown:
            raise ValueError(
                f"eval_sequences: no dataset named {unknown} in eval_data; the datasets are {keys}"
            )
        for root in self.eval_data:
            if (
                root not in SYNTHETIC_VIDEOS
                and Path(root).expanduser().exists()
                and not Path(root).expanduser().is_dir()
            ):
                raise ValueError(f"eval_data: {root!r} is a file, not a DAVIS-layout folder")
        check_output_dir("runs_dir", self.runs_dir)
        check_output_dir("name", self.run_dir)
        _check_model_name(self.model)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def seed_values(self) -> tuple[int, ...]:
        """The seeds every method runs with: ``seed, seed + 1, ..., seed + seeds - 1``."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _check_model_name(name: str) -> None:
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise ValueError(f"model {name!r} is not a timm model; similar: {close}")


def load_pipeline_config(
    path: str | os.PathLike | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> PipelineConfig:
    """Read ``lab.yaml`` (optional) and apply ``key=value`` overrides (values read as YAML).

    The one loader of every command (:func:`labkit.config.load_config`): ``train.num_local=4``
    sets one entry of the ``train`` mapping.

    Raises:
        ValueError: an unknown key (with the nearest known one) or a bad value, naming the key.
    """
    return load_dataclass(PipelineConfig, path, overrides)


# ------------------------------------------------------------------------------------------------
# The plan: stages with their notebooks, parameters and outputs


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a notebook with parameters into a folder, or the report."""

    name: str  # unique, e.g. "train_dora"
    group: str  # one of STAGE_GROUPS
    out_dir: Path
    notebook: str | None  # None: a Python step (the report)
    params: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # files in out_dir that a complete stage has
    needs: tuple[str, ...] = ()  # stages whose outputs this one reads
    method: str = ""  # a training stage's method ("dora", "dino", "timetuning")
    seed: int | None = None  # a training stage's seed
    inputs: tuple[Path, ...] = ()  # the markers of the stages in needs, in the same order
    data: tuple[str, ...] = ()  # the built-in videos it reads, as :func:`synthetic_data` names them

    @property
    def fingerprint(self) -> str:
        """The notebook, its parameters and the built-in data it reads: a stage whose
        fingerprint changed is run again. (``data`` only where there is some, so that a stage
        on the user's own data keeps the fingerprint it had before labkit recorded data.)"""
        what: dict[str, Any] = {"notebook": self.notebook, "params": self.params}
        if self.data:
            what["data"] = list(self.data)
        blob = json.dumps(what, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def synthetic_data(name: str) -> tuple[str, ...]:
    """What a built-in video (``""`` or ``synthetic``, ``synthetic-hard``) is made of: its
    sequence name and the generator's version, e.g. ``("synthetic-hard v1",)``; ``()`` for the
    user's own video or dataset. In a stage's fingerprint, so that a stage that read the
    generated frames and masks before they changed (a new generator version, a renamed
    sequence) runs again instead of passing old scores off as the new data's."""
    variant = SYNTHETIC_VIDEOS.get(name or SYNTHETIC)
    return () if variant is None else (f"{sequence_name(variant)} v{GENERATOR_VERSION}",)


def _dataset_key(root: str) -> str:
    """A dataset's name (its stage is ``evaluate_<name>``): a built-in name as it is, else the
    folder's name."""
    return root if root in SYNTHETIC_VIDEOS else Path(root).name


def _video_param(video_path: str) -> str:
    """The training and exploration notebooks' ``video_path``: empty for the synthetic default
    video (the notebooks' own default), the generated file for the hard variant, else the
    absolute path."""
    if not video_path or SYNTHETIC_VIDEOS.get(video_path) == "easy":
        return ""
    if video_path in SYNTHETIC_VIDEOS:
        return str(default_video(SYNTHETIC_VIDEOS[video_path]))  # generated on first use
    return str(Path(video_path).expanduser().resolve())


def _data_root_param(root: str) -> str:
    """The evaluation notebook's ``data_root``: empty for the synthetic default video (its own
    default), the generated DAVIS-layout folder for the hard variant, else the absolute path."""
    if SYNTHETIC_VIDEOS.get(root) == "easy":
        return ""
    if root in SYNTHETIC_VIDEOS:
        return str(default_dataset(SYNTHETIC_VIDEOS[root]))  # generated on first use
    return str(Path(root).expanduser().resolve())


def _resolved_model_kwargs(cfg: PipelineConfig) -> dict[str, Any]:
    return dict(cfg.model_kwargs)


PRETRAINED_LABEL = "pretrained"  # the reference model's label in tables, figures and metrics


def uses_pretrained(cfg: PipelineConfig) -> bool:
    """Whether the run adds the pretrained reference (``cfg.pretrained``, resolved now)."""
    return resolve_pretrained(cfg.pretrained_model, cfg.pretrained)[0]


def _notebook_settings(notebook: str, cfg: PipelineConfig) -> dict[str, Any]:
    """A training notebook's own parameters besides TrainConfig's, from the run's settings.

    The TimeTuning notebook starts from the same weights as the other methods (``checkpoint``,
    else a random init: ``pretrained`` false, as train_dora's default), segments the explore
    stages' frames at their size, and scores its mIoU on one synthetic video's ground truth only
    (the evaluate stages score every dataset): the video it tunes on where that is a built-in one
    (``score_data``: the hard variant's folder for ``synthetic-hard``), else the default (easy)
    video, named ``synthetic`` in its tables, as a video of the user's own has no masks."""
    if notebook != "timetuning":
        return {}
    builtin = cfg.video_path in SYNTHETIC_VIDEOS
    return {
        "score_data": _data_root_param(cfg.video_path) if builtin else "",
        "pretrained": False,
        "segment_size": cfg.explore_img_size,
        "segment_frames": cfg.explore_frames,
        "sample_frames": cfg.explore_frames,
        "strip_columns": min(8, cfg.explore_frames),
        "davis_root": "",
        "eval_resolution": cfg.eval_resolution,
        "eval_max_frames": cfg.eval_max_frames,
    }


def method_lr(cfg: PipelineConfig, method: str) -> float | None:
    """A method's peak learning rate (``cfg.lr``: one number or per method); None: the method's
    notebook default."""
    if isinstance(cfg.lr, dict):
        rate = cfg.lr.get(method)
        return None if rate is None else float(rate)
    return float(cfg.lr)


def seed_suffix(cfg: PipelineConfig, seed: int) -> str:
    """``_s<seed>``, the suffix of a training stage's name, or ``""`` with one seed."""
    return "" if cfg.seeds == 1 else f"_s{seed}"


def train_stage_name(cfg: PipelineConfig, method: str, seed: int) -> str:
    """``train_dora_s0`` (``train_dora`` with one seed)."""
    return f"train_{method}{seed_suffix(cfg, seed)}"


def model_label(cfg: PipelineConfig, method: str, seed: int) -> str:
    """A model's label in the evaluation: ``dora@s0`` (``dora`` with one seed)."""
    return seed_label(method, None if cfg.seeds == 1 else seed)


def source_hash(root: Path) -> str:
    """A hash of the ``.py`` files of the package folder ``root``: their paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def labkit_source() -> str:
    """:func:`source_hash` of labkit itself (once per process). The report stage's parameters
    hold it, so a report made by other code is made again."""
    return source_hash(Path(__file__).resolve().parent)


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The stages of a run, in order, with absolute paths and their notebook parameters.

    One training stage per method and seed (``train_dora_s0``, ``train_dora_s1``, ...; with
    ``seeds: 1`` just ``train_dora``); the exploration of the first seed's models; one evaluation
    per dataset of every seed's models and of random init drawn with each seed
    (``random@s0=ARCH:random@0``); the report.
    """
    run = cfg.run_dir.resolve()
    video = _video_param(cfg.video_path)
    stages: list[Stage] = []
    trained: dict[tuple[str, int], str] = {}  # (method, seed) -> checkpoint
    first = cfg.seed  # the seed whose models are explored (pictures)
    # seed by seed: an interrupted run has every method of the first seeds to compare
    for seed, method in ((s, m) for s in cfg.seed_values for m in cfg.methods):
        name = train_stage_name(cfg, method, seed)
        out = run / name
        notebook = TRAIN_NOTEBOOKS[method]
        params = {
            "video_path": video,
            "method": method,
            "model": cfg.model,
            "model_kwargs": _resolved_model_kwargs(cfg),
            "checkpoint": cfg.checkpoint,
            "img_size": cfg.img_size,
            "num_frames": cfg.num_frames,
            "frame_step": cfg.frame_step,
            "k": cfg.k,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            **({"lr": lr} if (lr := method_lr(cfg, method)) is not None else {}),
            "device": cfg.device,
            "seed": seed,
            "pos_embed_rule": cfg.pos_embed_rule,
            **_notebook_settings(notebook, cfg),
            **cfg.train,
            "resume": True,
            "out_dir": str(out),
        }
        # the options this method ignores stay out of a notebook without them (k, out_dim,
        # num_local ... for TimeTuning); anything else reaches the notebook, which checks it
        own = notebook_parameters(notebook)
        ignored = {"method", *IGNORED_FIELDS[method]}
        params = {k: v for k, v in params.items() if k in own or k not in ignored}
        data = synthetic_data(cfg.video_path)
        if notebook == "timetuning" and not data:  # it scores on the default video's masks
            data = synthetic_data(SYNTHETIC)
        stages.append(
            Stage(
                name,
                "train",
                out,
                notebook,
                params,
                ("checkpoint.pth", "metrics.json"),
                method=method,
                seed=seed,
                data=data,
            )
        )
        trained[method, seed] = str(out / "checkpoint.pth")

    for method in cfg.methods:  # pictures: the first seed's models
        ckpt = trained[method, first]
        out = run / f"explore_{method}"
        params = {
            "video_path": video,
            "model": cfg.model,
            "checkpoint": ckpt,
            "model_kwargs": _resolved_model_kwargs(cfg),
            "num_frames": cfg.explore_frames,
            "img_size": cfg.explore_img_size,
            "k": 5,
            "device": cfg.device,
            "seed": cfg.seed,
            "pos_embed_rule": cfg.pos_embed_rule,
            "out_dir": str(out),
        }
        stages.append(
            Stage(
                f"explore_{method}",
                "explore",
                out,
                "attention_explorer",
                params,
                ("metrics.json", "heads.png"),
                needs=(train_stage_name(cfg, method, first),),
                method=method,
                seed=first,
                data=synthetic_data(cfg.video_path),
            )
        )
    if cfg.teaching and "dora" in cfg.methods:
        out = run / "step_by_step"
        params = {
            "video_path": video,
            "model": cfg.model,
            "checkpoint": trained["dora", first],
            "model_kwargs": _resolved_model_kwargs(cfg),
            "k": cfg.k,
            "img_size": cfg.explore_img_size,
            "device": cfg.device,
            "seed": cfg.seed,
            "out_dir": str(out),
        }
        stages.append(
            Stage(
                "step_by_step",
                "explore",
                out,
                "dora_step_by_step",
                params,
                ("metrics.json",),
                needs=(train_stage_name(cfg, "dora", first),),
                method="dora",
                seed=first,
                data=synthetic_data(cfg.video_path),
            )
        )

    reference = uses_pretrained(cfg)
    if reference:
        out = run / "explore_pretrained"
        params = {
            "video_path": video,
            "model": cfg.pretrained_model,
            "pretrained": True,
            "pos_embed_rule": cfg.pos_embed_rule,
            "model_kwargs": {},
            "num_frames": cfg.explore_frames,
            "img_size": cfg.explore_img_size,
            "k": 5,
            "device": cfg.device,
            "seed": cfg.seed,
            "out_dir": str(out),
        }
        stages.append(
            Stage(
                "explore_pretrained",
                "explore",
                out,
                "attention_explorer",
                params,
                ("metrics.json", "heads.png"),
                data=synthetic_data(cfg.video_path),
            )
        )

    if cfg.seeds == 1:  # random init with the evaluation's seed (cfg.seed)
        specs = [f"random={cfg.model}"]
    else:  # random init drawn with each seed: its spread is the untrained networks'
        specs = [f"{model_label(cfg, 'random', s)}={cfg.model}:random@{s}" for s in cfg.seed_values]
    specs += [  # method by method: a method's seeds side by side in tables
        f"{model_label(cfg, m, s)}={cfg.model}:{trained[m, s]}"
        for m in cfg.methods
        for s in cfg.seed_values
    ]
    kwargs: dict[str, Any] = _resolved_model_kwargs(cfg)
    if reference:  # the reference keeps its own architecture: model_kwargs go per label
        specs.append(f"{PRETRAINED_LABEL}={cfg.pretrained_model}:pretrained")
        kwargs = {label.split("=")[0]: _resolved_model_kwargs(cfg) for label in specs[:-1]}
        kwargs[PRETRAINED_LABEL] = {}
    for root in cfg.eval_data:
        key = _dataset_key(root)
        out = run / f"evaluate_{key}"
        data_root = _data_root_param(root)
        params = {
            "models": specs,
            "model_kwargs": kwargs,
            "pos_embed_rule": cfg.pos_embed_rule,
            "data_root": data_root,
            "sequences": list(cfg.eval_sequences.get(key, [])),
            "resolution": cfg.eval_resolution,
            "max_frames": cfg.eval_max_frames,
            "device": cfg.device,
            "seed": cfg.seed,
            **cfg.evaluate,
            "out_dir": str(out),
        }
        stages.append(
            Stage(
                f"evaluate_{key}",
                "evaluate",
                out,
                "evaluate",
                params,
                ("metrics.json",),
                needs=tuple(train_stage_name(cfg, m, s) for m, s in trained),
                data=synthetic_data(root),
            )
        )
    stages.append(
        Stage(
            "report",
            "report",
            run,
            None,
            # labkit's code too: a report made by another labkit is made again (seconds)
            {"stages": [s.name for s in stages], "labkit": labkit_source()},
            ("report.html", "metrics.json"),
            needs=tuple(s.name for s in stages),
        )
    )
    markers = {s.name: _marker(s) for s in stages}
    return [replace(s, inputs=tuple(markers[n] for n in s.needs)) for s in stages]


def _missing_dataset(stage: Stage) -> str | None:
    root = stage.params.get("data_root")
    if stage.group == "evaluate" and root and not Path(root).is_dir():
        return root
    return None


# ------------------------------------------------------------------------------------------------
# Running


def _marker(stage: Stage) -> Path:
    return stage.out_dir / ("report.json" if stage.group == "report" else "stage.json")


def _input_tokens(stage: Stage) -> dict[str, str | None]:
    """Which run of each stage it needs it reads: the ``run_id`` in that stage's marker (new
    each time the stage finishes), None where it has none."""
    tokens: dict[str, str | None] = {}
    for name, marker in zip(stage.needs, stage.inputs, strict=True):
        run_id = (read_json(marker) or {}).get("run_id")
        tokens[name] = run_id if isinstance(run_id, str) else None
    return tokens


def _read_marker(stage: Stage, folder: Path) -> dict[str, Any] | None:
    return read_json(folder / _marker(stage).name)


def redone_inputs(stage: Stage, folder: Path | None = None) -> list[str]:
    """The stages this one needs that finished again (or are unfinished) since it ran: its
    outputs were made from earlier ones. Empty for a stage that has not run, and for a marker
    written before labkit recorded its inputs."""
    info = _read_marker(stage, stage.out_dir if folder is None else folder)
    recorded = info.get("inputs") if info else None
    if not isinstance(recorded, dict):
        return []
    now = _input_tokens(stage)
    return [name for name in stage.needs if recorded.get(name) != now[name]]


def is_complete(stage: Stage, folder: Path | None = None) -> bool:
    """The stage finished with the same parameters, from the present runs of the stages it needs
    (:func:`redone_inputs`), and its outputs are all there (in its ``out_dir``, or in
    ``folder``, e.g. its backup)."""
    folder = stage.out_dir if folder is None else folder
    info = _read_marker(stage, folder)
    if info is None or info.get("fingerprint") != stage.fingerprint:
        return False
    return all((folder / o).exists() for o in stage.outputs) and not redone_inputs(stage, folder)


def _backup(stage: Stage) -> Path:
    return stage.out_dir.parent / f".{stage.out_dir.name}.previous"


def _failed(stage: Stage) -> Path:
    return stage.out_dir.parent / f".{stage.out_dir.name}.failed"


def _set_aside_failed(stage: Stage) -> Path:
    failed = _failed(stage)
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(stage.out_dir, failed)
    return failed


def _recover(stage: Stage, say: Callable[[str], None]) -> None:
    """Settle a backup that a killed run left (``.<stage>.previous``): delete it when the rerun
    finished, put it back when it holds what this run asks for (or the stage folder is gone),
    else keep it aside while the rerun in the stage folder goes on (a training resumes)."""
    backup = _backup(stage)
    if not backup.is_dir():
        return
    if is_complete(stage):
        shutil.rmtree(backup)
    elif is_complete(stage, backup) or not stage.out_dir.exists():
        if stage.out_dir.exists():
            failed = _set_aside_failed(stage)
            say(f"{stage.name}: an interrupted rerun was moved to {failed}")
        os.replace(backup, stage.out_dir)
        say(f"{stage.name}: the previous complete outputs are back in {stage.out_dir}")


def _prepare(stage: Stage) -> Path | None:
    """Make the stage's folder ready to run in; returns the backup of earlier outputs, if any.

    A stage that finished before (with other parameters, or forced) is renamed to its backup and
    starts afresh in a new folder; an interrupted one keeps its folder (training resumes)."""
    backup = _backup(stage)
    if _marker(stage).is_file() and stage.out_dir.is_dir():
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(stage.out_dir, backup)
    stage.out_dir.mkdir(parents=True, exist_ok=True)
    return backup if backup.is_dir() else None


def _write_marker(stage: Stage, seconds: float, **extra: Any) -> None:
    info = {
        "stage": stage.name,
        "notebook": stage.notebook,
        "fingerprint": stage.fingerprint,
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "params": stage.params,
        "run_id": uuid.uuid4().hex,  # this run of the stage, for the stages that read it
        "inputs": _input_tokens(stage),  # the runs of the stages it read (redone_inputs)
        "data": list(stage.data),  # the built-in videos it read (rerun_reason)
        **extra,
    }
    write_atomic(_marker(stage), json.dumps(info, indent=2, default=str).encode())


def check_plan(cfg: PipelineConfig, stages: Sequence[Stage]) -> None:
    """Check every stage's parameters before any stage runs, as each stage will read them.

    Each notebook's parameters by name and type (:func:`labkit.notebooks.check_parameters`); each
    stage's config dataclass built from them (``TrainConfig``, ``ExploreConfig``, ``EvalConfig``:
    ranges, devices, paths); the training networks built once (patch size, heads); each
    DAVIS-layout data root that exists checked file by file
    (:func:`labkit.eval.datasets.davis_sequences`).
    Checkpoints that earlier stages will write are left out of the checks that open files.

    Raises:
        ValueError: naming the stage and the key or file at fault.
    """

    produced = {str(s.out_dir / "checkpoint.pth") for s in stages if s.group == "train"}
    built: set[str] = set()
    for stage in stages:
        if stage.notebook is None:
            continue
        try:
            check_parameters(stage.notebook, stage.params)
            _check_stage(stage, produced, built)
        except ValueError as err:
            text = str(err)
            if "the 'train' / 'evaluate' keys" not in text and "has no parameter" in text:
                text += " (check the 'train' / 'evaluate' keys of the config)"
            raise ValueError(f"stage {stage.name}: {text}") from None


def _check_stage(stage: Stage, produced: set[str], built: set[str]) -> None:
    if stage.notebook is None:  # the report: check_stages skips it
        return
    params = {**notebook_parameters(stage.notebook), **stage.params}
    if stage.group == "train":
        names = {f.name for f in fields(TrainConfig)}
        # a notebook of one method has no `method` parameter: the stage says it
        method: Any = params.get("method") or stage.method  # checked below
        config = TrainConfig(
            **{k: v for k, v in params.items() if k in names and k not in ("out_dir", "method")},
            method=method,
            out_dir=params["out_dir"],
        )
        key = json.dumps(
            [
                config.method,
                config.model,
                config.model_kwargs,
                config.img_size,
                config.local_size,
                config.k,
                config.heads,
                config.checkpoint,
            ],
            default=str,
        )
        if key not in built:  # the networks a training stage will build: patch size, heads
            built.add(key)
            build_backbone(config)
    elif stage.notebook == "attention_explorer":
        names = {f.name for f in fields(ExploreConfig)}
        values = {k: v for k, v in params.items() if k in names}
        if values.get("checkpoint") in produced:
            values["checkpoint"] = ""
        ExploreConfig(**values)
    elif stage.group == "evaluate":
        names = {f.name for f in fields(EvalConfig)}
        values = {k: v for k, v in params.items() if k in names}
        models = []
        for spec in values.get("models", []):
            label_arch, sep, weights = str(spec).partition(":")
            models.append(label_arch if sep and weights in produced else spec)
        values["models"] = models
        cfg = EvalConfig(**values)
        root = cfg.data_root
        if root and Path(root).is_dir():
            davis_sequences(root, cfg.sequences, folder=cfg.davis_folder)


def _say(message: str) -> None:
    print(f"[labkit] {message}", flush=True)


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def run_pipeline(
    cfg: PipelineConfig,
    *,
    force: bool = False,
    only: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> Path:
    """Run (or resume) the pipeline; returns the path of ``report.html``.

    Args:
        cfg: the run's configuration (validated).
        force: rerun complete stages too.
        only: run only the stages of one group (``train``, ``explore``, ``evaluate``, ``report``);
            the stages it needs must be complete already.
        progress: stream the training's progress lines.
        say: where the one-line-per-stage progress goes.

    Raises:
        StageFailed: a stage failed (the message names the stage, the cell and the error).
        ValueError: ``only`` is not a group, a needed stage has not run, or a stage's
            parameters are bad (:func:`check_plan`; nothing has run then).
        labkit.runfolder.RunFolderBusy: another process is running in the run folder.
    """
    if only is not None and only not in STAGE_GROUPS:
        raise ValueError(f"only: {only!r} is not a stage; choose from {list(STAGE_GROUPS)}")
    stages = plan(cfg)
    check_plan(
        cfg, stages
    )  # every stage's parameters, models, devices, paths, data: before any work
    by_name = {s.name: s for s in stages}
    selected = [s for s in stages if only is None or s.group == only]
    if only is not None:
        for stage in selected:
            for need in stage.needs:
                if need not in {s.name for s in selected} and not is_complete(by_name[need]):
                    raise ValueError(
                        f"stage {stage.name} needs {need}, which has not completed: "
                        f"run the pipeline without --only (or with --only "
                        f"{by_name[need].group}) first"
                    )

    run_dir = cfg.run_dir.resolve()
    # this process and every stage's kernel (OMP_NUM_THREADS, read by torch at import) use the
    # CPUs available; a training stage also leaves room for its data workers
    with (
        RunLock(run_dir, what="labkit pipeline"),
        threads_for(cfg.threads or None) as threads,
        _environment(OMP_NUM_THREADS=str(threads)),
    ):
        return _run_stages(cfg, stages, selected, run_dir, force, progress, say, threads)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set for a ``with`` block (the kernels it starts inherit them)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def group_jobs(cfg: PipelineConfig, stages: int, threads: int) -> int:
    """How many stages of one group (the trainings, the explorations, the evaluations) run at
    once.

    Args:
        cfg: the run's configuration (``jobs``, ``device``).
        stages: the training stages still to run.
        threads: the pipeline's torch threads (``threads``, else the CPUs available).

    Returns:
        ``cfg.jobs`` when set, else ``threads`` on a CPU and 1 on CUDA (one GPU: the stages would
        queue for it); at most ``stages``, at least 1.
    """
    jobs = cfg.jobs or (threads if cfg.device == "cpu" else 1)
    return max(1, min(jobs, stages))


def _run_stages(
    cfg: PipelineConfig,
    stages: list[Stage],
    selected: list[Stage],
    run_dir: Path,
    force: bool,
    progress: bool,
    say: Callable[[str], None],
    threads: int,
) -> Path:
    import yaml

    for folder in [run_dir] + [s.out_dir for s in stages if s.group != "report"]:
        for path in remove_stale_temporaries(folder):  # left by writes that were killed
            say(f"removed {path}, left by a write that was killed")
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    write_atomic(run_dir / "environment.json", json.dumps(describe(cfg.device), indent=2).encode())
    say(f"run folder {run_dir}")
    for stage in stages:
        if stage.group != "report":
            _recover(stage, say)
    start = time.perf_counter()
    heads = {s.name: f"[{i}/{len(selected)}] {s.name}" for i, s in enumerate(selected, 1)}
    # group by group in the plan's order: the training (everything else reads its checkpoints),
    # the explorations, the evaluations (each needs only trainings), then the report. Within a
    # group the stages do not read each other, so `jobs` of them run at once
    for group in STAGE_GROUPS[:-1]:
        members = [s for s in selected if s.group == group]
        waiting = [s for s in members if _to_run(s, heads[s.name], force, say)]
        jobs = group_jobs(cfg, len(waiting), threads)
        if jobs > 1:
            _run_together(cfg, waiting, jobs, threads, heads, run_dir, say, group=group)
        else:
            for stage in waiting:
                _run_stage(stage, heads[stage.name], run_dir, say, progress=progress)
    for stage in (s for s in selected if s.group == "report"):
        head = heads[stage.name]
        if not _to_run(stage, head, force, say):
            continue
        t0 = time.perf_counter()
        say(f"{head}: running report ...")
        write_report(run_dir, stages)
        _write_marker(stage, time.perf_counter() - t0)
        say(f"{head}: done in {_elapsed(time.perf_counter() - t0)}")
    report = run_dir / "report.html"
    latest = run_dir.parent / "latest"
    try:
        if latest.is_symlink() or not latest.exists():
            if latest.is_symlink():
                latest.unlink()
            latest.symlink_to(run_dir.name)
    except OSError:
        pass
    say(f"finished in {_elapsed(time.perf_counter() - start)}")
    return report


def _to_run(stage: Stage, head: str, force: bool, say: Callable[[str], None]) -> bool:
    """Whether the stage runs now; says why not (no dataset, complete)."""
    missing = _missing_dataset(stage)
    if missing:
        say(f"{head}: skipped, no dataset at {missing}")
        return False
    if not force and is_complete(stage):
        say(f"{head}: complete, skipped (use --force to rerun)")
        return False
    redone = redone_inputs(stage)
    reason = None if force else rerun_reason(stage)
    if reason:
        say(f"{head}: runs again, {reason}")
    elif not force and redone:
        which = ", ".join(redone) if len(redone) <= 4 else f"{len(redone)} of the stages it reads"
        say(f"{head}: runs again, {which} ran again since it was made")
    return True


def rerun_reason(stage: Stage) -> str | None:
    """Why a finished stage's record no longer matches the plan (its fingerprint differs): which
    of its parameters changed, or that the built-in video it read is generated differently now.
    None where it has no record or its fingerprint is the plan's."""
    info = _read_marker(stage, stage.out_dir)
    if info is None or info.get("fingerprint") == stage.fingerprint:
        return None
    old = info.get("params")
    new = json.loads(json.dumps(stage.params, default=str))
    if isinstance(old, dict) and old != new:
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed == ["labkit"]:  # the report's hash of labkit's code
            return "labkit's code changed since it was made"
        more = ", ..." if len(changed) > 4 else ""
        return f"its parameters changed ({', '.join(changed[:4])}{more})"
    if info.get("notebook") != stage.notebook:
        return f"its notebook changed ({info.get('notebook')} -> {stage.notebook})"
    data, was = ", ".join(stage.data), info.get("data")
    if was is None and stage.data:
        return f"it was made before labkit recorded the built-in video it reads (now {data})"
    if list(was or []) != list(stage.data):
        before = ", ".join(was or []) or "none"
        return f"the built-in video it reads changed ({before} -> {data or 'none'})"
    return "its record does not match the plan"


class _StageProcessError(RuntimeError):
    """A stage run in its own process failed: the message is the failure's one-line account."""


def _run_stage(
    stage: Stage,
    head: str,
    run_dir: Path,
    say: Callable[[str], None],
    *,
    progress: bool,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    run_with: dict[str, Any] | None = None,
) -> None:
    """Run a notebook stage into its folder and mark it complete.

    Args:
        stage: the stage (its earlier complete outputs are backed up first, put back if it fails).
        head: its progress label, ``[i/n] name``.
        run_dir: the run folder (named in a failure's message).
        say: where the stage's two progress lines go (running, done).
        progress: stream a training's output and the notebooks' ``[labkit] ...`` lines (in this
            process only).
        env: run the notebook in a child process with this environment (a stage beside others);
            None: in this process, as its environment is.
        overrides: notebook parameters that change how the stage runs, not what it computes
            (``num_workers``): outside its fingerprint.
        run_with: how it ran, recorded in its ``stage.json`` (``run_with``).

    Raises:
        StageFailed: the notebook failed (one line: the stage, the cell, the error, what is kept).
    """
    if stage.notebook is None:  # only the report is a Python step
        raise ValueError(f"stage {stage.name}: no notebook to run")
    t0 = time.perf_counter()
    say(f"{head}: running {stage.notebook} ...")
    backup = _prepare(stage)
    params = {**stage.params, **(overrides or {})}
    try:
        if env is None:
            html = run_notebook(
                stage.notebook,
                stage.out_dir,
                params,
                progress=False,
                log_output=progress and stage.group == "train",
                progress_lines=progress,  # e.g. the evaluation's line per sequence
            ).html
        else:
            html = _run_notebook_process(stage.notebook, stage.out_dir, params, env)
        extra = {"run_with": run_with} if run_with else {}
        _write_marker(stage, time.perf_counter() - t0, html=str(html), **extra)
    except Exception as err:
        kept = f"stages before it are kept in {run_dir}"
        if backup is not None:  # the previous complete outputs go back in place
            failed = _set_aside_failed(stage)
            os.replace(backup, stage.out_dir)
            kept += (
                f", and {stage.name}'s previous complete outputs too (the failed "
                f"attempt is in {failed})"
            )
        detail = (
            str(err)
            if isinstance(err, (NotebookError, _StageProcessError))
            else f"{type(err).__name__}: {err}"
        )
        detail = "; ".join(x.strip() for x in detail.splitlines() if x.strip())
        raise StageFailed(
            f"stage {stage.name} failed after {_elapsed(time.perf_counter() - t0)}: "
            f"{detail}; {kept}; fix the cause and rerun to resume"
        ) from None
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    say(f"{head}: done in {_elapsed(time.perf_counter() - t0)}")


def _run_together(
    cfg: PipelineConfig,
    waiting: list[Stage],
    jobs: int,
    threads: int,
    heads: dict[str, str],
    run_dir: Path,
    say: Callable[[str], None],
    group: str = "train",
) -> None:
    """Run the stages of one group (``train``, ``explore``, ``evaluate``) ``jobs`` at a time, each
    notebook in its own process.

    Each stage gets ``max(1, threads // jobs)`` torch threads (``OMP_NUM_THREADS`` of its own
    process: this process's environment is not touched, so nothing races) and a training stage,
    unless ``train.num_workers`` is set, ``num_workers = 0`` (its data made between its steps, on
    its own thread). The stages print nothing but their two progress lines (their output is in their
    notebooks). When a stage fails, no new stage starts, the running ones finish (their work is
    kept and marked complete), then the first failure is raised and the others said.

    A child process (not a thread running papermill) per stage: Ctrl-C reaches it (the kernels
    run in sessions of their own and would train on), and each has its own environment.

    Raises:
        StageFailed: a stage failed (the first to fail).
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    per = max(1, threads // jobs)
    training = group == "train"
    overrides: dict[str, Any] = (
        {} if "num_workers" in cfg.train or not training else {"num_workers": 0}
    )
    home = str(Path(__file__).resolve().parent.parent)  # the child imports this labkit
    path = os.pathsep.join(p for p in (home, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(per), "LABKIT_HEADLESS": "1", "PYTHONPATH": path}
    lock = threading.Lock()

    def tell(message: str) -> None:  # one whole line at a time from every thread
        with lock:
            say(message)

    named = {"train": "training", "explore": "exploration", "evaluate": "evaluation"}
    tell(
        f"{named.get(group, group)}: {len(waiting)} stages, {jobs} at a time with {per} thread"
        f"{'s' if per > 1 else ''} each{' and no data workers' if overrides else ''} (jobs); "
        "their output is in their notebooks"
    )
    queue = list(waiting)
    running: set[Future[None]] = set()
    failures: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="labkit-stage") as pool:
        while queue or running:
            while queue and len(running) < jobs:
                stage = queue.pop(0)
                running.add(
                    pool.submit(
                        _run_stage,
                        stage,
                        heads[stage.name],
                        run_dir,
                        tell,
                        progress=False,
                        env=env,
                        overrides=overrides,
                        run_with={"jobs": jobs, "OMP_NUM_THREADS": per, **overrides},
                    )
                )
            done, running = wait(running, return_when=FIRST_COMPLETED)
            failures += [e for e in (f.exception() for f in done) if e is not None]
            if failures:
                queue.clear()  # the running stages finish; no new one starts
    for err in failures[1:]:
        tell(str(err))
    if failures:
        raise failures[0]


def _run_notebook_process(
    notebook: str, out_dir: Path, params: dict[str, Any], env: dict[str, str]
) -> Path | None:
    """:func:`labkit.notebooks.run_notebook` in a child process with environment ``env``.

    Returns:
        The HTML export's path.

    Raises:
        _StageProcessError: the notebook failed (its :class:`NotebookError` message), or the
            process ended without an answer (its exit code and last lines of output).
    """
    with tempfile.TemporaryDirectory(prefix="labkit-stage-") as tmp:
        spec = Path(tmp) / "stage.json"
        spec.write_text(
            json.dumps({"notebook": notebook, "out_dir": str(out_dir), "params": params})
        )
        log = Path(tmp) / "output.txt"
        code = "import sys; from labkit.pipeline import _notebook_process; _notebook_process()"
        with log.open("wb") as out:
            proc = subprocess.run(
                [sys.executable, "-c", code, str(spec)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        answer = spec.with_name("answer.json")
        if answer.is_file():
            outcome = json.loads(answer.read_text())
            if "error" in outcome:
                raise _StageProcessError(outcome["error"])
            return Path(outcome["html"]) if outcome.get("html") else None
        last = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise _StageProcessError(
            f"its process ended with exit code {proc.returncode}: {' | '.join(last)}"
        )


def _notebook_process() -> None:
    """A child process's work (:func:`_run_notebook_process`): run the notebook of the spec file
    ``sys.argv[1]``, write the outcome (``html`` or ``error``) to ``answer.json`` beside it."""
    _end_with_parent()
    spec = Path(sys.argv[1])
    task = json.loads(spec.read_text())
    try:
        result = run_notebook(
            task["notebook"],
            task["out_dir"],
            task["params"],
            progress=False,
            log_output=False,
            progress_lines=False,
        )
        outcome = {"html": str(result.html) if result.html else ""}
    except Exception as err:
        outcome = {
            "error": str(err) if isinstance(err, NotebookError) else f"{type(err).__name__}: {err}"
        }
    spec.with_name("answer.json").write_text(json.dumps(outcome))


def _end_with_parent() -> None:
    """Ask Linux to end this process when the thread that started it ends (the pipeline killed),
    so that no orphan trains on in a run folder whose lock is gone; elsewhere nothing."""
    parent = os.getppid()
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):  # no prctl (macOS), no CDLL(None) (Windows)
        return
    if os.getppid() != parent:  # the parent ended before the request
        os._exit(1)
