"""The asynchronous generator (`rollout.async_gen`): its behaviour log-probs equal the trainer's under the same
weights, a push changes what it samples with, a job never starts before its weight version, jobs are seeded by
key, a failing child is one AlignkitError line; and `sample_groups(return_logps=True)` against a hand
computation. One generator process serves the module's tests (spawning one costs a few seconds)."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import TINY

from alignkit.errors import AlignkitError
from alignkit.ops.prefix import group_logps
from alignkit.rollout.async_gen import (
    AsyncGenerator,
    GenerationTimeout,
    check_names,
    job_seed,
)
from alignkit.rollout.generate import SamplingSettings
from alignkit.rollout.sampler import filter_logits, sample_groups

TEMPERATURE = 0.8
STOPS = [3] + list(range(100, 140))  # EOS plus enough others that rows stop at different steps
SETTINGS = SamplingSettings(max_new_tokens=8, temperature=TEMPERATURE, top_k=20, batch_size=2)
GROUP = 3


class Weights:
    """The weights the generator was last given and their version, so tests can run in any order."""

    def __init__(self, model):
        self.model, self.version = model, 0

    def push(self, gen, model) -> int:
        self.model, self.version = model, self.version + 1
        gen.push(model, self.version)
        return self.version


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    from alignkit.data.tokenize import encode_prompt

    return [encode_prompt(tiny_tokenizer, p) for p in ("Hi", "Tell me about the sea and the sky", "Why?")]


@pytest.fixture(scope="module")
def generator(tiny_tokenizer):
    from alignkit.models.load import load_policy

    policy = load_policy(TINY, device="cpu")
    gen = AsyncGenerator(TINY, policy, dtype="float32", lora=None, settings=SETTINGS, group=GROUP,
                         stop_ids=STOPS, pad_id=tiny_tokenizer.pad_token_id, seed=7, max_staleness=1, threads=1)
    with gen:
        yield gen, Weights(policy)
    assert gen._process.exitcode is not None, "close() left the child running"


def _cut(row):
    end = next((i for i, t in enumerate(row) if t in STOPS), len(row) - 1)
    return row[:end + 1]


def _trainer_logps(model, prompts, rows, pad_id) -> list[list[float]]:
    """The trainer's per-token log-probs of the sampled completions (cut at the first stop), as GRPO takes them."""
    completions = [_cut(r) for r in rows]
    with torch.no_grad():
        out = group_logps(model, prompts, completions, pad_id, temperature=TEMPERATURE)
    return [out.token_logps[i, :len(c)].tolist() for i, c in enumerate(completions)]


def _assert_logps_close(ours, theirs):
    assert [len(r) for r in ours] == [len(r) for r in theirs]
    torch.testing.assert_close(torch.tensor(sum(ours, [])), torch.tensor(sum(theirs, [])), atol=1e-4, rtol=0)


def test_logps_match_the_trainers_under_the_same_weights(generator, prompts, tiny_tokenizer):
    gen, weights = generator
    assert gen.wait_ready(60) > 0
    gen.submit("match", prompts, min_version=weights.version)
    assert gen.pending == 1
    with pytest.raises(AlignkitError, match="already pending"):
        gen.submit("match", prompts, min_version=0)
    res = gen.result("match", timeout=60)
    assert gen.pending == 0 and res.key == "match" and res.version == weights.version and res.seconds > 0
    pad = tiny_tokenizer.pad_token_id
    assert len(res.token_rows) == len(prompts) * GROUP
    assert all(len(r) == SETTINGS.max_new_tokens for r in res.token_rows)
    for row, logps in zip(res.token_rows, res.token_logps):
        assert len(logps) == len(_cut(row)) and set(row[len(logps):]) <= {pad}
    assert len({len(lp) for lp in res.token_logps}) > 1, "the test needs rows that stop at different steps"
    _assert_logps_close(res.token_logps, _trainer_logps(weights.model, prompts, res.token_rows, pad))
    with pytest.raises(AlignkitError, match="no pending job"):
        gen.result("match")


def test_push_changes_the_weights_the_child_samples_with(generator, prompts, tiny_tokenizer):
    from alignkit.models.load import load_policy

    gen, weights = generator
    pad = tiny_tokenizer.pad_token_id
    gen.submit("push", prompts, min_version=weights.version)
    before = gen.result("push", timeout=60)
    base = weights.model
    other = load_policy(f"{TINY}@1", device="cpu")  # same names and shapes, other random weights
    version = weights.push(gen, other)
    assert gen.version == version
    gen.submit("push", prompts, min_version=version)
    after = gen.result("push", timeout=60)
    assert after.version == version and after.token_rows != before.token_rows
    _assert_logps_close(after.token_logps, _trainer_logps(other, prompts, after.token_rows, pad))
    # the same version pushed again replaces its weights (the child reloads on every push)
    gen.push(base, version)
    weights.model = base
    gen.submit("push", prompts, min_version=version)
    again = gen.result("push", timeout=60)
    assert again.version == version and again.token_rows == before.token_rows
    _assert_logps_close(again.token_logps, _trainer_logps(base, prompts, again.token_rows, pad))
    with pytest.raises(AlignkitError, match="below the published"):
        gen.push(base, version - 1)


def test_a_job_waits_for_its_min_version(generator, prompts):
    gen, weights = generator
    wanted = weights.version + 1
    gen.submit("gated", prompts, min_version=wanted)
    gen.submit("behind", prompts, min_version=0)  # FIFO: queued behind the gated job
    started = time.monotonic()
    with pytest.raises(GenerationTimeout, match="not done after"):
        gen.result("gated", timeout=1.0)
    assert time.monotonic() - started < 5 and gen.pending == 2
    weights.push(gen, weights.model)
    gated = gen.result("gated", timeout=60)
    assert gated.version == wanted and gated.waited >= 0.9
    assert gen.result("behind", timeout=60).version == wanted
    assert not gen.stale(wanted - 1, wanted) and gen.stale(wanted - 2, wanted)


def test_a_key_and_the_weights_fix_the_tokens(generator, prompts):
    gen, weights = generator
    for key in ("s1", "s2", ("s1", 0)):
        gen.submit(key, prompts, min_version=weights.version)
    first, other, tupled = gen.result("s1", 60), gen.result("s2", 60), gen.result(("s1", 0), 60)
    gen.submit("s1", prompts, min_version=weights.version)  # after other jobs ran: the same draws again
    again = gen.result("s1", 60)
    assert again.version == first.version and again.token_rows == first.token_rows
    assert again.token_logps == first.token_logps
    assert other.token_rows != first.token_rows and tupled.token_rows != first.token_rows
    assert job_seed(7, "s1") == job_seed(7, "s1") != job_seed(8, "s1")


def test_a_failing_child_is_one_alignkit_error(tmp_path, tiny_model, tiny_tokenizer, prompts):
    started = time.monotonic()
    with AsyncGenerator(str(tmp_path / "missing"), tiny_model, dtype="float32", lora=None, settings=SETTINGS,
                        group=2, stop_ids=STOPS, pad_id=tiny_tokenizer.pad_token_id, seed=0) as gen:
        gen.submit(0, prompts, min_version=0)
        with pytest.raises(AlignkitError) as failed:
            gen.result(0, timeout=60)
        assert not isinstance(failed.value, GenerationTimeout)
        assert "no such directory" in str(failed.value) and "\n" not in str(failed.value)
        with pytest.raises(AlignkitError, match="no such directory"):
            gen.wait_ready(5)
    assert time.monotonic() - started < 60
    gen.close()  # idempotent
    with pytest.raises(AlignkitError, match="closed"):
        gen.submit(1, prompts, min_version=0)


def test_check_names_reports_a_missing_or_reshaped_parameter(tiny_model):
    shapes = {n: tuple(p.shape) for n, p in tiny_model.named_parameters()}
    assert check_names(tiny_model, shapes).keys() == shapes.keys()
    with pytest.raises(AlignkitError, match="no parameter 'lora_A'"):
        check_names(tiny_model, {**shapes, "lora_A": (2, 2)})
    name = next(iter(shapes))
    with pytest.raises(AlignkitError, match="has shape"):
        check_names(tiny_model, {name: (1, 1)})


@pytest.mark.parametrize("temperature", [0.7, 0.0])
def test_sample_groups_logps_by_hand(tiny_model, tiny_tokenizer, prompts, temperature):
    """Each token's log-prob is log_softmax(logits / T) of a plain full forward of prompt + the tokens before
    it (T = 0: greedy, scored at T = 1), not the top-k filtered distribution it was drawn from; the draws are
    those of the default call."""
    settings = SamplingSettings(max_new_tokens=6, temperature=temperature, top_k=3, batch_size=2)
    pad = tiny_tokenizer.pad_token_id
    torch.manual_seed(0)
    plain = sample_groups(tiny_model, prompts, 2, settings, STOPS, pad)
    torch.manual_seed(0)
    rows, logps = sample_groups(tiny_model, prompts, 2, settings, STOPS, pad, return_logps=True)
    assert rows == plain
    filtered_differs = False
    for i, (row, got) in enumerate(zip(rows, logps)):
        kept = _cut(row)
        assert len(got) == len(kept)
        ids = torch.tensor([prompts[i // 2] + kept])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0, len(prompts[i // 2]) - 1:-1].float()
        scale = temperature or 1.0
        expected = (logits / scale).log_softmax(-1).gather(-1, torch.tensor(kept)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=0)
        if temperature:
            top = filter_logits(logits, temperature, top_k=3).log_softmax(-1).gather(-1, torch.tensor(kept)[:, None])
            filtered_differs |= bool((top[:, 0] - expected).abs().max() > 1e-3)
        else:
            assert kept == logits.argmax(-1).tolist()[:len(kept)]
    assert filtered_differs or not temperature


def test_a_child_killed_without_a_word_is_an_error_not_a_hang(tiny_model, tiny_tokenizer, prompts):
    import os
    import signal

    with AsyncGenerator(TINY, tiny_model, dtype="float32", lora=None, settings=SETTINGS, group=2, stop_ids=STOPS,
                        pad_id=tiny_tokenizer.pad_token_id, seed=0) as gen:
        gen.submit("k", prompts, min_version=0)
        os.kill(gen._process.pid, signal.SIGKILL)
        with pytest.raises(AlignkitError, match=r"exited \(code -9\) before job 'k' was done"):
            gen.result("k", timeout=30)
