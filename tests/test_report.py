"""The report's verdict: a plain statement of whether DoRA beats the DINO baseline and random
init.
"""

from __future__ import annotations

from labkit.report import verdict


def evaluation(**models: tuple[float, float, float, float]) -> dict:
    keys = ("J&F", "attn best head J", "attn head avg J", "k-means clip_hungarian mIoU")
    return {"summary": [{"model": m, **dict(zip(keys, v))} for m, v in models.items()]}


def test_verdict_counts_the_measures_dora_wins_outright():
    ev = evaluation(
        dora=(0.70, 0.30, 0.23, 0.42),
        dino=(0.75, 0.21, 0.16, 0.42),
        random=(0.76, 0.30, 0.14, 0.49),
    )
    text = verdict(ev, "synthetic", "120 steps")
    # head average is the only measure where DoRA beats both (the best head ties random)
    assert (
        "DoRA beats dino and random on 1 of 4 measures (attention-mask Jaccard, head average)."
        in text
    )
    assert (
        "Label propagation J&F: DoRA is behind dino and random "
        "(dora 0.700, dino 0.750, random 0.760)." in text
    )
    assert "Attention-mask Jaccard, best head: DoRA beats dino, ties with random" in text
    assert "k-means mIoU per clip: DoRA ties with dino, is behind random" in text


def test_verdict_none_and_all():
    worse = evaluation(
        dora=(0.1, 0.1, 0.1, 0.1), dino=(0.2, 0.2, 0.2, 0.2), random=(0.3, 0.3, 0.3, 0.3)
    )
    assert "DoRA beats dino and random on none of the 4 measures." in verdict(worse, "d", "b")
    better = evaluation(dora=(0.9, 0.9, 0.9, 0.9), dino=(0.2, 0.2, 0.2, 0.2))
    assert "DoRA beats dino on all 4 measures." in verdict(better, "d", "b")
    assert (
        verdict({"summary": [{"model": "dino", "J&F": 0.5}]}, "d", "b")
        == "On d: no DoRA model was evaluated."
    )


def test_weights_section_names_every_model_and_the_missing_reference(tmp_path):
    import json
    from types import SimpleNamespace

    from labkit.report import weights_section

    ev = tmp_path / "evaluate_synthetic"
    ex = tmp_path / "explore_dora"
    ev.mkdir()
    ex.mkdir()
    (ev / "metrics.json").write_text(
        json.dumps(
            {
                "models": {
                    "random": {
                        "info": {"weights_label": "vit_tiny_patch16_224, random init, seed 0"}
                    },
                    "dora": {
                        "info": {"weights_label": "vit_tiny_patch16_224, checkpoint checkpoint.pth"}
                    },
                }
            }
        )
    )
    (ex / "metrics.json").write_text(
        json.dumps({"weights": "vit_tiny_patch16_224, checkpoint checkpoint.pth"})
    )
    stages = [
        SimpleNamespace(name="explore_dora", group="explore", out_dir=ex),
        SimpleNamespace(name="evaluate_synthetic", group="evaluate", out_dir=ev),
    ]
    text = weights_section(
        {"pretrained": "auto", "pretrained_model": "vit_small_patch16_224.dino"}, stages
    )
    assert "<b>random</b>: vit_tiny_patch16_224, random init, seed 0" in text
    assert "<b>explore_dora</b>: vit_tiny_patch16_224, checkpoint checkpoint.pth" in text
    assert "not in the local Hugging Face cache" in text and "-o pretrained=true" in text
    assert "switched off" in weights_section({"pretrained": False}, stages)
    stages.append(
        SimpleNamespace(name="explore_pretrained", group="explore", out_dir=tmp_path / "none")
    )
    assert "explored and evaluated beside the trained models" in weights_section({}, stages)


def test_collapse_is_judged_against_the_recorded_head_size():
    # the train notebook's out_dim (4096) is not TrainConfig's default (65536): the report must
    # read the K the training recorded, or a uniform teacher reads as 75% of log K
    import math
    from types import SimpleNamespace

    from labkit.report import training_health

    stage = SimpleNamespace(name="train_dino", params={})
    metrics = {
        "teacher_entropy": math.log(4096) - 0.002,
        "teacher_kl_uniform": 2e-5,
        "out_dim": 4096,
    }
    text, collapsed = training_health(stage, metrics, {})
    assert collapsed and "ln 4096" in text and "100.0% of log K" in text
