"""Benchmark: per-head [CLS] attention maps over a video, labkit against a plain per-frame loop.

Two ways to get the last block's per-head [CLS] attention for every frame of a video:

* **labkit**: ``open_video`` + ``extract_video`` (frames decoded in batches, fused attention in
  every block, the [CLS] row computed from q and k, nothing run after the last block's q/k);
* **plain**: what DINO's ``visualize_attention.py`` does, frame by frame: decode the next frame
  (PyAV, sequential), crop to a multiple of the patch size, normalise, full forward with
  ``fused_attn=False`` and a hook that keeps the last block's softmaxed (h, N, N) attention
  matrix, then its [CLS] row.

Both read the video with PyAV by default, so the comparison is about the model side. decord 0.6,
once a ``VideoReader`` has served a read, would keep decoding the rest of the file in a background
thread and hold every decoded frame; ``labkit.video`` stops that by seeking back to frame 0 after
each read, at the price of a seek per batch. ``--labkit-backend auto`` measures labkit with
decord (what ``open_video`` picks by default).

Each configuration runs in a fresh subprocess, so its peak resident memory (``VmHWM`` from
``/proc/self/status``: torch's allocations are invisible to tracemalloc) is its own. Frames per
second count decoding and preprocessing, after one untimed warm-up frame (one-time allocator and
kernel set-up). Both ways use the same randomly initialised weights; the script checks that they
give the same maps. Results go to a JSON file and a markdown table on stdout.

Usage::

    python bench/attention.py                      # 32 frames at 480p, 2 frames at 2560x1440
    python bench/attention.py --frames 8 --frames-1440 1 --repeats 1    # a quick look
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
from fractions import Fraction
from pathlib import Path

from measure import clock, elapsed, peak_rss_mb  # bench/measure.py

from labkit.environment import describe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "davis-tour.mp4"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--video",
        type=Path,
        default=DEFAULT_VIDEO,
        help="480p input video (default: the shared DAVIS tour, 854x480, cropped to 848x480)",
    )
    parser.add_argument(
        "--model",
        default="vit_small_patch16_224",
        help="timm ViT, random init: speed and memory do not depend on the weights",
    )
    parser.add_argument("--frames", type=int, default=32, help="frames timed at 480p")
    parser.add_argument(
        "--frames-1440",
        type=int,
        default=2,
        help="frames at 2560x1440; few, as one ViT-S/16 frame there has 14,401 tokens "
        "and takes about a minute on 2 CPU cores either way (0 skips the case)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="labkit's frames per forward pass"
    )
    parser.add_argument(
        "--labkit-backend",
        choices=("pyav", "decord", "auto"),
        default="pyav",
        help="labkit.video backend; pyav, the plain loop's reader, by default (auto: "
        "decord, as open_video picks)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs per configuration, interleaved labkit/plain; the median is reported "
        "(other jobs on a shared machine make single runs noisy)",
    )
    parser.add_argument(
        "--repeats-1440",
        type=int,
        default=1,
        help="runs per configuration at 2560x1440 (peak memory varies little)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "attention.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON config: run one measurement
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# one measurement, in its own process


def _build_model(name: str):
    import torch

    from labkit.models import load_backbone

    torch.manual_seed(0)  # same weights in every process
    return load_backbone(name)


def _run_labkit(cfg: dict):
    from labkit.attention import extract_video
    from labkit.video import open_video

    model = _build_model(cfg["model"])
    video = open_video(cfg["video"], backend=cfg["backend"])
    indices = list(range(cfg["frames"]))
    if cfg["warmup"]:
        extract_video(model, video, [0], batch_size=1, progress=False)
    start = clock()
    out = extract_video(model, video, indices, batch_size=cfg["batch_size"], progress=False)
    return out.attention.numpy(), elapsed(start)


def _run_plain(cfg: dict):
    import av
    import torch

    from labkit.models import normalization, patch_size

    model = _build_model(cfg["model"])
    for block in model.blocks:
        block.attn.fused_attn = False  # timm's explicit softmax(q k^T) path, matrix kept
    captured = {}
    model.blocks[-1].attn.attn_drop.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("attn", out)  # (1, h, N, N), softmaxed
    )
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in normalization(model))
    p = patch_size(model)
    container = av.open(str(cfg["video"]))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame-threaded decoding, as labkit's PyAV reader uses
    decoded = container.decode(stream)

    def one():
        frame = torch.from_numpy(next(decoded).to_ndarray(format="rgb24"))  # (H, W, 3) uint8
        img = (frame.permute(2, 0, 1).float() / 255 - mean) / std
        h, w = img.shape[1] - img.shape[1] % p, img.shape[2] - img.shape[2] % p
        img = img[:, :h, :w]  # DINO crops to a multiple of the patch size, top-left kept
        model(img[None])
        attn = captured.pop("attn")[0, :, 0, model.num_prefix_tokens :]  # (h, P)
        return attn.reshape(-1, h // p, w // p).clone()  # a copy: a view would keep all N x N alive

    with torch.no_grad():
        if cfg["warmup"]:
            one()
            container.seek(0)
            decoded = container.decode(stream)
        start = clock()
        maps = [one() for _ in range(cfg["frames"])]
        spent = elapsed(start)
    container.close()
    return torch.stack(maps).numpy(), spent


def worker(cfg: dict) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    maps, (seconds, cpu_seconds) = (_run_labkit if cfg["method"] == "labkit" else _run_plain)(cfg)
    np.save(cfg["maps_out"], maps)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "frames_per_cpu_second": cfg["frames"] / cpu_seconds,
                "fps": cfg["frames"] / seconds,
                "peak_rss_mb": peak_rss_mb(),
                "threads": torch.get_num_threads(),
                "maps_shape": list(maps.shape),
            }
        )
    )


# ------------------------------------------------------------------------------------------------
# orchestration


def make_1440p_clip(source: Path, frames: int, out: Path) -> Path:
    """Upscale the first frames of ``source`` to 2560x1440 and encode them with libx264."""
    import av

    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 2560, 1440, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            big = frame.reformat(width=2560, height=1440, format="yuv420p", interpolation="BICUBIC")
            big.pts, big.time_base = i, Fraction(1, 24)  # frame i at i/24 s
            for packet in stream.encode(big):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out


def run_worker(cfg: dict) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg['method']} {cfg['case']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    import numpy as np

    if not args.video.is_file():
        sys.exit(f"video not found: {args.video} (pass --video)")
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": describe(),
        "settings": {k: str(v) for k, v in vars(args).items() if k != "worker"},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("480p", args.video, args.frames, True, args.repeats)]
        if args.frames_1440 > 0:
            clip = make_1440p_clip(args.video, args.frames_1440, Path(tmp) / "clip1440.mp4")
            cases.append(("2560x1440", clip, args.frames_1440, False, args.repeats_1440))
        for case, video, frames, warmup, repeats in cases:
            maps = {}
            for repeat in range(repeats):
                for method in ("labkit", "plain") if repeat % 2 == 0 else ("plain", "labkit"):
                    cfg = {
                        "method": method,
                        "case": case,
                        "video": str(video),
                        "frames": frames,
                        "model": args.model,
                        "batch_size": min(args.batch_size, frames),
                        "backend": args.labkit_backend if method == "labkit" else "pyav",
                        "warmup": warmup,
                        "maps_out": str(Path(tmp) / f"{case}-{method}.npy"),
                    }
                    run = {**cfg, **run_worker(cfg), "repeat": repeat}
                    del run["maps_out"]
                    results["runs"].append(run)
                    maps[method] = np.load(cfg["maps_out"])
                    print(
                        f"  {case} {method} #{repeat}: {run['fps']:.3f} fps, "
                        f"peak {run['peak_rss_mb']:.0f} MB",
                        file=sys.stderr,
                    )
                    _write(args.out, results)  # so far, in case a later run fails
            diff = float(np.abs(maps["labkit"] - maps["plain"]).max())
            results.setdefault("max_abs_map_difference", {})[case] = diff
            if diff > 1e-4:
                raise SystemExit(f"{case}: labkit and plain maps differ by {diff}")
    results["load_average_end"] = os.getloadavg()
    results["summary"] = summarize(results["runs"])
    _write(args.out, results)
    print(markdown(results))
    print(f"\nwritten {args.out}")


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for case in dict.fromkeys(r["case"] for r in runs):
        row = {"case": case}
        for method in ("labkit", "plain"):
            mine = [r for r in runs if r["case"] == case and r["method"] == method]
            if not mine:
                continue
            row[method] = {
                "fps": statistics.median(r["fps"] for r in mine),
                "fps_runs": [round(r["fps"], 4) for r in mine],
                "frames_per_cpu_second": statistics.median(
                    r["frames_per_cpu_second"] for r in mine
                ),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
                "batch_size": mine[0]["batch_size"] if method == "labkit" else 1,
                "frames": mine[0]["frames"],
            }
        if "labkit" in row and "plain" in row:
            lab, plain = row["labkit"], row["plain"]
            row["speedup"] = lab["fps"] / plain["fps"]
            row["cpu_speedup"] = lab["frames_per_cpu_second"] / plain["frames_per_cpu_second"]
            row["memory_ratio"] = lab["peak_rss_mb"] / plain["peak_rss_mb"]
        rows.append(row)
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    load = m["load_average_1m"]
    lines = [
        f"Attention maps, {results['settings']['model']} (random init), "
        f"{m['processor']}, {m['cpu_count']} cores, GPU: {m.get('device_name', 'none')}, "
        f"torch {m['torch']}, "
        f"{results['date']} (1-min load average at start: {load:.1f})",
        "",
        "| input | method | batch | frames | frames/s (median) | frames per CPU-second "
        "| peak RSS (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["summary"]:
        for method in ("labkit", "plain"):
            if method in row:
                r = row[method]
                lines.append(
                    f"| {row['case']} | {method} | {r['batch_size']} | {r['frames']} | "
                    f"{r['fps']:.3f} | {r['frames_per_cpu_second']:.3f} | {r['peak_rss_mb']:.0f} |"
                )
    lines.append("")
    for row in results["summary"]:
        if "speedup" in row:
            lines.append(
                f"- {row['case']}: labkit {row['speedup']:.2f}x the plain loop's frames/s "
                f"({row['cpu_speedup']:.2f}x per CPU-second), {row['memory_ratio']:.2f}x its peak "
                f"memory; maps agree to {results['max_abs_map_difference'][row['case']]:.1e}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
