"""The report's verdict: whether DoRA beats the DINO baseline and random init, said only where
the seeds' intervals (mean ± sample standard deviation) separate.
"""

from __future__ import annotations

import numpy as np

from labkit.report import learned_nothing, verdict, verdict_parts

KEYS = ("J&F", "attn best head J", "attn head avg J", "k-means clip_hungarian mIoU")


def evaluation(**models: tuple[float, float, float, float]) -> dict:
    return {"summary": [{"model": m, **dict(zip(KEYS, v))} for m, v in models.items()]}


def seeded(**methods: list[tuple[float, ...]]) -> dict:
    """An evaluation with models labelled <method>@s<seed>, one tuple of KEYS per seed."""
    return {
        "summary": [
            {"model": f"{m}@s{seed}", **dict(zip(KEYS, v))}
            for m, per_seed in methods.items()
            for seed, v in enumerate(per_seed)
        ]
    }


def test_one_seed_claims_nothing():
    ev = evaluation(
        dora=(0.70, 0.30, 0.23, 0.42),
        dino=(0.75, 0.21, 0.16, 0.42),
        random=(0.76, 0.30, 0.14, 0.49),
    )
    text = verdict(ev, "synthetic", "120 steps")
    assert text.startswith("On synthetic, after 120 steps, with one seed: with one seed per method")
    assert "better" not in text.replace("called better", "").replace("nothing is called", "")
    assert (
        "Label propagation J&F: one seed, no error bar: nothing is called better or worse "
        "[random init 0.760 (n=1: no error bar), DoRA 0.700 (n=1: no error bar), "
        "DINO 0.750 (n=1: no error bar)]." in text
    )
    ev["config"] = {"seed": 4}
    assert verdict_parts(ev, "d", "b").lead == "On d, after b, with one seed (4)"


def test_three_seeds_better_only_where_intervals_separate():
    dora = [(0.70, 0.40, 0.30, 0.42), (0.72, 0.42, 0.31, 0.44), (0.74, 0.44, 0.29, 0.40)]
    dino = [(0.70, 0.20, 0.30, 0.42), (0.71, 0.21, 0.31, 0.44), (0.72, 0.22, 0.29, 0.40)]
    rand = [(0.60, 0.30, 0.20, 0.60), (0.61, 0.31, 0.30, 0.61), (0.62, 0.32, 0.40, 0.62)]
    v = verdict_parts(seeded(dora=dora, dino=dino, random=rand), "synthetic", "300 steps")
    jf = v.judged["J&F"]
    # J&F: DoRA 0.72 ± 0.02 vs random 0.61 ± 0.01 separate; DoRA vs DINO 0.71 ± 0.01 overlap
    assert jf["outcomes"] == {
        "dora vs random": "better",
        "dora vs dino": "no measurable difference",
        "dino vs random": "better",
    }
    assert jf["stats"]["dora"]["mean"] == np.mean([0.70, 0.72, 0.74])
    assert jf["stats"]["dora"]["std"] == np.std([0.70, 0.72, 0.74], ddof=1)
    # best head: DoRA 0.42 ± 0.02 above random 0.31 ± 0.01 and DINO 0.21 ± 0.01: a win
    assert v.judged["attn best head J"]["outcomes"]["dora vs dino"] == "better"
    assert v.judged["attn best head J"]["outcomes"]["dino vs random"] == "worse"
    # head average: random's 0.30 ± 0.10 swallows everything; mIoU: DoRA below random
    assert set(v.judged["attn head avg J"]["outcomes"].values()) == {"no measurable difference"}
    assert v.judged["k-means clip_hungarian mIoU"]["outcomes"]["dora vs random"] == "worse"
    assert v.lead == (
        "On synthetic, after 300 steps, over seeds 0, 1, 2 "
        "(mean ± sample standard deviation, n=3 per method)"
    )
    # better than both on one measure, than random init on one more: each rival counted alone
    assert v.overall == (
        "DoRA is measurably better than random init on 2 of 4 measures (label propagation J&F; "
        "attention-mask Jaccard, best head), than DINO on 1 of 4 measures (attention-mask "
        "Jaccard, best head)"
    )
    assert (
        "Label propagation J&F: DoRA vs random init: better; DoRA vs DINO: no measurable "
        "difference; DINO vs random init: better [random init 0.610 ± 0.010 (n=3), "
        "DoRA 0.720 ± 0.020 (n=3), DINO 0.710 ± 0.010 (n=3)]." in v.text
    )
    assert learned_nothing(seeded(dora=dora, dino=dino, random=rand), "dino") is False
    # DINO better than random on no key metric: learned nothing, although its mean J&F is higher
    flat = [(0.61, 0.30, 0.20, 0.60)] * 2 + [(0.64, 0.32, 0.22, 0.62)]
    assert learned_nothing(seeded(dino=flat, random=rand), "dino") is True


def test_verdict_none_and_all():
    worse = seeded(
        dora=[(0.1, 0.1, 0.1, 0.1), (0.11, 0.11, 0.11, 0.11)],
        dino=[(0.2, 0.2, 0.2, 0.2), (0.21, 0.21, 0.21, 0.21)],
        random=[(0.3, 0.3, 0.3, 0.3), (0.31, 0.31, 0.31, 0.31)],
    )
    assert "DoRA is measurably better than random init and DINO on none of the 4 measures." in (
        verdict(worse, "d", "b")
    )
    better = seeded(dora=[(0.9,) * 4, (0.91,) * 4], dino=[(0.2,) * 4, (0.21,) * 4])
    assert "DoRA is measurably better than DINO on all 4 measures." in verdict(better, "d", "b")
    assert (
        verdict({"summary": [{"model": "dino", "J&F": 0.5}]}, "d", "b")
        == "On d: nothing to compare (models: dino)."
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


def test_foreground_sentence_gives_what_a_blind_mask_scores():
    from labkit.report import foreground_sentence

    rows = [
        {"model": "random@s0", "DoRA object on foreground": 0.28, "foreground share": 0.226},
        {"model": "dora@s0", "DoRA object on foreground": 0.15, "foreground share": 0.226},
    ]
    text = foreground_sentence(rows)
    assert "cover 0.226 of the frames" in text and "scores about 0.226" in text
    assert "whole frame scores 0.226 on DoRA best object J" in text
    assert foreground_sentence([{"model": "m", "J&F": 0.5}]) == ""  # no tracking: nothing to say
    assert foreground_sentence([{"model": "m", "foreground share": float("nan")}]) == ""
