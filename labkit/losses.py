"""Losses and heads of DINO and DoRA: Sinkhorn-Knopp, the DINO projection head, the DINO loss.

Notation::

    B   samples of one view (images, or clips of one frame)
    N   patches of a frame;  k  objects (prototypes found by :mod:`labkit.tracking`)
    K   output dimension of the head ("prototypes" of the DINO loss, 65536 in the paper)
    G   teacher views;  V  student views  (DINO: G = 2 global crops, V = 2 + n)
    T   frames of a clip;  n  local crops per frame

What lives where: the maths is here; the training loop (optimiser, EMA teacher, schedules) is the
trainer's. :func:`cancel_last_layer_gradients` lives here, next to :class:`DINOHead`, because it
has to know how the head names its last layer.

References:
    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (DINO).
    Venkataramanan et al., "Is ImageNet worth 1 video? Learning strong image encoders from 1 long
    unlabelled video", ICLR 2024 (DoRA).
    Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013;
    Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
    NeurIPS 2020 (SwAV: the equipartition form used here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "sinkhorn_knopp",
    "DINOHead",
    "DINOLoss",
    "dora_pair_weights",
    "dora_published_pair_weights",
    "cancel_last_layer_gradients",
]


# ----------------------------------------------------------------------------------------------
# Sinkhorn-Knopp
# ----------------------------------------------------------------------------------------------


def sinkhorn_knopp(
    logits: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 30,
    *,
    differentiable: bool = False,
) -> torch.Tensor:
    """Balanced soft assignment of N patches to k objects (entropic optimal transport).

    Finds the plan ``P = exp(logits / epsilon + u[n] + v[j])`` whose rows (patches) sum to 1
    and whose columns (objects) sum to ``N / k``: every patch is fully assigned and the objects
    share the patches equally. Each iteration first rescales the columns, then the rows, as the
    DoRA / SwAV code does, so after any number of iterations the row marginal is exact and the
    column marginal is the one still converging. The iterates equal those of the usual
    max-shift-then-``exp`` version in exact arithmetic.

    Numerics: the updates are done on the dual potentials ``u`` (B, N, 1) and ``v`` (B, 1, k)
    with ``logsumexp``, in float32 (float64 if the input is float64), so nothing underflows. The
    max-shift version of the official DoRA code exponentiates ``(logits - max) / epsilon``; at
    epsilon 0.05 a patch whose k logits all lie ~5 below the global maximum underflows to a row
    of zeros and the next row normalisation divides 0 by 0: of ``torch.randn`` items of shape
    (196, 3) about 2% come out all-NaN, and the finite ones are off by up to ~0.2 where entries
    underflowed partially (see ``tests/test_losses.py``). Here they match a float64 run to 1e-5.

    Convergence: the column error decays geometrically at a rate set by
    ``spread(logits) / epsilon``. Measured on ``randn`` logits times ``s`` (N=196, k=3), largest
    relative column error after 30 iterations: ``s / epsilon = 2`` -> 1e-9, ``s / epsilon = 6``
    -> 3e-3, ``s / epsilon = 20`` -> 0.24 (1e-2 after 100, 3e-6 after 300). With cosine-like
    logits (|logit| <= 1) and the default epsilon of 0.05 the 30 default iterations only
    approximately balance the objects; raise ``iterations`` where the balance matters.

    Args:
        logits: (B, N, k) or (N, k) similarities of patches to objects, floating point, finite.
        epsilon: entropic regularisation (temperature) > 0; smaller is closer to a hard
            assignment and converges more slowly. 0.05 is the DoRA / SwAV default.
        iterations: number of (column, row) rescaling rounds, >= 1.
        differentiable: if False (default) the plan is computed without autograd and returned
            detached, as DoRA uses it (a target). If True, gradients flow through the
            unrolled iterations.

    Returns:
        Tensor of the shape and dtype of ``logits``: the plan, values in [0, 1], each row sums to
        1, each column sums to ``N / k`` (up to the convergence error above).
    """
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"sinkhorn_knopp: logits must be a torch.Tensor, got {type(logits)}")
    if logits.ndim not in (2, 3):
        raise ValueError(
            f"sinkhorn_knopp: logits must be (B, N, k) or (N, k), got shape {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"sinkhorn_knopp: logits must be floating point, got {logits.dtype}")
    if logits.shape[-1] < 1 or logits.shape[-2] < 1:
        raise ValueError(f"sinkhorn_knopp: empty logits of shape {tuple(logits.shape)}")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"sinkhorn_knopp: epsilon must be a finite number > 0, got {epsilon!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"sinkhorn_knopp: iterations must be an int >= 1, got {iterations!r}")
    if not torch.isfinite(logits).all():
        raise ValueError("sinkhorn_knopp: logits contain NaN or inf")

    batched = logits.ndim == 3
    x = logits if batched else logits.unsqueeze(0)  # (B, N, k)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    num_patches, num_objects = x.shape[1], x.shape[2]
    log_column_mass = math.log(num_patches / num_objects)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        scores = x.to(work) / epsilon  # (B, N, k)
        u = scores.new_zeros(x.shape[0], num_patches, 1)  # (B, N, 1) row potentials
        v = scores.new_zeros(x.shape[0], 1, num_objects)  # (B, 1, k) column potentials
        for _ in range(iterations):
            # columns: each object receives N / k of the patches' unit mass
            v = log_column_mass - torch.logsumexp(scores + u, dim=1, keepdim=True)  # (B, 1, k)
            # rows: each patch hands out exactly 1
            u = -torch.logsumexp(scores + v, dim=2, keepdim=True)  # (B, N, 1)
        plan = torch.exp(scores + u + v).to(logits.dtype)  # (B, N, k)
    if not differentiable:
        plan = plan.detach()
    return plan if batched else plan.squeeze(0)


# ----------------------------------------------------------------------------------------------
# DINO head
# ----------------------------------------------------------------------------------------------


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalised bottleneck -> weight-normalised linear layer.

    ``in_dim -> hidden_dim (GELU) -> ... -> bottleneck_dim``, L2-normalised, then
    ``last_layer``: a bias-free linear layer to ``out_dim`` under
    :func:`torch.nn.utils.parametrizations.weight_norm` (weight = g * v / ||v||, per output row).
    g starts at 1; with ``norm_last_layer=True`` it is frozen at 1, so every output is a cosine
    similarity between the bottleneck and a unit prototype.

    Parameter names: the new weight-norm API stores g and v as
    ``last_layer.parametrizations.weight.original0`` / ``.original1`` (the old API called them
    ``last_layer.weight_g`` / ``weight_v``; checkpoints in the old naming still load, torch
    registers a conversion hook). Use :attr:`last_layer` (or names containing ``"last_layer"``)
    to find them, e.g. in :func:`cancel_last_layer_gradients`.

    References:
        Caron et al., ICCV 2021 (DINO), ``DINOHead`` of the official code.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        *,
        use_bn: bool = False,
    ) -> None:
        """Build the head.

        Args:
            in_dim: input features ([CLS] token dimension of the backbone).
            out_dim: K, the number of output "prototypes".
            hidden_dim: width of the hidden MLP layers.
            bottleneck_dim: width of the L2-normalised bottleneck.
            nlayers: linear layers in the MLP (>= 1; 1 means in_dim -> bottleneck directly).
            norm_last_layer: freeze the weight-norm scale g at 1 (DINO's default; the paper
                notes it stabilises training of ViT-S).
            use_bn: BatchNorm1d after each hidden linear layer.
        """
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("nlayers", nlayers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DINOHead: {name} must be an int >= 1, got {value!r}")
        self.out_dim = out_dim
        self.norm_last_layer = norm_last_layer
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            width = in_dim
            for _ in range(nlayers - 1):
                layers.append(nn.Linear(width, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                width = hidden_dim
            layers.append(nn.Linear(width, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # the last layer keeps nn.Linear's default init for v (as DINO does); g is set to 1
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        scale = self.last_layer.parametrizations.weight.original0  # g, (out_dim, 1)
        with torch.no_grad():
            scale.fill_(1.0)
        scale.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project features.

        Args:
            x: (..., in_dim) features.

        Returns:
            (..., out_dim) logits, same dtype as the head's parameters.
        """
        x = self.mlp(x)  # (..., bottleneck_dim)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)  # (..., out_dim)


def cancel_last_layer_gradients(module: nn.Module, epoch: int, freeze_epochs: int) -> int:
    """Drop the gradients of every head's last layer while ``epoch < freeze_epochs``.

    DINO keeps the output layer fixed during the first epoch(s) (``--freeze_last_layer 1``):
    call this between ``loss.backward()`` and ``optimizer.step()``. Works on a bare
    :class:`DINOHead` or on any model containing one (also under DDP): every sub-module with a
    ``last_layer`` attribute that is a module is affected.

    Args:
        module: the student (or its head).
        epoch: current epoch, 0-based.
        freeze_epochs: number of epochs during which the last layer stays fixed.

    Returns:
        Number of parameter tensors whose ``.grad`` was set to None (0 once the epoch is past).

    Raises:
        ValueError: when gradients should be cancelled but no ``last_layer`` is found (a silent
            no-op here would leave the layer training).
    """
    if epoch >= freeze_epochs:
        return 0
    last_layers = [
        layer
        for m in module.modules()
        if isinstance(layer := getattr(m, "last_layer", None), nn.Module)
    ]
    if not last_layers:
        raise ValueError(
            f"cancel_last_layer_gradients: {type(module).__name__} has no sub-module with a "
            "`last_layer` (expected a DINOHead inside)"
        )
    cleared = 0
    for layer in last_layers:
        for param in layer.parameters():
            param.grad = None
            cleared += 1
    return cleared


# ----------------------------------------------------------------------------------------------
# DINO loss
# ----------------------------------------------------------------------------------------------


def dora_pair_weights(num_objects: int, num_local: int) -> torch.Tensor:
    """Pair weights (1, k + n) expressing DoRA's per-frame loss with :meth:`DINOLoss.forward`.

    Student views are ordered ``[object 0, ..., object k-1, local 0, ..., local n-1]`` against
    the single teacher view (the global view of the same frame). Each object view weighs
    ``0.5 / k`` and each local crop ``0.5 / n``, so that the weighted sum is
    ``mean_j 0.5 * (masked-object loss_j + local loss)``. Without local crops (n = 0) the
    objects weigh ``1 / k`` each.

    Returns:
        (1, k + n) float32 weights summing to 1.
    """
    if num_objects < 1 or num_local < 0:
        raise ValueError(
            f"dora_pair_weights: need num_objects >= 1 and num_local >= 0, got "
            f"{num_objects}, {num_local}"
        )
    if num_local == 0:
        return torch.full((1, num_objects), 1.0 / num_objects)
    objects = torch.full((num_objects,), 0.5 / num_objects)
    local = torch.full((num_local,), 0.5 / num_local)
    return torch.cat([objects, local])[None]  # (1, k + n)


def dora_published_pair_weights(num_objects: int, num_local: int, num_frames: int) -> torch.Tensor:
    """Pair weights (1, k + n) of the official DoRA loss, quirks included (``"published"``).

    Same view order as :func:`dora_pair_weights`. The official ``DINOLoss.forward`` keeps one
    accumulator over the objects: ``F_j = (F_{j-1} + S_j) / T`` with ``S_j`` the sum over frames
    of ``0.5 * (object_j loss + local loss)``, and returns ``mean_j F_j``. Unrolled, object i
    (0-based) counts with ``u_i = 1 + 1/T + ... + T^-(k-1-i)`` and the local term with the sum
    of the ``u_i``; its local-crop loop skips crop 0. So::

        object i:        0.5 * u_i / k
        local crop 0:    0
        local crop c>0:  0.5 * sum_i(u_i) / (k * (n - 1))

    The weights sum to ``mean_i u_i``, the factor by which the official loss is larger than a
    normalised one: 1 for k = 1, about 1.089 for k = 3, T = 8, (k + 1) / 2 for T = 1.

    Args:
        num_objects: k >= 1.
        num_local: n >= 2 (the official code divides by zero with n = 1 and fails with n = 0).
        num_frames: T >= 1.

    Returns:
        (1, k + n) float64 weights, *not* normalised: their sum is the scale of the official loss.
    """
    if num_objects < 1 or num_local < 2 or num_frames < 1:
        raise ValueError(
            "dora_published_pair_weights: need num_objects >= 1, num_local >= 2 (the official "
            "loss never scores local crop 0 and divides by zero without a second crop) and "
            f"num_frames >= 1, got {num_objects}, {num_local}, {num_frames}"
        )
    powers = torch.tensor(float(num_frames), dtype=torch.float64) ** -torch.arange(
        num_objects, dtype=torch.float64
    )  # (k,) 1, 1/T, 1/T^2 ...
    counts = torch.cumsum(powers, 0).flip(0)  # (k,) u_i = sum_{m < k - i} T^-m
    objects = 0.5 * counts / num_objects
    crop_weight = 0.5 * float(counts.sum()) / (num_objects * (num_local - 1))
    local = torch.full((num_local,), crop_weight, dtype=torch.float64)
    local[0] = 0.0  # the official local-crop loop skips crop 0
    return torch.cat([objects, local])[None]  # (1, k + n)


ViewsLike = torch.Tensor | Sequence[torch.Tensor]


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher softmax and the student log-softmax.

    For teacher views g and student views v (all views of the same B samples)::

        q[g, b] = softmax((teacher[g, b] - center) / teacher_temp(epoch))       (no gradient)
        p[v, b] = log_softmax(student[v, b] / student_temp)
        CE[g, v] = mean_b  -sum_K q[g, b, K] * p[v, b, K]
        loss = sum_{g, v} w[g, v] * CE[g, v],   w >= 0 normalised to sum 1

    DINO multi-crop (default ``w``): 2 global views through the teacher, the same 2 + n local
    views through the student, ``w`` uniform over all pairs except ``g == v`` (a view is not
    its own target; student view i < G is assumed to be teacher view i)::

        loss(student_out (V*B, K) or list of V (B, K), teacher_out (2*B, K) or list, epoch)

    DoRA (:meth:`forward_dora`): per frame t, the teacher sees the global view of frame t; the
    student sees the k object views (the same global view masked by each tracked object,
    :func:`labkit.tracking.masked_views`) and the n local crops of frame t. The intended loss
    is ``mean over objects j and frames t of 0.5 * (CE(teacher_t, object_jt) + mean_c
    CE(teacher_t, local_ct))``. It is the weighted loss above with one teacher view, frames
    folded into the batch (every frame has B rows, so the mean over the T*B rows is the mean
    over frames of the mean over samples) and :func:`dora_pair_weights`.

    Quirks of the official DoRA ``DINOLoss`` (``main.py``), *not* reproduced by the default
    ``dora_loss="corrected"``; ``dora_loss="published"`` reproduces the first two (and the
    official scale, see :func:`dora_published_pair_weights`) to compare with published numbers:

    * ``frame_loss`` is not reset between objects: object j's accumulator starts from object
      j-1's frame-averaged loss and is divided by T again, so the objects are weighted
      unequally (earlier objects count a little more: for k=3, T=8 the weights are
      proportional to 1 + 1/8 + 1/64, 1 + 1/8 and 1).
    * The local-crop loop keeps DINO's ``if v == iq: continue``. With a single teacher view,
      ``iq`` is always 0 and the student list holds only local crops, so local crop 0 never
      enters the loss (it receives no gradient).
    * ``update_center`` calls ``dist.all_reduce`` unconditionally, so the loss fails in a single
      process; here the all-reduce happens only if ``torch.distributed.is_initialized()``.
    * With no local crops the local term divides 0 by 0; here the loss is then the object term.
      (With one local crop the official code divides 0 by 0 too, as crop 0 is skipped; the
      published variant therefore needs n >= 2.)

    The center is updated from the teacher outputs of the call (all G*B rows; for DoRA all T*B
    frame rows, as the official code does), after the loss is computed.

    References:
        Caron et al., ICCV 2021 (DINO); Venkataramanan et al., ICLR 2024 (DoRA).
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        teacher_views: int = 2,
        dora_loss: Literal["corrected", "published"] = "corrected",
        center_init: Literal["zeros", "first_batch"] = "zeros",
    ) -> None:
        """Configure the loss.

        Args:
            out_dim: K, the head's output dimension (size of the center).
            warmup_teacher_temp: teacher temperature at epoch 0. DINO: 0.04; a too high
                teacher temperature early on makes training unstable.
            teacher_temp: teacher temperature after the warm-up (DINO: 0.04 to 0.07).
            warmup_teacher_temp_epochs: W; the temperature goes linearly from
                ``warmup_teacher_temp`` (epoch 0) to ``teacher_temp`` (epoch W - 1), as
                ``np.linspace(warmup, final, W)[epoch]`` in DINO, then stays constant.
            student_temp: student temperature (0.1).
            center_momentum: EMA momentum of the teacher center (0.9).
            teacher_views: G used to split a 2-D ``teacher_out`` of shape (G*B, K) when no
                ``pair_weights`` say otherwise (DINO: 2 global crops).
            dora_loss: what :meth:`forward_dora` computes. ``"corrected"`` (default): the
                intended loss, every object and every local crop weighted equally.
                ``"published"``: the official DoRA code's loss, quirks included (objects
                weighted unequally, local crop 0 never scored, see the class docstring);
                matches the official code to 1e-6 (``tests/test_dora_loss_published.py``).
            center_init: the center before the first update. ``"zeros"`` (DINO, DoRA): the
                first steps are barely centred (after one update the center is a tenth of the
                batch mean). ``"first_batch"``: the first call sets the center to its batch's
                mean teacher output before computing the loss (:meth:`start_center`), so even
                step 0 is centred; a small run's first steps cannot drift to one dimension.
        """
        super().__init__()
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"DINOLoss: out_dim must be an int >= 1, got {out_dim!r}")
        for name, value in (
            ("warmup_teacher_temp", warmup_teacher_temp),
            ("teacher_temp", teacher_temp),
            ("student_temp", student_temp),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"DINOLoss: {name} must be a finite number > 0, got {value!r}")
        if warmup_teacher_temp_epochs < 0:
            raise ValueError(
                "DINOLoss: warmup_teacher_temp_epochs must be >= 0, got "
                f"{warmup_teacher_temp_epochs}"
            )
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"DINOLoss: center_momentum must be in [0, 1], got {center_momentum}")
        if teacher_views < 1:
            raise ValueError(f"DINOLoss: teacher_views must be >= 1, got {teacher_views}")
        if dora_loss not in ("corrected", "published"):
            raise ValueError(
                f"DINOLoss: dora_loss must be 'corrected' or 'published', got {dora_loss!r}"
            )
        self.out_dim = out_dim
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.final_teacher_temp = float(teacher_temp)
        self.warmup_teacher_temp_epochs = int(warmup_teacher_temp_epochs)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.teacher_views = int(teacher_views)
        self.dora_loss = dora_loss
        if center_init not in ("zeros", "first_batch"):
            raise ValueError(
                f"DINOLoss: center_init must be 'zeros' or 'first_batch', got {center_init!r}"
            )
        self.center_init = center_init
        self._center_started = center_init == "zeros"
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, epoch: float) -> float:
        """Teacher temperature at ``epoch`` (0-based; fractional epochs interpolate)."""
        if epoch < 0:
            raise ValueError(f"DINOLoss: epoch must be >= 0, got {epoch}")
        warmup = self.warmup_teacher_temp_epochs
        if epoch >= warmup:
            return self.final_teacher_temp
        fraction = min(epoch / max(warmup - 1, 1), 1.0)
        start, end = self.warmup_teacher_temp, self.final_teacher_temp
        return start + fraction * (end - start)

    # -- shapes ----------------------------------------------------------------------------------

    def _views(
        self, x: ViewsLike, num_views: int | None, batch: int | None, name: str
    ) -> torch.Tensor:
        """Bring views to (views, B, K); a 2-D tensor is split view-major like ``torch.chunk``."""
        if isinstance(x, torch.Tensor):
            if x.ndim == 3:
                views = x
            elif x.ndim == 2:
                rows = x.shape[0]
                if num_views is None:
                    if batch is None or batch == 0 or rows % batch:
                        raise ValueError(
                            f"DINOLoss: {name} has {rows} rows, not a multiple of the batch "
                            f"size {batch}"
                        )
                    num_views = rows // batch
                if rows == 0 or rows % num_views:
                    raise ValueError(
                        f"DINOLoss: {name} has {rows} rows, not divisible into {num_views} views"
                    )
                views = x.reshape(num_views, rows // num_views, x.shape[1])  # (views, B, K)
            else:
                raise ValueError(
                    f"DINOLoss: {name} must be (views*B, K), (views, B, K) or a list of (B, K), "
                    f"got shape {tuple(x.shape)}"
                )
        else:
            items = list(x)
            if not items or any(not isinstance(t, torch.Tensor) or t.ndim != 2 for t in items):
                raise ValueError(f"DINOLoss: {name} must be a non-empty list of (B, K) tensors")
            if len({tuple(t.shape) for t in items}) != 1:
                raise ValueError(
                    f"DINOLoss: the views of {name} differ in shape: "
                    f"{[tuple(t.shape) for t in items]}"
                )
            views = torch.stack(items)  # (views, B, K)
        if num_views is not None and views.shape[0] != num_views:
            raise ValueError(f"DINOLoss: {name} has {views.shape[0]} views, expected {num_views}")
        if views.shape[1] == 0:
            raise ValueError(f"DINOLoss: {name} has an empty batch")
        if views.shape[2] != self.out_dim:
            raise ValueError(
                f"DINOLoss: {name} has output dimension {views.shape[2]}, expected out_dim "
                f"{self.out_dim}"
            )
        if not views.is_floating_point():
            raise ValueError(f"DINOLoss: {name} must be floating point, got {views.dtype}")
        return views

    # -- loss ------------------------------------------------------------------------------------

    def forward(
        self,
        student_out: ViewsLike,
        teacher_out: ViewsLike,
        epoch: float,
        *,
        pair_weights: torch.Tensor | None = None,
        update_center: bool = True,
    ) -> torch.Tensor:
        """Weighted cross-entropy over (teacher view, student view) pairs; updates the center.

        Args:
            student_out: V student views: (V*B, K) stacked view-major (as ``torch.cat`` of the
                crops), (V, B, K), or a list of V (B, K) tensors.
            teacher_out: G teacher views, same forms; a 2-D tensor is split into
                ``pair_weights.shape[0]`` views if given, else ``teacher_views`` (2).
            epoch: current epoch (0-based) for the teacher-temperature warm-up.
            pair_weights: (G, V) nonnegative weights, normalised here to sum 1 (a 0/1 mask
                averages the selected pairs). None: every pair except ``g == v`` (DINO).
            update_center: EMA-update the center with ``teacher_out`` after computing the loss.

        Returns:
            Scalar loss (float32 or the student's dtype), differentiable w.r.t. the student.

        Raises:
            ValueError: on inconsistent shapes, an output dimension other than ``out_dim``, or
                weights that select no pair.
        """
        if pair_weights is not None:
            if not isinstance(pair_weights, torch.Tensor):
                pair_weights = torch.as_tensor(pair_weights, dtype=torch.float32)
            if pair_weights.ndim != 2:
                raise ValueError(
                    f"DINOLoss: pair_weights must be (G, V), got shape {tuple(pair_weights.shape)}"
                )
            teacher_count, student_count = pair_weights.shape
        else:
            # only a 2-D (G*B, K) teacher tensor needs to be told G; other forms carry it
            teacher_count, student_count = None, None
            if isinstance(teacher_out, torch.Tensor) and teacher_out.ndim == 2:
                teacher_count = self.teacher_views
        teacher = self._views(teacher_out, teacher_count, None, "teacher_out")  # (G, B, K)
        student = self._views(student_out, student_count, teacher.shape[1], "student_out")
        # teacher (G, B, K), student (V, B, K)
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f"DINOLoss: student views have batch {student.shape[1]}, teacher views "
                f"{teacher.shape[1]}"
            )
        num_teacher, batch, _ = teacher.shape
        num_student = student.shape[0]

        if pair_weights is None:
            weights = 1.0 - torch.eye(num_teacher, num_student, device=student.device)  # (G, V)
        else:
            # float64 inputs keep float64 weights (the published variant is compared at 1e-6)
            weight_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
            weights = pair_weights.to(device=student.device, dtype=weight_dtype)
            if not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError("DINOLoss: pair_weights must be finite and >= 0")
        total = weights.sum()
        if not total > 0:
            raise ValueError(
                f"DINOLoss: no (teacher view, student view) pair to compare "
                f"(G={num_teacher}, V={num_student}, weights sum to {float(total)})"
            )
        weights = weights / total

        temperature = self.teacher_temperature(epoch)
        self.start_center(teacher)
        center = self.center.to(teacher.dtype)
        with torch.no_grad():
            targets = F.softmax((teacher.detach() - center) / temperature, dim=-1)  # (G, B, K)
        log_probs = F.log_softmax(student / self.student_temp, dim=-1)  # (V, B, K)
        # g teacher view, v student view, b sample, K output dimension
        cross_entropy = -torch.einsum("gbK,vbK->gv", targets.to(log_probs.dtype), log_probs) / batch
        loss = (weights.to(cross_entropy.dtype) * cross_entropy).sum()
        if update_center:
            self.update_center(teacher)
        return loss

    def forward_dora(
        self,
        student_objects: ViewsLike,
        student_local: torch.Tensor | None,
        teacher_global: torch.Tensor,
        epoch: float,
        *,
        update_center: bool = True,
    ) -> torch.Tensor:
        """DoRA's loss: mean over objects and frames of 0.5 * (object loss + local-crop loss).

        With ``dora_loss="published"`` the official code's loss instead (objects weighted by
        :func:`dora_published_pair_weights`, local crop 0 left out; needs n >= 2).

        Args:
            student_objects: (k, T, B, K) student outputs on the k masked object views of each
                frame, or a list of k (T, B, K) tensors (the official code's list).
            student_local: (n, T, B, K) student outputs on the n local crops of each frame, or
                None / n = 0 for no local crops. (The official ``MultiCropWrapper`` returns
                (T, n*B, K): ``x.reshape(T, n, B, K).transpose(0, 1)`` converts it.)
            teacher_global: (T, B, K) teacher outputs on the global view of each frame.
            epoch: current epoch for the teacher-temperature warm-up.
            update_center: EMA-update the center with all T*B teacher rows.

        Returns:
            Scalar loss, differentiable w.r.t. the student outputs.
        """
        if not isinstance(teacher_global, torch.Tensor) or teacher_global.ndim != 3:
            raise ValueError(
                "DINOLoss.forward_dora: teacher_global must be (T, B, K), got "
                f"{getattr(teacher_global, 'shape', type(teacher_global))}"
            )
        frames, batch, dim = teacher_global.shape
        if isinstance(student_objects, torch.Tensor):
            objects = student_objects
        else:
            items = list(student_objects)
            if not items or len({tuple(t.shape) for t in items}) != 1:
                raise ValueError("DINOLoss.forward_dora: student_objects must be k equal (T, B, K)")
            objects = torch.stack(items)
        if objects.ndim != 4 or tuple(objects.shape[1:]) != (frames, batch, dim):
            raise ValueError(
                f"DINOLoss.forward_dora: student_objects must be (k, {frames}, {batch}, {dim}), "
                f"got {tuple(objects.shape)}"
            )
        views = [objects.reshape(objects.shape[0], frames * batch, dim)]  # (k, T*B, K)
        num_local = 0
        if student_local is not None:
            if student_local.ndim != 4 or tuple(student_local.shape[1:]) != (frames, batch, dim):
                raise ValueError(
                    f"DINOLoss.forward_dora: student_local must be (n, {frames}, {batch}, {dim}), "
                    f"got {tuple(student_local.shape)}"
                )
            num_local = student_local.shape[0]
            views.append(student_local.reshape(num_local, frames * batch, dim))  # (n, T*B, K)
        student = torch.cat(views)  # (k + n, T*B, K)
        teacher = teacher_global.reshape(1, frames * batch, dim)  # (1, T*B, K)
        scale = 1.0
        if self.dora_loss == "published":
            if num_local < 2:
                raise ValueError(
                    f"DINOLoss.forward_dora: dora_loss='published' needs n >= 2 local crops, got "
                    f"{num_local} (the official loss skips crop 0 and divides by zero without a "
                    "second one)"
                )
            weights = dora_published_pair_weights(objects.shape[0], num_local, frames)
            scale = float(weights.sum())  # forward normalises; the official weights do not
        else:
            weights = dora_pair_weights(objects.shape[0], num_local)
        loss = self.forward(
            student, teacher, epoch, pair_weights=weights, update_center=update_center
        )
        return loss * scale if scale != 1.0 else loss

    @torch.no_grad()
    def start_center(self, teacher_out: ViewsLike) -> None:
        """With ``center_init="first_batch"``: set a center that was never updated (all zeros)
        to the mean of ``teacher_out`` (over all rows and ranks). Otherwise, or once started, a
        no-op. :meth:`forward` calls it; call it earlier to read the center the loss will use.

        Args:
            teacher_out: teacher outputs, (rows, K), (views, rows, K) or a list of (rows, K).
        """
        if self._center_started:
            return
        if not bool(self.center.any()):  # fresh, or a checkpoint written before any update
            self.center.copy_(self._batch_center(teacher_out).to(self.center.dtype))
        self._center_started = True

    @torch.no_grad()
    def update_center(self, teacher_out: ViewsLike) -> None:
        """EMA update of the center with the mean teacher output over all rows (and all ranks).

        Args:
            teacher_out: teacher outputs, (rows, K), (views, rows, K) or a list of (rows, K).
        """
        batch_center = self._batch_center(teacher_out)  # (1, K)
        self.center.mul_(self.center_momentum).add_(
            batch_center.to(self.center.dtype), alpha=1.0 - self.center_momentum
        )

    @torch.no_grad()
    def _batch_center(self, teacher_out: ViewsLike) -> torch.Tensor:
        """The mean teacher output (1, K) over all rows of ``teacher_out`` and all ranks."""
        if isinstance(teacher_out, torch.Tensor):
            rows = teacher_out.reshape(-1, teacher_out.shape[-1])
        else:
            rows = torch.cat(list(teacher_out))
        if rows.shape[-1] != self.out_dim or rows.shape[0] == 0:
            raise ValueError(
                f"DINOLoss.update_center: teacher_out must have rows of size {self.out_dim}, got "
                f"{tuple(rows.shape)}"
            )
        rows = rows.detach()
        rows = rows if rows.dtype == torch.float64 else rows.float()
        count = rows.new_full((1, 1), float(rows.shape[0]))
        stats = torch.cat([rows.sum(dim=0, keepdim=True), count], dim=1)  # (1, K + 1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)  # sums and row counts of all ranks (batches may differ)
        return stats[:, :-1] / stats[:, -1:]  # (1, K)
