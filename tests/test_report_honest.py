"""An honest, readable report: charts and tables from one definition, collapse and 'learned
nothing' said in the verdict, every bar chart (J&F first), compact examples, right notebook links;
progress lines from the evaluation under papermill."""

from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from labkit.eval.report import (
    bar_file_name,
    plot_sequence_bars,
    sequence_rows,
    sequence_values,
    summary_rows,
)
from labkit.eval.results import EvalResult, ModelResult, SequenceResult
from labkit.report import learned_nothing, training_health, write_report

# per sequence, J of each of 3 heads: sequence a's best head is 1, b's is 0; over both, head 1
PER_HEAD = {"a": [0.1, 0.5, 0.2], "b": [0.4, 0.1, 0.3]}


def _sequence(name: str, per_head: list[float], shift: float = 0.0) -> SequenceResult:
    ph = torch.tensor(per_head) + shift
    best = int(ph.argmax())
    return SequenceResult(
        name=name,
        num_frames=5,
        num_objects=1,
        source_size=(32, 48),
        input_size=(32, 48),
        grid=(2, 3),
        attention={
            "per_head": ph,
            "best_head": best,
            "best_head_j": float(ph[best]),
            "head_average_j": 0.2 + shift,
            "mean_over_heads": float(ph.mean()),
            "oracle_j": float(ph.max()),
            "stability": 0.9,
        },
        tracking={
            "best_head_j": 0.3 + shift + (0.1 if name == "a" else 0.0),
            "stability": 0.8,
            "mean_over_heads": 0.2,
            "oracle_j": 0.4,
            "switches": 1,
        },
        segmentation={"clip_hungarian": 0.25 + shift + (0.05 if name == "b" else 0.0)},
    )


def _result() -> EvalResult:
    models = [
        ModelResult(
            label=label,
            spec=label,
            info={},
            sequences=[_sequence(n, ph, shift) for n, ph in PER_HEAD.items()],
        )
        for label, shift in (("random", 0.0), ("dora", 0.01))
    ]
    return EvalResult(
        config={}, models=models, environment={}, data_root="", sequences=list(PER_HEAD)
    )


def _legend(fig) -> dict[str, float]:
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    return {t.split(":")[0]: float(t.split(":")[1].split()[0]) for t in texts}


def test_best_head_is_one_head_in_table_rows_and_chart():
    result = _result()
    table = {r["model"]: r for r in summary_rows(result)}
    assert table["random"]["attn best head J"] == pytest.approx(0.3)  # head 1 over both sequences
    values = sequence_values(result.models[0], "attn best head J")
    assert values == pytest.approx({"a": 0.5, "b": 0.1})  # head 1 in each, not each one's own best
    rows = sequence_rows(result.models[0])
    assert rows[-1]["attn best head J"] == pytest.approx(table["random"]["attn best head J"])
    assert rows[-1]["attn best head"] == 1
    assert [r["attn per-sequence best head J"] for r in rows[:2]] == pytest.approx(
        [0.5, 0.4]
    )  # kept, named
    assert [r["attn per-sequence best head"] for r in rows[:2]] == [1, 0]


@pytest.mark.parametrize(
    "metric",
    ["attn best head J", "attn head avg J", "DoRA best object J", "k-means clip_hungarian mIoU"],
)
def test_chart_values_equal_the_table(metric):
    result = _result()
    fig = plot_sequence_bars(result, metric)
    table = {r["model"]: r[metric] for r in summary_rows(result)}
    legend = _legend(fig)
    assert legend == pytest.approx({m: round(v, 3) for m, v in table.items()}, abs=5e-4)
    bars = [p.get_height() for p in fig.axes[0].patches]  # model by model, sequence by sequence
    for i, m in enumerate(result.models):
        assert np.mean(bars[2 * i : 2 * i + 2]) == pytest.approx(table[m.label])


def test_bar_file_names():
    assert bar_file_name("J&F") == "bars_J_F"
    assert bar_file_name("k-means clip_hungarian mIoU") == "bars_k_means_clip_hungarian_mIoU"


# ------------------------------------------------------------------------------------- verdict
def _stage(run: Path, name: str, group: str, notebook: str | None, params: dict | None = None):
    out = run if group == "report" else run / name
    out.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(
        name=name, group=group, out_dir=out, notebook=notebook, params=params or {}
    )


def test_training_health_says_collapse():
    stage = SimpleNamespace(name="train_dino", params={"out_dim": 256})
    k = math.log(256)
    text, bad = training_health(stage, {"teacher_entropy": 0.995 * k, "teacher_top_mass": 0.01}, {})
    assert bad and "DINO teacher collapsed" in text and "99.5% of log K = ln 256" in text
    text, bad = training_health(stage, {"teacher_entropy": 0.5 * k, "teacher_top_mass": 0.01}, {})
    assert not bad and "did not collapse" in text
    text, bad = training_health(stage, {"teacher_entropy": 0.5 * k, "teacher_top_mass": 0.9}, {})
    assert bad and "one output dimension" in text
    event = {"step": 12, "kind": "uniform", "detected_at": 31, "patience": 20}
    text, bad = training_health(stage, {"teacher_entropy": 0.5 * k, "collapse": event}, {})
    assert bad and text.startswith("The DINO teacher collapsed at step 12")
    # K from the run's train options when the stage has none
    stage = SimpleNamespace(name="train_dora", params={})
    assert training_health(
        stage, {"teacher_entropy": 0.999 * math.log(64)}, {"train": {"out_dim": 64}}
    )[1]


def test_learned_nothing():
    ev = {
        "summary": [
            {"model": "random", "J&F": 0.3, "attn best head J": 0.2},
            {"model": "dora", "J&F": 0.302, "attn best head J": 0.1},
            {"model": "dino", "J&F": 0.5, "attn best head J": 0.1},
        ]
    }
    assert learned_nothing(ev, "dora") is True
    assert learned_nothing(ev, "dino") is False
    assert learned_nothing(ev, "pretrained") is None


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def test_report_leads_with_the_verdict_and_shows_every_chart(tmp_path: Path):
    run = tmp_path / "run"
    stages = [
        _stage(run, "train_dora", "train", "train_dora", {"method": "dora", "out_dim": 256}),
        _stage(run, "train_dino", "train", "train_dora", {"method": "dino", "out_dim": 256}),
        _stage(run, "evaluate_synthetic", "evaluate", "evaluate"),
        _stage(run, "report", "report", None),
    ]
    (run / "config.yaml").write_text("steps: 3\nmodel: vit_small_patch16_224\n")
    k = math.log(256)
    (run / "train_dora" / "metrics.json").write_text(
        json.dumps({"teacher_entropy": 0.3 * k, "collapse": None})
    )
    (run / "train_dino" / "metrics.json").write_text(json.dumps({"teacher_entropy": 0.999 * k}))
    for s in stages[:3]:
        (s.out_dir / "stage.json").write_text("{}")
    (run / "train_dino" / "train_dora.html").write_text("<html></html>")
    ev = run / "evaluate_synthetic"
    summary = [
        {"model": "random", "J&F": 0.3, "attn best head J": 0.2, "attn head avg J": 0.2},
        {"model": "dino", "J&F": 0.3, "attn best head J": 0.2, "attn head avg J": 0.2},
        {"model": "dora", "J&F": 0.5, "attn best head J": 0.4, "attn head avg J": 0.3},
    ]
    (ev / "metrics.json").write_text(
        json.dumps({"summary": summary, "sequences": ["a"], "config": {}})
    )
    names = [
        "bars_k_means_clip_hungarian_mIoU",
        "bars_attn_best_head_J",
        "bars_J_F",
        "bars_DoRA_best_object_J",
        "bars_LOST_J",
        "bars_zzz_other",
        "examples",
        "examples_dora",
        "examples_dino",
    ]
    for n in names:
        _png(ev / f"{n}.png")
    page = write_report(run, stages).read_text()
    verdict = page[page.index("<h2>Verdict</h2>") : page.index("<h2>Weights</h2>")]
    assert (
        page.index("<h2>Verdict</h2>")
        < page.index("<h2>Stages</h2>")
        < page.index("<h2>Evaluation</h2>")
    )
    headline = re.findall(r"<p class='headline'>(.*?)</p>", verdict)
    assert headline[0].startswith("Training collapsed for dino")
    # the same headlines in the run's metrics.json, for `labkit pipeline` to print
    written = json.loads((run / "metrics.json").read_text())["headlines"]
    assert [html.escape(h) for h in written] == headline
    # one seed: no error bar, so the verdict calls nothing better (tests/test_report.py)
    assert any(
        h.startswith("On synthetic video, default variant: with one seed per method")
        for h in headline
    )
    assert any("DINO learned nothing measurable" in h for h in headline)
    assert (
        "The DINO teacher collapsed" in verdict and "The DoRA teacher did not collapse" in verdict
    )
    charts = re.findall(r"src='evaluate_synthetic/(bars_[^']+)\.png'", page)
    assert charts == [
        "bars_J_F",
        "bars_attn_best_head_J",
        "bars_DoRA_best_object_J",
        "bars_k_means_clip_hungarian_mIoU",
        "bars_LOST_J",
        "bars_zzz_other",
    ]
    assert "src='evaluate_synthetic/examples.png'" in page
    assert "src='evaluate_synthetic/examples_dora.png'" not in page  # linked, not shown
    assert "href='evaluate_synthetic/examples_dora.png'" in page
    assert "<a href='train_dino/train_dora.html'>train_dora notebook (method dino)</a>" in page


def test_more_figures_names_the_figures_it_holds(tmp_path: Path):
    """The step-by-step stage has only the objects' masks: its "more figures" summary said
    "heads over 8 frames, every head, masks, segments, artifacts" all the same."""
    run = tmp_path / "run"
    stages = [
        _stage(run, "explore_dora", "explore", "attention_explorer"),
        _stage(run, "step_by_step", "explore", "dora_step_by_step"),
        _stage(run, "report", "report", None),
    ]
    for name in ("heads.png", "masks.png"):
        _png(run / "explore_dora" / name)
    _png(run / "step_by_step" / "objects.png")
    page = write_report(run, stages).read_text()
    summaries = re.findall(r"<summary>more figures of ([^<]*)</summary>", page)
    assert summaries == [
        "explore_dora: heads over 8 frames, masks",
        "step_by_step: DoRA objects&#x27; masks",
    ]


# ------------------------------------------------------------------------------------ progress
def test_progress_lines_pass_only_labkit_lines():
    from labkit.notebooks import _ProgressLines

    out = io.StringIO()
    lines = _ProgressLines(out)
    for chunk in [
        "noise\n[lab",
        "kit] evaluate: model 1/2\n",
        "\r 50%|###",
        "\n[labkit] done",
        "\n",
    ]:
        lines.write(chunk)
    lines.flush()
    assert out.getvalue() == "[labkit] evaluate: model 1/2\n[labkit] done\n"


def test_evaluation_prints_a_line_per_sequence_under_papermill(tmp_path, monkeypatch, capsys):
    from labkit.data.synthetic import generate_synthetic
    from labkit.eval.runner import EvalConfig, evaluate

    root = generate_synthetic(tmp_path / "davis", num_frames=6, size=(64, 96)).root
    cfg = EvalConfig(
        models=("a=vit_small_patch16_224", "b=vit_small_patch16_224"),
        model_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
        data_root=str(root),
        resolution=64,
        evaluations=("attention",),
        batch_size=4,
    )
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    evaluate(cfg, progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[labkit] ")]
    assert re.match(r"\[labkit\] evaluate: model 1/2 a \(.*\), 1 sequence$", lines[0])
    assert re.match(
        r"\[labkit\] evaluate a \(model 1/2\): sequence 1/1 synthetic \(6 frames\) in \d+ s; ",
        lines[1],
    )
    assert lines[2].startswith("[labkit] evaluate: model 1/2 a done in")
    assert lines[3].startswith("[labkit] evaluate: model 2/2 b") and len(lines) == 6
    assert "|" not in err  # no bars
    monkeypatch.delenv("LABKIT_HEADLESS")
    evaluate(cfg, progress=False)
    assert "[labkit]" not in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_notebook_shows_progress_under_papermill(tmp_path, capsys):
    """The long evaluation cell prints a line per sequence: in the notebook, its HTML and the
    log.
    """
    from labkit.data.synthetic import generate_synthetic
    from labkit.notebooks import run_notebook

    root = generate_synthetic(tmp_path / "davis", num_frames=6, size=(64, 96)).root
    out = tmp_path / "run"
    run = run_notebook(
        "evaluate",
        out,
        {
            "models": ["tiny=vit_small_patch16_224"],
            "model_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 3},
            "data_root": str(root),
            "resolution": 64,
            "evaluations": ["attention"],
            "out_dir": str(out),
        },
        progress=False,
    )
    nb = json.loads(run.output.read_text())
    streams = "".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    assert "[labkit] evaluate tiny (model 1/1): sequence 1/1 synthetic (6 frames)" in streams
    assert "[labkit] evaluate tiny (model 1/1): sequence 1/1" in run.html.read_text()
    err = capsys.readouterr().err
    assert "[labkit] evaluate: model 1/1 tiny" in err and "sequence 1/1 synthetic" in err  # the log
    assert (out / "examples.png").is_file()


# ------------------------------------------------------------------------ training's settings


def _trained(run: Path, method: str, seed: int, config: dict, *, in_checkpoint: bool = False):
    """A finished training stage of ``method`` and ``seed`` whose configuration is ``config``
    (in metrics.json, or only in the checkpoint as runs before that key wrote it)."""
    stage = _stage(run, f"train_{method}_s{seed}", "train", "train_dora", {"method": method})
    stage.method, stage.seed = method, seed
    metrics = {"method": method, "steps": config["steps"], "collapse": None, "seconds": 116.4}
    if in_checkpoint:
        torch.save({"config": config, "step": config["steps"]}, stage.out_dir / "checkpoint.pth")
    else:
        metrics["config"] = config
    (stage.out_dir / "metrics.json").write_text(json.dumps(metrics))
    (stage.out_dir / "stage.json").write_text(json.dumps({"seconds": 138.94}))
    lrs = [0.0, config["lr"] / 2, config["lr"], config["lr"] / 3]
    (stage.out_dir / "log.jsonl").write_text(
        "".join(
            json.dumps(
                {"step": i + 1, "loss": 6.0, "teacher_entropy": 4.0, "teacher_kl_uniform": 1.0}
                | {"lr": lr, "wd": 0.04, "momentum": 0.998, "teacher_temp": 0.02}
            )
            + "\n"
            for i, lr in enumerate(lrs)
        )
    )
    return stage


def test_report_lists_the_settings_each_training_ran_with(tmp_path: Path):
    from labkit.report import training_settings
    from labkit.train.config import TrainConfig

    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.yaml").write_text("steps: 8\nseed: 0\nseeds: 2\ntrain: {}\n")

    def config(method: str, **kw) -> dict:
        base = dict(method=method, steps=8, steps_per_epoch=4, warmup_epochs=0.5, out_dir="x")
        return TrainConfig(**(base | kw)).to_dict()

    stages = [
        _trained(run, "dora", 0, config("dora", lr=5e-4, out_dim=1024, scale_lr=False)),
        _trained(
            run, "dora", 1, config("dora", lr=5e-4, out_dim=512, scale_lr=False), in_checkpoint=True
        ),
        _trained(run, "dino", 0, config("dino", lr=1e-4, out_dim=1024, scale_lr=True)),
        _trained(run, "timetuning", 0, config("timetuning", img_size=112)),
    ]
    rows = {r["setting"]: r for r in training_settings(stages)}
    # seeds that differ show both values; the checkpoint stands in for an older run's record
    assert rows["head output K"] == {
        "setting": "head output K",
        "DoRA": "1024 / 512",
        "DINO": "1024",
        "TimeTuning": "–",
    }
    assert rows["learning rate"]["DoRA"] == "0.0005"  # unscaled: the log's peak is the same
    assert rows["learning rate"]["DINO"] == "0.0001 x clips / 256, peak 0.0001 in the log"
    assert rows["lr warm-up"]["DoRA"] == "2 steps, then cosine to 1e-06"  # 0.5 epochs of 4 steps
    assert rows["DoRA objects"]["DINO"] == "–"
    # TimeTuning has no teacher and no local crops: no such rows, its own instead
    assert rows["views"]["TimeTuning"] == "112 px"
    assert rows["teacher momentum"]["TimeTuning"] == "–" == rows["TimeTuning"]["DoRA"]
    assert rows["student temperature"]["TimeTuning"] == "–"  # only DINO's loss has one
    assert rows["TimeTuning"]["TimeTuning"].startswith("200 prototypes, the last 2 blocks")
    assert rows["DoRA objects"]["DoRA"] == (
        "3 objects from heads drawn at random each step, Sinkhorn-Knopp (ε 0.05), masks: each "
        "map above its mean, corrected loss"
    )
    assert rows["centre"]["DoRA"] == "momentum 0.9, starts at zeros"

    page = write_report(run, stages).read_text()
    training = page[page.index("<h2>Training</h2>") : page.index("<h2>Attention")]
    assert "<h3>Settings the runs used</h3>" in training
    # one sentence for the seeds it fits, not one per seed
    assert training.count("The DoRA teacher did not collapse.") == 1
    assert "Seeds 0, 1: The DoRA teacher did not collapse." in training
    assert "Seed 0: The DINO teacher did not collapse." in training
    # durations in whole seconds
    stages_table = page[page.index("<h2>Stages</h2>") : page.index("<h2>Training</h2>")]
    assert "<td>139</td>" in stages_table and "138.9" not in stages_table
    assert "<td>116</td>" in training and "116.4" not in training
    assert "every setting the trainings ran with is under Training" in page
