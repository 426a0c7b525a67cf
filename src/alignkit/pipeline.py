"""Run the stages of a recipe in order; a stage whose output is complete is skipped.

A recipe is YAML:

    name: demo
    output_dir: runs/demo            # each stage writes to output_dir/<stage name>
    defaults: {seed: 0}              # keys given to every stage that has them
    stages:
      - name: sft
        method: sft                  # any command of alignkit.commands (its registry name)
        config: {model_name_or_path: embedded:smollm2-135m-instruct, dataset_name: builtin:sft.jsonl}
      - name: answers
        method: generate
        config: {model_name_or_path: stage:sft}    # stage:NAME is that stage's output (model/, a .jsonl),
                                               # also inside a value: rm:stage:reward_model

The stages run through engine.stages.run_stages (as the safety loop's steps do): a stage is complete when
its run.json says so and is skipped; a stage that was interrupted is resumed from its latest checkpoint when
it has one, so rerunning a recipe after a crash continues where it stopped. A stage that raises stops the
pipeline: its run.json says failed with the reason (the run owner, engine.run, writes it), and the pipeline
prints `[n/N] NAME: failed: REASON` and shows it so on index.html.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alignkit.commands import get, make_config
from alignkit.config import flat_fields, load_yaml
from alignkit.engine.stages import Stage, run_stages
from alignkit.errors import AlignkitError
from alignkit.safety.report import section as safety_section

STAGE_REF = "stage:"
PACKAGED = Path(__file__).parent / "configs"
SECTIONS = (safety_section,)  # results shown on the index page itself (red-team and safety-loop runs)


def method_parts(method: str):
    """(config class, run function) of the command a stage's `method:` names."""
    return get(method).load()


def resolve_recipe(path: str | Path) -> Path:
    """A recipe path, or the name of a packaged one (`demo`, `tiny`)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = PACKAGED / f"{path}.yaml"
    if packaged.is_file():
        return packaged
    names = ", ".join(sorted(f.stem for f in PACKAGED.glob("*.yaml")))
    raise AlignkitError(f"{path}: file: recipe does not exist (packaged recipes: {names})")


def load_recipe(path: Path, seen: tuple = ()) -> dict:
    """A recipe file as a dict. `extends: PARENT` (a packaged name or a path) runs the parent's stages first:
    the parent's name, output_dir and defaults apply unless this recipe sets its own, and its stages come
    before this recipe's, so stages a finished parent run already completed are skipped."""
    recipe = load_yaml(path)
    parent_name = recipe.pop("extends", None) if isinstance(recipe, dict) else None
    if parent_name is None:
        return recipe
    parent_path = resolve_recipe(parent_name)
    if parent_path.resolve() in seen:
        raise AlignkitError(f"{path}: extends: {parent_name} extends this recipe again (a cycle)")
    parent = load_recipe(parent_path, seen + (path.resolve(),))
    merged = {**parent, **recipe, "defaults": {**(parent.get("defaults") or {}), **(recipe.get("defaults") or {})}}
    merged["stages"] = list(parent.get("stages") or []) + list(recipe.get("stages") or [])
    return merged


def pipeline_root(recipe: dict, overrides: dict | None = None) -> Path:
    """Where the stages go: --output_dir, else the recipe's output_dir, else runs/<recipe name>."""
    name = recipe.get("name", "pipeline")
    return Path((overrides or {}).get("output_dir") or recipe.get("output_dir") or f"runs/{name}")


def plan(recipe: dict, recipe_path: str, overrides: dict | None = None) -> list[dict]:
    """The stages of a recipe with their resolved configs (output dirs and stage: references filled in)."""
    stages = recipe.get("stages")
    if not isinstance(stages, list) or not stages:
        raise AlignkitError(f"{recipe_path}: stages: a recipe needs a list of stages")
    root = pipeline_root(recipe, overrides)
    defaults = dict(recipe.get("defaults") or {})
    extra = {k: v for k, v in (overrides or {}).items() if k != "output_dir"}
    planned, dirs = [], {}
    for i, stage in enumerate(stages):
        where = f"{recipe_path}: stages[{i}]"
        if not isinstance(stage, dict) or "method" not in stage:
            raise AlignkitError(f"{where}: each stage needs a method (and a name)")
        name = str(stage.get("name") or stage["method"])
        if name in dirs:
            raise AlignkitError(f"{where}: name: {name!r} is used twice; give stages distinct names")
        command = get(stage["method"])
        fields = flat_fields(command.load()[0])
        values = {k: v for k, v in {**defaults, **extra}.items() if k in fields}
        values.update(stage.get("config") or {})
        values.setdefault("output_dir", str(root / name))
        for key, value in values.items():
            if isinstance(value, str) and STAGE_REF in value:
                values[key] = _resolve_stage_refs(value, dirs, f"{where}: {key}")
        dirs[name] = (Path(values["output_dir"]), stage["method"])
        planned.append({"name": name, "method": stage["method"], "values": values})
    return planned


def _resolve_stage_refs(value: str, dirs: dict, where: str) -> str:
    """Every stage:NAME in `value` (alone, or inside a spec such as rm:stage:reward_model) becomes the path of
    what that earlier stage produced."""
    def path_of(match) -> str:
        name = match.group(1)
        if name not in dirs:
            raise AlignkitError(f"{where}: {value!r} names no earlier stage {name!r}")
        ref_dir, ref_method = dirs[name]
        return str(ref_dir / get(ref_method).output)

    return re.sub(r"(?<![\w])" + STAGE_REF + r"([\w.-]+)", path_of, value)


def run_pipeline(recipe_path: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Run every stage not yet complete (engine.stages.run_stages); returns the pipeline directory (with
    index.html)."""
    path = resolve_recipe(recipe_path)
    recipe = load_recipe(path)
    root = pipeline_root(recipe, overrides)
    stages = [registry_stage(s) for s in plan(recipe, str(path), overrides)]
    run_stages(stages, root, SECTIONS, make_config=lambda stage, values: make_config(get(stage.method), values))
    print(f"pipeline {recipe.get('name', path.stem)}: all {len(stages)} stages complete; "
          f"summary: {root / 'index.html'}", flush=True)
    return root


def registry_stage(planned: dict) -> Stage:
    """A planned stage as the runner's Stage, its config class and run function from the command registry."""
    config_cls, run = method_parts(planned["method"])
    return Stage(planned["name"], planned["method"], config_cls, run, planned["values"])
