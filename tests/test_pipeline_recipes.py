"""The pipeline's recipes (labkit.recipes) and its per-method learning rate.

The CPU demo's values live in three places that must agree: PipelineConfig's defaults, the
training notebook's parameters and ``labkit/recipes/cpu-demo.yaml``; these tests hold them
together and check that every shipped recipe loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labkit.notebooks import notebook_parameters
from labkit.pipeline import PipelineConfig, load_pipeline_config, method_lr, plan
from labkit.recipes import RECIPE_DIR, recipe_names, recipe_path, resolve_config

REPO = Path(__file__).resolve().parents[1]


def test_the_recipes_shipped() -> None:
    assert recipe_names() == ["cpu-demo", "cpu-long", "gpu-walking-tour"]
    assert recipe_path("cpu-long") == RECIPE_DIR / "cpu-long.yaml"
    with pytest.raises(ValueError, match="recipe 'nope'.*cpu-demo, cpu-long, gpu-walking-tour"):
        recipe_path("nope")


def test_config_is_a_file_or_a_recipe_name(tmp_path: Path) -> None:
    mine = tmp_path / "cpu-long"  # a file of that name wins over the recipe
    mine.write_text("steps: 7\n")
    assert resolve_config(str(mine)) == str(mine)
    assert resolve_config("cpu-long") == str(RECIPE_DIR / "cpu-long.yaml")
    assert resolve_config(None) is None
    with pytest.raises(ValueError, match="--config 'lab.yml': no such file, and no recipe"):
        resolve_config("lab.yml")


def test_cpu_demo_recipe_is_the_defaults() -> None:
    recipe = load_pipeline_config(recipe_path("cpu-demo")).to_dict()
    defaults = PipelineConfig().to_dict()
    train = recipe.pop("train")
    assert defaults.pop("train") == {}  # the defaults leave the rest to the notebook ...
    assert recipe == defaults
    # ... whose parameters are the recipe's train values
    params = notebook_parameters("train_dora")
    assert train and {k: params[k] for k in train} == train


def test_cpu_long_and_gpu_recipes_load(tmp_path: Path) -> None:
    long = load_pipeline_config(recipe_path("cpu-long"))
    assert long.steps == 600 and long.seeds == 1 and long.device in ("cpu", "cuda")
    video = tmp_path / "tour.mp4"
    video.write_bytes(b"")  # only its existence is checked here
    with pytest.raises(ValueError, match="video_path 'WalkingTour.mp4' does not exist"):
        load_pipeline_config(recipe_path("gpu-walking-tour"), ["device=cpu"])
    gpu = load_pipeline_config(
        recipe_path("gpu-walking-tour"), [f"video_path={video}", "device=cpu"]
    )
    assert gpu.model == "vit_small_patch16_224" and gpu.img_size == 224
    assert gpu.train["out_dim"] == 65536 and gpu.train["scale_lr"] is True


def test_lr_one_for_all_or_per_method() -> None:
    cfg = PipelineConfig(seeds=1)
    lrs = {s.method: s.params.get("lr") for s in plan(cfg) if s.group == "train"}
    assert lrs == {"dora": 5e-4, "dino": 1e-4}
    cfg = PipelineConfig(seeds=1, lr=2e-4)
    assert {s.params["lr"] for s in plan(cfg) if s.group == "train"} == {2e-4}
    # a method left out of the mapping gets its notebook's default (no lr parameter passed)
    cfg = PipelineConfig(seeds=1, lr={"dora": 3e-4})
    assert method_lr(cfg, "dino") is None
    assert [("lr" in s.params) for s in plan(cfg) if s.group == "train"] == [True, False]


@pytest.mark.parametrize(
    "value, needle",
    [
        ("0", "lr must be a number > 0, got 0"),
        ("{dora: -1}", "lr.dora must be a number > 0"),
        ("{dora: abc}", "lr.dora must be a number > 0, got 'abc'"),
        ("{dinov2: 1e-4}", "lr.dinov2: unknown method"),
    ],
)
def test_bad_lr_is_one_line_naming_the_key(value: str, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        load_pipeline_config(None, [f"lr={value}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_takes_a_recipe_name() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "pipeline", "--config", "no-such-recipe"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "labkit: error: --config 'no-such-recipe': no such file, and no recipe of that name "
        "(recipes: cpu-demo, cpu-long, gpu-walking-tour)"
    ]
