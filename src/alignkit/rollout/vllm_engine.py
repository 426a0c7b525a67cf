"""Rollouts on a colocated vLLM engine (GPU), behind the same interface as the torch sampler.

`VLLMSampler` (the counterpart of `rollout.sampler.TorchSampler`) starts vLLM inside the training process
(sharing the GPU with the trainer, with `gpu_memory_utilization` capping its share) from the policy's
starting checkpoint. Before a rollout that follows an optimizer update, `sync` pushes the trainer's current
weights into the engine in one batched `load_weights` call (with a LoRA adapter: W + ΔW for each adapted
weight) and clears vLLM's prefix cache, whose entries were computed with the old weights. With sleep mode
on, the engine's weights and KV cache are released between rollouts and woken for the next one.

vLLM is imported only when this sampler is chosen (`--use_vllm true`); nothing else in alignkit needs it.
Each rollout's sampling seed is drawn from torch's global random state, which checkpoints save, so a
resumed run asks vLLM for the same seeds. vLLM's kernels compute log-probs that differ slightly from the
trainer's; the trainer recomputes the behaviour log-probs itself, so the first ratio is still exactly 1, and
vLLM's own log-prob of each sampled token (after temperature: `logprobs_mode="processed_logprobs"`, vLLM
0.10.2 or later) is kept so that trainers can weight each token by min(π_trainer / π_vLLM, cap), truncated
importance sampling (`losses.rl.truncated_is_weights`; `completion_logps`).
"""

from __future__ import annotations

import torch

from alignkit.errors import AlignkitError


class VLLMSampler:
    """Sampling with a vLLM `LLM` in this process; `sync(model)` pushes the trainer's weights into it."""

    def __init__(self, model_path: str, max_model_length: int | None = None, gpu_memory_utilization: float = 0.3,
                 enable_sleep_mode: bool = False, dtype: str = "auto", seed: int = 0):
        try:
            from vllm import LLM
        except ImportError as error:
            raise AlignkitError(f"use_vllm: vLLM is not importable ({error}); install it on a GPU machine "
                                "(pip install vllm) or run without --use_vllm") from None
        self.enable_sleep_mode = enable_sleep_mode
        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, seed=seed,
                       max_model_len=max_model_length, enable_sleep_mode=enable_sleep_mode,
                       enable_prefix_caching=True, logprobs_mode="processed_logprobs")
        self.sampled_logps: dict[tuple, list[float]] = {}  # (prompt ids, completion ids) -> vLLM's log-probs
        if enable_sleep_mode:
            self.llm.sleep(level=1)

    def sample(self, prompt_ids, group, settings, stop_ids, pad_id) -> list[list[int]]:
        from vllm import SamplingParams

        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # from the checkpointed global state: resumable
        params = SamplingParams(n=group, temperature=settings.temperature, top_p=settings.top_p,
                                top_k=settings.top_k if settings.top_k > 0 else -1,
                                max_tokens=settings.max_new_tokens, stop_token_ids=list(stop_ids), seed=seed,
                                logprobs=0)  # 0: the sampled token's log-prob only
        if self.enable_sleep_mode:
            self.llm.wake_up()
        try:
            outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params, use_tqdm=False)
        finally:
            if self.enable_sleep_mode:
                self.llm.sleep(level=1)
        stops = set(stop_ids)
        rows = []
        self.sampled_logps = {}
        for prompt, output in zip(prompt_ids, outputs):
            for completion in output.outputs:
                tokens = list(completion.token_ids)
                logps = [step[token].logprob for step, token in zip(completion.logprobs or [], tokens)]
                # a row ended by a stop token must end with it (the trainer scores it, the rules see "stop")
                if completion.finish_reason == "stop" and (not tokens or tokens[-1] not in stops):
                    reason = completion.stop_reason
                    tokens.append(reason if isinstance(reason, int) else min(stops))
                logps += [float("nan")] * (len(tokens) - len(logps))  # a token vLLM did not sample: unknown
                self.sampled_logps[(tuple(prompt), tuple(tokens))] = logps
                rows.append(tokens)
        return rows

    def completion_logps(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """vLLM's log-prob of each token of each completion of the last rollout (NaN where unknown)."""
        return [self.sampled_logps.get((tuple(p), tuple(c)), [float("nan")] * len(c))
                for p, c in zip(prompt_ids, completion_ids)]

    def sync(self, model) -> None:
        """Load `model`'s current weights into the engine (one batched call) and drop stale prefix caches."""
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["weights"])
        engine_model(self.llm).load_weights(list(trainer_weights(model)))
        self.llm.reset_prefix_cache()
        if self.enable_sleep_mode:
            self.llm.sleep(level=1)


def engine_model(llm):
    """The torch module inside a colocated single-GPU vLLM engine."""
    return llm.llm_engine.model_executor.driver_worker.model_runner.model


def trainer_weights(model):
    """(name, tensor) pairs in the checkpoint's naming. A LoRA adapter's update is added to each adapted
    weight (W + ΔW, computed, not merged in place: repeated merge/unmerge would drift the base weights by
    float rounding at every sync)."""
    model = getattr(model, "module", model)
    deltas = {}
    if hasattr(model, "peft_config"):
        from peft.tuners.lora import LoraLayer

        for module_name, module in model.named_modules():
            if isinstance(module, LoraLayer) and not getattr(module, "disable_adapters", False):
                for adapter in module.active_adapters:
                    if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                        delta = module.get_delta_weight(adapter).detach()
                        key = f"{module_name}.base_layer.weight"
                        deltas[key] = deltas[key] + delta if key in deltas else delta
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "original_module" in name:
                continue
            value = param.detach() + deltas[name] if name in deltas else param.detach()
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            yield name.replace("modules_to_save.default.", ""), value
