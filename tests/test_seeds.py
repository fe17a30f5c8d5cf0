"""Seeds and error bars: labels, mean ± sample std against numpy, the interval rule on known
numbers, and a random init that follows its spec's seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.eval.seeds import (
    ONE_SEED,
    SeedStats,
    aggregate_seeds,
    aggregate_to_dict,
    compare,
    seed_label,
    seed_stats,
    seed_table,
    split_seed_label,
)
from labkit.specs import parse_model_spec


def test_labels_round_trip():
    assert seed_label("dora", 2) == "dora@s2" and seed_label("dora", None) == "dora"
    assert split_seed_label("dora@s2") == ("dora", 2)
    assert split_seed_label("random-vit_tiny_patch16_224@s10") == (
        "random-vit_tiny_patch16_224",
        10,
    )
    assert split_seed_label("pretrained") == ("pretrained", None)
    assert split_seed_label("a@sx") == ("a@sx", None)


def test_stats_match_numpy():
    values = [0.737, 0.751, 0.722]
    s = seed_stats(values, [0, 1, 2])
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))  # sample std, not population
    assert s.std != pytest.approx(np.std(values))
    assert (s.n, s.values, s.seeds) == (3, tuple(values), (0, 1, 2))
    assert s.text() == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (n=3)"
    one = seed_stats([0.5])
    assert one.std is None and one.interval is None and one.n == 1
    assert one.text() == "0.500 (n=1: no error bar)"
    with pytest.raises(ValueError, match="one or more"):
        seed_stats([])
    with pytest.raises(ValueError, match="finite"):
        seed_stats([0.1, float("nan")])
    with pytest.raises(ValueError, match="2 values but 1 seeds"):
        seed_stats([0.1, 0.2], [0])


def _stats(mean: float, std: float) -> SeedStats:
    return SeedStats(mean, std, 3, (), ())  # three seeds' mean and std, as given


@pytest.mark.parametrize(
    "a, b, outcome",
    [
        ((0.80, 0.02), (0.70, 0.02), "better"),  # [0.78, 0.82] above [0.68, 0.72]
        ((0.70, 0.02), (0.80, 0.02), "worse"),
        ((0.75, 0.03), (0.70, 0.03), "no measurable difference"),  # [0.72, 0.78] vs [0.67, 0.73]
        ((0.75, 0.125), (0.5, 0.125), "no measurable difference"),  # touching at 0.625
        ((0.70, 0.0), (0.70, 0.0), "no measurable difference"),
        ((0.71, 0.0), (0.70, 0.0), "better"),  # no spread at all: the means decide
    ],
)
def test_interval_rule_on_known_numbers(a, b, outcome):
    assert compare(_stats(*a), _stats(*b)) == outcome


def test_one_seed_is_never_better():
    assert compare(seed_stats([0.9]), seed_stats([0.1])) == ONE_SEED
    assert compare(seed_stats([0.9, 0.91]), seed_stats([0.1])) == ONE_SEED
    assert compare(seed_stats([0.1]), seed_stats([0.9, 0.91])) == ONE_SEED


def test_aggregate_groups_seeds_by_method():
    rows = [
        {"model": "random@s0", "J&F": 0.70, "weights": "random@0"},
        {"model": "random@s1", "J&F": 0.74, "weights": "random@1"},
        {"model": "dora@s0", "J&F": 0.80, "attn best head J": 0.3},
        {"model": "dora@s1", "J&F": 0.78, "attn best head J": None},
        {"model": "pretrained", "J&F": 0.9},
    ]
    agg = aggregate_seeds(rows)
    assert list(agg) == ["random", "dora", "pretrained"]
    assert agg["dora"]["J&F"].mean == pytest.approx(0.79)
    assert agg["dora"]["J&F"].std == pytest.approx(np.std([0.80, 0.78], ddof=1))
    assert agg["dora"]["attn best head J"].n == 1  # the seed without a value is left out
    assert agg["dora"]["attn best head J"].seeds == (0,)
    assert "weights" not in agg["random"]  # text columns are not aggregated
    assert agg["pretrained"]["J&F"].std is None
    d = aggregate_to_dict(agg)
    assert d["random"]["J&F"] == {
        "mean": pytest.approx(0.72),
        "std": pytest.approx(np.std([0.70, 0.74], ddof=1)),
        "n": 2,
        "values": [0.70, 0.74],
        "seeds": [0, 1],
    }
    table = seed_table(agg, ["J&F", "attn best head J"])
    # the row names its seeds, so n is written only where a metric has fewer values
    assert table[1] == {
        "model": "dora",
        "seeds": "0, 1",
        "J&F": "0.790 ± 0.014",
        "attn best head J": "0.300 (n=1: no error bar)",
    }
    assert table[2] == {
        "model": "pretrained",
        "seeds": "–",
        "J&F": "0.900 (n=1: no error bar)",
        "attn best head J": "–",
    }
    assert agg["dora"]["J&F"].text(show_n=False) == "0.790 ± 0.014"
    assert agg["pretrained"]["J&F"].text(show_n=False) == "0.900 (no error bar)"


def test_random_init_follows_the_specs_seed():
    kwargs = {"depth": 1, "embed_dim": 48, "num_heads": 3, "img_size": 32}
    spec = parse_model_spec("random@s1=vit_tiny_patch16_224:random@1")
    assert (spec.label, spec.seed, spec.weights, spec.pretrained) == (
        "random@s1",
        1,
        "random@1",
        False,
    )
    assert (
        parse_model_spec("vit_tiny_patch16_224:random@3").label == "random-vit_tiny_patch16_224@s3"
    )
    a = spec.load(seed=0, model_kwargs=kwargs)
    b = parse_model_spec("x=vit_tiny_patch16_224:random").load(seed=1, model_kwargs=kwargs)
    c = parse_model_spec("x=vit_tiny_patch16_224:random@2").load(seed=1, model_kwargs=kwargs)
    # its own seed wins over the caller's: random@1 under seed 0 is the seed-1 network
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.patch_embed.proj.weight, c.patch_embed.proj.weight)
