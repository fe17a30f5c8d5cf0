"""Backbones: timm ViTs loaded from timm, DINO, DoRA or labkit checkpoints, and their input pipeline.

Notation::

    N  frames (images) in a batch
    H, W  frame height and width in pixels; H', W' after cropping to a multiple of p
    p  patch size in pixels
    D  embedding dimension

Checkpoint layouts understood by :func:`load_checkpoint_state` (all read with
``torch.load(weights_only=True)``, so a file cannot run code when it is opened):

* **timm**: a plain ``state_dict`` (``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``,
  ``blocks.{i}.attn.qkv.weight`` ...), or one wrapped under ``"state_dict"`` or ``"model"``.
* **DINO, backbone only** (``dino_deitsmall16_pretrain.pth`` and friends): a plain state dict whose
  key names are timm's, so it is the case above.
* **DINO / DoRA / labkit training checkpoints**: ``{"teacher": ..., "student": ..., "optimizer": ...,
  "epoch": ..., "args": argparse.Namespace, ...}``. Each network is a ``MultiCropWrapper`` whose keys
  read ``backbone.<timm key>`` and ``head.<projection head>``, with a ``module.`` prefix where it was
  wrapped in ``DistributedDataParallel`` (always the student, the teacher only with batch norms).
  The ``head.*`` weights are dropped: the backbone is all labkit uses.

Classifier weights (``head.*``) of a plain timm state dict are dropped too, as
:func:`load_backbone` builds its model with ``num_classes=0``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Prefixes of keys that belong to training wrappers, stripped in this order.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the architecture."""


def load_checkpoint_state(
    path: str | Path, which: Literal["teacher", "student"] = "teacher"
) -> dict[str, torch.Tensor]:
    """Read a backbone ``state_dict`` from a timm, DINO, DoRA or labkit checkpoint file.

    The file is read with ``torch.load(weights_only=True)`` (plus ``argparse.Namespace``, which
    DINO-style training checkpoints store under ``"args"``), so opening it cannot run code.

    Args:
        path: the checkpoint file.
        which: for training checkpoints holding both networks, ``"teacher"`` (the EMA network
            DINO and DoRA evaluate) or ``"student"``. Ignored for files holding a single network.

    Returns:
        The backbone's weights under timm key names (wrapper prefixes ``module.``/``backbone.``
        removed, projection and classifier heads ``head.*`` dropped), tensors on the CPU.

    Raises:
        CheckpointError: the file is missing, cannot be unpickled safely, or has no recognisable
            layout (the message lists its top-level keys).
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    # DINO-style training checkpoints keep their argparse options under "args"; allow just that
    # class on top of weights_only's tensors and containers (torch < 2.5 lacks safe_globals).
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; all mean "not loadable safely"
        raise CheckpointError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True): {err}. "
            "If the file comes from a source you trust, load it yourself and save just its "
            "state_dict with torch.save(state_dict, new_path)."
        ) from err

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    if "teacher" in obj or "student" in obj:  # DINO / DoRA / labkit training checkpoint
        if which not in obj:
            raise CheckpointError(
                f"checkpoint {path} has no {which!r} network; it holds {sorted(obj)}"
            )
        state = obj[which]
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    elif isinstance(obj.get("model"), Mapping):
        state = obj["model"]
    else:
        state = obj
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"checkpoint {path}: no state dict found (top-level keys {sorted(obj)})")
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"checkpoint {path}: unrecognised layout, entries that are not tensors: "
            f"{non_tensors[:8]} (top-level keys {sorted(obj)})"
        )
    return _backbone_keys(dict(state))


def _backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip training-wrapper prefixes, keep the backbone of a MultiCropWrapper, drop heads."""
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    if any(k.startswith("backbone.") for k in out):  # MultiCropWrapper(backbone, head)
        out = {k[len("backbone.") :]: v for k, v in out.items() if k.startswith("backbone.")}
    return {k: v for k, v in out.items() if not k.startswith("head.")}


def load_backbone(
    name: str = "vit_small_patch16_224",
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    device: str | torch.device = "cpu",
    which: Literal["teacher", "student"] = "teacher",
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """Build a timm Vision Transformer for feature extraction and optionally load weights.

    The model takes any input size (``dynamic_img_size=True``: the position embedding is resampled
    to each input's patch grid), has no classifier (``num_classes=0``) and is in eval mode.

    Args:
        name: a timm ViT architecture, e.g. ``"vit_small_patch16_224"`` (DINO ViT-S/16),
            ``"vit_small_patch8_224"``, ``"vit_base_patch16_224"``; a pretrained tag such as
            ``"vit_small_patch16_224.dino"`` is passed on to timm.
        checkpoint: a local file in timm, DINO, DoRA or labkit format (see the module docstring).
            A position embedding of another grid size is resampled (bicubic) to the model's.
            Normalisation constants are set to ImageNet's, which DINO, DoRA and labkit's trainer
            use; change ``model.pretrained_cfg["mean"/"std"]`` for a checkpoint trained otherwise.
        pretrained: download timm's weights for ``name`` (needs network access to the model hub;
            passed straight to ``timm.create_model``, not exercised by labkit's offline tests).
        device: where the model lives.
        which: network to take from a training checkpoint, ``"teacher"`` or ``"student"``.
        **timm_kwargs: further ``timm.create_model`` arguments (``img_size``, ``depth``,
            ``embed_dim``, ``num_heads``, ``reg_tokens``, ``qk_norm`` ...).

    Returns:
        A ``timm.models.VisionTransformer`` in eval mode on ``device``.

    Raises:
        ValueError: ``name`` is not a timm VisionTransformer.
        CheckpointError: the checkpoint cannot be read or does not fit the architecture; the
            message lists the missing and unexpected keys and any shape mismatches.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    timm_kwargs = {"num_classes": 0, "dynamic_img_size": True, **timm_kwargs}
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"load_backbone: {name!r} is not a timm architecture")
    try:
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except TypeError as err:  # e.g. a CNN has no dynamic_img_size
        raise ValueError(f"load_backbone: cannot build {name!r} as a timm VisionTransformer: {err}") from err
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"load_backbone: {name!r} builds a {type(model).__name__}; labkit needs a timm "
            "VisionTransformer (vit_* architectures)"
        )
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint, which=which)
        _load_into(model, state, source=str(checkpoint))
        model.pretrained_cfg = {
            **(model.pretrained_cfg or {}),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "file": str(checkpoint),
        }
    return model.to(device).eval()


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly into ``model``, resampling the position embedding if needed."""
    state = dict(state)
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        resampled = _resample_pos_embed(model, state["pos_embed"])
        if resampled is not None:  # else reported as a shape mismatch below
            state["pos_embed"] = resampled
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(model).__name__} "
            f"(embed_dim={getattr(model, 'embed_dim', '?')}, depth={len(getattr(model, 'blocks', []))}):\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched}"
        )
    model.load_state_dict(state, strict=True)


def _resample_pos_embed(model: Any, pos_embed: torch.Tensor) -> torch.Tensor | None:
    """Bicubically resample a (1, prefix + g*g, D) position embedding to the model's grid.

    Returns None where the checkpoint's embedding is not a square grid of the model's width after
    the model's prefix tokens (another architecture: the caller reports the mismatch).
    """
    from timm.layers import resample_abs_pos_embed

    num_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    num_patches = pos_embed.shape[1] - num_prefix if pos_embed.ndim == 3 else -1
    side = math.isqrt(max(num_patches, 0))
    if num_patches < 1 or side * side != num_patches or pos_embed.shape[-1] != model.embed_dim:
        return None
    return resample_abs_pos_embed(
        pos_embed,
        new_size=list(model.patch_embed.grid_size),
        old_size=[side, side],
        num_prefix_tokens=num_prefix,
    )


def normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std the model expects, from ``model.pretrained_cfg``.

    Returns:
        ``(mean, std)``, three floats each, for RGB in [0, 1]; ImageNet's when the model has no
        pretrained config or the config has no ``mean``/``std``.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std


def patch_size(model: torch.nn.Module) -> int:
    """Side of the model's square patches in pixels.

    Returns:
        ``p`` as an int.

    Raises:
        ValueError: the model has no ``patch_embed`` or its patches are not square.
    """
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        raise ValueError(f"patch_size: {type(model).__name__} has no patch_embed.patch_size")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if size[0] != size[1]:
        raise ValueError(f"patch_size: patches of {size} are not square")
    return int(size[0])


def prepare_images(
    frames: np.ndarray | torch.Tensor,
    model: torch.nn.Module,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn uint8 RGB frames into the normalised batch the model expects.

    Frames whose sides are not multiples of the patch size are cropped **down**, keeping the
    top-left corner, so that patch ``(i, j)`` covers pixels ``[i*p:(i+1)*p, j*p:(j+1)*p]`` of the
    original frame; the right and bottom remainders (fewer than ``p`` pixels) are dropped.

    Args:
        frames: uint8 array or tensor, (N, H, W, 3), RGB.
        model: the backbone; gives the patch size and ``normalization(model)``.
        device: where the batch is made (the uint8 frames are moved first, then converted).
        dtype: floating dtype of the result.

    Returns:
        Tensor (N, 3, H', W') of ``dtype`` on ``device``, ``(x / 255 - mean) / std`` with
        ``H' = H // p * p`` and ``W' = W // p * p``.

    Raises:
        ValueError: frames are not uint8 (N, H, W, 3), or smaller than one patch.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"prepare_images: frames must be an ndarray or Tensor, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"prepare_images: frames must be (N, H, W, 3), got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"prepare_images: frames must be uint8 RGB, got {frames.dtype}")
    if not dtype.is_floating_point:
        raise ValueError(f"prepare_images: dtype must be a floating dtype, got {dtype}")
    p = patch_size(model)
    _, h, w, _ = frames.shape
    if h < p or w < p:
        raise ValueError(f"prepare_images: frames of {h}x{w} are smaller than one {p}x{p} patch")
    frames = frames[:, : h // p * p, : w // p * p]  # (N, H', W', 3), top-left kept
    mean, std = normalization(model)
    x = frames.to(device).permute(0, 3, 1, 2).to(dtype)  # (N, 3, H', W')
    # (x / 255 - mean) / std as one multiply-add per pixel
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device, dtype=dtype).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device, dtype=dtype).view(1, 3, 1, 1)
    return torch.addcmul(shift, x, scale).contiguous()
