"""Position embeddings resized to a frame's patch grid as the weights' authors resize them.

A ViT stores one position embedding per patch of its training grid (M x M: 14 x 14 for a
ViT-S/16 at 224 px, 37 x 37 for DINOv2's ViT/14 at 518 px). A video frame has another grid
(gh x gw: 30 x 53 for a 480 x 854 frame and patch 16), so the embedding is resampled on every
forward pass. Three codebases do it three ways, and features differ between them by up to 3e-2
on non-square frames, so a model must be run with the rule its weights were trained with:

``"dino"``
    DINO's and DoRA's ``interpolate_pos_encoding`` (facebookresearch/dino and
    shashankvkt/DoRA_ICLR24, ``vision_transformer.py``): bicubic, no antialiasing, the output
    size given as a scale factor ``(g + 0.1) / M`` per side (the 0.1 avoids a floating-point
    round-down, dino issue #8); PyTorch then samples at that scale, not at ``M / g``.
``"timm"``
    timm's ``resample_abs_pos_embed``: bicubic to the exact size ``(gh, gw)``, antialiased
    (PyTorch's antialiased bicubic kernel, a = -0.5, also when upsampling).
``"dinov2"``
    DINOv2's hub models (facebookresearch/dinov2 ``hub/backbones.py``): without registers the
    DINO rule (offset 0.1, no antialias); with registers (``*_reg``) the exact size, antialiased,
    which is timm's rule.

In all three the grid the weights were trained on is returned unchanged, and the [CLS] (and,
where the embedding covers them, register) positions are not resampled.

Notation::

    M  side of the stored grid (Mh x Mw in general)   D  embedding dimension
    gh, gw  the frame's patch grid                     R  prefix positions in the embedding
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

PosEmbedRule = Literal["auto", "dino", "dinov2", "timm"]
POS_EMBED_RULES: tuple[str, ...] = ("dino", "dinov2", "timm")

__all__ = [
    "PosEmbedRule",
    "POS_EMBED_RULES",
    "check_rule",
    "resample_grid",
    "apply_rule",
    "model_rule",
    "rule_for_weights",
]


def check_rule(rule: object, *, allow_auto: bool = True, key: str = "pos_embed_rule") -> str:
    """Return ``rule`` if it names a rule, else raise a one-line ValueError naming ``key``."""
    allowed = (("auto",) if allow_auto else ()) + POS_EMBED_RULES
    if rule not in allowed:
        raise ValueError(f"{key}: {rule!r} is not one of {list(allowed)}")
    return str(rule)


def _interpolation(rule: str, has_registers: bool) -> tuple[float, bool]:
    """(offset, antialias) of a rule; offset 0 means 'resample to the exact size'."""
    if rule == "dino" or (rule == "dinov2" and not has_registers):
        return 0.1, False
    return 0.0, True  # "timm", and "dinov2" with registers


def resample_grid(
    grid: torch.Tensor,
    size: tuple[int, int],
    rule: Literal["dino", "dinov2", "timm"],
    *,
    has_registers: bool = False,
) -> torch.Tensor:
    """Resample a grid of position embeddings to ``size`` with one of the three rules.

    Args:
        grid: (1, Mh, Mw, D) position embeddings of the patches only.
        size: (gh, gw), the target patch grid.
        rule: ``"dino"``, ``"dinov2"`` or ``"timm"`` (see the module docstring).
        has_registers: for ``"dinov2"``: the model has register tokens (DINOv2's ``*_reg``
            models resample to the exact size, antialiased).

    Returns:
        (1, gh, gw, D) in ``grid``'s dtype; ``grid`` itself when ``size`` is its own grid.
    """
    check_rule(rule, allow_auto=False, key="rule")
    if grid.ndim != 4 or grid.shape[0] != 1:
        raise ValueError(f"resample_grid: grid must be (1, Mh, Mw, D), got {tuple(grid.shape)}")
    old_h, old_w = grid.shape[1:3]
    new_h, new_w = int(size[0]), int(size[1])
    if (new_h, new_w) == (old_h, old_w):
        return grid
    offset, antialias = _interpolation(rule, has_registers)
    x = grid.float().permute(0, 3, 1, 2)  # (1, D, Mh, Mw)
    if offset:
        scale = ((new_h + offset) / old_h, (new_w + offset) / old_w)
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=antialias)
    if tuple(x.shape[-2:]) != (new_h, new_w):  # the offset exists to make this never happen
        raise RuntimeError(f"resample_grid: got {tuple(x.shape[-2:])} for {(new_h, new_w)}")
    return x.permute(0, 2, 3, 1).to(grid.dtype)  # (1, gh, gw, D)


def _pos_embed_by_rule(self: Any, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` with the grid resampled by ``self.pos_embed_rule``.

    Args:
        x: (B, gh, gw, D) patch embeddings (``dynamic_img_size``) or (B, P, D).

    Returns:
        (B, N, D): prefix tokens ([CLS], registers) and patches, position embedding added.
    """
    prefix = []
    if self.cls_token is not None:
        prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
    if self.reg_token is not None:
        prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
    if x.ndim == 4:
        batch, gh, gw, dim = x.shape
        x = x.reshape(batch, gh * gw, dim)  # (B, P, D)
    else:
        gh, gw = self.patch_embed.grid_size
    if self.pos_embed is None:
        return self.pos_drop(torch.cat(prefix + [x], dim=1))
    covered = 0 if self.no_embed_class else self.num_prefix_tokens  # prefix positions stored
    old_h, old_w = self.patch_embed.grid_size
    stored = self.pos_embed[:, covered:].reshape(1, old_h, old_w, -1)  # (1, Mh, Mw, D)
    grid = resample_grid(
        stored,
        (gh, gw),
        self.pos_embed_rule,
        has_registers=bool(getattr(self, "num_reg_tokens", 0)),
    )
    pos = grid.reshape(1, gh * gw, -1)  # (1, P, D)
    if self.no_embed_class:  # registers and [CLS] carry no position embedding
        return self.pos_drop(torch.cat(prefix + [x + pos], dim=1))
    pos = torch.cat([self.pos_embed[:, :covered], pos], dim=1)  # (1, N, D)
    return self.pos_drop(torch.cat(prefix + [x], dim=1) + pos)


def apply_rule(model: torch.nn.Module, rule: Literal["dino", "dinov2", "timm"]) -> torch.nn.Module:
    """Make ``model`` (a timm VisionTransformer) resample its position embedding by ``rule``.

    Every forward pass of the model (``forward``, ``forward_features`` and labkit's extraction,
    which all call ``model._pos_embed``) then uses the rule. The rule is kept as
    ``model.pos_embed_rule`` and survives ``copy.deepcopy``.

    Returns:
        ``model``, changed in place.

    Raises:
        ValueError: an unknown rule, or a stored grid that is not ``patch_embed.grid_size``.
    """
    check_rule(rule, allow_auto=False)
    vit = cast("VisionTransformer", model)  # timm's attributes, typed
    if vit.pos_embed is not None:  # None: a ViT built with pos_embed="none" has nothing to resample
        stored = vit.pos_embed.shape[1] - (0 if vit.no_embed_class else vit.num_prefix_tokens)
        old_h, old_w = vit.patch_embed.grid_size
        if stored != old_h * old_w:
            raise ValueError(
                f"apply_rule: the position embedding holds {stored} patches, not the model's "
                f"{old_h}x{old_w} grid"
            )
    vit.pos_embed_rule = rule  # type: ignore[assignment]  # nn.Module's __getattr__ types it
    vit._pos_embed = types.MethodType(_pos_embed_by_rule, vit)  # type: ignore[method-assign]
    return model


def model_rule(model: torch.nn.Module) -> str:
    """The rule ``model`` resamples with: ``model.pos_embed_rule``, else timm's own (``"timm"``)."""
    return str(getattr(model, "pos_embed_rule", "timm"))


def rule_for_weights(
    source: Literal["random", "checkpoint", "pretrained"],
    name: str,
    *,
    checkpoint_rule: str | None = None,
) -> str:
    """The rule that ``"auto"`` means for a model's weights.

    Args:
        source: where the weights come from.
        name: the timm name, with its pretrained tag if any (``vit_small_patch16_224.dino``).
        checkpoint_rule: for a checkpoint file, the rule it records (labkit's training
            checkpoints do) or None; a file that records none is DINO's or DoRA's layout.

    Returns:
        ``"dinov2"`` for DINOv2 architectures; for a checkpoint file its recorded rule, else
        ``"dino"``; for timm's pretrained weights ``"dino"`` where the tag is DINO's
        (``.dino``), else ``"timm"``; for random weights ``"timm"``.
    """
    arch, _, tag = name.partition(".")
    if "dinov2" in arch:
        return "dinov2"
    if source == "checkpoint":
        return checkpoint_rule or "dino"
    if source == "pretrained" and tag.split("_")[0] == "dino":
        return "dino"
    return "timm"
