"""Benchmark: the explorer notebook as a person sees it, JupyterLab in headless Chromium.

Runs ``notebooks/explorer.ipynb`` with its own default parameters (the synthetic default video,
100 frames at 224 px, ViT-S/16, k=5, UMAP of 3000 points; weights as the notebook resolves them)
through JupyterLab's "Run All Cells", and times from the browser's side, i.e. until the new
picture is decoded in the page:

* **first picture**: Run All -> the explorer's frame panel shown (the app is up);
* **first panels**: Run All -> the heads, objects and segments panels shown (the layer's pass
  over the clip and the k-means done in the background);
* **cells done**: Run All -> the kernel idle (the embedding view and the save cell finished);
* **UMAP**: Run All -> the embedding view's note says "UMAP took";
* then, with the kernel idle: a frame-slider key press (median of several), a head change, k
  5 -> 8 by three key presses on the slider (one k-means), a layer change (a new pass over the
  clip), a click on a patch -> its similarity map, a facet change to the values.

Timings come from ``time.perf_counter`` around the action and a ``wait_for_function`` polled on
every animation frame. Nothing is asserted (the behaviour is tested in
``tests/test_explorer_browser.py``).

Usage::

    python bench/explorer_browser.py                    # the notebook's defaults
    python bench/explorer_browser.py --frames 40        # a shorter clip

Writes a JSON file (``--out``) and prints a markdown table. Needs chromium and playwright (see
``tests/test_explorer_browser.py``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from labkit.environment import describe

REPO = Path(__file__).resolve().parents[1]


def browser_helpers():
    """tests/test_explorer_browser.py's JupyterLab and Chromium helpers (one copy of them)."""
    spec = importlib.util.spec_from_file_location(
        "explorer_browser_helpers", REPO / "tests" / "test_explorer_browser.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=None, help="num_frames (default: notebook's)")
    parser.add_argument("--embedding", default=None, help="pca or umap (default: notebook's)")
    parser.add_argument("--slider-moves", type=int, default=8, help="frame-slider key presses")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for any one wait")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "explorer_browser.json"
    )
    return parser.parse_args(argv)


SHOWN = (  # an image: loaded, not a placeholder, and (when given) another picture than before
    "([sel, old]) => { const i = document.querySelector(sel);"
    " return !!i && !i.classList.contains('labkit-pending') && i.complete && i.naturalWidth > 0"
    " && (old === null || i.src !== old); }"
)


def main(argv=None) -> int:
    args = parse_args(argv)
    import papermill as pm

    from labkit.notebooks import find_notebook

    helpers = browser_helpers()
    chromium = helpers.find_chromium()
    if chromium is None:
        print("no chromium found", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    info = describe()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    params = {"out_dir": "out"}
    if args.frames:
        params["num_frames"] = args.frames
    if args.embedding:
        params["embedding"] = args.embedding
    timeout_ms = args.timeout * 1e3
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lab"
        root.mkdir()
        pm.execute_notebook(
            str(find_notebook("explorer")),
            str(root / "explorer.ipynb"),
            prepare_only=True,
            progress_bar=False,
            parameters=params,
        )
        proc, url, token = helpers.start_lab(root, Path(tmp) / "home")
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=chromium, headless=True, args=helpers.CHROMIUM_FLAGS
                )
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.set_default_timeout(timeout_ms)
                page.goto(f"{url}/lab/tree/explorer.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell")
                page.wait_for_selector(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached"
                )
                helpers.accept_kernel_dialog(page)

                def wait_shown(sel: str, old: str | None = None) -> None:
                    page.wait_for_function(SHOWN, arg=[sel, old], timeout=timeout_ms)

                page.get_by_role("menuitem", name="Run", exact=True).click()
                start = time.perf_counter()
                page.get_by_text("Run All Cells", exact=True).click()
                helpers.accept_kernel_dialog(page)
                wait_shown("img.labkit-panel-frame")
                seconds["first picture (frame panel) after Run All"] = time.perf_counter() - start
                for name in ("heads", "objects", "segments"):
                    wait_shown(f"img.labkit-panel-{name}")
                seconds["first panels (heads, objects, segments) after Run All"] = (
                    time.perf_counter() - start
                )
                page.wait_for_function(
                    "() => document.querySelector('.labkit-embedding') !== null"
                    " && document.querySelector('.jp-Notebook-ExecutionIndicator')"
                    ".dataset.status === 'idle'",
                    timeout=timeout_ms,
                )
                seconds["all cells done (kernel idle) after Run All"] = time.perf_counter() - start
                seconds_text = {"UMAP note": ""}
                if "UMAP" in page.locator(".labkit-embedding").inner_text():
                    page.wait_for_function(
                        "() => /UMAP took|UMAP failed/.test("
                        "document.querySelector('.labkit-embedding').textContent)",
                        timeout=timeout_ms,
                    )
                    seconds["UMAP shown after Run All"] = time.perf_counter() - start
                    note = page.locator(".labkit-embedding").inner_text()
                    seconds_text["UMAP note"] = next(
                        (s.strip() for s in note.split("|") if "UMAP took" in s), ""
                    )

                app = page.locator(".labkit-explorer")
                app.scroll_into_view_if_needed()

                def src(sel: str) -> str:
                    return page.locator(sel).get_attribute("src") or ""

                moves = []
                handle = app.locator(".widget-hslider").first.locator(".noUi-handle")
                for _ in range(args.slider_moves):
                    old = src("img.labkit-panel-segments")
                    handle.focus()
                    t0 = time.perf_counter()
                    page.keyboard.press("ArrowRight")
                    wait_shown("img.labkit-panel-segments", old)
                    moves.append(time.perf_counter() - t0)
                    page.wait_for_timeout(300)

                selects = app.locator("select")  # layer, facet, R, G, B (ipywidgets Dropdowns)

                def timed(action, sel: str, status: str) -> float:
                    old = src(sel)
                    t0 = time.perf_counter()
                    action()
                    wait_shown(sel, old)
                    page.wait_for_function(
                        "(s) => document.querySelector('.labkit-explorer').textContent.includes(s)"
                        " && !document.querySelector('.labkit-explorer .labkit-pending')",
                        arg=status,
                        timeout=timeout_ms,
                    )
                    return time.perf_counter() - t0

                seconds["head change (R: head 0 -> 3)"] = timed(
                    lambda: selects.nth(2).select_option("3"), "img.labkit-panel-heads", "(3, 1, 2)"
                )

                def k_presses() -> None:
                    k_handle = app.locator(".widget-hslider").nth(1).locator(".noUi-handle")
                    k_handle.focus()
                    for _ in range(3):
                        page.keyboard.press("ArrowRight")

                seconds["k change 5 -> 8 (three key presses)"] = timed(
                    k_presses, "img.labkit-panel-segments", "k-means k=8"
                )
                seconds["layer change (11 -> 6, a new pass over the clip)"] = timed(
                    lambda: selects.nth(0).select_option("6"), "img.labkit-panel-heads", "layer 6"
                )
                frame_img = page.locator("img.labkit-panel-frame")
                box = frame_img.bounding_box()
                t0 = time.perf_counter()
                page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
                wait_shown("img.labkit-similarity-frame")
                wait_shown("img.labkit-similarity-strip")
                seconds["click a patch -> similarity map and strip"] = time.perf_counter() - t0
                seconds["facet change to values (a values pass, k-means, similarity)"] = timed(
                    lambda: selects.nth(1).select_option("values"),
                    "img.labkit-panel-segments",
                    "of the values",
                )
                shots = args.out.parent / "explorer_browser"
                shots.mkdir(parents=True, exist_ok=True)
                app.screenshot(path=str(shots / "explorer.png"))
                browser.close()
        finally:
            helpers.stop_lab(proc)

    result = {
        "date": date,
        "machine": info,
        "parameters": params,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "frame_slider_key_press_s": {
            "n": len(moves),
            "median": round(statistics.median(moves), 3),
            "max": round(max(moves), 3),
        },
        **seconds_text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"# Explorer notebook in Chromium, {date}")
    print(
        f"{info['processor']}, {info['cpu_count']} cores (load average {info['load_average_1m']} "
        f"at start), torch {info['torch']}; parameters: notebook defaults {params}\n"
    )
    print("| what | seconds |")
    print("| --- | ---: |")
    for k, v in result["seconds"].items():
        print(f"| {k} | {v} |")
    m = result["frame_slider_key_press_s"]
    print(f"| frame slider, one key press (median of {m['n']}; max {m['max']}) | {m['median']} |")
    print(f"\n{seconds_text['UMAP note']}\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
