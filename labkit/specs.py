"""Model specs: one string names a backbone and its weights (evaluation, explorer, comparison).

Syntax::

    [LABEL=]ARCH[:WEIGHTS][#student]

    ARCH      a timm ViT name, e.g. vit_small_patch16_224, optionally with a timm pretrained tag
              (vit_small_patch16_224.dino: a tag means its weights, from the local hub cache or
              downloaded; ``labkit models`` lists them)
    WEIGHTS   a local checkpoint file in timm, DINO, DoRA or labkit format (everything after the
              first ':' is the path); the word `pretrained` for timm's weights of ARCH (from the
              local cache or the hub); `random` for a seeded random init even of a tagged ARCH,
              `random@SEED` for one with its own seed (else the evaluation's seed);
              `auto` for the tag's weights if they are in the local cache, else a random init
              (the label and metrics.json say which). No WEIGHTS: the tag's weights for a tagged
              ARCH, else a random init, seeded, so a random baseline is the same network on
              every run
    #student  take the student network of a DINO/DoRA/labkit training checkpoint (default: the
              teacher, the network DINO and DoRA evaluate)
    LABEL     the name in tables, figures and metrics.json; default: ``random-ARCH`` without
              weights, the checkpoint's file name (without suffix) with one, ``ARCH`` for
              ``pretrained``

Examples::

    vit_small_patch16_224                   random ViT-S/16, label random-vit_small_patch16_224
    random=vit_small_patch16_224            the same, labelled "random"
    random@s1=vit_small_patch16_224:random@1
                                            a random ViT-S/16 initialised with seed 1
    dino=vit_small_patch16_224:ckpt/dino_deitsmall16_pretrain.pth
    dora=vit_small_patch16_224:runs/train/checkpoint.pth#student
    vit_small_patch16_224.dino:pretrained   DINO ViT-S/16's weights (local cache or online); the
                                            same without ':pretrained'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from labkit.models import load_backbone

__all__ = ["ModelSpec", "parse_model_spec", "SPEC_SYNTAX"]

SPEC_SYNTAX = "[LABEL=]ARCH[:CHECKPOINT|:pretrained|:auto|:random[@SEED]][#student]"
_RANDOM_SEED = re.compile(r"^random@(-?\d+)$")  # random@3: a random init with seed 3
_ARCH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?$")
_LABEL = re.compile(r"^[^\s=:#/][^=:#]*$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec (see the module docstring for the syntax)."""

    label: str  # name in tables and metrics.json
    arch: str  # timm architecture (with an optional pretrained tag)
    checkpoint: str = ""  # local checkpoint file; empty: none
    pretrained: bool | Literal["auto"] = False  # timm's weights of ARCH; "auto": if cached
    which: Literal["teacher", "student"] = "teacher"  # network of a training checkpoint
    text: str = ""  # the spec as written
    seed: int | None = None  # a random init's own seed (random@SEED); None: the caller's seed

    @property
    def weights(self) -> str:
        """``"random"``, ``"random@SEED"``, ``"pretrained"``, ``"auto"`` or the checkpoint
        path."""
        if self.checkpoint:
            return self.checkpoint
        if self.seed is not None:
            return f"random@{self.seed}"
        return {True: "pretrained", False: "random"}.get(self.pretrained, "auto")  # type: ignore[arg-type]

    def load(
        self,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
        model_kwargs: dict[str, Any] | None = None,
        pos_embed_rule: str = "auto",
    ) -> torch.nn.Module:
        """Build the backbone (:func:`labkit.models.load_backbone`), random weights seeded.

        The random initialisation runs under a forked, seeded torch RNG: the same spec and seed
        give the same network, and the caller's RNG state is left as it was. A spec with its own
        seed (``random@SEED``) uses it instead of ``seed``.

        Raises:
            ValueError: naming the spec, when the architecture or the checkpoint does not load.
        """
        try:
            return load_backbone(
                self.arch,
                checkpoint=self.checkpoint or None,
                pretrained=self.pretrained,
                device=device,
                which=self.which,
                pos_embed_rule=pos_embed_rule,  # type: ignore[arg-type]
                seed=seed if self.seed is None else self.seed,
                **(model_kwargs or {}),
            )
        except Exception as err:  # timm raises many types (RuntimeError, TypeError, hub errors)
            raise ValueError(
                f"model spec {self.text or self.label!r} does not load: {err}"
            ) from err


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``[LABEL=]ARCH[:WEIGHTS][#student]`` (see the module docstring).

    Only the syntax and the checkpoint file's existence are checked here; whether the weights fit
    the architecture is checked by :meth:`ModelSpec.load`.

    Raises:
        ValueError: naming the spec and what is wrong with it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"model spec {text!r}: empty; expected {SPEC_SYNTAX}")
    spec = text.strip()
    rest = spec
    label = ""
    eq, colon = rest.find("="), rest.find(":")
    if eq != -1 and (colon == -1 or eq < colon):
        label, rest = rest[:eq].strip(), rest[eq + 1 :].strip()
        if not _LABEL.match(label):
            raise ValueError(
                f"model spec {spec!r}: label {label!r} must be non-empty and free of '=', ':', '#' "
                f"(syntax {SPEC_SYNTAX})"
            )
    which: Literal["teacher", "student"] = "teacher"
    nets: tuple[tuple[str, Literal["teacher", "student"]], ...] = (
        ("#student", "student"),
        ("#teacher", "teacher"),
    )
    for suffix, net in nets:
        if rest.endswith(suffix):
            rest, which = rest[: -len(suffix)], net
    arch, _, weights = rest.partition(":")
    arch, weights = arch.strip(), weights.strip()
    if not _ARCH.match(arch):
        raise ValueError(
            f"model spec {spec!r}: {arch!r} is not a timm architecture name (syntax {SPEC_SYNTAX}, "
            "e.g. dino=vit_small_patch16_224:path/to/checkpoint.pth)"
        )
    seeded = _RANDOM_SEED.match(weights)
    own_seed = int(seeded[1]) if seeded else None
    if seeded:
        weights = "random"
    keyword = {"pretrained": True, "auto": "auto", "random": False}
    pretrained: bool | Literal["auto"] = keyword.get(weights, False)  # type: ignore[assignment]
    checkpoint = "" if weights in keyword else weights
    if not weights and "." in arch:  # a tag means its weights, never a silent random init
        pretrained = True
    if ":" in rest and not weights:
        raise ValueError(
            f"model spec {spec!r}: nothing after ':' (a checkpoint path or 'pretrained')"
        )
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise ValueError(f"model spec {spec!r}: checkpoint file {checkpoint!r} not found")
    if which == "student" and not checkpoint:
        raise ValueError(f"model spec {spec!r}: '#student' needs a training checkpoint")
    if not label:
        if checkpoint:
            label = Path(checkpoint).stem + ("#student" if which == "student" else "")
        else:
            label = arch if pretrained is True else f"{'auto' if pretrained else 'random'}-{arch}"
            if own_seed is not None:  # random-ARCH@s1, as labkit.eval.seeds marks seeds
                label += f"@s{own_seed}"
    return ModelSpec(
        label=label,
        arch=arch,
        checkpoint=str(Path(checkpoint).expanduser()) if checkpoint else "",
        pretrained=pretrained,
        which=which,
        text=spec,
        seed=own_seed,
    )
