"""High-norm "artifact" patch tokens of a ViT, layer by layer, and where [CLS] and registers look.

Darcet et al. found that large ViTs (DINOv2, OpenCLIP, DeiT-III) re-purpose a few patch tokens of
low-information background as global scratch space: their norm grows far above the rest (above
above 150 in DINOv2 ViT-L, a separate mode of the norm histogram), the [CLS] attention
concentrates on them, and their local information is gone. Register tokens added to the input
take that role over and the artifacts disappear. This module measures it, per block, in one pass.

Notation::

    B  images in a batch           L  blocks of the model (all of them, in order)
    h  attention heads             G  register tokens (DINOv2 "reg4": G = 4)
    R  prefix tokens = 1 + G       gh, gw  patch grid;  P = gh * gw patches
    n  layers whose register attention is kept (``register_layers``)

What is measured (:func:`token_artifacts`):

* ``norms[:, l]``: the L2 norm of each patch token at the **output of block l**, i.e. the residual
  stream before the model's final ``norm`` (which would rescale every token to about the same
  norm and hide the artifacts); ``embed_norms``: the tokens entering block 0 (patch embedding,
  position embedding, ``norm_pre``);
* ``outliers``: the outlier rule of :func:`outlier_mask` applied to each image's norms of each
  layer;
* ``cls_attention[:, l]``: block l's own [CLS] attention row over the patches (softmax over all
  N tokens, as in :func:`labkit.attention.cls_attention`); its keys are the tokens *entering*
  block l, so ``cls_outlier_mass[:, l]`` is the share of that row's patch mass on the patches that
  are outliers among block l's input (``outliers[:, l - 1]``, for block 0 the embedded patches):
  ``sum_{p outlier} a_p / sum_p a_p`` per head; a [CLS] that ignores norms scores the outlier
  fraction, one that reads the artifacts scores near 1;
* ``cls_register_mass[:, l]``: the share of block l's whole [CLS] row on the registers;
* ``register_attention``: each register's own attention row over the patches at the blocks in
  ``register_layers`` (as :func:`labkit.attention.register_attention`).

Efficiency: the blocks run once, as the model's own modules (fused attention, nothing N x N); a
hook on each block's qkv projection reads the R prefix queries and all keys, so only the (R, N)
rows are formed; per block only (B, P) norms and (B, h, P) attention are kept.

References:
    Darcet, Oquab, Mairal, Bojanowski, "Vision Transformers Need Registers", ICLR 2024
    (Sec. 2: artifacts are tokens of norm > 150 in DINOv2 ViT-L/14, about 2.37 % of patches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from labkit.attention import (
    attention_rows,
    block_index,
    patch_grid,
    tokens_before_block,
    vit_blocks,
)

__all__ = ["Artifacts", "OUTLIER_FACTOR", "outlier_mask", "token_artifacts"]

# A patch is an outlier when its norm exceeds OUTLIER_FACTOR times the median patch norm of its
# image and block. Darcet et al. cut DINOv2 ViT-L/14 at a fixed norm of 150, in the gap of a
# bimodal histogram (their Fig. 3); a fixed norm does not carry over to other models, widths and
# blocks, a multiple of the median does (the median is a normal token while fewer than half the
# patches are outliers). 3x rather than 2x: in a random-init ViT the embedding's norms follow
# pixel contrast and the brightest patches of a frame reach ~2.4x the median, which are not
# artifacts; artifacts sit several times above the bulk.
OUTLIER_FACTOR = 3.0


def outlier_mask(norms: torch.Tensor, factor: float = OUTLIER_FACTOR) -> torch.Tensor:
    """High-norm outlier patches: norm > ``factor`` x the median norm of the same map.

    The median is taken over the last two dims (one image's patches at one layer), with
    ``torch.median`` (the lower of the two middle values for an even count). Scale-free: the
    mask does not change when all norms of a map are multiplied by the same positive number.

    Args:
        norms: (..., gh, gw) non-negative token norms, e.g. (B, L, gh, gw) ``Artifacts.norms``.
        factor: how many medians above which a patch is an outlier; > 1.

    Returns:
        Bool tensor of ``norms``' shape, True on outlier patches.
    """
    if not factor > 1:
        raise ValueError(
            f"outlier_mask: factor must be > 1 (a multiple of the median), got {factor}"
        )
    if not isinstance(norms, torch.Tensor) or norms.ndim < 2:
        raise ValueError("outlier_mask: norms must be a tensor with at least 2 dims (..., gh, gw)")
    flat = norms.flatten(-2)  # (..., P)
    median = flat.median(dim=-1, keepdim=True).values  # (..., 1)
    return (flat > factor * median).reshape(norms.shape)


@dataclass(frozen=True)
class Artifacts:
    """Token norms, outliers and attention of every block for a batch (see the module docstring).

    Attributes:
        norms: (B, L, gh, gw) float32 patch-token norms at each block's output (before the
            final norm).
        embed_norms: (B, gh, gw) float32 norms of the patch tokens entering block 0.
        outliers: (B, L, gh, gw) bool, :func:`outlier_mask` of ``norms``.
        cls_attention: (B, L, h, gh, gw) float32, each block's [CLS] attention over the patches.
        cls_outlier_mass: (B, L, h) float32 in [0, 1], share of block l's [CLS] patch attention on
            the outliers of its input tokens (0 where there are none).
        cls_register_mass: (B, L, h) float32 in [0, 1], share of block l's whole [CLS] row on the
            registers, or None for a model without registers.
        register_attention: (B, n, G, h, gh, gw) float32, the registers' attention over the
            patches at ``register_layers``, or None (no registers, or no layers asked).
        register_layers: block indices (0 .. L-1) of ``register_attention``'s second axis.
        factor: the outlier rule's multiple of the median.
        num_registers: G, the model's register tokens (0 without).
    """

    norms: torch.Tensor
    embed_norms: torch.Tensor
    outliers: torch.Tensor
    cls_attention: torch.Tensor
    cls_outlier_mass: torch.Tensor
    cls_register_mass: torch.Tensor | None = None
    register_attention: torch.Tensor | None = None
    register_layers: tuple[int, ...] = ()
    factor: float = OUTLIER_FACTOR
    num_registers: int = 0

    def input_outliers(self) -> torch.Tensor:
        """(B, L, gh, gw) bool: outliers among the tokens entering each block (block 0: the
        embedding).
        """
        first = outlier_mask(self.embed_norms, self.factor)[:, None]  # (B, 1, gh, gw)
        return torch.cat([first, self.outliers[:, :-1]], dim=1)

    def outlier_fraction(self) -> torch.Tensor:
        """(B, L) float32: fraction of each image's patches that are outliers at each block's
        output.
        """
        return self.outliers.flatten(2).float().mean(-1)

    @staticmethod
    def concat(parts: Sequence[Artifacts]) -> Artifacts:
        """Batches of the same model and settings joined along B (e.g. a clip in batches)."""
        if not parts:
            raise ValueError("Artifacts.concat: nothing to join")

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        def cat_all(name: str) -> torch.Tensor:  # a field every part has
            return torch.cat([getattr(p, name) for p in parts])

        first = parts[0]
        return Artifacts(
            norms=cat_all("norms"),
            embed_norms=cat_all("embed_norms"),
            outliers=cat_all("outliers"),
            cls_attention=cat_all("cls_attention"),
            cls_outlier_mass=cat_all("cls_outlier_mass"),
            cls_register_mass=cat("cls_register_mass"),
            register_attention=cat("register_attention"),
            register_layers=first.register_layers,
            factor=first.factor,
            num_registers=first.num_registers,
        )

    def cpu(self) -> Artifacts:
        """The same on the CPU."""
        moved = {
            f.name: getattr(self, f.name).cpu()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def token_artifacts(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    factor: float = OUTLIER_FACTOR,
    register_layers: Sequence[int] = (-1,),
) -> Artifacts:
    """Patch-token norms, outliers and [CLS]/register attention of every block, in one pass.

    Runs under ``torch.inference_mode``; the blocks run as the model's modules (fused attention);
    a forward hook on each block's qkv projection computes the (R, N) attention rows of the prefix
    tokens, so no N x N matrix is formed.

    References:
        Darcet et al., "Vision Transformers Need Registers", ICLR 2024.

    Args:
        model: a timm VisionTransformer with a [CLS] token (:func:`labkit.models.load_backbone`).
        images: (B, 3, H, W) normalised batch, H and W multiples of the patch size.
        factor: the outlier rule's multiple of the median (:func:`outlier_mask`).
        register_layers: blocks (negative counts from the end) whose register attention maps are
            kept; ignored for a model without registers; ``()`` keeps none.

    Returns:
        :class:`Artifacts` on the images' device (shapes in its docstring).
    """
    blocks = vit_blocks(model, attention=True)
    depth = len(blocks)
    grid = patch_grid(model, images)
    vit: Any = model  # timm's attributes (untyped on nn.Module)
    num_prefix = int(vit.num_prefix_tokens)
    num_registers = int(getattr(model, "num_reg_tokens", 0) or 0)
    keep = sorted({block_index(i, depth) for i in register_layers}) if num_registers else []
    outlier_mask(torch.ones(1, 1), factor)  # validates factor before the pass

    norms: list[torch.Tensor] = []
    cls_rows: list[torch.Tensor] = []
    cls_prefix: list[torch.Tensor] = []
    reg_maps: list[torch.Tensor] = []

    def rows_of(block_index: int, attn: Any):  # a timm Attention
        def hook(_module: torch.nn.Module, _inputs: tuple, qkv: torch.Tensor) -> None:
            batch, num_tokens, _ = qkv.shape
            qkv = qkv.view(batch, num_tokens, 3, attn.num_heads, attn.head_dim)  # (B, N, 3, h, d)
            q = attn.q_norm(qkv[:, :num_prefix, 0])  # (B, R, h, d): [CLS] and register queries
            k = attn.k_norm(qkv[:, :, 1])  # (B, N, h, d)
            maps, prefix = attention_rows(
                attn, q, k, num_prefix, grid
            )  # (B, R, h, gh, gw), (B, R, h, R)
            cls_rows.append(maps[:, 0])
            cls_prefix.append(prefix[:, 0])
            if block_index in keep:
                reg_maps.append(maps[:, num_prefix - num_registers :])  # (B, G, h, gh, gw)

        return hook

    def patch_norms(x: torch.Tensor) -> torch.Tensor:
        patches = x[:, num_prefix:].float()  # (B, P, D)
        return patches.norm(dim=-1).reshape(x.shape[0], *grid)  # (B, gh, gw)

    attns: list[Any] = [b.attn for b in blocks]  # timm Attention modules (vit_blocks checked)
    handles = [a.qkv.register_forward_hook(rows_of(i, a)) for i, a in enumerate(attns)]
    try:
        with torch.inference_mode():
            x = tokens_before_block(model, images, 0)  # (B, N, D) entering block 0
            embed = patch_norms(x)
            for block in blocks:
                x = block(x)
                norms.append(patch_norms(x))
    finally:
        for handle in handles:
            handle.remove()

    norms_t = torch.stack(norms, dim=1)  # (B, L, gh, gw)
    outliers = outlier_mask(norms_t, factor)
    attention = torch.stack(cls_rows, dim=1)  # (B, L, h, gh, gw)
    inputs = torch.cat(
        [outlier_mask(embed, factor)[:, None], outliers[:, :-1]], dim=1
    )  # (B, L, gh, gw)
    on_outliers = (attention * inputs[:, :, None]).flatten(3).sum(-1)  # (B, L, h)
    total = attention.flatten(3).sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
    prefix = torch.stack(cls_prefix, dim=1)  # (B, L, h, R)
    return Artifacts(
        norms=norms_t,
        embed_norms=embed,
        outliers=outliers,
        cls_attention=attention,
        cls_outlier_mass=on_outliers / total,
        cls_register_mass=prefix[..., num_prefix - num_registers :].sum(-1)
        if num_registers
        else None,
        register_attention=torch.stack(reg_maps, dim=1) if reg_maps else None,
        register_layers=tuple(keep),
        factor=float(factor),
        num_registers=num_registers,
    )
