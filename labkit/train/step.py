"""One training step of DoRA or DINO: the networks, the teacher's tracking forward, the losses.

(TimeTuning's step is :func:`labkit.timetuning.timetuning_step`; :func:`build_timetuning` builds
its model from a config here, beside the DoRA / DINO networks.)

Notation::

    B  clips;  T  frames per clip;  k  objects;  n  local crops per frame;  G  global views
    M  images in one forward pass;  K  head output dimension;  h  attention heads
    gh, gw  patch grid;  N = gh * gw patches;  D  channels;  S, s  global / local crop sides

DoRA (:func:`dora_step`), per batch of clips:

1. **Teacher**, one batched forward over all B*T global frames (no loop over frames): the
   [CLS] output through the head, and from the last block the [CLS] attention, the patch
   queries, keys and output tokens (:func:`teacher_forward`, no N x N matrix).
2. **Discovery** on each clip's first frame (DoRA's reference frame):
   :func:`labkit.tracking.discover_objects` with k heads (random per step from a seeded
   generator, or fixed), refined with Sinkhorn-Knopp or not.
3. **Tracking** of the k prototypes through the clip's frames with their keys
   (:func:`labkit.tracking.track_objects`), masks per frame and object.
4. **Student** on the k masked views of every frame (:func:`labkit.tracking.masked_views`)
   and on the n local crops, in one forward call (one DDP forward).
5. **Loss**: :meth:`labkit.losses.DINOLoss.forward_dora` (mean over objects and frames of
   ``0.5 * (object loss + local-crop loss)``; with ``dora_loss="published"`` the official code's
   loss, quirks included, see :class:`labkit.losses.DINOLoss`).

DINO (:func:`dino_step`): frames are independent images; 2 global views through the teacher,
2 global + n local views through the student, :meth:`labkit.losses.DINOLoss.forward`.

The teacher is a no-grad forward (``torch.no_grad``, not ``inference_mode``: its outputs are
the loss's targets and must be usable by autograd): :func:`labkit.attention.extract` with
``inference=False``, not a copy of it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from labkit.attention import extract, vit_blocks
from labkit.losses import DINOHead, DINOLoss
from labkit.models import load_backbone, resolve_pretrained
from labkit.models import patch_size as model_patch_size
from labkit.timetuning import TimeTuningConfig, TimeTuningModel
from labkit.tracking import Discovery, Tracks, discover_objects, masked_views, track_objects

__all__ = [
    "MultiCropNetwork",
    "TeacherOutput",
    "StepOutput",
    "build_backbone",
    "build_networks",
    "build_timetuning",
    "teacher_forward",
    "discover_and_track",
    "dora_step",
    "dino_step",
    "teacher_statistics",
    "update_teacher",
]


class MultiCropNetwork(nn.Module):
    """A backbone and a :class:`labkit.losses.DINOHead`; state-dict keys ``backbone.*``, ``head.*``.

    Views of different sizes go through the backbone one tensor at a time and through the head
    together, in one ``forward`` call (what DDP needs: one forward per backward).
    """

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, views: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor | list[torch.Tensor]:
        """Head outputs of one (M, 3, H, W) batch, or of a list of batches of any sizes.

        Returns:
            (M, K) logits, or a list of (M_i, K), one per input batch.
        """
        single = isinstance(views, torch.Tensor)
        batches = [views] if single else list(views)
        features = [self.backbone(v) for v in batches]  # (M_i, D) [CLS] outputs
        logits = self.head(torch.cat(features)).split([f.shape[0] for f in features])  # (M_i, K)
        return logits[0] if single else list(logits)


def build_backbone(config: Any) -> nn.Module:
    """The backbone a :class:`labkit.train.TrainConfig` trains, with its initial weights.

    From :func:`labkit.models.load_backbone` (``config.model``, ``config.drop_path_rate``,
    ``config.model_kwargs``, ``config.pos_embed_rule``, initial weights from ``checkpoint`` or
    ``pretrained``). A random init is built on ``config.img_size``'s grid; loaded weights keep
    their own grid and are resized per crop by the rule. Every backbone expects ImageNet
    normalisation, which is what the training data uses.

    Returns:
        A timm VisionTransformer on the CPU (eval mode, as ``load_backbone`` returns it).

    Raises:
        ValueError: ``img_size`` (or, for DoRA / DINO, ``local_size``) is not a multiple of the
            patch size; DoRA needs more heads than the model has.
    """

    pretrained, _ = resolve_pretrained(config.model, config.pretrained, config.checkpoint or None)
    from_weights = bool(config.checkpoint) or pretrained
    backbone = load_backbone(
        config.model,
        checkpoint=config.checkpoint or None,
        pretrained=config.pretrained,  # "auto" resolves the same way again, with its note
        pos_embed_rule=config.pos_embed_rule,
        # weights keep the grid they were trained on (resized per crop by the rule, as their
        # authors do); a random init is built on the crop's own grid
        **({} if from_weights else {"img_size": config.img_size}),
        drop_path_rate=config.drop_path_rate,
        **config.model_kwargs,
    )
    if config.method == "dora":
        blocks: Any = vit_blocks(backbone, attention=True)  # timm Blocks: attn is untyped
        heads = blocks[-1].attn.num_heads
        needed = max(config.heads) + 1 if isinstance(config.heads, tuple) else config.k
        if needed > heads:
            raise ValueError(
                f"k / heads: the model has {heads} attention heads, the config needs {needed}"
            )
    p = model_patch_size(backbone)
    for name in ("img_size",) if config.method == "timetuning" else ("img_size", "local_size"):
        if getattr(config, name) % p:
            raise ValueError(
                f"{name} {getattr(config, name)} must be a multiple of the patch size {p}"
            )
    return backbone


def build_networks(config: Any) -> tuple[MultiCropNetwork, MultiCropNetwork]:
    """DoRA / DINO: student and teacher for a :class:`labkit.train.TrainConfig`.

    The backbone comes from :func:`build_backbone`, the head is a :class:`DINOHead`; the teacher
    starts as a copy of the student, has no gradients and stays in eval mode (no stochastic
    depth).

    Returns:
        ``(student, teacher)`` on the CPU, the student in train mode.
    """
    backbone = build_backbone(config)
    embed_dim: Any = backbone.embed_dim  # timm's attribute (untyped on nn.Module)
    head = DINOHead(
        embed_dim,
        config.out_dim,
        hidden_dim=config.hidden_dim,
        bottleneck_dim=config.bottleneck_dim,
        norm_last_layer=config.norm_last_layer,
    )
    student = MultiCropNetwork(backbone, head).train()
    teacher = copy.deepcopy(student).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return student, teacher


def build_timetuning(config: Any) -> nn.Module:
    """TimeTuning: the backbone of :func:`build_backbone` with TimeTuning's head and prototypes.

    A :class:`labkit.timetuning.TimeTuningModel` (state-dict keys ``backbone.*``, ``head.*``)
    whose backbone is frozen except its last ``config.trainable_blocks`` blocks (and the final
    norm with ``train_norm``), built from the config's TimeTuning fields.

    Returns:
        The model on the CPU in train mode.

    Raises:
        ValueError: ``trainable_blocks`` exceeds the backbone's depth, or a field is invalid.
    """

    backbone = build_backbone(config)
    blocks: Any = backbone.blocks  # timm's nn.Sequential (untyped on nn.Module)
    depth = len(blocks)
    if config.trainable_blocks > depth:
        raise ValueError(
            f"trainable_blocks {config.trainable_blocks} exceeds the model's {depth} blocks"
        )
    tt = TimeTuningConfig(
        num_prototypes=config.num_prototypes,
        head_dims=tuple(config.head_dims),
        trainable_blocks=config.trainable_blocks,
        train_norm=config.train_norm,
        epsilon=config.epsilon,
        sinkhorn_iterations=config.sinkhorn_iterations,
        temperature=config.student_temp,
        hard_targets=config.hard_targets,
        n_last=config.forwarder_n_last,
        topk=config.forwarder_topk,
        affinity_temperature=config.forwarder_temperature,
        radius=config.forwarder_radius or None,
    )
    return TimeTuningModel(backbone, tt).train()


@dataclass(frozen=True)
class TeacherOutput:
    """The teacher's outputs for M images (all float, on the images' device).

    Attributes:
        logits: (M, K) head outputs of the [CLS] token.
        attention: (M, h, gh, gw) float32 [CLS] attention of the last block over the patches.
        queries, keys: (M, gh, gw, D) last block's patch queries and keys, heads concatenated.
        tokens: (M, gh, gw, D) output patch tokens (after the final norm).
    """

    logits: torch.Tensor
    attention: torch.Tensor
    queries: torch.Tensor
    keys: torch.Tensor
    tokens: torch.Tensor


@torch.no_grad()
def teacher_forward(teacher: MultiCropNetwork, images: torch.Tensor) -> TeacherOutput:
    """One pass of the teacher: head logits plus the last block's attention, queries, keys, tokens.

    Equal to ``teacher(images)`` for the logits and to
    ``labkit.attention.extract(backbone, images, kinds=("tokens", "keys", "queries"))`` for the
    rest, computed together: one :func:`labkit.attention.extract` under ``torch.no_grad`` (not
    ``inference_mode``: the outputs are the loss's targets), the last block run once, its q and
    k read off its qkv projection; the logits from the whole final-norm token sequence.

    Args:
        teacher: a :class:`MultiCropNetwork` whose backbone is a timm VisionTransformer.
        images: (M, 3, H, W) normalised, H and W multiples of the patch size.

    Returns:
        :class:`TeacherOutput`.
    """
    backbone: Any = teacher.backbone  # a timm VisionTransformer (forward_head is untyped)
    out = extract(
        backbone, images, -1, kinds=("tokens", "keys", "queries"), inference=False
    )  # attention (M, h, gh, gw); features (M, gh, gw, D)
    logits = teacher.head(backbone.forward_head(out.all_tokens()))  # (M, K)
    features = out.features
    if out.attention is None:  # pragma: no cover - extract's attention=True gives it
        raise ValueError("teacher_forward: the extraction returned no [CLS] attention")
    return TeacherOutput(
        logits, out.attention, features["queries"], features["keys"], features["tokens"]
    )


def discover_and_track(
    teacher_out: TeacherOutput,
    clips: int,
    *,
    k: int = 3,
    heads: Sequence[int] | Literal["random"] | None = "random",
    sinkhorn: bool = True,
    epsilon: float = 0.05,
    iterations: int = 30,
    threshold: Literal["mean", "batch_mean"] | float = "mean",
    generator: torch.Generator | None = None,
) -> tuple[Discovery, Tracks]:
    """Objects on each clip's first frame, tracked through its frames.

    Args:
        teacher_out: the teacher's outputs for B*T frames, clip-major (clip b's frame t is row
            ``b * T + t``).
        clips: B.
        k, heads, sinkhorn, epsilon, iterations, generator: see
            :func:`labkit.tracking.discover_objects` (heads shared by the batch).
        threshold: mask rule, see :func:`labkit.tracking.binarize_maps`.

    Returns:
        ``(discovery, tracks)``: prototypes (B, k, D), assignment (B, N, k); maps and masks
        (B, T, k, gh, gw). Computed in float32 outside autocast.
    """
    rows, heads_count, gh, gw = teacher_out.attention.shape
    if rows % clips:
        raise ValueError(f"discover_and_track: {rows} frames do not split into {clips} clips")
    frames = rows // clips
    device_type = teacher_out.attention.device.type
    with torch.autocast(device_type, enabled=False):
        attention = teacher_out.attention.float().reshape(clips, frames, heads_count, gh, gw)
        queries = teacher_out.queries.float().reshape(clips, frames, gh, gw, -1)
        tokens = teacher_out.tokens.float().reshape(clips, frames, gh, gw, -1)
        keys = teacher_out.keys.float().reshape(clips, frames, gh, gw, -1)  # (B, T, gh, gw, D)
        discovery = discover_objects(
            attention[:, 0],
            queries[:, 0],
            tokens[:, 0],
            k=k,
            heads=heads,
            sinkhorn=sinkhorn,
            epsilon=epsilon,
            iterations=iterations,
            generator=generator,
        )
        tracks = track_objects(discovery.prototypes, keys, threshold=threshold)
    return discovery, tracks


@dataclass
class StepOutput:
    """What one step computed.

    Attributes:
        loss: scalar, differentiable w.r.t. the student.
        teacher_logits: (R, K) detached teacher outputs the loss used as targets (R = B*T for
            DoRA, 2*B*T for DINO), for the collapse statistics.
        center: (1, K) the loss's center *before* this step updated it.
        discovery, tracks: DoRA's objects (None for DINO).
        images: frames of clips in the batch (B * T), the unit of throughput.
    """

    loss: torch.Tensor
    teacher_logits: torch.Tensor
    center: torch.Tensor
    discovery: Discovery | None
    tracks: Tracks | None
    images: int


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )


def dora_step(
    student: nn.Module,
    teacher: MultiCropNetwork,
    loss_fn: DINOLoss,
    batch: dict[str, torch.Tensor],
    *,
    epoch: float,
    k: int = 3,
    heads: Sequence[int] | Literal["random"] | None = "random",
    sinkhorn: bool = True,
    epsilon: float = 0.05,
    iterations: int = 30,
    threshold: Literal["mean", "batch_mean"] | float = "mean",
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> StepOutput:
    """DoRA's forward and loss for one batch (no backward, no optimiser).

    Args:
        student: the student :class:`MultiCropNetwork` (or a DDP / compiled wrapper of it).
        teacher: the teacher :class:`MultiCropNetwork`.
        loss_fn: the :class:`DINOLoss` (its center is updated).
        batch: ``{"global": (B, 1, T, 3, S, S), "local": (B, n, T, 3, s, s)}`` on the device.
        epoch: for the teacher-temperature warm-up.
        k, heads, sinkhorn, epsilon, iterations, threshold, generator: see
            :func:`discover_and_track`.
        autocast_dtype: run the networks under autocast in this dtype (bf16 on GPU), or None.

    Returns:
        :class:`StepOutput` with the discovery and the tracks; if the teacher's outputs are not
        finite (a diverged run) the loss is NaN and there are no objects.
    """
    frames_in = batch["global"]
    if frames_in.ndim != 6 or frames_in.shape[1] != 1:
        raise ValueError(
            f"dora_step: batch['global'] must be (B, 1, T, 3, S, S), got {tuple(frames_in.shape)}"
        )
    frames = frames_in[:, 0]  # (B, T, 3, S, S)
    clips, num_frames = frames.shape[:2]
    local = batch["local"]  # (B, n, T, 3, s, s)
    num_local = local.shape[1]
    p = model_patch_size(teacher.backbone)
    with _autocast(frames.device, autocast_dtype):
        teacher_out = teacher_forward(teacher, frames.flatten(0, 1))  # rows (B*T), clip-major
    out_dim = teacher_out.logits.shape[-1]
    teacher_logits = (
        teacher_out.logits.float().reshape(clips, num_frames, out_dim).transpose(0, 1)
    )  # (T, B, K)
    loss_fn.start_center(teacher_logits)  # center_init="first_batch": centred from step 0
    center = loss_fn.center.detach().clone()
    if not all(
        torch.isfinite(t).all()
        for t in (teacher_out.logits, teacher_out.queries, teacher_out.tokens)
    ):
        # a diverged teacher: nothing to discover; a NaN loss lets the caller stop cleanly
        nan = teacher_out.logits.new_full((), float("nan"))
        return StepOutput(
            nan, teacher_logits.reshape(-1, out_dim), center, None, None, clips * num_frames
        )
    discovery, tracks = discover_and_track(
        teacher_out,
        clips,
        k=k,
        heads=heads,
        sinkhorn=sinkhorn,
        epsilon=epsilon,
        iterations=iterations,
        threshold=threshold,
        generator=generator,
    )
    views = masked_views(frames, tracks.masks, p)  # (k, B, T, 3, S, S)
    objects_in = views.transpose(1, 2).flatten(0, 2)  # (k*T*B, 3, S, S), order (k, T, B)
    inputs = [objects_in]
    if num_local:
        inputs.append(local.permute(1, 2, 0, 3, 4, 5).flatten(0, 2))  # (n*T*B, 3, s, s), (n, T, B)
    with _autocast(frames.device, autocast_dtype):
        outputs = student(inputs)
    student_objects = outputs[0].float().reshape(k, num_frames, clips, out_dim)  # (k, T, B, K)
    student_local = (
        outputs[1].float().reshape(num_local, num_frames, clips, out_dim) if num_local else None
    )
    loss = loss_fn.forward_dora(student_objects, student_local, teacher_logits, epoch)
    return StepOutput(
        loss, teacher_logits.reshape(-1, out_dim), center, discovery, tracks, clips * num_frames
    )


def dino_step(
    student: nn.Module,
    teacher: MultiCropNetwork,
    loss_fn: DINOLoss,
    batch: dict[str, torch.Tensor],
    *,
    epoch: float,
    autocast_dtype: torch.dtype | None = None,
) -> StepOutput:
    """DINO's multi-crop forward and loss, every frame an independent image.

    Args:
        student, teacher, loss_fn, epoch, autocast_dtype: as in :func:`dora_step`.
        batch: ``{"global": (B, 2, T, 3, S, S), "local": (B, n, T, 3, s, s)}``.

    Returns:
        :class:`StepOutput` (no discovery, no tracks).
    """
    global_in = batch["global"]
    if global_in.ndim != 6 or global_in.shape[1] != 2:
        raise ValueError(
            f"dino_step: batch['global'] must be (B, 2, T, 3, S, S), got {tuple(global_in.shape)}"
        )
    clips, _, num_frames = global_in.shape[:3]
    rows = clips * num_frames
    local = batch["local"]
    num_local = local.shape[1]
    global_views = global_in.transpose(0, 1).flatten(0, 2)  # (2*B*T, 3, S, S), view-major
    inputs = [global_views]
    if num_local:
        inputs.append(local.transpose(0, 1).flatten(0, 2))  # (n*B*T, 3, s, s)
    with _autocast(global_in.device, autocast_dtype):
        with torch.no_grad():
            teacher_logits = teacher(global_views)  # (2*B*T, K)
        outputs = student(inputs)
    out_dim = teacher_logits.shape[-1]
    student_views = (
        torch.cat(outputs).float().reshape(2 + num_local, rows, out_dim)
    )  # (2 + n, R, K)
    teacher_views = teacher_logits.float().reshape(2, rows, out_dim)  # (2, R, K)
    loss_fn.start_center(teacher_views)
    center = loss_fn.center.detach().clone()
    loss = loss_fn(student_views, teacher_views, epoch)
    return StepOutput(loss, teacher_views.reshape(-1, out_dim), center, None, None, rows)


@torch.no_grad()
def teacher_statistics(
    logits: torch.Tensor, center: torch.Tensor, temperature: float
) -> dict[str, float]:
    """Collapse signals of the centred, sharpened teacher distribution
    ``q = softmax((t - c) / tau)``.

    * ``teacher_entropy``: mean over rows of ``H(q_r)`` in nats. Near ``log K``: every output
      is uniform (collapse to the uniform distribution, too much centering).
    * ``teacher_kl_uniform``: ``KL(mean_r q_r || uniform) = log K - H(mean_r q_r)``. Large
      (towards ``log K``): all rows put their mass on the same dimensions (collapse to one
      dimension, too much sharpening). A healthy run keeps the entropy well below ``log K`` and
      this KL small.
    * ``teacher_top_mass``: ``max_K mean_r q_r``, the share of the batch's mass on its most
      used dimension. Above 0.5: most rows pick the same dimension (the one-dimension collapse,
      read directly; :mod:`labkit.train.watchdog` uses it).

    Args:
        logits: (R, K) teacher outputs.
        center: (1, K) the center used for them.
        temperature: the teacher temperature used.

    Returns:
        ``{"teacher_entropy": float, "teacher_kl_uniform": float, "teacher_top_mass": float}``.
    """
    q = F.softmax((logits.float() - center.float()) / temperature, dim=-1)  # (R, K)
    entropy = -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean()
    mean = q.mean(0)  # (K,)
    kl = math.log(q.shape[-1]) + (mean * torch.log(mean.clamp_min(1e-30))).sum()
    return {
        "teacher_entropy": float(entropy),
        "teacher_kl_uniform": float(kl),
        "teacher_top_mass": float(mean.max()),
    }


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """EMA: ``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    teacher_params: list[torch.Tensor] = list(teacher.parameters())
    student_params: list[torch.Tensor] = list(student.parameters())
    if len(teacher_params) != len(student_params):
        raise ValueError("update_teacher: teacher and student have different parameters")
    torch._foreach_lerp_(teacher_params, [p.detach() for p in student_params], 1.0 - momentum)
