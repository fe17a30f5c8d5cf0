"""labkit.models: checkpoint formats round-trip exactly, bad files fail clearly, input pipeline."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch

from labkit.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointError,
    load_backbone,
    load_checkpoint_state,
    normalization,
    patch_size,
    prepare_images,
)

TINY = dict(depth=2, embed_dim=64, num_heads=4, patch_size=8, img_size=32)


def tiny(**overrides):
    return load_backbone("vit_small_patch16_224", **{**TINY, **overrides})


def randomized(model):
    """Give every parameter (LayerNorm affines and biases too) a distinct random value."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
    return model


def features(model, size=(48, 64)):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        return model.forward_features(x)


@pytest.fixture
def source():
    # checkpoint files in these layouts resize with DINO's rule (labkit.pos_embed), so the
    # source model that wrote them is built with it too
    return randomized(tiny(pos_embed_rule="dino"))


def _dino_wrapper_state(backbone_state, head_dim=16, prefix=""):
    """A MultiCropWrapper(backbone, DINOHead) state dict as DINO/DoRA write it."""
    state = {f"{prefix}backbone.{k}": v for k, v in backbone_state.items()}
    state[f"{prefix}head.mlp.0.weight"] = torch.randn(head_dim, 64)
    state[f"{prefix}head.mlp.0.bias"] = torch.randn(head_dim)
    state[f"{prefix}head.last_layer.weight_g"] = torch.ones(32, 1)
    state[f"{prefix}head.last_layer.weight_v"] = torch.randn(32, head_dim)
    return state


def _training_checkpoint(teacher, student, teacher_prefix=""):
    return {
        "student": _dino_wrapper_state(student.state_dict(), prefix="module."),
        "teacher": _dino_wrapper_state(teacher.state_dict(), prefix=teacher_prefix),
        "optimizer": {
            "state": {},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1]}],
        },
        "epoch": 7,
        "args": argparse.Namespace(arch="vit_small", patch_size=8, lr=0.0005, output_dir="/x"),
        "dino_loss": {"center": torch.zeros(1, 32)},
    }


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model"])
def test_timm_layouts_round_trip_exactly(tmp_path, source, layout):
    state = source.state_dict()
    obj = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = tiny(checkpoint=path)
    assert not loaded.training
    assert torch.equal(features(loaded), features(source))


def test_timm_classifier_head_is_dropped(tmp_path):
    with_head = randomized(
        load_backbone("vit_small_patch16_224", pos_embed_rule="dino", **{**TINY, "num_classes": 10})
    )
    assert "head.weight" in with_head.state_dict()
    path = tmp_path / "classifier.pth"
    torch.save(with_head.state_dict(), path)
    loaded = tiny(checkpoint=path)
    assert torch.equal(features(loaded), features(with_head))


def test_dino_backbone_checkpoint_with_other_grid_is_resampled(tmp_path):
    # DINO's released backbones are plain state dicts trained at 224 px (14 x 14 grid for p=16);
    # here a 4 x 4 grid source loads into a model built for 6 x 3 patches.
    src = randomized(tiny(img_size=32))  # 4 x 4 grid
    path = tmp_path / "dino_deitsmall8_pretrain.pth"
    torch.save(src.state_dict(), path)
    loaded = tiny(img_size=(48, 24), checkpoint=path)
    assert loaded.pos_embed.shape == (1, 1 + 6 * 3, 64)
    # the model resamples on the fly for other sizes too: both agree on a 48 x 24 input
    assert torch.allclose(features(loaded, (48, 24)), features(src, (48, 24)), atol=1e-6)
    assert torch.equal(loaded.pos_embed[:, 0], src.pos_embed[:, 0])  # [CLS] position untouched


@pytest.mark.parametrize("teacher_prefix", ["", "module."])
def test_dino_dora_training_checkpoint_teacher_and_student(tmp_path, teacher_prefix):
    teacher = randomized(tiny(pos_embed_rule="dino"))
    student = randomized(tiny(pos_embed_rule="dino"))
    path = tmp_path / "checkpoint.pth"
    torch.save(_training_checkpoint(teacher, student, teacher_prefix), path)

    loaded_teacher = tiny(checkpoint=path)  # which="teacher" is the default
    loaded_student = tiny(checkpoint=path, which="student")
    assert torch.equal(features(loaded_teacher), features(teacher))
    assert torch.equal(features(loaded_student), features(student))
    assert not torch.equal(features(loaded_teacher), features(student))

    state = load_checkpoint_state(path)
    assert set(state) == set(teacher.state_dict())
    assert not any(k.startswith(("head.", "module.", "backbone.")) for k in state)


def test_normalization_does_not_depend_on_where_weights_come_from(tmp_path, source):
    # timm's default config for these ViTs says mean = std = 0.5; a random init must get the
    # same ImageNet normalisation as a checkpoint of the same weights, or a "random baseline"
    # sees other inputs than the trained models it is compared with
    path = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), path)
    random_init = tiny(seed=3, pos_embed_rule="dino")
    assert normalization(random_init) == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization(tiny(checkpoint=path)) == (IMAGENET_MEAN, IMAGENET_STD)
    path2 = tmp_path / "same.pth"
    torch.save(random_init.state_dict(), path2)
    reloaded = tiny(checkpoint=path2)
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    x1, x2 = prepare_images(frames, random_init), prepare_images(frames, reloaded)
    assert torch.equal(x1, x2)
    with torch.no_grad():
        assert torch.equal(random_init.forward_features(x1), reloaded.forward_features(x2))


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (
            dict(depth=1),
            ["unexpected keys (12)", "blocks.1.attn.qkv.weight", "blocks.1.norm1.bias"],
        ),
        (
            dict(depth=3),
            ["missing keys (12)", "blocks.2.mlp.fc1.weight", "blocks.2.attn.proj.bias"],
        ),
        (
            dict(embed_dim=32),
            ["shape mismatches", "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 32)"],
        ),
        (dict(reg_tokens=4), ["missing keys (1): ['reg_token']"]),
    ],
)
def test_architecture_mismatch_lists_keys(tmp_path, source, target, expected):
    path = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        tiny(checkpoint=path, **target)
    message = str(err.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint_state(path)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_state(tmp_path / "missing.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint_state(path)
    path = tmp_path / "odd.pth"
    torch.save({"weights": {"a": torch.zeros(1)}, "step": 3}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_checkpoint_state(path)
    path = tmp_path / "teacher_only.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1, 1, 64)}}, path)
    with pytest.raises(CheckpointError, match="no 'student' network"):
        load_checkpoint_state(path, which="student")
    with pytest.raises(ValueError, match="which"):
        load_checkpoint_state(path, which="ema")


def test_load_backbone_contract():
    model = tiny(reg_tokens=4, qk_norm=True)
    assert not model.training
    assert model.num_classes == 0 and model.num_prefix_tokens == 5
    with torch.no_grad():  # dynamic_img_size: any multiple of the patch size goes through
        assert model.forward_features(torch.randn(1, 3, 40, 72)).shape == (1, 5 + 5 * 9, 64)
    with pytest.raises(ValueError, match="VisionTransformer"):
        load_backbone("resnet18")


def test_pretrained_is_passed_to_timm(monkeypatch):
    # Downloading needs the model hub, which tests cannot reach: check the flag is handed on.
    import timm

    seen = {}
    real = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        seen.update(name=name, pretrained=pretrained, **kwargs)
        return real(name, pretrained=False, **kwargs)

    import labkit.models

    monkeypatch.setattr(timm, "create_model", spy)
    monkeypatch.setattr(labkit.models, "_hub_reachable", lambda timeout=3.0: True)  # as if online
    load_backbone("vit_small_patch16_224", pretrained=True, depth=1, embed_dim=32, num_heads=2)
    assert (
        seen["pretrained"] is True and seen["num_classes"] == 0 and seen["dynamic_img_size"] is True
    )


def test_normalization_and_patch_size():
    model = tiny()
    assert patch_size(model) == 8
    model.pretrained_cfg = {}
    assert normalization(model) == (IMAGENET_MEAN, IMAGENET_STD)
    model.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (1.0, 2.0, 4.0)}
    assert normalization(model) == ((0.1, 0.2, 0.3), (1.0, 2.0, 4.0))
    with pytest.raises(ValueError, match="patch_embed"):
        patch_size(torch.nn.Linear(2, 2))


def test_prepare_images_crops_top_left_and_normalizes():
    model = tiny()
    model.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 2.0)}
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 37, 50, 3), dtype=np.uint8)  # 37 x 50 -> 32 x 48
    out = prepare_images(frames, model)
    assert out.shape == (3, 3, 32, 48) and out.dtype == torch.float32 and out.is_contiguous()
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.25, 2.0])
    want = ((frames[:, :32, :48] / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out.numpy(), want, atol=1e-5)

    as_tensor = prepare_images(torch.from_numpy(frames), model, dtype=torch.float64)
    assert as_tensor.dtype == torch.float64
    np.testing.assert_allclose(as_tensor.numpy(), want, atol=1e-12)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((4, 32, 3), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((1, 32, 32, 4), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((1, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((1, 7, 32, 3), np.uint8), "smaller than one 8x8 patch"),
        ([[1, 2, 3]], "ndarray or Tensor"),
    ],
)
def test_prepare_images_rejects_bad_frames(frames, message):
    with pytest.raises(ValueError, match=message):
        prepare_images(frames, tiny())
