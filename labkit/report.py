"""``report.html`` of a pipeline run: links to every stage, key figures, metrics, a plain verdict.

The report reads only what the stages wrote (``metrics.json``, PNGs, executed notebooks), so it can
be rebuilt at any time with ``labkit pipeline --only report``. Images are linked relative to the
run folder: open ``runs/<name>/report.html`` from there (or copy the whole folder).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.eval.report import BAR_METRICS, bar_file_name, html_table
from labkit.notebooks import notebook_parameters
from labkit.runfolder import write_atomic
from labkit.train.config import TrainConfig
from labkit.train.report import plot_log
from labkit.train.watchdog import collapse_kind, collapse_sentence, describe_collapse

__all__ = ["write_report", "verdict", "comparison_rows", "training_health", "learned_nothing"]

# headline metrics of the comparison, higher is better for all
KEY_METRICS = (
    ("J&F", "label propagation J&F"),
    ("attn best head J", "attention-mask Jaccard, best head"),
    ("attn head avg J", "attention-mask Jaccard, head average"),
    ("k-means clip_hungarian mIoU", "k-means mIoU per clip"),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.verdict { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.8em 1em; }
.verdict p { margin: 0.4em 0; } .headline { font-size: 1.1em; font-weight: 600; }
.bad { color: #a00000; font-weight: 600; }
details { margin: 0.5em 0; } summary { cursor: pointer; color: #245; }
.charts { display: flex; flex-wrap: wrap; gap: 0 1em; } .charts figure { margin: 0.3em 0; }
.charts figure.half { width: calc(50% - 0.5em); }
.muted { color: #777; font-size: 0.9em; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _link(run_dir: Path, path: Path, text: str) -> str:
    rel = path.relative_to(run_dir).as_posix()
    return f"<a href='{html.escape(rel)}'>{html.escape(text)}</a>"


def _img(run_dir: Path, path: Path, alt: str, css: str = "") -> str:
    if not path.is_file():
        return ""
    rel = path.relative_to(run_dir).as_posix()
    cls = f" class='{css}'" if css else ""
    return (
        f"<figure{cls}><img src='{html.escape(rel)}' alt='{html.escape(alt)}'>"
        f"<figcaption class='muted'>{html.escape(alt)}</figcaption></figure>"
    )


# DoRA's objects with and without Sinkhorn-Knopp: the step_by_step stage's metrics["sinkhorn"]
SINKHORN_TEXT = (
    "Share: the fraction of a frame's patches where the object's map is the largest of the k "
    "(plan: of the first frame's transport plan; tracked: mean over the clip's frames); mass: "
    "the object's part of the plan's row at each patch, averaged over the patches (1/k each "
    "under Sinkhorn-Knopp); overlap: the sum over patches of min(a, b) of two objects' maps, "
    "each summing to 1, averaged over the pairs of objects (and the frames): 1 for identical "
    "maps, 0 for disjoint ones. The maps in the figure are min-max scaled within each frame, "
    "per object."
)
NEAR_IDENTICAL_OVERLAP = 0.9  # above this mean overlap the report says the objects are one map


def _shares(values: Any) -> str:
    return "/".join(f"{float(v):.2f}" for v in values) if values else "–"


def sinkhorn_rows(numbers: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The with/without Sinkhorn-Knopp numbers as table rows and a sentence on the overlap.

    Args:
        numbers: ``metrics.json["sinkhorn"]`` of the dora_step_by_step notebook
            (:func:`labkit.viz.dora.sinkhorn_numbers`): plan name -> share_mean, overlap_mean,
            plan_share, plan_mass.

    Returns:
        (rows, sentence): one row per plan, shares as ``a/b/c`` strings; the sentence says
        whether the tracked objects are distinct (empty when nothing was measured).
    """
    rows = [
        {
            "plan": name,
            "plan share": _shares(n.get("plan_share")),
            "plan mass": _shares(n.get("plan_mass")),
            "tracked share": _shares(n.get("share_mean")),
            "tracked overlap": n.get("overlap_mean"),
        }
        for name, n in numbers.items()
    ]
    overlaps = {
        name: n["overlap_mean"]
        for name, n in numbers.items()
        if isinstance(n.get("overlap_mean"), (int, float))
    }
    if not overlaps:
        return rows, ""
    if min(overlaps.values()) > NEAR_IDENTICAL_OVERLAP:
        sentence = (
            f"The tracked objects' maps overlap by more than {NEAR_IDENTICAL_OVERLAP:.0%} with "
            "and without Sinkhorn-Knopp: the objects are nearly one map, and their shares rest "
            "on small differences between them."
        )
    else:
        sentence = "; ".join(f"{name}: overlap {v:.2f}" for name, v in overlaps.items()) + "."
    return rows, sentence


def _png_width(path: Path) -> int:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0])
    except (OSError, ImportError):
        return 0


def _verdict_html(text: str) -> str:
    """A verdict sentence block as a lead line and one bullet per measure."""
    lead, _, rest = text.partition(": ")
    overall, _, details = rest.partition(". ")
    items = [d.strip() for d in re.split(r"(?<=\)\.) ", details) if d.strip()]
    if not items:
        return f"<p>{html.escape(text)}</p>"
    return (
        f"<p>{html.escape(lead)}: {html.escape(overall.rstrip('.'))}.</p><ul>"
        + "".join(f"<li>{html.escape(i)}</li>" for i in items)
        + "</ul>"
    )


def comparison_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary row of every model of an evaluation's ``metrics.json``."""
    return list(evaluation.get("summary", []))


def verdict(evaluation: dict[str, Any], dataset: str, budget: str, tie: float = 0.005) -> str:
    """One plain sentence per key metric: does DoRA beat the DINO baseline and random init?

    Args:
        evaluation: an evaluation's ``metrics.json``.
        dataset: its name, for the sentence.
        budget: the training budget, for the sentence.
        tie: differences smaller than this (on scores in [0, 1]) count as a tie, not a win.
    """
    rows = {r["model"]: r for r in comparison_rows(evaluation)}
    if "dora" not in rows:
        return f"On {dataset}: no DoRA model was evaluated."
    sentences, wins, measured = [], [], 0
    for key, name in KEY_METRICS:
        values = {m: rows[m].get(key) for m in ("dora", "dino", "random") if m in rows}
        if values.get("dora") is None:
            continue
        others = {m: v for m, v in values.items() if m != "dora" and v is not None}
        dora = values["dora"]
        beaten = [m for m, v in others.items() if dora > v + tie]
        tied = [m for m, v in others.items() if abs(dora - v) <= tie]
        behind = [m for m, v in others.items() if dora < v - tie]
        clauses = []
        if beaten:
            clauses.append("beats " + " and ".join(beaten))
        if tied:
            clauses.append("ties with " + " and ".join(tied))
        if behind:
            clauses.append("is behind " + " and ".join(behind))
        numbers = ", ".join(f"{m} {v:.3f}" for m, v in values.items() if v is not None)
        label = name if name.startswith("k-") else name[0].upper() + name[1:]  # "k-means" stays
        sentences.append(f"{label}: DoRA {', '.join(clauses)} ({numbers}).")
        measured += 1
        if others and len(beaten) == len(others):
            wins.append(name)
    if not sentences:
        return f"On {dataset}: no comparable metric."
    rivals = " and ".join(m for m in ("dino", "random") if m in rows)
    if not wins:
        overall = f"DoRA beats {rivals} on none of the {measured} measures."
    elif len(wins) == measured:
        overall = f"DoRA beats {rivals} on all {measured} measures."
    else:
        overall = f"DoRA beats {rivals} on {len(wins)} of {measured} measures ({'; '.join(wins)})."
    return (
        f"On {dataset}, after {budget}: {overall} "
        + " ".join(sentences)
        + f" (Differences under {tie} count as ties.)"
    )


def learned_nothing(evaluation: dict[str, Any], model: str, tie: float = 0.005) -> bool | None:
    """Whether ``model`` is within ``tie`` of random init, or below it, on every key metric.

    Returns:
        True / False, or None when ``model`` or ``random`` was not evaluated on any key metric.
    """
    rows = {r["model"]: r for r in comparison_rows(evaluation)}
    if model not in rows or "random" not in rows:
        return None
    pairs = [
        (a, b)
        for a, b in ((rows[model].get(k), rows["random"].get(k)) for k, _ in KEY_METRICS)
        if a is not None and b is not None
    ]
    if not pairs:
        return None
    return all(a <= b + tie for a, b in pairs)


def _out_dim(stage: Any, cfg: dict[str, Any], metrics: dict[str, Any] | None = None) -> int | None:
    """K of the stage's DINO head: what its training recorded in metrics.json, else its
    parameters, the run's train options, else TrainConfig's (the train notebook's own default
    differs from TrainConfig's, so the recorded value comes first)."""
    value: Any = (  # from JSON files and the notebook's parameters
        (metrics or {}).get("out_dim")
        or (getattr(stage, "params", None) or {}).get("out_dim")
        or (cfg.get("train") or {}).get("out_dim")
    )
    if value is None and getattr(stage, "notebook", None):  # the notebook's own default
        try:
            value = notebook_parameters(stage.notebook).get("out_dim")
        except (OSError, ValueError):
            value = None
    if value is None:
        value = TrainConfig.__dataclass_fields__["out_dim"].default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _timetuning_health(metrics: dict[str, Any]) -> str:
    """One sentence about a TimeTuning run: the clusters its targets used at the last step
    (a collapse shows as few) and how often the last frame agreed with them."""
    clusters, agreement = metrics.get("target_clusters"), metrics.get("agreement")
    if clusters is None or agreement is None:
        return "TimeTuning has no teacher to collapse; no cluster statistics recorded."
    return (
        f"TimeTuning has no teacher to collapse; at its last step the targets used "
        f"{clusters:.0f} clusters and {agreement:.0%} of the last frames' patches agreed "
        "with them."
    )


def training_health(stage: Any, metrics: dict[str, Any], cfg: dict[str, Any]) -> tuple[str, bool]:
    """One plain sentence about a training stage's teacher, and whether it collapsed.

    A collapse is the watchdog's ``collapse`` event in ``metrics.json`` when there is one
    (:func:`labkit.train.watchdog.describe_collapse`), else the last step's teacher statistics
    (:func:`labkit.train.watchdog.collapse_kind`: entropy within 1% of log K, or over half the
    mass on one output dimension).
    """

    if metrics.get("method") == "timetuning":  # no teacher: the cluster count
        return _timetuning_health(metrics), False
    method = {"dora": "DoRA", "dino": "DINO"}.get(stage.name.removeprefix("train_"), stage.name)
    k = _out_dim(stage, cfg, metrics)
    entropy = metrics.get("teacher_entropy")
    numbers = ""
    if entropy is not None and k and k > 1:
        numbers = (
            f" (final teacher entropy {entropy:.3f} nats = {entropy / math.log(k):.1%} of "
            f"log K = ln {k} = {math.log(k):.3f})"
        )
    if metrics.get("collapse"):
        text = describe_collapse(metrics["collapse"], method)
        return text[0].upper() + text[1:].rstrip(".") + numbers + ".", True
    kind = collapse_kind(metrics, k) if k else None
    if kind == "uniform":
        return (
            f"The {method} teacher collapsed: its output is uniform{numbers}; the features carry "
            "no information about the frames.",
            True,
        )
    if kind == "one_dimension":
        return (
            f"The {method} teacher collapsed: over half of its mass is on one output dimension "
            f"(top mass {metrics.get('teacher_top_mass'):.2f}){numbers}.",
            True,
        )
    if entropy is None:
        return f"{method}: no teacher statistics recorded.", False
    return f"The {method} teacher did not collapse{numbers}.", False


def weights_section(cfg: dict[str, Any], stages: Sequence[Any]) -> str:
    """HTML: which network and weights every figure and number of the run comes from.

    One line per model of the evaluations (``weights_label`` recorded in their metrics) and per
    exploration, then whether the pretrained reference ran and, if not, why and how to add it.
    """
    seen: dict[str, str] = {}
    for stage in stages:
        metrics = _read_json(stage.out_dir / "metrics.json") or {}
        if stage.group == "evaluate":
            for label, model in (metrics.get("models") or {}).items():
                info = model.get("info", {}) if isinstance(model, dict) else {}
                if info.get("weights_label"):
                    seen.setdefault(str(label), str(info["weights_label"]))
        elif stage.group == "explore" and metrics.get("weights"):
            seen.setdefault(stage.name, str(metrics["weights"]))
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in seen.items())
    name = str(cfg.get("pretrained_model") or "vit_small_patch16_224.dino")
    if any(getattr(s, "name", "") == "explore_pretrained" for s in stages):
        note = (
            f"The pretrained reference <code>{html.escape(name)}</code> is explored and evaluated "
            "beside the trained models (label <b>pretrained</b>)."
        )
    elif cfg.get("pretrained") is False:
        note = "The pretrained reference was switched off (<code>pretrained: false</code>)."
    else:
        note = (
            f"No pretrained weights were used: <code>{html.escape(name)}</code> is not in the "
            "local Hugging Face cache, so every model here is a random init or trained by this "
            "run. "
            "Run once with network access and <code>-o pretrained=true</code> to add it "
            "(<code>labkit models</code> lists the supported weights)."
        )
    return f"<h2>Weights</h2><p>{note}</p><ul>{items}</ul>"


def _budget(run_dir: Path, cfg: dict[str, Any]) -> str:
    steps = cfg.get("steps")
    model = cfg.get("model")
    kw = cfg.get("model_kwargs") or {}
    arch = f"{model} ({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else str(model)
    return (
        f"{steps} steps of {cfg.get('batch_size')} clips x {cfg.get('num_frames')} frames at "
        f"{cfg.get('img_size')} px per method, {arch}, on {cfg.get('device')}"
    )


def write_report(run_dir: str | Path, stages: Sequence[Any]) -> Path:
    """Build ``run_dir/report.html`` from what the stages wrote.

    Args:
        run_dir: the run folder (``runs/<name>``).
        stages: the pipeline's :class:`labkit.pipeline.Stage` list (names, groups, folders).

    Returns:
        Path of ``report.html``.
    """

    run_dir = Path(run_dir).resolve()
    cfg = _read_json_yaml(run_dir / "config.yaml")
    env = _read_json(run_dir / "environment.json") or {}
    parts = [f"<h1>labkit run <code>{html.escape(run_dir.name)}</code></h1>"]
    date, device = html.escape(str(env.get("date", ""))), html.escape(str(env.get("device")))
    commit = html.escape(str(env.get("git_commit", ""))[:10])
    modified = " (modified)" if env.get("git_dirty") else ""
    torch_version = html.escape(str(env.get("packages", {}).get("torch")))
    processor = html.escape(str(env.get("processor", "")))
    parts.append(
        f"<p class='muted'>{date} · device {device} · git {commit}{modified}"
        f" · torch {torch_version} · {processor} × {env.get('cpu_count')}</p>"
    )
    budget = _budget(run_dir, cfg)

    # verdicts first: what a reader wants to know, in plain words
    evaluations = [s for s in stages if s.group == "evaluate"]
    verdicts, headlines = [], []
    collapsed = []
    for stage in (s for s in stages if s.group == "train"):
        m = _read_json(stage.out_dir / "metrics.json")
        if m is None:
            continue
        sentence, bad = training_health(stage, m, cfg)
        verdicts.append(f"<p{' class=bad' if bad else ''}>{html.escape(sentence)}</p>")
        if bad:
            collapsed.append(stage.name.removeprefix("train_"))
    trained = [s.name.removeprefix("train_") for s in stages if s.group == "train"]
    for stage in evaluations:
        metrics = _read_json(stage.out_dir / "metrics.json")
        dataset = stage.name.removeprefix("evaluate_")
        if metrics is None:
            verdicts.append(
                f"<p>{html.escape(dataset)}: not evaluated (no dataset or not complete).</p>"
            )
            continue
        text = verdict(metrics, dataset, budget)
        overall = text.partition(": ")[2].partition(". ")[0].rstrip(".")
        headlines.append(f"On {dataset}: {overall}.")
        nothing = [m for m in trained if learned_nothing(metrics, m)]
        if nothing:
            names = " and ".join({"dora": "DoRA", "dino": "DINO"}.get(m, m) for m in nothing)
            headlines.append(
                f"On {dataset}, {names} learned nothing measurable: no better than random "
                f"init on any key metric."
            )
        verdicts.append(_verdict_html(text))
    if collapsed:
        headlines.insert(
            0,
            "Training collapsed for "
            + " and ".join(collapsed)
            + ": once its teacher is uniform it teaches nothing, so its numbers below "
            "show a barely trained network, not what the method can do.",
        )
    parts.append(
        "<h2>Verdict</h2><div class='verdict'>"
        + "".join(f"<p class='headline'>{html.escape(h)}</p>" for h in headlines)
        + "".join(verdicts)
        + "<p class='muted'>All scores: higher is better, 0 to 1.</p></div>"
    )
    parts.append(weights_section(cfg, stages))

    # stages
    rows = []
    for stage in stages:
        if stage.group == "report":
            continue
        marker = _read_json(stage.out_dir / "stage.json") or {}
        nb = stage.out_dir / f"{stage.notebook}.html"
        method = (getattr(stage, "params", None) or {}).get(
            "method"
        )  # train_dora runs both methods
        label = f"{stage.notebook} notebook" + (f" (method {method})" if method else "")
        rows.append(
            {
                "stage": stage.name,
                "status": "done" if marker else "not run",
                "seconds": marker.get("seconds"),
                "notebook": _link(run_dir, nb, label) if nb.is_file() else "–",
            }
        )
    parts.append("<h2>Stages</h2>" + _table_html_cells(rows))

    # training
    train_rows, train_figures, collapse_notes = [], [], []
    for stage in (s for s in stages if s.group == "train"):
        m = _read_json(stage.out_dir / "metrics.json") or {}
        if m:  # the collapse watchdog's verdict, in plain words
            collapse_notes.append(f"<p>{html.escape(collapse_sentence(m))}</p>")
        train_rows.append(
            {
                "method": stage.name.removeprefix("train_"),
                "steps": m.get("steps"),
                "first loss": m.get("first_loss"),
                "final loss": m.get("final_loss"),
                "teacher entropy": m.get("teacher_entropy"),
                "teacher KL to uniform": m.get("teacher_kl_uniform"),
                "images/s": m.get("images_per_second"),
                "seconds": m.get("seconds"),
            }
        )
        log = stage.out_dir / "log.jsonl"
        if log.is_file():
            png = stage.out_dir / "log.png"
            plot_log(log, title=stage.name).savefig(png, dpi=90, bbox_inches="tight")
            train_figures.append(
                _img(run_dir, png, f"{stage.name}: loss, collapse signals, schedules")
            )
    parts += [
        "<h2>Training</h2>",
        f"<p class='muted'>{html.escape(budget)}</p>",
        html_table(train_rows),
        *collapse_notes,
        *train_figures,
    ]

    # exploration
    parts.append("<h2>Attention and segments of the trained models</h2>")
    for stage in (s for s in stages if s.group == "explore"):
        weights = (_read_json(stage.out_dir / "metrics.json") or {}).get("weights")
        parts.append(f"<h3>{html.escape(stage.name)}</h3>")
        if weights:
            parts.append(f"<p class='muted'>weights: {html.escape(str(weights))}</p>")
        sinkhorn = (_read_json(stage.out_dir / "metrics.json") or {}).get("sinkhorn")
        if sinkhorn:  # DoRA's objects with and without Sinkhorn-Knopp (dora_step_by_step)
            rows, sentence = sinkhorn_rows(sinkhorn)
            parts += [
                "<h4>DoRA's objects with and without Sinkhorn-Knopp</h4>",
                html_table(rows, digits=2),
                f"<p>{html.escape(sentence)}</p>" if sentence else "",
                f"<p class='muted'>{html.escape(SINKHORN_TEXT)}</p>",
                _img(
                    run_dir,
                    stage.out_dir / "sinkhorn.png",
                    f"{stage.name}: DoRA's objects with Sinkhorn-Knopp and with a row softmax, "
                    "shares and overlap per frame",
                ),
            ]
        parts.append(
            _img(
                run_dir,
                stage.out_dir / "attention.gif",
                f"{stage.name}: animation: frame | heads | segments",
            )
        )
        more = "".join(
            _img(run_dir, stage.out_dir / name, f"{stage.name}: {alt}")
            for name, alt in (
                ("heads.png", "three heads as R, G, B"),
                ("all_heads.png", "every head's attention"),
                ("masks.png", "thresholded attention masks"),
                ("segments.png", "k-means segments and PCA"),
                ("objects.png", "DoRA objects: masks (Sinkhorn-Knopp)"),
                ("artifacts.png", "high-norm tokens"),
            )
        )
        if more:
            parts.append(
                f"<details><summary>more figures of {html.escape(stage.name)}: heads over 8 "
                f"frames, every head, masks, segments, artifacts</summary>{more}</details>"
            )

    # evaluation
    parts.append("<h2>Evaluation</h2>")
    for stage in evaluations:
        metrics = _read_json(stage.out_dir / "metrics.json")
        parts.append(f"<h3>{html.escape(stage.name)}</h3>")
        if metrics is None:
            parts.append("<p class='muted'>not run</p>")
            continue
        cfg_e = metrics.get("config", {})
        parts.append(
            f"<p class='muted'>{len(metrics.get('sequences', []))} sequences at "
            f"{cfg_e.get('resolution')} px (shorter side), data "
            f"{html.escape(str(metrics.get('data_root') or 'synthetic'))}</p>"
        )
        cols = [
            "model",
            "J&F",
            "J",
            "F",
            "attn best head J",
            "attn head avg J",
            "attn stability",
            "DoRA best object J",
            "k-means frame_hungarian mIoU",
            "k-means clip_hungarian mIoU",
            "k-means dataset_hungarian mIoU",
            "seconds",
        ]
        rows = comparison_rows(metrics)
        cols = [c for c in cols if any(c in r for r in rows)]
        parts.append(html_table(rows, columns=cols))
        parts.append(
            "<p class='muted'>Bars: each sequence; legend: each model over all sequences, "
            "the number in the table above.</p>"
        )
        charts = []
        for png, metric in _bar_charts(stage.out_dir):
            css = "half" if 0 < _png_width(png) <= 900 else ""  # two narrow charts side by side
            charts.append(_img(run_dir, png, f"{metric} per sequence", css))
        parts.append("<div class='charts'>" + "".join(charts) + "</div>")
        parts.append(
            _img(
                run_dir,
                stage.out_dir / "examples.png",
                "one example frame under every model (white: ground truth)",
            )
        )
        per_model = sorted(stage.out_dir.glob("examples_*.png"))
        if per_model:
            parts.append(
                "<p class='muted'>More example frames per model: "
                + " · ".join(
                    _link(run_dir, png, png.stem.removeprefix("examples_")) for png in per_model
                )
                + "</p>"
            )

    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(cfg, indent=2)) + "</pre>")
    parts.append(
        f"<p class='muted'>{_link(run_dir, run_dir / 'environment.json', 'environment.json')} · "
        f"{_link(run_dir, run_dir / 'config.yaml', 'config.yaml')}</p>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>labkit {html.escape(run_dir.name)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    out = run_dir / "report.html"
    write_atomic(out, page.encode("utf-8"))  # the previous report stays whole until then
    return out


def _bar_charts(folder: Path) -> list[tuple[Path, str]]:
    """The evaluation's bar charts and their metrics: the headline metrics first (J&F first),
    then any others."""

    first = [(folder / f"{bar_file_name(m)}.png", m) for m in BAR_METRICS]
    first = [(p, m) for p, m in first if p.is_file()]
    known = {p for p, _ in first}
    return first + [
        (p, p.stem.removeprefix("bars_").replace("_", " "))
        for p in sorted(folder.glob("bars_*.png"))
        if p not in known
    ]


def _table_html_cells(rows: Sequence[dict[str, Any]]) -> str:
    """A table whose cells are already HTML (links)."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{v if isinstance(v, str) else _fmt(v)}</td>" for v in r.values())
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_json_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except OSError:
        return {}
