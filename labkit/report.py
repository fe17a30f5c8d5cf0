"""``report.html`` of a pipeline run: links to every stage, key figures, metrics, a plain verdict.

The report reads only what the stages wrote (``metrics.json``, PNGs, executed notebooks; an
older training's checkpoint for the settings it ran with), so it can be rebuilt at any time with
``labkit pipeline --only report``. With several seeds per method (models labelled ``dora@s0``,
stages ``train_dora_s0``) every number is a mean ± sample standard deviation over the seeds
(:mod:`labkit.eval.seeds`; the verdict says n, the tables name the seeds), a method is called
better only where the intervals separate, and the run folder's ``metrics.json`` holds the
aggregates and the verdict's headlines. Images
are linked relative to the run folder: open ``runs/<name>/report.html`` from there (or copy the
whole folder).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.eval.report import BAR_METRICS, bar_file_name, html_table
from labkit.eval.seeds import (
    ONE_SEED,
    SeedStats,
    aggregate_seeds,
    aggregate_to_dict,
    compare,
    seed_stats,
    seed_table,
    split_seed_label,
)
from labkit.notebooks import notebook_parameters
from labkit.runfolder import read_json, write_atomic
from labkit.train.config import IGNORED_FIELDS, TrainConfig
from labkit.train.report import plot_log
from labkit.train.watchdog import collapse_kind, collapse_sentence, describe_collapse

__all__ = [
    "write_report",
    "verdict",
    "verdict_parts",
    "Verdict",
    "comparison_rows",
    "comparison_pairs",
    "training_health",
    "training_rows",
    "learned_nothing",
]

# headline metrics of the comparison, higher is better for all
KEY_METRICS = (
    ("J&F", "label propagation J&F"),
    ("attn best head J", "attention-mask Jaccard, best head"),
    ("attn head avg J", "attention-mask Jaccard, head average"),
    ("DoRA best object J", "DoRA's tracked objects, best object J"),
    ("k-means clip_hungarian mIoU", "k-means mIoU per clip"),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
/* a table wider than the page scrolls in its own box, the page does not */
table { display: block; max-width: 100%; overflow-x: auto; }
.nowrap td { white-space: nowrap; }  /* mean ± std (n) on one line */
.words td, .words th { text-align: left; }  /* a table of phrases, not numbers */
.words td:first-child { white-space: nowrap; }
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


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _whole(value: Any) -> Any:
    """A duration in whole units for a table (``None`` and non-numbers unchanged)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return round(value) if is_number and math.isfinite(value) else value


def _tenth(value: Any) -> Any:
    """A rate to one decimal for a table, as text (``None`` and non-numbers unchanged)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.1f}" if is_number and math.isfinite(value) else value


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


# head entropy (of log N) above which the report calls the heads' attention close to uniform
ALMOST_UNIFORM_ATTENTION = 0.9


def _heads_clause(spread: dict[str, Any]) -> str:
    """The start of the report's reason where the heads' attention explains it (their entropy
    and distance from :func:`labkit.tracking.prototype_spread`), else an empty string."""
    entropy, distance = spread.get("head_entropy"), spread.get("head_distance")
    if not isinstance(entropy, (int, float)) or not isinstance(distance, (int, float)):
        return ""
    measured = (
        f"(entropy {entropy:.3f} of a uniform attention's, and two heads' attention differ by "
        f"{distance:.2f} in total variation, where 0 is the same and 1 disjoint), so "
    )
    if entropy > ALMOST_UNIFORM_ATTENTION:
        return "each chosen head's [CLS] attention is close to uniform " + measured
    if distance < 1 - ALMOST_UNIFORM_ATTENTION:
        return "the chosen heads attend to the same patches " + measured
    return ""


def sinkhorn_rows(
    numbers: dict[str, Any], spread: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """The with/without Sinkhorn-Knopp numbers as table rows and a sentence on the overlap.

    Args:
        numbers: ``metrics.json["sinkhorn"]`` of the dora_step_by_step notebook
            (:func:`labkit.viz.dora.sinkhorn_numbers`): plan name -> share_mean, overlap_mean,
            plan_share, plan_mass.
        spread: ``metrics.json["prototype_spread"]`` of the same notebook
            (:func:`labkit.tracking.prototype_spread`), or None: where the objects are one map,
            the sentence says how far apart the heads' prototypes were.

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
        if spread and all(
            isinstance(spread.get(key), (int, float))
            for key in ("prototype_cosine", "logit_spread_per_epsilon", "plan_peak", "uniform_peak")
        ):
            sentence += (
                f" The reason is in the discovery: {_heads_clause(spread)}the heads' prototypes "
                f"are nearly parallel (mean cosine {spread['prototype_cosine']:.2f}), a patch's "
                f"scores for the k objects differ by "
                f"{spread['logit_spread_per_epsilon']:.2f} epsilon on average, "
                f"and the Sinkhorn-Knopp plan gives a patch's largest share "
                f"{spread['plan_peak']:.2f} where a uniform plan gives "
                f"{spread['uniform_peak']:.2f}: every object is close to the frame's average token."
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


METHOD_NAMES = {
    "dora": "DoRA",
    "dino": "DINO",
    "timetuning": "TimeTuning",
    "random": "random init",
    "pretrained": "pretrained",
}
TRAINED_METHODS = ("dora", "dino", "timetuning")  # the order in which the verdict compares them
INTERVAL_RULE = (
    "Better or worse only where the intervals mean ± one sample standard deviation over the "
    "seeds do not overlap; where they overlap: no measurable difference; with one seed there is "
    "no error bar and nothing is called better or worse."
)


def _name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


# datasets whose key (their stage is evaluate_<key>) says too little in a sentence
DATASET_TITLES = {
    "synthetic": "synthetic video, default variant",
    "synthetic-hard": "synthetic video, hard variant",
}


def dataset_title(key: str) -> str:
    """A dataset's name in the report's sentences: ``synthetic`` -> ``synthetic video, default
    variant``, ``synthetic-hard`` -> ``synthetic video, hard variant``; any other key (a DAVIS
    folder's name) as it is."""
    return DATASET_TITLES.get(key, key)


def foreground_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """What "DoRA object on foreground" is measured against: the objects' share of the frames
    (a property of the data, the same for every model), which is also the J of a whole-frame
    mask on "DoRA best object J", or "" where tracking did not run."""
    shares = [
        float(r["foreground share"])
        for r in rows
        if isinstance(r.get("foreground share"), (int, float))
        and math.isfinite(r["foreground share"])
    ]
    if not shares:
        return ""
    share = sum(shares) / len(shares)
    return (
        f"DoRA object on foreground: the share of the best tracked object's mask that lies on "
        f"the objects. The objects cover {share:.3f} of the frames (mean over the sequences), "
        f"so a mask that ignores them scores about {share:.3f}; above it the mask prefers the "
        f"objects, below it the background. A mask of the whole frame scores {share:.3f} on "
        "DoRA best object J too."
    )


def comparison_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary row of every model of an evaluation's ``metrics.json``."""
    return list(evaluation.get("summary", []))


def comparison_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """The comparisons of the verdict, among the methods evaluated: DoRA against random init and
    against every other trained method, every other trained method against random init."""
    trained = [m for m in TRAINED_METHODS if m in methods]
    pairs = [(m, "random") for m in trained[:1] if "random" in methods]
    pairs += [(trained[0], m) for m in trained[1:]]
    pairs += [(m, "random") for m in trained[1:] if "random" in methods]
    return pairs


@dataclass(frozen=True)
class Verdict:
    """The verdict on one evaluation: a lead, an overall sentence, one item per key metric."""

    lead: str  # "On synthetic, after <budget>, over seeds 0, 1, 2 (...)"
    overall: str  # "DoRA is measurably better than random init and DINO on 1 of 4 measures (...)"
    items: tuple[str, ...]  # per key metric: each comparison's outcome and the numbers
    judged: dict[str, Any]  # per key metric: the outcome of each comparison (for metrics.json)

    @property
    def text(self) -> str:
        if not self.items:
            return f"{self.lead}: {self.overall}."
        return f"{self.lead}: {self.overall}. " + " ".join(self.items) + f" ({INTERVAL_RULE})"


def _seeds_phrase(stats: Sequence[SeedStats], fallback: Any) -> str:
    counts = sorted({s.n for s in stats})
    seeds = sorted({x for s in stats for x in s.seeds if x is not None})
    if counts == [1]:
        seed = seeds[0] if seeds else fallback
        return "with one seed" + (f" ({seed})" if seed is not None else "")
    per = f"n={counts[0]} per method" if len(counts) == 1 else "n beside each number"
    listed = ", ".join(str(x) for x in seeds)
    return f"over seeds {listed} (mean ± sample standard deviation, {per})"


def verdict_parts(evaluation: dict[str, Any], dataset: str, budget: str) -> Verdict:
    """The verdict on one evaluation, by the interval rule (:func:`labkit.eval.seeds.compare`).

    For each key metric and each comparison of :func:`comparison_pairs`: ``better`` / ``worse``
    only where the two methods' intervals mean ± std over seeds do not overlap, ``no measurable
    difference`` where they do, ``one seed: no error bar`` with a single seed (then nothing is
    called better). Models labelled ``<method>@s<seed>`` count as seeds of one method.

    Args:
        evaluation: an evaluation's ``metrics.json``.
        dataset: its name, for the sentence.
        budget: the training budget, for the sentence.
    """
    keys = [k for k, _ in KEY_METRICS]
    agg = aggregate_seeds(comparison_rows(evaluation), keys)
    pairs = comparison_pairs(list(agg))
    if not pairs:
        models = ", ".join(agg) or "none"
        return Verdict(f"On {dataset}", f"nothing to compare (models: {models})", (), {})
    lead_method = pairs[0][0]
    compared = {m for pair in pairs for m in pair}
    methods = [m for m in ("random", *TRAINED_METHODS) if m in compared]  # the numbers' order
    items: list[str] = []
    wins: list[str] = []
    judged: dict[str, Any] = {}
    every: list[str] = []  # every comparison's outcome
    rival_wins: dict[str, list[str]] = {}  # per rival: the measures the lead method beats it on
    for key, name in KEY_METRICS:
        stats = {m: agg[m][key] for m in methods if key in agg[m]}
        outcomes = {
            (a, b): compare(stats[a], stats[b]) for a, b in pairs if a in stats and b in stats
        }
        if not outcomes:
            continue
        every += outcomes.values()
        label = name if name.startswith("k-") else name[0].upper() + name[1:]  # "k-means" stays
        numbers = ", ".join(f"{_name(m)} {s.text()}" for m, s in stats.items())
        if all(o == ONE_SEED for o in outcomes.values()):
            clauses = "one seed, no error bar: nothing is called better or worse"
        else:
            clauses = "; ".join(f"{_name(a)} vs {_name(b)}: {o}" for (a, b), o in outcomes.items())
        items.append(f"{label}: {clauses} [{numbers}].")
        judged[key] = {
            "outcomes": {f"{a} vs {b}": o for (a, b), o in outcomes.items()},
            "stats": {m: s.to_dict() for m, s in stats.items()},
        }
        mine = [o for (a, _), o in outcomes.items() if a == lead_method]
        if mine and all(o == "better" for o in mine):
            wins.append(name)
        for (a, b), o in outcomes.items():  # wins over one rival, besides those over all
            if a == lead_method and o == "better":
                rival_wins.setdefault(b, []).append(name)
    if not items:
        return Verdict(f"On {dataset}", "no comparable metric", (), {})
    lead = f"On {dataset}, after {budget}, " + _seeds_phrase(
        [agg[m][k] for k in judged for m in methods if k in agg[m]],
        (evaluation.get("config") or {}).get("seed"),
    )
    rivals = " and ".join(_name(b) for a, b in pairs if a == lead_method)
    who = _name(lead_method)
    if all(o == ONE_SEED for o in every):
        overall = (
            "with one seed per method there is no error bar, so no method is called better or "
            "worse than another"
        )
    elif not wins:
        overall = f"{who} is measurably better than {rivals} on none of the {len(items)} measures"
    elif len(wins) == len(items):
        overall = f"{who} is measurably better than {rivals} on all {len(items)} measures"
    else:
        overall = (
            f"{who} is measurably better than {rivals} on {len(wins)} of {len(items)} measures "
            f"({'; '.join(wins)})"
        )
    rivals_of_lead = [b for a, b in pairs if a == lead_method]
    per_rival = {b: rival_wins.get(b, []) for b in rivals_of_lead}
    if (
        len(rivals_of_lead) > 1
        and not all(o == ONE_SEED for o in every)
        and any(won != wins for won in per_rival.values())
    ):  # "better than both on none" must not hide "better than one of them on two"
        parts = [
            f"than {_name(b)} on "
            + (f"{len(won)} of {len(items)} measures ({'; '.join(won)})" if won else "none")
            for b, won in per_rival.items()
        ]
        overall = f"{who} is measurably better " + ", ".join(parts)
    return Verdict(lead, overall, tuple(items), judged)


def _healthy_runs_sentence(method: str, runs: list[dict[str, Any]]) -> str:
    """One line for a method's seeds whose teacher did not collapse: how many, their final
    entropy as a share of log K, and how many learn by the learning verdict (when recorded)."""
    name = _name(method)
    shares = [
        r["teacher_entropy"] / math.log(r["out_dim"])
        for r in runs
        if isinstance(r.get("teacher_entropy"), (int, float)) and r.get("out_dim")
    ]
    text = f"The {name} teacher did not collapse in {len(runs)} seed{'s' if len(runs) > 1 else ''}"
    if shares:
        low, high = min(shares), max(shares)
        span = f"{low:.0%}" if round(low, 2) == round(high, 2) else f"{low:.0%} to {high:.0%}"
        text += f" (final teacher entropy {span} of log K)"
    verdicts = [r.get("learning", {}).get("learns") for r in runs if r.get("learning")]
    if verdicts:
        text += (
            f"; {sum(v is True for v in verdicts)} of {len(runs)} learn (loss falls, ends below "
            "the frozen-network control, teacher healthy)"
        )
    return text + "."


def verdict(evaluation: dict[str, Any], dataset: str, budget: str) -> str:
    """The verdict on one evaluation as plain text (:func:`verdict_parts`): the lead, the overall
    sentence, one sentence per key metric with mean ± std (n) of each method, and the rule."""
    return verdict_parts(evaluation, dataset, budget).text


def _verdict_html(v: Verdict) -> str:
    """A verdict as a lead line and one bullet per measure."""
    if not v.items:
        return f"<p>{html.escape(v.text)}</p>"
    return (
        f"<p>{html.escape(v.lead)}: {html.escape(v.overall)}.</p><ul>"
        + "".join(f"<li>{html.escape(i)}</li>" for i in v.items)
        + "</ul>"
    )


def learned_nothing(evaluation: dict[str, Any], model: str, tie: float = 0.005) -> bool | None:
    """Whether ``model`` shows no measurable gain over random init on any key metric.

    With two or more seeds of both: on no key metric is ``model`` better by the interval rule
    (:func:`labkit.eval.seeds.compare`). With one seed (no error bar): on every key metric its
    score is below random init's or within ``tie`` of it.

    Returns:
        True / False, or None when ``model`` or ``random`` was not evaluated on any key metric.
    """
    agg = aggregate_seeds(comparison_rows(evaluation), [k for k, _ in KEY_METRICS])
    if model not in agg or "random" not in agg:
        return None
    pairs = [
        (agg[model][k], agg["random"][k])
        for k, _ in KEY_METRICS
        if k in agg[model] and k in agg["random"]
    ]
    if not pairs:
        return None
    if all(a.n >= 2 and b.n >= 2 for a, b in pairs):
        return not any(compare(a, b) == "better" for a, b in pairs)
    return all(a.mean <= b.mean + tie for a, b in pairs)


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
    key = getattr(stage, "method", "") or stage.name.removeprefix("train_")
    method = {"dora": "DoRA", "dino": "DINO"}.get(key, stage.name)
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
        metrics = read_json(stage.out_dir / "metrics.json") or {}
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


def _run_seeds(cfg: dict[str, Any]) -> list[int]:
    """The run's seeds from its config (``seed``, ``seeds``; a config without ``seeds``: one)."""
    first, count = cfg.get("seed", 0), cfg.get("seeds", 1)
    try:
        return list(range(int(first), int(first) + max(1, int(count))))
    except (TypeError, ValueError):
        return []


def _seed_list(seeds: Sequence[Any]) -> str:
    return ", ".join(str(s) for s in seeds)


def _budget(run_dir: Path, cfg: dict[str, Any]) -> str:
    steps = cfg.get("steps")
    model = cfg.get("model")
    kw = cfg.get("model_kwargs") or {}
    arch = f"{model} ({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else str(model)
    seeds = _run_seeds(cfg)
    per = "per method and seed" if len(seeds) > 1 else "per method"
    return (
        f"{steps} steps of {cfg.get('batch_size')} clips x {cfg.get('num_frames')} frames at "
        f"{cfg.get('img_size')} px {per}, {arch}, on {cfg.get('device')}"
    )


def _log_values(path: Path, key: str) -> list[float]:
    """One number per step of ``key`` in a training's ``log.jsonl`` (a torn line is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    values = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = record.get(key) if isinstance(record, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
    return values


def _tenths(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Means of the first and the last tenth of ``values`` (at least one value each)."""
    if not values:
        return None, None
    n = max(1, int(len(values) * 0.1))
    return sum(values[:n]) / n, sum(values[-n:]) / n


# columns of the training table whose per-seed numbers are aggregated (mean ± std) per method
TRAIN_STATS = ("loss first 10%", "loss last 10%", "control last 10%", "teacher entropy, last step")


def training_rows(stages: Sequence[Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per training stage: method, seed, the loss's means over the first and last 10% of
    steps, the frozen-network control's last 10% and the learning verdict where the training
    recorded them (``control_last10``, ``learning``), the collapse verdict, teacher statistics.

    The loss's means come from ``metrics.json`` (``loss_first10``, ``loss_last10``) or, for a run
    written before those keys, from ``log.jsonl``.
    """
    rows = []
    for stage in (s for s in stages if s.group == "train"):
        m = read_json(stage.out_dir / "metrics.json") or {}
        log = stage.out_dir / "log.jsonl"
        first, last = m.get("loss_first10"), m.get("loss_last10")
        if first is None or last is None:
            first, last = _tenths(_log_values(log, "loss"))
        control = m.get("control_last10")
        if control is None:
            control = _tenths(_log_values(log, "control_loss"))[1]
        learning = m.get("learning")
        learns = learning.get("learns") if isinstance(learning, dict) else None
        rows.append(
            {
                "method": getattr(stage, "method", "") or stage.name.removeprefix("train_"),
                "seed": getattr(stage, "seed", None),
                "steps": m.get("steps"),
                "loss first 10%": first,
                "loss last 10%": last,
                "control last 10%": control,
                "learns": (
                    ("yes" if learns else "no" if learns is False else "cannot tell")
                    if isinstance(learning, dict)
                    else None
                ),
                "collapsed": ("yes" if training_health(stage, m, cfg)[1] else "no") if m else None,
                "teacher entropy, last step": m.get("teacher_entropy"),
                "teacher KL to uniform": m.get("teacher_kl_uniform"),
                "images/s": m.get("images_per_second"),
                "seconds": m.get("seconds"),
            }
        )
    return rows


def _trainer_config(stage: Any) -> dict[str, Any] | None:
    """The trainer's own configuration of a training stage: its ``metrics.json``'s ``config``,
    or for a run written before that key, the checkpoint's (read without its tensors' copies)."""
    config = (read_json(stage.out_dir / "metrics.json") or {}).get("config")
    if isinstance(config, dict):
        return config
    checkpoint = stage.out_dir / "checkpoint.pth"
    if not checkpoint.is_file():
        return None
    import pickle

    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, pickle.UnpicklingError):  # torn or not a checkpoint
        return None
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else None


def _steps(epochs: Any, per_epoch: Any) -> str:
    """``epochs`` of ``per_epoch`` steps as a step count ("20 steps", "none")."""
    try:
        n = round(float(epochs) * int(per_epoch))
    except (TypeError, ValueError):
        return "–"
    return "none" if n <= 0 else f"{n} step{'' if n == 1 else 's'}"


# the trainer's fields behind a row of the settings table: a method that ignores one
# (labkit.train.config.IGNORED_FIELDS, e.g. TimeTuning has no teacher) has no such row
_SETTING_FIELDS = {
    "head output K": ("out_dim",),
    "teacher momentum": ("momentum_teacher",),
    "teacher temperature": ("teacher_temp",),
    "student temperature": ("student_temp",),
    "centre": ("center_momentum", "center_init"),
    "head's last layer frozen": ("freeze_last_layer",),
    "frozen-network control": ("control",),
}


def _setting_values(c: dict[str, Any], peak_lr: float | None) -> dict[str, str]:
    """The training recipe of one trainer configuration, one phrase per setting (the audit's
    order in docs/science.md); a setting the method does not have is left out."""
    ignored = IGNORED_FIELDS.get(str(c.get("method")), ())
    spe = c.get("steps_per_epoch")
    lr = f"{c.get('lr')}" + (" x clips / 256" if c.get("scale_lr") else "")
    if peak_lr is not None and (c.get("scale_lr") or not math.isclose(peak_lr, c.get("lr") or 0)):
        lr += f", peak {peak_lr:.3g} in the log"
    teacher_temp = f"{c.get('teacher_temp')}"
    if c.get("warmup_teacher_temp_epochs"):
        teacher_temp += (
            f", from {c.get('warmup_teacher_temp')} over "
            f"{_steps(c.get('warmup_teacher_temp_epochs'), spe)}"
        )
    out = {
        "views": f"{c.get('img_size')} px"
        if "num_local" in ignored
        else f"{c.get('img_size')} px global, {c.get('num_local')} x {c.get('local_size')} px "
        "local per frame",
        "clips": f"{c.get('batch_size')} clips x {c.get('num_frames')} frames, "
        f"{c.get('frame_step')} apart",
        "steps": f"{c.get('steps')} ({spe} per epoch)",
        "head output K": f"{c.get('out_dim')}",
        "learning rate": lr,
        "lr warm-up": f"{_steps(c.get('warmup_epochs'), spe)}, then cosine to {c.get('min_lr')}",
        "weight decay": f"{c.get('weight_decay')} -> {c.get('weight_decay_end')} (cosine)",
        "teacher momentum": f"{c.get('momentum_teacher')} -> 1 (cosine)",
        "teacher temperature": teacher_temp,
        "student temperature": f"{c.get('student_temp')}",
        "centre": f"momentum {c.get('center_momentum')}, starts at "
        + ("the first batch's mean" if c.get("center_init") == "first_batch" else "zeros"),
        "gradient clipping": f"{c.get('clip_grad')} ({c.get('clip_grad_mode')} norm)"
        if c.get("clip_grad")
        else "none",
        "head's last layer frozen": _steps(c.get("freeze_last_layer"), spe),
        "drop path": f"{c.get('drop_path_rate')}",
        "frozen-network control": "on" if c.get("control") else "off",
    }
    if c.get("method") == "dora":
        heads, threshold = c.get("heads"), c.get("threshold")
        masks = {
            "mean": "each map above its mean",
            "batch_mean": "above the batch's mean (official)",
        }.get(str(threshold), f"keeping {threshold} of each map's mass")
        out["DoRA objects"] = (
            f"{c.get('k')} objects from "
            + ("heads drawn at random each step" if heads == "random" else f"heads {heads}")
            + ", "
            + (f"Sinkhorn-Knopp (ε {c.get('epsilon')})" if c.get("sinkhorn") else "row softmax")
            + f", masks: {masks}, {c.get('dora_loss')} loss"
        )
    if c.get("method") == "timetuning":
        out["TimeTuning"] = (
            f"{c.get('num_prototypes')} prototypes, the last {c.get('trainable_blocks')} blocks "
            f"trained at {c.get('backbone_lr_ratio')} x the head's lr; forwarder: "
            f"{c.get('forwarder_n_last')} frames, top {c.get('forwarder_topk')}, temperature "
            f"{c.get('forwarder_temperature')}, radius {c.get('forwarder_radius')}"
        )
    return {
        label: text
        for label, text in out.items()
        if not any(f in ignored for f in _SETTING_FIELDS.get(label, ()))
    }


def training_settings(stages: Sequence[Any]) -> list[dict[str, str]]:
    """What each method's trainings were run with, read back from the runs themselves: one row
    per setting, one column per method ("a / b" where its seeds differ, "–" where a method has
    no such setting). Empty where no run recorded its configuration."""
    per_method: dict[str, list[dict[str, str]]] = {}
    for stage in (s for s in stages if s.group == "train"):
        config = _trainer_config(stage)
        if config is None:
            continue
        lrs = _log_values(stage.out_dir / "log.jsonl", "lr")
        method = str(config.get("method") or getattr(stage, "method", "") or stage.name)
        per_method.setdefault(method, []).append(_setting_values(config, max(lrs) if lrs else None))
    labels = list(dict.fromkeys(k for runs in per_method.values() for r in runs for k in r))
    rows = []
    for label in labels:
        row = {"setting": label}
        for method, runs in per_method.items():
            values = list(dict.fromkeys(r[label] for r in runs if label in r))
            row[_name(method)] = " / ".join(values) if values else "–"
        rows.append(row)
    return rows


def _seeds_prefix(seeds: Sequence[Any], several: bool) -> str:
    """ "Seed 1: " or "Seeds 0, 1, 2: " before a sentence that fits those seeds; "" with one
    seed per method."""
    known = [s for s in seeds if s is not None]
    if not several or not known:
        return ""
    return f"Seed{'' if len(known) == 1 else 's'} {_seed_list(known)}: "


def _training_stats(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, SeedStats]]:
    """Per method, each of :data:`TRAIN_STATS` over its seeds."""
    out: dict[str, dict[str, SeedStats]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {}
        for col in TRAIN_STATS:
            kept = [(r["seed"], r[col]) for r in mine if isinstance(r.get(col), (int, float))]
            if kept:
                out[method][col] = seed_stats([v for _, v in kept], [s for s, _ in kept])
    return out


def write_report(run_dir: str | Path, stages: Sequence[Any]) -> Path:
    """Build ``run_dir/report.html`` from what the stages wrote.

    Args:
        run_dir: the run folder (``runs/<name>``).
        stages: the pipeline's :class:`labkit.pipeline.Stage` list (names, groups, folders).

    Returns:
        Path of ``report.html``; beside it ``metrics.json``: the run's seeds, per dataset every
        method's metrics over its seeds (mean, std, n, per-seed values) and the verdict's
        outcomes, per training method its runs and their spread, and the verdict's headlines.
    """

    run_dir = Path(run_dir).resolve()
    cfg = _read_json_yaml(run_dir / "config.yaml")
    env = read_json(run_dir / "environment.json") or {}
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
    seeds = _run_seeds(cfg)
    several = len(seeds) > 1
    # the run's own metrics.json: every aggregate over seeds and every comparison's outcome
    summary: dict[str, Any] = {
        "seeds": seeds,
        "rule": INTERVAL_RULE,
        "std": "sample standard deviation (ddof=1); null with one seed (no error bar)",
        "training": {},
        "evaluation": {},
    }

    # verdicts first: what a reader wants to know, in plain words
    evaluations = [s for s in stages if s.group == "evaluate"]
    train_stages = [s for s in stages if s.group == "train"]
    verdicts, headlines = [], []
    collapsed: dict[str, list[Any]] = {}  # method -> seeds whose teacher collapsed
    healthy: dict[str, list[dict[str, Any]]] = {}  # method -> metrics of its healthy seeds
    for stage in train_stages:
        m = read_json(stage.out_dir / "metrics.json")
        if m is None:
            continue
        sentence, bad = training_health(stage, m, cfg)
        seed = getattr(stage, "seed", None)
        method = getattr(stage, "method", "") or stage.name.removeprefix("train_")
        if several and seed is not None and not bad:  # said once per method below
            healthy.setdefault(method, []).append(m)
            continue
        if several and seed is not None:
            sentence = f"Seed {seed}: {sentence}"
        verdicts.append(f"<p{' class=bad' if bad else ''}>{html.escape(sentence)}</p>")
        if bad:
            collapsed.setdefault(method, []).append(seed)
    for method, runs in healthy.items():
        verdicts.append(f"<p>{html.escape(_healthy_runs_sentence(method, runs))}</p>")
    trained = list(
        dict.fromkeys(
            getattr(s, "method", "") or s.name.removeprefix("train_") for s in train_stages
        )
    )
    for stage in evaluations:
        metrics = read_json(stage.out_dir / "metrics.json")
        key = stage.name.removeprefix("evaluate_")
        dataset = dataset_title(key)
        if metrics is None:
            verdicts.append(
                f"<p>{html.escape(dataset)}: not evaluated (no dataset or not complete).</p>"
            )
            continue
        judged = verdict_parts(metrics, dataset, budget)
        headlines.append(f"On {dataset}: {judged.overall}.")
        agg = aggregate_seeds(comparison_rows(metrics))
        summary["evaluation"][key] = {
            "by_method": aggregate_to_dict(agg),
            "verdict": {"overall": judged.overall, "metrics": judged.judged},
        }
        nothing = [m for m in trained if learned_nothing(metrics, m)]
        if nothing:
            names = " and ".join(_name(m) for m in nothing)
            n = min((s.n for m in nothing for s in agg.get(m, {}).values()), default=1)
            why = (
                f"better than random init on none of the key metrics, by the spread of {n} seeds"
                if n > 1
                else "no better than random init on any key metric (one seed, differences under "
                "0.005)"
            )
            headlines.append(f"On {dataset}, {names} learned nothing measurable: {why}.")
        verdicts.append(_verdict_html(judged))
    if collapsed:
        total = len(seeds)
        headlines.insert(
            0,
            "Training collapsed for "
            + " and ".join(
                m + (f" (seeds {_seed_list(c)} of {_seed_list(seeds)})" if total > 1 else "")
                for m, c in collapsed.items()
            )
            + ": once its teacher is uniform it teaches nothing, so its numbers below "
            "show a barely trained network, not what the method can do.",
        )
    summary["headlines"] = headlines  # `labkit pipeline` prints them when it finishes
    parts.append(
        "<h2>Verdict</h2><div class='verdict'>"
        + "".join(f"<p class='headline'>{html.escape(h)}</p>" for h in headlines)
        + "".join(verdicts)
        + f"<p class='muted'>All scores: higher is better, 0 to 1. {html.escape(INTERVAL_RULE)}"
        "</p></div>"
    )
    parts.append(weights_section(cfg, stages))

    # stages
    rows = []
    for stage in stages:
        if stage.group == "report":
            continue
        marker = read_json(stage.out_dir / "stage.json") or {}
        nb = stage.out_dir / f"{stage.notebook}.html"
        method = (getattr(stage, "params", None) or {}).get(
            "method"
        )  # train_dora runs both methods
        label = f"{stage.notebook} notebook" + (f" (method {method})" if method else "")
        rows.append(
            {
                "stage": stage.name,
                "status": "done" if marker else "not run",
                "seconds": _whole(marker.get("seconds")),
                "notebook": _link(run_dir, nb, label) if nb.is_file() else "–",
            }
        )
    parts.append("<h2>Stages</h2>" + _table_html_cells(rows))

    # training: one row per method and seed, the spread over seeds, the loss curves
    train_rows = training_rows(train_stages, cfg)
    train_columns = [
        c for c in (train_rows or [{}])[0] if any(r[c] is not None for r in train_rows)
    ]
    train_stats = _training_stats(train_rows)
    for method, stats in train_stats.items():
        summary["training"][method] = {
            "runs": [r for r in train_rows if r["method"] == method],
            "stats": {k: v.to_dict() for k, v in stats.items()},
        }
    train_figures: list[str] = []
    more_figures: list[str] = []  # the other seeds' loss curves, folded away
    notes: dict[str, list[Any]] = {}  # the collapse watchdog's verdict -> the seeds it fits
    for stage in train_stages:
        m = read_json(stage.out_dir / "metrics.json") or {}
        seed = getattr(stage, "seed", None)
        if m:
            notes.setdefault(collapse_sentence(m), []).append(seed)
        log = stage.out_dir / "log.jsonl"
        if log.is_file():
            png = stage.out_dir / "log.png"
            plot_log(log, title=stage.name).savefig(png, dpi=90, bbox_inches="tight")
            figure = _img(run_dir, png, f"{stage.name}: loss, collapse signals, schedules")
            first_seed = not several or seed is None or seed == seeds[0]
            (train_figures if first_seed else more_figures).append(figure)
    parts += [
        "<h2>Training</h2>",
        f"<p class='muted'>{html.escape(budget)}"
        + (f"; seeds {_seed_list(seeds)}" if several else "")
        + ". Loss first / last 10%: the loss's mean over the first and the last tenth of the "
        "steps.</p>",
        html_table(
            [
                {**r, "images/s": _tenth(r["images/s"]), "seconds": _whole(r["seconds"])}
                for r in train_rows
            ],
            columns=train_columns,
        ),
    ]
    if several:
        measured = [c for c in TRAIN_STATS if any(c in st for st in train_stats.values())]
        spread = []
        for method, stats in train_stats.items():
            if not stats:
                continue
            ran = next(iter(stats.values())).seeds
            spread.append(
                {"method": method, "seeds": _seed_list(ran)}
                | {
                    col: stats[col].text(show_n=stats[col].n != len(ran)) if col in stats else "–"
                    for col in measured
                }
            )
        if spread:
            parts += [
                "<p>Over the seeds listed: mean ± sample standard deviation ((n=…) only where a "
                "run lacks the number).</p>",
                "<div class='nowrap'>" + html_table(spread) + "</div>",
            ]
    parts += [
        f"<p>{html.escape(_seeds_prefix(seeds_of, several) + n)}</p>"
        for n, seeds_of in notes.items()
    ]
    settings = training_settings(train_stages)
    if settings:
        parts += [
            "<h3>Settings the runs used</h3>",
            "<p class='muted'>Read back from each run's own record (its metrics.json, or its "
            "checkpoint for an older run), so these are what ran: the training notebook's "
            "defaults, the CPU recipe of docs/science.md, with the run's <code>train</code> "
            "options over them. Official DINO and DoRA values and why labkit differs: "
            "docs/science.md.</p>",
            "<div class='words'>" + html_table(settings) + "</div>",
        ]
    parts += train_figures
    if more_figures:
        parts.append(
            "<details><summary>loss curves of the other seeds</summary>"
            + "".join(more_figures)
            + "</details>"
        )

    # exploration
    parts.append("<h2>Attention and segments of the trained models</h2>")
    if several:
        parts.append(
            f"<p class='muted'>Pictures: seed {seeds[0]} (the first of seeds "
            f"{_seed_list(seeds)}); the numbers in the verdict, the training and the evaluation "
            "cover every seed.</p>"
        )
    for stage in (s for s in stages if s.group == "explore"):
        explored = read_json(stage.out_dir / "metrics.json") or {}
        weights = explored.get("weights")
        parts.append(f"<h3>{html.escape(stage.name)}</h3>")
        if weights:
            parts.append(f"<p class='muted'>weights: {html.escape(str(weights))}</p>")
        sinkhorn = explored.get("sinkhorn")
        if sinkhorn:  # DoRA's objects with and without Sinkhorn-Knopp (dora_step_by_step)
            rows, sentence = sinkhorn_rows(sinkhorn, explored.get("prototype_spread"))
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
        extra = [
            (name, alt, short)
            for name, alt, short in (
                ("heads.png", "three heads as R, G, B", "heads over 8 frames"),
                ("all_heads.png", "every head's attention", "every head"),
                ("masks.png", "thresholded attention masks", "masks"),
                ("segments.png", "k-means segments and PCA", "segments"),
                ("objects.png", "DoRA objects: masks (Sinkhorn-Knopp)", "DoRA objects' masks"),
                ("artifacts.png", "high-norm tokens", "artifacts"),
            )
            if (stage.out_dir / name).is_file()
        ]
        if extra:  # the summary names the figures it holds
            more = "".join(
                _img(run_dir, stage.out_dir / name, f"{stage.name}: {alt}")
                for name, alt, _ in extra
            )
            shown = ", ".join(short for _, _, short in extra)
            parts.append(
                f"<details><summary>more figures of {html.escape(stage.name)}: "
                f"{html.escape(shown)}</summary>{more}</details>"
            )

    # evaluation
    parts.append("<h2>Evaluation</h2>")
    for stage in evaluations:
        metrics = read_json(stage.out_dir / "metrics.json")
        parts.append(f"<h3>{html.escape(stage.name)}</h3>")
        if metrics is None:
            parts.append("<p class='muted'>not run</p>")
            continue
        cfg_e = metrics.get("config", {})
        where = str(metrics.get("data_root") or "synthetic")
        key = stage.name.removeprefix("evaluate_")
        if key in DATASET_TITLES:
            where = f"{DATASET_TITLES[key]} ({where})"
        count = len(metrics.get("sequences", []))
        parts.append(
            f"<p class='muted'>{count} sequence{'' if count == 1 else 's'} at "
            f"{cfg_e.get('resolution')} px (shorter side), data "
            f"{html.escape(where)}</p>"
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
            "DoRA object on foreground",
            "k-means frame_hungarian mIoU",
            "k-means clip_hungarian mIoU",
            "k-means dataset_hungarian mIoU",
            "seconds",
        ]
        rows = comparison_rows(metrics)
        cols = [c for c in cols if any(c in r for r in rows)]
        seeded = any(split_seed_label(str(r.get("model", "")))[1] is not None for r in rows)
        if seeded:  # per method over its seeds, then every seed's own row
            agg = aggregate_seeds(rows, [c for c in cols if c != "model"])
            parts += [
                "<p>Per method over the seeds listed: mean ± sample standard deviation ((n=…) "
                "only where a metric has fewer values); random init is drawn with each seed; a "
                "model without seeds (pretrained) has one value and no error bar.</p>",
                "<div class='nowrap'>"
                + html_table(seed_table(agg, [c for c in cols if c != "model"]))
                + "</div>",
                "<details><summary>every seed's numbers</summary>"
                + html_table(rows, columns=cols)
                + "</details>",
            ]
        else:
            parts.append(html_table(rows, columns=cols))
        share = foreground_sentence(rows)
        if share:
            parts.append(f"<p>{html.escape(share)}</p>")
        parts.append(
            "<p class='muted'>Bars: each sequence; legend: each model over all sequences, "
            + ("each seed's own model (every seed's numbers above)." if seeded else "")
            + ("the number in the table above.</p>" if not seeded else "</p>")
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
    if train_stages:
        parts.append(
            "<p class='muted'><code>train</code> holds only the options given over the training "
            "notebook's defaults; every setting the trainings ran with is under Training, "
            "Settings the runs used.</p>"
        )
    parts.append(
        f"<p class='muted'>{_link(run_dir, run_dir / 'environment.json', 'environment.json')} · "
        f"{_link(run_dir, run_dir / 'config.yaml', 'config.yaml')}</p>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>labkit {html.escape(run_dir.name)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    write_atomic(
        run_dir / "metrics.json", json.dumps(summary, indent=1, default=str).encode("utf-8")
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
