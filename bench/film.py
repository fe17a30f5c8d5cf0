"""Benchmark: attention films of a video, labkit's film path against a DINO-style per-frame loop.

Both write the same two films, each frame at the video's size with a caption: the three heads as
RGB over the frame (``heads.mp4``) and the head-mean picture of DINO's ``video_generation.py``
(``mean.mp4``), encoded frame by frame with the same H.264 writer (:class:`labkit.viz.Mp4Writer`).
They differ in how the attention is computed:

* **labkit**: :func:`labkit.film.write_films`: frames decoded ``--batch-size`` at a time (PyAV),
  one forward pass per batch with fused attention in every block, the last block's [CLS] row
  computed from q and k (no value path, no MLP after it, nothing N x N);
* **dino**: ``video_generation.py``'s loop: one frame at a time (PyAV, sequential), crop to a
  multiple of the patch size, normalise, full forward with ``fused_attn=False`` and a hook keeping
  the last block's softmaxed (h, N, N) attention matrix, then its [CLS] row. (DINO itself goes on
  to save every picture as a JPEG and then loads all of them into memory for OpenCV's writer; here
  each picture is rendered and encoded at once, so the comparison is about the model side.)

Cases: the shared DAVIS tour at its 854x480, and its first frames upscaled (bicubic) to 1920x1080
and encoded once with libx264 before timing. Each configuration runs in a fresh subprocess with
``--threads`` torch threads, so its peak resident memory (``VmHWM``) is its own; frames per second
count decoding, the model, rendering and encoding, after one untimed warm-up forward pass. Both
ways use the same randomly initialised ViT (speed and memory do not depend on the weights); the
script checks that their decoded head-mean films agree. JSON goes to ``bench/results/film.json``,
a markdown table to stdout.

Usage::

    python bench/film.py                               # 24 frames at 854x480, 3 at 1920x1080
    python bench/film.py --frames 8 --frames-1080 1    # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

from measure import clock, peak_rss_mb  # bench/measure.py

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "davis-tour.mp4"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--video",
        type=Path,
        default=DEFAULT_VIDEO,
        help="input video (default: the shared DAVIS tour, 854x480)",
    )
    parser.add_argument(
        "--model",
        default="vit_small_patch16_224",
        help="timm ViT, random init (DINO ViT-S/16's shape)",
    )
    parser.add_argument("--frames", type=int, default=24, help="frames filmed at 854x480")
    parser.add_argument(
        "--frames-1080",
        type=int,
        default=3,
        help="frames filmed at 1920x1080: one ViT-S/16 frame there has 8,041 tokens "
        "and takes tens of seconds on 2 CPU cores (0 skips the case)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="labkit's frames per forward pass"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "film.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON config: run one measurement
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# one measurement, in its own process


def _build_model(name: str):
    from labkit.models import load_backbone

    return load_backbone(name, seed=0)  # the same weights in every process


def _run_labkit(cfg: dict) -> tuple[float, float]:
    from labkit.attention import extract
    from labkit.film import write_films
    from labkit.models import prepare_images
    from labkit.video import open_video

    model = _build_model(cfg["model"])
    with open_video(cfg["video"], backend="pyav") as video:  # warm-up: one frame, untimed
        extract(model, prepare_images(video.get([0]), model), attention=True, kinds=())
    start = clock()
    write_films(
        cfg["video"],
        model,
        cfg["out_dir"],
        methods=("heads", "mean"),
        batch_size=cfg["batch_size"],
        num_frames=cfg["frames"],
    )
    return start


def _run_dino(cfg: dict) -> tuple[float, float]:
    import av
    import numpy as np
    import torch

    from labkit.film import FilmBatch, FilmConfig, render_film
    from labkit.models import normalization, patch_size, weights_label
    from labkit.viz import Mp4Writer

    model = _build_model(cfg["model"])
    for block in model.blocks:
        block.attn.fused_attn = False  # timm's explicit softmax(q k^T) path, matrix kept
    captured = {}
    model.blocks[-1].attn.attn_drop.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("attn", out)  # (1, h, N, N), softmaxed
    )
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in normalization(model))
    p = patch_size(model)
    film_cfg = FilmConfig(methods=("heads", "mean"))
    label = weights_label(model)

    def attention(frame: np.ndarray) -> torch.Tensor:
        img = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - mean) / std
        h, w = img.shape[1] - img.shape[1] % p, img.shape[2] - img.shape[2] % p
        model(img[None, :, :h, :w])  # DINO crops to a multiple of the patch size, top-left kept
        attn = captured.pop("attn")[0, :, 0, model.num_prefix_tokens :]  # (h, P)
        return attn.reshape(1, -1, h // p, w // p).clone()  # a copy: a view would keep N x N alive

    with torch.no_grad(), av.open(cfg["video"]) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate)
        decoded = container.decode(stream)
        first = next(decoded).to_ndarray(format="rgb24")
        attention(first)  # warm-up, untimed
        container.seek(0)
        decoded = container.decode(stream)
        out = Path(cfg["out_dir"])
        start = clock()
        with (
            Mp4Writer(out / "heads.mp4", fps, crf=film_cfg.crf, preset=film_cfg.preset) as heads,
            Mp4Writer(out / "mean.mp4", fps, crf=film_cfg.crf, preset=film_cfg.preset) as means,
        ):
            for i in range(cfg["frames"]):
                frame = next(decoded).to_ndarray(format="rgb24")  # (H, W, 3) uint8
                batch = FilmBatch(
                    np.array([i]), frame[None], attention(frame), None, None, None, None
                )
                heads.write(
                    render_film("heads", batch, p, film_cfg, label=label, total=cfg["frames"])
                )
                means.write(
                    render_film("mean", batch, p, film_cfg, label=label, total=cfg["frames"])
                )
    return start


def worker(cfg: dict) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    start = (_run_labkit if cfg["method"] == "labkit" else _run_dino)(cfg)  # after load and warm-up
    wall, cpu = clock()
    print(
        json.dumps(
            {
                "seconds": wall - start[0],
                "cpu_seconds": cpu - start[1],
                "peak_rss_mb": peak_rss_mb(),
                "threads": torch.get_num_threads(),
            }
        )
    )


# ------------------------------------------------------------------------------------------------
# orchestration


def make_clip(source: Path, frames: int, size: tuple[int, int], out: Path) -> Path:
    """The first ``frames`` frames of ``source`` resized (bicubic) to ``size`` = (H, W), H.264."""
    import av

    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        rate = src.streams.video[0].average_rate
        stream = dst.add_stream("libx264", rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            big = frame.reformat(
                width=size[1], height=size[0], format="yuv420p", interpolation="BICUBIC"
            )
            big.pts, big.time_base = i, Fraction(1, 1) / rate
            for packet in stream.encode(big):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out


def run_worker(cfg: dict) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(cfg["threads"]),
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
        cfg = json.loads(args.worker)
        worker(cfg)
        return
    import numpy as np

    from labkit.environment import describe
    from labkit.video import open_video

    if not args.video.is_file():
        sys.exit(f"video not found: {args.video} (pass --video)")
    import torch

    torch.set_num_threads(args.threads)
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": describe(),
        "settings": {k: str(v) for k, v in vars(args).items() if k != "worker"},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("854x480", args.video, args.frames)]
        if args.frames_1080 > 0:
            clip = make_clip(args.video, args.frames_1080, (1080, 1920), Path(tmp) / "clip1080.mp4")
            cases.append(("1920x1080", clip, args.frames_1080))
        for case, video, frames in cases:
            films = {}
            for method in ("labkit", "dino"):
                cfg = {
                    "method": method,
                    "case": case,
                    "video": str(video),
                    "frames": frames,
                    "model": args.model,
                    "batch_size": min(args.batch_size, frames),
                    "threads": args.threads,
                    "out_dir": str(Path(tmp) / f"{case}-{method}"),
                }
                Path(cfg["out_dir"]).mkdir()
                run = {**cfg, **run_worker(cfg)}
                run["fps"] = frames / run["seconds"]
                run["frames_per_cpu_second"] = frames / run["cpu_seconds"]
                del run["out_dir"]
                results["runs"].append(run)
                with open_video(Path(cfg["out_dir"]) / "mean.mp4", backend="pyav") as film:
                    films[method] = film.get(np.arange(len(film))).astype(np.int16)
                    run["film_frames"], run["film_size"] = len(film), list(film.size)
                print(
                    f"  {case} {method}: {run['fps']:.3f} fps, peak {run['peak_rss_mb']:.0f} MB",
                    file=sys.stderr,
                )
                _write(args.out, results)
            diff = np.abs(films["labkit"] - films["dino"])
            results.setdefault("mean_film_difference", {})[case] = {
                "mean_abs": float(diff.mean()),
                "max_abs": int(diff.max()),
            }
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
        mine = {r["method"]: r for r in runs if r["case"] == case}
        row = {"case": case, **mine}
        if "labkit" in mine and "dino" in mine:
            lab, dino = mine["labkit"], mine["dino"]
            row["speedup"] = lab["fps"] / dino["fps"]
            row["cpu_speedup"] = lab["frames_per_cpu_second"] / dino["frames_per_cpu_second"]
            row["memory_ratio"] = lab["peak_rss_mb"] / dino["peak_rss_mb"]
        rows.append(row)
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Attention films (heads + mean), {results['settings']['model']} (random init), "
        f"{m['processor']}, {m['cpu_count']} cores, {results['settings']['threads']} torch "
        "threads, "
        f"GPU: {m.get('device_name', 'none')}, torch {m['torch']}, {results['date']} "
        f"(1-min load average at start: {m['load_average_1m']:.1f})",
        "",
        "| input | method | batch | frames | frames/s | frames per CPU-second | peak RSS (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["summary"]:
        for method in ("labkit", "dino"):
            if method in row:
                r = row[method]
                batch = r["batch_size"] if method == "labkit" else 1
                lines.append(
                    f"| {row['case']} | {method} | {batch} | {r['frames']} | {r['fps']:.3f} | "
                    f"{r['frames_per_cpu_second']:.3f} | {r['peak_rss_mb']:.0f} |"
                )
    lines.append("")
    for row in results["summary"]:
        if "speedup" in row:
            d = results["mean_film_difference"][row["case"]]
            lines.append(
                f"- {row['case']}: labkit {row['speedup']:.2f}x the DINO loop's frames/s "
                f"({row['cpu_speedup']:.2f}x per CPU-second), {row['memory_ratio']:.2f}x its peak "
                f"memory; decoded head-mean films differ by {d['mean_abs']:.2f} on average "
                f"(max {d['max_abs']}) of 255"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
