"""Nothing lost, nothing silently wrong (issue 15): run folders that protect finished work, and
every bad input a one-line error naming the file or key.

Each test names the case of the issue it reproduces: the numbered cases 1-7 and the unclear
errors ("U: ..."). Processes that are killed (kill -9, Ctrl-C) or run side by side are real
subprocesses; they are marked ``slow`` only where they start a notebook kernel.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from labkit.cli import main
from labkit.runfolder import RunFolderBusy, RunFolderWarning, RunLock, read_json, read_jsonl
from labkit.train import TrainConfig, TrainingDiverged, read_log, train

from tiny import TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_yaml(tmp_path: Path, **changes) -> Path:
    """A YAML TrainConfig for a 2-block ViT on the synthetic video (a step takes ~0.1 s)."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**TINY_TRAIN, "out_dir": str(tmp_path / "run"), **changes}))
    return path


def one_line_error(err: str, *needles: str) -> str:
    """The CLI's stderr holds exactly one error line, naming every needle, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("labkit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_cli(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LABKIT_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "labkit.cli", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def press_ctrl_c(
    command: list[str], ready, tmp_path: Path, what: str, **env: str
) -> tuple[int, str]:
    """Run ``command`` (in ``tmp_path``) as a terminal's foreground job, press Ctrl-C once
    ``ready()`` holds, wait for it to end and return its exit code and stderr.

    The command gets its own process group with SIGINT at its default (pytest-xdist's workers
    ignore SIGINT and a child inherits an ignored signal: Python would install no
    KeyboardInterrupt handler), and the group gets the SIGINT, as a terminal sends it to its
    foreground job. Its output goes to files, not pipes: nobody reads a pipe while it runs, and
    one blocked on a full pipe would not answer Ctrl-C. ``env`` is added to this process's
    environment (without ``LABKIT_DEBUG``). A command that ends before it is ready fails at once.
    """
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    environ.pop("LABKIT_DEBUG", None)
    out_file, err_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_file.open("w") as out_handle, err_file.open("w") as err_handle:
        first = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=environ,
            text=True,
            stdout=out_handle,
            stderr=err_handle,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            # a command that ends before it is ready fails here, not at the timeout
            wait_for(lambda: first.poll() is not None or ready(), timeout=600, what=what)
            assert first.poll() is None, f"it ended before {what}: {err_file.read_text()}"
            os.killpg(first.pid, signal.SIGINT)
            first.wait(timeout=240)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
    return first.returncode, err_file.read_text()


def interrupt_pipeline(config: Path, ready, tmp_path: Path, what: str, **env: str) -> str:
    """:func:`press_ctrl_c` on ``labkit pipeline --config CONFIG --quiet``; checks that it ended
    in one line (exit code 130, no traceback, the last line ``labkit: interrupted``) and returns
    its stderr."""
    command = [sys.executable, "-m", "labkit.cli", "pipeline", "--config", str(config), "--quiet"]
    code, err = press_ctrl_c(command, ready, tmp_path, what, **env)
    assert code == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("labkit: interrupted")
    return err


def log_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


# ------------------------------------------------------------------------------------------------
# labkit train: finished work, locks, kills, interrupts, disk full, torn logs, bad checkpoints


def test_case3_train_refuses_a_folder_with_a_finished_run(tmp_path, capsys, monkeypatch):
    """3. A second labkit train into a finished run's folder (the default runs/train too)."""
    monkeypatch.chdir(tmp_path)
    config = tiny_yaml(tmp_path)
    config.write_text(yaml.safe_dump({**TINY_TRAIN, "steps": 2}))  # default out_dir: runs/train
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    run = tmp_path / "runs" / "train"
    before = {n: (run / n).read_bytes() for n in ("checkpoint.pth", "log.jsonl", "metrics.json")}
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--quiet"]) == 2
    one_line_error(
        capsys.readouterr().err, "runs/train", "finished training run", "resume=true", "--force"
    )
    assert {n: (run / n).read_bytes() for n in before} == before  # nothing touched
    # resume=true continues it; --force moves it to a kept backup and starts afresh
    assert (
        main(["train", "--config", str(config), "-o", "resume=true", "-o", "steps=3", "--quiet"])
        == 0
    )
    assert [r["step"] for r in read_log(run)] == [1, 2, 3]
    assert main(["train", "--config", str(config), "--force", "--quiet"]) == 0
    (backup,) = run.glob("replaced-*")
    assert [r["step"] for r in read_log(backup)] == [1, 2, 3]
    assert [r["step"] for r in read_log(run)] == [1, 2]
    assert "moved the previous run's files" in capsys.readouterr().err


@pytest.mark.slow
def test_case4_and_ctrl_c_one_writer_per_folder_and_interrupt_keeps_the_step(tmp_path):
    """4. Two runs on one folder: the second fails at once. U: Ctrl-C prints no traceback and
    writes a checkpoint at the step reached."""
    config = tiny_yaml(tmp_path, steps=2000)
    run = tmp_path / "run"
    first = run_cli("train", "--config", str(config), "--quiet", cwd=tmp_path)
    try:
        wait_for(lambda: log_lines(run / "log.jsonl") >= 2, what="the first run's steps")
        second = run_cli(
            "train", "--config", str(config), "-o", "resume=true", "--quiet", cwd=tmp_path
        )
        out, err = second.communicate(timeout=120)
        assert second.returncode != 0
        one_line_error(err, str(run), "in use", f"pid {first.pid}")
        first.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "Traceback" not in err and "interrupted after step" in err, err
    steps = [r["step"] for r in read_log(run)]
    assert steps == list(range(1, len(steps) + 1))  # every step once: no second writer
    state = torch.load(run / "checkpoint.pth", weights_only=True)
    assert state["step"] == steps[-1] and f"after step {steps[-1]}" in err
    assert not (run / ".labkit.lock").exists()  # released


CHILD_BLOCKED_IN_CHECKPOINT = """
import os, sys, time
real_fsync = os.fsync
def fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if ".checkpoint.pth.tmp-" in name and os.path.exists(sys.argv[2]):  # the 2nd checkpoint
        open(sys.argv[3], "w").close()
        time.sleep(600)  # killed here, mid-write
    real_fsync(fd)
    if ".checkpoint.pth.tmp-" in name:
        open(sys.argv[2], "w").close()
os.fsync = fsync
from labkit.cli import main
sys.exit(main(["train", "--config", sys.argv[1], "--quiet"]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to spot the write")
def test_case5_kill9_mid_checkpoint_leaves_no_temporary_and_the_last_good_checkpoint(tmp_path):
    """5. kill -9 during a checkpoint write: the temporary file is removed on the next start,
    and the previous checkpoint is intact."""
    config = tiny_yaml(tmp_path, steps=3, checkpoint_every=1)
    run = tmp_path / "run"
    wrote, blocked = tmp_path / "first-written", tmp_path / "blocked"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_BLOCKED_IN_CHECKPOINT, str(config), str(wrote), str(blocked)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(blocked.exists, what="the second checkpoint write")
        temporaries = list(run.glob(".checkpoint.pth.tmp-*"))
        assert [p.name for p in temporaries] == [f".checkpoint.pth.tmp-{child.pid}"]
    finally:
        child.kill()  # SIGKILL
        child.wait()
    assert torch.load(run / "checkpoint.pth", weights_only=True)["step"] == 1  # the last good one
    with pytest.warns(RunFolderWarning, match=r"removed .*\.checkpoint\.pth\.tmp-"):
        result = train(
            TrainConfig(**{**yaml.safe_load(config.read_text()), "resume": True}), progress=False
        )
    assert not list(run.glob(".*.tmp-*"))
    assert [r["step"] for r in result.log] == [1, 2, 3] and result.metrics["steps_this_run"] == 2


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to spot the write")
def test_disk_full_checkpoint_is_one_line_and_keeps_the_last_good(tmp_path, capsys, monkeypatch):
    """U: disk full during a checkpoint write: one line naming the file, the last good kept."""
    import errno

    config = tiny_yaml(tmp_path, steps=4, checkpoint_every=2)
    run = tmp_path / "run"
    real_fsync, calls = os.fsync, {"checkpoints": 0}

    def fsync(fd):  # the second checkpoint (step 4) finds the disk full
        if ".checkpoint.pth.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            calls["checkpoints"] += 1
            if calls["checkpoints"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["train", "--config", str(config), "--quiet"]) == 1
    one_line_error(
        capsys.readouterr().err,
        f"{run / 'checkpoint.pth'}",
        "step 4",
        "No space left on device",
        "last good checkpoint",
    )
    monkeypatch.undo()
    assert torch.load(run / "checkpoint.pth", weights_only=True)["step"] == 2
    assert not list(run.glob(".*.tmp-*"))
    assert not (run / "metrics.json").exists()  # the run did not pretend to finish


def test_torn_last_log_line_is_reported_and_dropped_on_resume(tmp_path, capsys):
    """U: a torn last line in log.jsonl (a power loss) blocked resume, naming no file."""
    config = tiny_yaml(tmp_path, steps=2)
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    log = tmp_path / "run" / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "epoch": 1, "lo')  # what a power loss mid-write leaves
    with pytest.warns(RunFolderWarning, match=rf"{log}: dropped a torn last line 3"):
        assert [r["step"] for r in read_log(log)] == [1, 2]
    capsys.readouterr()
    assert (
        main(["train", "--config", str(config), "-o", "resume=true", "-o", "steps=3", "--quiet"])
        == 0
    )
    err = capsys.readouterr().err
    assert f"labkit: warning: {log}: dropped a torn last line" in err and "Traceback" not in err
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3]
    # a bad line before the last is damage, not a crash: an error naming file and line
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{log}: line 2 is not a JSON record"):
        read_log(log)


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"student": Payload()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)


@pytest.mark.parametrize("kind", ["truncated", "random", "malicious", "not_a_dict"])
def test_resume_from_a_bad_checkpoint_in_out_dir_is_one_line(tmp_path, capsys, kind):
    """U: resume from a truncated / random / malicious checkpoint.pth in out_dir."""
    config = tiny_yaml(tmp_path, steps=1)
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    ckpt = tmp_path / "run" / "checkpoint.pth"
    marker = tmp_path / "code-ran"
    if kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif kind == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "malicious":
        _malicious_checkpoint(ckpt, marker)
    else:
        torch.save([1, 2, 3], ckpt)
    capsys.readouterr()
    assert (
        main(["train", "--config", str(config), "-o", "resume=true", "-o", "steps=2", "--quiet"])
        == 2
    )
    one_line_error(capsys.readouterr().err, str(ckpt))
    assert not marker.exists()  # no code from the file ran
    assert not (tmp_path / "run" / ".labkit.lock").exists()  # the failed start let go


def test_nan_message_counts_steps_as_the_log(tmp_path, monkeypatch):
    """U: the NaN message counted steps from 0 while the log counts from 1."""
    from labkit.losses import DINOLoss

    original, calls = DINOLoss.forward_dora, {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(DINOLoss, "forward_dora", poisoned)
    cfg = TrainConfig(**{**TINY_TRAIN, "steps": 6, "out_dir": str(tmp_path)})
    with pytest.raises(TrainingDiverged, match="at step 4;") as info:
        train(cfg, progress=False)
    assert read_log(tmp_path)[-1]["step"] == 3 == info.value.step - 1


def test_lock_is_exclusive_across_processes_and_released_on_kill(tmp_path):
    """4. The lock itself: a second process fails at once naming the holder; a killed holder
    leaves nothing in the way."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from labkit.runfolder import RunLock; "
            "RunLock(sys.argv[1], 'a test').acquire(); print('held', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunFolderBusy, match=rf"{tmp_path} is in use by a test \(pid {holder.pid}"
        ):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path, "this test") as lock:  # the kernel released the killed holder's lock
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid()
    assert not lock.path.exists()


# ------------------------------------------------------------------------------------------------
# Typed inputs: every command and notebook parameter


@pytest.mark.parametrize(
    "argv, needles",
    [
        # 6. {depth:2} read as {'depth:2': None} was dropped: a full 12-block model ran
        (["train", "-o", "model_kwargs={depth:2}"], ["model_kwargs", "{depth: 2}"]),
        (["eval", "--model-kwargs", "{depth:2}"], ["--model-kwargs", "{depth: 2}"]),
        (
            ["run", "attention_explorer", "-p", "model_kwargs", "{depth:2}"],
            ["model_kwargs", "{depth: 2}"],
        ),
        (["pipeline", "-o", "model_kwargs={depth:2}"], ["model_kwargs", "{depth: 2}"]),
        (["pipeline", "-o", "train={decode_size:360}"], ["train", "{decode_size: 360}"]),
        (["attention", "--model-kwargs", "{depth:2}"], ["--model-kwargs", "{depth: 2}"]),
        # U: values of the wrong type
        (["pipeline", "-o", "lr=abc"], ["lr must be a number", "'abc'"]),
        (["pipeline", "-o", "eval_max_frames=abc"], ["eval_max_frames must be an integer"]),
        (["train", "-o", "lr=abc"], ["lr must be a number"]),
        (["train", "-o", "model_kwargs={depth: abc}"], ["model_kwargs.depth", "'abc'"]),
        (["train", "-o", "model_kwargs={depth: 0}"], ["model_kwargs.depth", ">= 1"]),
        (["eval", "--model-kwargs", "{depth: 0}"], ["model_kwargs.depth"]),
        (["pipeline", "-o", "model_kwargs={depth: 0}"], ["model_kwargs.depth"]),
        (["pipeline", "-o", "model_kwargs={depth: abc}"], ["model_kwargs.depth"]),
        (
            ["run", "attention_explorer", "-p", "num_frames", "abc"],
            ["attention_explorer.ipynb", "num_frames must be an integer", "'abc'"],
        ),
        (
            ["run", "evaluate", "-p", "max_frames", "abc"],
            ["evaluate.ipynb", "max_frames must be an integer"],
        ),
        (["run", "train_dora", "-p", "model_kwargs", "{depth: 0}"], ["model_kwargs.depth"]),
        (["pipeline", "-o", "evaluate={topk: 0}"], ["evaluate_", "topk"]),
        (["pipeline", "-o", "eval_sequences={davis: [cows]}"], ["eval_sequences", "davis"]),
    ],
)
def test_bad_values_are_one_line_naming_the_key(argv, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "pipeline":
        argv = [*argv, "-o", f"runs_dir={tmp_path / 'runs'}"]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, *needles)
    assert not (tmp_path / "runs").exists()  # before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    "command",
    [
        ["train", "-o", "device=cuda"],
        ["pipeline", "-o", "device=cuda"],
        ["eval", "--device", "cuda"],
        ["run", "attention_explorer", "-p", "device", "cuda"],
    ],
)
def test_cuda_without_cuda(command, tmp_path, capsys, monkeypatch):
    """U: -o device=cuda without CUDA."""
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    one_line_error(capsys.readouterr().err, "device", "CUDA is not available")


def test_config_files_and_paths_that_are_wrong(tmp_path, capsys, monkeypatch):
    """U: a YAML syntax error, --config DIR, -o runs_dir=<a file>, an output path that is a file
    (eval used to crash only after computing everything)."""
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "lab.yaml"
    bad.write_text("steps: 3\nmodel_kwargs: {depth: 2\nlr: 1e-3\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["pipeline", "--config", str(bad)], [str(bad), "line", "not valid YAML"]),
        (["train", "--config", str(bad)], [str(bad), "not valid YAML"]),
        (["pipeline", "--config", str(tmp_path)], [str(tmp_path), "is a folder"]),
        (["train", "--config", str(tmp_path)], [str(tmp_path), "is a folder"]),
        (["pipeline", "-o", f"runs_dir={a_file}"], ["runs_dir", str(a_file), "is a file"]),
        (["eval", "--out", str(a_file)], ["out_dir", str(a_file), "is a file"]),
        (["train", "-o", f"out_dir={a_file}"], ["out_dir", str(a_file), "is a file"]),
        (["run", "attention_explorer", "--out", str(a_file)], ["--out", "is a file"]),
        (["train", "-o", f"out_dir={a_file}/sub"], ["out_dir", "is a file"]),
    ]
    for argv, needles in cases:
        assert main(argv) == 2, argv
        one_line_error(capsys.readouterr().err, *needles)


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="lr must be a number"):
        main(["train", "-o", "lr=abc", "--debug"])
    monkeypatch.setenv("LABKIT_DEBUG", "1")
    with pytest.raises(ValueError, match="lr must be a number"):
        main(["train", "-o", "lr=abc"])
    monkeypatch.delenv("LABKIT_DEBUG")
    assert main(["train", "-o", "lr=abc"]) == 2


def test_unexpected_errors_are_one_line_too(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr("labkit.train.load_config", boom)
    assert main(["train"]) == 1
    one_line_error(capsys.readouterr().err, "RuntimeError: something; broke", "--debug")


def test_notebook_parameters_are_typed_from_their_config():
    from labkit.notebooks import check_parameters, list_notebooks, notebook_parameters

    for name in list_notebooks():  # every notebook's own defaults pass
        check_parameters(name, notebook_parameters(name))
    check_parameters("train_dora", {"heads": [0, 1, 2], "lr": "1e-4", "threshold": 0.5})
    with pytest.raises(ValueError, match="heads must be a string or a list of integers"):
        check_parameters("train_dora", {"heads": 3})
    with pytest.raises(ValueError, match="teaching"):
        check_parameters("evaluate", {"teaching": True})


# ------------------------------------------------------------------------------------------------
# DAVIS: frames and masks paired by name (case 7)


def davis_folder(root: Path, frames: int = 6, size=(48, 64)) -> Path:
    """A DAVIS-layout sequence whose mask t has an object at a place unique to frame t."""
    from PIL import Image

    img_dir = root / "JPEGImages" / "480p" / "seq"
    ann_dir = root / "Annotations" / "480p" / "seq"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    h, w = size
    for t in range(frames):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            img_dir / f"{t:05d}.jpg"
        )
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[8:24, 4 + 6 * t : 20 + 6 * t] = 255
        Image.fromarray(mask).save(ann_dir / f"{t:05d}.png")
    return root


def test_case7_masks_pair_with_frames_by_name(tmp_path):
    from labkit.eval.datasets import DatasetError, DatasetWarning, davis_sequences, read_masks

    root = davis_folder(tmp_path / "davis")
    img_dir, ann_dir = root / "JPEGImages" / "480p" / "seq", root / "Annotations" / "480p" / "seq"
    (ann_dir / "00003.png").unlink()  # frame 3 not annotated
    with pytest.warns(DatasetWarning, match=r"'seq': 1 of 6 frames have no mask .*00003\.jpg"):
        (seq,) = davis_sequences(root)
    labels, annotated = read_masks(seq)
    assert annotated.tolist() == [True, True, True, False, True, True]
    for t in (0, 1, 2, 4, 5):  # each frame gets its own mask: the object sits at 4 + 6 t
        assert labels[t, 10, 4 + 6 * t] == 1 and labels[t, 10, 4 + 6 * t - 1] == 0
    assert not labels[3].any()
    # the case: one mask and one frame missing; counts agree, names do not
    (img_dir / "00002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"'seq': mask\(s\) 00002\.png in .* have no frame"):
        davis_sequences(root)
    (ann_dir / "00002.png").unlink()
    (ann_dir / "00000.png").unlink()
    with pytest.raises(DatasetError, match=r"first frame .*00000\.jpg has no mask"):
        davis_sequences(root)


def test_case7_unannotated_frames_are_not_scored_and_the_rest_keep_their_scores(tmp_path):
    from labkit.eval.runner import EvalConfig, evaluate

    full = davis_folder(tmp_path / "full")
    holes = davis_folder(tmp_path / "holes")
    (holes / "Annotations" / "480p" / "seq" / "00003.png").unlink()

    def run(root: Path):
        cfg = EvalConfig(
            models=("vit_small_patch16_224",),
            data_root=str(root),
            resolution=48,
            model_kwargs={"depth": 2, "embed_dim": 96, "num_heads": 3},
            evaluations=("propagation", "attention"),
            example_frames=0,
            out_dir=str(tmp_path / "out"),
        )
        return evaluate(cfg, progress=False).models[0].sequences[0]

    a = run(full)
    with pytest.warns(UserWarning, match="not scored"):
        b = run(holes)
    assert list(a.propagation.frames) == [1, 2, 3, 4] and list(b.propagation.frames) == [1, 2, 4]
    assert b.unannotated_frames == (3,) and b.to_dict()["unannotated_frames"] == [3]
    keep = [0, 1, 3]  # frames 1, 2, 4 of a's scored frames
    assert np.allclose(np.asarray(a.propagation.j)[:, keep], np.asarray(b.propagation.j))
    assert len(b.attention["head_average_jaccard"]) == 5  # the 5 annotated frames


def test_shared_davis_still_pairs_every_frame(davis_root):
    from labkit.eval.datasets import davis_sequences

    for seq in davis_sequences(davis_root):
        assert seq.unannotated == () and [m.stem for m in seq.masks] == [f.stem for f in seq.frames]


def test_check_value_forms():
    from labkit.validation import check_value

    assert check_value("threshold", 1, str | float) == 1  # an exact match wins in a union
    assert check_value("name", 2026, str) == "2026"  # YAML reads -o name=2026 as a number
    assert check_value("lr", "1e-4", float | None) == pytest.approx(1e-4)  # PyYAML: a string
    assert check_value("heads", [2, 0], str | tuple[int, ...]) == (2, 0)
    for key, value, annotation, message in [
        ("heads", 3, str | tuple[int, ...], "heads must be a string or a list of integers"),
        ("sinkhorn", "yes", bool, "sinkhorn must be true or false, got 'yes'"),
        ("steps", 2.5, int, "steps must be an integer, got 2.5"),
        ("name", True, str, "name must be a string"),
        ("train", {"aug": {"blur:0.5": None}}, dict, r"train\.aug: \{blur:0\.5\}.*\{blur: 0\.5\}"),
        ("model_kwargs", {"depth": None}, dict, "key 'depth' has no value"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_value(key, value, annotation)


def test_read_json_reads_an_object_or_gives_none(tmp_path):
    """Markers and metrics.json are read by one helper: a missing, torn, non-UTF-8 or non-object
    file is None (the caller treats it as absent), never an exception."""
    good, torn, binary, listed = (tmp_path / n for n in ("a.json", "b.json", "c.json", "d.json"))
    good.write_text('{"run_id": "x", "n": 1}')
    torn.write_text('{"run_id": "x", "n"')
    binary.write_bytes(b"\xff\xfe\x00")
    listed.write_text("[1, 2]")
    assert read_json(good) == {"run_id": "x", "n": 1}
    assert [read_json(p) for p in (torn, binary, listed, tmp_path / "none.json")] == [None] * 4
