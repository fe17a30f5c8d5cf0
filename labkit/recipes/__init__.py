"""Named pipeline recipes shipped with labkit: ``labkit pipeline --config cpu-long``.

Each recipe is a ``lab.yaml`` (the keys of :class:`labkit.pipeline.PipelineConfig`) in this
folder; ``--config`` takes a recipe's name wherever it takes a file, and ``-o`` overrides its keys
as usual. What each recipe measured, and how long it took, is in ``docs/science.md``:

* ``cpu-demo``: the demo's own settings written out (``make demo`` uses the defaults, which are
  these);
* ``cpu-long``: the same small ViT trained longer on the CPU (about 30 to 60 minutes on 2 cores);
* ``gpu-walking-tour``: ViT-S/16 on a walking-tour video on one GPU; give the video with
  ``-o video_path=...`` (it is not shipped).

Data only: no torch, no labkit imports, so the CLI can list recipes before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RECIPE_DIR", "recipe_names", "recipe_path", "resolve_config"]

RECIPE_DIR = Path(__file__).resolve().parent


def recipe_names() -> list[str]:
    """The recipes shipped with labkit, by name (the YAML files' stems), sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The YAML file of the recipe ``name``; ValueError naming the recipes if there is none."""
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"recipe {name!r}: no such recipe; recipes: {', '.join(recipe_names())}")
    return path


def resolve_config(config: str | None) -> str | None:
    """A ``--config`` value as a file path: an existing file as given, else a recipe's name.

    ``None`` stays ``None`` (the defaults). A value that is neither an existing file nor a recipe
    raises one line naming both readings.
    """
    if config is None or Path(config).expanduser().exists():
        return config
    if (RECIPE_DIR / f"{config}.yaml").is_file():
        return str(RECIPE_DIR / f"{config}.yaml")
    raise ValueError(
        f"--config {config!r}: no such file, and no recipe of that name "
        f"(recipes: {', '.join(recipe_names())})"
    )
