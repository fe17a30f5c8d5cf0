"""Token norms, high-norm outliers and [CLS]/register attention per block (labkit.artifacts).

References are straightforward: timm's ``forward_intermediates`` for the block outputs, and a
manual block loop that forms each block's full N x N attention matrix for the attention rows.
"""

from __future__ import annotations

import pytest
import torch

from labkit.artifacts import Artifacts, outlier_mask, token_artifacts
from labkit.models import load_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}


@pytest.fixture(scope="module")
def plain() -> torch.nn.Module:
    return load_backbone("vit_small_patch16_224", seed=0, **TINY)


@pytest.fixture(scope="module")
def registers() -> torch.nn.Module:
    return load_backbone("vit_small_patch14_reg4_dinov2", seed=0, **TINY)


def images_for(
    model: torch.nn.Module, grid: tuple[int, int] = (4, 6), batch: int = 2, seed: int = 0
) -> torch.Tensor:
    p = model.patch_embed.patch_size[0]
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, grid[0] * p, grid[1] * p, generator=gen)


def full_attention_rows(
    model: torch.nn.Module, images: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per block: the whole (B, h, N, N) attention matrix, and the block's output tokens (B, N,
    D).
    """
    mats, outs = [], []
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        for block in model.blocks:
            attn = block.attn
            y = block.norm1(x)
            b, n, _ = y.shape
            qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, h, N, d)
            mats.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1))  # (B, h, N, N)
            x = block(x)
            outs.append(x)
    return mats, outs


@pytest.mark.parametrize("name", ["plain", "registers"])
def test_against_straightforward_implementation(name: str, request) -> None:
    model = request.getfixturevalue(name)
    images = images_for(model)
    art = token_artifacts(model, images, register_layers=(0, -1))
    depth, r = len(model.blocks), model.num_prefix_tokens
    g = int(getattr(model, "num_reg_tokens", 0) or 0)
    b, (gh, gw) = len(images), (4, 6)
    assert art.norms.shape == (b, depth, gh, gw) and art.norms.dtype == torch.float32
    assert art.cls_attention.shape == (b, depth, 3, gh, gw)
    assert art.cls_outlier_mass.shape == (b, depth, 3) and art.num_registers == g

    with torch.no_grad():
        inter = model.forward_intermediates(
            images, norm=False, intermediates_only=True
        )  # (B, D, gh, gw) each
    expected = torch.stack([t.norm(dim=1) for t in inter], dim=1)  # (B, L, gh, gw)
    torch.testing.assert_close(art.norms, expected, rtol=1e-5, atol=1e-5)

    mats, outs = full_attention_rows(model, images)
    for layer, mat in enumerate(mats):
        torch.testing.assert_close(
            art.cls_attention[:, layer],
            mat[:, :, 0, r:].reshape(b, 3, gh, gw),
            rtol=1e-5,
            atol=1e-6,
        )
        torch.testing.assert_close(
            art.norms[:, layer], outs[layer][:, r:].norm(dim=-1).reshape(b, gh, gw)
        )
        if g:
            torch.testing.assert_close(
                art.cls_register_mass[:, layer],
                mat[:, :, 0, r - g : r].sum(-1),
                rtol=1e-5,
                atol=1e-6,
            )
    if g:
        assert art.register_layers == (0, depth - 1)
        assert art.register_attention.shape == (b, 2, g, 3, gh, gw)
        for i, layer in enumerate(art.register_layers):
            ref = mats[layer][:, :, r - g : r, r:].permute(0, 2, 1, 3).reshape(b, g, 3, gh, gw)
            torch.testing.assert_close(art.register_attention[:, i], ref, rtol=1e-5, atol=1e-6)
        from labkit.attention import register_attention

        torch.testing.assert_close(
            art.register_attention[:, 1], register_attention(model, images, -1)
        )
    else:
        assert art.cls_register_mass is None and art.register_attention is None


def test_one_pass_over_the_blocks(registers: torch.nn.Module) -> None:
    calls = []
    handles = [blk.register_forward_hook(lambda *_: calls.append(1)) for blk in registers.blocks]
    try:
        token_artifacts(registers, images_for(registers))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == len(registers.blocks)
    assert all(
        not h for blk in registers.blocks for h in (blk.attn.qkv._forward_hooks,)
    )  # hooks removed


def test_outlier_rule_on_constructed_norms() -> None:
    norms = torch.ones(2, 3, 4, 5)
    norms[0, 1, 2, 3] = 3.5  # > 3 x median 1
    norms[1, 2, 0, 0] = 2.99  # below the cut
    norms[1, 0, 3, 4] = 3.0  # equal to the cut: not an outlier (strictly above)
    mask = outlier_mask(norms)
    assert mask.sum() == 1 and mask[0, 1, 2, 3]
    torch.testing.assert_close(outlier_mask(norms * 1000.0), mask)  # scale-free
    assert outlier_mask(norms, factor=4.0).sum() == 0
    assert outlier_mask(norms, factor=2.0).sum() == 3  # 3.5, 2.99 and 3.0: above 2x their medians
    spread = torch.tensor([[1.0, 1.0, 4.0, 4.0]])  # even count: lower median 1, both 4s out
    assert outlier_mask(spread[None].reshape(1, 2, 2)).sum() == 2
    with pytest.raises(ValueError, match="factor"):
        outlier_mask(norms, factor=1.0)


@pytest.mark.parametrize("name", ["plain", "registers"])
def test_planted_high_norm_token_is_found_exactly(name: str, request) -> None:
    model = request.getfixturevalue(name)
    p = model.patch_embed.patch_size[0]
    images = images_for(model) * 0.1
    images[0, :, 1 * p : 2 * p, 4 * p : 5 * p] = 40.0  # patch (1, 4) of image 0: a huge embedding
    art = token_artifacts(model, images)
    expected = torch.zeros(2, len(model.blocks), 4, 6, dtype=torch.bool)
    expected[0, :, 1, 4] = True
    assert torch.equal(art.outliers, expected)
    assert torch.equal(art.input_outliers(), expected)  # already an outlier entering block 0
    fraction = art.outlier_fraction()
    torch.testing.assert_close(fraction, expected.flatten(2).float().mean(-1))
    assert fraction[0, 0] == pytest.approx(1 / 24)
    cls = art.cls_attention[0]  # (L, h, gh, gw)
    torch.testing.assert_close(art.cls_outlier_mass[0], cls[:, :, 1, 4] / cls.flatten(2).sum(-1))
    assert torch.all(art.cls_outlier_mass[1] == 0)  # no outliers in image 1


def test_outlier_mass_follows_the_attention(plain: torch.nn.Module) -> None:
    """Block 0's [CLS] made to read the planted outlier: its mass on the outliers goes to ~1."""
    import copy

    model = copy.deepcopy(plain)
    p = 16
    images = images_for(model) * 0.1
    images[:, :, 2 * p : 3 * p, 0:p] = 40.0  # patch (2, 0) in both images
    before = token_artifacts(model, images)
    with torch.no_grad():
        x = model.norm_pre(
            model._pos_embed(model.patch_embed(images))
        )  # (B, N, D) entering block 0
        planted = x[0, 1 + 2 * 6]  # (D,) the outlier's token ([CLS] first)
        block = model.blocks[0]
        block.norm1 = torch.nn.Identity()  # keys see the raw tokens, norm included
        qkv = block.attn.qkv
        qkv.weight[:48] = 0.0  # every query is its bias: the planted token's direction
        qkv.bias[:48] = 10.0 * planted / planted.norm()
        qkv.weight[48:96] = torch.eye(48)  # key = token
        qkv.bias[48:96] = 0.0
    art = token_artifacts(model, images)
    expected = torch.zeros_like(art.outliers)
    expected[:, :, 2, 0] = True
    assert torch.equal(art.input_outliers()[:, 0], expected[:, 0])
    assert torch.all(art.cls_outlier_mass[:, 0] > 0.99)  # every head of block 0, both images
    assert torch.all(before.cls_outlier_mass[:, 0] < 0.5)  # the random block did not read it
    torch.testing.assert_close(
        art.cls_outlier_mass[:, 0],
        art.cls_attention[:, 0, :, 2, 0] / art.cls_attention[:, 0].flatten(2).sum(-1),
    )


def test_concat_and_validation(registers: torch.nn.Module) -> None:
    images = images_for(registers, batch=3)
    whole = token_artifacts(registers, images)
    parts = Artifacts.concat(
        [token_artifacts(registers, images[:2]), token_artifacts(registers, images[2:])]
    )
    for name in (
        "norms",
        "outliers",
        "cls_attention",
        "cls_outlier_mass",
        "cls_register_mass",
        "register_attention",
    ):
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name), rtol=1e-5, atol=1e-6)
    assert parts.cpu().norms.device.type == "cpu"
    assert token_artifacts(registers, images, register_layers=()).register_attention is None
    with pytest.raises(ValueError, match="out of range"):
        token_artifacts(registers, images, register_layers=(5,))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        token_artifacts(registers, images[..., :-1])
