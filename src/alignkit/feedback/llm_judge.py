"""LLM judges behind the judge interface (`feedback.judges`): RLAIF soft labels from a model's own
probabilities of answering (A) or (B).

The judge is shown the conversation, a comparison question drawn from the constitution, and the two
responses as options (A) and (B); the answer is read, not generated: with log-probs ℓ_A and ℓ_B of the
next token being "A" or "B", P(first better) = exp ℓ_A / (exp ℓ_A + exp ℓ_B) = σ(ℓ_A − ℓ_B), a soft label.
The judges are order-sensitive, so `judge_pairs` also asks with the responses swapped and averages the two,
which cancels a constant preference for a position. The principle is drawn per pair from a hash of the
pair (not of its order), so both orders are asked the same question.

With `cot`, the judge first writes its reasoning (greedy), then answers; as in Bai et al. (2022), such
answers are overconfident, so the probability is clamped to [0.4, 0.6].

- `LocalLLMJudge`: a transformers model (embedded:NAME, a path, a hub id), batched.
- `LocalScoreJudge`: the same model scoring each reply alone with a yes/no question (log P(Yes) − log P(No));
  P(first better) = σ of the difference. No position to be biased towards.
- `OpenAIJudge`: any OpenAI-compatible /v1/completions endpoint that returns top log-probs (vLLM's or
  llama.cpp's server), over plain HTTP from the standard library.

The pieces the pointwise LLM rewards use too (next-token log-probs, the option tokens, the chat rendering,
posting JSON, reading top log-probs, `soft_preference`) live one layer down, in `rewards.llm`.
"""

from __future__ import annotations

import hashlib
import json

from alignkit.errors import AlignkitError
from alignkit.feedback.constitution import Constitution, load_constitution
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.rewards.llm import (
    api_base,
    chat_text,
    conversation_text,
    next_token_logps,
    option_token_id,
    post_json,
    request_text,
    soft_preference,
    top_logprob,
)
from alignkit.rollout.generate import SamplingSettings
from alignkit.rollout.sampler import sample_groups

COT_CLAMP = (0.4, 0.6)
OPTIONS = ("A", "B")


def comparison_text(prompt, first: str, second: str, question: str) -> str:
    """The judge's task as one user message."""
    return (f"Consider this conversation between a person and an AI assistant.\n\n{conversation_text(prompt)}\n\n"
            f"{question}\n\nOptions:\n(A) {first}\n\n(B) {second}\n\n"
            "Answer with the letter of the better reply.")


ANSWER_PREFIX = "The better reply is ("


class _PrincipledJudge:
    """Shared by the LLM judges: principle drawing and the clamp for chain of thought."""

    order_sensitive = True
    tie_band = 0.0

    def __init__(self, constitution: Constitution | str = "default", seed: int = 0, cot: bool = False):
        self.constitution = load_constitution(constitution) if isinstance(constitution, str) else constitution
        if not self.constitution.comparisons:
            raise AlignkitError(f"constitution {self.constitution.name}: no comparisons to judge with")
        self.seed, self.cot = seed, cot

    def principle(self, prompt, first: str, second: str):
        """The same comparison question for a pair in either order (hash of the unordered pair)."""
        key = json.dumps([conversation_text(prompt), sorted([first, second]), self.seed], ensure_ascii=False)
        index = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(self.constitution.comparisons)
        return self.constitution.comparisons[index]

    def finish(self, p: float) -> float:
        return min(max(p, COT_CLAMP[0]), COT_CLAMP[1]) if self.cot else p


class LocalLLMJudge(_PrincipledJudge):
    """A local causal LM as judge: one forward pass per pair (two with chain of thought)."""

    def __init__(self, model: str, constitution: Constitution | str = "default", seed: int = 0, cot: bool = False,
                 device: str = "auto", batch_size: int = 8, max_length: int = 1024, cot_tokens: int = 96):
        super().__init__(constitution, seed, cot)
        self.name = f"llm:{model}" + (":cot" if cot else "")
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_policy(model, device=device).eval()
        self.batch_size, self.max_length, self.cot_tokens = batch_size, max_length, cot_tokens
        self.option_ids = [option_token_id(self.tokenizer, letter, "judge") for letter in OPTIONS]
        if self.option_ids[0] == self.option_ids[1]:
            raise AlignkitError(f"judge: {model}'s tokenizer starts A and B with the same token")
        self.audit: list[dict] = []  # every text the judge was shown, in order

    def render(self, task: str, reasoning: str | None = None) -> str:
        """The exact text the model reads: chat template, then the start of its answer."""
        text = chat_text(self.tokenizer, task)
        if reasoning is not None:
            text += f"Let's think step by step: {reasoning.strip()}\nSo, {ANSWER_PREFIX}"
        else:
            text += "Let's think step by step:" if self.cot else ANSWER_PREFIX
        return text

    def _next_token_logps(self, texts: list[str]) -> list[tuple[float, float]]:
        return next_token_logps(self.model, self.tokenizer, texts, self.option_ids, batch_size=self.batch_size,
                                max_length=self.max_length, desc=f"judging ({self.name})")

    def _reason(self, texts: list[str]) -> list[str]:
        greedy = SamplingSettings(max_new_tokens=self.cot_tokens, temperature=0.0, batch_size=self.batch_size)
        ids = [self.tokenizer(t, add_special_tokens=False).input_ids[-self.max_length:] for t in texts]
        rows = sample_groups(self.model, ids, 1, greedy, [self.tokenizer.eos_token_id], self.tokenizer.pad_token_id)
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer.decode(r[:r.index(eos)] if eos in r else r, skip_special_tokens=True) for r in rows]

    def compare(self, prompts, first, second, rows):
        tasks = [comparison_text(p, a, b, self.principle(p, a, b).question) for p, a, b in zip(prompts, first, second)]
        reasoning = self._reason([self.render(t) for t in tasks]) if self.cot else [None] * len(tasks)
        texts = [self.render(t, r) for t, r in zip(tasks, reasoning)]
        self.audit += [{"judge": self.name, "text": t} for t in texts]
        results = []
        for (la, lb), p, a, b, why in zip(self._next_token_logps(texts), prompts, first, second, reasoning):
            detail = {"principle": self.principle(p, a, b).name, "logp_A": round(la, 4), "logp_B": round(lb, 4)}
            if why is not None:
                detail["reasoning"] = why
            results.append((self.finish(soft_preference(la, lb)), detail))
        return results


def assessment_text(prompt, reply: str, question: str) -> str:
    """A pointwise judge's task: one reply, one yes/no question. A one-turn conversation is shown as its
    question alone (small models judge the plain form better: 62% against 46% agreement with the rubric
    on SmolLM2, docs/cai.md)."""
    return (f"Here is a question and a reply.\n\nQuestion: {request_text(prompt)}\n\nReply: {reply}\n\n"
            f"{question} Answer Yes or No.")


class LocalScoreJudge(LocalLLMJudge):
    """A local LM that scores each reply alone: s = log P(Yes) − log P(No) for a yes/no question drawn from
    the constitution's assessments (the same question for both replies of a pair), and
    P(first better) = σ(s_first − s_second). Nothing depends on the order the replies come in, so there is
    no position bias to average away; small models (SmolLM2-135M) give a clearer signal this way than when
    they choose between (A) and (B) (docs/cai.md)."""

    order_sensitive = False

    def __init__(self, model: str, constitution: Constitution | str = "default", **kwargs):
        super().__init__(model, constitution, **kwargs)
        if not self.constitution.assessments:
            raise AlignkitError(f"constitution {self.constitution.name}: no assessments (yes/no questions) to "
                                "score replies with")
        self.name = f"llm-score:{model}"
        self.option_ids = [option_token_id(self.tokenizer, word, "judge") for word in ("Yes", "No")]
        if self.option_ids[0] == self.option_ids[1]:
            raise AlignkitError(f"judge: {model}'s tokenizer starts Yes and No with the same token")

    def question(self, prompt, first: str, second: str):
        key = json.dumps([conversation_text(prompt), sorted([first, second]), self.seed], ensure_ascii=False)
        index = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(self.constitution.assessments)
        return self.constitution.assessments[index]

    def compare(self, prompts, first, second, rows):
        questions = [self.question(p, a, b) for p, a, b in zip(prompts, first, second)]
        texts = {}
        for p, a, b, q in zip(prompts, first, second, questions):
            for reply in (a, b):
                texts.setdefault((json.dumps(p, ensure_ascii=False), reply, q.name),
                                 chat_text(self.tokenizer, assessment_text(p, reply, q.question)))
        keys = list(texts)
        self.audit += [{"judge": self.name, "text": texts[k]} for k in keys]
        scores = {k: la - lb for k, (la, lb) in zip(keys, self._next_token_logps([texts[k] for k in keys]))}
        results = []
        for p, a, b, q in zip(prompts, first, second, questions):
            key = json.dumps(p, ensure_ascii=False)
            s_a, s_b = scores[(key, a, q.name)], scores[(key, b, q.name)]
            results.append((soft_preference(s_a, s_b), {"assessment": q.name, "score_first": round(s_a, 4),
                                                        "score_second": round(s_b, 4)}))
        return results


class OpenAIJudge(_PrincipledJudge):
    """An OpenAI-compatible completions endpoint as judge (vLLM server, llama.cpp server, ...)."""

    def __init__(self, url: str, model: str | None = None, constitution: Constitution | str = "default",
                 seed: int = 0, api_key: str | None = None, timeout: float = 120.0):
        super().__init__(constitution, seed, cot=False)
        self.url = api_base(url)
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.name = f"openai:{url}" + (f"#{model}" if model else "")
        self.audit: list[dict] = []

    def _post(self, payload: dict) -> dict:
        return post_json(self.url + "/completions", payload, where=f"judge {self.url}", api_key=self.api_key,
                         timeout=self.timeout)

    def compare(self, prompts, first, second, rows):
        texts = [comparison_text(p, a, b, self.principle(p, a, b).question) + "\n" + ANSWER_PREFIX
                 for p, a, b in zip(prompts, first, second)]
        self.audit += [{"judge": self.name, "text": t} for t in texts]
        payload = {"prompt": texts, "max_tokens": 1, "temperature": 0, "logprobs": 20}
        if self.model:
            payload["model"] = self.model
        choices = sorted(self._post(payload).get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(texts):
            raise AlignkitError(f"judge {self.url}: {len(choices)} answers for {len(texts)} prompts")
        results = []
        for choice, p, a, b in zip(choices, prompts, first, second):
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [{}])[0] or {}
            la, lb = (top_logprob(top, letter) for letter in OPTIONS)
            detail = {"principle": self.principle(p, a, b).name, "logp_A": la, "logp_B": lb}
            results.append((soft_preference(la, lb), detail))
        return results
