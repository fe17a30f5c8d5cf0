"""The Method protocol: both implementations satisfy it, and the trainer loop names no method."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

import labkit.train.trainer as trainer_module
from labkit.train import TrainConfig
from labkit.train.config import METHODS
from labkit.train.dora_dino import DoraDinoMethod
from labkit.train.method import Method
from labkit.train.methods import METHOD_CLASSES, log_columns, method_for
from labkit.train.timetuning_method import TimeTuningMethod

from tiny import TINY_ARCH

TINY = dict(model_kwargs=TINY_ARCH, img_size=64, local_size=32, out_dim=64, hidden_dim=32)
TIMETUNING = dict(head_dims=(32, 16), num_prototypes=8, trainable_blocks=1)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_satisfies_the_protocol(method, tmp_path):
    extra = TIMETUNING if method == "timetuning" else {}
    cfg = TrainConfig(method=method, out_dir=str(tmp_path), **TINY, **extra)
    impl = method_for(cfg)
    assert isinstance(impl, Method) and impl.log_columns == log_columns(method)
    assert type(impl) is {"timetuning": TimeTuningMethod}.get(method, DoraDinoMethod)
    assert set(impl.checkpoint_keys) <= set(impl.state_dict())
    assert {"student", "teacher"} <= set(impl.state_dict())  # the checkpoint layout of old
    groups, rules = impl.param_groups()
    assert len(groups) == len(rules) and all(g["params"] for g in groups)
    values = impl.schedules(0, 0, 1e-3, 0.04)
    assert values["lr"] == 1e-3 and values["wd"] == 0.04 and set(values) <= set(impl.log_columns)
    assert isinstance(impl.backbone, torch.nn.Module)
    assert set(METHOD_CLASSES) == set(METHODS)


def test_the_trainer_loop_names_no_method():
    """No string constant of trainer.py's code (docstrings aside) is a method's name."""
    tree = ast.parse(inspect.getsource(trainer_module))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    strings = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    }
    assert not strings & set(METHODS), strings & set(METHODS)
    assert "timetuning" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
