"""labkit.attention against the blocks' own attention matrices (non-fused path) and plain
references.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from labkit.attention import (
    Extraction,
    cls_attention,
    extract,
    extract_batches,
    extract_video,
    image_batches,
    mass_threshold,
    patch_features,
)
from labkit.models import load_backbone, prepare_images

TINY = dict(depth=2, embed_dim=64, num_heads=4, patch_size=16)
VARIANTS = {
    "plain": {},
    "registers": {"reg_tokens": 4},
    "qk_norm": {"qk_norm": True},
    "registers_qk_norm_depth3": {"reg_tokens": 4, "qk_norm": True, "depth": 3, "embed_dim": 96},
}


def tiny(**overrides):
    """A tiny ViT whose attention is peaked (random init gives nearly uniform maps)."""
    model = load_backbone("vit_small_patch16_224", **{**TINY, **overrides})
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(6.0)
        for norm in [b.attn.q_norm for b in model.blocks] + [b.attn.k_norm for b in model.blocks]:
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.normal_(1.0, 0.5)
                norm.bias.normal_(0.0, 0.5)
    return model


def images(batch=2, size=(64, 96), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)


def reference_matrices(model, x):
    """Every block's full (B, h, N, N) attention, from timm's non-fused path (AttentionExtract)."""
    from timm.utils import AttentionExtract

    unfused = copy.deepcopy(model)
    for block in unfused.blocks:
        block.attn.fused_attn = False
    with torch.no_grad():
        mats = AttentionExtract(unfused, method="hook")(x)  # '*attn_drop' modules get softmax(qk^T)
    return [mats[f"blocks.{i}.attn.attn_drop"] for i in range(len(model.blocks))]


def reference_qkv(model, x, layer):
    """q, k (B, N, D) of block `layer` as its own forward computes them, and its output tokens."""
    block, seen = model.blocks[layer], {}
    handle = block.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out))
    handle2 = block.attn.qkv.register_forward_hook(lambda _m, _i, out: seen.__setitem__("qkv", out))
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    handle2.remove()
    b, n, _ = seen["qkv"].shape
    heads, d = block.attn.num_heads, block.attn.head_dim
    q, k, _ = seen["qkv"].reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)  # each (B, h, N, d)
    q, k = block.attn.q_norm(q), block.attn.k_norm(k)
    merge = lambda t: t.permute(0, 2, 1, 3).reshape(b, n, heads * d)  # noqa: E731  (B, N, h*d)
    return merge(q), merge(k), seen["out"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("size", [(64, 96), (80, 48)])
def test_cls_attention_equals_block_matrix_row(variant, size):
    model = tiny(**VARIANTS[variant])
    x = images(size=size)
    mats = reference_matrices(model, x)
    prefix, grid = model.num_prefix_tokens, (size[0] // 16, size[1] // 16)
    heads = model.blocks[0].attn.num_heads
    for layer in range(-len(model.blocks), len(model.blocks)):
        want = mats[layer][:, :, 0, prefix:].reshape(2, heads, *grid)
        got = cls_attention(model, x, layer)
        assert got.shape == (2, heads, *grid) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        sums = got.sum(dim=(-2, -1))
        assert (sums <= 1 + 1e-5).all() and (sums > 0).all()
    assert mats[-1][:, :, 0, prefix:].max() > 0.1  # the maps compared are peaked, not uniform


@pytest.mark.parametrize("variant", ["plain", "registers_qk_norm_depth3"])
def test_patch_features_match_the_blocks_own_tensors(variant):
    model = tiny(**VARIANTS[variant])
    x = images(size=(48, 112))
    prefix, grid = model.num_prefix_tokens, (3, 7)
    for layer in (0, -1):
        q, k, out = reference_qkv(model, x, layer)
        want = {
            "tokens": model.norm(out)[:, prefix:],
            "keys": k[:, prefix:],
            "queries": q[:, prefix:],
        }
        for kind, value in want.items():
            got = patch_features(model, x, layer, kind)
            assert got.shape == (2, *grid, model.embed_dim)
            torch.testing.assert_close(got, value.reshape(2, *grid, -1), atol=1e-5, rtol=0)
    with torch.no_grad():  # the last block's tokens are forward_features' patch tokens
        final = model.forward_features(x)[:, prefix:].reshape(2, *grid, -1)
    torch.testing.assert_close(patch_features(model, x), final, atol=1e-5, rtol=0)


def reference_values(model, x, layer):
    """v (B, N, D) of block `layer` as its own forward computes it, heads concatenated."""
    block, seen = model.blocks[layer], {}
    handle = block.attn.qkv.register_forward_hook(lambda _m, _i, out: seen.__setitem__("qkv", out))
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    width = block.attn.num_heads * block.attn.head_dim
    return seen["qkv"][..., 2 * width :]  # rows ordered (q, k, v); v is (B, N, h*d) head-major


@pytest.mark.parametrize("variant", ["plain", "registers_qk_norm_depth3"])
def test_values_and_prefix_tokens(variant):
    model = tiny(**VARIANTS[variant])
    x = images(size=(48, 112))
    prefix, grid = model.num_prefix_tokens, (3, 7)
    for layer in (0, -1):
        want = reference_values(model, x, layer)[:, prefix:].reshape(2, *grid, -1)
        alone = patch_features(model, x, layer, "values")  # projected from the qkv weight rows
        with_tokens = extract(model, x, layer, kinds=("tokens", "values"))  # the block's own qkv
        torch.testing.assert_close(alone, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(with_tokens.features["values"], want, atol=1e-5, rtol=0)
    out = extract(model, x, kinds=("tokens",))
    with torch.no_grad():
        final = model.forward_features(x)  # (B, N, D)
    assert out.prefix_tokens.shape == (2, prefix, model.embed_dim)
    torch.testing.assert_close(out.all_tokens(), final, atol=1e-5, rtol=0)
    assert extract(model, x, kinds=("keys",)).prefix_tokens is None
    with pytest.raises(ValueError, match="all_tokens"):
        extract(model, x, kinds=("keys",)).all_tokens()


def test_inference_false_keeps_the_callers_grad_mode():
    model = tiny()
    x = images()
    assert extract(model, x).attention.is_inference()
    with torch.no_grad():
        out = extract(model, x, kinds=("tokens", "keys"), inference=False)
    assert not out.attention.is_inference() and not out.features["tokens"].is_inference()
    assert not out.features["tokens"].requires_grad
    torch.testing.assert_close(out.attention, extract(model, x).attention, atol=0, rtol=0)


def test_extract_gives_everything_from_one_pass():
    model = tiny(reg_tokens=4)
    x = images()
    calls = []
    handles = [
        b.register_forward_hook(lambda *_a, i=i: calls.append(i))
        for i, b in enumerate(model.blocks)
    ]
    out = extract(model, x, -1, kinds=("tokens", "keys", "queries"))
    assert calls == [0, 1]  # each block once
    torch.testing.assert_close(out.attention, cls_attention(model, x), atol=1e-6, rtol=0)
    for kind in ("tokens", "keys", "queries"):
        torch.testing.assert_close(
            out.features[kind], patch_features(model, x, kind=kind), atol=1e-6, rtol=0
        )
    for handle in handles:
        handle.remove()


def test_nothing_after_the_chosen_block_runs():
    model = tiny(depth=3)
    ran = []
    for name in ("blocks.0", "blocks.1", "blocks.2", "blocks.1.mlp", "blocks.1.attn", "norm"):
        model.get_submodule(name).register_forward_hook(lambda *_a, name=name: ran.append(name))
    extract(model, images(), layer=1, attention=True, kinds=("keys", "queries"))
    assert ran == ["blocks.0"]  # block 1: norm1 and q/k only; no attention output, MLP, or block 2
    ran.clear()
    extract(model, images(), layer=1, attention=True, kinds=("tokens",))
    assert ran == ["blocks.0", "blocks.1.attn", "blocks.1.mlp", "blocks.1", "norm"]
    assert all(b.attn.fused_attn for b in model.blocks)  # fused attention left on everywhere


def test_batch_order_and_batch_size_invariance():
    model = tiny(reg_tokens=4)
    x = images(batch=4)
    full = extract(model, x, kinds=("tokens", "keys"))
    order = torch.tensor([2, 0, 3, 1])
    permuted = extract(model, x[order], kinds=("tokens", "keys"))
    torch.testing.assert_close(permuted.attention, full.attention[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        permuted.features["keys"], full.features["keys"][order], atol=1e-5, rtol=0
    )
    single = extract(model, x[3:4], kinds=("tokens",))
    torch.testing.assert_close(single.attention, full.attention[3:4], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        single.features["tokens"], full.features["tokens"][3:4], atol=1e-5, rtol=0
    )


def test_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="layer 2 out of range"):
        cls_attention(model, images(), layer=2)
    with pytest.raises(ValueError, match="not multiples of the patch size 16"):
        cls_attention(model, images(size=(64, 90)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        cls_attention(model, torch.zeros(3, 64, 96))
    with pytest.raises(ValueError, match="prepare_images"):
        cls_attention(model, torch.zeros(1, 3, 64, 96, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown feature kind"):
        extract(model, images(), kinds=("logits",))
    with pytest.raises(ValueError, match="nothing to compute"):
        extract(model, images(), attention=False, kinds=())
    no_cls = load_backbone("vit_small_patch16_224", class_token=False, global_pool="avg", **TINY)
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        cls_attention(no_cls, images())
    assert patch_features(no_cls, images()).shape == (2, 4, 6, 64)  # features need no [CLS]


class FakeVideo:
    """The part of labkit.video.Video that extract_video uses: __len__ and get(indices)."""

    def __init__(self, frames):
        self.frames, self.calls = frames, []

    def __len__(self):
        return len(self.frames)

    def get(self, indices):
        self.calls.append(list(indices))
        return self.frames[np.asarray(indices)]


class FakeBatchedVideo(FakeVideo):
    def batches(self, indices=None, batch_size=16):
        for start in range(0, len(indices), batch_size):
            chunk = np.asarray(indices[start : start + batch_size])
            yield chunk, self.get(chunk)


@pytest.mark.parametrize("video_type", [FakeVideo, FakeBatchedVideo])
def test_extract_video_streams_batches(video_type):
    model = tiny()
    frames = np.random.default_rng(0).integers(0, 256, size=(7, 70, 100, 3), dtype=np.uint8)
    video = video_type(frames)
    indices = [6, 0, 3, 4, 5, 1]
    out = extract_video(
        model, video, indices, kinds=("tokens", "queries"), batch_size=4, progress=False
    )
    assert video.calls == [[6, 0, 3, 4], [5, 1]]
    assert isinstance(out, Extraction) and out.indices.tolist() == indices
    want = extract(model, prepare_images(frames[indices], model), kinds=("tokens", "queries"))
    assert out.attention.shape == (6, 4, 4, 6) and out.attention.device.type == "cpu"
    torch.testing.assert_close(out.attention, want.attention, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.features["queries"], want.features["queries"], atol=1e-5, rtol=0)
    everything = extract_video(
        model, video, attention=False, kinds=("keys",), batch_size=3, progress=True
    )
    assert everything.attention is None and everything.features["keys"].shape == (7, 4, 6, 64)
    assert everything.indices.tolist() == list(range(7))
    with pytest.raises(ValueError, match="out of range"):
        extract_video(model, video, [7], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_video(model, video, batch_size=0, progress=False)


def test_extract_video_takes_an_array_of_frames_and_reports_progress():
    model = tiny()
    frames = np.random.default_rng(1).integers(0, 256, size=(5, 70, 100, 3), dtype=np.uint8)
    seen = []
    out = extract_video(
        model, frames, kinds=("tokens", "values"), batch_size=2, progress=lambda *a: seen.append(a)
    )
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    want = extract(model, prepare_images(frames, model), kinds=("tokens", "values"))
    for kind in ("tokens", "values"):
        torch.testing.assert_close(out.features[kind], want.features[kind], atol=1e-5, rtol=0)
    assert out.prefix_tokens.shape == (5, 1, 64)
    batches = list(extract_batches(model, frames, [4, 2, 0], attention=True, batch_size=2))
    assert [b.indices.tolist() for _, b in batches] == [[4, 2], [0]]
    assert [f.shape[0] for f, _ in batches] == [2, 1]
    torch.testing.assert_close(batches[0][1].attention, want.attention[[4, 2]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="model is on cpu"):
        next(image_batches(model, frames, device="meta"))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        extract_video(model, frames[..., 0], progress=False)


class LargestOutputs(TorchDispatchMode):
    """Records every op's outputs: the largest element count, and any token x token matrix.

    A token x token matrix is an output whose last two dims are both within 8 of n (n tokens,
    so matrices over the patches alone, without the prefix tokens, are caught too).
    """

    def __init__(self, n):
        super().__init__()
        self.n, self.largest, self.square = n, 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if t.ndim >= 2 and all(self.n - 8 <= s <= self.n for s in t.shape[-2:]):
                    self.square.append((str(func), tuple(t.shape)))
        return out


def test_checker_sees_the_attention_matrix_of_the_unfused_path():
    model = tiny()
    for block in model.blocks:
        block.attn.fused_attn = False
    with LargestOutputs(n=1 + 4 * 6) as seen, torch.no_grad():
        model.forward_features(images())
    assert any("softmax" in op and shape == (2, 4, 25, 25) for op, shape in seen.square)


def test_2560x1440_frame_never_forms_an_n_by_n_matrix():
    model = load_backbone("vit_small_patch16_224", depth=2, embed_dim=32, num_heads=2)
    x = torch.randn(1, 3, 1440, 2560)
    n = 1 + 90 * 160  # 14401 tokens; one N x N float32 matrix would be 830 MB per head
    with LargestOutputs(n) as seen:
        out = extract(model, x, -1, kinds=("tokens", "keys"))  # block 0 runs SDPA on all tokens
    assert seen.square == []
    assert seen.largest < n * n // 8, seen.largest
    assert out.attention.shape == (1, 2, 90, 160) and out.features["tokens"].shape == (
        1,
        90,
        160,
        32,
    )


def reference_mass_threshold(attn, keep):
    """One map at a time: add patches from the largest down until their mass reaches keep."""
    flat = attn.reshape(-1, attn.shape[-2] * attn.shape[-1]).astype(np.float64)
    result = np.zeros(flat.shape, dtype=bool)
    for row, values in enumerate(flat):
        if values.sum() == 0:
            continue
        mass = values / values.sum()
        total, cutoff = 0.0, None
        for i in np.argsort(-mass, kind="stable"):
            total += mass[i]
            cutoff = mass[i]
            if total >= keep - 1e-9:
                break
        result[row] = (mass >= cutoff) & (mass > 0)
    return result.reshape(attn.shape)


@pytest.mark.parametrize("keep", [0.1, 0.6, 0.9, 1.0])
def test_mass_threshold_matches_per_map_reference(keep):
    rng = np.random.default_rng(1)
    attn = rng.dirichlet(np.full(35, 0.3), size=(3, 4)).reshape(3, 4, 5, 7) * 0.8  # maps sum to 0.8
    attn[0, 0, 1, 2] = 0.0
    got = mass_threshold(torch.from_numpy(attn).float(), keep)
    assert got.dtype == torch.bool and got.shape == (3, 4, 5, 7)
    np.testing.assert_array_equal(
        got.numpy(), reference_mass_threshold(attn.astype(np.float32), keep)
    )
    kept_mass = (attn * got.numpy()).sum(axis=(-2, -1)) / attn.sum(axis=(-2, -1))
    assert (kept_mass >= keep - 1e-6).all()


def test_mass_threshold_matches_dino_formula_without_ties():
    # DINO (visualize_attention.py): sort ascending, normalise, keep where cumsum > 1 - threshold.
    rng = np.random.default_rng(2)
    attn = torch.from_numpy(rng.random((6, 9, 11)))
    val, idx = torch.sort(attn.flatten(1))
    val = val / val.sum(dim=1, keepdim=True)
    dino_sorted = val.cumsum(dim=1) > (1 - 0.6)
    dino = torch.zeros_like(dino_sorted).scatter(1, idx, dino_sorted).reshape(6, 9, 11)
    assert torch.equal(mass_threshold(attn, 0.6), dino)


def test_mass_threshold_ties_and_degenerate_maps():
    constant = torch.full((2, 3, 4), 0.01)
    assert mass_threshold(constant, 0.6).all()  # every patch tied: all kept
    assert not mass_threshold(torch.zeros(3, 4), 0.6).any()  # no mass: nothing kept
    peaked = torch.tensor([[0.7, 0.1], [0.1, 0.1]])
    assert mass_threshold(peaked, 0.6).tolist() == [[True, False], [False, False]]
    assert mass_threshold(peaked, 0.75).tolist() == [[True, True], [True, True]]  # tie at 0.1
    for keep in (0.0, 1.5):
        with pytest.raises(ValueError, match="keep"):
            mass_threshold(peaked, keep)
    with pytest.raises(ValueError, match="non-negative"):
        mass_threshold(-peaked, 0.6)
