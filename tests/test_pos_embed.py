"""Position embeddings resized as the weights' authors do: labkit against the official DINO model.

``fixtures/dino_official_pos_embed.pt`` holds a tiny ViT (patch 16, D = 48, 2 blocks, 3 heads) in
the layout of DINO's ``vision_transformer.py`` and what the official model computes with it on
fixed frames at five sizes (see ``fixtures/dino_official_pos_embed.md`` for how it was made).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from labkit.attention import extract
from labkit.models import checkpoint_pos_embed_rule, load_backbone, prepare_images, weights_label
from labkit.pos_embed import apply_rule, check_rule, resample_grid, rule_for_weights

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "dino_official_pos_embed.pt"
TINY = dict(embed_dim=48, depth=2, num_heads=3)


def frame(h: int, w: int) -> np.ndarray:
    """The fixture's frame: an integer pattern, (h, w, 3) uint8, the same on every machine."""
    i = np.arange(h)[:, None, None]
    j = np.arange(w)[None, :, None]
    c = np.arange(3)[None, None, :]
    return ((i * 7 + j * 13 + c * 51 + (i * j) % 37) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def weights_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("dino") / "dino_tiny_pretrain.pth"  # DINO's backbone layout
    torch.save(reference["state_dict"], path)
    return path


def labkit_outputs(model, h, w):
    images = prepare_images(frame(h, w)[None], model)  # 480x854 is cropped to 480x848 here
    with torch.no_grad():
        out = extract(model, images, layer=-1, attention=True, kinds=("tokens", "keys", "queries"))
    grid = out.features["tokens"].shape[1:3]
    flat = {k: v[0].reshape(grid[0] * grid[1], -1) for k, v in out.features.items()}  # (P, D)
    return out.attention[0].reshape(out.attention.shape[1], -1), flat  # (h, P), {kind: (P, D)}


SIZES = ["224x224", "224x320", "320x224", "96x160", "480x854"]


@pytest.mark.parametrize("size", SIZES)
def test_dino_checkpoint_matches_official_model(reference, weights_file, size):
    model = load_backbone("vit_small_patch16_224", checkpoint=weights_file, **TINY)
    assert model.pos_embed_rule == "dino"  # a file in DINO's layout: DINO's rule, by default
    h, w = map(int, size.split("x"))
    attention, feats = labkit_outputs(model, h, w)
    stride = int(reference[f"{size}/stride"])
    assert torch.allclose(attention, reference[f"{size}/attention"], atol=1e-6, rtol=0)
    for kind in ("tokens", "keys", "queries"):
        got = feats[kind][::stride]
        want = reference[f"{size}/{kind}"]
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-5, kind


@pytest.mark.parametrize("size", ["224x320", "480x854"])
def test_timm_rule_differs_from_official_on_non_square_frames(reference, weights_file, size):
    # the reason the rule exists: timm's resize gives other features than DINO's model
    model = load_backbone(
        "vit_small_patch16_224", checkpoint=weights_file, pos_embed_rule="timm", **TINY
    )
    h, w = map(int, size.split("x"))
    _, feats = labkit_outputs(model, h, w)
    stride = int(reference[f"{size}/stride"])
    assert (feats["tokens"][::stride] - reference[f"{size}/tokens"]).abs().max().item() > 1e-3


def test_square_training_grid_is_unchanged_by_every_rule(reference, weights_file):
    outs = []
    for rule in ("dino", "dinov2", "timm"):
        model = load_backbone(
            "vit_small_patch16_224", checkpoint=weights_file, pos_embed_rule=rule, **TINY
        )
        outs.append(labkit_outputs(model, 224, 224)[1]["tokens"])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel (PyTorch's bicubic without antialiasing uses a = -0.75)."""
    t = np.abs(t)
    return np.where(
        t <= 1,
        (a + 2) * t**3 - (a + 3) * t**2 + 1,
        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
    )


def _dino_rule_by_hand(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """DINO's rule written out: sample the M x M grid at (o + 0.5) * M / (g + 0.1) - 0.5."""
    old_h, old_w, _ = grid.shape
    out = grid
    for axis, (old, new) in enumerate(((old_h, size[0]), (old_w, size[1]))):
        step = old / (new + 0.1)  # 1 / scale factor, as DINO passes scale_factor = (g + 0.1) / M
        src = (np.arange(new) + 0.5) * step - 0.5
        base = np.floor(src).astype(int)
        weights = np.zeros((new, old))
        for tap in range(-1, 3):
            idx = np.clip(base + tap, 0, old - 1)  # border samples repeat
            np.add.at(weights, (np.arange(new), idx), _cubic(src - (base + tap)))
        out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=1), 0, axis)
    return out


@pytest.mark.parametrize("size", [(30, 53), (14, 20), (6, 10), (20, 14), (5, 5)])
def test_dino_rule_equals_a_straightforward_implementation(size):
    grid = torch.randn(1, 14, 14, 8, generator=torch.Generator().manual_seed(0))
    got = resample_grid(grid, size, "dino")[0].numpy()
    want = _dino_rule_by_hand(grid[0].double().numpy(), size)
    assert got.shape == (*size, 8)
    assert np.abs(got - want).max() < 1e-5
    # DINOv2 without registers is the same rule; with registers it is timm's exact-size resize
    assert torch.equal(resample_grid(grid, size, "dinov2")[0], torch.from_numpy(got))
    from timm.layers import resample_abs_pos_embed

    timm_way = resample_abs_pos_embed(
        grid.reshape(1, 196, 8), list(size), [14, 14], num_prefix_tokens=0
    )
    mine = resample_grid(grid, size, "timm").reshape(1, -1, 8)
    assert torch.equal(mine, timm_way)
    assert torch.equal(
        resample_grid(grid, size, "dinov2", has_registers=True).reshape(1, -1, 8), timm_way
    )


def test_rule_survives_deepcopy_and_reaches_forward(weights_file):
    model = load_backbone("vit_small_patch16_224", checkpoint=weights_file, **TINY)
    twin = copy.deepcopy(model)
    assert twin.pos_embed_rule == "dino" and twin._pos_embed.__self__ is twin
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), twin.forward_features(x))
        timm_model = apply_rule(copy.deepcopy(model), "timm")
        assert not torch.allclose(
            model.forward_features(x), timm_model.forward_features(x), atol=1e-4
        )


def test_auto_rule_follows_the_weights(tmp_path, weights_file):
    assert rule_for_weights("random", "vit_small_patch16_224") == "timm"
    assert rule_for_weights("pretrained", "vit_small_patch16_224.dino") == "dino"
    assert rule_for_weights("pretrained", "vit_small_patch16_224.augreg_in21k") == "timm"
    assert rule_for_weights("random", "vit_small_patch14_reg4_dinov2") == "dinov2"
    assert rule_for_weights("checkpoint", "vit_small_patch16_224") == "dino"
    assert rule_for_weights("checkpoint", "vit_small_patch16_224", checkpoint_rule="timm") == "timm"
    random_model = load_backbone("vit_small_patch16_224", seed=0, **TINY)
    assert random_model.pos_embed_rule == "timm"
    assert weights_label(random_model) == "vit_small_patch16_224, random init, seed 0"
    assert checkpoint_pos_embed_rule(weights_file) is None  # DINO's files record nothing
    # a labkit training checkpoint records the rule it trained with
    labkit_ckpt = tmp_path / "checkpoint.pth"
    state = {f"backbone.{k}": v for k, v in torch.load(weights_file, weights_only=True).items()}
    torch.save(
        {
            "teacher": state,
            "student": state,
            "config": {"model": "vit_small_patch16_224", "pos_embed_rule": "timm"},
        },
        labkit_ckpt,
    )
    assert checkpoint_pos_embed_rule(labkit_ckpt) == "timm"
    assert (
        load_backbone("vit_small_patch16_224", checkpoint=labkit_ckpt, **TINY).pos_embed_rule
        == "timm"
    )
    # the run's folder tells the checkpoint.pth files of different runs apart
    assert weights_label(
        load_backbone("vit_small_patch16_224", checkpoint=labkit_ckpt, **TINY)
    ) == (f"vit_small_patch16_224, checkpoint {tmp_path.name}/checkpoint.pth")


def test_bad_rule_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"^pos_embed_rule: 'bilinear' is not one of"):
        load_backbone("vit_small_patch16_224", pos_embed_rule="bilinear", **TINY)
    with pytest.raises(ValueError, match="rule"):
        check_rule("auto", allow_auto=False)


def test_model_without_position_embedding_takes_a_rule():
    # timm's pos_embed="none" leaves model.pos_embed None: apply_rule used to fail on its shape
    model = load_backbone("vit_small_patch16_224", pos_embed="none", pos_embed_rule="dino", **TINY)
    assert model.pos_embed is None and model.pos_embed_rule == "dino"
    with torch.no_grad():
        out = model.forward_features(torch.zeros(1, 3, 32, 48))
    assert out.shape == (1, 1 + 2 * 3, model.embed_dim)


def test_checkpoint_keeps_its_own_grid(reference, weights_file):
    # no img_size given: the model is built on the checkpoint's 14 x 14 grid, never resampled
    # at load time (which would resample twice)
    model = load_backbone("vit_small_patch16_224", checkpoint=weights_file, **TINY)
    assert model.patch_embed.grid_size == (14, 14)
    assert torch.equal(model.pos_embed, reference["state_dict"]["pos_embed"])


# -- DINOv2: fixtures/dinov2_official_pos_embed.pt (see its .md) ----------------------------------

DINOV2 = __import__("pathlib").Path(__file__).parent / "fixtures" / "dinov2_official_pos_embed.pt"
DINOV2_SIZES = ["224x224", "224x322", "322x224", "480x854"]


@pytest.fixture(scope="module")
def dinov2_reference():
    return torch.load(DINOV2, weights_only=True)


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("size", DINOV2_SIZES)
def test_dinov2_checkpoint_matches_official_model(dinov2_reference, tmp_path, registers, size):
    path = tmp_path / "dinov2_tiny.pth"  # facebookresearch/dinov2's own key names
    torch.save(dinov2_reference[f"reg{registers}/state_dict"], path)
    arch = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    model = load_backbone(arch, checkpoint=path, **TINY)
    assert model.pos_embed_rule == "dinov2" and model.num_reg_tokens == registers
    h, w = map(int, size.split("x"))
    attention, feats = labkit_outputs(model, h, w)  # 480x854 is cropped to 476x854 as DINOv2 needs
    key = f"reg{registers}/{size}"
    stride = int(dinov2_reference[f"{key}/stride"])
    assert torch.allclose(attention, dinov2_reference[f"{key}/attention"], atol=1e-6, rtol=0)
    for kind in ("tokens", "keys", "queries"):
        got, want = feats[kind][::stride], dinov2_reference[f"{key}/{kind}"]
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-5, kind
    if size != "224x224":  # the wrong rule would not match: the test can fail
        other = load_backbone(
            arch, checkpoint=path, pos_embed_rule="timm" if not registers else "dino", **TINY
        )
        _, wrong = labkit_outputs(other, h, w)
        assert (
            wrong["tokens"][::stride] - dinov2_reference[f"{key}/tokens"]
        ).abs().max().item() > 1e-3
