"""Backbones: timm ViTs loaded from timm, DINO, DoRA or labkit checkpoints, and their input
pipeline.

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
* **DINO / DoRA / labkit training checkpoints**: ``{"teacher": ..., "student": ...,
  "optimizer": ..., "epoch": ..., "args": argparse.Namespace, ...}``. Each network is a
  ``MultiCropWrapper`` whose keys read ``backbone.<timm key>`` and ``head.<projection head>``,
  with a ``module.`` prefix where it was wrapped in ``DistributedDataParallel`` (always the
  student, the teacher only with batch norms).
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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from labkit.pos_embed import PosEmbedRule, apply_rule, check_rule, rule_for_weights
from labkit.validation import resolve_device
from labkit.zoo import in_local_cache

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

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
    obj = _torch_load(path)
    return _state_from(obj, path, which)


def checkpoint_pos_embed_rule(path: str | Path) -> str | None:
    """The position-embedding rule a checkpoint file records, or None.

    labkit's training checkpoints store their config; the rule they trained with is its
    ``pos_embed_rule`` (checkpoints from before that key trained with timm's rule). DINO's and
    DoRA's files record none (they resize with DINO's rule); DINOv2's official files are
    recognised by their ``register_tokens`` / ``mask_token`` keys.
    """
    return _recorded_rule(_torch_load(Path(path)))


def _recorded_rule(obj: Any) -> str | None:
    """The rule a loaded checkpoint object records (see checkpoint_pos_embed_rule)."""
    if not isinstance(obj, Mapping):
        return None
    config = obj.get("config")
    if isinstance(config, Mapping) and "model" in config:
        return str(config.get("pos_embed_rule") or "timm")
    state = obj.get("teacher", obj.get("state_dict", obj.get("model", obj)))
    if isinstance(state, Mapping) and any(
        str(k).split(".")[-1] in ("register_tokens", "mask_token") for k in state
    ):
        return "dinov2"
    return None


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` plus ``argparse.Namespace``; CheckpointError on failure."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    # DINO-style training checkpoints keep their argparse options under "args"; allow just that
    # class on top of weights_only's tensors and containers (torch < 2.5 lacks safe_globals).
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; all mean "not loadable safely"
        raise CheckpointError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True): {err}. "
            "If the file comes from a source you trust, load it yourself and save just its "
            "state_dict with torch.save(state_dict, new_path)."
        ) from err


def _state_from(obj: Any, path: Path, which: str) -> dict[str, torch.Tensor]:
    """The backbone state dict inside a loaded checkpoint object (see load_checkpoint_state)."""
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
        raise CheckpointError(
            f"checkpoint {path}: no state dict found (top-level keys {sorted(obj)})"
        )
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
    pretrained: bool | Literal["auto"] | None = None,
    device: str | torch.device = "cpu",
    which: Literal["teacher", "student"] = "teacher",
    pos_embed_rule: PosEmbedRule = "auto",
    seed: int | None = None,
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """Build a timm Vision Transformer for feature extraction and optionally load weights.

    The model takes any input size (``dynamic_img_size=True``: the position embedding is resampled
    to each input's patch grid with ``pos_embed_rule``), has no classifier (``num_classes=0``) and
    is in eval mode. Where its weights came from is kept in ``model.pretrained_cfg``
    (:func:`weights_label` says it in words).

    Args:
        name: a timm ViT architecture, e.g. ``"vit_small_patch16_224"`` (DINO ViT-S/16's shape),
            or one with a pretrained tag, ``"vit_small_patch16_224.dino"``: a tag means its
            weights (``pretrained`` defaults to True then), never a silent random init.
            ``labkit models`` lists the supported pretrained weights.
        checkpoint: a local file in timm, DINO, DoRA, DINOv2 or labkit format (see the module
            docstring). A position embedding of another grid size is resampled (bicubic) to the
            model's.
        pretrained: load timm's pretrained weights for ``name`` through timm's own machinery
            (the Hugging Face hub, or its local cache: with ``HF_HUB_OFFLINE=1`` only the cache).
            None (default): True where ``name`` has a pretrained tag and no ``checkpoint`` is
            given, else False. Without the weights in reach the error names the model, the cache
            folder looked in, and the two ways out. ``"auto"``: the tag's weights if they are in
            the local cache now, else a random init whose :func:`weights_label` says that the
            weights were not there (what the notebooks and the demo default to).
        device: where the model lives; ``"auto"``: CUDA when available, else the CPU.
        which: network to take from a training checkpoint, ``"teacher"`` or ``"student"``.
        pos_embed_rule: how the position embedding is resized to a frame's patch grid,
            ``"dino"``, ``"dinov2"`` or ``"timm"`` (:mod:`labkit.pos_embed`). ``"auto"``: as
            the weights' authors do: DINO's rule for DINO and DoRA checkpoint files and timm's
            ``.dino`` weights, DINOv2's for DINOv2 architectures, the rule a labkit training
            checkpoint records, timm's otherwise (random init included).
        seed: seed for the random initialisation (the caller's RNG is left untouched); None
            draws from torch's global RNG as timm does. Weights loaded afterwards replace it.
        **timm_kwargs: further ``timm.create_model`` arguments (``img_size``, ``depth``,
            ``embed_dim``, ``num_heads``, ``reg_tokens``, ``qk_norm`` ...).

    Normalisation: every model built here expects ImageNet's mean and std, which DINO, DoRA,
    DINOv2 and labkit's trainer use, except timm pretrained weights trained otherwise (their
    own ``pretrained_cfg`` is kept). So the same weights get the same input, whether they were
    initialised here, read from a checkpoint or trained by labkit.

    Returns:
        A ``timm.models.VisionTransformer`` in eval mode on ``device``.

    Raises:
        ValueError: ``name`` is not a timm VisionTransformer, or a bad ``pos_embed_rule``.
        CheckpointError: the checkpoint cannot be read or does not fit the architecture; the
            message lists the missing and unexpected keys and any shape mismatches.
        PretrainedWeightsError: pretrained weights were asked for and cannot be had.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    check_rule(pos_embed_rule)
    timm_kwargs = {"num_classes": 0, "dynamic_img_size": True, **timm_kwargs}
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise ValueError(f"load_backbone: {name!r} is not a timm architecture")
    pretrained, missing_note = resolve_pretrained(name, pretrained, checkpoint)
    if pretrained and checkpoint is not None:
        raise ValueError("load_backbone: give checkpoint or pretrained, not both")
    obj: Any = None
    if checkpoint is not None:
        obj = _torch_load(Path(checkpoint))
        state = _state_from(obj, Path(checkpoint), which)
        if "img_size" not in timm_kwargs:  # keep the checkpoint's own grid, as its authors ran it
            grid = _stored_grid(state, timm_kwargs)
            if grid:
                timm_kwargs["img_size"] = grid
    if pretrained and in_local_cache(name) is None and not _hub_reachable():
        # without this, huggingface_hub retries for about a minute before it gives up
        raise PretrainedWeightsError(
            _pretrained_message(name, OSError("the hub cannot be reached"))
        )
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    try:
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=bool(pretrained), **timm_kwargs)
    except TypeError as err:  # e.g. a CNN has no dynamic_img_size
        raise ValueError(
            f"load_backbone: cannot build {name!r} as a timm VisionTransformer: {err}"
        ) from err
    except Exception as err:  # hub errors: offline without a cache, no network, no such weights
        if pretrained:
            raise PretrainedWeightsError(_pretrained_message(name, err)) from err
        raise
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"load_backbone: {name!r} builds a {type(model).__name__}; labkit needs a timm "
            "VisionTransformer (vit_* architectures)"
        )
    timm_cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}  # timm.create_model's
    cfg = dict(timm_cfg)
    source: Literal["random", "checkpoint", "pretrained"]
    recorded = None
    if checkpoint is not None:
        recorded = _recorded_rule(obj)
        if recorded == "dinov2" and _is_official_dinov2(state):
            state = _from_official_dinov2(state, model)
        _load_into(model, state, source=str(checkpoint))
        cfg.update(mean=IMAGENET_MEAN, std=IMAGENET_STD, file=str(checkpoint))
        cfg["labkit_weights"] = f"checkpoint {_short_path(Path(checkpoint))}" + (
            f" ({which})" if which == "student" else ""
        )
        source = "checkpoint"
    elif pretrained:
        cfg["labkit_weights"] = f"pretrained {timm_cfg.get('tag') or tag or 'default'}"
        cfg.setdefault("mean", IMAGENET_MEAN)
        cfg.setdefault("std", IMAGENET_STD)
        source = "pretrained"
    else:
        cfg.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        cfg["labkit_weights"] = (
            "random init" + (f", seed {seed}" if seed is not None else "") + missing_note
        )
        source = "random"
    rule: str = pos_embed_rule
    if rule == "auto":
        rule = rule_for_weights(source, name, checkpoint_rule=recorded)
    cfg["labkit_name"] = name
    cfg["pos_embed_rule"] = rule
    model.pretrained_cfg = cfg  # type: ignore[assignment]  # timm's attribute, not declared
    apply_rule(model, rule)  # type: ignore[arg-type]
    return model.to(resolve_device(device)).eval()


class PretrainedWeightsError(OSError):
    """Pretrained weights were asked for and are neither in the local cache nor downloadable."""


def _short_path(path: Path) -> str:
    """``folder/file`` (the run's folder tells checkpoint.pth files apart), or the file name."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def resolve_pretrained(
    name: str, pretrained: bool | Literal["auto"] | None, checkpoint: str | Path | None = None
) -> tuple[bool, str]:
    """Whether :func:`load_backbone` loads timm's pretrained weights for ``name``.

    Args:
        name: the timm name, with or without a pretrained tag.
        pretrained: True, False, None (True where ``name`` has a tag and there is no
            checkpoint) or ``"auto"`` (True where ``name`` has a tag, there is no checkpoint and
            the weights are in the local hub cache now).

    Returns:
        ``(load, note)``: ``note`` says why a tagged name gets no weights under ``"auto"``
        (empty otherwise), for :func:`weights_label`.

    Raises:
        ValueError: ``pretrained`` is none of the above.
    """
    tagged = "." in name and checkpoint is None
    if pretrained == "auto":
        load = tagged and in_local_cache(name) is not None
        note = (
            f" ({name} weights not in the local cache; labkit models lists them)"
            if tagged and not load
            else ""
        )
        return load, note
    if pretrained is None:
        return tagged, ""
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained: expected true, false or 'auto', got {pretrained!r}")
    return pretrained, ""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host resolves and accepts a connection (False offline)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False  # timm then reads the cache only, and fails at once if it is not there
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _pretrained_message(name: str, err: Exception) -> str:
    """One line: the model, the cache folder looked in, the two ways out, the hub's error."""
    import os

    try:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
        offline = bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        cache, offline = Path("~/.cache/huggingface/hub").expanduser(), False
    folder = cache / f"models--timm--{name}"
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    state = "HF_HUB_OFFLINE=1: " if offline or os.environ.get("HF_HUB_OFFLINE") else ""
    return (
        f"pretrained weights for {name!r} are not in the local cache ({folder}) and could not be "
        f"downloaded ({state}{reason}); run once with network access to download them, or pass "
        f"checkpoint=FILE with the weights file"
    )


def _stored_grid(state: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]) -> int | None:
    """Image side whose patch grid is the checkpoint's square position grid, or None.

    The embedding holds the patches' positions after 0 (timm's registers models) or 1 ([CLS])
    prefix positions; whichever leaves a square is the grid.
    """
    pos, proj = state.get("pos_embed"), state.get("patch_embed.proj.weight")
    if pos is None or proj is None or pos.ndim != 3:
        return None
    p = int(kwargs.get("patch_size", proj.shape[-1]))
    for prefix in (1, 0):
        side = math.isqrt(max(pos.shape[1] - prefix, 0))
        if side > 0 and side * side == pos.shape[1] - prefix:
            return side * p
    return None


def _is_official_dinov2(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k in state for k in ("register_tokens", "mask_token"))


def _from_official_dinov2(
    state: dict[str, torch.Tensor], model: VisionTransformer
) -> dict[str, torch.Tensor]:
    """facebookresearch/dinov2 key names to timm's, with timm's own converter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    return dict(checkpoint_filter_fn(dict(state), model))


def weights_label(model: torch.nn.Module) -> str:
    """Which network and weights made a figure, in words, for titles and reports.

    Returns:
        e.g. ``"vit_small_patch16_224.dino, pretrained dino"``, ``"vit_tiny_patch16_224,
        checkpoint checkpoint.pth"``, ``"vit_small_patch16_224, random init, seed 0"``.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("labkit_name") or cfg.get("architecture") or type(model).__name__
    label = f"{name}, {cfg.get('labkit_weights', 'weights unknown')}"
    stride = _conv_stride(model)
    if stride is not None and stride != patch_size(model):  # set_stride: a denser grid, say so
        label += f", stride {stride}"
    return label


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly into ``model``, resampling the position embedding if needed."""
    state = dict(state)
    own = model.state_dict()
    if (
        "pos_embed" in state
        and "pos_embed" in own
        and state["pos_embed"].shape != own["pos_embed"].shape
    ):
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
            f"(embed_dim={getattr(model, 'embed_dim', '?')}, "
            f"depth={len(getattr(model, 'blocks', []))}):\n"
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


def _conv_stride(model: torch.nn.Module) -> int | None:
    """The patch embedding convolution's (square) stride, or None where there is none."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    stride = getattr(proj, "stride", None)
    if stride is None:
        return None
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return int(stride[0]) if stride[0] == stride[1] else None


def patch_stride(model: torch.nn.Module) -> int:
    """Pixels between neighbouring patches: the patch size, unless :func:`set_stride` changed it.

    Returns:
        ``s`` as an int, ``1 <= s <= p``, ``p % s == 0``.
    """
    stride = _conv_stride(model)
    return patch_size(model) if stride is None else stride


def set_stride(model: torch.nn.Module, stride: int | None) -> torch.nn.Module:
    """Run the patch embedding with a stride ``s`` smaller than the patch size: denser maps.

    dino-vit-features' trick (Amir et al.): the patch embedding convolution (kernel ``p``) slides by
    ``s`` pixels instead of ``p``, so patches overlap and a frame of ``H' x W'`` pixels (cropped to
    multiples of ``p`` by :func:`prepare_images`) gives a grid of
    ``gh = (H' - p) // s + 1`` by ``gw = (W' - p) // s + 1`` (``labkit.geometry.stride_grid``).
    The position embedding is resampled to that grid on every forward pass by the model's rule
    (:mod:`labkit.pos_embed`), exactly as for a larger frame; the weights are unchanged. The cost:
    about ``(p / s)^2`` times the tokens, and attention cost grows with their square (stride
    ``p / 2``: 4x the tokens, up to 16x the attention). ``labkit.geometry`` maps such a grid to
    pixels (each pixel to the patch whose centre is nearest).

    Args:
        model: a timm VisionTransformer built with ``dynamic_img_size=True``
            (:func:`load_backbone` builds them so).
        stride: ``s`` in pixels, a divisor of ``p`` (so the grid covers the cropped frame exactly);
            None or ``p``: the model's own patch grid, bit-identical to an unchanged model.

    Returns:
        ``model``, changed in place (``model.patch_embed.proj.stride``); :func:`patch_stride`
        reads it back and :func:`weights_label` mentions it.

    Raises:
        ValueError: ``s`` not a divisor of ``p``, or a model whose patch grid is fixed.
    """
    p = patch_size(model)
    s = p if stride is None else stride
    if isinstance(s, bool) or not isinstance(s, int) or s < 1 or p % s:
        raise ValueError(
            f"set_stride: stride must be a divisor of the patch size {p}, got {stride}"
        )
    embed: Any = getattr(model, "patch_embed", None)
    proj = getattr(embed, "proj", None)
    if not isinstance(proj, torch.nn.Conv2d):
        raise ValueError(f"set_stride: {type(model).__name__} has no patch_embed.proj convolution")
    if s != p and not getattr(model, "dynamic_img_size", False):
        raise ValueError(
            "set_stride: the model has a fixed patch grid; build it with dynamic_img_size=True "
            "(labkit.models.load_backbone does)"
        )
    proj.stride = (s, s)
    return model


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
        raise ValueError(
            f"prepare_images: frames must be an ndarray or Tensor, got {type(frames).__name__}"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"prepare_images: frames must be (N, H, W, 3), got shape {tuple(frames.shape)}"
        )
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
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device, dtype=dtype).view(
        1, 3, 1, 1
    )
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device, dtype=dtype).view(
        1, 3, 1, 1
    )
    return torch.addcmul(shift, x, scale).contiguous()
