"""DoRA's multi-object discovery and tracking: prototypes from [CLS] attention heads, refined
by Sinkhorn-Knopp, cross-attended with every frame's keys into per-object masks.

Notation::

    B   clips (batch);  T  frames per clip
    h   attention heads;  k  objects (= heads used)
    N   patches of a frame, N = gh * gw (row-major patch grid)
    D   channels (heads concatenated: D = h * head_dim for queries and keys)
    H, W  frame size in pixels;  p  patch size

Pipeline (the teacher's last block, as in DoRA's ``MOT``)::

    discover_objects: [CLS] attention of k heads on the reference frame (B, k, N)
                      x patch queries (B, N, D)           -> initial prototypes (B, k, D)
                      L2-normalised patch tokens . prototypes -> logits (B, N, k)
                      Sinkhorn-Knopp (or row softmax)      -> plan (B, N, k)
                      plan^T x normalised tokens           -> refined prototypes (B, k, D)
    track_objects:    softmax_N(prototypes . keys_t / sqrt(D)) -> maps (B, T, k, gh, gw)
                      threshold per map                    -> masks (B, T, k, gh, gw)
    masks_to_frames / masked_views: masks at pixel resolution, the student's object views.

Differences from the official code (``utils.MOT`` in DoRA_ICLR24), all deliberate:

* Thresholding: the official code L2-normalises each map and thresholds it at the mean taken
  over the whole *batch* tensor of that frame and object, so one clip's masks depend on the
  other clips in the batch. ``threshold="mean"`` thresholds each map at its own mean (for a
  softmax map that is 1/N). ``threshold="batch_mean"`` reproduces the official rule.
* Heads: the official code draws 3 heads with Python's ``random`` per training step, shared by
  the batch; here ``heads`` is explicit (default: the first k heads, deterministic for the lab;
  ``"random"`` with a ``torch.Generator`` for training).
* No Python loops over frames or objects.

Kept as in the official code: prototypes pool the raw (not renormalised) [CLS] attention
weights over the queries; the Sinkhorn logits are normalised output tokens times these
unnormalised query-space prototypes, so the prototypes' norm acts as an inverse temperature next
to ``epsilon``; the refined prototypes (token space, norm up to N / k) meet the keys scaled by
D^-0.5. The official code discovers on frame 0 of each clip (first global crop); here the caller
passes whichever reference frame it wants, and k is a parameter (3 is hard-coded there).

References:
    Venkataramanan et al., "Is ImageNet worth 1 video? Learning strong image encoders from 1 long
    unlabelled video", ICLR 2024 (DoRA: multi-object discovery and tracking).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from labkit.attention import mass_threshold
from labkit.geometry import check_grid, grid_to_frame
from labkit.losses import sinkhorn_knopp

__all__ = [
    "Discovery",
    "Tracks",
    "discover_objects",
    "track_objects",
    "binarize_maps",
    "masks_to_frames",
    "masked_views",
    "ObjectShares",
    "object_shares",
    "prototype_spread",
]


class Discovery(NamedTuple):
    """Result of :func:`discover_objects`."""

    prototypes: torch.Tensor  # (B, k, D) float: refined prototypes, plan^T x normalised tokens
    initial_prototypes: torch.Tensor  # (B, k, D) float: attention-pooled queries
    assignment: torch.Tensor  # (B, N, k) float in [0, 1], rows sum to 1 (the transport plan)
    heads: torch.Tensor  # (B, k) int64: the attention head behind each object
    logits: torch.Tensor  # (B, N, k) float: normalised tokens . initial prototypes


class Tracks(NamedTuple):
    """Result of :func:`track_objects`."""

    maps: torch.Tensor  # (B, T, k, gh, gw) float in [0, 1], each map sums to 1 over patches
    masks: torch.Tensor  # (B, T, k, gh, gw) bool


def _float(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    return x if x.dtype == torch.float64 else x.float()


def _resolve_heads(
    heads: Sequence[int] | torch.Tensor | Literal["random"] | None,
    num_heads: int,
    k: int,
    batch: int,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Heads as a (B, k) int64 tensor on ``device``."""
    if heads is None or (isinstance(heads, str) and heads == "random"):
        if k > num_heads:
            raise ValueError(f"discover_objects: k={k} objects but only {num_heads} heads")
        if heads is None:
            chosen = torch.arange(k)
        else:
            chosen = torch.randperm(num_heads, generator=generator)[:k]  # shared by the batch
        return chosen.to(device).expand(batch, k).clone()
    if isinstance(heads, str):
        raise ValueError(
            f"discover_objects: heads must be None, 'random' or indices, got {heads!r}"
        )
    chosen = torch.as_tensor(heads, device=device)
    if chosen.dtype.is_floating_point or chosen.dtype == torch.bool:
        raise ValueError(f"discover_objects: heads must be integer indices, got {chosen.dtype}")
    chosen = chosen.long()
    if chosen.ndim == 1:
        chosen = chosen.expand(batch, -1)
    if chosen.ndim != 2 or tuple(chosen.shape) != (batch, k):
        raise ValueError(
            f"discover_objects: heads must have k={k} entries (or shape (B, k) = ({batch}, {k})), "
            f"got shape {tuple(chosen.shape)}"
        )
    if ((chosen < 0) | (chosen >= num_heads)).any():
        raise ValueError(
            f"discover_objects: head indices must lie in [0, {num_heads}), got {heads}"
        )
    return chosen.clone()


def discover_objects(
    attn_cls: torch.Tensor,
    queries: torch.Tensor,
    patch_tokens: torch.Tensor,
    k: int = 3,
    heads: Sequence[int] | torch.Tensor | Literal["random"] | None = None,
    sinkhorn: bool = True,
    epsilon: float = 0.05,
    iterations: int = 30,
    generator: torch.Generator | None = None,
) -> Discovery:
    """Find k object prototypes on a reference frame (DoRA's object discovery).

    Each of k attention heads pools the patch queries with its [CLS] attention into an initial
    prototype. The prototypes are refined by a transport plan between the L2-normalised patch
    tokens and the prototypes, and the refined prototypes pool the normalised tokens with it.

    The plan, ``sinkhorn`` on or off:

    * ``sinkhorn=True``: :func:`labkit.losses.sinkhorn_knopp` of the logits: each patch's row
      sums to 1 *and* the objects share the patches equally (columns sum to N / k), so no
      object can claim the whole frame or vanish.
    * ``sinkhorn=False``: ``softmax(logits / epsilon)`` over the objects, i.e. only the row
      constraint (the first half of one Sinkhorn round) at the same temperature: what the plan
      would be "without Sinkhorn-Knopp". Rows still sum to 1, so the two plans are directly
      comparable in a figure (same colour scale, same pooling), and as epsilon -> 0 it tends to
      the hard argmax assignment. Its column sums show the imbalance Sinkhorn-Knopp removes
      (typically one object absorbing most patches).

    Args:
        attn_cls: (B, h, N) or (B, h, gh, gw) [CLS] -> patch attention of the last block (as
            :func:`labkit.attention.cls_attention` returns; rows need not sum to 1).
        queries: (B, N, D) or (B, gh, gw, D) patch queries of the same block, heads concatenated.
        patch_tokens: (B, N, D) or (B, gh, gw, D) output patch tokens (normalised here).
        k: number of objects (heads used), 1 <= k <= h for the default heads.
        heads: None: heads 0..k-1; ``"random"``: k distinct heads drawn with ``generator``, the
            same for the whole batch (as DoRA per training step); a sequence of k indices; or a
            (B, k) tensor of per-clip indices.
        sinkhorn: refine with Sinkhorn-Knopp (True) or with the row softmax (False), see above.
        epsilon: temperature of the plan (both paths).
        iterations: Sinkhorn-Knopp iterations.
        generator: random source for ``heads="random"`` (a CPU generator).

    Returns:
        :class:`Discovery` (prototypes (B, k, D), initial_prototypes (B, k, D), assignment
        (B, N, k), heads (B, k) int64, logits (B, N, k)); float32 (float64 for float64 inputs),
        on the inputs' device. The assignment is detached.
    """
    attn = _float(attn_cls, "attn_cls")
    queries = _float(queries, "queries")
    tokens = _float(patch_tokens, "patch_tokens")
    if attn.ndim == 4:
        attn = attn.flatten(2)  # (B, h, N)
    if queries.ndim == 4:
        queries = queries.flatten(1, 2)  # (B, N, D)
    if tokens.ndim == 4:
        tokens = tokens.flatten(1, 2)  # (B, N, D)
    if attn.ndim != 3 or queries.ndim != 3 or tokens.ndim != 3:
        raise ValueError(
            "discover_objects: expected attn_cls (B, h, N), queries (B, N, D), patch_tokens "
            f"(B, N, D); got {tuple(attn_cls.shape)}, {tuple(queries.shape)}, "
            f"{tuple(patch_tokens.shape)}"
        )
    batch, num_heads, num_patches = attn.shape
    if queries.shape[:2] != (batch, num_patches) or tokens.shape[:2] != (batch, num_patches):
        raise ValueError(
            f"discover_objects: attn_cls has B={batch}, N={num_patches} but queries have "
            f"{tuple(queries.shape[:2])} and patch_tokens {tuple(tokens.shape[:2])}"
        )
    if queries.shape[2] != tokens.shape[2]:
        raise ValueError(
            f"discover_objects: queries (D={queries.shape[2]}) and patch_tokens "
            f"(D={tokens.shape[2]}) must have the same channels"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"discover_objects: k must be an int >= 1, got {k!r}")
    if not epsilon > 0:
        raise ValueError(f"discover_objects: epsilon must be > 0, got {epsilon}")

    head_index = _resolve_heads(heads, num_heads, k, batch, attn.device, generator)  # (B, k)
    selected = attn.gather(1, head_index[:, :, None].expand(batch, k, num_patches))  # (B, k, N)
    # b clip, k object, n patch, d channel
    initial = torch.einsum("bkn,bnd->bkd", selected, queries)  # (B, k, D)
    features = F.normalize(tokens, dim=-1)  # (B, N, D)
    logits = torch.einsum("bnd,bkd->bnk", features, initial)  # (B, N, k)
    if sinkhorn:
        plan = sinkhorn_knopp(logits, epsilon=epsilon, iterations=iterations)  # (B, N, k)
    else:
        plan = torch.softmax(logits.detach() / epsilon, dim=-1)  # (B, N, k)
    prototypes = torch.einsum("bnk,bnd->bkd", plan, features)  # (B, k, D)
    return Discovery(prototypes, initial, plan, head_index, logits)


def binarize_maps(
    maps: torch.Tensor, threshold: Literal["mean", "batch_mean"] | float = "mean"
) -> torch.Tensor:
    """Binarise attention maps into masks.

    Args:
        maps: (..., gh, gw) nonnegative maps; for ``"batch_mean"`` dim 0 is the batch.
        threshold: ``"mean"``: patches above the map's own mean. ``"batch_mean"``: the official
            DoRA rule: each map is L2-normalised, then thresholded at the mean over the batch
            (dim 0) and the patches, separately for every other leading index (frame, object).
            A float ``keep`` in (0, 1]: the smallest set of patches holding at least ``keep``
            of the map's mass (DINO's attention-mass masks, by
            :func:`labkit.attention.mass_threshold`: ties at the boundary are all kept,
            zero-mass patches never).

    Returns:
        bool tensor of the shape of ``maps``.
    """
    maps = _float(maps, "maps")
    if maps.ndim < 2:
        raise ValueError(f"binarize_maps: maps must be (..., gh, gw), got {tuple(maps.shape)}")
    flat = maps.flatten(-2)  # (..., N)
    if isinstance(threshold, str):
        if threshold == "mean":
            return (flat > flat.mean(dim=-1, keepdim=True)).reshape(maps.shape)
        if threshold == "batch_mean":
            if maps.ndim < 3:
                raise ValueError("binarize_maps: 'batch_mean' needs maps (B, ..., gh, gw)")
            unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (B, ..., N)
            level = unit.mean(dim=(0, -1), keepdim=True)  # (1, ..., 1)
            return (unit > level).reshape(maps.shape)
        raise ValueError(
            f"binarize_maps: threshold must be 'mean', 'batch_mean' or a float, got {threshold!r}"
        )
    is_number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if not (is_number and 0 < threshold <= 1):
        raise ValueError(f"binarize_maps: keep-mass threshold must be in (0, 1], got {threshold!r}")
    # one definition of keep-mass masks for the whole lab; imported here because
    # labkit.attention pulls in the model stack (timm), which tracking itself does not need

    return mass_threshold(maps, keep=float(threshold))


def track_objects(
    prototypes: torch.Tensor,
    keys: torch.Tensor,
    grid: tuple[int, int] | None = None,
    threshold: Literal["mean", "batch_mean"] | float = "mean",
) -> Tracks:
    """Cross-attend the object prototypes with every frame's patch keys (DoRA's tracking).

    ``maps[b, t, j] = softmax over patches of (prototypes[b, j] . keys[b, t, n]) / sqrt(D)``,
    then :func:`binarize_maps`.

    Args:
        prototypes: (B, k, D) refined prototypes (:attr:`Discovery.prototypes`).
        keys: (B, T, N, D) or (B, T, gh, gw, D) patch keys of the last block for every frame,
            heads concatenated.
        grid: (gh, gw) of the patch grid; required for (B, T, N, D) keys, checked otherwise.
        threshold: ``"mean"`` (per map, default), ``"batch_mean"`` (official DoRA), or a
            keep-mass fraction in (0, 1]; see :func:`binarize_maps`.

    Returns:
        :class:`Tracks`: maps (B, T, k, gh, gw) float (each sums to 1 over the patches), masks
        (B, T, k, gh, gw) bool.
    """
    prototypes = _float(prototypes, "prototypes")
    keys = _float(keys, "keys")
    if keys.ndim == 5:
        if grid is not None and tuple(grid) != tuple(keys.shape[2:4]):
            raise ValueError(f"track_objects: grid {grid} does not match keys {tuple(keys.shape)}")
        grid = (keys.shape[2], keys.shape[3])
        keys = keys.flatten(2, 3)  # (B, T, N, D)
    if keys.ndim != 4 or prototypes.ndim != 3:
        raise ValueError(
            "track_objects: expected prototypes (B, k, D) and keys (B, T, N, D) or "
            f"(B, T, gh, gw, D), got {tuple(prototypes.shape)} and {tuple(keys.shape)}"
        )
    batch, frames, num_patches, dim = keys.shape
    if prototypes.shape[0] != batch or prototypes.shape[2] != dim:
        raise ValueError(
            f"track_objects: prototypes {tuple(prototypes.shape)} do not match keys "
            f"(B={batch}, D={dim})"
        )
    if grid is None or len(grid) != 2 or grid[0] * grid[1] != num_patches:
        raise ValueError(
            f"track_objects: grid {grid} must be (gh, gw) with gh * gw = N = {num_patches}"
        )
    gh, gw = int(grid[0]), int(grid[1])
    # b clip, t frame, k object, n patch, d channel
    scores = torch.einsum("bkd,btnd->btkn", prototypes, keys) * dim**-0.5  # (B, T, k, N)
    maps = scores.softmax(dim=-1).reshape(batch, frames, -1, gh, gw)  # (B, T, k, gh, gw)
    return Tracks(maps, binarize_maps(maps, threshold))


def masks_to_frames(masks: torch.Tensor, patch_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Upsample patch-grid masks (or maps) to frame resolution, nearest neighbour.

    Patch (i, j) covers pixels ``[i*p:(i+1)*p, j*p:(j+1)*p]``: the grid covers the top-left
    ``gh*p x gw*p`` pixels (the frame was cropped down to a multiple of p, see
    :func:`labkit.models.prepare_images`); the remaining strip (< p pixels at the bottom/right)
    takes the value of the nearest edge patch, the border rule of :mod:`labkit.geometry` (so a
    mask drawn here covers the pixels the evaluation scores it on).

    Args:
        masks: (..., gh, gw) masks (bool) or maps (any dtype).
        patch_size: p, pixels per patch side.
        size: (H, W) of the frames, with 0 <= H - gh*p < p and 0 <= W - gw*p < p.

    Returns:
        (..., H, W) tensor of the dtype of ``masks``; the strip outside the grid repeats the
        edge patches.
    """
    if not isinstance(masks, torch.Tensor) or masks.ndim < 2:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks_to_frames: masks must be a (..., gh, gw) tensor, got {shape}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"masks_to_frames: patch_size must be an int >= 1, got {patch_size!r}")
    size = (int(size[0]), int(size[1]))
    check_grid((masks.shape[-2], masks.shape[-1]), size, patch_size, "masks_to_frames")
    return grid_to_frame(masks, size, patch_size=patch_size)  # (..., H, W)


def masked_views(
    frames: torch.Tensor, masks: torch.Tensor, patch_size: int | None = None
) -> torch.Tensor:
    """The student's object views: every frame multiplied by each object's mask.

    Args:
        frames: (B, T, 3, H, W) frames (any dtype, normalised or not).
        masks: (B, T, k, gh, gw) patch-grid masks with ``patch_size`` given (upsampled by
            :func:`masks_to_frames`), or (B, T, k, H, W) pixel masks with ``patch_size=None``.
            Bool, or float for soft masks.
        patch_size: p for grid masks; None for pixel masks.

    Returns:
        (k, B, T, 3, H, W) tensor of the dtype of ``frames``: ``frames * mask`` per object.
    """
    if not isinstance(frames, torch.Tensor) or frames.ndim != 5:
        raise ValueError(
            f"masked_views: frames must be (B, T, C, H, W), got {getattr(frames, 'shape', frames)}"
        )
    if not isinstance(masks, torch.Tensor) or masks.ndim != 5:
        raise ValueError(
            "masked_views: masks must be (B, T, k, gh, gw) or (B, T, k, H, W), got "
            f"{getattr(masks, 'shape', masks)}"
        )
    batch, num_frames, _, height, width = frames.shape
    if masks.shape[:2] != (batch, num_frames):
        raise ValueError(
            f"masked_views: masks {tuple(masks.shape)} and frames {tuple(frames.shape)} "
            "differ in (B, T)"
        )
    if patch_size is not None:
        masks = masks_to_frames(masks, patch_size, (height, width))  # (B, T, k, H, W)
    elif masks.shape[-2:] != (height, width):
        raise ValueError(
            f"masked_views: pixel masks {tuple(masks.shape)} do not match frames "
            f"{(height, width)}; pass patch_size for patch-grid masks"
        )
    weights = masks.permute(2, 0, 1, 3, 4).unsqueeze(3).to(frames.dtype)  # (k, B, T, 1, H, W)
    return frames.unsqueeze(0) * weights  # (k, B, T, 3, H, W)


class ObjectShares(NamedTuple):
    """Result of :func:`object_shares`: how k object maps divide a frame and how much they overlap.

    Leading dimensions (...) are those of the maps, without the object and grid dimensions.
    """

    share: torch.Tensor  # (..., k) fraction of patches where the object's map is the largest
    mass: torch.Tensor  # (..., k) mean over patches of the object's part of the k maps' sum
    overlap: torch.Tensor  # (..., k, k) sum over patches of min(a, b), each map scaled to sum 1

    def mean_overlap(self) -> torch.Tensor:
        """Mean overlap over the k (k - 1) / 2 pairs of distinct objects: (...), NaN for k = 1."""
        k = self.overlap.shape[-1]
        pairs = torch.triu(torch.ones(k, k, dtype=torch.bool, device=self.overlap.device), 1)
        return self.overlap[..., pairs].mean(-1)  # (...)


def object_shares(maps: torch.Tensor) -> ObjectShares:
    """Each object's share of the frame and the overlap between objects, for k object maps.

    Three numbers a picture of DoRA's objects can be checked against:

    * ``share[j]``: the fraction of the frame's patches where object j's map is the largest of
      the k (a tie between objects splits the patch equally), i.e. the area of object j in the
      arg-max picture. The k shares sum to 1.
    * ``mass[j]``: object j's part of the k maps at each patch, ``a_j / sum_i a_i``, averaged
      over the patches (the soft version of ``share``; for a transport plan whose rows sum to 1
      it is the column sum / N, so Sinkhorn-Knopp's uniform marginals give 1/k each). Sums to 1.
    * ``overlap[i, j]``: ``sum_n min(a_n, b_n)`` with each map first scaled to sum 1 over the
      patches: the attention mass two objects share, 1 for identical maps, 0 for disjoint ones
      (the diagonal is 1, except for a map that is zero everywhere: it overlaps nothing).

    Maps are compared as they are, on one scale per object: give the tracking maps (each sums to
    1) or the plan's columns, not maps normalised for display.

    Args:
        maps: (..., k, gh, gw) nonnegative maps, e.g. :attr:`Tracks.maps` (B, T, k, gh, gw) or
            (T, k, gh, gw); for a plan (N, k), pass ``plan.T.reshape(k, gh, gw)``.

    Returns:
        :class:`ObjectShares`: share (..., k), mass (..., k), overlap (..., k, k); float32
        (float64 for float64 maps), in [0, 1], on the maps' device.
    """
    maps = _float(maps, "maps")
    if maps.ndim < 3:
        raise ValueError(f"object_shares: maps must be (..., k, gh, gw), got {tuple(maps.shape)}")
    if bool((maps < 0).any()) or not bool(torch.isfinite(maps).all()):
        raise ValueError("object_shares: maps must be finite and nonnegative")
    k = maps.shape[-3]
    flat = maps.flatten(-2)  # (..., k, N)
    top = flat.max(dim=-2, keepdim=True).values  # (..., 1, N)
    winners = (flat == top).to(flat.dtype)  # (..., k, N), ties: several winners
    share = (winners / winners.sum(-2, keepdim=True)).mean(-1)  # (..., k)
    total = flat.sum(-2, keepdim=True)  # (..., 1, N)
    part = torch.where(total > 0, flat / total.clamp_min(1e-30), 1.0 / k)  # (..., k, N)
    mass = part.mean(-1)  # (..., k)
    unit = flat / flat.sum(-1, keepdim=True).clamp_min(1e-30)  # (..., k, N), each sums to 1
    # ... leading, i / j objects, n patch
    overlap = torch.minimum(unit[..., :, None, :], unit[..., None, :, :]).sum(-1)  # (..., k, k)
    return ObjectShares(share, mass, overlap.clamp(0.0, 1.0))


def prototype_spread(
    discovery: Discovery, epsilon: float, attn_cls: torch.Tensor | None = None
) -> dict[str, float]:
    """How far apart DoRA's k initial prototypes are, on the scale the transport plan sees, and
    (given the attention) why.

    The plan is ``sinkhorn_knopp(logits / epsilon)`` (or its row softmax), so what separates the
    objects is how much a patch's k logits differ, measured in units of epsilon. A head's
    prototype is its [CLS] attention's average of the queries. Where every head's attention is
    close to uniform (a small or barely trained network: small attention logits), every prototype
    is close to the frame's mean query, a patch's logits differ by a small fraction of epsilon,
    the plan is close to uniform (each object gets about 1/k of every patch), and every refined
    prototype becomes the frame's mean token: the k tracked objects are one map. (A part that all
    queries share does not matter: it adds the same amount to a patch's k logits.)

    Args:
        discovery: :func:`discover_objects`' result (B clips).
        epsilon: the plan's temperature it was made with.
        attn_cls: the (B, h, N) or (B, h, gh, gw) [CLS] attention the discovery was made from,
            or None; given, the result also describes the k chosen heads' attention.

    Returns:
        Means over the clips (and patches):

        * ``prototype_cosine``: cosine between two initial prototypes, mean over the pairs
          (1: parallel; NaN for k = 1);
        * ``logit_spread``: a patch's largest minus smallest logit over the objects;
        * ``logit_spread_per_epsilon``: the same divided by epsilon;
        * ``plan_peak``: a patch's largest share of its plan row (1/k: uniform, 1: hard);
        * ``uniform_peak``: 1/k, for comparison;

        with ``attn_cls``, each head's attention normalised to sum to 1 over the patches:

        * ``head_entropy``: a chosen head's entropy over the patches divided by log N, mean
          over the heads (1: uniform; 0: on one patch);
        * ``head_distance``: total variation between two chosen heads' attention (half the sum
          of absolute differences), mean over the pairs (0: the same; 1: disjoint; NaN for k = 1).
    """
    if not epsilon > 0:
        raise ValueError(f"prototype_spread: epsilon must be > 0, got {epsilon}")
    initial = _float(discovery.initial_prototypes, "initial_prototypes")  # (B, k, D)
    logits = _float(discovery.logits, "logits")  # (B, N, k)
    plan = _float(discovery.assignment, "assignment")  # (B, N, k)
    k = initial.shape[1]
    unit = F.normalize(initial, dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # (B, k, k)
    pairs = torch.triu(torch.ones(k, k, dtype=torch.bool, device=cosine.device), 1)
    spread = logits.max(-1).values - logits.min(-1).values  # (B, N)
    rows = plan / plan.sum(-1, keepdim=True).clamp_min(1e-30)  # (B, N, k), rows sum to 1
    result = {
        "prototype_cosine": float(cosine[:, pairs].mean()) if k > 1 else float("nan"),
        "logit_spread": float(spread.mean()),
        "logit_spread_per_epsilon": float(spread.mean() / epsilon),
        "plan_peak": float(rows.max(-1).values.mean()),
        "uniform_peak": 1.0 / k,
    }
    if attn_cls is None:
        return result
    attn = _float(attn_cls, "attn_cls")
    attn = attn.flatten(2) if attn.ndim == 4 else attn  # (B, h, N)
    heads = discovery.heads.to(attn.device)  # (B, k)
    if attn.ndim != 3 or attn.shape[0] != heads.shape[0] or attn.shape[2] != logits.shape[1]:
        raise ValueError(
            f"prototype_spread: attn_cls {tuple(attn_cls.shape)} is not the (B, h, N) attention "
            f"of this discovery (B={heads.shape[0]}, N={logits.shape[1]})"
        )
    num_patches = attn.shape[2]
    chosen = attn.gather(1, heads[:, :, None].expand(-1, -1, num_patches))  # (B, k, N)
    weights = chosen / chosen.sum(-1, keepdim=True).clamp_min(1e-30)
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)  # (B, k)
    apart = 0.5 * (weights[:, :, None] - weights[:, None]).abs().sum(-1)  # (B, k, k)
    uniform = math.log(num_patches) if num_patches > 1 else float("nan")  # one patch: no scale
    result["head_entropy"] = float(entropy.mean() / uniform)
    result["head_distance"] = float(apart[:, pairs].mean()) if k > 1 else float("nan")
    return result
