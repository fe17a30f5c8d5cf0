"""The report's verdict: a plain statement of whether DoRA beats the DINO baseline and random init."""

from __future__ import annotations

from labkit.report import verdict


def evaluation(**models: tuple[float, float, float, float]) -> dict:
    keys = ("J&F", "attn best head J", "attn head avg J", "k-means clip_hungarian mIoU")
    return {"summary": [{"model": m, **dict(zip(keys, v))} for m, v in models.items()]}


def test_verdict_counts_the_measures_dora_wins_outright():
    ev = evaluation(dora=(0.70, 0.30, 0.23, 0.42), dino=(0.75, 0.21, 0.16, 0.42), random=(0.76, 0.30, 0.14, 0.49))
    text = verdict(ev, "synthetic", "120 steps")
    # head average is the only measure where DoRA beats both (the best head ties random)
    assert "DoRA beats dino and random on 1 of 4 measures (attention-mask Jaccard, head average)." in text
    assert "Label propagation J&F: DoRA is behind dino and random (dora 0.700, dino 0.750, random 0.760)." in text
    assert "Attention-mask Jaccard, best head: DoRA beats dino, ties with random" in text
    assert "k-means mIoU per clip: DoRA ties with dino, is behind random" in text


def test_verdict_none_and_all():
    worse = evaluation(dora=(0.1, 0.1, 0.1, 0.1), dino=(0.2, 0.2, 0.2, 0.2), random=(0.3, 0.3, 0.3, 0.3))
    assert "DoRA beats dino and random on none of the 4 measures." in verdict(worse, "d", "b")
    better = evaluation(dora=(0.9, 0.9, 0.9, 0.9), dino=(0.2, 0.2, 0.2, 0.2))
    assert "DoRA beats dino on all 4 measures." in verdict(better, "d", "b")
    assert verdict({"summary": [{"model": "dino", "J&F": 0.5}]}, "d", "b") == "On d: no DoRA model was evaluated."
