"""TimeTuning: fine-tune the last blocks of an image ViT so that patch clusters stay put over time.

The method (Salehi et al., ICCV 2023), as one training step on a batch of clips:

1. All frames go through the backbone (only its last ``trainable_blocks`` blocks train); a
   projection MLP maps each patch token to a 256-d vector, L2-normalised, and its cosine
   similarities to K = 200 unit prototypes are the patch's *scores*.
2. The first frames' scores of the whole batch get balanced soft cluster assignments by
   Sinkhorn-Knopp (:func:`labkit.losses.sinkhorn_knopp`, the function DoRA uses; no gradient).
   Under DDP the problem spans the global batch, every process's rows
   (:func:`sinkhorn_knopp_global`, as the official ``sinkhorn(Q, iters, world_size)``).
3. The *feature forwarder* carries those assignments to the later frames of each clip by label
   propagation with patch affinities of the backbone's own tokens, without the head and without
   gradient (:func:`labkit.propagation.propagate_soft_labels`, the propagation of the
   evaluation lab: first frame + ``n_last`` recent frames as context, top-5 neighbours in a
   6-patch window, temperature 0.1).
4. The loss is the cross-entropy between the last frame's own scores (divided by 0.1) and the
   forwarded assignment, taken as the arg-max cluster per patch (hard target, as the official
   code does; ``hard_targets=False`` uses the forwarded distribution).

After each optimiser step the prototypes are projected back onto the unit sphere
(:meth:`TimeTuningModel.after_optimizer_step`).

Details matched to the official code (``SMSD75/Timetuning``: ``time_tuning.py`` ``TimeT.get_loss``,
``mask_propagation.py``, ``models.FeatureExtractor``, ``my_utils.sinkhorn``):

* head ``D -> 1024 -> 1024 -> 512 -> 256`` with GELU between the linear layers (none after the
  last, no batch norm, PyTorch's default initialisation); prototypes ``randn`` then L2-normalised;
  scores ``normalize(head(x)) @ prototypes.T`` with the prototypes as stored (they are unit
  vectors except between an optimiser step and :meth:`TimeTuningHead.normalize_prototypes`);
* trainable backbone: blocks 10 and 11 of ViT-S/16 (the last two); the final LayerNorm, the
  patch and position embeddings stay frozen;
* backbone features: patch tokens of the last block after the final norm (DINO's
  ``get_intermediate_layers(x, n=1)``); the feature forwarder's affinities come from these
  tokens of the backbone being tuned (no frozen copy: the official code forwards with the same
  feature extractor, head off, under ``no_grad``);
* Sinkhorn: ``epsilon = 0.05``, 10 iterations (``get_loss``'s defaults; the
  ``--sinkhorn_iterations`` flag is never passed to it), one problem over the first-frame
  patches of the whole batch (``B * P`` rows; the later ``TimeT_clean`` rewrite solves it over
  all frames' patches and keeps frame 0's rows); each patch's assignment sums to 1;
* forwarder: ``n_last_frames = 7``, ``size_mask_neighborhood = 6``, ``topk = 5``, affinity
  ``exp(cos / 0.1)``, soft labels carried (no ``norm_mask``); only the last frame's forwarded map
  enters the loss, against the last frame's scores; the loss is the mean over patches and clips;
* learning rates (:meth:`TimeTuningModel.param_groups`): head and prototypes 1e-4, backbone 1e-5,
  AdamW, no weight decay on biases and 1-d parameters.

Simplifications, none of which changes the loss of the official default run:

* no EMA teacher and no feature queue. The README states the default run uses neither; the
  ``time_tuning.py`` flag ``--use_teacher`` defaults to True, but its update there,
  ``teacher = (1 - m) * teacher + m * student`` with ``m`` from 0.995 to 1, keeps the teacher
  within 0.5 % of the student, so the assignments come from the student in effect, as here;
* the forwarding features are the detached tokens of the same forward pass (the official code
  runs the backbone a second time under ``no_grad``, identical values without dropout), and the
  frames that only feed the forwarder (all but the last) run without autograd;
* the first frame's scores are computed without gradient: they only feed the Sinkhorn target
  (the official code's second loss term on them is ``0``).
* data augmentation and schedules belong to the trainer. The official loader crops and flips a
  clip as a whole and jitters colour, grey-scale and blur per frame, which is what
  ``labkit.train.data.ClipDataset(mode="dora")`` does; its batches (``"global"`` views) are
  accepted by :meth:`TimeTuningModel.forward` as they are.

Notation::

    B   clips in a batch          T   frames per clip (official: 4)
    gh, gw  patch grid            P = gh * gw patches per frame
    D   backbone channels         E   head output (256)
    K   prototypes (200)

References:
    Salehi, Gavves, Snoek, Asano, "Time Does Tell: Self-Supervised Time-Tuning of Dense Image
    Representations", ICCV 2023 (https://github.com/SMSD75/Timetuning).
    Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
    NeurIPS 2020 (SwAV: prototypes and Sinkhorn-Knopp assignments).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from labkit.losses import sinkhorn_knopp
from labkit.models import patch_size
from labkit.propagation import propagate_soft_labels

__all__ = [
    "TimeTuningConfig",
    "TimeTuningHead",
    "TimeTuningModel",
    "TimeTuningOutput",
    "timetuning_step",
    "timetuning_metrics",
    "timetuning_loss",
    "sinkhorn_knopp_global",
    "forward_assignments",
    "backbone_tokens",
    "trainable_parameters",
    "freeze_backbone",
]

# names of the parameters of a timm VisionTransformer that come after its blocks
_AFTER_BLOCKS = ("norm.", "fc_norm.", "head.", "attn_pool.", "head_drop.")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeTuningConfig:
    """Hyper-parameters of the TimeTuning step (defaults: the official code's)."""

    num_prototypes: int = 200  # K, the clusters of the Sinkhorn assignment
    head_dims: tuple[int, ...] = (1024, 1024, 512, 256)  # widths after the backbone; last is E
    trainable_blocks: int = 2  # last blocks of the backbone that train (official: blocks 10, 11)
    train_norm: bool = False  # also train the final LayerNorm (official: frozen)
    epsilon: float = 0.05  # Sinkhorn entropic regularisation
    sinkhorn_iterations: int = 10  # get_loss's default; the CLI flag never reaches it
    temperature: float = 0.1  # the last frame's scores are divided by it in the cross-entropy
    hard_targets: bool = True  # arg-max of the forwarded assignment (official) or the distribution
    n_last: int = 7  # recent frames in the forwarder's context besides the first
    topk: int = 5  # voting context patches per target patch
    affinity_temperature: float = 0.1  # exp(cos / t) affinities of the forwarder
    radius: int | None = 6  # forwarder's window in patches (size_mask_neighborhood); None: all

    def __post_init__(self) -> None:
        def positive_int(name: str, value: object, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"TimeTuningConfig: {name} must be an int >= {minimum}, got {value!r}"
                )

        positive_int("num_prototypes", self.num_prototypes)
        positive_int("trainable_blocks", self.trainable_blocks, 0)
        positive_int("sinkhorn_iterations", self.sinkhorn_iterations)
        positive_int("n_last", self.n_last, 0)
        positive_int("topk", self.topk)
        if self.radius is not None:
            positive_int("radius", self.radius, 0)
        if not self.head_dims:
            raise ValueError("TimeTuningConfig: head_dims must name at least the output width")
        for width in self.head_dims:
            positive_int("head_dims entries", width)
        for name in ("epsilon", "temperature", "affinity_temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"TimeTuningConfig: {name} must be > 0, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Backbone: freezing and a forward pass with autograd where it is needed
# ----------------------------------------------------------------------------------------------


def _blocks(backbone: nn.Module) -> nn.ModuleList | nn.Sequential:
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or not hasattr(backbone, "patch_embed") or not hasattr(backbone, "norm"):
        raise ValueError(
            f"{type(backbone).__name__} is not a timm VisionTransformer (needs patch_embed, "
            "blocks, norm); build one with labkit.models.load_backbone"
        )
    return blocks


def trainable_parameters(
    backbone: nn.Module, num_blocks: int, *, train_norm: bool = False
) -> list[nn.Parameter]:
    """The parameters TimeTuning trains in a backbone: those of its last ``num_blocks`` blocks.

    Changes nothing (see :func:`freeze_backbone` for that).

    Args:
        backbone: a timm VisionTransformer.
        num_blocks: how many of the last blocks train, ``0 <= num_blocks <= depth``.
        train_norm: include the final LayerNorm (``backbone.norm``).

    Returns:
        The parameters in ``backbone.named_parameters()`` order.
    """
    blocks = _blocks(backbone)
    depth = len(blocks)
    valid = isinstance(num_blocks, int) and not isinstance(num_blocks, bool)
    if not valid or not 0 <= num_blocks <= depth:
        raise ValueError(
            f"trainable_parameters: num_blocks must be an int in [0, {depth}], got {num_blocks!r}"
        )
    chosen = {id(p) for block in list(blocks)[depth - num_blocks :] for p in block.parameters()}
    if train_norm:
        norm: Any = backbone.norm  # checked by _blocks; nn.Module attributes are untyped
        chosen |= {id(p) for p in norm.parameters()}
    return [p for p in backbone.parameters() if id(p) in chosen]


def freeze_backbone(
    backbone: nn.Module, num_blocks: int, *, train_norm: bool = False
) -> list[nn.Parameter]:
    """Freeze a backbone except its last ``num_blocks`` blocks (``requires_grad`` set in place).

    Args:
        backbone: a timm VisionTransformer.
        num_blocks: how many of the last blocks keep training (``0``: everything frozen).
        train_norm: let the final LayerNorm train too (the official code keeps it frozen).

    Returns:
        The trainable parameters, as :func:`trainable_parameters` gives them.
    """
    keep = trainable_parameters(backbone, num_blocks, train_norm=train_norm)
    ids = {id(p) for p in keep}
    for p in backbone.parameters():
        p.requires_grad_(id(p) in ids)
    return keep


def _first_trainable_block(backbone: nn.Module) -> int:
    """Index of the first block with a trainable parameter; 0 if something before the blocks
    trains (embeddings, tokens, ``norm_pre``), ``depth`` if no block does."""
    for name, p in backbone.named_parameters():
        if p.requires_grad and not name.startswith(("blocks.", *_AFTER_BLOCKS)):
            return 0
    for i, block in enumerate(_blocks(backbone)):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(_blocks(backbone))


def backbone_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens of the last block after the final norm, with autograd only where it is needed.

    The same values as ``backbone.forward_features(images)`` without the prefix tokens (DINO's
    ``get_intermediate_layers(x, n=1)``, labkit's ``"tokens"`` features of the last layer). The
    embedding and the blocks before the first one with a trainable parameter run under
    ``torch.no_grad`` (they have nothing to train, so no activation is kept for them); the rest
    runs in the caller's autograd mode. The images themselves get no gradient.

    Args:
        backbone: a timm VisionTransformer (see :func:`labkit.models.load_backbone`).
        images: ``(N, 3, H, W)`` normalised batch, ``H`` and ``W`` multiples of the patch size.

    Returns:
        ``(N, gh, gw, D)`` tokens in the backbone's dtype on its device.
    """
    blocks = _blocks(backbone)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"backbone_tokens: images must be (N, 3, H, W), got {shape}")
    p = patch_size(backbone)
    height, width = images.shape[-2:]
    if height % p or width % p:
        raise ValueError(
            f"backbone_tokens: images of {height}x{width} are not multiples of the patch size {p}"
        )
    start = _first_trainable_block(backbone)
    frozen = torch.no_grad() if start > 0 else contextlib.nullcontext()
    vit: Any = backbone  # timm's sub-modules and methods (nn.Module attributes are untyped)
    with frozen:
        x = vit.patch_embed(images)  # (N, gh, gw, D) with dynamic_img_size, else (N, P, D)
        x = vit._pos_embed(x)  # (N, R + P, D), R prefix tokens
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        for block in list(blocks)[:start]:
            x = block(x)
    for block in list(blocks)[start:]:
        x = block(x)
    x = vit.norm(x)  # (N, R + P, D)
    patches = x[:, vit.num_prefix_tokens :]  # (N, P, D)
    return patches.reshape(images.shape[0], height // p, width // p, -1)  # (N, gh, gw, D)


# ----------------------------------------------------------------------------------------------
# Head, forwarder, loss
# ----------------------------------------------------------------------------------------------


class TimeTuningHead(nn.Module):
    """Projection MLP on patch tokens and a set of unit prototypes; outputs cosine scores.

    ``in_dim -> dims[0] (GELU) -> ... -> dims[-1] = E`` (GELU between linear layers, none after
    the last), the output L2-normalised and multiplied with the ``(K, E)`` prototypes. The
    prototypes start as normalised Gaussian vectors; call :meth:`normalize_prototypes` after each
    optimiser step to put them back on the unit sphere.
    """

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int] = (1024, 1024, 512, 256),
        num_prototypes: int = 200,
    ) -> None:
        """Build the head.

        Args:
            in_dim: D, the backbone's token width (384 for ViT-S).
            dims: widths of the linear layers; the last is the output width E.
            num_prototypes: K.
        """
        super().__init__()
        widths = [in_dim, *dims]
        for value in (*widths, num_prototypes):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"TimeTuningHead: in_dim, dims and num_prototypes must be ints >= 1, got "
                    f"in_dim={in_dim!r}, dims={tuple(dims)!r}, num_prototypes={num_prototypes!r}"
                )
        if len(widths) < 2:
            raise ValueError("TimeTuningHead: dims must have at least one width")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(a, b))
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_prototypes, widths[-1]), dim=1))

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Projected, L2-normalised features.

        Args:
            x: ``(..., D)`` patch tokens.

        Returns:
            ``(..., E)`` unit vectors.
        """
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of patches against the prototypes.

        Args:
            x: ``(..., D)`` patch tokens.

        Returns:
            ``(..., K)`` scores, cosine similarities in ``[-1, 1]`` while the prototypes are unit.
        """
        return torch.einsum("...e,ke->...k", self.project(x), self.prototypes)  # (..., K)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project the prototypes back onto the unit sphere (in place, no autograd)."""
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))


def forward_assignments(
    features: torch.Tensor,
    first_assignments: torch.Tensor,
    *,
    n_last: int = 7,
    topk: int = 5,
    temperature: float = 0.1,
    radius: int | None = 6,
) -> torch.Tensor:
    """TimeTuning's feature forwarder: carry the first frame's soft assignments through each clip.

    Label propagation with patch affinities (:func:`labkit.propagation.propagate_soft_labels`,
    the evaluation lab's code) applied clip by clip, without autograd: the result is a target.

    Args:
        features: ``(B, T, gh, gw, D)`` or ``(T, gh, gw, D)`` patch features whose affinities
            carry the labels (TimeTuning: the backbone's tokens, without the head).
        first_assignments: ``(B, gh, gw, K)`` or ``(gh, gw, K)`` soft assignments of frame 0
            (e.g. Sinkhorn-Knopp's; each patch summing to 1).
        n_last: recent frames in the context besides the first (official: 7).
        topk: voting context patches per target patch (official: 5).
        temperature: affinity temperature (official: 0.1).
        radius: neighbourhood window in patches (official: 6); ``None`` for the whole frame.

    Returns:
        ``(B, T, gh, gw, K)`` (or ``(T, gh, gw, K)``) float32 assignments on the features'
        device, detached; frame 0 is ``first_assignments``, every patch sums to 1 if the first
        frame's do.
    """
    single = features.ndim == 4
    feats = features[None] if single else features  # (B, T, gh, gw, D)
    first = first_assignments[None] if first_assignments.ndim == 3 else first_assignments
    if feats.ndim != 5 or first.ndim != 4:
        raise ValueError(
            "forward_assignments: need features (B, T, gh, gw, D) and first_assignments "
            f"(B, gh, gw, K), got {tuple(features.shape)} and {tuple(first_assignments.shape)}"
        )
    if first.shape[0] != feats.shape[0] or first.shape[1:3] != feats.shape[2:4]:
        raise ValueError(
            f"forward_assignments: features {tuple(features.shape)} and first_assignments "
            f"{tuple(first_assignments.shape)} disagree on the clips or the grid"
        )
    with torch.no_grad():
        out = torch.stack(
            [
                propagate_soft_labels(
                    clip.detach(),
                    soft.detach(),
                    n_last=n_last,
                    topk=topk,
                    temperature=temperature,
                    radius=radius,
                )
                for clip, soft in zip(feats, first)
            ]
        )  # (B, T, gh, gw, K)
    return out[0] if single else out


def timetuning_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 0.1,
    hard: bool = True,
) -> torch.Tensor:
    """Cross-entropy between patch scores and forwarded cluster assignments.

    ``hard=True`` (official): ``mean over patches of -log softmax(scores / temperature)[argmax
    targets]`` (first maximum on ties). ``hard=False``: the targets, normalised to sum to 1 per
    patch, weigh the log-probabilities of all clusters (no gradient through them either way).

    Args:
        scores: ``(..., K)`` scores of the patches (cosine similarities to the prototypes).
        targets: ``(..., K)`` non-negative assignments of the same patches.
        temperature: divides the scores, > 0 (official: 0.1).
        hard: arg-max targets (True) or soft targets (False).

    Returns:
        Scalar tensor, the mean over all patches (``...``), in the scores' dtype.
    """
    if scores.shape != targets.shape or scores.ndim < 1 or scores.shape[-1] < 1:
        raise ValueError(
            f"timetuning_loss: scores {tuple(scores.shape)} and targets {tuple(targets.shape)} "
            "must both be (..., K)"
        )
    if not temperature > 0:
        raise ValueError(f"timetuning_loss: temperature must be > 0, got {temperature}")
    targets = targets.detach()
    if not bool(torch.isfinite(targets).all()) or bool((targets < 0).any()):
        raise ValueError("timetuning_loss: targets must be finite and non-negative")
    K = scores.shape[-1]
    logits = scores.reshape(-1, K) / temperature  # (M, K), M patches
    if hard:
        return F.cross_entropy(logits, targets.reshape(-1, K).argmax(dim=-1))
    q = targets.reshape(-1, K).to(logits.dtype)
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    return -(q * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def sinkhorn_knopp_global(
    logits: torch.Tensor, epsilon: float = 0.05, iterations: int = 10
) -> torch.Tensor:
    """Sinkhorn-Knopp over the rows of every process: one balanced problem for the global batch.

    In one process (``torch.distributed`` not initialised, or a world of 1) this is
    :func:`labkit.losses.sinkhorn_knopp` on ``logits``. Under DDP each process holds its own rows;
    the column update takes its ``logsumexp`` over the rows of all processes (one ``all_gather``
    of ``K`` values per iteration) and the columns sum to ``N / K`` with ``N`` the global number
    of rows, so two processes with two clips each get the assignments one process computes for
    the four clips (up to float rounding). The official code does the same with ``all_reduce``
    in ``my_utils.sinkhorn(Q, nmb_iters, world_size)``. No autograd.

    Args:
        logits: ``(N_r, K)`` this process's rows (patches) against ``K`` columns (prototypes).
        epsilon: entropic regularisation, > 0.
        iterations: (column, row) rescaling rounds, >= 1.

    Returns:
        ``(N_r, K)`` plan in ``logits``' dtype, detached: rows sum to 1, columns (summed over all
        processes) to ``N / K``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sinkhorn_knopp(logits, epsilon=epsilon, iterations=iterations)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError("sinkhorn_knopp_global: logits must be a floating (N, K) tensor")
    if not torch.isfinite(logits).all():
        raise ValueError("sinkhorn_knopp_global: logits contain NaN or inf")
    world = dist.get_world_size()
    with torch.no_grad():
        work = torch.float64 if logits.dtype == torch.float64 else torch.float32
        scores = logits.to(work) / epsilon  # (N_r, K)
        rows = torch.tensor([float(scores.shape[0])], dtype=torch.float64, device=scores.device)
        dist.all_reduce(rows)  # N, the global row count
        log_column_mass = math.log(float(rows) / scores.shape[1])
        u = scores.new_zeros(scores.shape[0], 1)  # (N_r, 1) row potentials
        v = scores.new_zeros(1, scores.shape[1])  # (1, K) column potentials
        for _ in range(iterations):
            local = torch.logsumexp(scores + u, dim=0)  # (K,) this process's column masses
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local)
            v = log_column_mass - torch.logsumexp(torch.stack(gathered), dim=0)[None]  # (1, K)
            u = -torch.logsumexp(scores + v, dim=1, keepdim=True)  # (N_r, 1)
        return torch.exp(scores + u + v).to(logits.dtype)


# ----------------------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------------------


class TimeTuningOutput(NamedTuple):
    """Everything one step computed (the loss with its graph, the rest detached)."""

    loss: torch.Tensor  # () scalar with autograd
    scores: torch.Tensor  # (B, gh, gw, K) the last frame's scores (detached)
    targets: torch.Tensor  # (B, gh, gw, K) forwarded assignments of the last frame
    first_assignments: torch.Tensor  # (B, gh, gw, K) Sinkhorn assignments of frame 0
    images: int  # frames in the batch (B * T), the unit of throughput


class TimeTuningModel(nn.Module):
    """A backbone with TimeTuning's head; :meth:`step` turns a batch of clips into a loss.

    Building it freezes the backbone except its last ``config.trainable_blocks`` blocks
    (:func:`freeze_backbone`) and adds a :class:`TimeTuningHead` sized to the backbone. A trainer
    uses it as::

        model = TimeTuningModel(load_backbone(...), TimeTuningConfig())
        optimizer = torch.optim.AdamW(model.param_groups())
        loss, metrics = model.step(clips)   # clips (B, T, 3, H, W), normalised, on the device
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        model.after_optimizer_step()        # prototypes back to unit norm
    """

    def __init__(self, backbone: nn.Module, config: TimeTuningConfig | None = None) -> None:
        super().__init__()
        self.config = TimeTuningConfig() if config is None else config
        freeze_backbone(backbone, self.config.trainable_blocks, train_norm=self.config.train_norm)
        self.backbone = backbone
        embed_dim: Any = getattr(backbone, "embed_dim", None) or backbone.num_features  # timm's
        param = next(backbone.parameters())
        self.head = TimeTuningHead(
            int(embed_dim), self.config.head_dims, self.config.num_prototypes
        ).to(device=param.device, dtype=param.dtype)

    def forward(self, clips: torch.Tensor | dict[str, torch.Tensor]) -> TimeTuningOutput:
        """Loss of one batch of clips, with the tensors behind it.

        Args:
            clips: ``(B, T, 3, H, W)`` normalised frames (as :func:`labkit.models.prepare_images`
                makes them), ``T >= 2``, ``H`` and ``W`` multiples of the patch size, on the
                model's device; or a batch of :class:`labkit.train.data.ClipDataset` (a dict whose
                ``"global"`` is ``(B, G, T, 3, S, S)``: the first global view is used).

        Returns:
            :class:`TimeTuningOutput`.
        """
        clips = _clips_of(clips)
        B, T = clips.shape[:2]
        cfg = self.config
        with torch.no_grad():  # frames 0 .. T-2 only feed the targets
            early = backbone_tokens(self.backbone, clips[:, :-1].flatten(0, 1))  # (B*(T-1), ...)
        last = backbone_tokens(self.backbone, clips[:, -1])  # (B, gh, gw, D), autograd
        gh, gw, D = last.shape[1:]
        early = early.reshape(B, T - 1, gh, gw, D)
        with torch.no_grad():
            first_scores = self.head(early[:, 0])  # (B, gh, gw, K), only for the Sinkhorn target
        scores = self.head(last)  # (B, gh, gw, K), autograd
        # the targets and the loss in float32, also when the networks run under autocast
        with torch.no_grad(), torch.autocast(clips.device.type, enabled=False):
            K = first_scores.shape[-1]
            # one balanced problem over the first frames of the whole (global) batch, as the
            # official code
            first = sinkhorn_knopp_global(
                first_scores.reshape(B * gh * gw, K).float(),
                epsilon=cfg.epsilon,
                iterations=cfg.sinkhorn_iterations,
            ).reshape(B, gh, gw, K)
            features = torch.cat([early, last.detach()[:, None]], dim=1)  # (B, T, gh, gw, D)
            features = features.float()
            forwarded = forward_assignments(
                features,
                first,
                n_last=cfg.n_last,
                topk=cfg.topk,
                temperature=cfg.affinity_temperature,
                radius=cfg.radius,
            )  # (B, T, gh, gw, K) float32
            targets = forwarded[:, -1]  # (B, gh, gw, K)
        with torch.autocast(clips.device.type, enabled=False):
            scores = scores.float()
            loss = timetuning_loss(
                scores, targets, temperature=cfg.temperature, hard=cfg.hard_targets
            )
        return TimeTuningOutput(loss, scores.detach(), targets, first, B * T)

    def step(
        self,
        clips: torch.Tensor | dict[str, torch.Tensor],
        *,
        autocast_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One training step's loss and diagnostics (call ``loss.backward()`` yourself).

        Args:
            clips: ``(B, T, 3, H, W)`` normalised frames on the model's device, or a
                ``ClipDataset`` batch dict (see :meth:`forward`).
            autocast_dtype: run the networks under autocast in this dtype (bf16 on GPU), or None.

        Returns:
            ``(loss, metrics)``: the scalar loss with autograd and :func:`timetuning_metrics`.
        """
        out = timetuning_step(self, clips, autocast_dtype=autocast_dtype)
        return out.loss, timetuning_metrics(out)

    def after_optimizer_step(self) -> None:
        """Put the prototypes back on the unit sphere; call after every ``optimizer.step()``."""
        self.head.normalize_prototypes()

    def param_groups(
        self, lr: float = 1e-4, backbone_lr: float = 1e-5, weight_decay: float = 0.04
    ) -> list[dict]:
        """Optimiser parameter groups as the official code builds them.

        Head and prototypes at ``lr``, trainable backbone parameters at ``backbone_lr`` (official:
        ``head_lr / 10``); biases and 1-d parameters (norms) without weight decay. The official
        run uses AdamW, weight decay on a cosine schedule from 0.04 to 0.4 and a cosine
        learning-rate annealing; schedules are the trainer's.

        Returns:
            A list of dicts for ``torch.optim.AdamW``; empty groups are left out.
        """
        groups: list[dict] = []
        for params, rate in (
            ([(n, p) for n, p in self.backbone.named_parameters() if p.requires_grad], backbone_lr),
            ([(n, p) for n, p in self.head.named_parameters() if p.requires_grad], lr),
        ):
            decay = [p for n, p in params if not (n.endswith(".bias") or p.ndim == 1)]
            plain = [p for n, p in params if n.endswith(".bias") or p.ndim == 1]
            if decay:
                groups.append({"params": decay, "lr": rate, "weight_decay": weight_decay})
            if plain:
                groups.append({"params": plain, "lr": rate, "weight_decay": 0.0})
        return groups


def _clips_of(batch: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T, 3, H, W)`` from a tensor or from a ``ClipDataset`` batch's first global view."""
    if isinstance(batch, dict):
        if "global" not in batch:
            raise ValueError(
                f"TimeTuning: a batch dict needs a 'global' entry, got keys {sorted(batch)}"
            )
        views = batch["global"]
        if not isinstance(views, torch.Tensor) or views.ndim != 6:
            shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
            raise ValueError(f"TimeTuning: batch['global'] must be (B, G, T, 3, S, S), got {shape}")
        batch = views[:, 0]  # (B, T, 3, S, S)
    if not isinstance(batch, torch.Tensor) or batch.ndim != 5 or batch.shape[2] != 3:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"TimeTuning: clips must be (B, T, 3, H, W), got {shape}")
    if not batch.is_floating_point():
        raise ValueError(f"TimeTuning: clips must be normalised floats, got {batch.dtype}")
    if batch.shape[1] < 2:
        raise ValueError(f"TimeTuning: clips need T >= 2 frames, got {batch.shape[1]}")
    return batch


def timetuning_step(
    model: nn.Module,
    batch: torch.Tensor | dict[str, torch.Tensor],
    *,
    autocast_dtype: torch.dtype | None = None,
) -> TimeTuningOutput:
    """TimeTuning's forward and loss for one batch (no backward, no optimiser), like
    :func:`labkit.train.step.dora_step`.

    Args:
        model: a :class:`TimeTuningModel` (or a DDP / compiled wrapper of it).
        batch: ``(B, T, 3, H, W)`` normalised clips, or a ``ClipDataset`` batch dict whose
            ``"global"`` is ``(B, G, T, 3, S, S)`` (the first global view is used), on the device.
        autocast_dtype: run the networks under autocast in this dtype (bf16 on GPU), or None;
            Sinkhorn, the forwarder and the loss run in float32.

    Returns:
        :class:`TimeTuningOutput`.
    """
    clips = _clips_of(batch)
    if autocast_dtype is None:
        return model(clips)
    with torch.autocast(clips.device.type, dtype=autocast_dtype):
        return model(clips)


def timetuning_metrics(out: TimeTuningOutput) -> dict[str, float]:
    """Diagnostics of one step, as floats.

    Returns:
        ``loss``; ``agreement`` (fraction of last-frame patches whose best prototype is the
        forwarded target's arg-max, in [0, 1]); ``target_confidence`` (mean largest value of the
        forwarded assignments, in [1/K, 1]); ``target_clusters`` and ``first_clusters`` (distinct
        arg-max prototypes of the targets and of the first frames' assignments in the batch: a
        collapse shows as a small number).
    """
    with torch.no_grad():
        target_ids = out.targets.argmax(dim=-1)  # (B, gh, gw)
        return {
            "loss": float(out.loss.detach()),
            "agreement": float((out.scores.argmax(dim=-1) == target_ids).float().mean()),
            "target_confidence": float(out.targets.amax(dim=-1).mean()),
            "target_clusters": float(target_ids.unique().numel()),
            "first_clusters": float(out.first_assignments.argmax(dim=-1).unique().numel()),
        }
