"""Reward sources: callables `f(prompts, completions, **columns) -> list[float]` (a reward model, an
ensemble of them, the safety + helpfulness rule, the written rubric, or any Python function), named by spec
in `rewards.sources`; the rubric and the refusal detector it uses live here too, below the judges that
build on them (feedback/)."""
