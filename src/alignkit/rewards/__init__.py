"""Reward sources: callables `f(prompts, completions, **columns) -> list[float]` (a reward model, an
ensemble of them, the safety + helpfulness rule, or any Python function)."""
