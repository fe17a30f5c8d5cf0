"""Benchmark: how fast the attention explorer answers a frame-slider move.

What is timed, on a 100-frame clip at 224 px (shorter side) with ViT-S/16 (random weights: speed
does not depend on them):

* **fill**: the one batched pass over the clip for the shown block (attention, tokens, keys), the
  clip-level k-means and DoRA's discovery and tracking: paid once per layer (k-means once per k);
* **slider, cold**: a frame-slider move to a frame not shown before, through the app's own
  callback (``IntSlider.value = t`` -> four panels rendered, JPEG-encoded, set on the Image
  widgets): upsample + blend per panel, no matplotlib;
* **slider, warm**: the same move to a frame already shown: the encoded panels come from the LRU;
* **state changes** with the layer computed: opacity, heads, Sinkhorn-Knopp, k (k-means once);
* per panel render and the encoders (JPEG q90 4:4:4, PNG level 1) for one panel.

What is not timed: the browser's side (comm message to the front end, image decode, paint). The
app runs without a front end here, so setting a widget value only serialises the message.

Usage::

    python bench/explorer.py                          # DAVIS tour, 100 frames from frame 0
    python bench/explorer.py --video "" --frames 50   # the synthetic default video

Writes a JSON file (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from labkit.environment import describe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "davis-tour.mp4"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--video",
        default=str(DEFAULT_VIDEO),
        help="mp4 or frame folder; empty string: the lab's synthetic default video",
    )
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT, random init")
    parser.add_argument(
        "--frames", type=int, default=100, help="frames in the clip (the issue's case)"
    )
    parser.add_argument("--step", type=int, default=1, help="clip stride in video frames")
    parser.add_argument("--img-size", type=int, default=224, help="shorter side of the frames")
    parser.add_argument("--k", type=int, default=5, help="k-means segments")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "explorer.json")
    return parser.parse_args(argv)


def stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 2),
        "max_ms": round(ms[-1], 2),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from labkit.viz.explorer import PANELS, AttentionExplorer, encode_image

    info = describe()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    t0 = time.perf_counter()
    ex = AttentionExplorer(
        args.video or None,
        args.model,
        num_frames=args.frames,
        frame_step=args.step,
        img_size=args.img_size,
        k=args.k,
        batch_size=args.batch_size,
        progress=False,
    )
    load_s = time.perf_counter() - t0
    T, H, W = ex.frames.shape[:3]

    ex.widget()  # builds the app's own controls and callbacks, no front end
    ui = ex._ui
    t0 = time.perf_counter()
    ex.layer_data(ex.state.layer)
    extract_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex.segments(ex.state.layer, ex.state.k)
    kmeans_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex.compute()
    dora_s = time.perf_counter() - t0
    ex._refresh()  # first picture (frame 0)

    def move(t: int) -> float:
        start = time.perf_counter()
        ui["frame"].value = t
        return time.perf_counter() - start

    order = list(range(1, T)) + [0]
    cold = [move(t) for t in order]  # every frame once: render + encode
    warm = [move(t) for t in order]  # again: cached bytes
    rng = np.random.default_rng(0)
    jumps = [move(int(t)) for t in rng.integers(0, T, size=200)]  # random scrubbing, all cached

    def change(**kw) -> float:
        start = time.perf_counter()
        for name, value in kw.items():
            if name == "heads":
                ui["syncing"] = True
                for control, h in zip(ui["heads"][:-1], value[:-1]):
                    control.value = h
                ui["syncing"] = False
                ui["heads"][-1].value = value[-1]
            else:
                ui[name].value = value
        return time.perf_counter() - start

    changes = {
        "opacity 0.5 -> 0.7": change(alpha=0.7),
        "heads -> (3, 4, 5) (new colour grids + DoRA discovery/tracking)": change(heads=(3, 4, 5)),
        "Sinkhorn-Knopp off (DoRA discovery/tracking)": change(sinkhorn=False),
        f"k {args.k} -> {args.k + 2} (clip k-means)": change(k=args.k + 2),
        f"k back to {args.k} (cached)": change(k=args.k),
    }
    after_change = [move(t) for t in range(T)]  # scrubbing in the new state, cold

    s = ex.state
    panel_ms = {}
    for name in PANELS:
        times = []
        for t in range(min(T, 30)):
            start = time.perf_counter()
            ex.panel(name, replace(s, frame=t))
            times.append(time.perf_counter() - start)
        panel_ms[name] = stats_ms(times)
    img = ex.panel("segments", s)
    enc = {}
    for fmt in ("jpeg", "png"):
        times = []
        for _ in range(30):
            start = time.perf_counter()
            data = encode_image(img, fmt)
            times.append(time.perf_counter() - start)
        enc[fmt] = {**stats_ms(times), "bytes": len(data)}

    result = {
        "date": date,
        "machine": info,
        "clip": {
            "video": args.video or "synthetic default",
            "frames": T,
            "size": [H, W],
            "grid": list(ex.grid),
            "model": args.model,
            "k": args.k,
        },
        "seconds": {
            "load_model_and_read_clip": round(load_s, 2),
            "extract_layer": round(extract_s, 2),
            "kmeans_clip": round(kmeans_s, 2),
            "dora_and_colour_grids": round(dora_s, 2),
        },
        "slider_cold": stats_ms(cold),
        "slider_warm": stats_ms(warm),
        "random_jumps_cached": stats_ms(jumps),
        "slider_cold_after_state_change": stats_ms(after_change),
        "state_change_ms": {k: round(v * 1e3, 1) for k, v in changes.items()},
        "panel_render": panel_ms,
        "encode_one_panel": enc,
        "encoded_cache_mb": round(ex._encoded.size / 2**20, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"# Explorer slider latency, {date}")
    print(
        f"{info['processor']}, {info['cpu_count']} cores "
        f"(load average {info['load_average_1m']} at start), "
        f"torch {info['torch']}"
    )
    print(
        f"clip: {result['clip']['video']}, {T} frames at {H}x{W}, grid {ex.grid[0]}x{ex.grid[1]}, "
        f"{args.model}\n"
    )
    print("| what | n | median ms | p95 ms | max ms |")
    print("| --- | --- | --- | --- | --- |")
    for label, key in (
        ("slider move, frame not shown before", "slider_cold"),
        ("slider move, frame shown before", "slider_warm"),
        ("random jumps, all cached", "random_jumps_cached"),
        ("slider move after a state change", "slider_cold_after_state_change"),
    ):
        r = result[key]
        print(f"| {label} | {r['n']} | {r['median_ms']} | {r['p95_ms']} | {r['max_ms']} |")
    for name, r in panel_ms.items():
        print(
            f"| render panel '{name}' | {r['n']} | {r['median_ms']} | {r['p95_ms']} "
            f"| {r['max_ms']} |"
        )
    for fmt, r in enc.items():
        print(
            f"| encode one panel, {fmt} ({r['bytes']} bytes) | {r['n']} | {r['median_ms']} "
            f"| {r['p95_ms']} | {r['max_ms']} |"
        )
    print("\n| one-off | seconds |")
    print("| --- | --- |")
    for k, v in result["seconds"].items():
        print(f"| {k} | {v} |")
    for k, v in changes.items():
        print(f"| state change: {k} | {v:.3f} |")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
