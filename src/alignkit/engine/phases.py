"""The engine hook for methods that learn from their own samples in phases (PPO): each engine step is a
rollout phase, then epochs over minibatches of that rollout, each minibatch one optimizer step.

`engine.loop.train(..., rollouts=Rollouts(...))` reads the step's prompts as it reads any batch (a seeded
stream, `gradient_accumulation_steps` micro-batches of `per_device_train_batch_size` on each process) and
gives each prompt micro-batch a `sample_seed` that depends only on the run's seed, the step and the
micro-batch's place in the global batch, never on the number of processes. Then:

1. `collect(model, batches, sum_across)`: the experience of this process's micro-batches, without
   gradients (sample with `sample_seed`, score, behaviour log-probs, values, advantages). `sum_across`
   sums a tensor over all processes (statistics of the whole rollout, e.g. whitening); the experience's
   `num_tokens`, when it has one, counts the tokens the rollout put through the model (all processes).
2. for each of `epochs`: `minibatches(experience, epoch)` lists the optimizer steps of that epoch, each as
   this process's micro-batches for the engine's `step_fn`. Each optimizer step is the engine's own:
   gradient accumulation over the micro-batches (normalised by `count_fn` over all of them and all
   processes), clipping, the non-finite guard, the LR schedule.
3. `finish(experience)`: the rollout's own metrics, once its updates are done (e.g. the KL controller moves).

The logged row of a step holds the mean over its optimizer steps of the loss, gradient norm and step_fn
metrics, the `finish` metrics, and `lr` after the updates. `max_steps` counts rollouts; the LR schedule
counts optimizer steps (max_steps × epochs × minibatches_per_epoch). Checkpoints fall between rollouts and
hold `policy` (the part of the trained module that model/ holds) plus the method's `state_dict()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Rollouts:
    """A rollout phase, then epochs over minibatches of it (see the module docstring)."""

    collect: Callable[[Any, list[dict], Callable], Any]
    minibatches: Callable[[Any, int], list[list[dict]]]
    finish: Callable[[Any], dict[str, float]]
    epochs: int
    minibatches_per_epoch: int
    policy: Any = None
    """The module checkpoints and model/ hold, when the trained module wraps more (None: the whole module)."""
    state_dict: Callable[[], dict] | None = None
    """The method's own state in every checkpoint (weights outside `policy`, controllers)."""
    load_state_dict: Callable[[dict], None] | None = None

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps per rollout."""
        return self.epochs * self.minibatches_per_epoch


def sample_seed(seed: int, step: int, index: int) -> int:
    """The seed of global micro-batch `index` of step `step` (numpy's SeedSequence mixes the three)."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, dtype=np.uint64)[0] >> 1)
