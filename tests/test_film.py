"""Attention films (labkit.film): one MP4 per method, every frame, source size, bounded memory."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.film import (
    FILM_METHODS,
    FilmConfig,
    film_batches,
    head_mean_to_rgb,
    render_film,
    write_films,
)
from labkit.models import load_backbone, patch_size, prepare_images
from labkit.video import open_video
from labkit.viz import Mp4Writer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(depth=2, embed_dim=48, num_heads=3, seed=0)


@pytest.fixture(scope="module")
def model():
    return load_backbone("vit_small_patch16_224", **TINY)


def _decode(path: Path) -> np.ndarray:
    with open_video(path, backend="pyav") as video:
        return video.get(np.arange(len(video)))


def test_every_method_films_every_frame_at_the_source_size_and_rate(small_video, model, tmp_path):
    written = write_films(
        small_video, model, tmp_path, batch_size=3
    )  # 16 frames: 5 full batches + 1
    assert list(written) == list(FILM_METHODS)
    with open_video(small_video) as source:
        length, size, fps = len(source), source.size, source.fps
    for method, path in written.items():
        assert path == tmp_path / f"{method}.mp4" and path.is_file()
        with open_video(path, backend="pyav") as film:
            assert (len(film), film.size, film.fps) == (length, size, fps), method
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def _independent_head_mean(model, frames: np.ndarray) -> np.ndarray:
    """DINO's video frame from the explicit (h, N, N) attention matrix of the last block."""
    import matplotlib

    captured = {}
    block = model.blocks[-1]
    fused = [b.attn.fused_attn for b in model.blocks]
    for b in model.blocks:
        b.attn.fused_attn = False
    handle = block.attn.attn_drop.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("a", out)
    )
    try:
        with torch.no_grad():
            model(prepare_images(frames, model))
    finally:
        handle.remove()
        for b, f in zip(model.blocks, fused):
            b.attn.fused_attn = f
    p = patch_size(model)
    H, W = frames.shape[1:3]
    gh, gw = H // p, W // p
    cls = captured["a"][:, :, 0, 1:].reshape(len(frames), -1, gh, gw).numpy()  # (n, h, gh, gw)
    mean = sum(cls[:, i] for i in range(cls.shape[1])) / cls.shape[1]  # as video_generation.py
    out = []
    for m in mean:
        unit = (m - m.min()) / (m.max() - m.min())  # plt.imsave's default vmin, vmax
        rgb = matplotlib.colormaps["inferno"](unit, bytes=True)[..., :3]  # (gh, gw, 3)
        big = np.repeat(np.repeat(rgb, p, axis=0), p, axis=1)  # (gh*p, gw*p, 3)
        out.append(np.pad(big, ((0, H - gh * p), (0, W - gw * p), (0, 0)), mode="edge"))
    return np.stack(out)


def test_head_mean_film_is_dinos_head_mean_picture(small_video, model, tmp_path):
    cfg = FilmConfig(methods=("mean",), batch_size=4, captions=False)
    p = patch_size(model)
    batches = list(film_batches(small_video, model, cfg))
    assert [len(b.indices) for b in batches] == [4, 4, 4, 4]
    for batch in (batches[0], batches[-1]):
        rendered = render_film("mean", batch, p, cfg)
        expected = _independent_head_mean(model, batch.frames)
        assert rendered.dtype == np.uint8 and rendered.shape == batch.frames.shape
        assert (
            np.abs(rendered.astype(int) - expected.astype(int)).max() <= 1
        )  # rounding at a bin edge
    # and the encoded film shows that picture, within the codec's error
    path = write_films(small_video, model, tmp_path, cfg)["mean"]
    film = _decode(path)
    expected = _independent_head_mean(model, open_video(small_video).get(np.arange(16)))
    assert np.abs(film.astype(float) - expected).mean() < 4.0
    other = np.roll(expected, 1, axis=0)  # the neighbouring frame's picture is clearly further away
    assert (
        np.abs(film.astype(float) - other).mean() > 2 * np.abs(film.astype(float) - expected).mean()
    )


def test_head_mean_to_rgb_constant_map_and_shapes():
    attn = torch.ones(2, 3, 4, 5)
    out = head_mean_to_rgb(attn, (66, 80), 16)
    assert out.shape == (2, 66, 80, 3) and out.dtype == np.uint8
    assert (out == out[0, 0, 0]).all()  # constant map: the colormap's low end everywhere
    with pytest.raises(ValueError, match="attn must be"):
        head_mean_to_rgb(torch.ones(4, 5), (64, 80), 16)


def test_films_are_deterministic(small_video, model, tmp_path):
    a = write_films(small_video, model, tmp_path / "a", batch_size=8)
    b = write_films(small_video, model, tmp_path / "b", batch_size=8)
    for method in FILM_METHODS:
        assert np.array_equal(_decode(a[method]), _decode(b[method])), method


def test_batch_size_does_not_change_the_pictures(small_video, model):
    """Batches are independent except for DoRA's prototypes and k-means' centroids, carried over."""
    p = patch_size(model)
    pictures = {}
    for batch_size in (3, 16):
        cfg = FilmConfig(batch_size=batch_size, captions=False)
        pictures[batch_size] = {
            m: np.concatenate(
                [render_film(m, b, p, cfg) for b in film_batches(small_video, model, cfg)]
            )
            for m in FILM_METHODS
        }
    for m in FILM_METHODS:
        assert np.abs(pictures[3][m].astype(int) - pictures[16][m].astype(int)).max() <= 1, m


def test_captions_name_method_weights_and_frame(small_video, model):
    cfg = FilmConfig(methods=("heads",), batch_size=4)
    batch = next(iter(film_batches(small_video, model, cfg)))
    plain = render_film(
        "heads", batch, patch_size(model), FilmConfig(methods=("heads",), captions=False)
    )
    labelled = render_film("heads", batch, patch_size(model), cfg, label="tiny", total=16)
    band = np.any(labelled != plain, axis=(0, 2, 3)).nonzero()[0]  # rows the caption changed
    assert 0 < band.max() < 20  # a band at the top only
    assert np.array_equal(labelled[:, 20:], plain[:, 20:])
    assert not np.array_equal(labelled[0, :15], labelled[1, :15])  # the frame number differs


class _CountingVideo:
    """A long video made of a short one's frames, counting the frames alive at any moment."""

    def __init__(self, source, length: int):
        self.source, self.length, self.fps = source, length, source.fps
        self.alive = 0
        self.peak = 0

    def __len__(self) -> int:
        return self.length

    def get(self, indices) -> np.ndarray:
        idx = np.asarray(indices) % len(self.source)
        owner = _Owner(self.source.get(idx))  # every view handed out keeps ``owner`` alive
        self.alive += len(idx)
        self.peak = max(self.peak, self.alive)
        weakref.finalize(owner, self._freed, len(idx))
        return np.asarray(owner)  # a plain ndarray whose base is ``owner``

    def _freed(self, n: int) -> None:
        self.alive -= n


class _Owner(np.ndarray):
    def __new__(cls, a):
        return np.asarray(a).view(cls)


def test_memory_is_bounded_by_the_batch_not_the_video(small_video, model, tmp_path):
    with open_video(small_video) as source:
        video = _CountingVideo(source, length=60)
        written = write_films(video, model, tmp_path, batch_size=4)
    assert video.peak <= 4  # never more than one batch of frames alive, k-means sample included
    assert video.alive == 0
    with open_video(written["kmeans"], backend="pyav") as film:
        assert len(film) == 60


def test_numpy_memory_does_not_grow_with_the_video(small_video, model, tmp_path):
    """Peak traced (numpy, Python) memory of a 60-frame film is that of a 20-frame one."""
    import tracemalloc

    peaks = {}
    with open_video(small_video) as source:
        for length in (20, 60):
            video = _CountingVideo(source, length=length)
            tracemalloc.start()
            write_films(video, model, tmp_path / str(length), batch_size=4, sample_frames=4)
            peaks[length] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    frame = 96 * 160 * 3  # bytes of one frame; holding the 40 extra frames would add 40 of them
    assert peaks[60] < peaks[20] + 8 * frame, peaks


def test_max_side_and_num_frames(small_video, model, tmp_path):
    written = write_films(
        small_video, model, tmp_path, methods=("mean", "dora"), max_side=80, num_frames=5
    )
    for path in written.values():
        with open_video(path, backend="pyav") as film:
            assert (len(film), film.size) == (5, (48, 80))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(methods=("heads", "nope")), "methods must be distinct names"),
        (dict(methods=()), "methods must be distinct names"),
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(max_side=4), "max_side must be None or an int >= 16"),
        (dict(heads=(0, 1, 7)), "heads .* out of range"),
        (dict(objects=5, methods=("dora",)), "5 DoRA objects"),
        (dict(bogus=1), "unknown option"),
    ],
)
def test_bad_options_fail_before_writing(small_video, model, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        write_films(small_video, model, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failed_film_leaves_no_file(small_video, model, tmp_path, monkeypatch):
    import labkit.film

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(labkit.film, "_discover", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_films(small_video, model, tmp_path, methods=("mean", "discovery"))
    assert list(tmp_path.iterdir()) == []


def test_mp4_writer_streams_odd_sizes_and_aborts_cleanly(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (5, 33, 45, 3), dtype=np.uint8)
    with Mp4Writer(tmp_path / "odd.mp4", fps=10) as writer:
        for f in frames:
            writer.write(f)
    with open_video(tmp_path / "odd.mp4", backend="pyav") as video:
        assert (len(video), video.size, video.fps) == (
            5,
            (34, 46),
            10.0,
        )  # one edge row/column added
    with pytest.raises(KeyError):
        with Mp4Writer(tmp_path / "gone.mp4", fps=10) as writer:
            writer.write(frames[:2])
            raise KeyError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]
    with pytest.raises(ValueError, match="frames of"):
        with Mp4Writer(tmp_path / "sizes.mp4", fps=10) as writer:
            writer.write(frames[0])
            writer.write(frames[0, :32])


def test_cli_writes_films_and_reports_bad_input_in_one_line(small_video, tmp_path, capsys):
    from labkit.cli import main

    tiny = "{depth: 2, embed_dim: 48, num_heads: 3}"
    out = tmp_path / "films"
    code = main(
        [
            "attention",
            str(small_video),
            "--film",
            "--film-methods",
            "mean",
            "kmeans",
            "--batch-size",
            "5",
            "--out",
            str(out),
            "--model-kwargs",
            tiny,
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["kmeans.mp4", "mean.mp4"]
    captured = capsys.readouterr()
    assert "mean.mp4" in captured.out and "frame/s" in captured.err  # tqdm's rate, on stderr
    for argv, message in [
        (["--film-methods", "mean", "sparkles"], "methods must be distinct names"),
        (["--batch-size", "0"], "batch_size must be an int >= 1"),
        (["--max-side", "3"], "max_side must be None or an int >= 16"),
        (["--heads", "0", "1", "9"], "out of range"),
    ]:
        code = main(
            [
                "attention",
                str(small_video),
                "--film",
                "--out",
                str(tmp_path / "bad"),
                "--model-kwargs",
                tiny,
                *argv,
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("labkit: error:") and message in err and "\n" not in err
    code = main(
        ["attention", str(tmp_path / "missing.mp4"), "--film", "--out", str(tmp_path / "bad")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing.mp4" in err and "\n" not in err
    assert not (tmp_path / "bad").exists()


def test_cli_random_weights_are_seeded(small_video, tmp_path, capsys):
    # the same --seed is the same network (and says so); another seed is another network
    from labkit.cli import main

    tiny = "{depth: 1, embed_dim: 48, num_heads: 3}"
    runs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        out = tmp_path / name
        assert (
            main(
                [
                    "attention",
                    str(small_video),
                    "--film",
                    "--film-methods",
                    "mean",
                    "--film-frames",
                    "3",
                    "--out",
                    str(out),
                    "--model-kwargs",
                    tiny,
                    "--seed",
                    seed,
                ]
            )
            == 0
        )
        assert (
            f"weights: vit_small_patch16_224, random init, seed {seed}" in capsys.readouterr().out
        )
        with open_video(out / "mean.mp4") as video:
            runs[name] = video.get(np.arange(len(video)))
    assert np.array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])
