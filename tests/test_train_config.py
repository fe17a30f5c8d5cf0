"""TrainConfig validation, YAML + override parsing, schedules and parameter groups (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from labkit.train import TrainConfig, load_config
from labkit.train.config import parse_overrides
from labkit.train.trainer import cosine_schedule, param_groups


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = TrainConfig()
    assert cfg.method == "dora" and cfg.k == 3 and cfg.heads == "random" and cfg.sinkhorn
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_frames", 0),
        ("frame_step", 0),
        ("img_size", 4),
        ("k", 0),
        ("steps", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("epsilon", -1.0),
        ("momentum_teacher", 1.5),
        ("center_momentum", 2.0),
        ("teacher_temp", 0.0),
        ("method", "byol"),
        ("precision", "fp16"),
        ("video_backend", "opencv"),
        ("threshold", "median"),
        ("threshold", 1.5),
        ("global_scale", (0.5, 0.2)),
        ("local_scale", (0.1,)),
        ("heads", "first"),
        ("heads", [0, 1]),
        ("heads", [0, 0, 1]),
        ("video_path", "/no/such/video.mp4"),
        ("checkpoint", "/no/such.pth"),
        ("device", "tpu"),
        ("sinkhorn", "yes"),
        ("steps", 2.5),
        ("model_kwargs", {"img_size": 64}),
        ("model_kwargs", [1, 2]),
        ("out_dir", ""),
    ],
)
def test_invalid_values_name_their_key(key, value):
    with pytest.raises(ValueError, match=key):
        TrainConfig(**{key: value})


def test_lists_become_tuples_and_fixed_heads_must_match_k():
    cfg = TrainConfig(heads=[2, 0, 5], global_scale=[0.3, 1], video_path=[])
    assert cfg.heads == (2, 0, 5) and cfg.global_scale == (0.3, 1.0)
    assert cfg.video_paths == ()
    with pytest.raises(ValueError, match="k is 2"):
        TrainConfig(heads=[0, 1, 2], k=2)


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "method: dino\nsteps: 7\nmodel_kwargs: {depth: 2, embed_dim: 64}\nheads: [0, 1, 2]\n"
    )
    cfg = load_config(
        path, ["steps=11", "lr=1e-4", "model_kwargs.depth=4", "sinkhorn=false", "out_dir=runs/x"]
    )
    assert cfg.method == "dino" and cfg.steps == 11 and cfg.lr == pytest.approx(1e-4)
    assert cfg.model_kwargs == {"depth": 4, "embed_dim": 64}
    assert cfg.sinkhorn is False and cfg.out_dir == "runs/x" and cfg.heads == (0, 1, 2)
    # a whole dict as a YAML flow mapping, and a list
    cfg = load_config(None, ["model_kwargs={depth: 3}", "global_scale=[0.2, 0.9]"])
    assert cfg.model_kwargs == {"depth": 3} and cfg.global_scale == (0.2, 0.9)
    assert parse_overrides(["threshold=0.6", "heads=random", "video_path="]) == {
        "threshold": 0.6,
        "heads": "random",
        "video_path": "",
    }


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        load_config(None, ["stesp=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["steps"])
    with pytest.raises(ValueError, match="model_kwargs"):
        load_config(None, ["lr.x=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("num_frame: 4\n")
    with pytest.raises(ValueError, match=r"num_frame.*typo.yaml.*num_frames"):
        load_config(typo)
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def _dino_cosine_array(base, final, total, warmup, start=0.0):
    """DINO's utils.cosine_scheduler, restated: linspace warm-up then a cosine over the rest."""
    warm = np.linspace(start, base, warmup) if warmup else np.array([])
    iters = np.arange(total - warmup)
    rest = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate([warm, rest])


def test_cosine_schedule_matches_dino_after_warmup():
    total, warmup = 50, 10
    ours = np.array([cosine_schedule(s, total, 1e-3, 1e-6, warmup) for s in range(total)])
    ref = _dino_cosine_array(1e-3, 1e-6, total, warmup)
    np.testing.assert_allclose(ours[warmup:], ref[warmup:], rtol=1e-12)
    # warm-up: linear from 0, increasing, below the peak, reaching it at the first cosine step
    assert (
        ours[0] == 0
        and np.all(np.diff(ours[: warmup + 1]) > 0)
        and ours[warmup] == pytest.approx(1e-3)
    )
    no_warmup = [cosine_schedule(s, 20, 0.996, 1.0) for s in range(20)]
    np.testing.assert_allclose(no_warmup, _dino_cosine_array(0.996, 1.0, 20, 0), rtol=1e-12)
    assert math.isclose(cosine_schedule(0, 20, 0.04, 0.4), 0.04)


def test_param_groups_skip_biases_and_norms():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False)
    )
    model[2].weight.requires_grad_(False)
    decay, no_decay = param_groups(model)
    assert [p.shape for p in decay["params"]] == [(4, 4)]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(4,), (4,), (4,)]
    assert no_decay["weight_decay"] == 0.0
