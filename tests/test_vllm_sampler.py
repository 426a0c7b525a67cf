"""The vLLM rollout backend's wiring, against a stand-in `vllm` module (vLLM itself needs a GPU).

The stand-in keeps its own copy of the model, loaded from the checkpoint path as vLLM would, samples with
it, and takes new weights only through `load_weights`, so GRPO learns through it only if every update
reaches the engine under names the checkpoint knows. Like vLLM, it reports a stop with the stop token
left out of token_ids.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from alignkit.errors import AlignkitError


class FakeLLM:
    instances: list = []
    logprob_shift = 0.0  # added to every reported log-prob: a constructed engine/trainer mismatch

    def __init__(self, model, **options):
        from alignkit.models.load import load_policy

        self.path, self.options = model, options
        self.inner = load_policy(model, dtype="float32", device="cpu")
        self.loads, self.resets, self.requests = [], 0, []
        runner = SimpleNamespace(model=self)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=runner)))
        FakeLLM.instances.append(self)

    def load_weights(self, weights):
        state = self.inner.state_dict()
        names = []
        for name, tensor in weights:
            assert name in state, f"vLLM would not know {name}"
            state[name].copy_(tensor)
            names.append(name)
        self.loads.append(names)

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, params, use_tqdm=True):
        from alignkit.rollout.generate import SamplingSettings
        from alignkit.rollout.sampler import sample_groups

        self.requests.append(params)
        settings = SamplingSettings(max_new_tokens=params.max_tokens, temperature=params.temperature,
                                    top_p=params.top_p, top_k=max(params.top_k, 0), batch_size=len(prompts))
        with torch.random.fork_rng():
            torch.manual_seed(params.seed)
            rows = sample_groups(self.inner, [p["prompt_token_ids"] for p in prompts], params.n, settings,
                                 params.stop_token_ids, 0)
        stops = set(params.stop_token_ids)
        outputs = []
        for k, prompt in enumerate(prompts):
            completions = []
            for row in rows[k * params.n:(k + 1) * params.n]:
                end = next((i for i, t in enumerate(row) if t in stops), None)
                tokens = row if end is None else row[:end]
                completion = SimpleNamespace(token_ids=tokens, finish_reason="length" if end is None else "stop",
                                             stop_reason=None if end is None else row[end])
                if getattr(params, "logprobs", None) is not None:  # vLLM: one {token: Logprob} per token
                    values = self.processed_logps(prompt["prompt_token_ids"], tokens, params.temperature)
                    completion.logprobs = [{t: SimpleNamespace(logprob=v + FakeLLM.logprob_shift)}
                                           for t, v in zip(tokens, values)]
                completions.append(completion)
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs

    def processed_logps(self, prompt: list[int], tokens: list[int], temperature: float) -> list[float]:
        """log-probs of `tokens` after `prompt` at the sampling temperature (vLLM's processed_logprobs)."""
        if not tokens:
            return []
        with torch.no_grad():
            logits = self.inner(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
        logps = (logits.float() / temperature).log_softmax(-1)
        return logps.gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist()


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances, FakeLLM.logprob_shift = [], 0.0
    return FakeLLM


@pytest.mark.filterwarnings("ignore:grpo. for 5 steps")
def test_grpo_learns_through_the_engine_with_weights_synced_every_update(tmp_path, fake_vllm):
    import json

    from alignkit.config import build_config
    from alignkit.methods.grpo import GRPOConfig, train_grpo
    from conftest import e_share_reward

    out = tmp_path / "run"
    config = build_config(GRPOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": "builtin:prompts.jsonl",
        "reward_funcs": e_share_reward(tmp_path), "num_generations": 8, "per_device_train_batch_size": 16,
        "max_completion_length": 8, "learning_rate": 1e-2, "max_steps": 24, "logging_steps": 1,
        "output_dir": str(out), "progress": False, "use_vllm": True, "vllm_gpu_memory_utilization": 0.25})
    train_grpo(config)
    (engine,) = fake_vllm.instances
    assert engine.options["gpu_memory_utilization"] == 0.25
    assert len(engine.loads) == 24 and engine.resets == 24  # one batched push per update
    tied = {"lm_head.weight"} if engine.inner.config.tie_word_embeddings else set()
    assert set(engine.loads[0]) == set(engine.inner.state_dict()) - tied
    params = engine.requests[0]
    assert (params.n, params.max_tokens, params.temperature, params.top_k) == (8, 8, 1.0, -1)
    rewards = [json.loads(line)["reward"] for line in (out / "metrics.jsonl").read_text().splitlines()
               if '"reward"' in line]
    assert sum(rewards[-4:]) >= 1.8 * sum(rewards[:4]), rewards


def test_sync_pushes_merged_lora_weights_and_leaves_the_adapter_unmerged(fake_vllm, tiny_model_path):
    from alignkit.models.load import load_policy
    from alignkit.rollout.vllm_engine import VLLMSampler

    policy = load_policy(tiny_model_path, dtype="float32", device="cpu",
                         lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a non-zero update, so merging changes the weights
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    VLLMSampler(tiny_model_path).sync(policy)
    engine = fake_vllm.instances[0].inner.state_dict()
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)  # the adapter is unmerged again
    reference = copy.deepcopy(policy).merge_and_unload().state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(engine[name], tensor, msg=name)


def test_engine_rows_end_with_their_stop_token(fake_vllm, tiny_model_path, tiny_tokenizer):
    from alignkit.rollout.generate import SamplingSettings
    from alignkit.rollout.vllm_engine import VLLMSampler

    sampler = VLLMSampler(tiny_model_path)
    stops = list(range(60, 160))
    rows = sampler.sample([[5, 6, 7], [8, 9]], 4, SamplingSettings(max_new_tokens=10, temperature=1.0), stops, 0)
    assert len(rows) == 8
    for row in rows:
        assert len(row) == 10 or row[-1] in stops
        assert not any(t in stops for t in row[:-1])
    assert any(row[-1] in stops for row in rows)


def test_missing_vllm_is_one_clear_line(monkeypatch):
    from alignkit.rollout.vllm_engine import VLLMSampler

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(AlignkitError, match="use_vllm: vLLM is not importable"):
        VLLMSampler("anything")


def test_vllm_is_imported_only_when_chosen_and_never_on_cpu():
    from alignkit.config import build_config
    from alignkit.methods.grpo import GRPOConfig
    from alignkit.methods.ppo import PPOConfig

    code = "import sys, alignkit.methods.grpo, alignkit.methods.ppo, alignkit.rollout.rl; print('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    for config_cls in (GRPOConfig, PPOConfig):
        with pytest.raises(AlignkitError, match="use_vllm: vLLM needs a CUDA GPU"):
            build_config(config_cls, {"dataset_name": "x", "use_vllm": True, "device": "cpu"})


def test_ppo_pushes_weights_before_every_rollout(tmp_path, fake_vllm):
    from alignkit.config import build_config
    from alignkit.methods.ppo import PPOConfig, train_ppo
    from conftest import e_share_reward

    config = build_config(PPOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": "builtin:prompts.jsonl",
        "reward_funcs": e_share_reward(tmp_path), "per_device_train_batch_size": 4, "max_completion_length": 6,
        "max_steps": 3, "output_dir": str(tmp_path / "ppo"), "progress": False, "use_vllm": True})
    train_ppo(config)
    (engine,) = fake_vllm.instances
    assert len(engine.loads) == len(engine.requests) == 3 and engine.resets == 3
    assert all(params.n == 1 for params in engine.requests)


@pytest.mark.filterwarnings("ignore:grpo. for 5 steps")
@pytest.mark.parametrize("shift, cap", [(0.0, 2.0), (-math.log(2), 1.5), (-math.log(2), 0.0)])
def test_truncated_importance_sampling_against_the_engines_log_probs(tmp_path, fake_vllm, shift, cap):
    """The stand-in reports its log-prob of each sampled token (it holds the trainer's weights, so they agree
    to float rounding) plus `shift`. Shift 0: the mean |difference| is ~0 and every weight ~1. Shift −ln 2:
    every ratio π_trainer / π_vLLM is 2, so with cap 1.5 every weight is 1.5 and every token is clipped.
    Cap 0 turns the correction off: no vllm/ metrics."""
    import json

    from alignkit.config import build_config
    from alignkit.methods.grpo import GRPOConfig, train_grpo

    fake_vllm.logprob_shift = shift
    out = tmp_path / "run"
    config = build_config(GRPOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": "builtin:prompts.jsonl", "reward_funcs": "max_words:5",
        "num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 6, "learning_rate": 1e-3,
        "max_steps": 2, "logging_steps": 1, "output_dir": str(out), "progress": False, "use_vllm": True,
        "vllm_importance_sampling_cap": cap})
    train_grpo(config)
    assert fake_vllm.instances[0].options["logprobs_mode"] == "processed_logprobs"
    assert fake_vllm.instances[0].requests[0].logprobs == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    if cap == 0:
        assert not any(k.startswith("vllm/") for row in rows for k in row)
        return
    for row in rows:
        assert row["vllm/logp_diff_mean"] == pytest.approx(abs(shift), abs=1e-4)
        if shift == 0:
            assert row["vllm/is_weight_mean"] == pytest.approx(1.0, abs=1e-4) and row["vllm/is_clipped_ratio"] == 0
        else:
            assert row["vllm/is_weight_mean"] == pytest.approx(1.5) and row["vllm/is_clipped_ratio"] == 1.0
