"""Single-object discovery on the patch grid: LOST, TokenCut, DINO's attention masks, DoRA.

Each method looks at one frame's last-block features and names one object: a mask on the patch
grid, the box around it and the seed patch it grew from, all returned as one
:class:`ObjectDiscovery`, batched over frames (torch throughout; the eigensolver is
``torch.linalg.eigh``, or scipy's ``eigh`` on the CPU; connected components are
``scipy.ndimage.label``, one call per batch).

Notation::

    B   frames (batch)          N  patches, N = gh * gw (row-major patch grid)
    D   channels (heads concatenated, as labkit.attention.extract returns keys)
    h   attention heads         k  LOST's expansion size / DoRA's objects
    gh, gw  patch grid (rows, columns)

Methods::

    lost:       A = keys keys^T (B, N, N); degree = #{m != n : A[n, m] > 0};
                seed = lowest degree; the k lowest-degree patches that correlate positively with
                the seed vote: M = sum of their rows of A (B, N); mask = the 4-connected
                component of M > 0 that holds the seed.
    tokencut:   cosine affinity of the keys, W = 1 where > tau else eps (B, N, N);
                (D - W) x = lambda D x solved as the symmetric I - D^-1/2 W D^-1/2;
                x = second smallest eigenvector; bipartition x > mean(x), the side holding
                argmax |x| (the seed) is foreground; mask = its component around the seed.
    attention:  [CLS] attention (one head or the head average) thresholded to keep 60% of its
                mass (DINO's figures); mask = the largest 4-connected component.
    dora:       DoRA's objects (labkit.tracking): discovered on a reference frame, followed
                through the frames by cross-attention; mask = union of the k object masks.

Boxes are ``(row0, col0, row1, col1)`` on the patch grid, end exclusive (LOST's ``pred_feats``
``[ymin, xmin, ymax, xmax]``): patch rows ``row0 .. row1 - 1``; pixel boxes are these times the
patch size. An empty mask has the box ``(0, 0, 0, 0)``.

Differences from the official code (valeoai/LOST ``object_discovery.py``, YangtaoWANG95/TokenCut
``object_discovery.py``), deliberate and small:

* LOST: patches of equal degree are ordered as the official call orders them,
  ``torch.argsort(-degree, descending=True)``, an unstable sort, run here on the CPU whatever the
  keys' device so the seed does not depend on it (the official code on a GPU may pick another
  of the tied patches). Where the seed's own vote is not positive the official code raises;
  here the mask is the seed patch alone.
* TokenCut: the generalised problem is solved as the normalised symmetric one (same eigenvalues,
  ``x = D^-1/2 y`` with the same ``x^T D x = 1`` normalisation as ``scipy.linalg.eigh(D - W, D)``),
  in float64: ``torch.linalg.eigh`` batched on accelerators, scipy's subset solver frame by frame
  on the CPU (``solver``).
* Attention: LOST's ``dino_seg`` looks for the biggest component among labels ``0 .. max - 1``
  (so it misses the last one and picks the background when there is a single component); here
  every component counts and the largest wins (ties: first in raster order).

References:
    Siméoni et al., "Localizing Objects with Self-Supervised Transformers and no Labels",
    BMVC 2021 (LOST). Wang et al., "Self-Supervised Transformers for Unsupervised Object
    Discovery using Normalized Cut", CVPR 2022 (TokenCut). Caron et al., "Emerging Properties in
    Self-Supervised Vision Transformers", ICCV 2021 (attention masks). Venkataramanan et al.,
    "Is ImageNet worth 1 video?", ICLR 2024 (DoRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from labkit.attention import mass_threshold
from labkit.tracking import discover_objects, track_objects

__all__ = [
    "METHODS",
    "ObjectDiscovery",
    "lost",
    "tokencut",
    "attention_discovery",
    "dora_discovery",
    "mask_boxes",
    "seed_components",
    "largest_components",
]

METHODS: tuple[str, ...] = ("lost", "tokencut", "attention", "dora")


@dataclass(frozen=True)
class ObjectDiscovery:
    """One discovered object per frame, on the patch grid.

    Attributes:
        masks: (B, gh, gw) bool, the object's patches.
        boxes: (B, 4) int64 ``(row0, col0, row1, col1)`` around each mask, end exclusive, in
            patches; ``(0, 0, 0, 0)`` for an empty mask.
        seeds: (B,) int64 flat patch index (row-major) the object grew from.
        scores: (B, gh, gw) float, the map the mask was cut from (LOST: the seed expansion's
            summed correlations; TokenCut: the second eigenvector, foreground positive-side;
            attention: the attention map; DoRA: the largest object map per patch).
        objects: (B, k, gh, gw) bool, DoRA's separate object masks; None for the others.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    seeds: torch.Tensor
    scores: torch.Tensor
    objects: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------
# Shared pieces: input shapes, components, boxes
# --------------------------------------------------------------------------------------------


def _patches(
    features: torch.Tensor, grid: tuple[int, int] | None, name: str
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, N, D) float features and the grid, from (B, gh, gw, D) or (B, N, D) with ``grid``."""
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise ValueError(f"{name}: keys must be a floating-point tensor")
    if features.ndim == 4:
        if grid is not None and tuple(grid) != tuple(features.shape[1:3]):
            raise ValueError(f"{name}: grid {grid} does not match keys {tuple(features.shape)}")
        grid = (int(features.shape[1]), int(features.shape[2]))
        features = features.flatten(1, 2)  # (B, N, D)
    if features.ndim != 3:
        raise ValueError(
            f"{name}: keys must be (B, gh, gw, D) or (B, N, D), got {tuple(features.shape)}"
        )
    if grid is None or len(grid) != 2 or grid[0] * grid[1] != features.shape[1]:
        raise ValueError(
            f"{name}: grid {grid} must be (gh, gw) with gh * gw = N = {features.shape[1]}"
        )
    if features.shape[1] < 2:
        raise ValueError(f"{name}: need at least 2 patches, got {features.shape[1]}")
    x = features if features.dtype == torch.float64 else features.float()
    return x, (int(grid[0]), int(grid[1]))


def _label(masks: torch.Tensor) -> np.ndarray:
    """4-connected components of every (gh, gw) slice of (B, gh, gw) masks (labels unique
    over the batch)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # 4-neighbours, nothing across frames
    labels, _ = ndimage.label(masks.detach().cpu().numpy().astype(bool), structure=structure)
    return labels  # (B, gh, gw) int32, 0 = outside


def seed_components(masks: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The 4-connected component of each mask that holds its seed.

    Args:
        masks: (B, gh, gw) bool.
        seeds: (B,) int64 flat patch indices.

    Returns:
        (B, gh, gw) bool on the masks' device; a seed outside its mask gives the seed patch alone.
    """
    batch, gh, gw = masks.shape
    labels = torch.from_numpy(_label(masks)).to(masks.device).flatten(1)  # (B, N)
    at_seed = labels.gather(1, seeds.view(batch, 1).to(masks.device))  # (B, 1)
    component = (labels == at_seed) & (at_seed > 0)  # (B, N)
    alone = F.one_hot(seeds.to(masks.device), gh * gw).bool() & (at_seed == 0)  # (B, N)
    return (component | alone).view(batch, gh, gw)


def largest_components(masks: torch.Tensor) -> torch.Tensor:
    """The largest 4-connected component of each mask (ties: the first in raster order).

    Args:
        masks: (B, gh, gw) bool.

    Returns:
        (B, gh, gw) bool on the masks' device; empty where the mask is empty.
    """
    batch = masks.shape[0]
    labels = torch.from_numpy(_label(masks)).long().to(masks.device).flatten(1)  # (B, N)
    sizes = torch.zeros(batch, int(labels.max()) + 1, dtype=torch.long, device=masks.device)
    sizes.scatter_add_(1, labels, torch.ones_like(labels))  # (B, L+1) patches per label
    sizes[:, 0] = 0  # background never wins
    best = sizes.argmax(dim=1, keepdim=True)  # (B, 1) first maximum = lowest label
    return ((labels == best) & (best > 0)).view(masks.shape)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes around masks on the patch grid.

    Args:
        masks: (B, gh, gw) bool.

    Returns:
        (B, 4) int64 ``(row0, col0, row1, col1)``, end exclusive; ``(0, 0, 0, 0)`` if empty.
    """
    batch, gh, gw = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (B, gh), (B, gw)
    r = torch.arange(gh, device=masks.device)
    c = torch.arange(gw, device=masks.device)
    row0 = torch.where(rows, r, gh).min(dim=1).values
    row1 = torch.where(rows, r + 1, 0).max(dim=1).values
    col0 = torch.where(cols, c, gw).min(dim=1).values
    col1 = torch.where(cols, c + 1, 0).max(dim=1).values
    boxes = torch.stack([row0, col0, row1, col1], dim=1).long()  # (B, 4)
    return torch.where(masks.flatten(1).any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def _result(
    masks: torch.Tensor,
    seeds: torch.Tensor,
    scores: torch.Tensor,
    objects: torch.Tensor | None = None,
) -> ObjectDiscovery:
    return ObjectDiscovery(
        masks=masks, boxes=mask_boxes(masks), seeds=seeds.long(), scores=scores, objects=objects
    )


# --------------------------------------------------------------------------------------------
# LOST and TokenCut
# --------------------------------------------------------------------------------------------


def lost(keys: torch.Tensor, grid: tuple[int, int] | None = None, k: int = 100) -> ObjectDiscovery:
    """LOST: the patch with the fewest positive key correlations, expanded to its similar patches.

    Args:
        keys: (B, gh, gw, D) or (B, N, D) last-block patch keys, heads concatenated (LOST's
            ``which_features="k"``; no normalisation).
        grid: (gh, gw), needed for (B, N, D) keys.
        k: patches of lowest degree that may join the seed expansion (LOST's ``k_patches``,
            default 100; min(k, N) used).

    Returns:
        :class:`ObjectDiscovery`; ``scores`` (B, gh, gw) float32 are the summed correlations M.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"lost: k must be an int >= 1, got {k!r}")
    x, (gh, gw) = _patches(keys, grid, "lost")
    batch, n, _ = x.shape
    A = x @ x.transpose(1, 2)  # (B, N, N) correlations
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=x.device)
    degree = ((A > 0) & off_diagonal).sum(dim=2)  # (B, N) positive correlations with others
    # lowest degree first; ties ordered by torch's CPU sort of the official call (see above)
    order = torch.argsort(-degree.float().cpu(), dim=1, descending=True).to(x.device)  # (B, N)
    seeds = order[:, 0]  # (B,)
    potentials = order[:, : min(k, n)]  # (B, k)
    seed_rows = A[torch.arange(batch, device=x.device), seeds]  # (B, N)
    similar = (seed_rows.gather(1, potentials) > 0).to(A.dtype)  # (B, k)
    rows = A.gather(1, potentials[:, :, None].expand(-1, -1, n))  # (B, k, N)
    M = torch.einsum("bk,bkn->bn", similar, rows)  # (B, N) seed expansion
    masks = seed_components((M > 0).view(batch, gh, gw), seeds)
    return _result(masks, seeds, M.view(batch, gh, gw))


def _second_eigenvectors(
    laplacian: torch.Tensor, solver: Literal["auto", "torch", "scipy"]
) -> torch.Tensor:
    """(B, N) eigenvectors of the second smallest eigenvalue of symmetric (B, N, N) matrices."""
    if solver == "auto":
        solver = "scipy" if laplacian.device.type == "cpu" else "torch"
    if solver == "torch":
        return torch.linalg.eigh(laplacian)[1][:, :, 1]  # columns by ascending eigenvalue
    from scipy.linalg import eigh

    # one eigenvector per frame (LAPACK's subset driver): 4-5x faster than the full
    # decomposition at 480p (N = 1560), where the full one takes seconds a frame on a CPU
    vectors = [
        eigh(m, subset_by_index=[1, 1], driver="evx")[1][:, 0] for m in laplacian.cpu().numpy()
    ]
    return torch.from_numpy(np.stack(vectors)).to(laplacian.device)  # (B, N)


def tokencut(
    keys: torch.Tensor,
    grid: tuple[int, int] | None = None,
    tau: float = 0.2,
    eps: float = 1e-5,
    solver: Literal["auto", "torch", "scipy"] = "auto",
) -> ObjectDiscovery:
    """TokenCut: normalised cut of the thresholded cosine graph of the patch keys.

    Args:
        keys: (B, gh, gw, D) or (B, N, D) last-block patch keys, heads concatenated.
        grid: (gh, gw), needed for (B, N, D) keys.
        tau: edges where the cosine similarity exceeds tau weigh 1 (TokenCut: 0.2).
        eps: weight of the other edges, keeping the graph connected (TokenCut: 1e-5).
        solver: ``"torch"``: ``torch.linalg.eigh``, batched (the full decomposition);
            ``"scipy"``: ``scipy.linalg.eigh`` of the one eigenvector needed, frame by frame;
            ``"auto"``: scipy for CPU tensors, torch on accelerators.

    Returns:
        :class:`ObjectDiscovery`; ``scores`` (B, gh, gw) float64 are the second smallest
        generalised eigenvector of ``(D - W, D)``, sign chosen so the seed's side is positive
        (``x^T D x = 1``).
    """
    if not 0 < eps <= 1:
        raise ValueError(f"tokencut: eps must be in (0, 1], got {eps}")
    if solver not in ("auto", "torch", "scipy"):
        raise ValueError(f"tokencut: solver must be 'auto', 'torch' or 'scipy', got {solver!r}")
    x, (gh, gw) = _patches(keys, grid, "tokencut")
    batch, n, _ = x.shape
    unit = F.normalize(x, p=2, dim=-1)  # (B, N, D)
    cosine = unit @ unit.transpose(1, 2)  # (B, N, N), in the keys' precision as TokenCut
    W = torch.where(cosine > tau, 1.0, eps).double()  # (B, N, N)
    d = W.sum(dim=2)  # (B, N) degrees
    inv_sqrt = d.rsqrt()
    # I - D^-1/2 W D^-1/2 shares its eigenvalues with (D - W) x = lambda D x, x = D^-1/2 y
    identity = torch.eye(n, dtype=W.dtype, device=W.device)
    laplacian = identity - inv_sqrt[:, :, None] * W * inv_sqrt[:, None, :]  # (B, N, N)
    second = _second_eigenvectors(laplacian, solver) * inv_sqrt  # (B, N) x^T D x = 1
    seeds = second.abs().argmax(dim=1)  # (B,)
    side = second > second.mean(dim=1, keepdim=True)  # (B, N) bipartition
    flip = ~side.gather(1, seeds[:, None])  # (B, 1) seed on the low side: swap the sides
    second = torch.where(flip, -second, second)
    side = torch.where(flip, ~side, side)
    masks = seed_components(side.view(batch, gh, gw), seeds)
    return _result(masks, seeds, second.view(batch, gh, gw))


# --------------------------------------------------------------------------------------------
# Attention and DoRA in the same form
# --------------------------------------------------------------------------------------------


def attention_discovery(
    attention: torch.Tensor, keep: float = 0.6, head: int | None = None
) -> ObjectDiscovery:
    """DINO's thresholded [CLS] attention as one object: the largest component of the mask.

    Args:
        attention: (B, h, gh, gw) per-head [CLS] attention (:func:`labkit.attention.extract`)
            or (B, gh, gw) one map per frame.
        keep: attention mass kept (:func:`labkit.attention.mass_threshold`; DINO: 0.6).
        head: the head used; None: the mean over heads.

    Returns:
        :class:`ObjectDiscovery`; ``seeds`` the most attended patch inside the mask, ``scores``
        (B, gh, gw) float32 the map thresholded.
    """

    if not isinstance(attention, torch.Tensor) or attention.ndim not in (3, 4):
        raise ValueError("attention_discovery: attention must be (B, h, gh, gw) or (B, gh, gw)")
    maps = attention.float()
    if maps.ndim == 4:
        if head is None:
            maps = maps.mean(dim=1)  # (B, gh, gw)
        elif not 0 <= head < maps.shape[1]:
            raise ValueError(
                f"attention_discovery: head {head} out of range ({maps.shape[1]} heads)"
            )
        else:
            maps = maps[:, head]  # (B, gh, gw)
    masks = largest_components(mass_threshold(maps, keep))
    inside = torch.where(masks, maps, torch.full_like(maps, -float("inf"))).flatten(1)  # (B, N)
    seeds = torch.where(
        masks.flatten(1).any(dim=1), inside.argmax(dim=1), maps.flatten(1).argmax(dim=1)
    )
    return _result(masks, seeds, maps)


def dora_discovery(
    keys: torch.Tensor,
    attention: torch.Tensor | None = None,
    queries: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    *,
    k: int = 3,
    reference: int | None = 0,
    prototypes: torch.Tensor | None = None,
) -> ObjectDiscovery:
    """DoRA's objects as one discovered foreground per frame: the union of its k object masks.

    Args:
        keys: (B, gh, gw, D) last-block patch keys of the frames.
        attention: (B, h, gh, gw) last-block [CLS] attention (unused with ``prototypes``).
        queries: (B, gh, gw, D) last-block patch queries (unused with ``prototypes``).
        tokens: (B, gh, gw, D) output patch tokens (unused with ``prototypes``).
        k: objects (heads 0 .. k-1, :func:`labkit.tracking.discover_objects`).
        reference: frame the objects are discovered on and followed from through all B frames
            (:func:`labkit.tracking.track_objects`, per-map mean threshold); None: every frame
            discovers its own objects.
        prototypes: (1, k, D) objects discovered earlier (e.g. on a sequence's first frame, for
            frames streamed in batches): followed through these frames, nothing discovered.

    Returns:
        :class:`ObjectDiscovery` with ``objects`` (B, k, gh, gw) bool; ``scores`` (B, gh, gw) the
        largest object map per patch; ``seeds`` its argmax.
    """

    if not isinstance(keys, torch.Tensor) or keys.ndim != 4:
        raise ValueError("dora_discovery: keys must be (B, gh, gw, D)")
    batch = keys.shape[0]
    if prototypes is not None:
        tracks = track_objects(prototypes, keys[None])  # (1, B, k, gh, gw)
        maps, objects = tracks.maps[0], tracks.masks[0]  # (B, k, gh, gw)
    elif attention is None or queries is None or tokens is None:
        raise ValueError("dora_discovery: give attention, queries and tokens, or prototypes")
    elif reference is None:
        found = discover_objects(attention, queries, tokens, k=k)  # B clips of one frame
        tracks = track_objects(found.prototypes, keys[:, None])  # (B, 1, k, gh, gw)
        maps, objects = tracks.maps[:, 0], tracks.masks[:, 0]  # (B, k, gh, gw)
    else:
        if not -batch <= reference < batch:
            raise ValueError(f"dora_discovery: reference {reference} out of range ({batch} frames)")
        r = reference % batch
        found = discover_objects(attention[r : r + 1], queries[r : r + 1], tokens[r : r + 1], k=k)
        tracks = track_objects(found.prototypes, keys[None])  # (1, B, k, gh, gw)
        maps, objects = tracks.maps[0], tracks.masks[0]  # (B, k, gh, gw)
    scores = maps.max(dim=1).values  # (B, gh, gw)
    masks = objects.any(dim=1)  # (B, gh, gw)
    return _result(masks, scores.flatten(1).argmax(dim=1), scores, objects)
