"""Patch 14 and register tokens through every feature, on tiny models of the real architectures.

Models: DINOv2 ViT-S/14 with 4 registers (``vit_small_patch14_reg4_dinov2``: layer scale, the
position embedding on the patches only), DINOv2 ViT-S/14 without registers, and DINO's ViT-S/16,
each cut to 2 blocks of width 48. Frames are small and not square: 70 x 98 (a 5 x 7 grid of
14-pixel patches) and 75 x 103 (not a multiple of 14, so the bottom/right strips are cropped).

Attention is checked against the block's own attention matrix (timm's non-fused path, the
softmax captured by a hook); the other features on shapes, on the grid they are on and on values
that a wrong patch size or a wrong count of prefix tokens would change.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.attention import Extraction, cls_attention, extract, extract_video, register_attention
from labkit.models import load_backbone, prepare_images

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}
ARCHS = {
    "dinov2_reg4_p14": "vit_small_patch14_reg4_dinov2",
    "dinov2_p14": "vit_small_patch14_dinov2",
    "dino_p16": "vit_small_patch16_224",
}
# (patch size, prefix tokens R, registers G) each architecture must have
FACTS = {"dinov2_reg4_p14": (14, 5, 4), "dinov2_p14": (14, 1, 0), "dino_p16": (16, 1, 0)}
H, W = 75, 103  # not multiples of 14 or 16: cropped to 70 x 98 (5 x 7) or 64 x 96 (4 x 6)


def tiny(name: str) -> torch.nn.Module:
    """A tiny model whose attention is peaked (random init gives nearly uniform maps)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = load_backbone(ARCHS[name], **TINY)
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight.mul_(6.0)
            # timm starts [CLS] and the registers at ~1e-6 and DINOv2 adds no position embedding
            # to them, so their queries would be ~0 after norm1 and their rows uniform
            model.cls_token.normal_(0.0, 1.0)
            if getattr(model, "reg_token", None) is not None:
                model.reg_token.normal_(0.0, 1.0)
    return model


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(arch: str) -> torch.nn.Module:
    return tiny(arch)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Four uint8 RGB frames, 75 x 103, smooth enough that patches differ from one another."""
    g = np.random.default_rng(5)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([np.sin(x / 9.0), np.cos(y / 7.0), np.sin((x + y) / 13.0)], axis=-1)
    out = [(base + 0.15 * t + 0.1 * g.standard_normal(base.shape)) for t in range(4)]
    return np.clip((np.stack(out) + 1.5) / 3.0 * 255, 0, 255).astype(np.uint8)  # (4, H, W, 3)


def grid_of(model: torch.nn.Module, size: tuple[int, int] = (H, W)) -> tuple[int, int]:
    p = model.patch_embed.patch_size[0]
    return size[0] // p, size[1] // p


def timm_attention(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's (B, h, N, N) softmax, captured on timm's non-fused path (its own forward)."""
    unfused = copy.deepcopy(model)
    mats: list[torch.Tensor] = []
    handles = []
    for block in unfused.blocks:
        block.attn.fused_attn = False
        # attn_drop's input is softmax(q k^T * scale), the matrix the block multiplies v with
        handles.append(
            block.attn.attn_drop.register_forward_hook(lambda _m, inp, _o: mats.append(inp[0]))
        )
    with torch.no_grad():
        unfused.forward_features(x)
    for handle in handles:
        handle.remove()
    return mats


# --------------------------------------------------------------------------------------------
# The architectures and the attention itself
# --------------------------------------------------------------------------------------------


def test_tiny_models_have_the_real_architecture(arch: str, model: torch.nn.Module) -> None:
    p, prefix, registers = FACTS[arch]
    assert model.patch_embed.patch_size == (p, p)
    assert (model.num_prefix_tokens, model.num_reg_tokens) == (prefix, registers)
    assert model.no_embed_class == arch.startswith(
        "dinov2_reg4"
    )  # position embedding on patches only
    x = torch.zeros(1, 3, 70, 98)
    x = x[..., : 70 // p * p, : 98 // p * p]
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert tokens.shape[1] == prefix + (70 // p) * (98 // p)


@pytest.mark.parametrize("size", [(70, 98), (98, 42)])
def test_attention_equals_the_blocks_own_matrix(size) -> None:
    """[CLS] maps, its prefix columns and each register's row: rows of timm's matrix, to 1e-6."""
    model = tiny("dinov2_reg4_p14")
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    gh, gw = size[0] // 14, size[1] // 14
    R, G, h = 5, 4, 3
    mats = timm_attention(model, x)
    assert [m.shape for m in mats] == [(2, h, R + gh * gw, R + gh * gw)] * 2
    for layer in (0, 1, -1):
        out = extract(model, x, layer, attention=True, kinds=(), registers=True)
        mat = mats[layer]
        want_cls = mat[:, :, 0, R:].reshape(2, h, gh, gw)
        want_reg = (
            mat[:, :, 1:R, R:].permute(0, 2, 1, 3).reshape(2, G, h, gh, gw)
        )  # (B, G, h, gh, gw)
        torch.testing.assert_close(out.attention, want_cls, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.prefix_attention, mat[:, :, 0, :R], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.cls_register_attention, mat[:, :, 0, 1:R], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.register_attention, want_reg, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            out.register_prefix_attention, mat[:, :, 1:R, :R].permute(0, 2, 1, 3), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(register_attention(model, x, layer), want_reg, atol=1e-6, rtol=0)
        torch.testing.assert_close(cls_attention(model, x, layer), want_cls, atol=1e-6, rtol=0)
    # the registers' rows are not the [CLS] row, and differ from one another
    reg = out.register_attention
    assert (reg - out.attention[:, None]).abs().amax() > 1e-3
    assert (reg[:, 0] - reg[:, 1]).abs().amax() > 1e-3
    # the maps are peaked, so a shifted column (wrong prefix count) would not pass the checks above
    assert want_cls.amax() > 0.1


def test_register_rows_need_no_more_of_the_block() -> None:
    """registers=True reads q and k of the prefix tokens only: no value path, MLP or later block."""
    model = tiny("dinov2_reg4_p14")
    ran: list[str] = []
    for name in ("blocks.0", "blocks.1", "blocks.0.attn", "blocks.0.mlp", "norm"):
        model.get_submodule(name).register_forward_hook(lambda *_a, name=name: ran.append(name))
    x = torch.randn(1, 3, 42, 56)
    extract(model, x, layer=0, attention=True, kinds=(), registers=True)
    assert ran == []  # block 0: norm1 and the q/k rows of its qkv projection only
    out = extract(model, x, layer=0, attention=True, kinds=("tokens",), registers=True)
    assert ran == ["blocks.0.attn", "blocks.0.mlp", "blocks.0", "norm"]
    torch.testing.assert_close(
        out.register_attention, register_attention(model, x, 0), atol=1e-6, rtol=0
    )


def test_rows_sum_to_one_and_ranges(arch: str, model: torch.nn.Module, frames: np.ndarray) -> None:
    _, prefix, registers = FACTS[arch]
    images = prepare_images(frames, model)
    gh, gw = grid_of(model)
    out = extract(model, images, attention=True, kinds=("tokens",), registers=registers > 0)
    assert out.attention.shape == (4, 3, gh, gw) and out.attention.dtype == torch.float32
    assert out.prefix_attention.shape == (4, 3, prefix)
    assert out.cls_register_attention.shape == (4, 3, registers)
    total = out.attention.sum(dim=(-2, -1)) + out.prefix_attention.sum(dim=-1)  # (B, h)
    torch.testing.assert_close(total, torch.ones(4, 3), atol=1e-5, rtol=0)
    assert out.attention.min() >= 0 and out.attention.max() <= 1
    assert (out.attention.sum(dim=(-2, -1)) < 1 - 1e-4).all()  # some mass went to the prefix
    if registers:
        reg = out.register_attention
        assert reg.shape == (4, registers, 3, gh, gw) and reg.dtype == torch.float32
        assert out.register_prefix_attention.shape == (4, registers, 3, prefix)
        total = reg.sum(dim=(-2, -1)) + out.register_prefix_attention.sum(dim=-1)  # (B, G, h)
        torch.testing.assert_close(total, torch.ones(4, registers, 3), atol=1e-5, rtol=0)
    else:
        assert out.register_attention is None and out.register_prefix_attention is None
        with pytest.raises(ValueError, match="no register tokens"):
            extract(model, images, registers=True)
        with pytest.raises(ValueError, match="no register tokens"):
            register_attention(model, images)


def test_features_exclude_the_prefix_tokens(
    arch: str, model: torch.nn.Module, frames: np.ndarray
) -> None:
    _, prefix, _ = FACTS[arch]
    images = prepare_images(frames, model)
    gh, gw = grid_of(model)
    out = extract(model, images, kinds=("tokens", "keys", "queries"))
    with torch.no_grad():
        final = model.forward_features(images)  # (B, R + P, D)
    assert final.shape[1] == prefix + gh * gw
    torch.testing.assert_close(
        out.features["tokens"], final[:, prefix:].reshape(4, gh, gw, 48), atol=1e-5, rtol=0
    )
    for kind in ("keys", "queries"):
        assert out.features[kind].shape == (4, gh, gw, 48)
    # the first patch token is not a register's or [CLS]'s
    for j in range(prefix):
        assert (out.features["tokens"][:, 0, 0] - final[:, j]).abs().amax() > 1e-3


def test_frames_are_cropped_to_the_patch_grid(
    arch: str, model: torch.nn.Module, frames: np.ndarray
) -> None:
    p, _, registers = FACTS[arch]
    images = prepare_images(frames, model)
    assert images.shape[-2:] == (H // p * p, W // p * p)  # 70 x 98 or 64 x 96
    exact = prepare_images(np.ascontiguousarray(frames[:, : H // p * p, : W // p * p]), model)
    torch.testing.assert_close(images, exact, atol=0, rtol=0)
    with pytest.raises(ValueError, match=f"not multiples of the patch size {p}"):
        extract(model, torch.zeros(1, 3, p * 3 + 1, p * 2))


def test_extract_video_stacks_register_attention(frames: np.ndarray) -> None:
    model = tiny("dinov2_reg4_p14")

    class Clip:  # anything with __len__ and get(indices)
        def __len__(self) -> int:
            return len(frames)

        def get(self, indices):
            return frames[np.asarray(indices)]

    out = extract_video(
        model, Clip(), [3, 0, 2], registers=True, kinds=("keys",), batch_size=2, progress=False
    )
    ref = extract(model, prepare_images(frames[[3, 0, 2]], model), kinds=("keys",), registers=True)
    assert isinstance(out, Extraction) and out.indices.tolist() == [3, 0, 2]
    for name in (
        "attention",
        "prefix_attention",
        "register_attention",
        "register_prefix_attention",
    ):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-5, rtol=0)
    assert out.register_attention.shape == (3, 4, 3, 5, 7)
    only = extract_video(model, Clip(), [1], attention=False, registers=True, progress=False)
    assert only.attention is None and only.prefix_attention is None
    assert only.register_attention.shape == (1, 4, 3, 5, 7)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def test_heads_to_rgb_on_the_patch14_grid(
    arch: str, model: torch.nn.Module, frames: np.ndarray
) -> None:
    from labkit.viz import heads_to_rgb

    p, _, registers = FACTS[arch]
    gh, gw = grid_of(model)
    out = extract(model, prepare_images(frames[:1], model), kinds=(), registers=registers > 0)
    small = heads_to_rgb(out.attention[0], (0, 1, 2))  # (gh, gw, 3)
    big = heads_to_rgb(out.attention[0], (0, 1, 2), size=(H, W), patch_size=p)
    inferred = heads_to_rgb(out.attention[0], (0, 1, 2), size=(H, W))  # p from the grid
    assert small.shape == (gh, gw, 3) and big.shape == (H, W, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(inferred, big)
    for i, j in [(0, 0), (gh - 1, gw - 1), (2, 3)]:  # each patch is its p x p block of pixels
        block = big[i * p : (i + 1) * p, j * p : (j + 1) * p]
        assert (block == small[i, j]).all()
    assert (big[gh * p :] == big[gh * p - 1 : gh * p]).all()  # cropped strip repeats the edge
    assert small.min() == 0 and small.max() == 255  # each head min-max scaled
    if registers:
        reg = heads_to_rgb(out.register_attention[0, 0], (0, 1, 2), size=(H, W), patch_size=p)
        assert reg.shape == (H, W, 3) and not np.array_equal(reg, big)


# --------------------------------------------------------------------------------------------
# DoRA, k-means, label propagation
# --------------------------------------------------------------------------------------------


def test_dora_discovery_and_tracking(arch: str, model: torch.nn.Module, frames: np.ndarray) -> None:
    from labkit.tracking import discover_objects, masks_to_frames, track_objects

    p, _, _ = FACTS[arch]
    gh, gw = grid_of(model)
    out = extract(model, prepare_images(frames, model), kinds=("tokens", "keys", "queries"))
    found = discover_objects(
        out.attention[:1], out.features["queries"][:1], out.features["tokens"][:1], k=3
    )
    assert found.prototypes.shape == (1, 3, 48) and found.assignment.shape == (1, gh * gw, 3)
    torch.testing.assert_close(found.assignment.sum(-1), torch.ones(1, gh * gw), atol=1e-5, rtol=0)
    # initial prototypes: each head's [CLS] attention pools the patch queries (not the prefix's)
    attn = out.attention[0, :3].reshape(3, -1)  # (k, P)
    want = (attn / attn.sum(-1, keepdim=True)) @ out.features["queries"][0].reshape(gh * gw, -1)
    cos = torch.nn.functional.cosine_similarity(found.initial_prototypes[0], want, dim=-1)
    assert (cos > 1 - 1e-4).all()
    tracks = track_objects(found.prototypes, out.features["keys"][None])
    assert tracks.maps.shape == (1, 4, 3, gh, gw) and tracks.masks.dtype == torch.bool
    torch.testing.assert_close(
        tracks.maps.sum(dim=(-2, -1)), torch.ones(1, 4, 3), atol=1e-5, rtol=0
    )
    pixels = masks_to_frames(tracks.masks, p, (H, W))  # (1, 4, 3, H, W)
    assert pixels.shape == (1, 4, 3, H, W)
    assert torch.equal(pixels[..., : gh * p : p, : gw * p : p], tracks.masks)
    # the strips below and right of the grid repeat the edge patches (labkit.geometry)
    assert torch.equal(
        pixels[..., gh * p :, :],
        pixels[..., gh * p - 1 : gh * p, :].expand_as(pixels[..., gh * p :, :]),
    )
    assert torch.equal(
        pixels[..., gw * p :], pixels[..., gw * p - 1 : gw * p].expand_as(pixels[..., gw * p :])
    )


def test_dora_training_step_on_patch14_registers() -> None:
    """The DoRA step with a reg4 ViT-S/14: crops must be multiples of 14, shapes on its grid."""
    from labkit.losses import DINOLoss
    from labkit.train import TrainConfig
    from labkit.train.step import build_networks, dora_step, teacher_forward

    cfg = TrainConfig(
        model=ARCHS["dinov2_reg4_p14"],
        model_kwargs=TINY,
        img_size=42,
        local_size=28,
        out_dim=64,
        hidden_dim=32,
        bottleneck_dim=16,
        drop_path_rate=0.0,
    )
    torch.manual_seed(0)
    student, teacher = build_networks(cfg)
    images = torch.randn(2, 3, 42, 56)
    forward = teacher_forward(teacher, images)
    ref = extract(teacher.backbone, images, kinds=("tokens",))
    torch.testing.assert_close(forward.attention, ref.attention, atol=1e-6, rtol=0)
    torch.testing.assert_close(forward.tokens, ref.features["tokens"], atol=1e-6, rtol=0)
    assert forward.attention.shape == (2, 3, 3, 4)
    g = torch.Generator().manual_seed(0)
    batch = {
        "global": torch.randn(2, 1, 2, 3, 42, 42, generator=g),
        "local": torch.randn(2, 1, 2, 3, 28, 28, generator=g),
    }
    out = dora_step(student, teacher, DINOLoss(64), batch, epoch=0, k=3, heads=[0, 1, 2])
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert out.discovery.assignment.shape == (2, 9, 3) and out.tracks.maps.shape == (2, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        build_networks(
            TrainConfig(
                model=ARCHS["dinov2_reg4_p14"], model_kwargs=TINY, img_size=48, local_size=28
            )
        )


def test_kmeans_segments_on_the_grid(model: torch.nn.Module, frames: np.ndarray) -> None:
    from labkit.clustering import kmeans_segments

    gh, gw = grid_of(model)
    tokens = extract(model, prepare_images(frames, model)).features["tokens"]
    for mode in ("frame", "clip"):
        labels = kmeans_segments(tokens, 3, mode=mode, seed=0).labels
        assert labels.shape == (4, gh, gw) and int(labels.min()) >= 0 and int(labels.max()) == 2
    # identical frames in one clip k-means: identical labels, the partition of one frame's patches
    same = kmeans_segments(tokens[:1].repeat(3, 1, 1, 1), 3, mode="clip", seed=0).labels
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])
    assert len(torch.unique(same[0])) == 3


def test_segment_maps_of_a_video(arch: str, model: torch.nn.Module, small_video: Path) -> None:
    from labkit.segments import segment_maps
    from labkit.video import open_video
    from labkit.viz.segments import segment_panels

    p, _, _ = FACTS[arch]
    with open_video(
        small_video
    ) as video:  # 96 x 160: 6 x 11 patches of 14 (crop 84 x 154), 6 x 10 of 16
        maps = segment_maps(
            model,
            video,
            frames=3,
            k_video=3,
            k_frame=2,
            sample_frames=3,
            batch_size=4,
            progress=False,
        )
        gh, gw = 96 // p, 160 // p
        assert maps.patch_size == p
        assert maps.whole.labels.shape == maps.per_frame.labels.shape == (3, gh, gw)
        assert int(maps.whole.labels.max()) <= 2 and int(maps.per_frame.labels.max()) <= 1
        panels = segment_panels(maps, video)
    assert panels["whole"].shape == panels["per_frame"].shape == (3, gh * p, gw * p, 3)  # cropped


def test_label_propagation_on_the_patch14_grid(
    arch: str, model: torch.nn.Module, frames: np.ndarray
) -> None:
    """Same features in every frame and top-1 voting: each patch takes its own first-frame label."""
    from labkit.eval.metrics import grid_to_frame
    from labkit.propagation import propagate_labels

    p, _, _ = FACTS[arch]
    gh, gw = grid_of(model)
    tokens = extract(model, prepare_images(frames[:1], model)).features["tokens"]  # (1, gh, gw, D)
    grid_labels = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (gh, gw)))
    first = grid_to_frame(grid_labels, (H, W), patch_size=p, alignment="crop").to(torch.uint8)
    out = propagate_labels(
        tokens.repeat(3, 1, 1, 1), first, topk=1, patch_size=p, out_size=(H, W), alignment="crop"
    )
    assert out.shape == (3, H, W) and out.dtype == torch.uint8
    assert torch.equal(out[0], first)
    centres = out[1:, p // 2 :: p, p // 2 :: p][:, :gh, :gw]  # the pixel at each patch's centre
    assert torch.equal(centres, grid_labels.to(torch.uint8).expand(2, gh, gw))


# --------------------------------------------------------------------------------------------
# The explorer and the evaluation runner
# --------------------------------------------------------------------------------------------


def test_explorer_panels(arch: str, model: torch.nn.Module, frames: np.ndarray) -> None:
    from labkit.viz.explorer import PANELS, AttentionExplorer
    from labkit.viz.render import heads_to_rgb, overlay, segment_overlay

    p, _, _ = FACTS[arch]
    gh, gw = grid_of(model)
    ex = AttentionExplorer(frames, model, k=3, batch_size=2, progress=False, image_format="png")
    assert ex.patch_size == p and ex.grid == (gh, gw)
    s = ex.set(frame=2, heads=(2, 0, 1), alpha=0.6)
    assert ex.render().shape == (H, len(PANELS) * W, 3)
    ref = extract(model, prepare_images(frames, model), kinds=("tokens",))
    data = ex.layer_data(s.layer)
    torch.testing.assert_close(data.attention, ref.attention, atol=1e-5, rtol=1e-4)
    assert data.tokens.shape == data.keys.shape == (4, gh, gw, 48)
    rgb = heads_to_rgb(ref.attention[2], (2, 0, 1), size=(H, W), patch_size=p)
    expected = overlay(frames[2], rgb, alpha=0.6, patch_size=p)
    assert np.abs(ex.panel("heads").astype(int) - expected).max() <= 1
    labels = ex.segments(s.layer, 3)
    assert labels.shape == (4, gh, gw)
    np.testing.assert_array_equal(
        ex.panel("segments"), segment_overlay(frames[2], labels[2], 0.6, patch_size=p)
    )
    objects = ex.objects(s.layer, (2, 0, 1), True)
    assert objects.shape == (4, 3, gh, gw)
    np.testing.assert_allclose(objects.sum(axis=(-2, -1)), 1.0, atol=1e-5)
    assert ex.panel("objects").shape == (H, W, 3)


def test_explore_and_its_explorer(small_video: Path) -> None:
    """The attention_explorer notebook's path, with a reg4 ViT-S/14 named by the config."""
    from labkit.explore import ExploreConfig, explore
    from labkit.viz.explorer import AttentionExplorer

    cfg = ExploreConfig(
        video_path=str(small_video),
        model=ARCHS["dinov2_reg4_p14"],
        model_kwargs=TINY,
        num_frames=3,
        frame_step=2,
        img_size=75,
        k=2,
    )
    exp = explore(cfg, progress=False)
    size = exp.frames.shape[1:3]  # 76 x 126 (even sides): a 5 x 9 grid, 6 x 0 pixels cropped
    assert exp.patch_size == 14 and size == (76, 126)
    assert exp.attention.shape == exp.masks.shape == (3, 3, 5, 9)
    assert exp.features.shape == exp.keys.shape == (3, 5, 9, 48) and exp.queries.shape == (5, 9, 48)
    ref = extract(exp.model, prepare_images(exp.frames, exp.model), kinds=("tokens",))
    torch.testing.assert_close(exp.attention, ref.attention, atol=1e-5, rtol=0)
    assert exp.rgb_maps().shape == exp.mask_overlays().shape == (3, *size, 3)
    assert exp.segment_overlays().shape == (3, *size, 3) and exp.pca_maps().shape == (3, 5, 9, 3)
    shown = exp.display_frames.shape[1:3]  # the animation is at the source's size
    assert exp.animation_frames().shape == (3, shown[0], 3 * shown[1], 3)
    ex = AttentionExplorer.from_exploration(exp, progress=False)
    assert ex.grid == (5, 9) and ex.render().shape == (*size[:1], 4 * size[1], 3)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from labkit.data.synthetic import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("synthetic14") / "davis", num_frames=6, size=(96, 160)
    ).root


def test_evaluation_runner_on_the_synthetic_video(arch: str, synthetic_root: Path) -> None:
    from labkit.eval.report import example_panels
    from labkit.eval.runner import EvalConfig, evaluate, model_input_size

    p, _, _ = FACTS[arch]
    cfg = EvalConfig(
        models=(f"tiny={ARCHS[arch]}",),
        model_kwargs=TINY,
        data_root=str(synthetic_root),
        resolution=56,
        size_multiple=28,
        batch_size=4,
        overclusters=4,
        dataset_samples=500,
    )
    result = evaluate(cfg, progress=False)
    m = result.models[0]
    assert m.info["patch_size"] == p
    seq = m.sequences[0]
    size = model_input_size((96, 160), 56, p, 28)  # (56, 84) for p = 14, (48, 80) for p = 16
    assert seq.input_size == size and seq.grid == (size[0] // p, size[1] // p)
    assert size == ((56, 84) if p == 14 else (48, 80))
    row = m.summary()
    for key in ("J&F", "attn best head J", "DoRA best object J", "k-means clip_overcluster mIoU"):
        assert 0.0 <= row[key] <= 1.0, key
    ex = seq.examples
    assert ex.frames.shape[1:3] == size and ex.head_masks.shape[-2:] == seq.grid
    assert (ex.propagated[0] == ex.gt[0]).all()
    panels = example_panels(seq)
    assert all(v.shape[1:] == (*size, 3) for v in panels.values())
