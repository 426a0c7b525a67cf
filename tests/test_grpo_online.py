"""The 2026 online-RL options of GRPO on the tiny model: DAPO's dynamic sampling trains only on groups with
reward spread and reaches the plain run's reward in no more updates; the entropy bonus keeps entropy higher;
GSPO's sequence-level ratio gives GRPO's update at μ = 1; bad settings are one clear line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import e_share_reward

import alignkit.methods.grpo as grpo
from alignkit.config import build_config
from alignkit.errors import AlignkitError
from alignkit.losses import rl
from alignkit.methods.grpo import GRPOConfig, train_grpo

E_HIT = '''
def e_hit(prompts, completions, **columns):
    """1 when at least 18% of the response's characters are the letter e: a sparse, verifiable reward (most
    groups of 4 start with all 0)."""
    return [1.0 if c.count("e") / max(len(c), 1) >= 0.18 else 0.0 for c in completions]
'''

pytestmark = pytest.mark.filterwarnings("ignore:grpo. for 5 steps")  # tiny random model: lengths run away


def _config(out, reward, **overrides):
    values = {"model_name_or_path": "embedded:tiny", "dataset_name": "builtin:prompts.jsonl", "reward_funcs": reward,
              "num_generations": 4, "per_device_train_batch_size": 16, "max_completion_length": 8,
              "learning_rate": 1e-2, "max_steps": 24, "logging_steps": 1, "output_dir": str(out), "progress": False,
              "device": "cpu"}
    return build_config(GRPOConfig, {**values, **overrides})


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _e_hit(tmp_path) -> str:
    path = tmp_path / "e_hit.py"
    path.write_text(E_HIT)
    return f"{path}:e_hit"


def _first_reaching(values: list[float], target: float, window: int = 6) -> int | None:
    """The first update after which the mean of the last `window` values reaches target (None: never)."""
    for end in range(window, len(values) + 1):
        if sum(values[end - window:end]) / window >= target:
            return end
    return None


@pytest.mark.parametrize("seed", [1, 2])
def test_dynamic_sampling_trains_only_on_spread_groups_and_learns_no_slower(tmp_path, monkeypatch, seed):
    """Sparse reward e_hit: the plain run's reward over its last 6 of 24 updates is the target; the dynamic
    run's unfiltered reward (`sampling/reward_before`: the engine's own prompts, before any group is dropped)
    reaches it within the same 24 updates. Measured (seeds 1, 2): plain ends at 0.19 / 0.04; dynamic reaches
    that by update 9 / 7 and ends at 0.95 / 0.57. Every group a loss is computed on has reward spread."""
    reward = _e_hit(tmp_path)
    trained = []
    real_loss = grpo.GroupPolicyStep.loss

    def recording_loss(self, model, policy, scored):
        if torch.is_grad_enabled():
            trained.append(rl.spread_groups(torch.tensor(scored.scores), self.config.num_generations))
        return real_loss(self, model, policy, scored)

    train_grpo(_config(tmp_path / "plain", reward, seed=seed))
    monkeypatch.setattr(grpo.GroupPolicyStep, "loss", recording_loss)
    train_grpo(_config(tmp_path / "dynamic", reward, seed=seed, dynamic_sampling=True, max_sampling_rounds=4))
    assert trained and all(bool(spread.all()) for spread in trained)
    plain, dynamic = _metrics(tmp_path / "plain"), _metrics(tmp_path / "dynamic")
    assert any(m["sampling/groups_dropped"] > 0 for m in dynamic) and any(m["sampling/rounds"] > 1 for m in dynamic)
    assert all(m["frac_reward_zero_std"] == 0.0 for m in dynamic if m["sampling/batch_filled"] > 0)
    assert sum(m["sampling/frac_reward_zero_std_before"] for m in dynamic[:4]) > 0  # there was something to drop
    target = sum(m["reward"] for m in plain[-6:]) / 6
    reached = _first_reaching([m["sampling/reward_before"] for m in dynamic], target)
    assert reached is not None and reached <= len(plain), (target, [m["sampling/reward_before"] for m in dynamic])


def test_a_batch_without_spread_changes_no_weight(tmp_path):
    """A constant reward: no group ever has spread, so after every round is used no gradient exists and the
    weights stay exactly as loaded (AdamW skips parameters without a gradient: no weight decay either)."""
    from safetensors.torch import load_file

    from alignkit.models.load import load_policy

    out = tmp_path / "flat"
    train_grpo(_config(out, "contains:@@@", dynamic_sampling=True, max_sampling_rounds=2, max_steps=2,
                       weight_decay=0.1))
    rows = _metrics(out)
    assert all(m["sampling/rounds"] == 2 and m["sampling/batch_filled"] == 0 for m in rows)
    assert all(m["frac_reward_zero_std"] == 1.0 and m["sampling/groups_dropped"] == 8 for m in rows)
    start = load_policy("embedded:tiny", device="cpu").state_dict()
    for name, tensor in load_file(out / "model" / "model.safetensors").items():
        torch.testing.assert_close(tensor, start[name], atol=0, rtol=0, msg=name)


def test_entropy_bonus_keeps_entropy_higher(tmp_path):
    """At a learning rate that collapses entropy (3e-2, e_share reward), entropy_coef 0.1 keeps the policy's
    mean token entropy over the last 6 updates higher than without it (measured, seed 1: 4.5 against 0.5 nats,
    from 6.2 at the start), and `entropy` is logged in both runs."""
    reward = e_share_reward(tmp_path)
    ends = {}
    for coef in (0.0, 0.1):
        out = tmp_path / f"coef-{coef}"
        train_grpo(_config(out, reward, num_generations=8, learning_rate=3e-2, seed=1, entropy_coef=coef))
        entropy = [m["entropy"] for m in _metrics(out)]
        assert entropy[0] > 5.0
        ends[coef] = sum(entropy[-6:]) / 6
    assert ends[0.1] > ends[0.0] + 0.3, ends


def test_gspo_at_one_update_per_rollout_is_grpo_with_sequence_mean(tmp_path):
    """μ = 1: the sequence ratio is 1 and its gradient the sequence mean of the token log-prob gradients, so
    importance_sampling_level sequence and token, both with loss_type grpo, train to the same weights."""
    from safetensors.torch import load_file

    from alignkit.models.load import load_policy

    reward = e_share_reward(tmp_path)
    weights = {}
    for level in ("token", "sequence"):
        out = tmp_path / level
        train_grpo(_config(out, reward, loss_type="grpo", importance_sampling_level=level, max_steps=3,
                           num_generations=8, seed=4))
        weights[level] = load_file(out / "model" / "model.safetensors")
    for name, tensor in weights["token"].items():
        # Adam turns float rounding in near-zero gradients into differences of ~3e-5; a different update
        # would differ by about the learning rate (1e-2) per step
        torch.testing.assert_close(weights["sequence"][name], tensor, atol=1e-4, rtol=0, msg=name)
    start = load_policy("embedded:tiny", device="cpu").state_dict()
    assert max((weights["token"][n] - start[n]).abs().max().item() for n in start) > 1e-2  # it did train


def test_settings_errors(tmp_path):
    for overrides, message in (({"importance_sampling_level": "episode"}, "importance_sampling_level: must be one"),
                               ({"max_sampling_rounds": 0}, "max_sampling_rounds: must be at least 1"),
                               ({"entropy_coef": -0.1}, "entropy_coef: must be >= 0"),
                               ({"max_staleness": -1}, "max_staleness: must be >= 0"),
                               ({"async_generation": True, "use_vllm": True, "device": "auto"}, "async_generation: not with use_vllm"),
                               ({"async_generation": True, "device": "cuda"}, "generator process runs on the CPU"),
                               ({"async_importance_sampling_cap": 0.5}, "async_importance_sampling_cap")):
        with pytest.raises(AlignkitError, match=message):
            _config(tmp_path, "rules", **overrides).check()


def test_async_generation_keeps_staleness_within_the_bound_and_learns(tmp_path, monkeypatch):
    """async_generation with max_staleness 1 and two micro-batches per update: every rollout trained on was
    sampled with weights at most 1 update old (checked on each collected job, not on averaged metrics), some
    were 1 update old (generation overlapped training), the importance weights are logged, and the reward
    rises as in the synchronous test (last 4 updates at least 1.5x the first 4)."""
    import alignkit.rollout.async_rollout as async_rollout

    seen = []
    real_collect = async_rollout.AsyncRollouts._collect

    def recording_collect(self, key):
        rollout, stats = real_collect(self, key)
        seen.append((key, self.version, stats["async/staleness"]))
        return rollout, stats

    monkeypatch.setattr(async_rollout.AsyncRollouts, "_collect", recording_collect)
    out = tmp_path / "async"
    train_grpo(_config(out, e_share_reward(tmp_path), num_generations=8, per_device_train_batch_size=8,
                       gradient_accumulation_steps=2, async_generation=True, max_staleness=1, seed=1))
    assert len(seen) == 24 * 2
    assert {staleness for _, _, staleness in seen} == {0.0, 1.0}
    assert all(key == (version, micro) for (key, version, _), micro in zip(seen, [0, 1] * 24))
    rows = _metrics(out)
    assert all({"async/staleness", "async/is_weight_mean", "async/logp_diff_mean", "entropy"} <= set(m) for m in rows)
    rewards = [m["reward"] for m in rows]
    assert sum(rewards[-4:]) >= 1.5 * sum(rewards[:4]), rewards


def test_dynamic_sampling_changes_nothing_when_every_group_has_spread(tmp_path):
    """A dense reward (e_share: groups of 8 never tie): nothing is dropped, no extra prompt is drawn, so the
    random state and hence every sample, reward and weight match the run without dynamic sampling."""
    reward = e_share_reward(tmp_path)
    for name, dynamic in (("plain", False), ("dynamic", True)):
        train_grpo(_config(tmp_path / name, reward, num_generations=8, max_steps=3, seed=2, dynamic_sampling=dynamic))
    plain, dynamic = _metrics(tmp_path / "plain"), _metrics(tmp_path / "dynamic")
    assert all(m["sampling/rounds"] == 1 and m["sampling/groups_dropped"] == 0 for m in dynamic)
    assert [m["reward"] for m in dynamic] == [m["reward"] for m in plain]
    assert [m["loss"] for m in dynamic] == [m["loss"] for m in plain]
