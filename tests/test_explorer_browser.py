"""The explorer notebook in a real browser: JupyterLab on localhost, headless Chromium via
playwright.

Runs ``notebooks/explorer.ipynb`` (tiny parameters injected by papermill without executing it) in
JupyterLab, waits for the explorer's panels, moves the frame slider with the keyboard and checks
from screenshots that the picture changed; then clicks a patch of the embedding view's frame and
lasso-selects points, and checks what the kernel answered.

The browser is Debian's ``chromium`` (``make test`` installs it as root when missing), driven by
playwright through ``executable_path``; playwright's own browser download is never used. Without
chromium or playwright the test skips with the reason, except where ``LABKIT_REQUIRE_BROWSER=1``
or ``CI`` is set: there a missing browser is a failure.

Screenshots go to ``$LABKIT_SCREENSHOTS`` when set (else the test's tmp folder).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 3}
CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
)
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
]


def browser_required() -> bool:
    return os.environ.get("LABKIT_REQUIRE_BROWSER", "") == "1" or os.environ.get(
        "CI", ""
    ).lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    if browser_required():
        pytest.fail(
            f"{reason} (required here: LABKIT_REQUIRE_BROWSER=1 or CI is set; "
            "`make test` installs it)"
        )
    pytest.skip(reason)


def find_chromium() -> str | None:
    """Debian's chromium: $LABKIT_CHROMIUM, the real binary behind /usr/bin/chromium, or on PATH."""
    env = os.environ.get("LABKIT_CHROMIUM")
    candidates = ([env] if env else []) + list(CHROMIUM_CANDIDATES)
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def browser_tools():
    """(chromium path, playwright's sync_playwright), or skip (fail where required) naming what is
    missing.
    """
    chromium = find_chromium()
    if chromium is None:
        unavailable("no chromium found (Debian: apt-get install chromium; or set LABKIT_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    return chromium, sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, home: Path) -> tuple[subprocess.Popen, str, str]:
    """JupyterLab serving ``root`` on a free localhost port; returns (process, base url, token)."""
    port, token = free_port(), uuid.uuid4().hex
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    env = {k: v for k, v in os.environ.items() if k != "LABKIT_HEADLESS"}  # live widgets
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        PYTHONUNBUFFERED="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(home / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited: {(home / 'jupyterlab.log').read_text()[-2000:]}"
            )
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            return proc, url, token
        except OSError:
            time.sleep(0.5)
    stop_lab(proc)
    raise RuntimeError("JupyterLab did not answer within 60 s")


def stop_lab(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (server and kernel), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def accept_kernel_dialog(page) -> None:
    """JupyterLab may ask which kernel to start: take the one it proposes (the notebook's
    python3).
    """
    dialog = page.locator(".jp-Dialog .jp-mod-accept")
    try:
        dialog.wait_for(state="visible", timeout=3000)
    except Exception:
        return
    dialog.click()


def wait_until(page, predicate: str, timeout: float = 120.0, arg=None) -> None:
    """Poll a JS predicate; meanwhile accept JupyterLab's kernel dialog should it come up late."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate, arg):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout:.0f} s: {predicate}")
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count() and dialog.first.is_visible():
            dialog.first.click()
        page.wait_for_timeout(250)


def picture(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def test_explorer_notebook_in_chromium(tmp_path: Path) -> None:
    chromium, sync_playwright = browser_tools()
    import papermill as pm

    from labkit.data.synthetic import generate_synthetic
    from labkit.notebooks import find_notebook

    shots = Path(os.environ.get("LABKIT_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "lab"
    root.mkdir()
    video = generate_synthetic(tmp_path / "video", num_frames=16, size=(96, 160), seed=3).video
    pm.execute_notebook(
        str(find_notebook("explorer")),
        str(root / "explorer.ipynb"),
        prepare_only=True,
        progress_bar=False,
        parameters={
            "video_path": str(video),
            "model_kwargs": TINY,
            "num_frames": 8,
            "frame_step": 2,
            "img_size": 96,
            "k": 3,
            "embedding": "pca",
            "max_points": 400,
            "out_dir": str(root / "out"),
        },
    )
    proc, url, token = start_lab(root, tmp_path / "home")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(f"{url}/lab/tree/explorer.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell")
                page.wait_for_selector(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached"
                )
                accept_kernel_dialog(page)
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_text("Run All Cells", exact=True).click()
                accept_kernel_dialog(page)

                # the app before its panels are computed: placeholders, never broken images
                wait_until(
                    page,
                    "() => { const a = [...document.querySelectorAll("
                    "'.labkit-explorer img[class*=labkit-panel-]')];"
                    " return a.length === 4 && a.every(i => i.complete && i.naturalWidth > 0); }",
                    timeout=150,
                )
                # the explorer's panels, after the background worker filled the cache
                wait_until(
                    page,
                    "() => { const i = document.querySelector('img.labkit-panel-heads');"
                    " return !!i && i.complete && i.naturalWidth > 0"
                    " && !i.classList.contains('labkit-pending'); }",
                    timeout=150,
                )
                app = page.locator(".labkit-explorer")
                app.scroll_into_view_if_needed()
                frame_img = page.locator("img.labkit-panel-frame")
                before_src = frame_img.get_attribute("src")
                before = app.screenshot(path=str(shots / "explorer_frame0.png"))

                slider = app.locator(".widget-hslider").first  # the frame slider
                slider.locator(".noUi-handle").focus()
                for _ in range(5):
                    page.keyboard.press("ArrowRight")
                page.wait_for_function(
                    "(old) => { const i = document.querySelector('img.labkit-panel-frame');"
                    " return i.src !== old && i.complete && i.naturalWidth > 0; }",
                    arg=before_src,
                )
                assert "5" in slider.locator(".widget-readout").inner_text()
                page.wait_for_timeout(500)  # every panel swapped
                after = app.screenshot(path=str(shots / "explorer_frame5.png"))
                a, b = picture(before), picture(after)
                assert a.shape == b.shape
                changed = np.abs(a - b).max(-1) > 24
                assert changed.mean() > 0.05, (
                    f"only {changed.mean():.1%} of the explorer's pixels changed"
                )

                # a click on a patch of the heads panel: its similarity map and the clip's strip
                box = page.locator("img.labkit-panel-heads").bounding_box()
                page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
                for sel in ("img.labkit-similarity-frame", "img.labkit-similarity-strip"):
                    page.wait_for_function(
                        "(sel) => { const i = document.querySelector(sel); return !!i"
                        " && i.complete && i.naturalWidth > 0"
                        " && !i.classList.contains('labkit-pending'); }",
                        arg=sel,
                    )
                assert "cosine similarity to patch" in app.inner_text()
                app.screenshot(path=str(shots / "explorer_similarity.png"))

                # the embedding view: plotly FigureWidgets rendered, a click on the frame, a lasso
                emb = page.locator(".labkit-embedding")
                emb.scroll_into_view_if_needed()
                page.wait_for_function(  # the FigureWidget drawn with its data, the frame shown
                    "() => document.querySelectorAll('.labkit-embedding .scatterlayer .point')"
                    ".length > 100 &&"
                    " document.querySelector('img.labkit-embedding-frame').naturalWidth > 0"
                )
                deadline = time.monotonic() + 60
                while not (root / "out" / "embedding.html").is_file():  # the last cell ran
                    assert time.monotonic() < deadline, "the notebook's last cell did not finish"
                    page.wait_for_timeout(500)
                frame = emb.locator("img.labkit-embedding-frame")
                box = frame.bounding_box()
                x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4
                page.mouse.click(x, y)
                page.wait_for_function(
                    "() => document.querySelector('.labkit-embedding').textContent"
                    ".includes('clicked patch')"
                )
                plots = emb.locator(".js-plotly-plot")
                box = plots.nth(0).locator(".nsewdrag").first.bounding_box()
                cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                r = min(box["width"], box["height"]) * 0.45  # a lasso around most of the plot
                page.mouse.move(cx - r, cy - r)
                page.mouse.down()
                for x, y in (
                    (cx + r, cy - r),
                    (cx + r, cy + r),
                    (cx - r, cy + r),
                    (cx - r, cy - r + 2),
                ):
                    page.mouse.move(x, y, steps=8)
                page.mouse.up()
                page.wait_for_function(
                    "() => document.querySelector('.labkit-embedding').textContent"
                    ".includes('patches selected in')"
                )
                page.wait_for_timeout(500)
                emb.screenshot(path=str(shots / "embedding_selected.png"))
                page.screenshot(path=str(shots / "page.png"), full_page=True)
            finally:
                try:  # what the page showed last, for a failure's diagnosis
                    page.screenshot(path=str(shots / "last.png"), full_page=True)
                except Exception:
                    pass
                browser.close()
    finally:
        stop_lab(proc)


def test_html_export_in_chromium(tmp_path: Path) -> None:
    """The standalone HTML page, opened from a file (no kernel, no network): a lasso outlines
    exactly the selected patches of the frame shown."""
    chromium, sync_playwright = browser_tools()
    import torch

    from labkit.viz.embedding import EmbeddingView

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 64, 96, 3), dtype=np.uint8)
    feats = torch.from_numpy(rng.normal(size=(4, 4, 6, 16))).float()
    view = EmbeddingView(frames, feats, None, patch_size=16, frame=2)
    page_path = view.write_html(tmp_path / "embedding.html")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 700})
            page.goto(page_path.as_uri())
            page.wait_for_selector(".scatterlayer .point")
            box = page.locator(".nsewdrag").first.bounding_box()
            cx, cy, r = (
                box["x"] + box["width"] / 2,
                box["y"] + box["height"] / 2,
                box["width"] * 0.3,
            )
            page.mouse.move(cx - r, cy - r)
            page.mouse.down()
            for x, y in (
                (cx + r, cy - r),
                (cx + r, cy + r),
                (cx - r, cy + r),
                (cx - r, cy - r + 2),
            ):
                page.mouse.move(x, y, steps=8)
            page.mouse.up()
            page.wait_for_timeout(500)
            gd = "document.querySelector('.plotly-graph-div')"
            selected = page.evaluate(f"{gd}.data[0].selectedpoints")
            shapes = page.evaluate(f"{gd}.layout.shapes || []")
            page.screenshot(path=str(tmp_path / "html.png"))
        finally:
            browser.close()
    assert selected, "the lasso selected nothing"
    patches = view.shown.index[np.asarray(selected)]
    expected = {
        (16 * j - 0.5, 16 * i - 0.5) for t, i, j in patches if t == 2
    }  # frame shown: position 2
    assert {(s["x0"], s["y0"]) for s in shapes} == expected and len(shapes) == len(expected)
