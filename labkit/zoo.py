"""The pretrained weights labkit supports, and whether each is on this machine now.

``labkit models`` prints :func:`zoo_table`. Each entry gives the name to pass
(``load_backbone(name)``, a notebook's ``model``, the CLI's ``--model``), the architecture's patch
size, heads and width, the position-embedding rule ``"auto"`` picks for it
(:mod:`labkit.pos_embed`) and where the weights come from. timm's pretrained tags load through
timm's own machinery from the Hugging Face hub or its local cache (``HF_HOME``, by default
``~/.cache/huggingface``); files (DINO's released backbones, DoRA's checkpoints) are passed as
``checkpoint=FILE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ZooEntry", "ZOO", "DEFAULT_PRETRAINED", "in_local_cache", "zoo_table", "format_zoo"]

#: The weights the demo and the notebooks use when they are in the local cache.
DEFAULT_PRETRAINED = "vit_small_patch16_224.dino"


@dataclass(frozen=True)
class ZooEntry:
    """One set of pretrained weights."""

    family: str  # "DINO", "DINOv2", "DINOv2 + registers", "DoRA"
    label: str  # short name in tables, e.g. "ViT-S/16"
    name: str  # what to pass as the model name
    patch: int
    heads: int
    dim: int
    registers: int
    rule: Literal["dino", "dinov2", "timm"]
    source: Literal["hub", "file"]
    origin: str  # where the weights come from, in words

    @property
    def repo_id(self) -> str:
        """The Hugging Face repository timm reads (``timm/<name>``); empty for files."""
        return f"timm/{self.name}" if self.source == "hub" else ""


def _dino(label: str, arch: str, patch: int, heads: int, dim: int, file: str) -> ZooEntry:
    return ZooEntry(
        "DINO",
        label,
        f"{arch}.dino",
        patch,
        heads,
        dim,
        0,
        "dino",
        "hub",
        f"timm hub (timm/{arch}.dino); the same weights as DINO's {file}",
    )


def _dinov2(label: str, arch: str, heads: int, dim: int, registers: int) -> ZooEntry:
    family = "DINOv2 + registers" if registers else "DINOv2"
    return ZooEntry(
        family,
        label,
        f"{arch}.lvd142m",
        14,
        heads,
        dim,
        registers,
        "dinov2",
        "hub",
        f"timm hub (timm/{arch}.lvd142m), facebookresearch/dinov2's weights",
    )


ZOO: tuple[ZooEntry, ...] = (
    _dino("ViT-S/16", "vit_small_patch16_224", 16, 6, 384, "dino_deitsmall16_pretrain.pth"),
    _dino("ViT-S/8", "vit_small_patch8_224", 8, 6, 384, "dino_deitsmall8_pretrain.pth"),
    _dino("ViT-B/16", "vit_base_patch16_224", 16, 12, 768, "dino_vitbase16_pretrain.pth"),
    _dino("ViT-B/8", "vit_base_patch8_224", 8, 12, 768, "dino_vitbase8_pretrain.pth"),
    _dinov2("ViT-S/14", "vit_small_patch14_dinov2", 6, 384, 0),
    _dinov2("ViT-B/14", "vit_base_patch14_dinov2", 12, 768, 0),
    _dinov2("ViT-L/14", "vit_large_patch14_dinov2", 16, 1024, 0),
    _dinov2("ViT-g/14", "vit_giant_patch14_dinov2", 24, 1536, 0),
    _dinov2("ViT-S/14 reg4", "vit_small_patch14_reg4_dinov2", 6, 384, 4),
    _dinov2("ViT-B/14 reg4", "vit_base_patch14_reg4_dinov2", 12, 768, 4),
    _dinov2("ViT-L/14 reg4", "vit_large_patch14_reg4_dinov2", 16, 1024, 4),
    _dinov2("ViT-g/14 reg4", "vit_giant_patch14_reg4_dinov2", 24, 1536, 4),
    ZooEntry(
        "DoRA",
        "ViT-S/16",
        "vit_small_patch16_224",
        16,
        6,
        384,
        0,
        "dino",
        "file",
        "a file: the backbone checkpoints listed under 'Pretrained models' in "
        "shashankvkt/DoRA_ICLR24's README (DoRA, WT-Venice or WT-all); pass checkpoint=FILE",
    ),
)


def in_local_cache(name: str) -> Path | None:
    """The cached weights file of a timm pretrained tag, or None.

    Looks in the Hugging Face hub cache (``HF_HUB_CACHE``, from ``HF_HOME``) for
    ``models--timm--<name>`` at its ``main`` revision, without any network access.

    Returns:
        The path of ``model.safetensors`` (or ``pytorch_model.bin``), or None.
    """
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(f"timm/{name}", filename)
        if isinstance(found, str):
            return Path(found)
    return None


def zoo_table() -> list[dict[str, object]]:
    """The zoo as rows for printing: every :class:`ZooEntry` field plus ``cached`` (bool or None).

    ``cached`` is None for weights that come as a file (labkit cannot know where it is).
    """
    rows = []
    for entry in ZOO:
        cached = None if entry.source == "file" else in_local_cache(entry.name) is not None
        rows.append({**entry.__dict__, "cached": cached})
    return rows


def format_zoo(rows: list[dict[str, object]]) -> str:
    """The table ``labkit models`` prints: one line per weights, then how to use them."""
    header = (
        f"{'family':<19} {'model':<14} {'patch':>5} {'heads':>5} {'dim':>5} {'rule':<7} "
        f"{'cached':<6} name to pass"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        cached = {True: "yes", False: "no", None: "file"}[row["cached"]]  # type: ignore[index]
        name = row["name"] if row["source"] == "hub" else f"{row['name']} + checkpoint=FILE"
        lines.append(
            f"{row['family']:<19} {row['label']:<14} {row['patch']:>5} {row['heads']:>5} "
            f"{row['dim']:>5} {row['rule']:<7} {cached:<6} {name}"
        )
    lines += [
        "",
        "cached: in the local Hugging Face cache now (HF_HOME); 'no' downloads on first use, "
        "online.",
        "Use: load_backbone(NAME), or model=NAME in a notebook, or --model NAME on the command "
        "line.",
        "DINO's .pth files and DoRA's checkpoints: model=vit_small_patch16_224 (or the matching",
        "architecture) with checkpoint=FILE; they resize position embeddings with DINO's rule.",
    ]
    return "\n".join(lines)
