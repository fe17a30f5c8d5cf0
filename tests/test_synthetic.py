"""Tests for labkit.data: data_dir() and the synthetic default video (labkit.data.synthetic)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labkit.data import data_dir, synthetic
from labkit.data.synthetic import (
    SyntheticVideo,
    default_dataset,
    default_video,
    ensure_synthetic,
    generate_synthetic,
    render_synthetic,
    sequence_name,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_frames=24, size=(96, 160))  # H, W even; 1 s at 24 fps


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def decode_mp4(path: Path) -> tuple[np.ndarray, float]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


def file_stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def small_arrays() -> tuple[np.ndarray, np.ndarray]:
    return render_synthetic(**SMALL)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> SyntheticVideo:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "small", **SMALL)


# ----------------------------------------------------------------------------- in memory


def test_render_shapes_dtypes_labels(small_arrays):
    frames, masks = small_arrays
    assert frames.shape == (24, 96, 160, 3) and frames.dtype == np.uint8
    assert masks.shape == (24, 96, 160) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 1, 2, 3}
    assert frames.std() > 20  # a textured scene, not a flat colour


def test_render_is_deterministic_and_seeded(small_arrays):
    frames, masks = render_synthetic(**SMALL)
    np.testing.assert_array_equal(frames, small_arrays[0])
    np.testing.assert_array_equal(masks, small_arrays[1])
    other_frames, other_masks = render_synthetic(**SMALL, seed=1)
    assert not np.array_equal(other_frames, frames)
    assert not np.array_equal(other_masks, masks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_object_visible_in_most_frames(seed):
    _, masks = render_synthetic(num_frames=48, size=(72, 128), num_objects=4, seed=seed)
    area = np.stack([(masks == k).sum(axis=(1, 2)) for k in range(1, 5)], axis=1)  # (T, K)
    visible = area >= 0.3 * area.max(axis=0)  # at least 30% of its largest extent shows
    assert visible.mean(axis=0).min() >= 0.8, visible.mean(axis=0)


def test_masks_are_exactly_the_object_pixels(small_arrays):
    # Floor and camera do not depend on the number of objects: an empty scene is the bare floor.
    floor, empty_masks = render_synthetic(**SMALL, num_objects=0)
    assert not empty_masks.any()
    frames, masks = small_arrays
    changed = (frames != floor).any(axis=-1)  # (T, H, W)
    assert not changed[masks == 0].any()  # outside the masks, pixel for pixel the floor
    assert changed[masks > 0].mean() > 0.95  # inside, the objects' paint


def test_mask_colours_match_object_descriptions(small, small_arrays):
    frames, masks = small_arrays
    objects = json.loads(small.meta_path.read_text())["objects"]
    assert [o["label"] for o in objects] == [1, 2, 3]
    described = np.array([np.mean(o["colors"], axis=0) for o in objects])  # (K, 3)
    background = frames[masks == 0].mean(axis=0)
    for o in objects:
        inside = frames[masks == o["label"]].mean(axis=0)
        assert np.linalg.norm(inside - background) > 40
        nearest = np.argmin(np.linalg.norm(described - inside, axis=1))
        assert objects[nearest]["label"] == o["label"]


def test_camera_pans_right_and_objects_move(small_arrays):
    floor, _ = render_synthetic(**SMALL, num_objects=0)
    a, b = floor[0].astype(float), floor[6].astype(float)
    # Content moves left when the camera pans right: b[:, x] ~ a[:, x + shift]. The pan is half a
    # frame height per second (48 px/s here) times the zoom (1..1.14): about 13 px in 6 frames.
    errors = {s: np.abs(b[:, : 160 - s] - a[:, s:]).mean() for s in range(0, 40)}
    best = min(errors, key=errors.get)
    assert 10 <= best <= 16 and errors[best] < 0.5 * errors[0]
    _, masks = small_arrays
    for k in (1, 2, 3):
        centroids = np.array([np.argwhere(m == k).mean(axis=0) for m in masks])  # (T, 2)
        path = np.linalg.norm(np.diff(centroids, axis=0), axis=1).sum()
        assert path > 5, (k, path)  # pixels travelled in one second at 96 x 160


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=(95, 160)),
        dict(size=(8, 8)),
        dict(size=96),
        dict(num_frames=0),
        dict(num_objects=9),
        dict(num_objects=-1),
        dict(fps=0),
        dict(fps=float("nan")),
        dict(seed=-1),
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        render_synthetic(**{**SMALL, **kwargs})


# ----------------------------------------------------------------------------- on disk


def test_generate_writes_davis_layout(small, small_arrays):
    frames, masks = small_arrays
    assert small.video == small.root / "synthetic.mp4" and small.sequence == "synthetic"
    assert small.frames_dir == small.root / "JPEGImages" / "480p" / "synthetic"
    assert small.masks_dir == small.root / "Annotations" / "480p" / "synthetic"
    jpgs, pngs = sorted(small.frames_dir.iterdir()), sorted(small.masks_dir.iterdir())
    assert [p.name for p in jpgs] == [f"{i:05d}.jpg" for i in range(24)]
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(24)]
    assert (small.root / "sequences.txt").read_text().split() == ["synthetic"]
    meta = json.loads(small.meta_path.read_text())
    assert meta["params"] == dict(num_frames=24, size=[96, 160], num_objects=3, fps=24.0, seed=0)
    assert meta["version"] >= 1 and len(meta["objects"]) == 3
    for i in (0, 11, 23):
        png = Image.open(pngs[i])
        assert png.mode == "P"
        palette = np.array(png.getpalette()[:15]).reshape(5, 3)
        # DAVIS 2017 colours: black background, then dark red, green, olive, navy.
        assert palette.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
        np.testing.assert_array_equal(np.array(png), masks[i])
        jpg = np.array(Image.open(jpgs[i]))
        assert jpg.shape == (96, 160, 3) and psnr(jpg, frames[i]) > 25


def test_generate_masks_byte_identical(small, tmp_path):
    again = generate_synthetic(tmp_path / "again", **SMALL)
    pairs = zip(sorted(small.masks_dir.iterdir()), sorted(again.masks_dir.iterdir()), strict=True)
    for a, b in pairs:
        assert a.read_bytes() == b.read_bytes(), a.name


def test_mp4_decodes_to_the_frames(small, small_arrays):
    decoded, fps = decode_mp4(small.video)
    assert decoded.shape == (24, 96, 160, 3) and fps == 24
    assert psnr(decoded, small_arrays[0]) > 25


def test_generate_refuses_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        generate_synthetic(tmp_path, **SMALL)


def test_ensure_reuses_then_regenerates_when_stale_or_damaged(tmp_path):
    out = tmp_path / "syn"
    first = ensure_synthetic(out, **SMALL)
    stamps = file_stamps(out)
    assert ensure_synthetic(out, **SMALL) == first
    assert file_stamps(out) == stamps  # reused: nothing rewritten

    seeded = ensure_synthetic(out, **SMALL, seed=1)  # other parameters replace the stale dataset
    assert seeded.seed == 1 and json.loads(seeded.meta_path.read_text())["params"]["seed"] == 1

    missing = out / "Annotations" / "480p" / "synthetic" / "00005.png"
    missing.unlink()  # damaged
    ensure_synthetic(out, **SMALL, seed=1)
    assert missing.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no scratch folders left


def interrupt_at_frame(monkeypatch, index: int) -> None:
    render = synthetic._Scene.render

    def failing(self, i):
        if i == index:
            raise RuntimeError("interrupted")
        return render(self, i)

    monkeypatch.setattr(synthetic._Scene, "render", failing)


def test_interrupted_generation_is_never_reused(monkeypatch, tmp_path):
    out = tmp_path / "syn"
    with monkeypatch.context() as m:
        interrupt_at_frame(m, 5)
        with pytest.raises(RuntimeError, match="interrupted"):
            ensure_synthetic(out, **SMALL)
        assert list(tmp_path.iterdir()) == []  # nothing at out, no scratch folder
        with pytest.raises(RuntimeError, match="interrupted"):
            generate_synthetic(out, **SMALL)  # in place: a half dataset marked incomplete
    assert len(list(out.rglob("*.png"))) == 5
    assert json.loads((out / "meta.json").read_text())["complete"] is False
    done = ensure_synthetic(out, **SMALL)
    assert len(list(done.masks_dir.glob("*.png"))) == 24
    assert json.loads(done.meta_path.read_text())["complete"] is True


def test_ensure_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a labkit synthetic dataset"):
        ensure_synthetic(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # A DAVIS-looking folder without our meta.json is someone's data: never replaced.
    davis = generate_synthetic(tmp_path / "davis", **SMALL)
    davis.meta_path.unlink()
    with pytest.raises(ValueError, match="not a labkit synthetic dataset"):
        ensure_synthetic(davis.root, **SMALL)
    assert len(list(davis.frames_dir.glob("*.jpg"))) == 24


@pytest.mark.skipif(os.name != "posix", reason="leftover clean-up probes process ids on POSIX only")
def test_ensure_removes_scratch_of_dead_processes_only(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead_pid = int(gone.stdout)
    host = socket.gethostname()
    dead = tmp_path / f".syn.tmp-{dead_pid}-0badc0de-{host}"
    alive = tmp_path / f".syn.tmp-{os.getpid()}-0badc0de-{host}"
    for p in (dead, alive):
        (p / "JPEGImages").mkdir(parents=True)
    ensure_synthetic(tmp_path / "syn", **SMALL)
    assert not dead.exists() and alive.exists()


def test_ensure_two_processes_at_once(tmp_path):
    out = tmp_path / "syn"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from labkit.data.synthetic import ensure_synthetic;"
        "print(ensure_synthetic(sys.argv[2], num_frames=24, size=(96, 160)).video)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(REPO), str(out)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(out / "synthetic.mp4")] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]
    stamps = file_stamps(out)
    ensure_synthetic(out, **SMALL)
    assert file_stamps(out) == stamps


# ----------------------------------------------------------------------------- data_dir, defaults


def test_data_dir_env_then_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    monkeypatch.delenv("LABKIT_DATA")
    assert data_dir() == REPO / "data"  # imported from this checkout


def test_data_dir_outside_a_checkout_is_the_user_cache(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(REPO / "labkit", site / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from labkit.data import data_dir; print(data_dir())"
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_DATA", "XDG_CACHE_HOME")}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path / "home"))
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(run.stdout.strip()) == tmp_path / "home" / ".cache" / "labkit"


def test_default_video_generated_once_under_labkit_data(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    video = default_video()
    assert video == tmp_path.resolve() / "synthetic" / "synthetic.mp4"
    root = default_dataset()
    assert root == video.parent
    stamps = file_stamps(root)
    assert default_video() == video and file_stamps(root) == stamps

    meta = json.loads((root / "meta.json").read_text())
    assert meta["params"] == dict(num_frames=120, size=[360, 640], num_objects=3, fps=24.0, seed=0)
    assert len(list((root / "JPEGImages" / "480p" / "synthetic").glob("*.jpg"))) == 120
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.frames, stream.height, stream.width) == (120, 360, 640)
    last = np.array(Image.open(root / "Annotations" / "480p" / "synthetic" / "00119.png"))
    assert last.shape == (360, 640) and set(np.unique(last).tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- the hard variant


@pytest.fixture(scope="module")
def hard_arrays():
    return render_synthetic(num_frames=48, size=(96, 160), variant="hard")


def test_hard_variant_is_deterministic_and_differs_from_easy(hard_arrays):
    frames, masks = hard_arrays
    again = render_synthetic(num_frames=48, size=(96, 160), variant="hard")
    assert np.array_equal(frames, again[0]) and np.array_equal(masks, again[1])
    easy = render_synthetic(num_frames=48, size=(96, 160))
    assert not np.array_equal(frames, easy[0])
    assert set(np.unique(masks)) <= {0, 1, 2, 3}


def test_hard_objects_wear_the_floors_colours(hard_arrays):
    """Every object's mean colour lies within the floor's colour range (10 levels of slack for the
    changing light); the easy variant's saturated objects do not."""
    frames, masks = hard_arrays
    floor = frames[masks == 0].astype(np.float64)  # (n, 3) background (floor and poles)
    lo, hi = np.percentile(floor, 1, axis=0), np.percentile(floor, 99, axis=0)
    for k in (1, 2, 3):
        mean = frames[masks == k].astype(np.float64).mean(0)
        assert np.all(mean >= lo - 10) and np.all(mean <= hi + 10), (k, mean, lo, hi)
    easy_frames, easy_masks = render_synthetic(num_frames=48, size=(96, 160))
    efloor = easy_frames[easy_masks == 0].astype(np.float64)
    elo, ehi = np.percentile(efloor, 1, axis=0), np.percentile(efloor, 99, axis=0)
    outside = [
        not (np.all(m >= elo - 10) and np.all(m <= ehi + 10))
        for m in (easy_frames[easy_masks == k].astype(np.float64).mean(0) for k in (1, 2, 3))
    ]
    assert any(outside)  # the easy variant's saturated objects stand out from their floor


def test_hard_objects_change_their_look_over_time(hard_arrays):
    """Per object, the mean colour moves over 2 s by far more than JPEG noise (easy: it stays)."""
    frames, masks = hard_arrays

    def spread(frames, masks):
        out = []
        for k in (1, 2, 3):
            means = [
                frames[t][masks[t] == k].mean(0)
                for t in range(len(frames))
                if (masks[t] == k).sum() > 20
            ]
            out.append(float(np.ptp(np.array(means), axis=0).max()))
        return out

    hard = spread(frames, masks)
    easy = spread(*render_synthetic(num_frames=48, size=(96, 160)))
    assert min(hard) > 12 and min(hard) > max(easy)


def test_hard_poles_occlude_and_are_background(hard_arrays):
    """Pole columns are background in every row of the mask; objects pass behind them."""
    frames, masks = hard_arrays
    scene = synthetic._Scene(synthetic._Params(48, (96, 160), 3, 24, 0, "hard"))
    hidden = 0
    for t in range(48):
        spans = scene.pole_spans(t / 24)
        assert spans  # two poles, at least one always in view at this size
        for j0, j1 in spans:
            assert (masks[t][:, j0:j1] == 0).all()
        # an object straddling a pole: its pixels on both sides of the pole
        for j0, j1 in spans:
            left = masks[t][:, max(j0 - 2, 0) : j0]
            right = masks[t][:, j1 : j1 + 2]
            hidden += int(bool(set(np.unique(left)) & set(np.unique(right)) - {0}))
    assert hidden > 0  # some object is split by a pole in some frame


def test_hard_variant_meta_and_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    monkeypatch.setattr(
        synthetic,
        "ensure_synthetic",
        lambda out_dir, **kw: ensure_synthetic(out_dir, **{**kw, **SMALL}),
    )
    root = default_dataset("hard")
    assert root == tmp_path / "synthetic-hard"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["params"]["variant"] == "hard" and "occluders" in meta
    # its own sequence name, so that tables and figures of the two videos tell them apart
    assert sequence_name("hard") == meta["sequence"] == "synthetic-hard"
    assert (root / "sequences.txt").read_text().split() == ["synthetic-hard"]
    assert default_video("hard") == root / "synthetic-hard.mp4"
    assert len(list((root / "JPEGImages" / "480p" / "synthetic-hard").glob("*.jpg"))) == 24
    assert len(list((root / "Annotations" / "480p" / "synthetic-hard").glob("*.png"))) == 24
    stamps = file_stamps(root)
    assert default_dataset("hard") == root and file_stamps(root) == stamps  # reused
    # a hard dataset written before it had its own name (sequence "synthetic") is regenerated
    for kind in ("JPEGImages", "Annotations"):
        (root / kind / "480p" / "synthetic-hard").rename(root / kind / "480p" / "synthetic")
    (root / "synthetic-hard.mp4").rename(root / "synthetic.mp4")
    assert default_dataset("hard") == root
    assert (root / "sequences.txt").read_text().split() == ["synthetic-hard"]
    assert not (root / "JPEGImages" / "480p" / "synthetic").exists()
    assert len(list((root / "JPEGImages" / "480p" / "synthetic-hard").glob("*.jpg"))) == 24
    with pytest.raises(ValueError, match="variant"):
        default_dataset("medium")
    with pytest.raises(ValueError, match="variant"):
        render_synthetic(num_frames=2, size=(32, 32), variant="medium")
