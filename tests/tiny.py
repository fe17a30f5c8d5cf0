"""The tiny training run the tests share: a 2-block ViT on 64 px clips, a small head, two steps an
epoch. Change the tiny model here, once; a test that needs something else says so at its use site
(``{**TINY_TRAIN, "out_dim": K}``, ``tiny_config(tmp_path, steps=3)``).

Test files import it as ``from tiny import TINY_TRAIN, tiny_config``: tests/ is not a package, and
pytest (the rootdir conftest, "prepend" import mode) puts tests/ on ``sys.path`` for ``pytest
tests/x.py``, ``python -m pytest`` and every pytest-xdist worker alike.

The dicts are shared by every test: spread them (``{**TINY_TRAIN, ...}``), never mutate them.
"""

from __future__ import annotations

from pathlib import Path

from labkit.train import TrainConfig

# timm arguments of the tiny backbone (vit_small_patch16_224 cut down): 4 heads of 16 channels
TINY_ARCH: dict = {"depth": 2, "embed_dim": 64, "num_heads": 4}

# what build_networks reads: the backbone and a small DINO head (K = out_dim = 256)
TINY_NETWORK: dict = {
    "model_kwargs": dict(TINY_ARCH),
    "img_size": 64,
    "local_size": 32,
    "out_dim": 256,
    "hidden_dim": 128,
    "bottleneck_dim": 32,
}

# a whole run: 2 clips of 2 frames, one local crop, no warm-up, no checkpoints (a step ~0.1 s)
TINY_TRAIN: dict = {
    **TINY_NETWORK,
    "num_frames": 2,
    "frame_step": 3,
    "num_local": 1,
    "batch_size": 2,
    "lr": 0.02,
    "warmup_epochs": 0.0,
    "steps_per_epoch": 2,
    "checkpoint_every": 0,
}


def tiny_config(out_dir: str | Path, **changes) -> TrainConfig:
    """The tiny run writing to ``out_dir``, with ``changes`` applied on top of TINY_TRAIN."""
    return TrainConfig(**{**TINY_TRAIN, "out_dir": str(out_dir), **changes})
