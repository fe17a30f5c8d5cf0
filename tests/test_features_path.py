"""One path from frames to features: the explore workflow, the interactive explorer and the
evaluation get exactly what ``labkit.attention.extract_video`` gives for the same frames, and that
agrees with an independent reference (each frame alone, cropped and normalised by hand, through
the model's own forward with timm's non-fused attention)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit.eval.sequence
from labkit.attention import extract_video
from labkit.eval.datasets import davis_sequences
from labkit.eval.runner import EvalConfig
from labkit.eval.sequence import evaluate_sequence, model_input_size
from labkit.explore import ExploreConfig, explore
from labkit.models import load_backbone
from labkit.video import open_frames
from labkit.viz.explorer import AttentionExplorer

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}
KINDS = ("tokens", "keys", "queries")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    """A DAVIS-layout copy of the synthetic video: 5 frames of 100 x 150 (not multiples of 16)."""
    from labkit.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("features") / "davis"
    return generate_synthetic(root, num_frames=5, size=(100, 150)).root


def model() -> torch.nn.Module:
    return load_backbone("vit_small_patch16_224", seed=3, **TINY)


def independent(net: torch.nn.Module, frames: np.ndarray) -> dict[str, torch.Tensor]:
    """[CLS] attention of the last block and its tokens, keys, queries, one frame at a time.

    Crop and normalisation written out here; the attention matrix from timm's non-fused path;
    tokens from ``forward_features``; q and k read off the last block's qkv projection.
    """
    from timm.utils import AttentionExtract

    unfused = copy.deepcopy(net)
    for block in unfused.blocks:
        block.attn.fused_attn = False
    p, prefix = 16, unfused.num_prefix_tokens
    gh, gw = frames.shape[1] // p, frames.shape[2] // p
    mean = torch.tensor(unfused.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(unfused.pretrained_cfg["std"]).view(1, 3, 1, 1)
    last = unfused.blocks[-1]
    heads, d = last.attn.num_heads, last.attn.head_dim
    parts: dict[str, list[torch.Tensor]] = {}
    seen: dict[str, torch.Tensor] = {}
    hook = last.attn.qkv.register_forward_hook(lambda _m, _i, out: seen.setdefault("qkv", out))
    for frame in frames:
        x = torch.from_numpy(frame[: gh * p, : gw * p].copy()).permute(2, 0, 1)[None].float()
        x = (x / 255 - mean) / std  # (1, 3, gh*p, gw*p)
        seen.clear()
        with torch.no_grad():
            tokens = unfused.forward_features(x)  # (1, N, D)
            matrix = AttentionExtract(unfused, method="hook")(x)["blocks.1.attn.attn_drop"]
        qkv = seen["qkv"].reshape(1, -1, 3, heads * d)  # (1, N, 3, h*d): heads concatenated
        found = {
            "attention": matrix[:, :, 0, prefix:].reshape(1, heads, gh, gw),
            "tokens": tokens[:, prefix:].reshape(1, gh, gw, -1),
            "queries": qkv[:, prefix:, 0].reshape(1, gh, gw, -1),
            "keys": qkv[:, prefix:, 1].reshape(1, gh, gw, -1),
        }
        for name, value in found.items():
            parts.setdefault(name, []).append(value)
    hook.remove()
    return {name: torch.cat(values) for name, values in parts.items()}


def check(got: dict[str, torch.Tensor], path, frames: np.ndarray, net: torch.nn.Module) -> None:
    """``got`` equals ``extract_video``'s output bit for bit, and the independent reference."""
    for name in ("attention", *KINDS):
        want = path.attention if name == "attention" else path.features[name]
        assert torch.equal(got[name], want.float()), name
    ref = independent(net, frames)
    # a random init's maps are close to uniform (1/54 here): compare them tightly, and make sure
    # they vary across the patches far more than the tolerance
    assert ref["attention"].std(dim=(-2, -1)).min() > 1e-4
    torch.testing.assert_close(got["attention"], ref["attention"], atol=2e-6, rtol=0)
    for name in KINDS:
        torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_explore_and_explorer_features_are_extract_videos(davis: Path) -> None:
    folder = davis / "JPEGImages" / "480p" / "synthetic"
    cfg = ExploreConfig(
        video_path=str(folder),
        model="vit_small_patch16_224",
        model_kwargs=TINY,
        seed=3,
        img_size=100,  # frames 100 x 150: cropped to 96 x 144, a 6 x 9 grid
        num_frames=5,
        batch_size=2,
        device="cpu",
    )
    exp = explore(cfg, progress=False)
    assert exp.frames.shape[1:3] == (100, 150) and exp.attention.shape[-2:] == (6, 9)
    net = model()
    path = extract_video(net, exp.frames, kinds=KINDS, batch_size=2, progress=False)
    got = {"attention": exp.attention, "tokens": exp.features, "keys": exp.keys}
    got["queries"] = path.features["queries"].clone()
    got["queries"][0] = exp.queries  # the workflow keeps the first frame's queries only
    check(got, path, exp.frames, net)

    explorer = AttentionExplorer(exp.frames, net, batch_size=2, progress=False)
    data = explorer.layer_data(-1)
    got = {"attention": data.attention, "tokens": data.tokens, "keys": data.keys}
    got["queries"] = path.features["queries"].clone()
    got["queries"][0] = data.queries
    check(got, path, exp.frames, net)


def test_evaluation_features_are_extract_videos(davis: Path, monkeypatch) -> None:
    seen = []
    real = labkit.eval.sequence.extract

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(labkit.eval.sequence, "extract", spy)
    cfg = EvalConfig(
        data_root=str(davis),
        model_kwargs=TINY,
        resolution=96,
        size_multiple=16,
        evaluations=("tracking",),  # attention, tokens, keys, queries
        batch_size=2,
        device="cpu",
    )
    seq = davis_sequences(davis)[0]
    net = model()
    evaluate_sequence(net, seq, cfg, progress=False)
    size = model_input_size(seq.size, cfg.resolution, 16, cfg.size_multiple)
    assert size == (96, 144)
    frames = open_frames(seq.frames[0].parent, size=size).get(np.arange(seq.num_frames))
    path = extract_video(net, frames, kinds=KINDS, batch_size=2, progress=False)
    got = {"attention": torch.cat([out.attention for out in seen])}
    for kind in KINDS:
        got[kind] = torch.cat([out.features[kind] for out in seen])
    assert len(seen) == 3  # 5 frames in batches of 2
    check(got, path, frames, net)
