"""The pipeline's pretrained reference: added where its weights are cached (or asked for), never
silently random, and every stage gets the position-embedding rule."""

from __future__ import annotations

import pytest
import torch

from labkit.pipeline import PRETRAINED_LABEL, load_pipeline_config, plan, uses_pretrained


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def config(tmp_path, *overrides):
    return load_pipeline_config(
        None, [f"runs_dir={tmp_path / 'runs'}", "eval_data=[synthetic]", "seeds=1", *overrides]
    )


def test_auto_without_cached_weights_adds_no_reference(tmp_path, hub_cache):
    cfg = config(tmp_path)
    assert cfg.pretrained == "auto" and not uses_pretrained(cfg)
    names = [s.name for s in plan(cfg)]
    assert "explore_pretrained" not in names
    evaluate = next(s for s in plan(cfg) if s.name == "evaluate_synthetic")
    assert not any(m.startswith(f"{PRETRAINED_LABEL}=") for m in evaluate.params["models"])


def test_cached_weights_or_pretrained_true_add_the_reference(tmp_path, hub_cache):
    from test_hub import write_hub_cache  # tests/ is on sys.path (pytest prepend mode)

    write_hub_cache(hub_cache, "vit_small_patch16_224.dino", {"x": torch.zeros(1)})
    for cfg in (config(tmp_path), config(tmp_path, "pretrained=true")):
        stages = {s.name: s for s in plan(cfg)}
        explore = stages["explore_pretrained"]
        assert explore.notebook == "attention_explorer"
        assert (
            explore.params["model"] == "vit_small_patch16_224.dino"
            and explore.params["pretrained"] is True
        )
        assert explore.params["model_kwargs"] == {}  # its own architecture, not the demo's cut ViT
        evaluate = stages["evaluate_synthetic"]
        assert "pretrained=vit_small_patch16_224.dino:pretrained" in evaluate.params["models"]
        kwargs = evaluate.params["model_kwargs"]
        assert kwargs["pretrained"] == {} and kwargs["random"] == {"depth": 4}
    assert "explore_pretrained" not in [s.name for s in plan(config(tmp_path, "pretrained=false"))]


def test_rule_reaches_every_stage_and_bad_values_fail(tmp_path, hub_cache):
    cfg = config(tmp_path, "pos_embed_rule=dino")
    for stage in plan(cfg):
        if (
            stage.notebook in ("train_dora", "attention_explorer", "evaluate")
            and stage.name != "step_by_step"
        ):
            assert stage.params["pos_embed_rule"] == "dino", stage.name
    with pytest.raises(ValueError, match="pos_embed_rule"):
        config(tmp_path, "pos_embed_rule=bilinear")
    with pytest.raises(ValueError, match="pretrained_model.*no pretrained tag"):
        config(tmp_path, "pretrained_model=vit_small_patch16_224")
    with pytest.raises(ValueError, match="pretrained"):
        config(tmp_path, "pretrained=maybe")
