"""labkit pipeline: training stages several at once (``jobs``), and the built-in videos by name
(``synthetic``, ``synthetic-hard``) in ``video_path`` and ``eval_data``.

The scheduler's tests replace the notebook runs with quick fakes (no kernel): what they check is
which stages run at once, with what environment and parameters, and what a failure keeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from labkit import pipeline
from labkit.data import default_dataset, default_video
from labkit.pipeline import PipelineConfig, StageFailed, group_jobs, is_complete, plan, run_pipeline
from labkit.report import dataset_title

from test_reliability import interrupt_pipeline

TINY_MODEL = {"depth": 2, "embed_dim": 96, "num_heads": 3}


def tiny(runs: Path, **changes) -> PipelineConfig:
    values = dict(
        name="jobs",
        runs_dir=str(runs),
        seeds=2,
        model_kwargs=TINY_MODEL,
        steps=3,
        img_size=64,
        batch_size=2,
        num_frames=3,
        eval_data=["synthetic"],
        pretrained=False,
        device="cpu",
        threads=2,
        train={"out_dim": 256, "num_local": 1, "local_size": 32},
    )
    values.update(changes)
    return PipelineConfig(**values)


def finish(out_dir: Path) -> None:
    """What a training notebook leaves: the outputs a complete stage has."""
    (out_dir / "checkpoint.pth").write_bytes(b"weights")
    (out_dir / "metrics.json").write_text("{}")


class Calls:
    """Records the fake notebook runs: how many ran at once at most, and what each was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.seen: dict[str, dict] = {}

    def enter(self, out_dir: Path, **seen) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.seen[Path(out_dir).name] = seen

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def test_group_jobs_automatic_and_capped() -> None:
    cpu, cuda = SimpleNamespace(jobs=0, device="cpu"), SimpleNamespace(jobs=0, device="cuda")
    assert group_jobs(cpu, stages=6, threads=2) == 2  # the threads, on a CPU
    assert group_jobs(cpu, stages=3, threads=16) == 3  # at most the stages to run
    assert group_jobs(cpu, stages=0, threads=16) == 1
    assert group_jobs(cuda, stages=6, threads=16) == 1  # one GPU: one at a time
    assert group_jobs(SimpleNamespace(jobs=4, device="cuda"), stages=6, threads=16) == 4
    assert group_jobs(SimpleNamespace(jobs=4, device="cpu"), stages=2, threads=1) == 2
    with pytest.raises(ValueError, match="jobs"):
        PipelineConfig(jobs=-1)


def test_stages_run_together(tmp_path: Path, monkeypatch) -> None:
    # 4 training stages, 2 at a time: each pair meets at a barrier, which only stages running at
    # the same time can pass (sequential runs would break it after its timeout)
    cfg = tiny(tmp_path, jobs=2)
    barrier, calls = threading.Barrier(2, timeout=120), Calls()

    def fake(notebook, out_dir, params, env):
        calls.enter(out_dir, threads=env["OMP_NUM_THREADS"], params=params)
        barrier.wait()
        finish(out_dir)
        calls.leave()
        return None

    monkeypatch.setattr(pipeline, "_run_notebook_process", fake)
    monkeypatch.setattr(pipeline, "run_notebook", None)  # nothing runs in this process
    before = os.environ.get("OMP_NUM_THREADS")
    said: list[str] = []
    run_pipeline(cfg, only="train", progress=True, say=said.append)
    assert os.environ.get("OMP_NUM_THREADS") == before  # this process's environment untouched
    stages = [s for s in plan(cfg) if s.group == "train"]
    assert calls.most == 2 and set(calls.seen) == {s.name for s in stages}
    for stage in stages:
        seen = calls.seen[stage.name]
        assert seen["threads"] == "1"  # 2 threads over 2 jobs
        assert seen["params"] == {**stage.params, "num_workers": 0}  # no data workers
        assert is_complete(stage)  # the fingerprint is the plan's: num_workers is not in it
        marker = json.loads((stage.out_dir / "stage.json").read_text())
        assert marker["run_with"] == {"jobs": 2, "OMP_NUM_THREADS": 1, "num_workers": 0}
        # one line when it starts, one when it is done, whole lines with its name
        assert [m.split(": ")[1][:4] for m in said if f"] {stage.name}:" in m] == ["runn", "done"]
    # a resumed run skips the complete stages and runs nothing
    calls.seen.clear()
    said.clear()
    run_pipeline(cfg, only="train", progress=True, say=said.append)
    assert not calls.seen and sum("complete, skipped" in m for m in said) == 4


def test_workers_the_user_set_are_kept(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny(tmp_path, jobs=2, seeds=1, train={"out_dim": 256, "num_workers": 1})
    calls = Calls()

    def fake(notebook, out_dir, params, env):
        calls.enter(out_dir, params=params)
        finish(out_dir)
        calls.leave()

    monkeypatch.setattr(pipeline, "_run_notebook_process", fake)
    run_pipeline(cfg, only="train", progress=False, say=lambda m: None)
    assert [c["params"]["num_workers"] for c in calls.seen.values()] == [1, 1]


def test_a_failure_lets_the_other_stage_finish(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny(tmp_path, jobs=2, seeds=1)
    barrier, failed = threading.Barrier(2, timeout=120), threading.Event()

    def fake(notebook, out_dir, params, env):
        barrier.wait()  # both run
        if params["method"] == "dino":
            failed.set()
            raise pipeline._StageProcessError(
                "notebook train_dora.ipynb failed in cell 3: RuntimeError: boom\nsecond line"
            )
        assert failed.wait(timeout=120)  # DoRA finishes after DINO has failed
        finish(out_dir)

    monkeypatch.setattr(pipeline, "_run_notebook_process", fake)
    with pytest.raises(StageFailed) as err:
        run_pipeline(cfg, only="train", progress=False, say=lambda m: None)
    message = str(err.value)
    assert message.startswith("stage train_dino failed after ")
    assert "cell 3: RuntimeError: boom; second line; stages before it are kept" in message
    assert "\n" not in message
    by = {s.name: s for s in plan(cfg)}
    assert is_complete(by["train_dora"]) and not is_complete(by["train_dino"])
    # the rerun resumes: DoRA is kept, DINO runs again (alone: in this process)
    ran: list[str] = []

    def again(notebook, out_dir, params, **kwargs):
        ran.append(Path(out_dir).name)
        finish(Path(out_dir))
        return SimpleNamespace(html=None)

    monkeypatch.setattr(pipeline, "run_notebook", again)
    run_pipeline(cfg, only="train", progress=False, say=lambda m: None)
    assert ran == ["train_dino"] and is_complete(by["train_dino"])


def test_one_job_runs_as_before(tmp_path: Path, monkeypatch) -> None:
    # jobs 1: one stage after the other in this process, the kernel with every thread and the
    # notebook's own data workers, the training's output streamed
    cfg = tiny(tmp_path, jobs=1)
    calls = Calls()

    def fake(notebook, out_dir, params, **kwargs):
        calls.enter(out_dir, threads=os.environ.get("OMP_NUM_THREADS"), params=params, **kwargs)
        finish(Path(out_dir))
        calls.leave()
        return SimpleNamespace(html=None)

    def never(*args, **kwargs):
        raise AssertionError("no child process with jobs 1")

    monkeypatch.setattr(pipeline, "run_notebook", fake)
    monkeypatch.setattr(pipeline, "_run_notebook_process", never)
    said: list[str] = []
    run_pipeline(cfg, only="train", progress=True, say=said.append)
    stages = [s for s in plan(cfg) if s.group == "train"]
    assert calls.most == 1 and list(calls.seen) == [s.name for s in stages]  # in the plan's order
    for stage in stages:
        seen = calls.seen[stage.name]
        assert seen["threads"] == "2" and seen["params"] == stage.params  # no num_workers
        assert seen["log_output"] is True
        assert "run_with" not in json.loads((stage.out_dir / "stage.json").read_text())
    assert not any("at a time" in m for m in said)


@pytest.mark.slow
def test_a_stage_in_its_own_process(tmp_path: Path) -> None:
    # the child process runs the notebook with the environment given, and brings back its
    # failure's message; this process's environment stays as it was
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1\nout = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os\nopen(out, 'w').write(os.environ['OMP_NUM_THREADS'])\n"
            "assert x == 1, 'x is ' + str(x)"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    source = tmp_path / "tiny.ipynb"
    nbformat.write(nb, source)
    env = {**os.environ, "OMP_NUM_THREADS": "3", "LABKIT_HEADLESS": "1"}
    headless = os.environ.get("LABKIT_HEADLESS")
    html = pipeline._run_notebook_process(
        str(source), tmp_path / "ok", {"x": 1, "out": str(tmp_path / "ok.txt")}, env
    )
    assert html == tmp_path / "ok" / "tiny.html" and html.is_file()
    assert (tmp_path / "ok.txt").read_text() == "3"
    with pytest.raises(
        pipeline._StageProcessError, match="failed in cell 2: AssertionError: x is 2"
    ):
        pipeline._run_notebook_process(
            str(source), tmp_path / "bad", {"x": 2, "out": str(tmp_path / "bad.txt")}, env
        )
    assert os.environ.get("LABKIT_HEADLESS") == headless


# ------------------------------------------------------------------------------------------------
# The built-in videos by name


def test_synthetic_names_in_the_plan(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic-hard").mkdir()  # a folder of that name: the bare name is the built-in
    cfg = tiny(
        tmp_path,
        seeds=1,
        video_path="synthetic-hard",
        eval_data=["synthetic", "synthetic-hard", str(tmp_path / "davis2016")],
    )
    by = {s.name: s for s in plan(cfg)}
    hard_video = str(default_video("hard"))
    assert hard_video.endswith(".mp4") and "synthetic-hard" in hard_video
    for name in ("train_dora", "train_dino", "explore_dora", "step_by_step"):
        assert by[name].params["video_path"] == hard_video
    assert [n for n in by if n.startswith("evaluate_")] == [
        "evaluate_synthetic",
        "evaluate_synthetic-hard",
        "evaluate_davis2016",
    ]
    assert by["evaluate_synthetic"].params["data_root"] == ""  # the evaluation's default video
    hard = by["evaluate_synthetic-hard"].params["data_root"]
    assert hard == str(default_dataset("hard"))
    assert (Path(hard) / "JPEGImages" / "480p" / "synthetic-hard").is_dir()
    assert json.loads((Path(hard) / "meta.json").read_text())["params"]["variant"] == "hard"
    assert pipeline._missing_dataset(by["evaluate_synthetic-hard"]) is None
    assert pipeline._missing_dataset(by["evaluate_davis2016"]) is not None  # no such folder
    # "synthetic" is the default video: the plan of an empty video_path, stage for stage
    easy = {s.name: s.fingerprint for s in plan(tiny(tmp_path, video_path="synthetic"))}
    default = {s.name: s.fingerprint for s in plan(tiny(tmp_path, video_path=""))}
    assert easy == default
    # a path is a path
    with pytest.raises(ValueError, match="video_path 'synthetic-harder' does not exist"):
        tiny(tmp_path, video_path="synthetic-harder")
    own = plan(tiny(tmp_path, seeds=1, eval_data=["./synthetic-hard"]))
    assert [s.params["data_root"] for s in own if s.group == "evaluate"] == [
        str(tmp_path / "synthetic-hard")
    ]
    # the built-in data each stage reads is in its fingerprint; a user's own data is not
    version = pipeline.GENERATOR_VERSION
    assert by["train_dora"].data == by["explore_dora"].data == (f"synthetic-hard v{version}",)
    assert by["evaluate_synthetic"].data == (f"synthetic v{version}",)
    assert by["evaluate_davis2016"].data == () and own[-2].data == ()
    assert pipeline.synthetic_data("") == pipeline.synthetic_data("synthetic")
    davis = by["evaluate_davis2016"]  # its fingerprint is the one it had before data counted
    blob = json.dumps({"notebook": davis.notebook, "params": davis.params}, sort_keys=True)
    assert davis.fingerprint == hashlib.sha256(blob.encode()).hexdigest()[:16]
    monkeypatch.setattr(pipeline, "GENERATOR_VERSION", version + 1)  # the generator changed
    newer = {s.name: s for s in plan(cfg)}
    for name in ("train_dora", "train_dino", "explore_dora", "step_by_step", "evaluate_synthetic"):
        assert newer[name].fingerprint != by[name].fingerprint, name  # run again
    assert newer["evaluate_davis2016"].fingerprint == by["evaluate_davis2016"].fingerprint


def test_report_names_the_hard_video() -> None:
    assert dataset_title("synthetic-hard") == "synthetic video, hard variant"
    assert dataset_title("synthetic") == "synthetic video, default variant"
    assert dataset_title("davis2016") == "davis2016"


@pytest.mark.slow
def test_ctrl_c_stops_stages_running_together(tmp_path: Path) -> None:
    # the terminal's Ctrl-C reaches the pipeline and the stages' child processes (one process
    # group): one line, exit code 130, each training's checkpoint at the step it was at
    import torch
    import yaml

    cfg = tiny(tmp_path / "runs", seeds=1, jobs=2, steps=400, teaching=False)
    # checkpoints at the end only: one before step 400 can only have been written at Ctrl-C (a
    # periodic one could race with a slow start of the other stage on a loaded machine)
    cfg = PipelineConfig(**{**cfg.to_dict(), "train": {**cfg.train, "checkpoint_every": 0}})
    config = tmp_path / "lab.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logs = [cfg.run_dir / f"train_{m}" / "log.jsonl" for m in ("dora", "dino")]
    interrupt_pipeline(
        config,
        lambda: all(p.is_file() and len(p.read_text().splitlines()) >= 3 for p in logs),
        tmp_path,
        "both trainings' steps",
    )
    for log in logs:
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
        state = torch.load(log.parent / "checkpoint.pth", weights_only=True)
        assert state["step"] == steps[-1] and 3 <= steps[-1] < 400  # written at Ctrl-C


def test_a_stage_runs_again_when_a_stage_it_reads_ran_again(tmp_path: Path, monkeypatch) -> None:
    """U: after the trainings ran again (--force, or a resumed run), the explorations, the
    evaluations and the report were skipped as complete: their numbers were the old models'."""
    cfg = tiny(tmp_path, jobs=1)
    stages = {s.out_dir.resolve(): s for s in plan(cfg) if s.notebook}
    ran: list[str] = []

    def fake(notebook, out_dir, params, **kwargs):
        stage = stages[Path(out_dir).resolve()]
        ran.append(stage.name)
        for name in stage.outputs:
            (stage.out_dir / name).write_text("{}")
        return SimpleNamespace(html=None)

    def report(run_dir, _stages):
        ran.append("report")
        for name in ("report.html", "metrics.json"):
            (Path(run_dir) / name).write_text("{}")

    monkeypatch.setattr(pipeline, "run_notebook", fake)
    monkeypatch.setattr(pipeline, "write_report", report)
    said: list[str] = []
    run_pipeline(cfg, progress=False, say=said.append)
    everything = [s.name for s in plan(cfg)]
    assert sorted(ran) == sorted(everything)
    ran.clear()
    run_pipeline(cfg, progress=False, say=said.append)
    assert ran == []  # nothing changed: nothing runs
    run_pipeline(cfg, only="train", force=True, progress=False, say=said.append)
    trainings = [s.name for s in plan(cfg) if s.group == "train"]
    assert ran == trainings
    ran.clear()
    said.clear()
    run_pipeline(cfg, progress=False, say=said.append)
    assert ran == [name for name in everything if name not in trainings]  # all that read them
    evaluation = next(m for m in said if "] evaluate_synthetic: " in m)
    assert (
        "runs again, train_dora_s0, train_dino_s0, train_dora_s1, train_dino_s1 ran" in evaluation
    )
    explore = next(m for m in said if "] explore_dora: " in m)
    assert explore.endswith("explore_dora: runs again, train_dora_s0 ran again since it was made")
    ran.clear()
    run_pipeline(cfg, progress=False, say=said.append)
    assert ran == []
    # a stage of a run made before labkit recorded the inputs counts as complete as before
    marker = next(s for s in plan(cfg) if s.name == "explore_dora").out_dir / "stage.json"
    info = json.loads(marker.read_text())
    del info["inputs"]
    marker.write_text(json.dumps(info))
    run_pipeline(cfg, only="train", force=True, progress=False, say=said.append)
    ran.clear()
    run_pipeline(cfg, only="explore", progress=False, say=said.append)
    assert "explore_dora" not in ran and "step_by_step" in ran


def test_a_stage_says_why_it_runs_again(tmp_path: Path, monkeypatch) -> None:
    """A finished stage that runs again names the parameters that changed, or the built-in
    video that is generated differently now, or labkit's code (the report)."""
    current = {"cfg": tiny(tmp_path, jobs=1, seeds=1)}
    ran: list[str] = []

    def fake(notebook, out_dir, params, **kwargs):
        stage = next(s for s in plan(current["cfg"]) if s.out_dir == Path(out_dir))
        ran.append(stage.name)
        for name in stage.outputs:
            (stage.out_dir / name).write_text("{}")
        return SimpleNamespace(html=None)

    def report(run_dir, _stages):
        for name in ("report.html", "metrics.json"):
            (Path(run_dir) / name).write_text("{}")

    monkeypatch.setattr(pipeline, "run_notebook", fake)
    monkeypatch.setattr(pipeline, "write_report", report)
    said: list[str] = []

    def run(**changes) -> dict[str, list[str]]:
        said.clear()
        run_pipeline(current["cfg"], progress=False, say=said.append, **changes)
        lines: dict[str, list[str]] = {}
        for m in said:
            if "] " in m:
                lines.setdefault(m.split("] ")[1].split(":")[0], []).append(m.split(": ", 1)[1])
        return lines

    run()
    assert all(s.data or s.group == "report" for s in plan(current["cfg"]))  # all on synthetic
    assert not any("runs again" in m for lines in run().values() for m in lines)
    current["cfg"] = tiny(tmp_path, jobs=1, seeds=1, steps=4)
    assert "runs again, its parameters changed (steps)" in run(only="train")["train_dora"]
    version = pipeline.GENERATOR_VERSION
    monkeypatch.setattr(pipeline, "GENERATOR_VERSION", version + 1)
    said_now = run()
    for name in ("train_dora", "explore_dora", "evaluate_synthetic"):
        assert (
            f"runs again, the built-in video it reads changed (synthetic v{version} -> "
            f"synthetic v{version + 1})"
        ) in said_now[name], name
    # a marker from before labkit recorded the data
    marker = next(s for s in plan(current["cfg"]) if s.name == "train_dino").out_dir / "stage.json"
    info = json.loads(marker.read_text())
    del info["data"]
    info["fingerprint"] = "before-data-counted"
    marker.write_text(json.dumps(info))
    assert (
        "runs again, it was made before labkit recorded the built-in video it reads "
        f"(now synthetic v{version + 1})"
    ) in run(only="train")["train_dino"]
    report_stage = plan(current["cfg"])[-1]
    assert pipeline.rerun_reason(report_stage) is None  # not made yet in this run folder
    run()
    info = json.loads((report_stage.out_dir / "report.json").read_text())
    info["fingerprint"], info["params"]["labkit"] = "older", "other code"
    (report_stage.out_dir / "report.json").write_text(json.dumps(info))
    assert pipeline.rerun_reason(report_stage) == "labkit's code changed since it was made"
    # a stage without built-in data whose record differs in nothing it can name
    info["params"]["labkit"] = report_stage.params["labkit"]
    (report_stage.out_dir / "report.json").write_text(json.dumps(info))
    assert pipeline.rerun_reason(report_stage) == "its record does not match the plan"
    dino = next(s for s in plan(current["cfg"]) if s.name == "train_dino")
    info = json.loads(marker.read_text())
    info["fingerprint"], info["notebook"] = "older", "old_notebook"
    marker.write_text(json.dumps(info))
    assert pipeline.rerun_reason(dino) == "its notebook changed (old_notebook -> train_dora)"


def test_source_hash_follows_the_code(tmp_path: Path) -> None:
    """The report stage's parameters hold labkit's source hash: a report made by other code is
    made again (U: a rerun after an upgrade kept the old report)."""
    from labkit.pipeline import source_hash

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    first = source_hash(package)
    (package / "notes.txt").write_text("not code")
    assert source_hash(package) == first  # only .py files count
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert source_hash(package) != first
    (package / "sub" / "b.py").write_text("y = 2\n")
    assert source_hash(package) == first
    (package / "sub" / "b.py").rename(package / "b.py")  # same contents, another place
    assert source_hash(package) != first
    report = next(s for s in plan(tiny(tmp_path)) if s.group == "report")
    assert report.params["labkit"] == source_hash(Path(pipeline.__file__).parent)
