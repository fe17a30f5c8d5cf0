"""Distributed training: two CPU processes under torchrun (gloo) stay in sync and equal one process
with the same global batch, for DoRA and for TimeTuning (its Sinkhorn-Knopp spans the processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from labkit.train import TrainConfig, train

from tiny import TINY_TRAIN

pytestmark = pytest.mark.slow

# the shared tiny run, 3 steps, no stochastic depth; batch_size differs per run below
TINY = {**TINY_TRAIN, "steps": 3, "drop_path_rate": 0.0}
METHODS = {
    "dora": {},
    "dora_control": dict(control=True),  # the frozen-network control's loss: a mean over ranks
    "timetuning": dict(
        method="timetuning",
        head_dims=(64, 32),
        num_prototypes=16,
        trainable_blocks=1,
        lr=1e-3,
        num_frames=3,
    ),
}

WORKER = textwrap.dedent("""
    import json, sys, torch
    from labkit.train import TrainConfig, Trainer

    cfg = TrainConfig(**json.loads(sys.argv[1]))
    trainer = Trainer(cfg, progress=False)
    result = trainer.fit()
    torch.save(
        {
            "rank": trainer.rank,
            "world_size": trainer.world_size,
            "student": trainer.student.state_dict(),
            "teacher": trainer.teacher.state_dict() if trainer.teacher is not None else {},
            "center": trainer.loss_fn.center.clone() if trainer.loss_fn is not None else None,
            "losses": [r["loss"] for r in result.log],
            "log": result.log,
            "clips": trainer.loader(0, 1).batch_sampler.batch(0),
        },
        f"{sys.argv[2]}/rank{trainer.rank}.pt",
    )
    trainer.close()
    """)


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path, method):
    tiny = {**TINY, **METHODS[method]}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cfg = TrainConfig(**{**tiny, "batch_size": 2, "out_dir": str(tmp_path / "ddp")})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LABKIT_HEADLESS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        json.dumps(cfg.to_dict()),
        str(tmp_path),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [s["rank"] for s in ranks] == [0, 1] and ranks[0]["world_size"] == 2
    assert ranks[0]["clips"] != ranks[1]["clips"]  # each rank trains on its own clips ...
    for name in ("student", "teacher"):  # ... and yet the networks are identical
        for key, value in ranks[0][name].items():
            assert torch.equal(value, ranks[1][name][key]), (name, key)
    if method != "timetuning":
        assert torch.equal(ranks[0]["center"], ranks[1]["center"])
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the logged loss is the mean over ranks
    assert (tmp_path / "ddp" / "checkpoint.pth").is_file()  # written once, by rank 0

    # one process with the same global batch (4 clips) takes the same steps
    torch.set_num_threads(1)
    single = train(
        TrainConfig(**{**tiny, "batch_size": 4, "out_dir": str(tmp_path / "single")}),
        progress=False,
    )
    assert [r["loss"] for r in single.log] == pytest.approx(ranks[0]["losses"], abs=1e-5)
    state = torch.load(single.checkpoint, weights_only=True)
    network = "student" if method == "timetuning" else "teacher"
    for key, value in state[network].items():
        torch.testing.assert_close(value, ranks[0][network][key], rtol=1e-4, atol=1e-5)
    if method == "dora_control":
        controls = [[r["control_loss"] for r in rank["log"]] for rank in ranks]
        assert controls[0] == controls[1]
        assert [r["control_loss"] for r in single.log] == pytest.approx(controls[0], abs=1e-5)
        assert controls[0][0] == ranks[0]["losses"][0]  # the same networks before the update
    if method != "timetuning":
        torch.testing.assert_close(
            state["dino_loss"]["center"], ranks[0]["center"], rtol=1e-4, atol=1e-6
        )
    else:  # the diagnostics are means over the processes' clips, as one process sees them all
        for ours, theirs in zip(single.log, ranks[0]["log"]):
            assert ours["agreement"] == pytest.approx(theirs["agreement"], abs=1e-6)
            assert ours["target_confidence"] == pytest.approx(theirs["target_confidence"], abs=1e-5)
