"""Settings of rollouts that are not sampling parameters: the colocated vLLM engine (flat keys use_vllm,
vllm_...). Light to import, like every settings module: the CLI reads them to build --help."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.envs.base import environment_class
from alignkit.errors import AlignkitError
from alignkit.models.load import resolve_path
from alignkit.rollout.vllm_engine import VLLMSampler


@dataclass
class VLLMSettings:
    """Rollouts on a vLLM engine colocated in the training process (flat keys: use_vllm, vllm_...)."""

    use_vllm: bool = False
    """Sample with vLLM (CUDA GPU; `pip install vllm`); the trainer's weights are pushed to it after every
    update."""
    vllm_gpu_memory_utilization: float = 0.3
    """The share of GPU memory vLLM may take (weights and KV cache); the trainer uses the rest."""
    vllm_enable_sleep_mode: bool = False
    """Release vLLM's memory between rollouts (more room to train, a little time to wake)."""
    vllm_importance_sampling_cap: float = 2.0
    """Weight each token's policy-gradient term by min(π_trainer / π_vLLM, cap), correcting for vLLM's and the
    trainer's log-probs differing (truncated importance sampling); 0 turns the correction off."""

    def check(self) -> None:
        if self.vllm_importance_sampling_cap < 0 or 0 < self.vllm_importance_sampling_cap < 1:
            raise AlignkitError(f"config: vllm_importance_sampling_cap: must be 0 (off) or at least 1, got "
                                f"{self.vllm_importance_sampling_cap}")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise AlignkitError(f"config: vllm_gpu_memory_utilization: must be in (0, 1), got "
                                f"{self.vllm_gpu_memory_utilization}")

    def check_device(self, device: str) -> None:
        if self.use_vllm and device in ("cpu", "mps"):
            raise AlignkitError(f"config: use_vllm: vLLM needs a CUDA GPU, got device {device}; drop --use_vllm")

    def sampler(self, model_name_or_path: str, dtype: str, seed: int):
        """The colocated vLLM engine when use_vllm, else None (the torch sampler on the policy)."""
        if not self.use_vllm:
            return None
        # imported here: the engine module pulls in torch, and reading these settings (--help) must stay light
        return VLLMSampler(resolve_path(model_name_or_path), gpu_memory_utilization=self.vllm_gpu_memory_utilization,
                           enable_sleep_mode=self.vllm_enable_sleep_mode, dtype=dtype, seed=seed)


@dataclass
class AsyncSettings:
    """Asynchronous generation for group RL (flat keys: async_generation, max_staleness, ...)."""

    async_generation: bool = False
    """Sample the next batches in a separate generator process (its own copy of the model) while this one
    trains on the current batch; the weights are pushed to it after every update (rollout.async_rollout)."""
    max_staleness: int = 1
    """Most updates the weights that sampled a batch may lag the weights that train on it (K)."""
    async_generation_threads: int = 1
    """CPU threads of the generator process; the trainer keeps the rest of torch's threads (at least 1)."""
    async_importance_sampling_cap: float = 2.0
    """Weight each token by min(π_trainer / π_generator, cap), correcting for samples drawn with older weights
    (truncated importance sampling); 0 turns the correction off."""

    def check(self) -> None:
        if self.max_staleness < 0:
            raise AlignkitError(f"config: max_staleness: must be >= 0, got {self.max_staleness}")
        if self.async_generation_threads < 1:
            raise AlignkitError(f"config: async_generation_threads: must be >= 1, got {self.async_generation_threads}")
        if self.async_importance_sampling_cap < 0 or 0 < self.async_importance_sampling_cap < 1:
            raise AlignkitError(f"config: async_importance_sampling_cap: must be 0 (off) or at least 1, got "
                                f"{self.async_importance_sampling_cap}")


@dataclass
class EnvSettings:
    """Multi-turn episodes in an environment (flat keys: environment, max_turns, max_episode_tokens)."""

    environment: str = ""
    """Train in an environment instead of on single responses: calculator, retrieval, module:Class or
    file.py:Class (docs/agents.md). Its rewards are the episode's; reward_funcs, when given, are added on the
    last turn's text."""
    max_turns: int = 4
    """Most model turns per episode (each at most max_completion_length tokens)."""
    max_episode_tokens: int = 1024
    """Most completion tokens per episode, the model's and the environment's together."""

    def check(self) -> None:
        if self.max_turns < 1:
            raise AlignkitError(f"config: max_turns: must be at least 1, got {self.max_turns}")
        if self.max_episode_tokens < 2:
            raise AlignkitError(f"config: max_episode_tokens: must be at least 2, got {self.max_episode_tokens}")
        if self.environment:
            environment_class(self.environment)  # an unknown or broken spec is one line before any model loads
