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


def test_sections_are_views_of_the_flat_fields(tmp_path):
    import dataclasses

    from labkit.train.config import SECTIONS

    flat = [name for names in SECTIONS.values() for name in names]
    assert sorted(flat) == sorted(f.name for f in dataclasses.fields(TrainConfig))  # each once
    cfg = TrainConfig(steps=5, lr=1e-4, model_kwargs={"depth": 2})
    assert cfg.steps == 5 and cfg.sections.optimisation.steps == 5
    assert cfg.sections.optimisation.lr == cfg.lr == 1e-4
    assert cfg.sections.model.model == cfg.model and cfg.section("model").model_kwargs == {
        "depth": 2
    }
    assert cfg.sections.method.method == "dora" and cfg.sections.output.out_dir == cfg.out_dir
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sections.data.num_frames = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="no section 'optimization'"):
        cfg.section("optimization")
    # a sectioned YAML file reads back to the same config
    nested = cfg.to_dict(nested=True)
    assert list(nested) == list(SECTIONS) and nested["optimisation"]["steps"] == 5
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(nested))
    assert load_config(path) == cfg


def test_section_keys_in_files_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: vit_tiny_patch16_224\noptimisation: {steps: 7, lr: 1e-3}\nk: 2\n")
    cfg = load_config(path, ["optimisation.batch_size=3", "method.k=4", "model.out_dim=128"])
    assert (cfg.model, cfg.steps, cfg.lr, cfg.batch_size, cfg.k, cfg.out_dim) == (
        "vit_tiny_patch16_224",
        7,
        1e-3,
        3,
        4,
        128,
    )
    # flat and sectioned overrides are the same thing
    assert load_config(None, ["lr=1e-4"]) == load_config(None, ["optimisation.lr=1e-4"])
    # a section mapping under a field's name: "model" and "method" are both
    cfg = load_config(None, {"model": "vit_tiny_patch16_224", "method": "dino"})
    assert (cfg.model, cfg.method) == ("vit_tiny_patch16_224", "dino")
    with pytest.raises(ValueError, match=r"optimisation.lrr.*did you mean 'optimisation.lr'"):
        load_config(None, ["optimisation.lrr=1e-4"])
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 1e-3\noptimisation: {lr: 1e-4}\n")
    with pytest.raises(ValueError, match=r"'lr' is given twice in .*twice.yaml"):
        load_config(twice)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("data: {lr: 1e-4}\n")
    with pytest.raises(ValueError, match=r"'data.lr' in .*wrong.yaml"):
        load_config(wrong)
