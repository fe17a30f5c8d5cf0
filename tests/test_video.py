"""labkit.video: readers against an independent full decode, resize, clips, bad input, real data.

The test videos are written here with PyAV; frame i is grey 8 + 6 (i mod 40) on its left half and
8 + 48 (i div 40) on its right half, with a white square at x = 2 i, so a decoded frame says which
frame it is.
"""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from labkit.video import (
    FrameFolder,
    PyAVVideo,
    Video,
    VideoError,
    davis_sequence,
    load_masks,
    open_frames,
    open_video,
    resolve_size,
)

av = pytest.importorskip("av")
H, W = 64, 96


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


NO_DECORD = pytest.mark.skipif(not _has_decord(), reason="decord not installed")
BACKENDS = ["pyav", pytest.param("decord", marks=NO_DECORD)]


def frame_content(i: int, rng: np.random.Generator | None = None) -> np.ndarray:
    a = np.full((H, W, 3), 8 + 6 * (i % 40), dtype=np.uint8)
    a[:, W // 2 :] = 8 + 48 * (i // 40)  # right half counts forties: up to 160 frames
    if rng is not None:  # incompressible texture in the lower half: makes the file big
        a[H // 2 :] = rng.integers(0, 256, (H - H // 2, W, 3), dtype=np.uint8)
    x = (2 * i) % (W - 8)
    a[4:12, x : x + 8] = 255
    return a


def write_video(path, n=40, *, codec="libx264", gop=8, faststart=False, noise=False):
    rng = np.random.default_rng(0) if noise else None
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frame_content(i, rng), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def reference_decode(path) -> np.ndarray:
    """Every frame, decoded start to end with the plainest PyAV loop: the independent reference."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def frame_ids(frames: np.ndarray) -> list[int]:
    """Which frame each decoded frame is, from its grey level (rows below the square)."""
    rows = frames[:, 16:28].astype(float)  # (N, 12, W, 3)
    ones = rows[:, :, 4 : W // 2 - 4].mean(axis=(1, 2, 3))
    forties = rows[:, :, W // 2 + 4 : -4].mean(axis=(1, 2, 3))
    return [int(round((a - 8) / 6)) + 40 * int(round((b - 8) / 48)) for a, b in zip(ones, forties)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264": write_video(d / "h264.mp4", 40, gop=8),  # B-frames, 5 keyframes
        "mpeg4": write_video(d / "mpeg4.mp4", 40, codec="mpeg4", gop=10),
        "long": write_video(d / "long.mp4", 120, gop=12),
    }


# ------------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata_and_repr(videos, backend):
    video = open_video(videos["h264"], backend=backend)
    assert isinstance(video, Video) and video.backend == backend
    assert (len(video), video.fps, video.size, video.source_size) == (40, 24.0, (H, W), (H, W))
    text = repr(video)
    for part in (str(videos["h264"]), backend, "frames=40", "fps=24", f"size={(H, W)}"):
        assert part in text


def test_auto_prefers_decord(videos):
    expected = "decord" if _has_decord() else "pyav"
    assert open_video(videos["h264"]).backend == expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["h264", "mpeg4"])
def test_get_returns_callers_order_with_duplicates(videos, backend, name):
    video = open_video(videos[name], backend=backend)
    frames = video.get([5, 2, 5])
    assert frames.shape == (3, H, W, 3) and frames.dtype == np.uint8
    assert frame_ids(frames) == [5, 2, 5]
    assert np.array_equal(frames[0], frames[2])
    assert frame_ids(video[39][None]) == [39]
    assert video.get([]).shape == (0, H, W, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_access_matches_full_decode(videos, backend):
    reference = reference_decode(videos["long"])  # (120, H, W, 3)
    assert frame_ids(reference) == list(range(120))
    video = open_video(videos["long"], backend=backend)
    rng = np.random.default_rng(1)
    for _ in range(3):  # several calls on one reader: backward jumps, forward skips, repeats
        idx = rng.integers(0, 120, size=25)
        frames = video.get(idx)
        diff = np.abs(frames.astype(int) - reference[idx]).mean()
        assert diff <= (0 if backend == "pyav" else 1.0), diff


def test_pyav_seeks_to_keyframe_instead_of_decoding_from_start(videos):
    video = PyAVVideo(videos["long"])  # keyframe every 12 frames
    video.get([110])
    first = video._frames_decoded
    assert first <= 2 * 12, first  # from the keyframe at 108, not from frame 0
    video.get([111, 112])  # forward within the GOP: continues the running decoder
    assert video._frames_decoded - first <= 4


def test_backends_agree(videos):
    if not _has_decord():
        pytest.skip("decord not installed")
    for name in ("h264", "mpeg4"):
        a = open_video(videos[name], backend="decord").get(range(40)).astype(int)
        b = open_video(videos[name], backend="pyav").get(range(40)).astype(int)
        assert np.abs(a - b).mean() < 1.0 and np.abs(a - b).max() <= 16


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_on_read(videos, backend):
    full = open_video(videos["h264"], backend=backend).get([3, 30])
    small = open_video(videos["h264"], size=32, backend=backend)
    assert (small.size, small.source_size) == ((32, 48), (H, W))
    frames = small.get([3, 30])
    assert frames.shape == (2, 32, 48, 3)
    expected = np.stack(
        [np.asarray(Image.fromarray(f).resize((48, 32), Image.BILINEAR)) for f in full]
    )
    assert np.abs(frames.astype(int) - expected).mean() < 6
    upsampled = np.stack([np.asarray(Image.fromarray(f).resize((W, H))) for f in frames])
    assert frame_ids(upsampled) == [3, 30]
    exact = open_video(videos["h264"], size=(21, 35), backend=backend)
    assert exact.get([0, 1]).shape == (2, 21, 35, 3)
    assert "source_size=(64, 96)" in repr(exact)


def test_resolve_size():
    assert resolve_size(None, (480, 854)) == (480, 854)
    assert resolve_size(224, (480, 854)) == (224, 398)  # 398.5 -> 398 (nearest even)
    assert resolve_size(225, (480, 854)) == (226, 400)  # shorter side rounds to even too
    assert resolve_size(100, (854, 480)) == (178, 100)  # portrait
    assert resolve_size((21, 35), (480, 854)) == (21, 35)


@pytest.mark.parametrize(
    "size", [0, -5, 1, 2.5, "224", (10,), (0, 10), (10.0, 20), True, (1, 2, 3)]
)
def test_bad_size(videos, size):
    with pytest.raises(VideoError, match="size"):
        open_video(videos["h264"], size=size)


# ------------------------------------------------------------------------------------------------
# Clips and batches


@pytest.mark.parametrize("backend", BACKENDS)
def test_clips(videos, backend):
    video = open_video(videos["h264"], backend=backend)
    assert video.clip_indices(3, 4, step=5).tolist() == [3, 8, 13, 18]
    assert video.clip_indices(3, 4, step=5).dtype == np.int64
    clip = video.get_clip(3, 4, step=5)
    assert clip.shape == (4, H, W, 3) and frame_ids(clip) == [3, 8, 13, 18]
    got = [(idx.tolist(), frame_ids(f)) for idx, f in video.clips(4, step=3)]
    # span 10, stride 12: starts 0, 12, 24 (24 + 9 = 33 < 40); 36 would need frame 45
    assert [g[0] for g in got] == [[0, 3, 6, 9], [12, 15, 18, 21], [24, 27, 30, 33]]
    assert all(ids == idx for idx, ids in got)
    starts = [int(idx[0]) for idx, _ in video.clips(8, stride=16)]
    assert starts == [0, 16, 32]
    with pytest.raises(VideoError, match=r"needs frames up to 40.*has 40 frames"):
        video.clip_indices(1, 40)
    with pytest.raises(VideoError, match="has 40 frames"):
        next(video.clips(41))
    with pytest.raises(VideoError, match="has 40 frames"):
        next(video.clips(10, step=5))
    for bad in ({"num_frames": 0}, {"num_frames": 4, "step": 0}, {"num_frames": 4, "step": 1.5}):
        with pytest.raises(VideoError):
            video.clip_indices(0, **bad)
    with pytest.raises(VideoError, match="start"):
        video.clip_indices(-1, 4)


def test_batches_and_iteration(videos):
    video = open_video(videos["h264"], backend="pyav")
    chunks = list(video.batches(batch_size=16))
    assert [len(i) for i, _ in chunks] == [16, 16, 8]
    assert sum((frame_ids(f) for _, f in chunks), []) == list(range(40))
    idx, frames = next(video.batches([7, 1, 7], batch_size=2))
    assert idx.tolist() == [7, 1] and frame_ids(frames) == [7, 1]
    assert frame_ids(np.stack(list(video))) == list(range(40))
    with pytest.raises(VideoError, match="out of range"):
        next(video.batches([1, 99]))
    with pytest.raises(VideoError, match="batch_size"):
        next(video.batches(batch_size=0))


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "indices, message",
    [
        ([0, -1], "negative frame index -1"),
        ([3, 40], "frame index 40 out of range, the video has 40 frames"),
        ([1.0, 2.0], "integers"),
        ([True, False], "integers"),
        ([[1, 2]], "one-dimensional"),
        (5, "video\\[i\\]"),
    ],
)
def test_bad_indices(videos, backend, indices, message):
    video = open_video(videos["h264"], backend=backend)
    with pytest.raises(VideoError, match=message) as info:
        video.get(indices)
    assert str(videos["h264"]) in str(info.value)
    with pytest.raises(VideoError):
        video[-1]


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_bad_files(tmp_path, backend):
    if backend == "decord" and not _has_decord():
        pytest.skip("decord not installed")
    cases = {
        "missing.mp4": None,
        "text.mp4": b"this is not a video\n" * 50,
        "empty.mp4": b"",
        "notes.txt": b"plain text that FFmpeg would show as a 'tty' video\n" * 20,
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(VideoError) as info:
            open_video(path, backend=backend)
        assert str(path) in str(info.value), info.value


def test_bad_arguments(tmp_path, videos):
    with pytest.raises(VideoError, match="backend"):
        open_video(videos["h264"], backend="opencv")
    with pytest.raises(VideoError, match="folder of frames"):
        open_video(tmp_path, backend="pyav")
    with pytest.raises(VideoError, match="no images"):
        open_video(tmp_path)  # an empty folder
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(VideoError, match="no images"):
        open_frames(tmp_path)


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_truncated_file_without_index(tmp_path, backend):
    """PyAV writes the mp4 index (moov) last: the first 30% of the bytes is no readable video."""
    if backend == "decord" and not _has_decord():
        pytest.skip("decord not installed")
    data = write_video(tmp_path / "full.mp4", 60, noise=True).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * 3 // 10])
    with pytest.raises(VideoError, match="cut.mp4"):
        open_video(path, backend=backend)


def test_truncated_file_fails_on_late_frames(tmp_path):
    """With the index first (faststart), a cut file opens but its late frames are gone."""
    data = write_video(tmp_path / "full.mp4", 60, faststart=True, noise=True).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * 3 // 10])
    if _has_decord():  # decord refuses the file at open; auto falls back to PyAV
        with pytest.raises(VideoError, match="cut.mp4"):
            open_video(path, backend="decord")
    video = open_video(path)
    assert video.backend == "pyav" and len(video) == 60  # the header's count
    assert frame_ids(video.get([0, 5, 10])) == [0, 5, 10]
    for late in (50, 59, 17):
        with pytest.raises(VideoError, match=rf"cut.mp4.*frame {late}.*truncated") as info:
            video.get([2, late])
        if late >= 50:
            assert "declares 60 frames" in str(info.value)
    with pytest.raises(VideoError, match="cut.mp4"):
        list(video.clips(8))
    assert frame_ids(video.get([1])) == [1]  # still usable after an error


def test_decord_runtime_failure_falls_back_to_pyav(videos, monkeypatch):
    if not _has_decord():
        pytest.skip("decord not installed")
    video = open_video(videos["h264"])
    assert video.backend == "decord"
    forced = open_video(videos["h264"], backend="decord")

    def broken(indices):
        raise RuntimeError("[12:00:00] video_reader.cc:1: simulated decoder failure")

    for v in (video, forced):
        v.get([0])  # opens the reader
        monkeypatch.setattr(v._reader, "get_batch", broken, raising=False)
    with pytest.warns(UserWarning, match="reading them with PyAV"):
        assert frame_ids(video.get([9, 4])) == [9, 4]
    with pytest.raises(VideoError, match="simulated decoder failure"):
        forced.get([9, 4])


def test_decord_width_bug(tmp_path):
    """decord 0.6 garbles frames 48 px wide: resize falls back to PIL, a 48-px file to PyAV."""
    if not _has_decord():
        pytest.skip("decord not installed")
    path = tmp_path / "narrow.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(6):
            image = np.ascontiguousarray(frame_content(i)[:32, :48])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match="narrow.mp4.*backend='pyav'"):
        open_video(path, backend="decord")
    assert open_video(path).backend == "pyav"
    assert open_video(path).get([5]).shape == (1, 32, 48, 3)


def test_without_decord(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    assert open_video(videos["h264"]).backend == "pyav"
    with pytest.raises(VideoError, match="decord is not installed"):
        open_video(videos["h264"], backend="decord")


def test_pickle_and_close(videos):
    for video in (PyAVVideo(videos["h264"]), open_video(videos["h264"])):
        video.get([3])
        copy = pickle.loads(pickle.dumps(video))
        assert frame_ids(copy.get([6, 2])) == [6, 2]
        with video:
            video.get([1])
        assert frame_ids(video.get([8])) == [8]  # reopens after close


# ------------------------------------------------------------------------------------------------
# Frame folders and masks


def write_frames(folder, n, names=None, size=(H, W)):
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:05d}.png" for i in range(n)]
    for i, name in enumerate(names):
        Image.fromarray(frame_content(i)[: size[0], : size[1]]).save(folder / name)
    return folder


def test_frame_folder(tmp_path):
    folder = write_frames(tmp_path / "seq", 12, names=[f"f{i}.png" for i in range(12)])
    (folder / "notes.txt").write_text("ignored")
    video = open_video(folder)
    assert isinstance(video, FrameFolder) and video.backend == "frames"
    assert (len(video), video.fps, video.size) == (12, 24.0, (H, W))
    assert "backend='frames'" in repr(video) and "frames=12" in repr(video)
    frames = video.get([10, 2, 10])  # f10 after f9, not after f1: natural name order
    assert np.array_equal(frames, np.stack([frame_content(i) for i in (10, 2, 10)]))
    assert [i.tolist() for i, _ in video.clips(3, step=2)] == [[0, 2, 4], [6, 8, 10]]
    small = open_frames(folder, size=(32, 48), fps=30)
    assert small.fps == 30.0 and small.get([0]).shape == (1, 32, 48, 3)
    with pytest.raises(VideoError, match="fps"):
        open_frames(folder, fps=0)
    with pytest.raises(VideoError, match="out of range"):
        video.get([12])


def test_frame_folder_bad_images(tmp_path):
    folder = write_frames(tmp_path / "seq", 3)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "00003.png")
    (folder / "00004.jpg").write_bytes(b"not a jpeg")
    video = open_frames(folder)
    with pytest.raises(VideoError, match=r"00003.png.*10x10"):
        video.get([3])
    with pytest.raises(VideoError, match="00004.jpg"):
        video.get([4])


def test_load_masks_palette_and_binary(tmp_path):
    labels = np.zeros((3, 40, 60), np.uint8)
    labels[:, 5:15, 5:20] = 1
    labels[1, 20:30, 30:50] = 2
    labels[2, 0:4, 0:4] = 7
    palette_dir, grey_dir, rgb_dir = tmp_path / "p", tmp_path / "grey", tmp_path / "rgb"
    for d in (palette_dir, grey_dir, rgb_dir):
        d.mkdir()
    for i, lab in enumerate(labels):
        p = Image.fromarray(lab, mode="P")
        p.putpalette(np.random.default_rng(i).integers(0, 256, 768).astype(np.uint8).tolist())
        p.save(palette_dir / f"{i:05d}.png")
        binary = (lab > 0).astype(np.uint8) * 255
        Image.fromarray(binary).save(grey_dir / f"{i:05d}.png")
        Image.fromarray(np.repeat(binary[..., None], 3, axis=2)).save(rgb_dir / f"{i:05d}.png")
    masks = load_masks(palette_dir)
    assert masks.dtype == np.uint8 and np.array_equal(masks, labels)
    for d in (grey_dir, rgb_dir):
        assert np.array_equal(load_masks(d), (labels > 0).astype(np.uint8))
    resized = load_masks(palette_dir, size=(20, 30))
    assert resized.shape == (3, 20, 30)
    rows = np.floor((np.arange(20) + 0.5) * 40 / 20).astype(int)  # nearest, pixel centres
    cols = np.floor((np.arange(30) + 0.5) * 60 / 30).astype(int)
    assert np.array_equal(resized, labels[:, rows][:, :, cols])  # no new label values
    assert load_masks(palette_dir, size=20).shape == (3, 20, 30)


def test_load_masks_bad_input(tmp_path):
    with pytest.raises(VideoError, match="no such folder"):
        load_masks(tmp_path / "nope")
    with pytest.raises(VideoError, match="no mask PNGs"):
        load_masks(tmp_path)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[2:4, 2:4] = (200, 0, 0)
    Image.fromarray(colour).save(tmp_path / "00000.png")
    with pytest.raises(VideoError, match=r"00000.png.*colour"):
        load_masks(tmp_path)


def test_davis_sequence_checks_agreement(tmp_path):
    root = tmp_path / "davis"
    write_frames(root / "JPEGImages" / "480p" / "seqa", 4)
    masks_dir = root / "Annotations" / "480p" / "seqa"
    masks_dir.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((H, W), 255 * (i % 2), np.uint8)).save(masks_dir / f"{i:05d}.png")
    video, masks = davis_sequence(root, "seqa")
    assert len(video) == len(masks) == 4 and masks.shape[1:] == video.size
    assert masks[:, 0, 0].tolist() == [0, 1, 0, 1]
    video, masks = davis_sequence(root, "seqa", size=32)
    assert video.size == masks.shape[1:] == (32, 48)
    with pytest.raises(VideoError, match=r"'nope'|nope.*sequences there: seqa"):
        davis_sequence(root, "nope")
    (masks_dir / "00003.png").unlink()
    with pytest.raises(VideoError, match="4 frames but 3 masks"):
        davis_sequence(root, "seqa")
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(masks_dir / "00003.png")
    with pytest.raises(VideoError, match="00003.png"):
        davis_sequence(root, "seqa")


# ------------------------------------------------------------------------------------------------
# Real data (../shared/data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tour_video(tour_video, backend):
    video = open_video(tour_video, backend=backend)
    assert (len(video), video.fps, video.size) == (936, 24.0, (480, 854))
    frames = video.get([164, 0, 935])
    assert frames.shape == (3, 480, 854, 3) and frames.dtype == np.uint8
    assert 10 < frames.mean() < 245 and frames.std() > 10  # real content, not a blank frame
    small = open_video(tour_video, size=224, backend=backend)
    assert small.size == (224, 398) and small.get([80]).shape == (1, 224, 398, 3)


def test_tour_video_backends_agree_and_match_davis_frames(tour_video, davis_root):
    segments = json.loads(tour_video.with_suffix(".json").read_text())["segments"]
    starts = {s["sequence"]: s["start"] for s in segments}
    pyav = open_video(tour_video, backend="pyav")
    frames = pyav.get([starts["cows"], starts["libby"]]).astype(int)
    if _has_decord():
        other = open_video(tour_video, backend="decord").get([starts["cows"], starts["libby"]])
        assert np.abs(frames - other).mean() < 1.0
    cows = open_frames(davis_root / "JPEGImages" / "480p" / "cows")[0].astype(int)
    assert np.abs(frames[0] - cows).mean() < 8  # the same image, re-encoded
    assert np.abs(frames[1] - cows).mean() > 20  # and a different sequence is not


def test_davis2016_sequence(davis_root):
    video, masks = davis_sequence(davis_root, "car-shadow")
    assert (len(video), video.size) == (40, (480, 854))
    assert masks.shape == (40, 480, 854) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 1}
    assert 0.005 < masks.mean() < 0.5  # a car, not the whole frame and not nothing
    small_video, small_masks = davis_sequence(davis_root, "car-shadow", size=240)
    assert small_video.size == small_masks.shape[1:] == (240, 428)
    assert small_video.get([0, 39]).shape == (2, 240, 428, 3)


def test_decord_does_not_read_ahead_into_memory(tour_video) -> None:
    """decord keeps decoding after a read unless stopped; the reader must not grow while idle."""
    import time

    pytest.importorskip("decord")

    def rss_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return 0.0

    with open_video(tour_video, backend="decord") as video:
        video.get([100, 101, 102])
        before = rss_mb()
        time.sleep(1.5)  # unchecked, decord fills ~100 MB/s of decoded 480p frames here
        grown = rss_mb() - before
    assert grown < 60, f"memory grew by {grown:.0f} MB while the reader was idle"


def test_frame_batches_reads_one_chunk_at_a_time(small_video):
    from labkit.video import frame_batches, open_video

    class Counting:  # a reader without batches(): get() is called once per chunk
        def __init__(self, video):
            self.video, self.calls = video, []

        def get(self, idx):
            self.calls.append(list(idx))
            return self.video.get(idx)

    with open_video(small_video) as video:
        idx = np.arange(0, len(video), 2)
        chunks = list(frame_batches(video, idx, 3))
        counting = Counting(video)
        plain = list(frame_batches(counting, idx, 3))
    assert [len(i) for i, _ in chunks] == [len(i) for i, _ in plain]
    assert all(f.shape[0] <= 3 for _, f in chunks)
    assert counting.calls == [list(idx[i : i + 3]) for i in range(0, len(idx), 3)]
    for (i1, f1), (i2, f2) in zip(chunks, plain):
        assert np.array_equal(i1, i2) and np.array_equal(f1, f2)
