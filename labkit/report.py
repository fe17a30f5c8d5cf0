"""``report.html`` of a pipeline run: links to every stage, key figures, metrics, a plain verdict.

The report reads only what the stages wrote (``metrics.json``, PNGs, executed notebooks), so it can
be rebuilt at any time with ``labkit pipeline --only report``. Images are linked relative to the
run folder: open ``runs/<name>/report.html`` from there (or copy the whole folder).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from labkit.runfolder import write_atomic

__all__ = ["write_report", "verdict", "comparison_rows"]

# headline metrics of the comparison, higher is better for all
KEY_METRICS = (
    ("J&F", "label propagation J&F"),
    ("attn best head J", "attention-mask Jaccard, best head"),
    ("attn head avg J", "attention-mask Jaccard, head average"),
    ("k-means clip_hungarian mIoU", "k-means mIoU per clip"),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.verdict { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.8em 1em; }
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


def _img(run_dir: Path, path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    rel = path.relative_to(run_dir).as_posix()
    return f"<figure><img src='{html.escape(rel)}' alt='{html.escape(alt)}'><figcaption class='muted'>{html.escape(alt)}</figcaption></figure>"


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
    return (f"On {dataset}, after {budget}: {overall} " + " ".join(sentences)
            + f" (Differences under {tie} count as ties.)")


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
        note = (f"The pretrained reference <code>{html.escape(name)}</code> is explored and evaluated "
                "beside the trained models (label <b>pretrained</b>).")
    elif cfg.get("pretrained") is False:
        note = "The pretrained reference was switched off (<code>pretrained: false</code>)."
    else:
        note = (f"No pretrained weights were used: <code>{html.escape(name)}</code> is not in the local "
                "Hugging Face cache, so every model here is a random init or trained by this run. "
                "Run once with network access and <code>-o pretrained=true</code> to add it "
                "(<code>labkit models</code> lists the supported weights).")
    return f"<h2>Weights</h2><p>{note}</p><ul>{items}</ul>"


def _budget(run_dir: Path, cfg: dict[str, Any]) -> str:
    steps = cfg.get("steps")
    model = cfg.get("model")
    kw = cfg.get("model_kwargs") or {}
    arch = f"{model} ({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else str(model)
    return (f"{steps} steps of {cfg.get('batch_size')} clips x {cfg.get('num_frames')} frames at "
            f"{cfg.get('img_size')} px per method, {arch}, on {cfg.get('device')}")


def write_report(run_dir: str | Path, stages: Sequence[Any]) -> Path:
    """Build ``run_dir/report.html`` from what the stages wrote.

    Args:
        run_dir: the run folder (``runs/<name>``).
        stages: the pipeline's :class:`labkit.pipeline.Stage` list (names, groups, folders).

    Returns:
        Path of ``report.html``.
    """
    from labkit.eval.report import html_table  # imports torch: only when a report is written
    from labkit.train.report import plot_log

    run_dir = Path(run_dir).resolve()
    cfg = _read_json_yaml(run_dir / "config.yaml")
    env = _read_json(run_dir / "environment.json") or {}
    parts = [f"<h1>labkit run <code>{html.escape(run_dir.name)}</code></h1>"]
    parts.append(
        f"<p class='muted'>{html.escape(str(env.get('date', '')))} · device {html.escape(str(env.get('device')))}"
        f" · git {html.escape(str(env.get('git_commit', ''))[:10])}{' (modified)' if env.get('git_dirty') else ''}"
        f" · torch {html.escape(str(env.get('packages', {}).get('torch')))} · {html.escape(str(env.get('processor', '')))}"
        f" × {env.get('cpu_count')}</p>"
    )
    budget = _budget(run_dir, cfg)

    # verdicts first: what a reader wants to know
    evaluations = [s for s in stages if s.group == "evaluate"]
    verdicts = []
    for stage in evaluations:
        metrics = _read_json(stage.out_dir / "metrics.json")
        if metrics is None:
            verdicts.append(f"<p>{html.escape(stage.name)}: not run (no dataset or not complete).</p>")
            continue
        dataset = stage.name.removeprefix("evaluate_")
        verdicts.append(f"<p>{html.escape(verdict(metrics, dataset, budget))}</p>")
    parts.append("<h2>Verdict</h2><div class='verdict'>" + "".join(verdicts) + "</div>")
    parts.append(weights_section(cfg, stages))

    # stages
    rows = []
    for stage in stages:
        if stage.group == "report":
            continue
        marker = _read_json(stage.out_dir / "stage.json") or {}
        nb = stage.out_dir / f"{stage.notebook}.html"
        rows.append({
            "stage": stage.name,
            "status": "done" if marker else "not run",
            "seconds": marker.get("seconds"),
            "notebook": _link(run_dir, nb, f"{stage.notebook}.html") if nb.is_file() else "–",
        })
    parts.append("<h2>Stages</h2>" + _table_html_cells(rows))

    # training
    train_rows, train_figures, collapse_notes = [], [], []
    for stage in (s for s in stages if s.group == "train"):
        m = _read_json(stage.out_dir / "metrics.json") or {}
        if m:  # the collapse watchdog's verdict, in plain words
            from labkit.train.watchdog import collapse_sentence

            collapse_notes.append(f"<p>{html.escape(collapse_sentence(m))}</p>")
        train_rows.append({"method": stage.name.removeprefix("train_"), "steps": m.get("steps"),
                           "first loss": m.get("first_loss"), "final loss": m.get("final_loss"),
                           "teacher entropy": m.get("teacher_entropy"),
                           "teacher KL to uniform": m.get("teacher_kl_uniform"),
                           "images/s": m.get("images_per_second"), "seconds": m.get("seconds")})
        log = stage.out_dir / "log.jsonl"
        if log.is_file():
            png = stage.out_dir / "log.png"
            plot_log(log, title=stage.name).savefig(png, dpi=90, bbox_inches="tight")
            train_figures.append(_img(run_dir, png, f"{stage.name}: loss, collapse signals, schedules"))
    parts += ["<h2>Training</h2>", f"<p class='muted'>{html.escape(budget)}</p>", html_table(train_rows),
              *collapse_notes, *train_figures]

    # exploration
    parts.append("<h2>Attention and segments of the trained models</h2>")
    for stage in (s for s in stages if s.group == "explore"):
        weights = (_read_json(stage.out_dir / "metrics.json") or {}).get("weights")
        parts.append(f"<h3>{html.escape(stage.name)}</h3>")
        if weights:
            parts.append(f"<p class='muted'>weights: {html.escape(str(weights))}</p>")
        for name, alt in (("heads.png", "three heads as R, G, B"), ("masks.png", "thresholded attention masks"),
                          ("segments.png", "k-means segments and PCA"), ("objects.png", "DoRA objects"),
                          ("attention.gif", "animation: frame | heads | segments")):
            parts.append(_img(run_dir, stage.out_dir / name, f"{stage.name}: {alt}"))

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
            f"<p class='muted'>{len(metrics.get('sequences', []))} sequences at {cfg_e.get('resolution')} px"
            f" (shorter side), data {html.escape(str(metrics.get('data_root') or 'synthetic'))}</p>"
        )
        cols = ["model", "J&F", "J", "F", "attn best head J", "attn head avg J", "attn stability",
                "DoRA best object J", "k-means frame_hungarian mIoU", "k-means clip_hungarian mIoU",
                "k-means dataset_hungarian mIoU", "seconds"]
        rows = comparison_rows(metrics)
        cols = [c for c in cols if any(c in r for r in rows)]
        parts.append(html_table(rows, columns=cols))
        for png in sorted(stage.out_dir.glob("bars_*.png"))[:3]:
            parts.append(_img(run_dir, png, png.stem.replace("_", " ")))
        for png in sorted(stage.out_dir.glob("examples_*.png")):
            parts.append(_img(run_dir, png, png.stem.replace("_", " ")))

    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(cfg, indent=2)) + "</pre>")
    parts.append(f"<p class='muted'>{_link(run_dir, run_dir / 'environment.json', 'environment.json')} · "
                 f"{_link(run_dir, run_dir / 'config.yaml', 'config.yaml')}</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>labkit {html.escape(run_dir.name)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = run_dir / "report.html"
    write_atomic(out, page.encode("utf-8"))  # the previous report stays whole until then
    return out


def _table_html_cells(rows: Sequence[dict[str, Any]]) -> str:
    """A table whose cells are already HTML (links)."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{v if isinstance(v, str) else _fmt(v)}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_json_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except OSError:
        return {}
