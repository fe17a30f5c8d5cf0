"""torch's thread count follows the CPUs available to the process (affinity, cgroup quota)."""

from __future__ import annotations

import pytest
import torch

from labkit import environment
from labkit.environment import (
    automatic_threads,
    available_cpus,
    cgroup_cpu_limit,
    configure_threads,
    threads_for,
)


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def no_proc(tmp_path):
    return tmp_path / "no-such-file"


@pytest.mark.parametrize(
    "text, cpus",
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path, text, cpus):
    write(tmp_path, "cpu.max", text)
    assert cgroup_cpu_limit(tmp_path, no_proc(tmp_path)) == cpus


def test_cgroup_v2_reads_the_process_own_group_first(tmp_path):
    write(tmp_path, "cpu.max", "max 100000")
    write(tmp_path, "user.slice/job-7/cpu.max", "300000 100000")
    write(tmp_path, "proc-cgroup", "0::/user.slice/job-7\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "proc-cgroup") == 3.0


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct", "."])
def test_cgroup_v1_quota_and_period(tmp_path, folder):
    write(tmp_path, f"{folder}/cpu.cfs_quota_us", "400000\n")
    write(tmp_path, f"{folder}/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path, no_proc(tmp_path)) == 4.0


def test_cgroup_v1_unlimited_and_missing(tmp_path):
    assert cgroup_cpu_limit(tmp_path, no_proc(tmp_path)) is None  # no files at all
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path, no_proc(tmp_path)) is None


def test_available_cpus_is_affinity_capped_by_the_quota(tmp_path):
    empty = tmp_path / "none"
    assert available_cpus(affinity=set(range(8)), cgroup_root=empty, proc_cgroup=empty) == 8
    write(tmp_path, "cpu.max", "200000 100000")
    assert available_cpus(affinity=set(range(8)), cgroup_root=tmp_path, proc_cgroup=empty) == 2
    assert available_cpus(affinity={0}, cgroup_root=tmp_path, proc_cgroup=empty) == 1
    write(tmp_path, "cpu.max", "150000 100000")  # 1.5 CPUs: one thread runs unthrottled
    assert available_cpus(affinity=set(range(8)), cgroup_root=tmp_path, proc_cgroup=empty) == 1
    write(tmp_path, "cpu.max", "20000 100000")  # a fifth of a CPU: still one thread
    assert available_cpus(affinity=set(range(8)), cgroup_root=tmp_path, proc_cgroup=empty) == 1


def test_available_cpus_uses_the_affinity_mask(monkeypatch, tmp_path):
    monkeypatch.setattr(environment.os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    monkeypatch.setattr(environment, "CGROUP_ROOT", tmp_path)
    assert available_cpus(cgroup_root=tmp_path, proc_cgroup=no_proc(tmp_path)) == 3


@pytest.mark.parametrize(
    "cpus, workers, processes, expected",
    [
        (8, 0, 1, 8),
        (8, 2, 1, 6),
        (8, 8, 1, 1),
        (8, 12, 1, 1),
        (8, 1, 2, 3),
        (2, 1, 1, 1),
        (1, 0, 4, 1),
    ],
)
def test_threads_are_cpus_less_workers(cpus, workers, processes, expected):
    assert automatic_threads(workers, processes, cpus=cpus) == expected


def test_omp_num_threads_caps_the_automatic_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert automatic_threads(0, cpus=8) == 3
    assert automatic_threads(0, cpus=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert automatic_threads(0, cpus=8) == 8


def test_configure_threads_sets_torch(monkeypatch):
    monkeypatch.setattr(environment, "available_cpus", lambda: 5)
    assert configure_threads(workers=2) == 3 == torch.get_num_threads()
    assert configure_threads(0) == 5 == torch.get_num_threads()
    assert configure_threads(2, workers=4) == 2 == torch.get_num_threads()  # explicit wins
    with pytest.raises(ValueError, match="threads"):
        configure_threads(-1)
    torch.set_num_threads(1)
    with threads_for(2) as count:
        assert count == 2 == torch.get_num_threads()
    assert torch.get_num_threads() == 1


def test_cli_threads_reach_torch(monkeypatch, tmp_path):
    from labkit import cli

    seen = {}

    def stop(cfg, progress=True):
        seen["threads"] = torch.get_num_threads()
        raise RuntimeError("stop here")

    monkeypatch.setattr("labkit.explore.explore", stop)
    torch.set_num_threads(1)
    assert (
        cli.main(
            [
                "attention",
                "--threads",
                "2",
                "--model-kwargs",
                "{depth: 1}",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        != 0
    )
    assert seen["threads"] == 2

    from labkit.eval import runner

    def stop_eval(cfg, *, progress):
        seen["eval"] = torch.get_num_threads()
        raise RuntimeError("stop eval")

    monkeypatch.setattr(runner, "_evaluate", stop_eval)
    torch.set_num_threads(1)
    assert (
        cli.main(
            [
                "eval",
                "--models",
                "random=vit_small_patch16_224",
                "--threads",
                "2",
                "--model-kwargs",
                "{depth: 1}",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        != 0
    )
    assert seen["eval"] == 2 and torch.get_num_threads() == 1  # restored after the evaluation


def test_trainer_takes_the_configured_threads(tmp_path, monkeypatch):
    from labkit.train import TrainConfig, Trainer

    cfg = TrainConfig(
        model_kwargs=dict(depth=1, embed_dim=32, num_heads=4),
        img_size=32,
        local_size=16,
        out_dim=16,
        hidden_dim=16,
        bottleneck_dim=8,
        num_frames=2,
        frame_step=2,
        num_local=1,
        batch_size=1,
        steps=1,
        threads=2,
        out_dir=str(tmp_path),
    )
    torch.set_num_threads(1)
    trainer = Trainer(cfg, progress=False)
    try:
        assert trainer.threads == 2 == torch.get_num_threads()
        assert trainer.summary(0.0, 0)["torch_threads"] == 2
    finally:
        trainer.close()
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(environment, "available_cpus", lambda: 6)
    trainer = Trainer(
        cfg.replace(threads=0, num_workers=2, out_dir=str(tmp_path / "b")), progress=False
    )
    try:
        assert trainer.threads == 4 == torch.get_num_threads()
    finally:
        trainer.close()


def test_pipeline_threads_reach_torch_and_the_kernels(tmp_path, monkeypatch):
    import os

    from labkit import pipeline

    seen = {}

    def stages(cfg, *args):
        seen.update(torch=torch.get_num_threads(), omp=os.environ.get("OMP_NUM_THREADS"))
        return tmp_path / "report.html"

    monkeypatch.setattr(pipeline, "_run_stages", stages)
    monkeypatch.setattr(pipeline, "check_plan", lambda cfg, stages: None)
    torch.set_num_threads(1)
    cfg = pipeline.PipelineConfig(runs_dir=str(tmp_path), threads=2, pretrained=False)
    pipeline.run_pipeline(cfg, say=lambda m: None)
    assert seen == {"torch": 2, "omp": "2"}
    assert torch.get_num_threads() == 1 and "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setattr(environment, "available_cpus", lambda: 3)
    pipeline.run_pipeline(
        cfg.__class__(runs_dir=str(tmp_path), pretrained=False), say=lambda m: None
    )
    assert seen == {"torch": 3, "omp": "3"}
    with pytest.raises(ValueError, match="threads"):
        pipeline.PipelineConfig(runs_dir=str(tmp_path), threads=-1)
