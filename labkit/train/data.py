"""Training data: random clips of one or many long videos, with DoRA's and DINO's augmentations.

Notation::

    B  clips in a batch;  T  frames per clip;  G  global views;  n  local crops per frame
    S  global crop side;  s  local crop side;  H, W  decoded frame size

A clip is ``T`` frames ``start, start + step, ...`` of one video; any start that keeps the clip
inside its video is a clip (index ``i`` of :class:`ClipDataset` is the ``i``-th such start over
all videos). Views, built with ``torchvision.transforms.v2``:

* ``mode="dora"``: one global view per frame (G = 1). The random resized crop and the flip are
  drawn once per clip and applied to the whole clip (v2 treats a ``tv_tensors.Video`` (T, C, H, W)
  as one sample), so an object stays where the tracker expects it; colour jitter, grayscale and
  blur are drawn per frame. Local crops are drawn per frame (as the official DoRA code does).
  With ``pre_crop``, DoRA's "aggressive cropping before DINO crops" comes first: one random
  resized crop of the clip (area 0.2 to 1, side ``round(S * 300 / 224)``, 300 px at S = 224),
  and the global view and the local crops are then cut from it, as the official
  ``DataAugmentationDINO`` of DoRA does (docs/science.md).
* ``mode="dino"``: every frame is an independent image with DINO's multi-crop: two global views
  with their own crops (view 0 always blurred, view 1 rarely blurred and sometimes solarised) and
  n local crops.

Randomness: :meth:`ClipDataset.__getitem__` takes ``(clip index, seed)`` and draws every random
choice of that sample from a private torch generator state seeded with ``seed``
(``torch.random.fork_rng``), so a sample does not depend on the worker that makes it, on the order
of requests, or on the global RNG. :class:`StepBatchSampler` derives step ``s``'s clips and seeds
from ``(seed, s)``: the data of a run is a function of its seed and step, which is what makes
resuming exact and lets processes of a distributed job take disjoint slices of one global batch.

Workers: the dataset holds paths, not open decoders. Each process opens its own readers on first
use (after a fork they are reopened; pickling drops them), so ``num_workers > 0`` is safe.

Frame cache: a video whose frames at the decode size fit ``cache_mb`` (all cached videos
together) is decoded once, front to back, into one uint8 array (N, H, W, 3), and its clips are
slices of it: the same frames as reading each clip through the decoder (tests compare them), at
a fraction of the cost (decord seeks to a keyframe and decodes forward for every clip). The
array is built on the first read of the video in each process, or for all videos by
:meth:`ClipDataset.cache_frames`; built before DataLoader workers fork, it is shared by them
copy-on-write (its pages are only read). Pickling drops it (a spawned worker decodes its own).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from labkit.models import IMAGENET_MEAN, IMAGENET_STD
from labkit.train.augment import CropFlip, Photometric
from labkit.video import open_video

__all__ = ["ClipDataset", "StepBatchSampler", "step_seed", "preview_clip"]


def step_seed(*keys: int) -> int:
    """A 63-bit seed derived from integers (e.g. run seed, step, rank) by ``numpy.SeedSequence``."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


class ClipDataset(Dataset):
    """Clips of ``num_frames`` frames (every ``frame_step``-th) from one or many videos, augmented.

    Args:
        videos: a path (mp4, any FFmpeg video, or a folder of frames) or a sequence of them.
        num_frames: T, frames per clip.
        frame_step: distance between consecutive frames of a clip in the video.
        mode: ``"dora"`` (one crop shared by the clip) or ``"dino"`` (frames as independent
            images, two global views each); see the module docstring.
        img_size: S, side of the global views.
        local_size: s, side of the local crops.
        num_local: n, local crops per frame (0 for none).
        global_scale, local_scale: area ranges of the random resized crops.
        decode_size: shorter side the frames are decoded at (``open_video(size=...)``), for
            videos larger than that; None decodes at the file's size. Decoding a 4K video at a
            small size keeps the workers fast and their memory small.
        backend: ``labkit.video.open_video`` backend.
        mean, std: normalisation (ImageNet's, as DINO and DoRA train with).
        photometric: apply colour jitter, grayscale, blur, solarisation (off: crops and flips only,
            for inspecting the geometry).
        pre_crop: ``mode="dora"`` only: DoRA's pre-crop of the clip before the global and local
            crops (see the module docstring).
        cache_mb: memory for decoded frames, in MiB (2**20 bytes), all videos together; a video
            is cached whole where it fits what earlier videos left, else read clip by clip
            through its decoder. 0 turns the cache off. See the module docstring.

    Items (:meth:`__getitem__`) are dicts:
        ``"global"``: float32 (G, T, 3, S, S) normalised; ``"local"``: float32 (n, T, 3, s, s);
        ``"indices"``: int64 (T,) frame numbers; ``"video"``: int, which video.
    """

    def __init__(
        self,
        videos: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        num_frames: int,
        frame_step: int = 1,
        mode: Literal["dora", "dino"] = "dora",
        img_size: int = 224,
        local_size: int = 96,
        num_local: int = 0,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        decode_size: int | None = None,
        backend: Literal["auto", "decord", "pyav"] = "auto",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        photometric: bool = True,
        pre_crop: bool = False,
        cache_mb: float = 512.0,
    ) -> None:
        if isinstance(videos, (str, os.PathLike)):
            videos = [videos]
        self.paths = [Path(v) for v in videos]
        if not self.paths:
            raise ValueError("ClipDataset: no videos given")
        if mode not in ("dora", "dino"):
            raise ValueError(f"ClipDataset: mode must be 'dora' or 'dino', got {mode!r}")
        if pre_crop and mode != "dora":
            raise ValueError("ClipDataset: pre_crop is DoRA's; it needs mode='dora'")
        self.pre_crop = bool(pre_crop)
        if num_frames < 1 or frame_step < 1 or num_local < 0:
            raise ValueError(
                f"ClipDataset: need num_frames >= 1, frame_step >= 1, num_local >= 0; got "
                f"{num_frames}, {frame_step}, {num_local}"
            )
        self.num_frames, self.frame_step, self.mode = int(num_frames), int(frame_step), mode
        self.img_size, self.local_size, self.num_local = (
            int(img_size),
            int(local_size),
            int(num_local),
        )
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.decode_size, self.backend = decode_size, backend
        self.mean, self.std = tuple(mean), tuple(std)
        self.photometric = photometric

        span = (self.num_frames - 1) * self.frame_step + 1  # frames one clip covers
        self.lengths: list[int] = []
        self.sizes: list[int | None] = []  # decode size per video: never upscale a small video
        self.cache_mb = float(cache_mb)
        self.cached: list[bool] = []  # per video: its frames are decoded once and kept
        budget = self.cache_mb * 2**20
        for path in self.paths:
            video = open_video(path, size=decode_size, backend=backend)
            self.lengths.append(len(video))
            small = decode_size is not None and min(video.source_size) <= decode_size
            self.sizes.append(None if small else decode_size)
            h, w = video.source_size if small or decode_size is None else video.size
            nbytes = len(video) * h * w * 3
            self.cached.append(nbytes <= budget)
            budget -= nbytes if self.cached[-1] else 0
            video.close()
        starts = [max(length - span + 1, 0) for length in self.lengths]
        too_short = [str(p) for p, n in zip(self.paths, starts) if n == 0]
        if too_short:
            raise ValueError(
                f"ClipDataset: clips of {self.num_frames} frames with frame_step {self.frame_step} "
                f"need {span} frames; too short: {', '.join(too_short)}"
            )
        self._offsets = np.cumsum([0, *starts])  # clip index -> (video, start)
        self._build_transforms()
        self._readers: dict[int, Any] = {}
        self._frames: dict[int, np.ndarray] = {}  # video -> uint8 (N, H, W, 3), cached videos
        self._pid = os.getpid()

    # -- indexing ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def span(self) -> int:
        """Frames of the video one clip covers: ``(T - 1) * frame_step + 1``."""
        return (self.num_frames - 1) * self.frame_step + 1

    def num_disjoint_clips(self) -> int:
        """Clips that fit side by side without sharing frames (sets the default epoch length)."""
        return sum(max(length // (self.num_frames * self.frame_step), 1) for length in self.lengths)

    def locate(self, index: int) -> tuple[int, np.ndarray]:
        """Video number and frame indices (T,) of clip ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        video = int(np.searchsorted(self._offsets, index, side="right") - 1)
        start = int(index - self._offsets[video])
        return video, start + self.frame_step * np.arange(self.num_frames, dtype=np.int64)

    def _reader(self, video: int) -> Any:
        if os.getpid() != self._pid:  # a forked worker: never touch the parent's decoders
            self._inherited = getattr(self, "_inherited", []) + [self._readers]
            self._readers, self._pid = {}, os.getpid()
        if video not in self._readers:
            self._readers[video] = open_video(
                self.paths[video], size=self.sizes[video], backend=self.backend
            )
        return self._readers[video]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"], state["_inherited"], state["_frames"] = {}, [], {}
        return state

    def close(self) -> None:
        """Release this process's decoders (they reopen on the next read)."""
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def cache_frames(self) -> None:
        """Decode every video that fits ``cache_mb`` now (see the module docstring).

        Call it before DataLoader workers fork, so that they share one copy instead of each
        decoding its own.
        """
        for video, cached in enumerate(self.cached):
            if cached:
                self._cached_frames(video)

    def _cached_frames(self, video: int) -> np.ndarray | None:
        """All frames of a cached video, uint8 (N, H, W, 3), decoded on first use; else None."""
        if not self.cached[video]:
            return None
        frames = self._frames.get(video)
        if frames is None:
            reader = self._reader(video)
            frames = np.empty((len(reader), *reader.size, 3), dtype=np.uint8)
            for indices, chunk in reader.batches(batch_size=64):  # in file order
                frames[indices] = chunk
            self._frames[video] = frames
            reader.close()  # the clips of this video never need its decoder again
            del self._readers[video]
        return frames

    def read_clip(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Video number, frame indices (T,) and decoded frames uint8 (T, H, W, 3) of a clip."""
        video, indices = self.locate(index)
        cache = self._cached_frames(video)
        if cache is not None:
            return video, indices, cache[indices]  # a copy: items never alias the cache
        return video, indices, self._reader(video).get(indices)

    # -- augmentation --------------------------------------------------------------------------

    def _build_transforms(self) -> None:
        def identity(x: torch.Tensor) -> torch.Tensor:
            return x

        on = self.photometric
        self._global_crop = CropFlip(self.img_size, self.global_scale)
        self._local_crop = CropFlip(self.local_size, self.local_scale)
        self._pre_crop: CropFlip | None = None
        if self.pre_crop:  # DoRA: RandomResizedCropVideo(300, (0.2, 1)) before the DINO crops
            side = round(self.img_size * 300 / 224)
            self._pre_crop = CropFlip(side, (0.2, 1.0), flip=False)
        if self.mode == "dora":
            # DoRA's global frames: blur rarely (p = 0.1), no solarisation
            self._global_colour = [Photometric(self.img_size, 0.1) if on else identity]
        else:
            self._global_colour = [
                Photometric(self.img_size, 1.0) if on else identity,
                Photometric(self.img_size, 0.1, solarize=0.2) if on else identity,
            ]
        self._local_colour = Photometric(self.local_size, 0.5) if on else identity
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def _views(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (G, T, 3, S, S) and local (n, T, 3, s, s) views of a uint8 clip (T, 3, H, W).

        Float in [0, 1] from here to the normalisation; the colour of all the frames of a view
        (or all the local crops of the clip) is drawn per image and applied in one batch.
        """
        frames = clip.shape[0]
        x = clip.to(torch.float32).div_(255.0)  # (T, 3, H, W)
        if self._pre_crop is not None:  # one crop of the whole clip: (T, 3, P, P)
            x = self._pre_crop(x)
        if self.mode == "dora":
            shared = self._global_crop(x)  # (T, 3, S, S): one crop and flip for the clip
            global_views = self._global_colour[0](shared).unsqueeze(0)  # (1, T, 3, S, S)
        else:
            global_views = torch.stack(
                [
                    colour(torch.stack([self._global_crop(frame) for frame in x]))  # (T, 3, S, S)
                    for colour in self._global_colour
                ]
            )  # (2, T, 3, S, S)
        global_views = global_views.sub_(self._mean).div_(self._std)
        if self.num_local:
            crops = torch.stack(
                [self._local_crop(x[t]) for _ in range(self.num_local) for t in range(frames)]
            )  # (n*T, 3, s, s), crop-major
            local_views = self._local_colour(crops).unflatten(0, (self.num_local, frames))
            local_views = local_views.sub_(self._mean).div_(self._std)  # (n, T, 3, s, s)
        else:
            local_views = torch.zeros(0, frames, 3, self.local_size, self.local_size)
        return global_views.contiguous(), local_views.contiguous()

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """One augmented clip.

        Args:
            item: a clip index, or ``(clip index, seed)`` as :class:`StepBatchSampler` yields.
                A bare index uses seed ``index`` (deterministic as well).

        Returns:
            ``{"global": (G, T, 3, S, S), "local": (n, T, 3, s, s), "indices": (T,),
            "video": int}``.
        """
        index, seed = (
            (int(item[0]), int(item[1]))
            if isinstance(item, (tuple, list))
            else (int(item), int(item))
        )
        video, indices, frames = self.read_clip(index)
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(
            0, 3, 1, 2
        )  # (T, 3, H, W) uint8
        threads = torch.get_num_threads()
        # many small image ops: intra-op threads cost more than they give (3x slower on 2 cores)
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                global_views, local_views = self._views(clip)
        finally:
            torch.set_num_threads(threads)
        return {
            "global": global_views,
            "local": local_views,
            "indices": torch.from_numpy(indices),
            "video": video,
        }


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(clip index, augmentation seed)`` for steps ``start .. stop - 1``.

    Step ``s`` draws a global batch of ``batch_size * world_size`` clips (without replacement
    where the data has enough) and their seeds from ``numpy.random.default_rng([seed, s])``;
    process ``rank`` takes its slice. The batches of a step are thus the same whether a run went
    straight through or resumed, and whatever the number of workers.

    Args:
        num_clips: clips in the dataset.
        batch_size: clips per process.
        seed: the run's seed.
        start, stop: first step and one past the last.
        rank, world_size: this process and the number of processes.
    """

    def __init__(
        self,
        num_clips: int,
        batch_size: int,
        *,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_clips < 1 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"StepBatchSampler: need num_clips >= 1, batch_size >= 1, 0 <= rank < world_size; "
                f"got {num_clips}, {batch_size}, {rank}, {world_size}"
            )
        self.num_clips, self.batch_size, self.seed = num_clips, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(clip index, seed)`` pairs for ``step``."""
        rng = np.random.default_rng([self.seed, step])
        total = self.batch_size * self.world_size
        clips = rng.choice(self.num_clips, size=total, replace=total > self.num_clips)
        seeds = rng.integers(0, 2**63 - 1, size=total)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return [(int(c), int(s)) for c, s in zip(clips[mine], seeds[mine])]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


def preview_clip(
    video_path: str | os.PathLike,
    *,
    num_frames: int,
    frame_step: int,
    size: int,
    start: int | None = None,
    backend: Literal["auto", "decord", "pyav"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """An un-augmented clip for looking at: frames at shorter side ``size``, whole field of view.

    Args:
        video_path: the video.
        num_frames, frame_step: T and the step, as in training.
        size: shorter side of the returned frames.
        start: first frame; None takes the clip in the middle of the video.
        backend: video backend.

    Returns:
        ``(indices int64 (T,), frames uint8 (T, H, W, 3))``.
    """

    with open_video(video_path, size=size, backend=backend) as video:
        span = (num_frames - 1) * frame_step + 1
        if span > len(video):
            raise ValueError(
                f"preview_clip: {video_path} has {len(video)} frames, fewer than a clip's {span}"
            )
        if start is None:
            start = (len(video) - span) // 2
        indices = video.clip_indices(int(start), num_frames, frame_step)
        return indices, video.get(indices)
