"""Attention maps and patch features of a timm ViT, without ever forming an N x N attention matrix.

This module is the one path from frames to features: everything in labkit that needs a ViT's
per-block attention, tokens, queries, keys or values (the attention workflow, the explorer, the
evaluation, the DoRA teacher, the token-norm study) gets them here.

Notation::

    T  frames of a video           B  images in a batch      h  attention heads
    d  channels per head           D  embedding dimension = h * d for the ViTs labkit loads
    N  tokens = R + P              R  prefix tokens ([CLS] and registers)
    G  register tokens (R = 1 + G with a [CLS] token; DINOv2 "reg4": G = 4)
    P  patches = gh * gw           gh, gw  patch grid (rows, columns)
    L  the chosen block (``layer``; negative counts from the end as in Python)

The API, from the top::

    extract_video(model, video, indices, layer=, attention=, kinds=, batch_size=, device=,
                  progress=)       frames -> features of the whole clip, stacked on the CPU
    extract_batches(...)           the same, one batch at a time, left on the device (for work
                                   that streams, e.g. the evaluation's label propagation)
    image_batches(model, video, indices, batch_size=, device=)
                                   THE batching loop: chunks of frames, cropped to the patch grid
                                   and normalised (labkit.models.prepare_images), on the device
    extract(model, images, layer=, attention=, kinds=, registers=)
                                   one batch of images -> an Extraction
    cls_attention / register_attention / patch_features
                                   one-line shorthands for extract

and the pieces :func:`extract` is built from, public for the passes that need a block's inside
(``labkit.artifacts`` reads every block, ``labkit.train.step``'s teacher needs gradients off):
:func:`vit_blocks` (checks the model), :func:`block_index`, :func:`patch_grid`,
:func:`tokens_before_block`, :func:`run_block`, :func:`split_qkv`, :func:`attention_rows`.

How one extraction runs (:func:`extract`): the patch embedding and blocks ``0 .. L-1`` run as the
model's own modules, each keeping its fused attention (``F.scaled_dot_product_attention``, which
on CPU and GPU works block-wise and never stores the N x N matrix). For block ``L``:

* the [CLS] query's attention row is ``softmax(q_cls k^T * d^-0.5)`` over all N keys, computed
  from the block's own ``norm1 -> qkv -> q_norm/k_norm``: an (h, N) row per image, not an
  (h, N, N) matrix; its P patch columns are the attention maps, its R prefix columns ([CLS]
  itself, then the registers) are kept apart (``prefix_attention``);
* with ``registers=True`` the G register queries' rows are computed the same way (G x N, not
  N x N), split into their patch columns (``register_attention``) and prefix columns;
* if only attention, keys, queries or values are asked for, the rest of block ``L`` (the attention
  output, the projection, the MLP) and the blocks after it are not run; the qkv projection
  computes just the keys, the values if asked, and, unless queries are asked for, the [CLS] query
  (the R prefix queries with registers);
* ``"tokens"`` runs block ``L`` whole (reading q, k and v off its qkv projection with a hook) and
  applies the model's final norm.

Token order is timm's: ``[CLS]``, then the G registers, then the patches row-major, so the
registers are tokens ``R - G .. R - 1``; R and G come from the model (``num_prefix_tokens``,
``num_reg_tokens``), never assumed.

Feature kinds (each (B, gh, gw, D), patch tokens only, prefix tokens dropped; the "facets" of
Amir et al.'s dino-vit-features):

* ``"tokens"``: output of block ``L`` passed through the model's final ``norm``, for every ``L``
  (the convention of DINO's ``get_intermediate_layers``, which its video segmentation uses for the
  last block); the prefix tokens' outputs are kept in ``Extraction.prefix_tokens``;
* ``"keys"`` / ``"queries"``: block ``L``'s keys / queries as its attention uses them (after
  ``k_norm``/``q_norm`` where the model has qk-norm, before the ``d^-0.5`` scale), heads
  concatenated head-major: channel ``i * d + j`` is channel ``j`` of head ``i``;
* ``"values"``: block ``L``'s values, heads concatenated the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from labkit.geometry import stride_grid
from labkit.models import patch_size, patch_stride, prepare_images
from labkit.video import frame_batches

__all__ = [
    "FEATURE_KINDS",
    "Extraction",
    "FeatureKind",
    "attention_rows",
    "block_index",
    "cls_attention",
    "extract",
    "extract_batches",
    "extract_video",
    "image_batches",
    "mass_threshold",
    "patch_features",
    "patch_grid",
    "register_attention",
    "run_block",
    "split_qkv",
    "tokens_before_block",
    "vit_blocks",
]

FeatureKind = Literal["tokens", "keys", "queries", "values"]
FEATURE_KINDS: tuple[str, ...] = ("tokens", "keys", "queries", "values")
Progress = bool | Callable[[int, int], None]


@dataclass(frozen=True)
class Extraction:
    """What one pass through a ViT gave.

    Each attention row is one softmax over all N tokens, split into its patch columns (maps) and
    its R prefix columns, so ``attention.sum((-2, -1)) + prefix_attention.sum(-1) == 1`` and the
    same for each register's row.

    Attributes:
        attention: (B, h, gh, gw) float32 [CLS] attention over the patches, or None if not asked.
        features: feature kind -> (B, gh, gw, D) tensor.
        indices: frame indices the rows belong to (set by :func:`extract_video` and
            :func:`extract_batches`), else None.
        prefix_attention: (B, h, R) float32 [CLS] attention to the prefix tokens (column 0: [CLS]
            itself, columns 1 .. G: the registers), set with ``attention``, else None.
        register_attention: (B, G, h, gh, gw) float32, each register token's own attention (its
            query row) over the patches, set with ``registers=True``, else None.
        register_prefix_attention: (B, G, h, R) float32, the registers' attention to the prefix
            tokens, set with ``register_attention``, else None.
        prefix_tokens: (B, R, D) the prefix tokens' outputs after the final norm (row 0: [CLS]),
            set with ``"tokens"``, else None. With ``features["tokens"]`` they are the whole
            sequence ``model.forward_features`` gives at the last block.
    """

    attention: torch.Tensor | None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    indices: np.ndarray | None = None
    prefix_attention: torch.Tensor | None = None
    register_attention: torch.Tensor | None = None
    register_prefix_attention: torch.Tensor | None = None
    prefix_tokens: torch.Tensor | None = None

    @property
    def cls_register_attention(self) -> torch.Tensor | None:
        """(B, h, G) float32: the [CLS] query's attention to each register, or None."""
        if self.prefix_attention is None:
            return None
        return self.prefix_attention[..., 1:]

    def all_tokens(self) -> torch.Tensor:
        """(B, N, D) the final-norm tokens in timm's order: ``prefix_tokens``, then the patches.

        Raises:
            ValueError: the extraction has no ``"tokens"``.
        """
        tokens = self.features.get("tokens")
        if tokens is None or self.prefix_tokens is None:
            raise ValueError("Extraction.all_tokens: extract with kinds including 'tokens'")
        return torch.cat([self.prefix_tokens, tokens.flatten(1, 2)], dim=1)  # (B, R + P, D)


def cls_attention(model: torch.nn.Module, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Per-head attention of the [CLS] query over the patches at one block.

    The softmax runs over all N tokens as in the block itself (so a head's map over the patches
    sums to at most 1: the rest went to [CLS] and the registers). Numerically the same as row 0 of
    the block's attention matrix, without forming that matrix.

    Args:
        model: a timm VisionTransformer with a class token
            (see :func:`labkit.models.load_backbone`).
        images: (B, 3, H, W) normalised batch, H and W multiples of the patch size
            (:func:`labkit.models.prepare_images` crops and normalises frames).
        layer: block index, negative counts from the end (-1: the last block).

    Returns:
        Tensor (B, h, gh, gw), float32, values in [0, 1], on the images' device.
    """
    maps = extract(model, images, layer, attention=True, kinds=()).attention
    if maps is None:  # pragma: no cover - attention=True computes it
        raise ValueError("cls_attention: the extraction returned no [CLS] attention")
    return maps


def register_attention(
    model: torch.nn.Module, images: torch.Tensor, layer: int = -1
) -> torch.Tensor:
    """Per-head attention of each register token's query over the patches at one block.

    The register's own row of the block's attention matrix (DINOv2 with registers: the tokens
    Darcet et al. added to absorb the high-norm "artifact" patches), softmax over all N tokens as
    in the block, patch columns kept. The [CLS] maps (:func:`cls_attention`) do not include it.

    References:
        Darcet et al., "Vision Transformers Need Registers", ICLR 2024.

    Args:
        model: a timm VisionTransformer with register tokens (``num_reg_tokens > 0``, e.g.
            ``vit_small_patch14_reg4_dinov2``).
        images: (B, 3, H, W) normalised batch, H and W multiples of the patch size.
        layer: block index, negative counts from the end.

    Returns:
        Tensor (B, G, h, gh, gw), float32, values in [0, 1], on the images' device; G registers
        in token order.

    Raises:
        ValueError: the model has no register tokens.
    """
    out = extract(model, images, layer, attention=False, kinds=(), registers=True)
    if out.register_attention is None:  # pragma: no cover - registers=True computes it
        raise ValueError("register_attention: the extraction returned no register attention")
    return out.register_attention


def patch_features(
    model: torch.nn.Module, images: torch.Tensor, layer: int = -1, kind: FeatureKind = "tokens"
) -> torch.Tensor:
    """Patch features of one block for clustering and embeddings (kinds: see the module docstring).

    Args:
        model: a timm VisionTransformer.
        images: (B, 3, H, W) normalised batch, H and W multiples of the patch size.
        layer: block index, negative counts from the end.
        kind: ``"tokens"`` (block output after the final norm), ``"keys"``, ``"queries"`` or
            ``"values"``.

    Returns:
        Tensor (B, gh, gw, D) in the model's dtype on the images' device.
    """
    return extract(model, images, layer, attention=False, kinds=(kind,)).features[kind]


def extract(
    model: torch.nn.Module,
    images: torch.Tensor,
    layer: int = -1,
    *,
    attention: bool = True,
    kinds: Sequence[FeatureKind] = ("tokens",),
    registers: bool = False,
    inference: bool = True,
) -> Extraction:
    """[CLS] attention, register attention and patch features of one block from one forward pass.

    Blocks keep their fused attention, nothing N x N is formed, and no block after ``layer`` runs
    (nor the rest of block ``layer`` unless ``"tokens"`` is asked). Results are on the images'
    device; features in the images' dtype, attention always float32.

    Args:
        model: a timm VisionTransformer (class token needed for the attention).
        images: (B, 3, H, W) normalised batch, H and W multiples of the patch size.
        layer: block index, negative counts from the end.
        attention: compute the [CLS] attention maps (and ``prefix_attention``).
        kinds: feature kinds to return, any of ``"tokens"``, ``"keys"``, ``"queries"``,
            ``"values"``.
        registers: compute each register token's attention (``register_attention`` and
            ``register_prefix_attention``); the model must have register tokens.
        inference: run under ``torch.inference_mode`` (results are inference tensors: no
            autograd through them, and they cannot be saved for a backward pass). False runs
            under the caller's grad mode: the DoRA teacher runs under ``torch.no_grad`` because
            its outputs become the loss's targets.

    Returns:
        :class:`Extraction` with ``attention`` (B, h, gh, gw) float32 or None, ``prefix_attention``
        (B, h, R) float32 or None, ``register_attention`` (B, G, h, gh, gw) float32 or None,
        ``register_prefix_attention`` (B, G, h, R) float32 or None, ``features``
        {kind: (B, gh, gw, D)} and ``prefix_tokens`` (B, R, D) with ``"tokens"``.
    """
    kinds = tuple(dict.fromkeys(kinds))  # unique, order kept
    bad = [k for k in kinds if k not in FEATURE_KINDS]
    if bad:
        raise ValueError(f"extract: unknown feature kind(s) {bad}; choose from {FEATURE_KINDS}")
    if not attention and not kinds and not registers:
        raise ValueError(
            "extract: nothing to compute (attention=False, registers=False, no feature kinds)"
        )
    blocks = vit_blocks(model, attention)
    num_registers = int(getattr(model, "num_reg_tokens", 0) or 0)
    if registers and num_registers == 0:
        raise ValueError(
            f"extract: registers=True but {type(model).__name__} has no register tokens "
            "(num_reg_tokens = 0); e.g. vit_small_patch14_reg4_dinov2 has 4"
        )
    index = block_index(layer, len(blocks))
    grid = patch_grid(model, images)
    vit: Any = model  # timm's attributes (untyped on nn.Module)
    num_prefix: int = vit.num_prefix_tokens

    with torch.inference_mode() if inference else contextlib.nullcontext():
        x = tokens_before_block(model, images, index)  # (B, N, D)
        block: Any = blocks[index]  # a timm Block (vit_blocks checked it)
        v: torch.Tensor | None
        if "tokens" in kinds:
            out, qkv = run_block(block, x)
            q, k, v = split_qkv(block.attn, qkv)  # (B, N, h, d) each
            tokens = vit.norm(out)  # (B, N, D)
        else:
            # queries of every token, of the prefix tokens (registers' rows), or of [CLS] only
            num_queries = x.shape[1] if "queries" in kinds else num_prefix if registers else 1
            q, k, v = _project_qkv(block, x, num_queries, values="values" in kinds)
            tokens = None

        result: dict[str, torch.Tensor] = {}
        for kind in kinds:
            src = {"tokens": tokens, "keys": k, "queries": q, "values": v}[kind]
            patches = src[:, num_prefix:]  # (B, P, D) or (B, P, h, d)
            result[kind] = patches.reshape(
                patches.shape[0], *grid, -1
            ).contiguous()  # (B, gh, gw, D)
        maps = cls_prefix = reg_maps = reg_prefix = None
        if attention:
            maps, cls_prefix = attention_rows(block.attn, q[:, :1], k, num_prefix, grid)
            maps, cls_prefix = maps[:, 0], cls_prefix[:, 0]  # (B, h, gh, gw), (B, h, R)
        if registers:
            first = num_prefix - num_registers  # registers follow [CLS] in timm's token order
            reg_maps, reg_prefix = attention_rows(
                block.attn, q[:, first:num_prefix], k, num_prefix, grid
            )
    return Extraction(
        attention=maps,
        features=result,
        prefix_attention=cls_prefix,
        register_attention=reg_maps,
        register_prefix_attention=reg_prefix,
        prefix_tokens=None if tokens is None else tokens[:, :num_prefix].contiguous(),
    )


def vit_blocks(model: torch.nn.Module, attention: bool = True) -> torch.nn.ModuleList:
    """The model's blocks, after checking it is a ViT this module can read.

    Args:
        model: a timm VisionTransformer (:func:`labkit.models.load_backbone`).
        attention: also require a [CLS] token (for [CLS] attention).

    Returns:
        ``model.blocks``, L blocks, each a timm block with ``norm1`` and a timm ``Attention``.

    Raises:
        ValueError: not a timm VisionTransformer, a block of another kind, or no [CLS] token
            while ``attention`` is asked.
    """
    from timm.layers import Attention

    blocks = getattr(model, "blocks", None)
    needed = ("patch_embed", "_pos_embed", "norm_pre", "norm", "num_prefix_tokens")
    if blocks is None or any(not hasattr(model, a) for a in needed):
        raise ValueError(
            f"{type(model).__name__} is not a timm VisionTransformer (needs blocks, patch_embed, "
            "_pos_embed, norm); build one with labkit.models.load_backbone"
        )
    for i, block in enumerate(blocks):
        if not isinstance(getattr(block, "attn", None), Attention) or not hasattr(block, "norm1"):
            raise ValueError(
                f"block {i} of {type(model).__name__} is a {type(block).__name__} without a timm "
                "Attention after norm1; labkit reads q and k from timm's standard ViT block only"
            )
    if attention and getattr(model, "cls_token", None) is None:
        raise ValueError(f"{type(model).__name__} has no [CLS] token, so it has no [CLS] attention")
    return blocks


def block_index(layer: int, depth: int) -> int:
    """``layer`` (negative counts from the end) as an index in ``0 .. depth - 1``.

    Raises:
        ValueError: ``layer`` is not in ``-depth .. depth - 1``.
    """
    if not -depth <= layer < depth:
        raise ValueError(f"layer {layer} out of range for a model with {depth} blocks")
    return layer % depth


def patch_grid(model: torch.nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """(gh, gw) of a batch, after checking its shape.

    Args:
        model: a timm ViT (its patch size is read with :func:`labkit.models.patch_size`).
        images: (B, 3, H, W) normalised float batch.

    Returns:
        ``(H // p, W // p)``; with overlapping patches (:func:`labkit.models.set_stride`, stride
        ``s``) ``((H - p) // s + 1, (W - p) // s + 1)``.

    Raises:
        ValueError: not a (B, 3, H, W) float tensor, or H or W not a multiple of the patch size.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a normalised float batch, got {images.dtype}; "
            "use labkit.models.prepare_images on uint8 frames"
        )
    p = patch_size(model)
    height, width = images.shape[-2:]
    if height % p or width % p:
        raise ValueError(
            f"images of {height}x{width} are not multiples of the patch size {p}; "
            "labkit.models.prepare_images crops them (top-left kept)"
        )
    s = patch_stride(model)
    if s != p:
        return stride_grid(height, p, s), stride_grid(width, p, s)
    return height // p, width // p


def tokens_before_block(model: Any, images: torch.Tensor, index: int) -> torch.Tensor:
    """Tokens entering block ``index``: embedding, position embedding, blocks ``0 .. index-1``.

    Args:
        model: a timm VisionTransformer (checked with :func:`vit_blocks`).
        images: (B, 3, H, W) normalised batch.
        index: block index in ``0 .. L - 1`` (:func:`block_index`); 0 gives the embedded tokens.

    Returns:
        (B, N, D) in timm's token order, in the current grad mode.
    """
    x = model.patch_embed(images)  # (B, gh, gw, D) with dynamic_img_size, else (B, P, D)
    x = model._pos_embed(x)  # (B, N, D): prefix tokens prepended, position embedding resampled
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for block in model.blocks[:index]:
        x = block(x)
    return x


def run_block(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``block`` as it is (fused attention) and keep its qkv projection.

    Args:
        block: a timm ViT block (:func:`vit_blocks`).
        x: (B, N, D) tokens entering it.

    Returns:
        ``(out, qkv)``: the block's output (B, N, D) and its qkv projection (B, N, 3 * h * d),
        read with a forward hook that is removed again.
    """
    captured: list[torch.Tensor] = []
    attn: Any = block.attn  # timm's Attention (untyped on nn.Module)
    handle = attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        out = block(x)
    finally:
        handle.remove()
    return out, captured[0]


def split_qkv(attn: Any, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of a block's attention from its qkv projection.

    Args:
        attn: the block's timm ``Attention`` (``num_heads``, ``head_dim``, ``q_norm``, ``k_norm``).
        qkv: (B, N, 3 * h * d) output of ``attn.qkv``.

    Returns:
        ``(q, k, v)``, each (B, N, h, d); q and k after ``q_norm`` / ``k_norm`` (identity without
        qk-norm), as the attention uses them, before the ``d^-0.5`` scale.
    """
    batch, num_tokens, _ = qkv.shape
    qkv = qkv.view(batch, num_tokens, 3, attn.num_heads, attn.head_dim)  # (B, N, 3, h, d)
    return attn.q_norm(qkv[:, :, 0]), attn.k_norm(qkv[:, :, 1]), qkv[:, :, 2]


def _project_qkv(
    block: Any, x: torch.Tensor, num_queries: int, values: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys of all tokens (B, N, h, d), queries of the first ``num_queries`` tokens (B, n, h, d)
    and, with ``values``, the values of all tokens (B, N, h, d), else None.

    Uses the q, k (and v) rows of the block's qkv weight, so nothing else is projected.
    """
    attn = block.attn
    y = block.norm1(x)  # (B, N, D)
    width = attn.num_heads * attn.head_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias  # (3 * h * d, D), rows ordered (q, k, v)

    def rows(i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        part = slice(i * width, (i + 1) * width)
        return weight[part], (bias[part] if bias is not None else None)

    batch = y.shape[0]
    heads = (batch, -1, attn.num_heads, attn.head_dim)
    k = attn.k_norm(F.linear(y, *rows(1)).view(heads))  # (B, N, h, d)
    q = attn.q_norm(F.linear(y[:, :num_queries], *rows(0)).view(heads))  # (B, n, h, d)
    v = F.linear(y, *rows(2)).view(heads) if values else None  # (B, N, h, d)
    return q, k, v


def attention_rows(
    attn: Any, q: torch.Tensor, k: torch.Tensor, num_prefix: int, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention rows of n queries over all N keys, split into patch and prefix columns.

    ``softmax(q k^T * d^-0.5)`` per head as the block computes it, for n query tokens only, so an
    (n, N) row block is formed, never N x N.

    Args:
        attn: the block's timm ``Attention`` (its ``scale``).
        q: (B, n, h, d) queries (after ``q_norm``), e.g. ``q[:, :1]`` for [CLS].
        k: (B, N, h, d) keys of all tokens (after ``k_norm``).
        num_prefix: R, the prefix tokens before the patches.
        grid: (gh, gw), with gh * gw = N - R.

    Returns:
        ``(maps, prefix)``: the patch columns (B, n, h, gh, gw) and the prefix columns (B, n, h, R),
        float32; together each row sums to 1.
    """
    q = q * attn.scale  # (B, n, h, d); scaled before the product, as timm's block does
    # b image, m query, n key, h head, d channel
    logits = torch.einsum("bmhd,bnhd->bmhn", q, k)  # (B, n, h, N)
    weights = logits.float().softmax(dim=-1)  # (B, n, h, N)
    maps = weights[..., num_prefix:].reshape(*weights.shape[:3], *grid)  # (B, n, h, gh, gw)
    return maps.contiguous(), weights[..., :num_prefix].contiguous()


def _frame_indices(video: Any, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """``indices`` as int64 (T,), checked against the video's length; None: every frame."""
    if isinstance(video, np.ndarray) and (video.ndim != 4 or video.shape[-1] != 3):
        raise ValueError(f"frames must be a uint8 (T, H, W, 3) array, got shape {video.shape}")
    indices = (
        np.arange(len(video))
        if indices is None
        else np.asarray(indices, dtype=np.int64).reshape(-1)
    )
    if indices.size == 0:
        raise ValueError("no frame indices to process")
    if indices.min() < 0 or indices.max() >= len(video):
        raise ValueError(f"frame indices out of range for a video of {len(video)} frames")
    return indices


def _model_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, or the model's where None, after checking the model is there."""
    param = next(model.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    if device is None:
        return here
    want = torch.device(device)
    if here.type != want.type or (want.index is not None and here.index != want.index):
        if not (want.type == "cuda" and want.index is None and here.type == "cuda"):
            raise ValueError(f"the model is on {here}, device is {device}")
    return want


def image_batches(
    model: torch.nn.Module,
    video: Any,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    """Frames of a video as model input, one batch at a time: the one batching loop of labkit.

    Frames are decoded batch by batch (:func:`labkit.video.frame_batches`), cropped to the patch
    grid (top-left kept) and normalised with :func:`labkit.models.prepare_images`, then moved to
    ``device``. Only one batch of frames is held at a time.

    Args:
        model: a timm VisionTransformer (its patch size and normalisation are used).
        video: a :class:`labkit.video.Video`, a uint8 (T, H, W, 3) array of frames, or anything
            with ``__len__`` and ``get(indices)`` returning uint8 (n, H, W, 3).
        indices: frames to process, in this order; None for all frames.
        batch_size: n, frames per batch (the last may be shorter).
        device: where the images go; None: the model's device. The model must be there.
        dtype: floating dtype of the images.

    Yields:
        ``(indices, frames, images)``: int64 (n,) frame numbers, the uint8 (n, H, W, 3) frames as
        read, and the (n, 3, gh * p, gw * p) normalised images on ``device``.

    Raises:
        ValueError: ``batch_size`` < 1, no or out-of-range indices, the model on another device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = _frame_indices(video, indices)
    where = _model_device(model, device)
    for idx, frames in frame_batches(video, indices, batch_size):
        yield idx, frames, prepare_images(frames, model, device=where, dtype=dtype)


def extract_batches(
    model: torch.nn.Module,
    video: Any,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    layer: int = -1,
    attention: bool = True,
    kinds: Sequence[FeatureKind] = (),
    registers: bool = False,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[np.ndarray, Extraction]]:
    """:func:`extract` over a video, one batch at a time, results left on the device.

    For work that streams over a long video (label propagation, tracking, films): nothing is
    stacked. :func:`extract_video` is this loop with the results stacked on the CPU.

    Args:
        model, video, indices, batch_size, device, dtype: as in :func:`image_batches`.
        layer, attention, kinds, registers: as in :func:`extract`.

    Yields:
        ``(frames, extraction)``: the uint8 (n, H, W, 3) frames as read and their
        :class:`Extraction` on ``device`` (``extraction.indices``: int64 (n,) frame numbers).
    """
    kinds = tuple(dict.fromkeys(kinds))
    for idx, frames, images in image_batches(
        model, video, indices, batch_size=batch_size, device=device, dtype=dtype
    ):
        out = extract(model, images, layer, attention=attention, kinds=kinds, registers=registers)
        yield frames, replace(out, indices=idx)


def extract_video(
    model: torch.nn.Module,
    video: Any,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    layer: int = -1,
    attention: bool = True,
    kinds: Sequence[FeatureKind] = (),
    registers: bool = False,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Progress = True,
) -> Extraction:
    """Stream frames of a video through the model in batches and stack the results on the CPU.

    The frames -> features path of labkit: frames are read, cropped and normalised batch by
    batch (:func:`image_batches`), passed to :func:`extract`, and each batch's results are moved
    to the CPU before the next batch is read.

    Args:
        model: a timm VisionTransformer.
        video: a :class:`labkit.video.Video`, a uint8 (T, H, W, 3) array of frames, or anything
            with ``__len__`` and ``get(indices)`` returning uint8 (n, H, W, 3).
        indices: frames to process, in this order; None for all frames.
        layer, attention, kinds, registers: as in :func:`extract`.
        batch_size: frames per forward pass.
        device: where the model runs; None: the model's device (it is not moved).
        dtype: floating dtype of the images fed to the model.
        progress: True: a tqdm progress bar; False: none; a callable: called as
            ``progress(done, total)`` with frames done, once with 0 before the first batch and
            after every batch.

    Returns:
        :class:`Extraction` with ``attention`` (T, h, gh, gw) float32, ``prefix_attention``
        (T, h, R), ``register_attention`` (T, G, h, gh, gw), ``register_prefix_attention``
        (T, G, h, R) and ``prefix_tokens`` (T, R, D) where asked, ``features``
        {kind: (T, gh, gw, D)} on the CPU and ``indices`` (T,) int64, T = number of frames.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"extract_video: batch_size must be >= 1, got {batch_size}")
    try:
        indices = _frame_indices(video, indices)
    except ValueError as err:
        raise ValueError(f"extract_video: {err}") from None
    rows = (
        "attention",
        "prefix_attention",
        "register_attention",
        "register_prefix_attention",
        "prefix_tokens",
    )
    stacked: dict[str, list[torch.Tensor]] = {name: [] for name in rows}
    wanted: tuple[FeatureKind, ...] = tuple(dict.fromkeys(kinds))  # unique, order kept
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in wanted}
    total, done = len(indices), 0
    report = progress if callable(progress) else None
    bar = tqdm(
        total=total, unit="frame", disable=report is not None or not progress, desc="extract"
    )
    if report is not None:
        report(0, total)
    with bar:
        for frames, out in extract_batches(
            model,
            video,
            indices,
            layer=layer,
            attention=attention,
            kinds=wanted,
            registers=registers,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
        ):
            for name in rows:
                value = getattr(out, name)
                if value is not None:
                    stacked[name].append(value.cpu())
            for kind, value in out.features.items():
                feats[kind].append(value.cpu())
            done += len(frames)
            bar.update(len(frames))
            if report is not None:
                report(done, total)
    return Extraction(
        features={kind: torch.cat(values) for kind, values in feats.items()},
        indices=indices,
        **{name: torch.cat(values) if values else None for name, values in stacked.items()},
    )


def mass_threshold(attn: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """DINO's attention mask: the smallest set of patches holding a fraction ``keep`` of the mass.

    Each map (the last two dims) is first divided by its sum, so maps summing to less than 1 (as
    :func:`cls_attention` returns, the rest going to the prefix tokens) are treated by their
    shape alone. Patches are taken from the largest down until their mass reaches ``keep``
    (up to 1e-9, so ``keep=1`` keeps every patch with non-zero mass despite rounding). Ties at
    the boundary are all kept, so the mask does not depend on sort order (a constant map keeps
    every patch); patches with zero mass are never kept and an all-zero map keeps nothing.

    References:
        Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
        (the masks of the attention figures, ``threshold=0.6``).

    Args:
        attn: (..., gh, gw) non-negative maps, e.g. (B, h, gh, gw) from :func:`cls_attention`.
        keep: fraction of each map's mass to keep, in (0, 1].

    Returns:
        Bool tensor of ``attn``'s shape, True on kept patches.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"mass_threshold: keep must be in (0, 1], got {keep}")
    if not isinstance(attn, torch.Tensor) or attn.ndim < 2:
        raise ValueError("mass_threshold: attn must be a tensor with at least 2 dims (..., gh, gw)")
    if attn.numel() == 0:
        return torch.zeros(attn.shape, dtype=torch.bool, device=attn.device)
    flat = attn.reshape(-1, attn.shape[-2] * attn.shape[-1]).double()  # (M, P), M maps
    if torch.isnan(flat).any() or (flat < 0).any():
        raise ValueError("mass_threshold: attention maps must be non-negative and free of NaN")
    total = flat.sum(dim=-1, keepdim=True)  # (M, 1)
    mass = flat / total.clamp_min(torch.finfo(torch.float64).tiny)  # (M, P), each row sums to 1
    ordered = mass.sort(dim=-1, descending=True).values  # (M, P)
    cumulative = ordered.cumsum(dim=-1)  # mass of the top 1, 2, ... patches
    last = (cumulative < keep - 1e-9).sum(dim=-1, keepdim=True).clamp_max(flat.shape[-1] - 1)
    cutoff = ordered.gather(-1, last)  # (M, 1) smallest mass that is kept
    kept = (mass >= cutoff) & (mass > 0) & (total > 0)
    return kept.reshape(attn.shape)
