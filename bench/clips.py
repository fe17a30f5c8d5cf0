"""Clip loading: ``ClipDataset.__getitem__`` clips per second before and after the frame cache
and the batched augmentations (issue 13), at the demo's settings.

"Before" is ``labkit/train/data.py`` as of a given commit (default f1caaa2, the last one without
them), loaded from git into a module of its own; "after" is the working tree's, with the cache
off (the batched augmentations alone) and on. One process, one torch thread, the same clips and
seeds for every variant; the variants take turns within each round, so a busy machine slows
them alike, and the ratios are medians over rounds. CPU seconds (this process's, all threads)
are reported beside wall seconds: on a shared machine they move less.

Usage::

    OMP_NUM_THREADS=1 python bench/clips.py [--rounds 5] [--clips 40] [--mode dora] [--profile]

Writes ``bench/results/clips.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import clock, elapsed  # noqa: E402

from labkit.data import default_video  # noqa: E402
from labkit.train.data import ClipDataset  # noqa: E402


def old_module(commit: str):
    """``labkit/train/data.py`` at ``commit``, imported as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{commit}:labkit/train/data.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "data_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("data_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="f1caaa2", help="commit of the 'before' data.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=40, help="clips per variant and round")
    parser.add_argument("--mode", choices=("dora", "dino"), default="dora")
    parser.add_argument("--pre-crop", action="store_true", help="DoRA's pre-crop (dora only)")
    parser.add_argument("--profile", action="store_true", help="print a profile of each variant")
    args = parser.parse_args()
    torch.set_num_threads(1)

    # the demo: 96 px global views, 2 local crops of 48 px, clips of 4 frames 4 apart, the
    # synthetic 640 x 360 video of 120 frames decoded at 1.5 x 96 = 144 px
    settings = dict(
        num_frames=4,
        frame_step=4,
        mode=args.mode,
        img_size=96,
        local_size=48,
        num_local=2,
        decode_size=144,
        pre_crop=args.pre_crop,
    )
    video = default_video()
    before = old_module(args.before)
    variants = {
        "before": before.ClipDataset(video, **settings),
        "batched augmentations": ClipDataset(video, cache_mb=0, **settings),
        "cache + batched augmentations": ClipDataset(video, **settings),
    }
    n = len(variants["before"])
    items = [((7 * i) % n, 1000 + i) for i in range(args.clips)]
    for ds in variants.values():
        ds[items[0]]  # open the decoder, fill the cache: not part of the steady state
    cache_start = clock()
    ClipDataset(video, **settings).cache_frames()
    cache_wall, cache_cpu = elapsed(cache_start)

    # the augmentations alone, on clips decoded beforehand (uint8 (T, 3, H, W))
    clips = [
        torch.from_numpy(variants["before"].read_clip(i)[2]).permute(0, 3, 1, 2) for i, _ in items
    ]
    augment = {
        "before": variants["before"],
        "batched augmentations": variants["batched augmentations"],
    }

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    views: dict[str, list[tuple[float, float]]] = {name: [] for name in augment}
    for _ in range(args.rounds):
        for name, ds in variants.items():
            start = clock()
            for item in items:
                ds[item]
            times[name].append(elapsed(start))
        for name, ds in augment.items():
            start = clock()
            for clip, (_, seed) in zip(clips, items):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    ds._views(clip)
            views[name].append(elapsed(start))

    rate = {
        name: {
            "clips_per_s_wall": args.clips / statistics.median(w for w, _ in t),
            "clips_per_cpu_s": args.clips / statistics.median(c for _, c in t),
        }
        for name, t in times.items()
    }
    ratios = {
        name: {
            "wall": statistics.median(b[0] / a[0] for a, b in zip(t, times["before"])),
            "cpu": statistics.median(b[1] / a[1] for a, b in zip(t, times["before"])),
        }
        for name, t in times.items()
        if name != "before"
    }
    augment_only = {
        "ms_per_clip_wall": {
            name: 1000 * statistics.median(w for w, _ in t) / args.clips
            for name, t in views.items()
        },
        "speedup_wall": statistics.median(
            b[0] / a[0] for a, b in zip(views["batched augmentations"], views["before"])
        ),
        "speedup_cpu": statistics.median(
            b[1] / a[1] for a, b in zip(views["batched augmentations"], views["before"])
        ),
    }
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "settings": {**settings, "video": str(video), "clips": args.clips, "rounds": args.rounds},
        "before_commit": args.before,
        "cache_fill_s": {"wall": cache_wall, "cpu": cache_cpu},
        "rate": rate,
        "speedup_over_before": ratios,
        "augmentations_alone": augment_only,
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "clips.json").write_text(json.dumps(result, indent=2))

    if args.profile:
        for name, ds in variants.items():
            profile = cProfile.Profile()
            profile.enable()
            for item in items:
                ds[item]
            profile.disable()
            print(f"\n==== {name}")
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
