"""Benchmark: one DoRA training step, labkit's batched step against the official code's loops.

Four ways to run the same DoRA step (same weights, same batch, same loss):

* **labkit**: :func:`labkit.train.step.dora_step`: the teacher runs once over all B*T frames of
  the batch (fused attention, the [CLS] row computed from q and k), discovery and tracking are
  batched tensor ops, the student runs once per view size (one backbone call over all k*T*B
  object views, one over all n*T*B local crops, one head call over both).
* **official-loops**: the step as the official DoRA code runs it (``main.py``
  ``train_one_epoch``, ``utils.MOT``, ``utils.MultiCropWrapper``): the teacher one forward per
  frame (batch B); tracking per frame and per object; the student once per object, and inside
  each call once per frame (batch B, head called per frame), the local crops once per frame
  (batch n*B); explicit attention matrices in every block of both networks, as the official
  ViT computes them (it has no fused attention).
* **teacher-loop**: only the teacher and tracking as in official-loops, the student as labkit's.
* **student-loop**: only the student as in official-loops, teacher and tracking as labkit's.

The two half-way rows split the speed-up between the teacher's and the student's batching. The
script checks that the four give the same loss. Each way runs in its own subprocess, so its peak
resident memory (``VmHWM``) is its own; by default the workers are started together and their
timed steps interleaved (step 1 of every way, then step 2 ...), so that the load of other
processes on a shared machine falls on every way alike (``--one-at-a-time``: one worker after
the other, fewer processes in memory at once). The batch is random normal data of the right
shape (speed does not depend on the pixels; data loading is not timed). Images per second count
clip frames (B * T per step) over the median step time after warm-up steps; the best (shortest)
step is reported too, as it is the least disturbed by other processes, and the CPU seconds of
the worker's threads per step (on a loaded machine a process gets a fraction of a core: CPU
seconds show the work done, wall seconds also the waiting). ``--part teacher`` times only the
teacher's forward, discovery and tracking.

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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import clock, elapsed, peak_rss_mb  # bench/measure.py

from labkit.environment import describe

METHODS = ("labkit", "official-loops", "teacher-loop", "student-loop")


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
        "and tracking (official-loops = teacher-loop, student-loop = labkit there)",
    )
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="run the ways one after the other instead of interleaving their steps (less memory; "
        "ratios then depend on the load staying the same)",
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


def _official_student(student, views, local):
    """The official student: per object a call that loops over frames; local crops per frame.

    Args:
        views: (k, B, T, 3, S, S) masked object views; local: (B, n, T, 3, s, s).

    Returns:
        objects (k, T, B, K), local outputs (n, T, B, K).
    """
    import torch

    clips, num_local, num_frames = local.shape[:3]
    objects = torch.stack(
        [
            torch.stack([student(views[j, :, t]) for t in range(num_frames)])  # (T, B, K)
            for j in range(views.shape[0])
        ]
    )
    local_out = torch.stack(
        [
            student(local[:, :, t].transpose(0, 1).flatten(0, 1)).reshape(num_local, clips, -1)
            for t in range(num_frames)
        ],
        dim=1,
    )  # (n, T, B, K): per frame one batch of n*B crops, crop-major as torch.cat of the crops
    return objects, local_out


def _step(method, student, teacher, loss_fn, batch, k_obj, autocast):
    """One forward + backward of ``method``; returns the loss (float)."""
    import torch

    from labkit.models import patch_size
    from labkit.tracking import masked_views
    from labkit.train.step import discover_and_track, dora_step, teacher_forward

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
    if method == "student-loop":  # labkit's teacher, discovery and tracking
        with autocast():
            found = teacher_forward(teacher, frames.flatten(0, 1))  # rows (B*T), clip-major
        _, tracks = discover_and_track(found, clips, k=k_obj, heads=heads)
        masks = tracks.masks  # (B, T, k, gh, gw)
        teacher_out = found.logits.float().reshape(clips, num_frames, -1).transpose(0, 1)
    else:  # the official teacher and tracking: per frame, per object
        grid = (frames.shape[-2] // p, frames.shape[-1] // p)
        with autocast():
            logits, attns, queries, keys, tokens = _loop_teacher(teacher, frames, teacher._kept)
        attns, queries, keys, tokens = (
            [x.float() for x in xs] for xs in (attns, queries, keys, tokens)
        )
        masks = _loop_objects(attns, queries, keys, tokens, k_obj, heads, grid)  # (B, T, k, ..)
        teacher_out = torch.stack(logits).float()  # (T, B, K)
    views = masked_views(frames, masks, p)  # (k, B, T, 3, S, S)
    with autocast():
        if method == "teacher-loop":  # labkit's student: one backbone call per view size
            objects_in = views.transpose(1, 2).flatten(0, 2)
            local_in = local.permute(1, 2, 0, 3, 4, 5).flatten(0, 2)
            outs = student([objects_in, local_in])
            objects = outs[0].reshape(k_obj, num_frames, clips, -1)
            local_out = outs[1].reshape(local.shape[1], num_frames, clips, -1)
        else:  # official-loops, student-loop
            objects, local_out = _official_student(student, views, local)
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
    if method in ("labkit", "student-loop"):
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
    official_teacher = cfg["method"] in ("official-loops", "teacher-loop")
    teacher._kept, *hooks = (
        _explicit_attention(teacher.backbone) if official_teacher else ([], None)
    )
    if cfg["method"] in ("official-loops", "student-loop"):
        for block in student.backbone.blocks:  # the official ViT: explicit softmax(q k^T)
            block.attn.fused_attn = False
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

    def timed_step() -> tuple[float, float, float]:
        student.zero_grad(set_to_none=True)
        loss_fn.center.zero_()  # every step sees the same targets: losses comparable across methods
        sync()
        start = clock()
        if cfg["part"] == "teacher":
            loss = _teacher_part(cfg["method"], teacher, batch, cfg["k"], autocast)
        else:
            loss = _step(cfg["method"], student, teacher, loss_fn, batch, cfg["k"], autocast)
        sync()
        wall, cpu = elapsed(start)
        return wall, cpu, loss

    for _ in range(cfg["warmup"]):
        timed_step()
    # the protocol: "@@ready" once set up, then per "step" line on stdin one timed step, answered
    # by "@@{seconds, cpu, loss}"; "end" writes the process's peaks to the result file
    print("@@ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        seconds, cpu, loss = timed_step()
        print("@@" + json.dumps({"seconds": seconds, "cpu": cpu, "loss": loss}), flush=True)
    result = {
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        ),
        "threads": torch.get_num_threads(),
    }
    Path(cfg["result"]).write_text(json.dumps(result))


class _Worker:
    """One way's worker process, driven through its stdin and stdout."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.times: list[float] = []
        self.losses: list[float] = []
        self.cpu: list[float] = []  # CPU seconds of the worker's threads per step
        self.log = open(cfg["result"] + ".log", "w+")  # noqa: SIM115 - read back on failure
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def _answer(self) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("@@"):
                return line[2:].strip()
        self.process.wait()
        raise RuntimeError(
            f"bench worker {self.cfg['method']} failed (exit {self.process.returncode}):\n"
            + self._log_tail()
        )

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def ready(self) -> None:
        self._answer()

    def step(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        answer = json.loads(self._answer())
        self.times.append(answer["seconds"])
        self.cpu.append(answer["cpu"])
        self.losses.append(answer["loss"])

    def finish(self) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write("end\n")
        self.process.stdin.close()
        self.process.wait()
        if self.process.returncode:
            raise RuntimeError(self._log_tail())
        peaks = json.loads(Path(self.cfg["result"]).read_text())
        median = statistics.median(self.times)
        images = self.cfg["batch_size"] * self.cfg["num_frames"]
        return {
            "method": self.cfg["method"],
            "part": self.cfg["part"],
            "seconds_per_step": median,
            "best_seconds_per_step": min(self.times),
            "step_times": self.times,
            "cpu_seconds_per_step": statistics.median(self.cpu),
            "step_cpu_seconds": self.cpu,
            "images_per_second": images / median,
            "loss": self.losses[0],
            **peaks,
        }


def _run_workers(base: dict, methods: list[str], tmp: str, one_at_a_time: bool) -> list[dict]:
    """Every way's timed steps, interleaved round by round (or one way after the other)."""
    configs = [{**base, "method": m, "result": f"{tmp}/{m}.json"} for m in methods]
    groups = [[c] for c in configs] if one_at_a_time else [configs]
    results = []
    for group in groups:
        start = time.perf_counter()
        workers = [_Worker(c) for c in group]
        try:
            for w in workers:
                w.ready()
            print(
                f"[bench] {', '.join(c['method'] for c in group)}: set up and warmed up in "
                f"{time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            for _ in range(base["steps"]):
                for w in workers:
                    w.step()
                print(
                    "[bench] step: "
                    + ", ".join(f"{w.cfg['method']} {w.times[-1]:.2f} s" for w in workers),
                    file=sys.stderr,
                    flush=True,
                )
            results += [w.finish() for w in workers]
        finally:
            for w in workers:
                if w.process.poll() is None:
                    w.process.kill()
    return results


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
    with tempfile.TemporaryDirectory() as tmp:
        try:
            results = _run_workers(base, args.methods, tmp, args.one_at_a_time)
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
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
        "| labkit speed-up (median, best, step by step) | CPU s / step (median) | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in results:
        ratio = r["seconds_per_step"] / labkit["seconds_per_step"] if labkit else nan
        best = r["best_seconds_per_step"] / labkit["best_seconds_per_step"] if labkit else nan
        # interleaved: step i of every way ran side by side, under the same load
        r["speedup_step_by_step"] = (
            statistics.median(a / b for a, b in zip(r["step_times"], labkit["step_times"]))
            if labkit and not args.one_at_a_time
            else nan
        )
        print(
            f"| {r['method']} | {r['seconds_per_step']:.2f} | {r['best_seconds_per_step']:.2f} | "
            f"{r['images_per_second']:.2f} | {ratio:.2f}x, {best:.2f}x, "
            f"{r['speedup_step_by_step']:.2f}x | {r['cpu_seconds_per_step']:.2f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else (nan, nan, nan)
    print(f"\nload average at the end (1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": describe(args.device),
        "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"
        },
        "same_loss": same,
        "load_average": list(load),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
