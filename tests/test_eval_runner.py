"""The evaluation lab's runner: end to end on the synthetic video and on DAVIS, cross-checked
against the non-streaming building blocks; pixel-exact patch scores; clear errors before any
heavy work; k-NN on an image folder; the CLI; the report; the notebook under papermill."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.eval.datasets import DatasetError, DatasetWarning, davis_sequences, image_folder_split
from labkit.eval.metrics import davis_sequence_scores, grid_to_frame, jaccard
from labkit.eval.patchgrid import (
    confusion_from_histograms,
    mask_jaccard,
    mask_statistics,
    patch_histogram,
    patch_index_map,
)
from labkit.eval.runner import EvalConfig, evaluate, model_input_size
from labkit.eval.segmentation import confusion_matrix, mask_scores
from labkit.eval.specs import parse_model_spec

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}
SPEC = "tiny=vit_small_patch16_224"
RES = 96  # synthetic frames 96 x 160 -> model input 96 x 128, a 6 x 8 grid


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from labkit.data.synthetic import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("synthetic") / "davis", num_frames=12, size=(96, 160)
    ).root


def tiny_config(root: Path, **kw) -> EvalConfig:
    base = dict(
        models=(SPEC,), model_kwargs=TINY, data_root=str(root), resolution=RES, batch_size=4
    )
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def synthetic_result(synthetic_root):
    return evaluate(tiny_config(synthetic_root), progress=False)


@pytest.fixture(scope="module")
def reference(synthetic_root):
    """The same model's attention, tokens, keys and queries through the non-streaming path."""
    from labkit.attention import extract_video
    from labkit.video import load_masks, open_frames

    model = parse_model_spec(SPEC).load(seed=0, model_kwargs=TINY)
    video = open_frames(synthetic_root / "JPEGImages" / "480p" / "synthetic", size=(96, 128))
    ex = extract_video(
        model, video, kinds=("tokens", "keys", "queries"), batch_size=4, progress=False
    )
    gt = torch.from_numpy(load_masks(synthetic_root / "Annotations" / "480p" / "synthetic"))
    return ex, gt


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, res, p, mult, expected",
    [
        ((480, 854), 480, 16, 64, (480, 832)),  # DINO's DAVIS input
        ((480, 854), 224, 16, 64, (224, 384)),
        ((480, 854), 480, 8, 64, (480, 832)),
        ((854, 480), 224, 16, 64, (384, 224)),  # portrait
        ((480, 854), 230, 16, 16, (224, 400)),  # short side down to a multiple of p
        ((480, 854), 224, 14, 64, (224, 392)),
    ],  # 64 -> 56 for p = 14
)
def test_model_input_size(size, res, p, mult, expected) -> None:
    assert model_input_size(size, res, p, mult) == expected


def test_parse_model_spec(tmp_path: Path) -> None:
    ckpt = tmp_path / "dino_deitsmall16_pretrain.pth"
    ckpt.write_bytes(b"x")
    s = parse_model_spec("vit_small_patch16_224")
    assert (s.label, s.arch, s.checkpoint, s.pretrained) == (
        "random-vit_small_patch16_224",
        "vit_small_patch16_224",
        "",
        False,
    )
    s = parse_model_spec(f"dino=vit_small_patch16_224:{ckpt}")
    assert (s.label, s.checkpoint, s.which, s.weights) == ("dino", str(ckpt), "teacher", str(ckpt))
    s = parse_model_spec(f"vit_small_patch16_224:{ckpt}#student")
    assert (s.label, s.which) == ("dino_deitsmall16_pretrain#student", "student")
    s = parse_model_spec("vit_small_patch16_224.dino:pretrained")
    assert s.pretrained and s.label == "vit_small_patch16_224.dino" and s.checkpoint == ""
    # a tag means its weights (never a silent random init); random and auto say otherwise
    assert parse_model_spec("vit_small_patch16_224.dino").pretrained is True
    s = parse_model_spec("vit_small_patch16_224.dino:random")
    assert (s.pretrained, s.label, s.weights) == (
        False,
        "random-vit_small_patch16_224.dino",
        "random",
    )
    s = parse_model_spec("vit_small_patch16_224.dino:auto")
    assert (s.pretrained, s.label, s.weights) == ("auto", "auto-vit_small_patch16_224.dino", "auto")
    for bad, match in [
        ("", "empty"),
        ("=vit_small_patch16_224", "label"),
        ("vit small", "not a timm architecture"),
        ("vit_small_patch16_224:/no/such.pth", "not found"),
        ("vit_small_patch16_224#student", "needs a training checkpoint"),
        ("vit_small_patch16_224:", "nothing after"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_model_spec(bad)


def test_config_errors(synthetic_root) -> None:
    for kw, match in [
        (dict(models=(SPEC, SPEC)), "repeat"),
        (dict(evaluations=("propagation", "jf")), "unknown"),
        (dict(evaluations=("knn",)), "knn_root"),
        (dict(resolution=0), "resolution"),
        (dict(keep=1.5), "keep"),
        (dict(data_root="/no/such/folder"), "no such folder"),
        (dict(device="tpu"), "device"),
    ]:
        with pytest.raises(ValueError, match=match):
            tiny_config(synthetic_root, **kw)
    cfg = tiny_config(synthetic_root, sequences=["synthetic"], evaluations=["attention"])
    assert cfg.sequences == ("synthetic",) and cfg.evaluations == ("attention",)
    assert cfg.kwargs_for("tiny") == TINY
    cfg = tiny_config(
        synthetic_root, models=(SPEC, "vit_small_patch16_224"), model_kwargs={"tiny": TINY}
    )
    assert cfg.kwargs_for("tiny") == TINY and cfg.kwargs_for("random-vit_small_patch16_224") == {}
    with pytest.raises(ValueError, match=r"no models labelled \['tinny'\]"):
        tiny_config(synthetic_root, model_kwargs={"tiny": TINY, "tinny": TINY})


@pytest.mark.parametrize("alignment", ["resize", "crop"])
@pytest.mark.parametrize("size, grid", [((37, 53), (4, 6)), ((64, 96), (4, 6)), ((50, 41), (7, 3))])
def test_patch_scores_equal_pixel_scores(alignment, size, grid) -> None:
    """Histogram scores equal the colleague's pixel-level functions on upsampled predictions."""
    g = torch.Generator().manual_seed(sum(size) + grid[0])
    p, T, C, k, m = 16 if alignment == "crop" else 9, 3, 3, 5, 4
    gt = torch.randint(0, C, (T, *size), generator=g)
    gt[:, : size[0] // 2] = 0  # some structure: a background half
    ids = torch.randint(0, k, (T, *grid), generator=g)
    masks = torch.rand((T, m, *grid), generator=g) > 0.6
    masks[0, 0] = False  # an empty mask
    index = patch_index_map(grid, size, patch_size=p, alignment=alignment)
    hist = torch.stack([patch_histogram(gt[t], index, grid[0] * grid[1], C) for t in range(T)])
    up = grid_to_frame(ids, size, patch_size=p, alignment=alignment)  # (T, H, W)
    assert torch.equal(confusion_from_histograms(hist, ids, k), confusion_matrix(up, gt, C, k))
    assert torch.equal(
        confusion_from_histograms(hist[1], ids[1], k), confusion_matrix(up[1], gt[1], C, k)
    )
    area = torch.bincount(index.reshape(-1), minlength=grid[0] * grid[1])
    j = mask_jaccard(masks, hist[..., 1:].sum(-1), area)
    up_masks = grid_to_frame(masks, size, patch_size=p, alignment=alignment)  # (T, m, H, W)
    ref = jaccard(up_masks, (gt > 0)[:, None].expand(-1, m, -1, -1))
    torch.testing.assert_close(j, ref, rtol=0, atol=1e-12)
    stats = mask_statistics(j)
    ref_stats = mask_scores(masks, gt, patch_size=p, alignment=alignment)
    for key, value in ref_stats.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(stats[key], value, rtol=0, atol=1e-12)
        else:
            assert stats[key] == pytest.approx(value, abs=1e-12), key


def test_patch_scores_of_the_ground_truth_are_perfect() -> None:
    """A mask that is exactly the patch-aligned foreground scores J = 1."""
    fg = torch.zeros(4, 6, dtype=torch.bool)
    fg[1:3, 2:5] = True
    gt = grid_to_frame(fg.long(), (64, 96), patch_size=16, alignment="resize")
    index = patch_index_map((4, 6), (64, 96), patch_size=16)
    hist = patch_histogram(gt, index, 24, 2)[None]
    area = torch.bincount(index.reshape(-1))
    assert mask_jaccard(fg[None, None], hist[..., 1], area).item() == 1.0
    assert mask_jaccard(~fg[None, None], hist[..., 1], area).item() == 0.0


# --------------------------------------------------------------------------------------------
# End to end on the synthetic video, against the non-streaming building blocks
# --------------------------------------------------------------------------------------------


def test_synthetic_run_structure(synthetic_result) -> None:
    r = synthetic_result
    assert r.sequences == ["synthetic"] and len(r.models) == 1
    m = r.models[0]
    assert m.label == "tiny" and m.info["patch_size"] == 16 and m.info["heads"] == 3
    seq = m.sequences[0]
    assert (seq.num_frames, seq.num_objects, seq.source_size, seq.input_size, seq.grid) == (
        12,
        3,
        (96, 160),
        (96, 128),
        (6, 8),
    )
    assert seq.propagation.frames.tolist() == list(range(1, 11))
    assert seq.propagation.j.shape == (3, 10)
    row = m.summary()
    for key in (
        "J&F",
        "J",
        "F",
        "attn best head J",
        "attn head avg J",
        "DoRA best object J",
        "k-means frame_hungarian mIoU",
        "k-means clip_overcluster mIoU",
        "k-means dataset_hungarian mIoU",
        "k-means dataset_overcluster mIoU",
    ):
        assert 0.0 <= row[key] <= 1.0, key
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    seq_d = d["models"]["tiny"]["sequences"][0]
    assert len(seq_d["propagation"]["objects"]) == 3
    assert len(seq_d["attention"]["jaccard"]) == 12 and len(seq_d["attention"]["jaccard"][0]) == 3
    assert d["config"]["models"] == [SPEC] and d["environment"]["device"] == "cpu"
    ex = seq.examples
    assert ex.indices == [0, 6, 11] and ex.frames.shape == (3, 96, 128, 3)
    assert ex.gt.shape == ex.propagated.shape == (3, 96, 128)
    assert (ex.propagated[0] == ex.gt[0]).all()  # frame 0 is given


def test_propagation_matches_the_batch_path(synthetic_result, reference) -> None:
    from labkit.propagation import propagate_labels

    ex, gt = reference
    pred = propagate_labels(
        ex.features["tokens"], gt[0], patch_size=16, out_size=(96, 160), alignment="resize"
    )
    ref = davis_sequence_scores(pred, gt)
    got = synthetic_result.models[0].sequences[0].propagation
    torch.testing.assert_close(got.j, ref.j)
    torch.testing.assert_close(got.f, ref.f)
    assert got.jf_mean == pytest.approx(ref.jf_mean)


def test_attention_and_tracking_match_the_batch_path(synthetic_result, reference) -> None:
    from labkit.eval.segmentation import attention_mask_scores, object_mask_scores
    from labkit.tracking import discover_objects, track_objects

    ex, gt = reference
    seq = synthetic_result.models[0].sequences[0]
    ref = attention_mask_scores(ex.attention, gt, 0.6, patch_size=16, alignment="resize")
    torch.testing.assert_close(seq.attention["jaccard"], ref["jaccard"])
    torch.testing.assert_close(seq.attention["head_average_jaccard"], ref["head_average_jaccard"])
    assert seq.attention["best_head"] == ref["best_head"]
    assert seq.attention["stability"] == pytest.approx(ref["stability"])
    f = ex.features
    proto = discover_objects(ex.attention[:1], f["queries"][:1], f["tokens"][:1], k=3).prototypes
    tracks = track_objects(proto, f["keys"][None])
    ref = object_mask_scores(tracks.masks[0], gt, patch_size=16, alignment="resize")
    torch.testing.assert_close(seq.tracking["jaccard"], ref["jaccard"])
    assert seq.tracking["best_head_j"] == pytest.approx(ref["best_head_j"])


def test_tracked_objects_precision_against_pixels(synthetic_result, reference) -> None:
    """Where DoRA's objects fall: the share of each object's pixels on the foreground and the
    foreground's share of the frame, against the upsampled masks counted pixel by pixel."""
    from labkit.tracking import discover_objects, track_objects

    ex, gt = reference
    seq = synthetic_result.models[0].sequences[0]
    assert seq.unannotated_frames == ()  # every synthetic frame is scored
    fg = gt > 0  # (T, H, W)
    t = seq.tracking
    assert t["foreground_share"] == pytest.approx(float(fg.double().mean()), abs=1e-12)
    f = ex.features
    proto = discover_objects(ex.attention[:1], f["queries"][:1], f["tokens"][:1], k=3).prototypes
    masks = track_objects(proto, f["keys"][None]).masks[0]  # (T, k, gh, gw)
    up = grid_to_frame(masks, (96, 160), patch_size=16, alignment="resize")  # (T, k, H, W)
    pixels = up.sum(dim=(2, 3)).double()  # (T, k)
    ref = (up & fg[:, None]).sum(dim=(2, 3)).double() / pixels
    ref[pixels == 0] = float("nan")
    assert t["precision"].shape == (12, 3)
    torch.testing.assert_close(t["precision"], ref, rtol=0, atol=1e-12, equal_nan=True)
    best = t["best_head"]
    assert t["best_precision"] == pytest.approx(float(torch.nanmean(ref[:, best])), abs=1e-12)
    avg = seq.attention["head_average_precision"]
    row = synthetic_result.models[0].summary()
    for value in (t["best_precision"], avg, row["DoRA object on foreground"]):
        assert 0.0 <= value <= 1.0
    assert row["foreground share"] == pytest.approx(t["foreground_share"])
    d = json.loads(json.dumps(seq.to_dict(), allow_nan=False))
    assert len(d["tracking"]["precision"]) == 12 and "head_average_precision" in d["attention"]


def test_segmentation_matches_kmeans_miou(synthetic_result, reference) -> None:
    from labkit.eval.segmentation import kmeans_miou

    ex, gt = reference
    seg = synthetic_result.models[0].sequences[0].segmentation
    for protocol in ("frame", "clip"):
        for name, k, matching in (
            ("hungarian", 4, "hungarian"),
            ("overcluster", 10, "many_to_one"),
        ):
            ref = kmeans_miou(
                ex.features["tokens"],
                gt,
                k,
                protocol=protocol,
                matching=matching,
                patch_size=16,
                alignment="resize",
                num_classes=4,
                normalize=True,
            )
            assert seg[f"{protocol}_{name}"] == pytest.approx(ref.miou, abs=1e-12), (protocol, name)


def test_dataset_protocol_matches_a_direct_computation(synthetic_result, reference) -> None:
    """One sequence, every patch sampled: k-means of all (float16-stored) normalised tokens."""
    import torch.nn.functional as F

    from labkit.clustering import kmeans
    from labkit.eval.segmentation import hungarian_miou

    ex, gt = reference
    x = F.normalize(ex.features["tokens"].half().float().reshape(-1, 48), dim=-1)  # (T*P, D)
    centroids = kmeans(x, 2, seed=0).centroids
    ids = torch.cdist(x, centroids).argmin(1).reshape(12, 6, 8)
    up = grid_to_frame(ids, (96, 160), patch_size=16, alignment="resize")
    ref = hungarian_miou(up, (gt > 0).long(), 2)
    got = synthetic_result.models[0].dataset_segmentation
    assert got["num_samples"] == got["num_patches"] == 12 * 48
    assert got["hungarian"] == pytest.approx(ref.miou, abs=1e-12)


def test_fixed_seeds_give_the_same_numbers(synthetic_root, synthetic_result) -> None:
    again = evaluate(
        tiny_config(synthetic_root, evaluations=("segmentation", "attention")), progress=False
    )
    a, b = again.models[0].sequences[0], synthetic_result.models[0].sequences[0]
    assert a.segmentation == b.segmentation
    torch.testing.assert_close(a.attention["jaccard"], b.attention["jaccard"], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# DAVIS (shared data): two sequences
# --------------------------------------------------------------------------------------------


def test_davis_two_sequences(davis_root: Path, tmp_path: Path) -> None:
    from labkit.eval.report import write_metrics

    cfg = EvalConfig(
        models=(SPEC,),
        model_kwargs=TINY,
        data_root=str(davis_root),
        sequences=("car-shadow", "motocross-jump"),
        resolution=64,
        size_multiple=16,
        dataset_samples=200,
        max_frames=10,
    )
    r = evaluate(cfg, progress=False)
    m = r.models[0]
    assert [s.name for s in m.sequences] == ["car-shadow", "motocross-jump"]
    for s in m.sequences:
        assert (s.num_frames, s.num_objects, s.source_size, s.input_size) == (
            10,
            1,
            (480, 854),
            (64, 112),
        )
        assert s.propagation.frames.tolist() == list(range(1, 9))  # first and last not scored
        row = s.row()
        for key in ("J&F", "attn best head J", "DoRA best object J", "k-means clip_hungarian mIoU"):
            assert 0.0 <= row[key] <= 1.0
    summary = m.propagation_summary()
    assert summary["J&F-Mean"] == pytest.approx((summary["J-Mean"] + summary["F-Mean"]) / 2)
    assert m.dataset_segmentation["num_samples"] == 200
    assert m.dataset_segmentation["num_patches"] == 2 * 10 * 4 * 7
    data = json.loads(write_metrics(r, tmp_path / "metrics.json").read_text())
    assert data["sequences"] == ["car-shadow", "motocross-jump"]


def test_davis_sequences_listing(davis_root: Path) -> None:
    seqs = davis_sequences(davis_root)
    assert len(seqs) == 14 and seqs[0].name == "bmx-trees"  # the order of sequences.txt
    assert all(s.size == (480, 854) for s in seqs)


# --------------------------------------------------------------------------------------------
# Bad input: clear errors, before heavy work
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def no_heavy_work(monkeypatch):
    """Fail the test if any sequence is evaluated."""
    import labkit.eval.runner as runner

    def boom(*args, **kwargs):
        raise AssertionError("a sequence was evaluated before the bad input was reported")

    monkeypatch.setattr(runner, "evaluate_sequence", boom)


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if any model is built (data errors come first)."""
    from labkit.eval.specs import ModelSpec

    def boom(*args, **kwargs):
        raise AssertionError("a model was built before the data error was reported")

    monkeypatch.setattr(ModelSpec, "load", boom)


def copy_dataset(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "davis"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("*.mp4"))
    return dst


def test_root_without_davis_layout(tmp_path: Path, no_model, no_heavy_work) -> None:
    (tmp_path / "frames").mkdir()
    with pytest.raises(DatasetError, match=r"does not have the DAVIS layout.*JPEGImages/480p"):
        evaluate(tiny_config(tmp_path), progress=False)


def test_unknown_sequence(synthetic_root, no_model, no_heavy_work) -> None:
    with pytest.raises(DatasetError, match=r"'cows'.*sequences there: synthetic"):
        evaluate(tiny_config(synthetic_root, sequences=("cows",)), progress=False)


def test_missing_masks(synthetic_root, tmp_path: Path, no_model, no_heavy_work) -> None:
    root = copy_dataset(synthetic_root, tmp_path)
    masks = sorted((root / "Annotations" / "480p" / "synthetic").glob("*.png"))
    masks[-1].unlink()  # a frame without its mask is reported and not scored (paired by name)
    with pytest.warns(DatasetWarning, match=rf"1 of 12 frames have no mask.*{masks[-1].stem}"):
        (seq,) = davis_sequences(root)
    assert seq.unannotated == (11,) and seq.masks == tuple(masks[:-1])
    for m in masks[1:-1]:
        m.unlink()
    with pytest.raises(DatasetError, match="only the first of 12 frames has a mask"):
        evaluate(tiny_config(root), progress=False)
    masks[0].unlink()
    with pytest.raises(DatasetError, match="no mask PNGs"):
        evaluate(tiny_config(root), progress=False)


def test_masks_of_another_size(synthetic_root, tmp_path: Path, no_model, no_heavy_work) -> None:
    from PIL import Image

    root = copy_dataset(synthetic_root, tmp_path)
    mask = sorted((root / "Annotations" / "480p" / "synthetic").glob("*.png"))[5]
    with Image.open(mask) as im:
        im.resize((80, 48), Image.NEAREST).save(mask)
    with pytest.raises(DatasetError, match=rf"{mask.name}.*48x80.*frames are 96x160"):
        evaluate(tiny_config(root), progress=False)


def test_first_mask_without_object(synthetic_root, tmp_path: Path, no_model, no_heavy_work) -> None:
    from PIL import Image

    root = copy_dataset(synthetic_root, tmp_path)
    mask = sorted((root / "Annotations" / "480p" / "synthetic").glob("*.png"))[0]
    with Image.open(mask) as im:
        empty = Image.new("P", im.size, 0)
        empty.putpalette(im.getpalette())
    empty.save(mask)
    with pytest.raises(DatasetError, match="first mask.*no object"):
        evaluate(tiny_config(root), progress=False)


def test_model_specs_that_do_not_load(synthetic_root, tmp_path: Path, no_heavy_work) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    other = tmp_path / "tiny.pth"
    torch.save(parse_model_spec(SPEC).load(model_kwargs=TINY).state_dict(), other)
    wider = {"depth": 2, "embed_dim": 64, "num_heads": 4}
    for spec, kwargs, match in [
        ("nope=vit_not_a_model_patch16", TINY, r"'nope=vit_not_a_model_patch16' does not load"),
        ("resnet18", {}, "does not load.*VisionTransformer"),
        (f"bad=vit_small_patch16_224:{garbage}", TINY, r"'bad=.*garbage.pth' does not load"),
        (
            f"wide=vit_small_patch16_224:{other}",
            wider,
            r"(?s)'wide=.*does not load.*shape mismatches.*checkpoint \(48,\) vs model \(64,\)",
        ),
    ]:
        with pytest.raises(ValueError, match=match):
            evaluate(
                tiny_config(synthetic_root, models=(spec,), model_kwargs=kwargs), progress=False
            )


def test_too_few_heads_for_dora(synthetic_root, no_heavy_work) -> None:
    with pytest.raises(ValueError, match="dora_objects=4 but the model has only 3 heads"):
        evaluate(tiny_config(synthetic_root, dora_objects=4), progress=False)


# --------------------------------------------------------------------------------------------
# k-NN on a labelled image folder
# --------------------------------------------------------------------------------------------


def write_image_folder(root: Path, layout: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"blue": (30, 40, 200), "green": (30, 190, 40), "red": (210, 30, 30)}
    for name, colour in colours.items():
        for i in range(5):
            split = ("val" if i == 4 else "train") if layout == "split" else ""
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            img = np.clip(rng.normal(colour, 25, (40, 52, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:03d}.png")


@pytest.mark.parametrize("layout", ["classes", "split"])
def test_knn_on_an_image_folder(tmp_path: Path, layout: str) -> None:
    from labkit.eval.datasets import load_image_batch
    from labkit.eval.knn import knn_classify
    from labkit.models import prepare_images

    write_image_folder(tmp_path, layout)
    split = image_folder_split(tmp_path)
    assert split.classes == ("blue", "green", "red")
    assert (len(split.train), len(split.test)) == (12, 3)
    cfg = EvalConfig(
        models=(SPEC,),
        model_kwargs=TINY,
        evaluations=("knn",),
        knn_root=str(tmp_path),
        knn_resolution=32,
    )
    r = evaluate(cfg, progress=False)
    knn = r.models[0].knn
    assert r.sequences == [] and r.models[0].sequences == []
    assert (knn["k"], knn["num_train"], knn["num_test"]) == (12, 12, 3)
    # independently: the [CLS] token after the final norm, DINO's k-NN feature
    model = parse_model_spec(SPEC).load(model_kwargs=TINY)

    def cls(items):
        images = prepare_images(load_image_batch([p for p, _ in items], 32), model)
        with torch.no_grad():
            return model.forward_features(images)[:, 0]

    ref = knn_classify(
        cls(split.train),
        torch.tensor([y for _, y in split.train]),
        cls(split.test),
        12,
        0.07,
        test_labels=torch.tensor([y for _, y in split.test]),
    )
    assert knn["top1"] == ref.top1 and knn["top5"] == ref.top5
    assert knn["top1"] == 1.0  # solid colours: even a random network separates them


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DatasetError, match="at least two class"):
        image_folder_split(tmp_path)


# --------------------------------------------------------------------------------------------
# CLI, report, notebook
# --------------------------------------------------------------------------------------------


def test_cli_eval(synthetic_root, tmp_path: Path, capsys) -> None:
    from labkit.cli import main

    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "--models",
            SPEC,
            "--model-kwargs",
            "{depth: 2, embed_dim: 48, num_heads: 3}",
            "--data",
            str(synthetic_root),
            "--resolution",
            str(RES),
            "--evaluations",
            "attention",
            "segmentation",
            "--out",
            str(out),
            "--quiet",
            "--no-figures",
        ]
    )
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["models"]["tiny"]["attention"]["best_head_j"] is not None
    assert "| tiny |" in capsys.readouterr().out and (out / "summary.md").is_file()
    rc = main(
        [
            "eval",
            "--models",
            "vit_small_patch16_224:/no/such.pth",
            "--data",
            str(synthetic_root),
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "/no/such.pth" in capsys.readouterr().err


def test_report(synthetic_result, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from labkit.eval.report import (
        bar_metrics,
        example_panels,
        html_table,
        markdown_table,
        plot_sequence_bars,
        save_report,
        sequence_rows,
        summary_rows,
    )

    rows = summary_rows(synthetic_result)
    assert rows[0]["model"] == "tiny" and "k-NN top-1" not in rows[0]
    assert html_table(rows).count("<tr>") == 2 and "<td>tiny</td>" in html_table(rows)
    md = markdown_table(sequence_rows(synthetic_result.models[0]))
    assert md.count("\n") == 4 and "| synthetic |" in md and "| mean over sequences |" in md
    assert bar_metrics(synthetic_result) == [
        "J&F",
        "attn best head J",
        "DoRA best object J",
        "k-means clip_hungarian mIoU",
    ]
    assert isinstance(plot_sequence_bars(synthetic_result, "J"), Figure)
    panels = example_panels(synthetic_result.models[0].sequences[0])
    assert list(panels) == [
        "ground truth",
        "propagated",
        f"attention head {synthetic_result.models[0].sequences[0].attention['best_head']}",
        "head average",
        f"DoRA object {synthetic_result.models[0].sequences[0].tracking['best_head']}",
    ]
    for a in panels.values():
        assert a.dtype == np.uint8 and a.shape == (3, 96, 128, 3)
    written = save_report(synthetic_result, tmp_path)
    assert {"metrics", "summary", "bars_J_F", "examples_tiny"} <= set(written)
    assert all(p.is_file() for p in written.values())


def test_notebook_parameters_are_the_config_fields() -> None:
    from labkit.notebooks import notebook_parameters

    params = notebook_parameters("evaluate")
    assert set(params) == {f.name for f in dataclasses.fields(EvalConfig)}
    EvalConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


@pytest.mark.slow
def test_notebook_under_papermill(synthetic_root, synthetic_result, tmp_path: Path) -> None:
    from labkit.notebooks import run_notebook

    out = tmp_path / "run"
    run_notebook(
        "evaluate",
        out,
        {
            "models": [SPEC],
            "model_kwargs": TINY,
            "data_root": str(synthetic_root),
            "resolution": RES,
            "batch_size": 4,
            "out_dir": str(out),
        },
        progress=False,
    )
    data = json.loads((out / "metrics.json").read_text())
    row = data["summary"][0]
    assert row["model"] == "tiny"
    assert row["J&F"] == pytest.approx(synthetic_result.models[0].summary()["J&F"])
    assert data["models"]["tiny"]["sequences"][0]["name"] == "synthetic"
    assert (out / "evaluate.ipynb").is_file() and (out / "examples_tiny.png").is_file()
