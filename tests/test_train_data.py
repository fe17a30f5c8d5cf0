"""The clip dataset: indexing, shared vs per-frame augmentations, determinism, workers, sampling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from labkit.data import default_video
from labkit.train.data import ClipDataset, StepBatchSampler, preview_clip
from labkit.video import open_video

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def still_video(tmp_path_factory):
    """A frame folder whose 8 frames are the same textured image: any difference is augmentation."""
    folder = tmp_path_factory.mktemp("still")
    rng = np.random.default_rng(0)
    image = (rng.random((72, 96, 3)) * 255).astype(np.uint8)
    image[20:50, 30:70] = (250, 40, 40)  # an object, so crops differ visibly
    for i in range(8):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory):
    """A frame folder whose frame i is filled with grey level 10 * i (frames identify
    themselves).
    """
    folder = tmp_path_factory.mktemp("counter")
    for i in range(20):
        Image.fromarray(np.full((40, 48, 3), 10 * i, np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def small(videos, **kw):
    args = dict(num_frames=3, frame_step=2, img_size=32, local_size=16, num_local=2)
    return ClipDataset(videos, **{**args, **kw})


def test_clip_indexing(counter_video):
    ds = small(counter_video, num_frames=4, frame_step=3)
    assert ds.lengths == [20] and ds.span == 10 and len(ds) == 11
    assert ds.num_disjoint_clips() == 1
    video, idx = ds.locate(0)
    assert video == 0 and idx.tolist() == [0, 3, 6, 9]
    video, idx = ds.locate(10)
    assert video == 0 and idx.tolist() == [10, 13, 16, 19]
    with pytest.raises(IndexError):
        ds.locate(len(ds))
    _, indices, frames = ds.read_clip(4)
    np.testing.assert_array_equal(frames[:, 0, 0, 0], 10 * indices)  # the right frames were read


def test_two_videos_clip_ranges(counter_video):
    ds = small([counter_video, counter_video], num_frames=2, frame_step=5)  # 15 starts per video
    assert len(ds) == 30
    assert ds.locate(14) == (0, pytest.approx(np.array([14, 19])))
    video, idx = ds.locate(15)
    assert video == 1 and idx.tolist() == [0, 5]


def test_too_short_video_is_a_clear_error(still_video):
    with pytest.raises(ValueError, match="need 15 frames"):
        small(still_video, num_frames=8, frame_step=2)


def test_item_shapes_and_normalisation():
    ds = small(default_video(), decode_size=48)
    item = ds[(7, 3)]
    assert item["global"].shape == (1, 3, 3, 32, 32) and item["global"].dtype == torch.float32
    assert item["local"].shape == (2, 3, 3, 16, 16)
    assert item["indices"].tolist() == ds.locate(7)[1].tolist() and item["video"] == 0
    assert (
        -3 < float(item["global"].min()) < 0 < float(item["global"].max()) < 3
    )  # ImageNet-normalised
    dino = small(default_video(), decode_size=48, mode="dino", num_local=0)[(7, 3)]
    assert dino["global"].shape == (2, 3, 3, 32, 32) and dino["local"].shape == (0, 3, 3, 16, 16)


def test_dora_crop_is_shared_by_the_clip_and_dino_crops_are_not(still_video):
    dora = small(still_video, photometric=False)
    for seed in range(4):
        g = dora[(0, seed)]["global"][0]  # (T, 3, S, S)
        assert torch.equal(g[0], g[1]) and torch.equal(g[0], g[2])
    dino = small(still_video, photometric=False, mode="dino")
    g = dino[(0, 0)]["global"]  # (2, T, 3, S, S)
    assert not torch.equal(g[0, 0], g[0, 1])  # frames cropped independently
    assert not torch.equal(g[0, 0], g[1, 0])  # and the two views differ


def test_colour_augmentation_is_drawn_per_frame(still_video):
    ds = small(still_video, num_frames=4, frame_step=1)
    differs = 0
    for seed in range(3):
        g = ds[(0, seed)]["global"][0]
        differs += sum(not torch.allclose(g[0], g[t]) for t in range(1, 4))
    assert differs >= 6  # the same crop, but jitter/grayscale/blur drawn for each frame


def test_items_are_deterministic_in_the_seed_and_leave_the_global_rng_alone():
    ds = small(default_video(), decode_size=48)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = ds[(5, 11)], ds[(5, 11)], ds[(5, 12)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
    assert not torch.equal(a["global"], c["global"])
    assert torch.get_num_threads() >= 1


def test_pickles_without_decoders_and_reopens():
    ds = small(default_video(), decode_size=48, cache_mb=0)
    first = ds[(3, 1)]  # opens a decoder in this process
    assert ds._readers
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._readers == {}
    assert torch.equal(copy[(3, 1)]["global"], first["global"])
    cached = small(default_video(), decode_size=48)
    assert torch.equal(cached[(3, 1)]["global"], first["global"])
    assert cached._frames and not cached._readers  # decoded once, the decoder closed
    copy = pickle.loads(pickle.dumps(cached))
    assert copy._frames == {}  # pickles drop the decoded frames too
    assert torch.equal(copy[(3, 1)]["global"], first["global"])
    video = open_video(default_video(), size=48)
    video.get([0])
    again = pickle.loads(pickle.dumps(video))  # labkit Videos drop their decoder when pickled
    np.testing.assert_array_equal(again.get([5]), video.get([5]))


def test_workers_give_the_same_batches_as_the_main_process():
    ds = small(default_video(), decode_size=48, num_local=1)
    batches = {}
    for workers in (0, 2):
        sampler = StepBatchSampler(len(ds), 2, seed=0, start=3, stop=5)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == 2
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
        assert a["global"].shape == (2, 1, 3, 3, 32, 32)


def test_step_sampler_is_a_function_of_seed_and_step():
    full = list(StepBatchSampler(100, 4, seed=7, start=0, stop=6))
    resumed = list(StepBatchSampler(100, 4, seed=7, start=3, stop=6))
    assert resumed == full[3:]
    assert list(StepBatchSampler(100, 4, seed=8, start=0, stop=1)) != full[:1]
    # ranks take disjoint slices of one global batch
    ranks = [
        StepBatchSampler(100, 4, seed=7, start=0, stop=1, rank=r, world_size=2).batch(0)
        for r in range(2)
    ]
    clips = [c for r in ranks for c, _ in r]
    assert len(set(clips)) == 8
    assert ranks[0] != ranks[1]
    with pytest.raises(ValueError):
        StepBatchSampler(100, 4, seed=0, start=0, stop=1, rank=2, world_size=2)


def test_preview_clip_is_unaugmented():
    indices, frames = preview_clip(default_video(), num_frames=3, frame_step=4, size=64, start=10)
    assert indices.tolist() == [10, 14, 18]
    video = open_video(default_video(), size=64)
    np.testing.assert_array_equal(frames, video.get(indices))


def test_decode_size_shrinks_large_videos_only():
    ds = small(default_video(), decode_size=96)  # the synthetic video is 360 x 640
    assert ds.sizes == [96]
    _, _, frames = ds.read_clip(0)
    assert frames.shape[1:] == (96, 170, 3)
    whole = small(default_video(), decode_size=1000)  # never upscaled
    assert whole.sizes == [None] and whole.read_clip(0)[2].shape[1:] == (360, 640, 3)


def test_cached_clips_are_the_decoders_frames():
    """The cache decodes the video front to back once; every clip read from it equals the same
    clip read through the decoder (seeking per clip), at the demo's decode size and at full size."""
    for size in (144, None):
        plain = small(default_video(), num_frames=4, frame_step=4, decode_size=size, cache_mb=0)
        cached = small(default_video(), num_frames=4, frame_step=4, decode_size=size)
        assert plain.cached == [False] and cached.cached == [True]
        clips = range(0, len(plain), 1 if size else 13)
        for index in clips:
            video, indices, frames = plain.read_clip(index)
            video2, indices2, frames2 = cached.read_clip(index)
            assert video == video2 and np.array_equal(indices, indices2)
            np.testing.assert_array_equal(frames2, frames)
        assert cached._frames[0].shape == (120, *frames.shape[1:])
        item, reference = cached[(5, 9)], plain[(5, 9)]
        assert torch.equal(item["global"], reference["global"])
        assert torch.equal(item["local"], reference["local"])


def test_cache_budget_over_several_videos(counter_video):
    # the synthetic video at 48 px: 120 x 48 x 86 x 3 bytes, about 1.42 MiB; the counter 0.11 MiB
    videos = [default_video(), counter_video]
    sizes = dict(decode_size=48, num_frames=2, frame_step=5)
    assert small(videos, **sizes).cached == [True, True]
    assert small(videos, cache_mb=1.0, **sizes).cached == [False, True]  # first too big alone
    assert small(videos, cache_mb=1.45, **sizes).cached == [True, False]  # what is left is short
    assert small(videos, cache_mb=0, **sizes).cached == [False, False]
    plain = small(videos, cache_mb=0, **sizes)
    partly = small(videos, cache_mb=1.45, **sizes)
    for index in (0, 50, len(plain) - 1):  # clips of both videos
        np.testing.assert_array_equal(partly.read_clip(index)[2], plain.read_clip(index)[2])
    assert set(partly._frames) == {0}  # the second video read clip by clip
    _, indices, frames = partly.read_clip(len(plain) - 1)
    np.testing.assert_array_equal(frames[:, 0, 0, 0], 10 * indices)


def _worker_shares_the_cache(_):
    ds = torch.utils.data.get_worker_info().dataset
    assert ds._frames and not ds._readers  # inherited from the parent, not decoded again


def test_workers_share_the_parents_cache():
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork")
    ds = small(default_video(), decode_size=48, num_local=1)
    ds.cache_frames()
    assert ds._frames[0].shape[0] == 120
    reference = small(default_video(), decode_size=48, num_local=1, cache_mb=0)
    sampler = StepBatchSampler(len(ds), 2, seed=0, start=3, stop=5)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=2,
        multiprocessing_context="fork",
        worker_init_fn=_worker_shares_the_cache,
    )
    for batch, clips in zip(loader, sampler):
        expected = [reference[c] for c in clips]
        assert torch.equal(batch["global"], torch.stack([e["global"] for e in expected]))
        assert torch.equal(batch["local"], torch.stack([e["local"] for e in expected]))
