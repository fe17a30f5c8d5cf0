"""labkit pipeline: config validation, the plan, and a tiny run end to end (train -> report), with
two seeds per method: per-seed stages, mean ± std in metrics.json and the report, the interval
verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from labkit.eval.seeds import compare, seed_stats
from labkit.pipeline import (
    PipelineConfig,
    StageFailed,
    is_complete,
    load_pipeline_config,
    plan,
    run_pipeline,
)

TINY_MODEL = {"depth": 2, "embed_dim": 96, "num_heads": 3}


def tiny(runs: Path, video: Path, **changes) -> PipelineConfig:
    values = dict(
        name="tiny",
        runs_dir=str(runs),
        video_path=str(video),
        seeds=2,
        model_kwargs=TINY_MODEL,
        steps=3,
        img_size=64,
        batch_size=2,
        num_frames=3,
        explore_frames=3,
        explore_img_size=96,
        eval_data=["synthetic"],
        eval_resolution=96,
        eval_max_frames=6,
        train={
            "out_dim": 256,
            "num_local": 1,
            "local_size": 32,
            "checkpoint_every": 2,
            "num_workers": 0,
        },
    )
    values.update(changes)
    return PipelineConfig(**values)


@pytest.mark.parametrize(
    "override, key",
    [
        ("k=-1", "k"),
        ("steps=0", "steps"),
        ("model=not_a_vit", "model"),
        ("video_path=/no/such.mp4", "video_path"),
        ("methods=[dora, byol]", "methods"),
        ("name=a/b", "name"),
        ("stepz=3", "stepz"),
        ("train=5", "train"),
        ("seeds=0", "seeds"),
        ("seeds=two", "seeds"),
    ],
)
def test_bad_config_fails_before_any_work(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=key):
        load_pipeline_config(None, [override, f"runs_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())


def test_config_from_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("name: gpu\nsteps: 500\ndevice: cpu\nseeds: 5\ntrain:\n  num_local: 6\n")
    cfg = load_pipeline_config(path, ["steps=7", "eval_data=[synthetic]"])
    assert (cfg.name, cfg.steps, cfg.train, cfg.eval_data, cfg.seeds) == (
        "gpu",
        7,
        {"num_local": 6},
        ("synthetic",),
        5,
    )
    cfg = load_pipeline_config(path, ["seeds=1", "seed=3"])
    assert cfg.seeds == 1 and cfg.seed_values == (3,)
    assert PipelineConfig().seeds == 3 and PipelineConfig(seed=7).seed_values == (7, 8, 9)


def test_plan_wires_the_stages(tmp_path: Path) -> None:
    cfg = PipelineConfig(
        runs_dir=str(tmp_path),
        eval_data=("synthetic", str(tmp_path / "davis2016")),
        pretrained=False,
        seed=5,
    )
    assert cfg.seeds == 3 and cfg.seed_values == (5, 6, 7)  # the default: three seeds
    stages = plan(cfg)
    names = [s.name for s in stages]
    assert names == [
        "train_dora_s5",
        "train_dino_s5",
        "train_dora_s6",
        "train_dino_s6",
        "train_dora_s7",
        "train_dino_s7",
        "explore_dora",  # pictures: the first seed only
        "explore_dino",
        "step_by_step",
        "evaluate_synthetic",
        "evaluate_davis2016",
        "report",
    ]
    by = {s.name: s for s in stages}
    assert [
        (by[f"train_dora_s{i}"].seed, by[f"train_dora_s{i}"].params["seed"]) for i in (5, 7)
    ] == [
        (5, 5),
        (7, 7),
    ]
    ckpt = {n: str(by[n].out_dir / "checkpoint.pth") for n in names if n.startswith("train_")}
    assert by["explore_dora"].params["checkpoint"] == ckpt["train_dora_s5"]
    assert by["step_by_step"].params["checkpoint"] == ckpt["train_dora_s5"]
    assert by["train_dora_s6"].params["resume"] is True
    # one evaluation per dataset of every seed's models, random init drawn with each seed
    evaluate = by["evaluate_synthetic"]
    assert evaluate.params["models"] == [
        f"random@s5={cfg.model}:random@5",
        f"random@s6={cfg.model}:random@6",
        f"random@s7={cfg.model}:random@7",
    ] + [
        f"{m}@s{i}={cfg.model}:{ckpt[f'train_{m}_s{i}']}"
        for m in ("dora", "dino")
        for i in (5, 6, 7)
    ]
    assert set(evaluate.needs) == set(ckpt)
    # the same budget for both methods and every seed: only the method (and its learning rate,
    # per method by default: DoRA 5e-4, DINO 1e-4) or the seed differs
    a, b = dict(by["train_dora_s5"].params), dict(by["train_dino_s5"].params)
    assert {k for k in a if a[k] != b[k]} == {"method", "out_dir", "lr"}
    assert (a["lr"], b["lr"]) == (5e-4, 1e-4)
    c = dict(by["train_dora_s6"].params)
    assert {k for k in a if a[k] != c[k]} == {"seed", "out_dir"}
    # a parameter change changes the fingerprint (the stage reruns), the same config does not
    again = {s.name: s for s in plan(cfg)}
    assert again["train_dora_s5"].fingerprint == by["train_dora_s5"].fingerprint
    changed = {s.name: s for s in plan(PipelineConfig(runs_dir=str(tmp_path), steps=7, seed=5))}
    assert changed["train_dora_s5"].fingerprint != by["train_dora_s5"].fingerprint
    # one seed: the names and labels of a run without seeds
    one = {s.name: s for s in plan(PipelineConfig(runs_dir=str(tmp_path), seeds=1, seed=5))}
    assert "train_dora" in one and "train_dora_s5" not in one
    assert one["train_dora"].params["seed"] == 5
    assert one["evaluate_synthetic"].params["models"][:2] == [
        f"random={cfg.model}",
        f"dora={cfg.model}:{one['train_dora'].out_dir / 'checkpoint.pth'}",
    ]


def test_only_needs_completed_stages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs train_dora_s0"):
        run_pipeline(PipelineConfig(runs_dir=str(tmp_path)), only="evaluate", say=lambda m: None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_video: Path) -> tuple[PipelineConfig, list[str]]:
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny(runs, small_video)
    messages: list[str] = []
    report = run_pipeline(cfg, progress=False, say=messages.append)
    assert report == cfg.run_dir.resolve() / "report.html"
    return cfg, messages


@pytest.mark.slow
def test_end_to_end(finished) -> None:
    cfg, messages = finished
    run = cfg.run_dir.resolve()
    for stage in plan(cfg):
        assert is_complete(stage), stage.name
        if stage.notebook:
            assert (stage.out_dir / f"{stage.notebook}.ipynb").is_file()
            assert (stage.out_dir / f"{stage.notebook}.html").is_file()
    assert sum("done in" in m for m in messages) == len(plan(cfg))
    env = json.loads((run / "environment.json").read_text())
    assert env["device"] == "cpu" and env["packages"]["torch"] and "git_commit" in env
    assert "steps: 3" in (run / "config.yaml").read_text()
    assert [s.name for s in plan(cfg) if s.group == "train"] == [
        "train_dora_s0",
        "train_dino_s0",
        "train_dora_s1",
        "train_dino_s1",
    ]
    assert "seeds: 2" in (run / "config.yaml").read_text()
    spread = json.loads((run / "step_by_step" / "metrics.json").read_text())["prototype_spread"]
    assert 0 <= spread["head_entropy"] <= 1 and 0 <= spread["head_distance"] <= 1  # with the heads
    for seed in (0, 1):
        train = json.loads((run / f"train_dora_s{seed}" / "metrics.json").read_text())
        assert train["steps"] == 3 and train["method"] == "dora"
        stage = json.loads((run / f"train_dora_s{seed}" / "stage.json").read_text())
        assert stage["params"]["seed"] == seed
    ev = json.loads((run / "evaluate_synthetic" / "metrics.json").read_text())
    labels = ["random@s0", "random@s1", "dora@s0", "dora@s1", "dino@s0", "dino@s1"]
    assert [r["model"] for r in ev["summary"]] == labels
    # random init follows the seed: two different networks
    assert ev["models"]["random@s1"]["info"]["weights_label"].endswith("seed 1")
    rows = {r["model"]: r for r in ev["summary"]}
    assert rows["random@s0"]["J&F"] != rows["random@s1"]["J&F"]
    # metrics.json of the run and of the evaluation: mean and sample std of the per-seed values
    total = json.loads((run / "metrics.json").read_text())
    assert total["seeds"] == [0, 1]
    by_method = total["evaluation"]["synthetic"]["by_method"]
    assert by_method == ev["by_method"]
    for method in ("random", "dora", "dino"):
        for key in ("J&F", "attn best head J", "k-means clip_hungarian mIoU"):
            values = [rows[f"{method}@s{s}"][key] for s in (0, 1)]
            entry = by_method[method][key]
            assert entry["values"] == values and entry["seeds"] == [0, 1] and entry["n"] == 2
            assert entry["mean"] == pytest.approx(np.mean(values))
            assert entry["std"] == pytest.approx(np.std(values, ddof=1))
    # the verdict: better or worse only where mean ± std intervals separate
    judged = total["evaluation"]["synthetic"]["verdict"]["metrics"]
    assert set(judged) == {
        "J&F",
        "attn best head J",
        "attn head avg J",
        "DoRA best object J",
        "k-means clip_hungarian mIoU",
    }
    for key, verdict in judged.items():
        assert set(verdict["outcomes"]) == {"dora vs random", "dora vs dino", "dino vs random"}
        for pair, outcome in verdict["outcomes"].items():
            a, b = (by_method[m][key] for m in pair.split(" vs "))
            lo_a, hi_a = a["mean"] - a["std"], a["mean"] + a["std"]
            lo_b, hi_b = b["mean"] - b["std"], b["mean"] + b["std"]
            expected = (
                "better" if lo_a > hi_b else "worse" if hi_a < lo_b else "no measurable difference"
            )
            assert outcome == expected, (key, pair)
            assert compare(seed_stats(a["values"]), seed_stats(b["values"])) == expected
    # the training: every method and seed, with its loss over the first and last 10% of steps
    training = total["training"]
    assert [(r["method"], r["seed"]) for r in training["dora"]["runs"]] == [
        ("dora", 0),
        ("dora", 1),
    ]
    last = [r["loss last 10%"] for r in training["dino"]["runs"]]
    assert training["dino"]["stats"]["loss last 10%"]["mean"] == pytest.approx(np.mean(last))
    # the report: mean ± std beside every number (the table names the seeds, the verdict says
    # n=2), pictures of seed 0
    report = (run / "report.html").read_text()
    jf = by_method["dora"]["J&F"]
    assert f"<td>{jf['mean']:.3f} ± {jf['std']:.3f}</td>" in report
    assert f"DoRA {jf['mean']:.3f} ± {jf['std']:.3f} (n=2)" in report
    assert "over seeds 0, 1 (mean ± sample standard deviation, n=2 per method)" in report
    assert "Verdict" in report and "Label propagation J&amp;F: " in report
    assert re.search(
        r"DoRA is measurably better than (random init and DINO on "
        r"(none of the 5|all 5|[1-4] of 5) measures|random init on (none|[1-5] of 5 measures))",
        report,
    )
    assert "Pictures: seed 0" in report
    assert re.search(r"Seeds? (0, )?1: The DoRA teacher", report)  # one sentence per verdict
    # the recipe each training ran with, read back from its metrics.json
    assert "<h3>Settings the runs used</h3>" in report and "<td>head output K</td>" in report
    assert "explore_dora/heads.png" in report
    assert "train_dora_s0/log.png" in report and "train_dino_s1/log.png" in report
    assert (run.parent / "latest").resolve() == run


@pytest.mark.slow
def test_rerun_skips_complete_stages(finished) -> None:
    cfg, _ = finished
    messages: list[str] = []
    run_pipeline(cfg, progress=False, say=messages.append)
    stages = [m for m in messages if m.startswith("[")]
    assert stages and all("complete, skipped" in m for m in stages)


@pytest.mark.slow
def test_interrupted_training_resumes(finished) -> None:
    cfg, _ = finished
    stage = next(s for s in plan(cfg) if s.name == "train_dino_s1")
    # an interruption after the last checkpoint: no stage.json, no metrics.json
    (stage.out_dir / "stage.json").unlink()
    (stage.out_dir / "metrics.json").unlink()
    messages: list[str] = []
    run_pipeline(cfg, only="train", progress=False, say=messages.append)
    metrics = json.loads((stage.out_dir / "metrics.json").read_text())
    assert (
        metrics["steps"] == cfg.steps and metrics["steps_this_run"] == 0
    )  # resumed, not restarted
    assert any("train_dora_s1: complete, skipped" in m for m in messages)


@pytest.mark.slow
def test_bad_data_root_fails_before_any_stage(finished, tmp_path: Path) -> None:
    # a folder without the DAVIS layout is found by the checks before any stage runs (a stage
    # failing inside its notebook: tests/test_reliability_pipeline.py)
    cfg, _ = finished
    bad = tmp_path / "not_davis"
    (bad / "some_folder").mkdir(parents=True)
    broken = tiny(Path(cfg.runs_dir), Path(cfg.video_path), eval_data=[str(bad)])
    with pytest.raises(ValueError, match=r"stage evaluate_not_davis: .*JPEGImages") as err:
        run_pipeline(broken, only="evaluate", progress=False, say=lambda m: None)
    assert not isinstance(err.value, StageFailed)
    assert not (cfg.run_dir / "evaluate_not_davis").exists()
    assert (cfg.run_dir / "train_dora_s0" / "checkpoint.pth").is_file()  # earlier work kept


def test_cli_exit_code_on_a_failed_stage(monkeypatch, capsys) -> None:
    from labkit import cli

    def fail(*args, **kwargs):
        raise StageFailed(
            "stage evaluate_x failed after 3s: notebook evaluate.ipynb failed in cell 4"
        )

    monkeypatch.setattr("labkit.pipeline.run_pipeline", fail)
    assert cli.main(["pipeline", "--quiet"]) == 1
    assert "evaluate_x" in capsys.readouterr().err
    assert cli.main(["pipeline", "-o", "k=-3"]) == 2  # a bad value: exit code 2, before any work
    assert "k must be" in capsys.readouterr().err


def test_cli_prints_the_verdicts_headlines_when_the_pipeline_ends(monkeypatch, capsys, tmp_path):
    from labkit import cli

    report = tmp_path / "report.html"
    monkeypatch.setattr("labkit.pipeline.run_pipeline", lambda *a, **k: report)
    assert cli.main(["pipeline", "--quiet"]) == 0  # no metrics.json yet: no headlines, no error
    assert capsys.readouterr().out.splitlines()[0] == f"[labkit] report: {report}"
    lines = ["On synthetic video: DoRA is measurably better than random init on 1 of 5 measures."]
    (tmp_path / "metrics.json").write_text(json.dumps({"headlines": lines}))
    assert cli.main(["pipeline", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"[labkit] {lines[0]}" and out[1] == f"[labkit] report: {report}"
    # a run of the trainings alone did not make the report again: its old verdict is not printed
    assert cli.main(["pipeline", "--only", "train", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"[labkit] report: {report}"


@pytest.mark.slow
def test_same_config_same_numbers(finished, tmp_path: Path) -> None:
    # a run with one seed gives the numbers of the two-seed run's first seed: same seed, same
    # training, same random init, same scores
    cfg, _ = finished
    again = tiny(tmp_path, Path(cfg.video_path), seeds=1)
    run_pipeline(again, only="train", progress=False, say=lambda m: None)
    run_pipeline(again, only="evaluate", progress=False, say=lambda m: None)
    for method in ("dora", "dino"):
        a = json.loads((cfg.run_dir / f"train_{method}_s0" / "metrics.json").read_text())
        b = json.loads((again.run_dir / f"train_{method}" / "metrics.json").read_text())
        assert (a["first_loss"], a["final_loss"]) == (b["first_loss"], b["final_loss"])

    def numbers(path: Path) -> dict[str, dict]:
        rows = json.loads(path.read_text())["summary"]
        return {
            r["model"].removesuffix("@s0"): {
                k: v for k, v in r.items() if k not in ("model", "seconds", "weights")
            }
            for r in rows
            if not r["model"].endswith("@s1")
        }

    assert numbers(cfg.run_dir / "evaluate_synthetic" / "metrics.json") == numbers(
        again.run_dir / "evaluate_synthetic" / "metrics.json"
    )


def test_one_loader_for_pipeline_and_training(tmp_path: Path) -> None:
    # labkit.config.load_config reads both: dotted keys reach a mapping's entries
    cfg = load_pipeline_config(None, ["train.num_local=6", "train.out_dim=512", "steps=4"])
    assert cfg.train == {"num_local": 6, "out_dim": 512} and cfg.steps == 4
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        load_pipeline_config(None, ["stepz=3"])
    with pytest.raises(ValueError, match="lr.x"):
        load_pipeline_config(None, ["lr.x=3"])
