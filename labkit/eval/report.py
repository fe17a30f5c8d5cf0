"""Tables, figures and files of an evaluation run (render and plot layers of the evaluation lab).

Tables are lists of flat dicts (one row per model or per sequence) formatted as HTML (for
``IPython.display.HTML`` in the notebook) or Markdown (for the README and the CLI); no pandas.
Figures are ``matplotlib.figure.Figure`` built without pyplot. Only :func:`write_metrics` and
:func:`save_report` write files.

Notation::

    n  example frames    h, w  model input size    gh, gw  patch grid    K  objects
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.eval.results import DISCOVERY_NAMES, EvalResult, ModelResult, SequenceResult
from labkit.viz.palette import palette
from labkit.viz.plot import plot_grid
from labkit.viz.render import box_overlay, mask_overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "summary_rows",
    "sequence_rows",
    "html_table",
    "markdown_table",
    "run_description",
    "bar_metrics",
    "bar_file_name",
    "sequence_values",
    "example_panels",
    "plot_examples_compact",
    "plot_sequence_bars",
    "plot_examples",
    "write_metrics",
    "save_report",
]

# columns shown by default in tables (others stay in metrics.json)
SUMMARY_COLUMNS = (
    "model",
    "J&F",
    "J",
    "F",
    "attn best head J",
    "attn head avg J",
    "attn mean heads J",
    "attn stability",
    "DoRA best object J",
    "DoRA object on foreground",
    "foreground share",
    "DoRA stability",
    "k-means frame_hungarian mIoU",
    "k-means clip_hungarian mIoU",
    "k-means dataset_hungarian mIoU",
    "k-means frame_overcluster mIoU",
    "k-means clip_overcluster mIoU",
    "k-means dataset_overcluster mIoU",
    "LOST J",
    "LOST CorLoc",
    "LOST stability",
    "TokenCut J",
    "TokenCut CorLoc",
    "TokenCut stability",
    "attn object J",
    "attn object CorLoc",
    "attn object stability",
    "DoRA union J",
    "DoRA union CorLoc",
    "DoRA union stability",
    "k-NN top-1",
    "k-NN top-5",
    "seconds",
)


def summary_rows(result: EvalResult, columns: Sequence[str] | None = SUMMARY_COLUMNS) -> list[dict]:
    """One row of headline numbers per model (columns absent from every row are dropped)."""
    return _select(result.summary_rows(), columns)


def _table_head(model: ModelResult) -> int | None:
    """The attention head of the model's summary: the one head best on average over sequences."""
    a = model.attention_summary()
    return None if a is None else int(a["best_head"])


def _sequence_row(seq: SequenceResult, head: int | None) -> dict[str, Any]:
    """``seq.row()`` with ``attn best head J`` measured on ``head`` (the summary's definition);
    the head best on this sequence alone moves to ``attn per-sequence best head J``."""
    r = seq.row()
    if head is not None and seq.attention is not None and "attn best head J" in r:
        own, own_head = r["attn best head J"], r.get("attn best head")
        r["attn best head J"] = float(seq.attention["per_head"][head])
        r["attn best head"] = head
        r["attn per-sequence best head J"] = own
        r["attn per-sequence best head"] = own_head
    return r


def sequence_values(model: ModelResult, metric: str) -> dict[str, float | None]:
    """Per sequence, the value of ``metric`` under the same definition as the summary table.

    Every column is a sequence's mean over its frames; ``attn best head J`` is measured on the
    summary's head (the one head best on average over all sequences) in every sequence, so the
    mean over sequences equals the table's value. (``J&F`` in the table weighs every object of the
    dataset once, as DAVIS does; with one object per sequence that is the same mean.)

    Returns:
        Mapping of sequence name to value (None where not measured).
    """
    head = _table_head(model)
    out: dict[str, float | None] = {}
    for s in model.sequences:
        v = _sequence_row(s, head).get(metric)
        out[s.name] = None if v is None else float(v)
    return out


def sequence_rows(model: ModelResult, columns: Sequence[str] | None = None) -> list[dict]:
    """One row per sequence for one model, plus a last row of column means over sequences.

    ``attn best head J`` is measured on the summary's head in every sequence (see
    :func:`sequence_values`), so its mean row equals the summary; the head best on each sequence
    alone is in ``attn per-sequence best head J`` (an optimistic number: chosen with the masks).
    """
    head = _table_head(model)
    rows = [_sequence_row(s, head) for s in model.sequences]
    if rows:
        mean: dict[str, Any] = {"sequence": "mean over sequences"}
        for key in rows[0]:
            if key == "sequence":
                continue
            values = [r.get(key) for r in rows]
            if key in ("frames", "seconds"):
                mean[key] = sum(v for v in values if v is not None)
            elif key in ("objects", "attn per-sequence best head"):
                mean[key] = None
            elif key == "attn best head":
                mean[key] = head
            else:
                finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
                mean[key] = float(np.mean(finite)) if finite else None
        rows.append(mean)
    return _select(rows, columns)


def _select(rows: list[dict], columns: Sequence[str] | None) -> list[dict]:
    if columns is None:
        return rows
    present = [c for c in columns if any(c in r for r in rows)]
    return [{c: r.get(c) for c in present} for r in rows]


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def html_table(
    rows: Sequence[dict],
    *,
    digits: int = 3,
    caption: str = "",
    columns: Sequence[str] | None = None,
) -> str:
    """An HTML ``<table>`` of rows of flat dicts (columns: ``columns``, else the first row's
    keys).
    """
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(columns or rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c), digits))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(rows: Sequence[dict], *, digits: int = 3) -> str:
    """A GitHub Markdown table of rows of flat dicts (columns from the first row)."""
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    lines = [
        "| " + " | ".join(str(c) for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(_cell(r.get(c), digits) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_description(result: EvalResult) -> str:
    """One line saying what was run where: data, sequences, resolution, date, machine."""
    cfg, env = result.config, result.environment
    frames = sum(s.num_frames for s in result.models[0].sequences) if result.models else 0
    sizes = sorted({tuple(s.input_size) for m in result.models for s in m.sequences})
    size_text = ", ".join(f"{w}x{h}" for h, w in sizes) or "-"  # W x H
    return (
        f"{len(result.sequences)} sequence{'' if len(result.sequences) == 1 else 's'} "
        f"({frames} frames) of {result.data_root or '-'}; "
        f"resolution {cfg['resolution']} (model input WxH {size_text}); "
        f"{env['date']}; {env['machine']} ({env['processor']}, {env['cpu_count']} CPUs, "
        f"device {env['device']}{', ' + env['device_name'] if 'device_name' in env else ''}); "
        f"torch {env['torch']}; {result.seconds:.0f} s"
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


BAR_METRICS = (
    "J&F",
    "attn best head J",
    "DoRA best object J",
    "k-means clip_hungarian mIoU",
    "LOST J",
    "TokenCut J",
)


def bar_metrics(result: EvalResult, candidates: Sequence[str] = BAR_METRICS) -> list[str]:
    """The per-sequence metrics among ``candidates`` that this run measured."""
    rows = [s.row() for m in result.models for s in m.sequences]
    return [c for c in candidates if any(c in r for r in rows)]


def bar_file_name(metric: str) -> str:
    """File stem of a metric's bar chart, e.g. ``"bars_J_F"`` for ``"J&F"``."""
    return "bars_" + "".join(c if c.isalnum() else "_" for c in metric).strip("_")


def plot_sequence_bars(
    result: EvalResult, metric: str = "J&F", *, sequences: Sequence[str] | None = None
) -> Figure:
    """Grouped bars: one group per sequence, one bar per model, for one per-sequence metric.

    The bars use the summary table's definition (:func:`sequence_values`) and each model's legend
    gives the table's number, so chart and table agree.

    Args:
        result: The run.
        metric: A column of :meth:`SequenceResult.row` (``"J&F"``, ``"J"``, ``"attn best head J"``,
            ``"DoRA best object J"``, ``"k-means clip_hungarian mIoU"`` ...).
        sequences: Sequences to show; default all.

    Returns:
        ``matplotlib.figure.Figure``, at most 13 inches wide.
    """
    from matplotlib.figure import Figure

    names = list(sequences) if sequences is not None else list(result.sequences)
    models = result.models
    values = np.full((len(models), len(names)), np.nan)
    for i, m in enumerate(models):
        per_sequence = sequence_values(m, metric)
        for j, n in enumerate(names):
            v = per_sequence.get(n)
            values[i, j] = np.nan if v is None else v
    if np.isnan(values).all():
        raise ValueError(f"plot_sequence_bars: no model has per-sequence values of {metric!r}")
    colours = palette(max(1, len(models))) / 255.0
    width = 0.8 / max(1, len(models))
    fig = Figure(
        figsize=(min(13.0, max(6.0, 0.3 * len(names) * max(1, len(models)) + 3.0)), 3.0),
        layout="constrained",
    )
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    for i, m in enumerate(models):
        table = m.summary().get(metric)
        if table is None or not math.isfinite(float(table)):
            table = float(np.nanmean(values[i])) if np.isfinite(values[i]).any() else float("nan")
        head = _table_head(m) if metric == "attn best head J" else None
        ax.bar(
            x + (i - (len(models) - 1) / 2) * width,
            values[i],
            width,
            color=colours[i],
            label=f"{m.label}: {float(table):.3f}"
            + (f" (head {head})" if head is not None else ""),
        )
    ax.set_xticks(x)
    ax.set_xticklabels(
        names,
        rotation=30 if len(names) > 4 else 0,
        ha="right" if len(names) > 4 else "center",
        fontsize=10,
    )
    ax.tick_params(axis="y", labelsize=10)
    ax.set_ylabel(metric, fontsize=11)
    ax.set_ylim(0, max(1.0, float(np.nanmax(values)) * 1.05))
    ax.legend(
        fontsize=10,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        title="model: all sequences\n(as in the table)",
        title_fontsize=10,
    )
    ax.set_title(f"{metric} per sequence", fontsize=12)
    ax.grid(axis="y", alpha=0.3)
    return fig


GT_COLOUR = (255, 255, 255)  # ground truth: white, a colour no prediction uses
PREDICTION_COLOUR = (
    255,
    0,
    255,
)  # one predicted mask (a head, an object, a method): magenta, rare in video


def _best(scores: dict[str, Any] | None, what: str, name: str) -> int:
    """The best head (or object) of a sequence's ``attention`` or ``tracking`` scores."""
    if scores is None:  # the masks are kept with their scores: a result file edited by hand?
        raise ValueError(
            f"example_panels: sequence {name!r} has example masks but no {what} scores"
        )
    return scores["best_head"]


def example_panels(
    seq: SequenceResult,
    *,
    head: int | None = None,
    obj: int | None = None,
    frames: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Overlays of the kept example frames of one sequence (the render layer of the figure).

    The ground truth is drawn in white (fill and outline) and, on every other panel, as a thin
    white outline over the prediction, so each panel can be judged against it; predictions are
    magenta (one mask) or one colour per object (propagated labels, magenta first); discovery
    boxes are yellow.

    Args:
        seq: A sequence result with ``examples``.
        head: Attention head drawn; default the sequence's best head.
        obj: DoRA object drawn; default the sequence's best object.
        frames: Positions among the kept example frames to draw; default all.

    Returns:
        Mapping of panel name to uint8 ``(n, h, w, 3)``: ``"ground truth"``, ``"propagated"``,
        ``"attention head <i>"``, ``"head average"``, ``"DoRA object <j>"``, and one per
        discovery method (``"LOST"``, ``"TokenCut"``, ...: its mask and box) (those evaluated).
    """

    ex = seq.examples
    if ex is None:
        raise ValueError(f"example_panels: sequence {seq.name!r} kept no example frames")
    p = ex.frames.shape[1] // seq.grid[0]
    K = max(seq.num_objects, 1)
    keep = list(range(len(ex.frames))) if frames is None else [int(i) for i in frames]
    images = ex.frames[keep]
    gt = np.asarray(ex.gt)[keep]
    gt_any = gt > 0  # (n, h, w)

    def with_gt(drawn: np.ndarray) -> np.ndarray:
        return np.stack(
            [mask_overlay(d, g, GT_COLOUR, alpha=0.0, thickness=1) for d, g in zip(drawn, gt_any)]
        )

    def one_mask(masks: Any) -> np.ndarray:
        drawn = np.stack(
            [
                mask_overlay(
                    f, np.asarray(m), PREDICTION_COLOUR, alpha=0.45, patch_size=p, halo=True
                )
                for f, m in zip(images, masks)
            ]
        )
        return with_gt(drawn)

    out = {
        "ground truth": np.stack(
            [
                mask_overlay(f, g, GT_COLOUR, alpha=0.4, thickness=2, halo=True)
                for f, g in zip(images, gt_any)
            ]
        )
    }
    if ex.propagated is not None:
        prop = np.asarray(ex.propagated)[keep]
        colours = np.concatenate([[PREDICTION_COLOUR], palette(K)[1:]])[
            :K
        ]  # magenta first, as one mask
        drawn = np.stack(
            [
                mask_overlay(
                    f, np.stack([lab == k for k in range(1, K + 1)]), colours, alpha=0.45, halo=True
                )
                for f, lab in zip(images, prop)
            ]
        )
        out["propagated"] = with_gt(drawn)
    if ex.head_masks is not None:
        h = _best(seq.attention, "attention", seq.name) if head is None else head
        out[f"attention head {h}"] = one_mask([ex.head_masks[i][h].numpy() for i in keep])
    if ex.average_mask is not None:
        out["head average"] = one_mask([ex.average_mask[i].numpy() for i in keep])
    if ex.object_masks is not None:
        j = _best(seq.tracking, "tracking", seq.name) if obj is None else obj
        out[f"DoRA object {j}"] = one_mask([ex.object_masks[i][j].numpy() for i in keep])
    for method, (masks, boxes) in (ex.discovery or {}).items():
        drawn = one_mask([masks[i].numpy() for i in keep])
        out[DISCOVERY_NAMES.get(method, method)] = np.stack(
            [
                box_overlay(d, boxes[i].numpy(), color=(255, 255, 0), patch_size=p)
                for d, i in zip(drawn, keep)
            ]
        )
    return out


def plot_examples(
    model: ModelResult, sequences: Sequence[str] | None = None, *, max_sequences: int = 2
) -> Figure:
    """A few frames per sequence: ground truth, propagated masks, the best attention head's mask,
    the head-average mask, DoRA's best object and each discovery method's mask and box, drawn
    over the frames (those evaluated; ground truth white, see :func:`example_panels`).

    Args:
        model: One model's result.
        sequences: Sequence names; default the first ``max_sequences``.
        max_sequences: Sequences shown when ``sequences`` is None.

    Returns:
        ``matplotlib.figure.Figure``: one row per panel kind and sequence, one column per frame.
    """

    by_name = {s.name: s for s in model.sequences}
    names = list(sequences) if sequences is not None else list(by_name)[:max_sequences]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"plot_examples: no sequences {unknown} in {model.label!r}")
    rows, row_titles, col_titles = [], [], []
    for n in names:
        seq = by_name[n]
        if seq.examples is None:  # as example_panels says
            raise ValueError(f"example_panels: sequence {seq.name!r} kept no example frames")
        for kind, images in example_panels(seq).items():
            rows.append(list(images))
            row_titles.append(f"{n}\n{kind}")
            col_titles.append([f"frame {i}" for i in seq.examples.indices])
    if not rows:
        raise ValueError(f"plot_examples: {model.label!r} has no sequences")
    return plot_grid(
        rows,
        row_titles=row_titles,
        col_titles=col_titles,
        panel_size=1.8,
        suptitle=f"{model.label} (white: ground truth)",
    )


def plot_examples_compact(
    result: EvalResult, sequence: str | None = None, *, max_width: float = 11.0
) -> Figure:
    """One frame of one sequence under every model: the ground truth once, then one row per
    model with its predictions (propagated, best head, head average, DoRA object, discovery
    methods), each with the ground truth outlined in white (see :func:`example_panels`).

    Args:
        result: The run.
        sequence: Sequence name; default the first with example frames.
        max_width: Width of the figure in inches.

    Returns:
        ``matplotlib.figure.Figure`` (a model's row wraps past 4 panels, see
        :func:`labkit.viz.plot_grid`).
    """

    candidates = [
        s
        for m in result.models
        for s in m.sequences
        if s.examples is not None and (sequence is None or s.name == sequence)
    ]
    if not candidates:
        raise ValueError(
            f"plot_examples_compact: no example frames{f' of {sequence!r}' if sequence else ''}"
        )
    name = candidates[0].name
    rows: list[list[np.ndarray]] = []
    row_titles: list[str] = []
    col_titles: list[list[str]] = []
    frame = None
    for m in result.models:
        seq = next((s for s in m.sequences if s.name == name and s.examples is not None), None)
        if seq is None or seq.examples is None:
            continue
        middle = len(seq.examples.frames) // 2
        frame = int(seq.examples.indices[middle])
        panels = example_panels(seq, frames=[middle])
        if not rows:
            rows.append([seq.examples.frames[middle], panels["ground truth"][0]])
            row_titles.append("data")
            col_titles.append(["frame", "ground truth"])
        predictions = {k: v for k, v in panels.items() if k != "ground truth"}
        if predictions:
            rows.append([a[0] for a in predictions.values()])
            row_titles.append(m.label)
            col_titles.append(list(predictions))
    return plot_grid(
        rows,
        row_titles=row_titles,
        col_titles=col_titles,
        panel_size=2.0,
        max_width=max_width,
        suptitle=(
            f"{name}, frame {frame}: each model's masks (magenta), ground truth outlined in white"
        ),
    )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_metrics(result: EvalResult, path: str | Path) -> Path:
    """Write every number of the run as JSON (NaN written as ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False))
    return path


def save_report(
    result: EvalResult, out_dir: str | Path, *, figures: bool = True
) -> dict[str, Path]:
    """Write ``metrics.json``, ``summary.md`` (tables) and, with ``figures``, PNGs of the bars
    (``bars_<metric>.png``, :func:`bar_file_name`), one compact example figure (``examples.png``:
    one frame, every model) and each model's examples (``examples_<label>.png``) into ``out_dir``.

    Returns:
        Mapping of what was written to its path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"metrics": write_metrics(result, out / "metrics.json")}
    text = [f"# Evaluation\n\n{run_description(result)}\n\n", markdown_table(summary_rows(result))]
    for m in result.models:
        if m.sequences:
            text += [f"\n## {m.label} per sequence\n\n", markdown_table(sequence_rows(m))]
    written["summary"] = out / "summary.md"
    written["summary"].write_text("".join(text))
    if figures and result.sequences:
        for metric in bar_metrics(result):
            name = bar_file_name(metric)
            written[name] = out / f"{name}.png"
            plot_sequence_bars(result, metric).savefig(written[name], dpi=110, bbox_inches="tight")
        if any(s.examples is not None for m in result.models for s in m.sequences):
            written["examples"] = (
                out / "examples.png"
            )  # one frame, every model: the report's figure
            plot_examples_compact(result).savefig(written["examples"], dpi=100, bbox_inches="tight")
        for m in result.models:
            if m.sequences and m.sequences[0].examples is not None:
                name = "examples_" + "".join(
                    c if c.isalnum() or c in "-_." else "_" for c in m.label
                )
                written[name] = out / f"{name}.png"
                plot_examples(m).savefig(written[name], dpi=90, bbox_inches="tight")
    return written
