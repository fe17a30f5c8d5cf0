"""Benchmark: one DoRA training step, labkit's batched teacher against frame-by-frame loops.

Three ways to run the same DoRA step (same weights, same batch, same loss):

* **labkit**: :func:`labkit.train.step.dora_step`: the teacher runs once over all B*T frames of
  the batch (fused attention, the [CLS] row computed from q and k), discovery and tracking are
  batched tensor ops, the student runs once over all k*T*B object views and n*T*B local crops.
* **teacher-loop**: the teacher as the official DoRA code runs it: one forward per frame (batch
  B), explicit attention matrices in every block (DINO's ViT has no fused attention) with the last
  block's (B, h, N, N) matrix kept; the rest as labkit.
* **official-loops**: everything looped as in the official code: teacher per frame, tracking per
  frame and object, the student per object and per frame (``MultiCropWrapper`` loops over frames),
  local crops per frame.

The script checks that the three give the same loss. Each configuration runs in a fresh
subprocess so its peak resident memory (``VmHWM``) is its own; the batch is random normal data
of the right shape (speed does not depend on the pixels; data loading is not timed). Images per
second count clip frames (B * T per step) over the median step time after warm-up steps; the best
(shortest) step is reported too, as it is the least disturbed by other processes on a shared
machine. ``--part teacher`` times only the teacher's forward, discovery and tracking.

Usage::

    python bench/train.py                         # vit_small, 128 px, T=8, B=2, CPU
    python bench/train.py --threads 1 --steps 3   # one intra-op thread (busy machines)
    python bench/train.py --part teacher --methods labkit teacher-loop   # the teacher alone
    python bench/train.py --device cuda --img-size 224 --batch-size 8 --precision bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import peak_rss_mb  # bench/measure.py

from labkit.environment import describe

METHODS = ("labkit", "teacher-loop", "official-loops")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="vit_small_patch16_224", help="timm ViT (random weights)"
    )
    parser.add_argument(
        "--model-kwargs", default="{}", help="JSON of extra timm arguments, e.g. '{\"depth\": 6}'"
    )
    parser.add_argument("--img-size", type=int, default=128, help="global crop side")
    parser.add_argument("--local-size", type=int, default=64)
    parser.add_argument("--num-local", type=int, default=2, help="local crops per frame")
    parser.add_argument("--num-frames", type=int, default=8, help="T")
    parser.add_argument("--batch-size", type=int, default=2, help="clips per step")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--out-dim", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="autocast dtype"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--part",
        choices=("step", "teacher"),
        default="step",
        help="time the whole step (forward + backward), or only the teacher's forward, discovery "
        "and tracking (official-loops = teacher-loop there)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# baselines (what the official code does), used by the worker only


def _explicit_attention(model) -> list:
    """Switch every block to explicit softmax(q k^T) attention; keep the last block's matrix."""
    kept: list = []
    for block in model.blocks:
        block.attn.fused_attn = False
    last = model.blocks[-1].attn
    kept_hook = last.attn_drop.register_forward_hook(lambda _m, inputs, _o: kept.append(inputs[0]))
    qkv_hook = last.qkv.register_forward_hook(lambda _m, _i, out: kept.append(out))
    return [kept, kept_hook, qkv_hook]


def _loop_teacher(teacher, frames, kept):
    """Teacher per frame with explicit attention: logits (T, B, K), attn (T, B, h, N, N), q, k,
    tokens.
    """
    import torch

    backbone = teacher.backbone
    logits, attns, queries, keys, tokens = [], [], [], [], []
    heads = backbone.blocks[-1].attn.num_heads
    with torch.no_grad():
        for t in range(frames.shape[1]):
            kept.clear()
            feats = backbone.forward_features(frames[:, t])  # (B, N+1, D)
            logits.append(teacher.head(backbone.forward_head(feats)))
            qkv, attn = kept[0], kept[1]  # hooks fire qkv first, then attn_drop
            b, n, _ = qkv.shape
            q, k, _ = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 1, 3, 4)  # (B, N+1, h, d)
            attns.append(attn)
            queries.append(q.flatten(2))
            keys.append(k.flatten(2))
            tokens.append(feats)
    return logits, attns, queries, keys, tokens


def _loop_objects(attns, queries, keys, tokens, k_obj, heads, grid):
    """Official MOT: discovery on frame 0, then per frame and per object tracking and masks."""
    import torch

    from labkit.tracking import binarize_maps, discover_objects

    found = discover_objects(
        attns[0][:, :, 0, 1:], queries[0][:, 1:], tokens[0][:, 1:], k=k_obj, heads=heads
    )  # CLS row of the (B, h, N, N) matrix
    protos = found.prototypes  # (B, k, D)
    dim = protos.shape[-1]
    per_frame = []
    for t in range(len(keys)):
        per_object = []
        for j in range(k_obj):
            score = (protos[:, j : j + 1] @ keys[t][:, 1:].transpose(1, 2)) * dim**-0.5  # (B, 1, N)
            per_object.append(binarize_maps(score.softmax(-1).reshape(-1, *grid)))  # (B, gh, gw)
        per_frame.append(torch.stack(per_object, 1))  # (B, k, gh, gw)
    return torch.stack(per_frame, 1)  # (B, T, k, gh, gw)


def _step(method, student, teacher, loss_fn, batch, k_obj, autocast):
    """One forward + backward of ``method``; returns the loss (float)."""
    import torch

    from labkit.models import patch_size
    from labkit.tracking import masked_views
    from labkit.train.step import dora_step

    heads = list(range(k_obj))
    if method == "labkit":
        with autocast():
            out = dora_step(
                student, teacher, loss_fn, batch, epoch=0, k=k_obj, heads=heads, autocast_dtype=None
            )
        out.loss.backward()
        return float(out.loss)
    frames, local = batch["global"][:, 0], batch["local"]  # (B, T, 3, S, S), (B, n, T, 3, s, s)
    clips, num_frames = frames.shape[:2]
    p = patch_size(teacher.backbone)
    grid = (frames.shape[-2] // p, frames.shape[-1] // p)
    with autocast():
        logits, attns, queries, keys, tokens = _loop_teacher(teacher, frames, teacher._kept)
    attns, queries, keys, tokens = (
        [x.float() for x in xs] for xs in (attns, queries, keys, tokens)
    )
    masks = _loop_objects(attns, queries, keys, tokens, k_obj, heads, grid)  # (B, T, k, gh, gw)
    teacher_out = torch.stack(logits).float()  # (T, B, K)
    views = masked_views(frames, masks, p)  # (k, B, T, 3, S, S)
    with autocast():
        if method == "teacher-loop":
            objects_in = views.transpose(1, 2).flatten(0, 2)
            local_in = local.permute(1, 2, 0, 3, 4, 5).flatten(0, 2)
            outs = student([objects_in, local_in])
            objects = outs[0].reshape(k_obj, num_frames, clips, -1)
            local_out = outs[1].reshape(local.shape[1], num_frames, clips, -1)
        else:  # official-loops: per object, per frame; local crops per frame
            objects = torch.stack(
                [
                    torch.stack([student(views[j, :, t]) for t in range(num_frames)])
                    for j in range(k_obj)
                ]
            )
            local_out = torch.stack(
                [
                    student(local[:, :, t].transpose(0, 1).flatten(0, 1)).reshape(
                        local.shape[1], clips, -1
                    )
                    for t in range(num_frames)
                ],
                dim=1,
            )  # (n, T, B, K)
    loss = loss_fn.forward_dora(objects.float(), local_out.float(), teacher_out, 0)
    loss.backward()
    return float(loss)


def _teacher_part(method, teacher, batch, k_obj, autocast):
    """The teacher's share of a step: forward over the clip frames, discovery and tracking.

    Returns the number of mask patches (equal for both methods when they agree).
    """
    import torch

    from labkit.models import patch_size
    from labkit.train.step import discover_and_track, teacher_forward

    frames = batch["global"][:, 0]  # (B, T, 3, S, S)
    heads = list(range(k_obj))
    if method == "labkit":
        with autocast():
            out = teacher_forward(teacher, frames.flatten(0, 1))
        _, tracks = discover_and_track(out, frames.shape[0], k=k_obj, heads=heads)
        return float(tracks.masks.sum())
    p = patch_size(teacher.backbone)
    grid = (frames.shape[-2] // p, frames.shape[-1] // p)
    with autocast():
        _, attns, queries, keys, tokens = _loop_teacher(teacher, frames, teacher._kept)
    attns, queries, keys, tokens = (
        [x.float() for x in xs] for xs in (attns, queries, keys, tokens)
    )
    with torch.no_grad():
        return float(_loop_objects(attns, queries, keys, tokens, k_obj, heads, grid).sum())


def worker(cfg: dict) -> None:
    import contextlib

    import torch

    from labkit.losses import DINOLoss
    from labkit.train import TrainConfig
    from labkit.train.step import build_networks

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    train_cfg = TrainConfig(
        model=cfg["model"],
        model_kwargs=cfg["model_kwargs"],
        img_size=cfg["img_size"],
        local_size=cfg["local_size"],
        out_dim=cfg["out_dim"],
        drop_path_rate=0.0,
        k=cfg["k"],
    )
    torch.manual_seed(0)
    student, teacher = build_networks(train_cfg)
    student, teacher = student.to(device), teacher.to(device)
    teacher._kept, *hooks = (
        _explicit_attention(teacher.backbone) if cfg["method"] != "labkit" else ([], None)
    )
    loss_fn = DINOLoss(cfg["out_dim"]).to(device)
    g = torch.Generator().manual_seed(1)
    b, t, n = cfg["batch_size"], cfg["num_frames"], cfg["num_local"]
    batch = {
        "global": torch.randn(b, 1, t, 3, cfg["img_size"], cfg["img_size"], generator=g).to(device),
        "local": torch.randn(b, n, t, 3, cfg["local_size"], cfg["local_size"], generator=g).to(
            device
        ),
    }
    dtype = torch.bfloat16 if cfg["precision"] == "bf16" else None
    autocast = (
        (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, losses = [], []
    for i in range(cfg["warmup"] + cfg["steps"]):
        student.zero_grad(set_to_none=True)
        loss_fn.center.zero_()  # every step sees the same targets: losses comparable across methods
        sync()
        start = time.perf_counter()
        if cfg["part"] == "teacher":
            losses.append(_teacher_part(cfg["method"], teacher, batch, cfg["k"], autocast))
        else:
            losses.append(
                _step(cfg["method"], student, teacher, loss_fn, batch, cfg["k"], autocast)
            )
        sync()
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "method": cfg["method"],
        "part": cfg["part"],
        "seconds_per_step": median,
        "best_seconds_per_step": min(times),
        "step_times": times,
        "images_per_second": b * t / median,
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        ),
        "loss": losses[0],
        "threads": torch.get_num_threads(),
    }
    Path(cfg["result"]).write_text(json.dumps(result))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    base = {
        "model": args.model,
        "model_kwargs": json.loads(args.model_kwargs),
        "img_size": args.img_size,
        "local_size": args.local_size,
        "num_local": args.num_local,
        "num_frames": args.num_frames,
        "batch_size": args.batch_size,
        "k": args.k,
        "out_dim": args.out_dim,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "device": args.device,
        "precision": args.precision,
        "part": args.part,
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            cfg = {**base, "method": method, "result": f"{tmp}/{method}.json"}
            start = time.perf_counter()
            run = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(cfg)],
                capture_output=True,
                text=True,
            )
            if run.returncode:
                print(run.stdout[-2000:], run.stderr[-4000:], file=sys.stderr)
                return run.returncode
            results.append(json.loads(Path(cfg["result"]).read_text()))
            print(
                f"[bench] {method}: {results[-1]['seconds_per_step']:.2f} s/step "
                f"({time.perf_counter() - start:.0f} s with start-up)",
                file=sys.stderr,
                flush=True,
            )
    losses = [r["loss"] for r in results]
    same = max(losses) - min(losses) <= 1e-3 * max(abs(x) for x in losses)
    labkit = next((r for r in results if r["method"] == "labkit"), None)
    print(
        f"\nDoRA step, {args.model} {args.model_kwargs} at {args.img_size} px, "
        f"T={args.num_frames}, "
        f"B={args.batch_size}, k={args.k}, n={args.num_local} local at {args.local_size} px, "
        f"K={args.out_dim}, {args.device} {args.precision}, threads={results[0]['threads']}"
    )
    print(f"same loss in all methods: {same} ({', '.join(f'{x:.5f}' for x in losses)})\n")
    print(
        "timed: "
        + (
            "forward + backward of the whole step"
            if args.part == "step"
            else "teacher forward, discovery and tracking"
        )
    )
    print(
        "| method | median s / step | best s / step | images / s (median) "
        "| labkit speed-up (median, best) | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = r["seconds_per_step"] / labkit["seconds_per_step"] if labkit else float("nan")
        best = (
            r["best_seconds_per_step"] / labkit["best_seconds_per_step"] if labkit else float("nan")
        )
        print(
            f"| {r['method']} | {r['seconds_per_step']:.2f} | {r['best_seconds_per_step']:.2f} | "
            f"{r['images_per_second']:.2f} | {ratio:.2f}x, {best:.2f}x | {r['peak_rss_mb']:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": describe(args.device),
        "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"
        },
        "same_loss": same,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
