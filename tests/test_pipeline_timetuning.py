"""labkit pipeline with methods=[timetuning]: TimeTuning trains through its own notebook
(notebooks/timetuning.ipynb, not train_dora's), and its outputs reach exploration, evaluation and
the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.pipeline import PipelineConfig, is_complete, plan, run_pipeline

TINY_MODEL = {"depth": 2, "embed_dim": 96, "num_heads": 3}


def tiny(runs: Path, video: Path, **changes) -> PipelineConfig:
    values = dict(
        name="tt",
        runs_dir=str(runs),
        seeds=1,  # one seed: stage names without _s<seed> (seeds: tests/test_pipeline.py)
        video_path=str(video),
        methods=["timetuning"],
        model_kwargs=TINY_MODEL,
        pretrained=False,
        steps=3,
        img_size=64,
        batch_size=2,
        num_frames=3,
        explore_frames=3,
        explore_img_size=96,
        eval_data=["synthetic"],
        eval_resolution=96,
        eval_max_frames=6,
        # TimeTuning's head; the DoRA / DINO options (out_dim, num_local) are left out of its
        # notebook, which has no such parameters
        train={
            "head_dims": [32, 16],
            "num_prototypes": 8,
            "trainable_blocks": 1,
            "out_dim": 256,
            "num_local": 1,
            "checkpoint_every": 2,
            "num_workers": 0,
        },
    )
    values.update(changes)
    return PipelineConfig(**values)


def test_each_method_gets_its_own_notebook(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, Path(__file__), methods=["dora", "dino", "timetuning"])
    by = {s.name: s for s in plan(cfg)}
    assert [by[f"train_{m}"].notebook for m in ("dora", "dino", "timetuning")] == [
        "train_dora",
        "train_dora",
        "timetuning",
    ]
    tt, dora = by["train_timetuning"].params, by["train_dora"].params
    assert "method" not in tt and "out_dim" not in tt and "k" not in tt and "num_local" not in tt
    assert tt["num_prototypes"] == 8 and tt["steps"] == dora["steps"] == 3
    assert "num_prototypes" not in dora and dora["out_dim"] == 256 and dora["method"] == "dora"
    assert tt["davis_root"] == "" and tt["pretrained"] is False
    ckpt = str(by["train_timetuning"].out_dir / "checkpoint.pth")
    assert by["explore_timetuning"].params["checkpoint"] == ckpt
    assert f"timetuning={cfg.model}:{ckpt}" in by["evaluate_synthetic"].params["models"]
    # an option TimeTuning reads but its notebook does not take is refused, not dropped
    from labkit.pipeline import check_plan

    with pytest.raises(ValueError, match="stage train_timetuning: .*epsilon"):
        check_plan(cfg, plan(tiny(tmp_path, Path(__file__), train={"epsilon": 0.1})))


def test_timetuning_scores_the_synthetic_video_it_tunes_on(tmp_path: Path) -> None:
    """The notebook's first mIoU (score_data) is the hard variant's DAVIS-layout folder when the
    run tunes on synthetic-hard, "" (the default easy video) otherwise."""
    from labkit.data import default_dataset, default_video
    from labkit.pipeline import check_plan

    hard_cfg = tiny(tmp_path, Path("synthetic-hard"))
    stages = plan(hard_cfg)
    hard = next(s for s in stages if s.name == "train_timetuning").params
    assert hard["score_data"] == str(default_dataset("hard"))
    assert Path(hard["score_data"]).name == "synthetic-hard"  # its name in the notebook's tables
    # the scored folder is the one that holds the tuned video, with its masks
    assert hard["video_path"] == str(default_video("hard"))
    assert Path(hard["video_path"]).parent == Path(hard["score_data"])
    assert (Path(hard["score_data"]) / "Annotations" / "480p" / "synthetic-hard").is_dir()
    assert Path(hard["video_path"]).name == "synthetic-hard.mp4"
    check_plan(hard_cfg, stages)  # the notebook takes the parameter
    for video in ("", "synthetic", str(Path(__file__))):  # default, easy by name, own video
        stage = next(s for s in plan(tiny(tmp_path, video)) if s.name == "train_timetuning")
        assert stage.params["score_data"] == "", video
    easy = next(s for s in plan(tiny(tmp_path, "synthetic")) if s.name == "train_timetuning")
    hard_stage = next(s for s in stages if s.name == "train_timetuning")
    assert hard_stage.fingerprint != easy.fingerprint  # a run moved to the hard video reruns it
    # train: overrides it (a video of one's own with masks beside it)
    own = tiny(tmp_path, Path(__file__), train={"score_data": str(tmp_path)})
    assert next(s for s in plan(own) if s.name == "train_timetuning").params["score_data"] == str(
        tmp_path
    )


@pytest.mark.slow
def test_pipeline_trains_timetuning_through_its_notebook(tmp_path: Path, small_video: Path):
    cfg = tiny(tmp_path, small_video)
    messages: list[str] = []
    report = run_pipeline(cfg, progress=False, say=messages.append)
    run = cfg.run_dir.resolve()
    stages = plan(cfg)
    assert [s.name for s in stages] == [
        "train_timetuning",
        "explore_timetuning",
        "evaluate_synthetic",
        "report",
    ]
    for stage in stages:
        assert is_complete(stage), stage.name
    assert any("train_timetuning: running timetuning" in m for m in messages)
    train = run / "train_timetuning"
    assert (train / "timetuning.ipynb").is_file() and not (train / "train_dora.ipynb").exists()
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["method"] == "timetuning" and metrics["steps"] == 3
    assert set(metrics["miou"]) == {"synthetic", "davis2016"}  # before / after, its own scores
    assert metrics["miou"]["davis2016"]["before"]["skipped"]  # the evaluate stages score DAVIS
    for name in ("checkpoint.pth", "log.jsonl", "segments_after.gif"):
        assert (train / name).is_file(), name
    ev = json.loads((run / "evaluate_synthetic" / "metrics.json").read_text())
    assert [r["model"] for r in ev["summary"]] == ["random", "timetuning"]
    html = report.read_text()
    assert "train_timetuning/log.png" in html and "explore_timetuning/heads.png" in html
    assert "timetuning notebook" in html and "TimeTuning has no teacher to collapse" in html
