"""Whole-video and per-frame segment maps: consistent ids over time, streaming equals direct.

Synthetic features with persistent clusters: ``n`` well separated centres in D dimensions, each
frame's patches drawn around them with blobs that move from frame to frame, so the true cluster
of every patch is known. A whole-video clustering must give each true cluster one label in every
frame, whether fitted on all frames or on a few and assigned batch by batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.attention import extract_video
from labkit.clustering import assign, fit_video_kmeans, kmeans_segments
from labkit.models import load_backbone
from labkit.segments import (
    frame_segments,
    frame_segments_from_features,
    sample_frame_indices,
    video_segments,
)


def persistent_clusters(T=12, h=6, w=8, n=4, D=16, noise=0.05, seed=0):
    """(features (T, h, w, D), truth (T, h, w) int64 in [0, n)), blobs moving one column a frame."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n, D, generator=g)
    truth = torch.zeros(T, h, w, dtype=torch.int64)
    for t in range(T):
        for c in range(1, n):
            top, left = (2 * c) % h, (3 * c + t) % w
            for i in range(top, min(top + 3, h)):
                for j in range(left, left + 3):
                    truth[t, i, j % w] = c
    feats = centres[truth] + noise * torch.randn(T, h, w, D, generator=g)
    return feats, truth


def one_label_per_cluster(labels: torch.Tensor, truth: torch.Tensor) -> bool:
    """Every true cluster has a single label over all frames, and different clusters differ."""
    mapping = {}
    for c in truth.unique().tolist():
        found = labels[truth == c].unique()
        if found.numel() != 1:
            return False
        mapping[c] = int(found)
    return len(set(mapping.values())) == len(mapping)


# ----------------------------------------------------------------------------------------------
# clustering.fit_video_kmeans / clustering.assign
# ----------------------------------------------------------------------------------------------


def test_assign_equals_brute_force_nearest_centroid():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, 9, 12, generator=g)
    c = torch.randn(6, 12, generator=g)
    got = assign(x, c, chunk_size=17)
    flat = x.reshape(-1, 12)
    want = torch.tensor([min(range(6), key=lambda j: float(((p - c[j]) ** 2).sum())) for p in flat])
    assert got.shape == (5, 7, 9) and got.dtype == torch.int64
    assert torch.equal(got.reshape(-1), want)
    assert torch.equal(assign(x, c), got)
    xn = torch.nn.functional.normalize(x, dim=-1)
    assert torch.equal(assign(x, c, normalize=True), assign(xn, c))
    with pytest.raises(ValueError, match="same D"):
        assign(x, c[:, :5])


def test_whole_video_kmeans_gives_one_label_per_cluster_in_every_frame():
    feats, truth = persistent_clusters()
    centroids = fit_video_kmeans(feats, 4, seed=0)
    labels = assign(feats, centroids)
    assert centroids.shape == (4, 16)
    assert one_label_per_cluster(labels, truth)
    # segment 0 is the largest (the background here)
    assert torch.equal(labels[truth == 0].unique(), torch.tensor([0]))


def test_fit_on_a_sample_and_stream_the_rest():
    feats, truth = persistent_clusters(T=20, seed=3)
    sample = sample_frame_indices(20, 3)  # frames 0, 10, 19
    assert sample.tolist() == [0, 10, 19]
    centroids = fit_video_kmeans([feats[i : i + 1] for i in sample], 4, seed=0)  # an iterable
    streamed = torch.cat([assign(feats[s : s + 6], centroids) for s in range(0, 20, 6)])
    assert one_label_per_cluster(streamed, truth)
    # streaming assignment equals a direct nearest-centroid assignment of all frames
    direct = torch.cdist(feats.reshape(-1, 16), centroids).argmin(-1).reshape(20, 6, 8)
    assert torch.equal(streamed, direct)
    # the sample's labels agree with the clustering fitted on all frames, up to renaming
    full = assign(feats, fit_video_kmeans(feats, 4, seed=0))
    assert one_label_per_cluster(full, streamed)


def test_fit_on_all_frames_equals_clip_mode_kmeans_segments():
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(3, 5, 6, 8, generator=g)  # no structure: any difference would show
    centroids = fit_video_kmeans(feats, 5, seed=2)
    seg = kmeans_segments(feats, 5, mode="clip", seed=2)
    torch.testing.assert_close(centroids, seg.centroids[0])
    assert torch.equal(assign(feats, centroids), seg.labels)
    # list of batches == one tensor
    torch.testing.assert_close(fit_video_kmeans([feats[:1], feats[1:]], 5, seed=2), centroids)


def test_fit_video_kmeans_options_and_errors():
    feats, truth = persistent_clusters(seed=5)
    sub = fit_video_kmeans(feats, 4, max_points=100, seed=1)
    assert one_label_per_cluster(assign(feats, sub), truth)
    norm = fit_video_kmeans(feats, 4, normalize=True)
    torch.testing.assert_close(norm.norm(dim=1), torch.ones(4), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="same D"):
        fit_video_kmeans([feats[:1], feats[1:, ..., :8]], 4)
    with pytest.raises(ValueError, match="no features"):
        fit_video_kmeans([], 4)
    with pytest.raises(ValueError, match="k must be"):
        fit_video_kmeans(feats[:1, :1, :2], 4)


def test_sample_frame_indices():
    assert sample_frame_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    s = sample_frame_indices(1000, 64)
    assert len(s) == 64 and s[0] == 0 and s[-1] == 999 and (np.diff(s) > 0).all()
    with pytest.raises(ValueError):
        sample_frame_indices(0, 3)


# ----------------------------------------------------------------------------------------------
# Per-frame segments, streamed
# ----------------------------------------------------------------------------------------------


def test_frame_segments_streamed_equal_one_batch_and_persist():
    feats, truth = persistent_clusters(T=10, seed=6)
    whole = kmeans_segments(feats, 4, mode="frame").labels
    streamed = frame_segments_from_features((feats[s : s + 3] for s in range(0, 10, 3)), 4)
    assert torch.equal(streamed, whole)
    assert one_label_per_cluster(streamed, truth)


def growing_cluster(T=8, h=6, w=8, D=16, seed=0):
    """Cluster 1 grows from one column to six of eight, the background shrinks to four patches:
    the largest segment changes half-way, so each batch's own size-ordered ids differ."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(4, D, generator=g)
    truth = torch.zeros(T, h, w, dtype=torch.int64)
    for t in range(T):
        truth[t, :, : 1 + (5 * t) // (T - 1)] = 1
        truth[t, 0:2, 6:8] = 2
        truth[t, 4:6, 6:8] = 3
    return centres[truth] + 0.05 * torch.randn(T, h, w, D, generator=g), truth


def test_frame_segments_carry_ids_across_batches_when_sizes_change():
    feats, truth = growing_cluster()
    out = frame_segments_from_features([feats[:3], feats[3:6], feats[6:]], 4)
    assert one_label_per_cluster(out, truth)
    assert torch.equal(out, kmeans_segments(feats, 4, mode="frame").labels)
    # batches segmented independently do not keep their ids: the carry-over is what does
    independent = torch.cat([kmeans_segments(feats[s : s + 3], 4).labels for s in (0, 3, 6)])
    assert not one_label_per_cluster(independent, truth)


# ----------------------------------------------------------------------------------------------
# With a model and a video: streaming, memory, equality with the non-streaming computation
# ----------------------------------------------------------------------------------------------


class FakeVideo:
    """Coloured squares moving over a gradient; records how many frames each read asks for."""

    def __init__(self, num_frames: int = 11, size: tuple[int, int] = (32, 48)) -> None:
        self.num_frames, self.size, self.reads = num_frames, size, []

    def __len__(self) -> int:
        return self.num_frames

    def get(self, indices) -> np.ndarray:
        indices = np.asarray(indices)
        self.reads.append(len(indices))
        H, W = self.size
        out = np.zeros((len(indices), H, W, 3), np.uint8)
        out[..., 2] = np.linspace(0, 120, W, dtype=np.uint8)[None, None, :]
        for n, t in enumerate(indices):
            x = 2 * int(t)
            out[n, 4:20, x : x + 16] = (230, 40, 40)
            out[n, 16:28, 30 - x // 2 : 42 - x // 2] = (40, 220, 60)
        return out


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return load_backbone(
        "vit_small_patch16_224", depth=2, embed_dim=48, num_heads=3, patch_size=8, img_size=32
    )


def test_video_segments_stream_equals_fit_then_assign(tiny_model):
    video = FakeVideo(11)
    out = video_segments(tiny_model, video, k=3, sample_frames=4, batch_size=3, progress=False)
    assert out.labels.shape == (11, 4, 6) and out.labels.dtype == torch.int64
    assert out.indices.tolist() == list(range(11))
    assert out.sample_indices.tolist() == [0, 3, 7, 10]
    assert max(video.reads) <= 3  # never more than a batch of frames at once
    # reference: all features at once, fitted on the sampled frames' patches
    tokens = extract_video(
        tiny_model, FakeVideo(11), kinds=("tokens",), attention=False, progress=False
    ).features["tokens"]  # (11, 4, 6, 48)
    centroids = fit_video_kmeans(tokens[out.sample_indices], 3)
    torch.testing.assert_close(out.centroids, centroids)
    assert torch.equal(out.labels, assign(tokens, centroids))
    # a sample covering every frame: one pass, and the clip-mode k-means of the whole video
    video = FakeVideo(5)
    all_frames = video_segments(
        tiny_model, video, k=3, sample_frames=64, batch_size=2, progress=False
    )
    assert sum(video.reads) == 5
    assert torch.equal(all_frames.labels, kmeans_segments(tokens[:5], 3, mode="clip").labels)


def test_frame_segments_with_a_model(tiny_model):
    video = FakeVideo(7)
    out = frame_segments(tiny_model, video, k=4, batch_size=3, progress=False)
    assert out.labels.shape == (7, 4, 6) and out.centroids is None
    assert max(video.reads) <= 3
    tokens = extract_video(
        tiny_model, FakeVideo(7), kinds=("tokens",), attention=False, progress=False
    ).features["tokens"]
    batches = [tokens[s : s + 3] for s in range(0, 7, 3)]
    assert torch.equal(out.labels, frame_segments_from_features(batches, 4))
    assert int(out.labels.max()) < 4
    with pytest.raises(ValueError, match="out of range"):
        frame_segments(tiny_model, video, indices=[0, 9], progress=False)


# ----------------------------------------------------------------------------------------------
# Both pictures: segment_maps, panels, animation, figure
# ----------------------------------------------------------------------------------------------


def test_segment_maps_compute_both_pictures(tiny_model):
    from labkit.segments import segment_maps

    video = FakeVideo(11)
    maps = segment_maps(
        tiny_model,
        video,
        frames=5,
        k_video=3,
        k_frame=4,
        sample_frames=3,
        batch_size=2,
        progress=False,
    )
    assert maps.indices.tolist() == [0, 2, 5, 8, 10] and maps.patch_size == 8
    assert (maps.k_video, maps.k_frame) == (3, 4)
    assert maps.whole.labels.shape == maps.per_frame.labels.shape == (5, 4, 6)
    assert int(maps.whole.labels.max()) < 3 and int(maps.per_frame.labels.max()) < 4
    assert maps.whole.sample_indices.tolist() == [0, 5, 10]
    # the same as the two streamed computations called directly
    common = dict(indices=maps.indices, normalize=True, batch_size=2, progress=False)
    direct = video_segments(tiny_model, FakeVideo(11), k=3, sample_frames=3, **common)
    assert torch.equal(maps.whole.labels, direct.labels)
    per_frame = frame_segments(tiny_model, video, k=4, **common)
    assert torch.equal(maps.per_frame.labels, per_frame.labels)
    every = segment_maps(tiny_model, FakeVideo(4), frames=None, progress=False)
    assert every.indices.tolist() == [0, 1, 2, 3]
    explicit = segment_maps(tiny_model, FakeVideo(9), frames=[1, 4, 8], progress=False)
    assert explicit.indices.tolist() == [1, 4, 8]


def test_segment_panels_animation_and_figure(tiny_model, tmp_path):
    from labkit.segments import segment_maps
    from labkit.viz import palette, write_animation
    from labkit.viz.segments import plot_segment_maps, segment_animation, segment_panels

    video = FakeVideo(9, size=(36, 50))  # not multiples of the patch: cropped to the 4 x 6 grid
    maps = segment_maps(tiny_model, video, frames=None, k_video=3, k_frame=4, progress=False)
    panels = segment_panels(maps, video, [0, 8], alpha=1.0)
    assert set(panels) == {"frame", "whole", "per_frame"}
    for image in panels.values():
        assert image.shape == (2, 32, 48, 3) and image.dtype == np.uint8
    # alpha 1: every pixel is its segment's colour, the same colour for the same id in any frame
    colours = palette(3)
    labels = maps.whole.labels[[0, 8]].numpy()
    expected = colours[np.repeat(np.repeat(labels, 8, axis=1), 8, axis=2)]
    assert np.array_equal(panels["whole"], expected)
    assert np.array_equal(panels["frame"], video.get([0, 8])[:, :32, :48])

    frames = segment_animation(maps, video, gap=2, batch_size=4)
    assert frames.shape == (9, 32, 3 * 48 + 4, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, segment_animation(maps, video, gap=2, batch_size=9))
    assert np.all(frames[:, :, 48:50] == 255)  # the white gap
    assert write_animation(frames, tmp_path / "segments.gif").stat().st_size > 0

    fig = plot_segment_maps(maps, video, columns=4, title="tiny")
    assert len(fig.axes) == 3 * 4
    rows = [ax.get_ylabel() for ax in fig.axes[::4]]
    assert rows == ["frame", "whole-video k-means (k=3)", "per-frame k-means (k=4)"]
    assert [ax.get_title() for ax in fig.axes[:4]] == ["frame 0", "frame 3", "frame 5", "frame 8"]
    with pytest.raises(ValueError, match="positions"):
        segment_panels(maps, video, [9])
    with pytest.raises(ValueError, match="columns"):
        plot_segment_maps(maps, video, columns=0)
