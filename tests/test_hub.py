"""Pretrained weights through timm's own machinery, offline, from a Hugging Face hub cache.

The tests write a hub cache in the real layout (``hub/models--timm--<name>/refs/main``,
``blobs/<sha256>`` and ``snapshots/<revision>/{model.safetensors, config.json}`` linked to the
blobs, as ``huggingface_hub`` leaves it) holding locally made weights, then load them through
labkit in a fresh process with ``HF_HOME`` pointing there and ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit.zoo import ZOO, format_zoo, zoo_table

REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(hf_home: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    """Put ``state`` in ``hf_home`` as the hub cache holds ``timm/<name>``; returns the weights
    file.
    """
    from safetensors.torch import save_file

    repo = hf_home / "hub" / f"models--timm--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    staged = repo / "weights.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(staged))
    files = {
        "model.safetensors": staged.read_bytes(),
        "config.json": json.dumps({"architecture": name.split(".")[0], "num_classes": 0}).encode(),
    }
    staged.unlink()
    for filename, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot / "model.safetensors"


def run_offline(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def made_weights(arch: str, seed: int) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not timm's init: these must be the file's weights
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_pretrained_tags_load_from_an_offline_hub_cache(tmp_path):
    hf_home = tmp_path / "hf"
    written = {
        "vit_small_patch16_224.dino": made_weights("vit_small_patch16_224", 1),
        "vit_small_patch14_reg4_dinov2.lvd142m": made_weights("vit_small_patch14_reg4_dinov2", 2),
    }
    for name, state in written.items():
        write_hub_cache(hf_home, name, state)
    out = tmp_path / "loaded.pt"
    code = f"""
import torch
from labkit.models import load_backbone, weights_label
from labkit.zoo import in_local_cache
result = {{}}
for name in {list(written)!r}:
    model = load_backbone(name)  # a tag means its weights: no pretrained=True needed
    result[name] = {{"state": model.state_dict(), "rule": model.pos_embed_rule,
                    "label": weights_label(model), "cached": str(in_local_cache(name))}}
torch.save(result, {str(out)!r})
"""
    proc = run_offline(hf_home, code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = torch.load(out, weights_only=True)
    for name, state in written.items():
        got = loaded[name]["state"]
        assert set(got) == set(state), name
        for key, value in state.items():
            assert torch.equal(got[key], value), f"{name}: {key} differs from the cached file"
        assert loaded[name]["cached"].endswith("model.safetensors")
        assert "pretrained" in loaded[name]["label"]
    assert loaded["vit_small_patch16_224.dino"]["rule"] == "dino"
    assert loaded["vit_small_patch14_reg4_dinov2.lvd142m"]["rule"] == "dinov2"


@pytest.mark.slow
def test_offline_without_cache_names_model_folder_and_ways_out(tmp_path):
    hf_home = tmp_path / "empty-hf"
    code = """
from labkit.models import load_backbone
load_backbone("vit_small_patch16_224.dino")
"""
    proc = run_offline(hf_home, code)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "PretrainedWeightsError" in last
    assert "'vit_small_patch16_224.dino'" in last
    assert str(hf_home / "hub" / "models--timm--vit_small_patch16_224.dino") in last
    assert "run once with network access" in last and "checkpoint=FILE" in last
    # the command line says the same in one line, without a traceback
    cli = run_offline(
        hf_home,
        "import sys; from labkit.cli import main; sys.exit(main(["
        "'attention', '--model', 'vit_small_patch16_224.dino', '--num-frames', '1']))",
    )
    assert cli.returncode == 1
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labkit: error: pretrained weights for"), (
        cli.stderr
    )
    assert "Traceback" not in cli.stderr


def test_explicit_pretrained_false_with_a_tag_is_random_and_says_so():
    from labkit.models import load_backbone, weights_label

    model = load_backbone("vit_small_patch16_224.dino", pretrained=False, seed=0, depth=1)
    assert weights_label(model) == "vit_small_patch16_224.dino, random init, seed 0"


def test_zoo_lists_every_family_with_true_shapes(tmp_path, monkeypatch):
    import timm

    names = {e.name for e in ZOO}
    for wanted in (
        "vit_small_patch16_224.dino",
        "vit_small_patch8_224.dino",
        "vit_base_patch16_224.dino",
        "vit_base_patch8_224.dino",
        "vit_giant_patch14_reg4_dinov2.lvd142m",
        "vit_small_patch14_dinov2.lvd142m",
    ):
        assert wanted in names
    for entry in ZOO:
        arch = entry.name.split(".")[0]
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        assert model.patch_embed.patch_size[0] == entry.patch, entry
        assert model.blocks[0].attn.num_heads == entry.heads, entry
        assert model.embed_dim == entry.dim, entry
        assert model.num_reg_tokens == entry.registers, entry
        if entry.source == "hub":
            assert timm.is_model_pretrained(entry.name) or entry.name in timm.list_pretrained(), (
                entry
            )
    # the cache column tells the truth about a cache in the real layout
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    write_hub_cache(tmp_path / "hf", "vit_small_patch8_224.dino", {"x": torch.zeros(1)})
    rows = {r["name"]: r for r in zoo_table()}
    assert rows["vit_small_patch8_224.dino"]["cached"] is True
    assert rows["vit_small_patch16_224.dino"]["cached"] is False
    text = format_zoo(list(rows.values()))
    assert "vit_small_patch8_224.dino" in text and "checkpoint=FILE" in text


def test_auto_takes_cached_weights_or_says_they_were_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from labkit.models import load_backbone, weights_label

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_backbone("vit_small_patch16_224.dino", pretrained="auto", seed=0, depth=1)
    assert weights_label(model) == (
        "vit_small_patch16_224.dino, random init, seed 0 (vit_small_patch16_224.dino weights not "
        "in the local cache; labkit models lists them)"
    )
    assert model.pos_embed_rule == "timm"  # a random init resizes as timm does
    # with the weights in the cache, "auto" loads them
    state = load_backbone("vit_small_patch16_224", seed=5, depth=1).state_dict()
    write_hub_cache(tmp_path / "hf", "vit_small_patch16_224.dino", state)
    loaded = load_backbone("vit_small_patch16_224.dino", pretrained="auto", depth=1)
    assert weights_label(loaded) == "vit_small_patch16_224.dino, pretrained dino"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert loaded.pos_embed_rule == "dino"
    with pytest.raises(ValueError, match="^pretrained: expected"):
        load_backbone("vit_small_patch16_224", pretrained="yes", depth=1)


def test_unreachable_hub_fails_at_once_without_retries(tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants

    import labkit.models as models

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(models.PretrainedWeightsError) as err:
        models.load_backbone("vit_small_patch8_224.dino")
    assert time.perf_counter() - start < 5  # huggingface_hub's own retries take about a minute
    text = str(err.value)
    assert "\n" not in text and "(the hub cannot be reached)" in text
    assert str(tmp_path / "hub" / "models--timm--vit_small_patch8_224.dino") in text
