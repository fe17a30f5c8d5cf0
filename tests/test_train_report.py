"""Figures of a training run: objects of a clip (shapes, dtypes, determinism), log plot, live
plot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.data import default_video
from labkit.models import load_backbone
from labkit.train.data import preview_clip
from labkit.train.report import (
    LiveLossPlot,
    clip_objects,
    masked_frames,
    objects_to_rgb,
    plot_log,
    plot_objects,
)
from labkit.viz import dora as dora_pictures

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = load_backbone("vit_small_patch16_224", depth=2, embed_dim=64, num_heads=4, img_size=64)
    indices, frames = preview_clip(default_video(), num_frames=3, frame_step=4, size=72)
    return model, indices, frames


def test_clip_objects_shapes_and_determinism(clip):
    model, indices, frames = clip
    objects = clip_objects(model, frames, k=3, indices=indices)
    t, h, w, _ = frames.shape
    gh, gw = h // 16, w // 16
    assert objects.frames.shape == (t, gh * 16, gw * 16, 3) and objects.frames.dtype == np.uint8
    assert objects.heads == (0, 1, 2) and objects.k == 3 and objects.patch_size == 16
    for plan in ("softmax", "sinkhorn"):
        assert objects.maps[plan].shape == (t, 3, gh, gw)
        torch.testing.assert_close(objects.maps[plan].sum((-1, -2)), torch.ones(t, 3))
        assert objects.masks[plan].dtype == torch.bool
        torch.testing.assert_close(objects.assignment[plan].sum(-1), torch.ones(gh, gw))
    sizes = objects.object_sizes()
    assert sizes.shape == (t, 3) and ((sizes >= 0) & (sizes <= 1)).all()
    again = clip_objects(model, frames, k=3, indices=indices)
    assert torch.equal(again.maps["sinkhorn"], objects.maps["sinkhorn"])
    assert model.training is False
    fixed = clip_objects(model, frames, k=2, heads=[3, 1])
    assert fixed.heads == (3, 1) and fixed.maps["sinkhorn"].shape[1] == 2


def test_render_and_plot(clip):
    model, indices, frames = clip
    objects = clip_objects(model, frames, k=3, indices=indices)
    size = objects.frames.shape[1:3]
    rgb = objects_to_rgb(objects.maps["sinkhorn"], size, 16)
    # one renderer and one palette for DoRA's objects (labkit.viz.dora, labkit.viz.palette)
    np.testing.assert_array_equal(
        rgb, dora_pictures.objects_to_rgb(objects.maps["sinkhorn"].numpy(), size, 16)
    )
    four = objects_to_rgb(torch.rand(3, 4, *objects.maps["sinkhorn"].shape[-2:]), size, 16)
    assert four.shape == (3, *size, 3) and four.dtype == np.uint8
    views = masked_frames(objects)  # (k, T, H, W, 3)
    assert views.shape == (3, *objects.frames.shape)
    mask = objects.masks["sinkhorn"][1, 2].repeat_interleave(16, 0).repeat_interleave(16, 1).numpy()
    assert (views[2, 1][~mask] == 0).all()
    np.testing.assert_array_equal(views[2, 1][mask], objects.frames[1][mask])
    fig = plot_objects(objects, title="before")
    assert len(fig.axes) == (4 + 3) * 3  # frames, 2 map rows, masks, k object rows x T frames


def test_plot_log_and_live_plot_under_papermill(monkeypatch):
    log = [
        {
            "step": s,
            "loss": 5 - 0.1 * s,
            "teacher_entropy": 3.0,
            "teacher_kl_uniform": 0.5,
            "lr": 1e-4 * s,
            "wd": 0.04,
        }
        for s in range(1, 31)
    ]
    fig = plot_log(log)
    assert len(fig.axes) == 4
    assert len(fig.axes[0].lines) == 2  # raw and smoothed loss
    assert plot_log([]).axes
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    live = LiveLossPlot(every=5)
    assert not live.active
    live(log[4], trainer=None)  # does nothing, needs no trainer
    assert live.draws == 0
    with pytest.raises(ValueError, match="every"):
        LiveLossPlot(every=0)
