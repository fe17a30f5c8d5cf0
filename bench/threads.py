"""Benchmark: steps per second of a small DoRA training at two torch thread counts, one process.

Alternates the thread counts (``--order``) over ``--repeats`` rounds, each a fresh ``Trainer`` of
``--steps`` steps on the synthetic default video (the first two steps are not timed: warm-up).
Records the 1-minute load average before each run: on a shared machine other jobs decide much of
the result. Prints one JSON line per run and a summary (with ``labkit.environment.describe``).

Usage::

    python bench/threads.py                       # threads 2 then 8, three rounds, 12 steps
    python bench/threads.py --order 8 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from labkit.environment import available_cpus, describe
from labkit.train import TrainConfig, train

SMALL = dict(
    model_kwargs=dict(depth=4, embed_dim=192, num_heads=3),
    img_size=96,
    local_size=48,
    out_dim=1024,
    hidden_dim=256,
    bottleneck_dim=64,
    num_frames=4,
    frame_step=4,
    num_local=2,
    batch_size=4,
    lr=5e-4,
    warmup_epochs=0.0,
    steps_per_epoch=10,
    checkpoint_every=0,
    collapse_patience=0,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", type=int, nargs="+", default=[2, 8], help="thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)  # explicit thread counts only
    rows = []
    with tempfile.TemporaryDirectory(prefix="labkit-threads-") as tmp:
        for rep in range(args.repeats):
            for threads in args.order:
                cfg = TrainConfig(
                    **SMALL,
                    steps=args.steps,
                    threads=threads,
                    out_dir=os.path.join(tmp, f"run_{threads}_{rep}"),
                )
                load = os.getloadavg()[0]
                log = train(cfg, progress=False).log
                seconds = [r["seconds"] for r in log[2:]]
                rows.append(
                    {
                        "threads": threads,
                        "rep": rep,
                        "load_1m_before": round(load, 2),
                        "steps_per_s": len(seconds) / sum(seconds),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    means = {
        t: sum(r["steps_per_s"] for r in rows if r["threads"] == t) / args.repeats
        for t in args.order
    }
    env = describe()
    print(
        json.dumps(
            {
                "mean_steps_per_s": means,
                "available_cpus": available_cpus(),
                "cpu": env["processor"],
                "cpu_count": env["cpu_count"],
                "date": env["date"],
                "torch": env["torch"],
                "git_commit": env["git_commit"],
            }
        )
    )


if __name__ == "__main__":
    main()
