"""The ``labkit`` command: run the lab's notebooks and its quick paths from a shell.

    labkit notebooks                                 list the notebooks and their parameters
    labkit models                                    the supported pretrained weights, cached or not
    labkit run attention_explorer -p k 5 -p num_frames 8
    labkit attention VIDEO --out DIR                 RGB head maps, masks, segments, animation
    labkit attention VIDEO --head-images --img-size 480 --stride 8
                                                     one image per head and their mean, denser
    labkit attention VIDEO --film --out DIR          every frame: one MP4 per method (film)
    labkit pipeline [--config lab.yaml] [-o k=v]     train -> explore -> evaluate -> report
    labkit train --config run.yaml -o steps=500      DoRA / DINO training (torchrun for DDP)
    labkit eval --models random=vit_small_patch16_224 --data ROOT --out DIR
                                                     J&F, attention / DoRA masks, k-means mIoU
    labkit demo                                      the pipeline's CPU demo on the default video

Every error is one line naming the file or key, with a non-zero exit status (2: a bad input or
config, 1: a failed stage or run, 3: training diverged, 130: interrupted); ``--debug`` (anywhere on
the line) or ``LABKIT_DEBUG=1`` shows the traceback instead.

Each command imports the modules it runs when it runs (most import torch: seconds), so that
``labkit --help`` and a mistyped option answer at once: the CLI is the one module whose labkit
imports sit inside functions (``tests/test_layers.py`` holds the list of exceptions).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.config import parse_value
from labkit.validation import check_mapping, check_output_dir

__all__ = ["main", "one_line", "parse_value"]


def _parse_params(pairs: Sequence[Sequence[str]] | None) -> dict[str, Any]:
    return {name: parse_value(value) for name, value in (pairs or [])}


def _model_kwargs(text: str | None) -> dict[str, Any]:
    value = parse_value(text) if text else {}
    if not isinstance(value, dict):
        raise ValueError(f"--model-kwargs must be a mapping such as '{{depth: 2}}', got {text!r}")
    check_mapping("--model-kwargs", value)
    return value


def _cmd_notebooks(args: argparse.Namespace) -> int:
    from labkit.notebooks import list_notebooks, notebook_dir, notebook_parameters

    print(f"notebooks in {notebook_dir()}:")
    for name in list_notebooks():
        params = notebook_parameters(name)
        print(f"  {name}")
        for key, value in params.items():
            print(f"      {key} = {value!r}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from labkit.notebooks import NotebookError, check_parameters, find_notebook, run_notebook

    params = _parse_params(args.param)
    source = find_notebook(args.notebook)
    check_parameters(source, params)
    check_output_dir("--out", args.out or Path("runs") / source.stem)
    out_dir = Path(args.out or Path("runs") / source.stem).resolve()
    params.setdefault("out_dir", str(out_dir))
    print(f"[labkit] running {source.name} -> {out_dir}", flush=True)
    try:
        run = run_notebook(source, out_dir, params, progress=not args.quiet, log_output=args.log)
    except NotebookError as err:
        print(f"labkit: error: {one_line(err)}", file=sys.stderr)
        return 1
    print(f"[labkit] done in {run.seconds:.0f} s")
    print(f"[labkit] executed notebook: {run.output}")
    if run.html:
        print(f"[labkit] HTML: {run.html}")
    return 0


def _cmd_attention_film(args: argparse.Namespace) -> int:
    from labkit.data import default_video
    from labkit.film import FilmConfig, write_films
    from labkit.models import load_backbone, weights_label

    cfg = FilmConfig(  # checked before the model loads: a bad value fails in a second
        methods=tuple(args.film_methods),
        batch_size=args.batch_size,
        max_side=args.max_side,
        num_frames=args.film_frames,
        layer=args.layer,
        heads=tuple(args.heads),
        k=args.k,
        rediscover=args.rediscover,
        device=args.device,
        seed=args.seed,
        fps=args.fps or None,
    )
    if args.stride or args.size or args.head_images or args.facet != "tokens":
        raise ValueError(
            "--stride, --size, --head-images and --facet are for the clip, not --film "
            "(a film is at the video's size; --max-side scales it down)"
        )
    video = Path(args.video) if args.video else default_video()
    if not video.exists():
        raise ValueError(f"{video}: no such video file or frame folder")
    model = load_backbone(
        args.model,
        checkpoint=args.checkpoint or None,
        pretrained=True if args.pretrained else None,
        device=cfg.device or "auto",  # FilmConfig resolved --device: never None here
        pos_embed_rule=args.pos_embed_rule,
        seed=args.seed,
        **_model_kwargs(args.model_kwargs),
    )
    print(f"[labkit] weights: {weights_label(model)}")
    start = time.perf_counter()
    written = write_films(video, model, args.out, cfg, progress=True)
    print(f"[labkit] films of {video.name} in {time.perf_counter() - start:.1f} s")
    for name, path in written.items():
        print(f"[labkit] {name}: {path}")
    return 0


def _cmd_attention(args: argparse.Namespace) -> int:
    from labkit.environment import configure_threads
    from labkit.explore import ExploreConfig, explore, save_exploration

    configure_threads(args.threads or None)
    if args.film:
        return _cmd_attention_film(args)
    cfg = ExploreConfig(
        video_path=args.video,
        model=args.model,
        checkpoint=args.checkpoint or "",
        pretrained=True if args.pretrained else None,
        pos_embed_rule=args.pos_embed_rule,
        model_kwargs=_model_kwargs(args.model_kwargs),
        layer=args.layer,
        heads=tuple(args.heads),
        num_frames=args.num_frames,
        start_frame=args.start_frame,
        frame_step=args.frame_step,
        img_size=args.img_size,
        stride=args.stride,
        facet=args.facet,
        k=args.k,
        head_images=args.head_images,
        head_frame=args.head_frame,
        animation_fps=args.fps,
        animation_size=args.size,
        device=args.device,
        seed=args.seed,
        out_dir=args.out,
    )
    start = time.perf_counter()
    exp = explore(cfg, progress=True)
    print(f"[labkit] weights: {exp.weights}")
    written = save_exploration(exp, args.out)
    print(f"[labkit] {len(exp.indices)} frames in {time.perf_counter() - start:.1f} s")
    for name, path in written.items():
        print(f"[labkit] {name}: {path}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from labkit.zoo import format_zoo, zoo_table

    print(format_zoo(zoo_table()))
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from labkit.pipeline import StageFailed, load_pipeline_config, run_pipeline
    from labkit.recipes import resolve_config

    threads = [f"threads={args.threads}"] if args.threads else []
    config = resolve_config(args.config)  # a file, or a recipe's name (labkit.recipes)
    cfg = load_pipeline_config(config, [*(args.override or []), *threads])
    try:
        report = run_pipeline(cfg, force=args.force, only=args.only, progress=not args.quiet)
    except StageFailed as err:
        print(f"labkit: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "labkit: interrupted; run the same command again to go on (complete stages are "
            "skipped, an interrupted training resumes from its checkpoint)",
            file=sys.stderr,
        )
        return 130
    if args.only in (None, "report"):  # else the report (and its verdict) was not made again
        for headline in _headlines(Path(report).parent / "metrics.json"):
            print(f"[labkit] {headline}")
    print(f"[labkit] report: {report}")
    print(f"[labkit] open it in a browser: file://{report}")
    return 0


def _headlines(summary: Path) -> list[str]:
    """The verdict's headlines the report wrote into the run's ``metrics.json`` (none where it is
    missing or older than that key)."""
    from labkit.runfolder import read_json

    lines = (read_json(summary) or {}).get("headlines", [])
    return [str(line) for line in lines] if isinstance(lines, list) else []


def _cmd_demo(args: argparse.Namespace) -> int:
    """The pipeline with the CPU defaults on the synthetic default video."""
    args.config = None
    args.override = [f"name={args.name}", *(args.override or [])]
    args.only = None
    return _cmd_pipeline(args)


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from labkit.train import load_config
    from labkit.train.trainer import TrainingDiverged, TrainingInterrupted, train

    threads = [f"threads={args.threads}"] if args.threads else []
    config = load_config(args.config, [*(args.override or ()), *threads])
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(
            f"[labkit] training {config.method} on {config.video_path or 'the synthetic video'} "
            f"for {config.steps} steps -> {config.out_dir}",
            flush=True,
        )
    try:
        result = train(config, until=args.until, progress=not args.quiet, force=args.force)
    except TrainingDiverged as err:
        print(f"labkit: error: {one_line(err)}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        print(f"labkit: {err}", file=sys.stderr)
        return 130
    if rank == 0:
        print(f"[labkit] checkpoint: {result.checkpoint}")
        print(f"[labkit] metrics: {json.dumps(result.metrics)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from labkit.eval.report import markdown_table, run_description, save_report, summary_rows
    from labkit.eval.runner import EvalConfig, evaluate

    cfg = EvalConfig(
        threads=args.threads,
        models=tuple(args.models),
        model_kwargs=_model_kwargs(args.model_kwargs),
        pos_embed_rule=args.pos_embed_rule,
        data_root=args.data,
        sequences=tuple(args.sequences or ()),
        davis_folder=args.davis_folder,
        resolution=args.resolution,
        evaluations=tuple(args.evaluations),
        knn_root=args.knn_root or "",
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        out_dir=args.out,
    )
    print(
        f"[labkit] evaluating {', '.join(cfg.models)} on "
        f"{cfg.data_root or 'the synthetic video'} at resolution {cfg.resolution} "
        f"({', '.join(cfg.evaluations)}) -> {cfg.out_dir}",
        flush=True,
    )
    from labkit.runfolder import RunLock

    with RunLock(cfg.out_dir, what="labkit eval"):  # one evaluation writes a folder at a time
        result = evaluate(cfg, progress=not args.quiet)
        written = save_report(result, cfg.out_dir, figures=not args.no_figures)
    print(f"[labkit] {run_description(result)}")
    print(markdown_table(summary_rows(result)), end="")
    for name, path in written.items():
        print(f"[labkit] {name}: {path}")
    return 0


THREADS_HELP = (
    "torch CPU threads (default 0: the CPUs this process may use, by affinity and cgroup quota, "
    "less data workers); 1 is several times faster on a CPU other jobs are using, where threads "
    "spin waiting for each other"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labkit",
        description="A lab for seeing how self-supervised ViTs discover and track objects in "
        "video.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error (also LABKIT_DEBUG=1); accepted anywhere on the line",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("notebooks", help="list the lab's notebooks and their parameters")
    p.set_defaults(func=_cmd_notebooks)

    p = sub.add_parser(
        "models",
        help="list the supported pretrained weights (DINO, DINOv2, DoRA) and whether they are "
        "cached",
    )
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("run", help="execute a notebook with papermill")
    p.add_argument("notebook", help="notebook name (e.g. attention_explorer) or .ipynb path")
    p.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="set a parameter; values are read as YAML literals (5, 0.1, true, [0,1,2])",
    )
    p.add_argument("--out", help="run folder (default: runs/<notebook>)")
    p.add_argument("--log", action="store_true", help="stream the notebook's output here")
    p.add_argument("--quiet", action="store_true", help="no per-cell progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "attention",
        help="write per-head RGB maps, masks, segments and an animation for a video (no notebook)",
    )
    p.add_argument(
        "video", nargs="?", default="", help="mp4 or frame folder (default: the synthetic video)"
    )
    p.add_argument("--out", default="runs/attention", help="output folder")
    p.add_argument("--model", default="vit_small_patch16_224", help="timm model name")
    p.add_argument("--checkpoint", help="local checkpoint file (timm, DINO or DoRA format)")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="timm's pretrained weights of --model (a name with a tag, e.g. "
        "vit_small_patch16_224.dino, loads them anyway; see labkit models)",
    )
    p.add_argument("--model-kwargs", help="extra timm arguments as YAML, e.g. '{depth: 2}'")
    p.add_argument(
        "--pos-embed-rule",
        default="auto",
        choices=["auto", "dino", "dinov2", "timm"],
        help="how position embeddings are resized to the frame's patch grid; auto follows the "
        "weights (DINO's rule for DINO/DoRA files and .dino tags, DINOv2's for DINOv2, else "
        "timm's)",
    )
    p.add_argument("--layer", type=int, default=-1, help="block index; -1 is the last")
    p.add_argument(
        "--heads", type=int, nargs=3, default=[0, 1, 2], help="three heads shown as R G B"
    )
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--start-frame", type=int, default=0)
    p.add_argument(
        "--frame-step", type=int, default=4, help="0 spreads the frames over the whole video"
    )
    p.add_argument("--img-size", type=int, default=224, help="shorter side fed to the model")
    p.add_argument(
        "--stride",
        type=int,
        default=0,
        help="pixels between patches, a divisor of the patch size (0: the patch size); 8 with a "
        "/16 model about doubles the grid's rows and columns (4x the tokens, slower)",
    )
    p.add_argument(
        "--facet",
        default="tokens",
        choices=["tokens", "keys", "queries", "values"],
        help="features the k-means segments and the PCA are made of: the block's output tokens "
        "or its attention's keys, queries or values",
    )
    p.add_argument(
        "--head-images",
        action="store_true",
        help="also save head_00.png ... head_mean.png and heads_grid.png: each head's [CLS] "
        "attention over one frame and their mean (with --img-size 480 and a /8 model: 60-row maps)",
    )
    p.add_argument(
        "--head-frame", type=int, default=0, help="clip position of the --head-images frame"
    )
    p.add_argument(
        "--fps",
        type=float,
        default=0.0,
        help="frames per second of the animation or the films (0: the source's speed; for the "
        "clip its rate divided by --frame-step)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=0,
        help="shorter side of the animation's panels (0: the source frame size)",
    )
    p.add_argument("--k", type=int, default=5, help="k-means segments")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random weights (a model without --checkpoint or pretrained weights) and k-means",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available, else cpu), cpu, cuda[:n] or mps",
    )
    p.add_argument(
        "--film",
        action="store_true",
        help="film every frame at the video's own size: one MP4 per method in --out, streamed "
        "batch by batch, so any length fits in memory (--num-frames, --start-frame, --frame-step "
        "and --img-size are for the clip and are not used)",
    )
    p.add_argument(
        "--film-methods",
        nargs="+",
        default=["heads", "mean", "dora", "discovery", "kmeans"],
        metavar="METHOD",
        help="films to write: heads (three heads as RGB), mean (head mean, as DINO's "
        "video_generation.py), dora (DoRA objects), discovery (LOST), kmeans (whole-video "
        "segments)",
    )
    p.add_argument(
        "--max-side", type=int, help="film: scale frames down so the longer side is at most N"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="film: frames per forward pass; memory grows with it, not with the video",
    )
    p.add_argument("--film-frames", type=int, help="film: only the first N frames (default: all)")
    p.add_argument(
        "--rediscover",
        type=int,
        default=0,
        help="film: DoRA rediscovers its objects every N frames (0: on the first frame "
        "only; a video with scene cuts wants about one shot's length)",
    )
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.set_defaults(func=_cmd_attention)

    p = sub.add_parser(
        "train",
        help="train a ViT with DoRA or DINO on videos "
        "(torchrun --nproc_per_node N -m labkit.cli train ...)",
        description="Train with a TrainConfig read from YAML; -o overrides single fields.",
    )
    p.add_argument("--config", help="YAML file of TrainConfig fields (default: all defaults)")
    p.add_argument(
        "-o",
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help="set a field, value read as a YAML literal "
        "(steps=500, heads=[0,2,5], model_kwargs.depth=4)",
    )
    p.add_argument("--until", type=int, help="stop after this many steps in all (resume later)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--force",
        action="store_true",
        help="out_dir holds a run and resume is off: move that run to out_dir/replaced-<time>/ "
        "and start afresh (without it, labkit refuses rather than overwrite finished work)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP + " (the field threads)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate backbones on DAVIS-format data: label propagation J&F, attention and "
        "DoRA object masks, k-means mIoU, k-NN",
        description="Model specs: [LABEL=]ARCH[:CHECKPOINT|:pretrained|:auto|:random][#student], "
        "e.g. "
        "random=vit_small_patch16_224, dino=vit_small_patch16_224.dino (a tag means its weights; "
        "labkit models lists them) or dino=vit_small_patch16_224:dino_deitsmall16_pretrain.pth "
        "(no weights: seeded random init). Writes metrics.json, summary.md and figures to --out.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["vit_small_patch16_224"],
        metavar="SPEC",
        help="model specs (see above)",
    )
    p.add_argument("--data", default="", help="DAVIS-layout root (default: the synthetic video)")
    p.add_argument("--sequences", nargs="*", help="sequence names (default: sequences.txt or all)")
    p.add_argument(
        "--davis-folder", default="480p", help="JPEGImages/<this> and Annotations/<this>"
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=224,
        help="shorter side fed to the model; DINO reports at 480 (GPU); at 224 a ViT-S/16 takes "
        "the 14 shared DAVIS sequences in about 3 minutes on an idle 2-core CPU, 15 to 35 on a "
        "busy one",
    )
    p.add_argument(
        "--evaluations",
        nargs="+",
        default=["propagation", "attention", "tracking", "segmentation"],
        choices=["propagation", "attention", "tracking", "segmentation", "discovery", "knn"],
        help="discovery (LOST, TokenCut, attention, DoRA objects: J, CorLoc, stability) "
        "and knn run only when named",
    )
    p.add_argument("--knn-root", help="labelled image folder (<class>/*.jpg or train|val/<class>/)")
    p.add_argument(
        "--model-kwargs",
        help="extra timm arguments for every model, e.g. '{depth: 2}', "
        "or per model label, e.g. '{tiny: {depth: 2}}'",
    )
    p.add_argument(
        "--pos-embed-rule",
        default="auto",
        choices=["auto", "dino", "dinov2", "timm"],
        help="position-embedding resize for every model; auto: as each model's weights' authors",
    )
    p.add_argument(
        "--max-frames",
        type=int,
        default=0,
        help="only the first N frames of each sequence, for a quick look (0: all)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="frames per forward pass")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available, else cpu), cpu, cuda[:n] or mps",
    )
    p.add_argument("--seed", type=int, default=0, help="random weights, k-means, samples")
    p.add_argument("--out", default="runs/evaluate", help="output folder")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument("--no-figures", action="store_true", help="metrics.json and summary.md only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "pipeline",
        help="train (DoRA, DINO) -> explore -> evaluate (random, DINO, DoRA) -> report.html",
        description="Runs the lab's notebooks in order with papermill into runs/<name>/. Complete "
        "stages are skipped on a rerun; an interrupted training resumes from its checkpoint.",
    )
    p.add_argument(
        "--config",
        help="YAML file of pipeline keys, or a recipe's name: cpu-demo, cpu-long, "
        "gpu-walking-tour (default: the CPU demo)",
    )
    p.add_argument(
        "-o",
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help="set a key, value read as YAML (steps=500, device=cuda, train={num_local: 6})",
    )
    p.add_argument("--force", action="store_true", help="rerun complete stages too")
    p.add_argument(
        "--only",
        choices=["train", "explore", "evaluate", "report"],
        help="run one stage group (the stages it needs must be complete)",
    )
    p.add_argument("--quiet", action="store_true", help="do not stream the training's progress")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP + ", in every stage")
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser(
        "demo", help="the main job: the pipeline with CPU defaults on the default video"
    )
    p.add_argument("--name", default="demo", help="run folder runs/<name>")
    p.add_argument("-o", "--override", action="append", metavar="KEY=VALUE", help="as for pipeline")
    p.add_argument("--force", action="store_true", help="rerun complete stages too")
    p.add_argument("--quiet", action="store_true", help="do not stream the training's progress")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP + ", in every stage")
    p.set_defaults(func=_cmd_demo)
    return parser


def one_line(err: BaseException) -> str:
    """An exception as one line for the user: its message with line breaks folded, a system
    error as ``<file>: <reason>``; an exception labkit does not raise itself keeps its type."""
    from labkit.notebooks import NotebookError
    from labkit.pipeline import StageFailed
    from labkit.runfolder import RunFolderBusy
    from labkit.train.trainer import CheckpointWriteError

    if isinstance(err, CheckpointWriteError):
        text = err.strerror or str(err)
    elif isinstance(err, OSError) and err.filename:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err)
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    ours = (ValueError, OSError, StageFailed, NotebookError, RunFolderBusy)
    if not isinstance(err, ours) or isinstance(err, UnicodeError):
        text = f"{type(err).__name__}: {text} (labkit --debug ... shows the traceback)"
    return text


def _exit_status(err: BaseException) -> int:
    from labkit.notebooks import NotebookError
    from labkit.pipeline import StageFailed

    if isinstance(err, (StageFailed, NotebookError, OSError)):
        return 1
    return 2 if isinstance(err, (ValueError, LookupError)) else 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"labkit: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labkit`` console command."""
    import warnings

    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet ipykernel under papermill
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LABKIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not debug:  # warnings as one line each, like the errors
                warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("labkit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(f"labkit: error: {one_line(err)}", file=sys.stderr)
        return _exit_status(err)


if __name__ == "__main__":
    sys.exit(main())
