"""The environment record written beside runs, evaluations and benchmark results."""

from __future__ import annotations

import json
import os
import subprocess

from labkit.environment import cpu_name, describe, git_state


def test_describe_records_machine_software_and_code():
    env = describe("cpu")
    json.dumps(env)  # written as JSON as it is
    assert env["device"] == "cpu" and "device_name" not in env
    assert env["cpu_count"] == os.cpu_count() and env["torch_threads"] >= 1
    assert env["processor"] == cpu_name() and env["processor"]
    assert env["packages"]["torch"] and env["packages"]["labkit"]
    assert env["torch"].split("+")[0] == env["packages"]["torch"].split("+")[0]


def test_git_state(tmp_path):
    assert git_state(tmp_path) == (None, None)  # not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("1")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path) == (commit, True)
