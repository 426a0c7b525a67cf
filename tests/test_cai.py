"""Constitutional AI: constitutions as data, soft labels from set A/B log-probs (through a loopback stub of
an OpenAI-compatible server), both-order averaging against a constructed position bias, critique →
revision with its audit file and resume, RLAIF labelling with a local judge, and the CLI."""

from __future__ import annotations

import json
import math
import re

import pytest
from stubs import JSONServer

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.feedback.constitution import load_constitution
from alignkit.feedback.judges import judge_pairs
from alignkit.feedback.llm_judge import OpenAIJudge, soft_preference


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_soft_preference_normalises_the_two_probabilities():
    """P(A) = p_A / (p_A + p_B): 0.3 and 0.1 (the rest of the vocabulary holds 0.6) give 0.75."""
    assert soft_preference(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert soft_preference(-1000.0, 0.0) == pytest.approx(0.0) and soft_preference(0.0, -1000.0) == 1.0
    assert soft_preference(-math.inf, -math.inf) == 0.5


class StubServer:
    """Answers /v1/completions like vLLM's server: one choice per prompt with top_logprobs for the next
    token. The response containing GOOD deserves P = quality; the position shown as (A) gets `bias` extra
    log-odds (a judge that likes the first option)."""

    def __init__(self, quality: float = 0.8, bias: float = 0.0):
        self.quality, self.bias, self.prompts = quality, bias, []
        self.http = JSONServer(self.handle)
        self.url = self.http.url

    def handle(self, method: str, path: str, body: dict) -> tuple[int, str]:
        self.prompts += body["prompt"]
        choices = [self.choice(i, text) for i, text in enumerate(body["prompt"])]
        return 200, json.dumps({"object": "text_completion", "choices": choices})

    def choice(self, index: int, text: str) -> dict:
        a = re.search(r"\(A\) (.*?)\n\n\(B\)", text, re.S).group(1)
        b = re.search(r"\(B\) (.*?)\n\nAnswer", text, re.S).group(1)
        if "GOOD" in a and "GOOD" not in b:
            x = logit(self.quality)
        elif "GOOD" in b and "GOOD" not in a:
            x = -logit(self.quality)
        else:
            x = 0.0
        x += self.bias
        # two next-token log-probs with log-odds x, leaving half the mass to other tokens
        la, lb = math.log(0.5 / (1 + math.exp(-x))), math.log(0.5 / (1 + math.exp(x)))
        return {"index": index, "text": " A" if la > lb else " B",
                "logprobs": {"top_logprobs": [{" A": la, " B": lb, " the": math.log(0.3)}]}}

    def close(self):
        self.http.close()


@pytest.fixture()
def stub():
    servers = []

    def make(**kwargs):
        servers.append(StubServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_http_judge_reads_the_soft_label_from_set_log_probs(stub):
    server = stub(quality=0.8)
    judge = OpenAIJudge(server.url, model="stub")
    results = judge.compare(["q1", "q2"], ["a GOOD answer", "plain"], ["plain", "the GOOD one"], [{}, {}])
    assert [p for p, _ in results] == pytest.approx([0.8, 0.2])
    assert results[0][1]["logp_A"] == pytest.approx(math.log(0.4))
    assert all(t.rstrip().endswith("The better reply is (") for t in server.prompts)
    assert len(judge.audit) == 2 and judge.audit[0]["text"] == server.prompts[0]


def test_both_orders_cancel_a_position_bias(stub):
    """bias 1.5 log-odds towards (A): asked once, two equal responses get σ(1.5) ≈ 0.82 for the first;
    averaged over both orders, exactly 0.5. A better second response still wins after averaging."""
    server = stub(quality=0.8, bias=1.5)
    judge = OpenAIJudge(server.url)
    once = judge.compare(["q"], ["same quality"], ["also fine"], [{}])[0][0]
    assert once == pytest.approx(1 / (1 + math.exp(-1.5)))
    equal, better_second = judge_pairs(judge, ["q", "q2"], ["same quality", "plain"], ["also fine", "GOOD"])
    assert equal.prob_first == pytest.approx(0.5) and equal.winner is None
    assert better_second.prob_first < 0.5 and better_second.winner == 1
    # both orders were asked the same comparison question
    questions = [re.search(r"\n\n(Which[^\n]*)\n\nOptions", p).group(1) for p in server.prompts[-4:]]
    assert questions[0] == questions[2] and questions[1] == questions[3]


def test_http_judge_unreachable_is_one_line():
    judge = OpenAIJudge("http://127.0.0.1:9", timeout=2)
    with pytest.raises(AlignkitError, match="judge http://127.0.0.1:9/v1"):
        judge.compare(["q"], ["a"], ["b"], [{}])


def test_constitutions_load_and_bad_files_are_one_line(tmp_path):
    default = load_constitution("default")
    assert len(default.critiques) >= 6 and len(default.comparisons) >= 4 and default.examples
    assert all(c.critique and c.revision for c in default.critiques)
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\ncritiques:\n  - {name: x, critique: Find X., revision: Fix X.}\n")
    assert load_constitution(str(own)).critique("x").revision == "Fix X."
    own.write_text("critiques:\n  - {name: x, critique: Find X.}\n")
    with pytest.raises(AlignkitError, match=r"critiques\[0\]: needs name, critique and revision"):
        load_constitution(str(own))
    with pytest.raises(AlignkitError, match="packaged: default"):
        load_constitution("nope")


def test_revise_writes_rounds_sft_preferences_and_audit_and_resumes(tmp_path, monkeypatch, capsys):
    import alignkit.rollout.generate as generate_module

    out = tmp_path / "rev"
    argv = ["cai", "revise", "--model", "embedded:tiny", "--prompts", "builtin:harmful.jsonl", "--max_prompts", "6",
            "--batch_size", "2", "--rounds", "2", "--max_new_tokens", "6", "--output_dir", str(out),
            "--device", "cpu"]
    real, calls = generate_module.generate, {"n": 0}

    def dies_in_batch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # batch 1 makes 5 calls (answer + 2 × (critique, revision)); die inside batch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "generate", dies_in_batch_2)
    assert main(argv) == 130
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 2  # batch 1 kept
    monkeypatch.setattr(generate_module, "generate", real)
    assert main(argv) == 0
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rounds] == list(range(6))  # nothing redone, nothing missing
    assert all(len(r["rounds"]) == 2 and r["rounds"][0]["principle"] for r in rounds)
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert len(audit) == 6 * 5 and sum(a["call"] == "response" for a in audit) == 6
    critique = next(a for a in audit if a["call"] == "critique 1")
    assert "Critique request:" in critique["text"] and "<|im_start|>assistant" in critique["text"]
    assert "wasp" in critique["text"]  # the few-shot example comes first
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == 6  # conversational prompts: the completion is the assistant's turn
    assert all(s["completion"] == [{"role": "assistant", "content": r["rounds"][-1]["revision"]}]
               for s, r in zip(sft, rounds))
    assert main(["data", "validate", str(out / "sft.jsonl")]) == 0
    prefs = out / "preferences.jsonl"
    if prefs.read_text():
        assert main(["data", "validate", str(prefs), "--kind", "preference"]) == 0
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "complete" and status["prompts"] == 6


def test_label_with_a_local_judge_writes_soft_labels_and_agreement(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "responses": [
        f"Here is a clear answer to question {i}.", "I cannot help with that.", f"Answer {i}."]}) + "\n"
        for i in range(4)))
    out = tmp_path / "label"
    assert main(["cai", "label", "--pairs", str(pairs), "--judge", "llm:embedded:tiny", "--output_dir", str(out),
                 "--keep_ties", "true", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert 0.5 <= row["p_chosen"] < 1 and row["margin"] == pytest.approx(logit(row["p_chosen"]), abs=1e-3)
    status = json.loads((out / "run.json").read_text())
    assert status["judge"] == "llm:embedded:tiny" and "kappa_with_rules" in status
    audit = (out / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 24  # every pair, both orders


def test_principles_command_lists_the_constitution(capsys):
    assert main(["cai", "principles"]) == 0
    shown = capsys.readouterr().out
    assert "critique -> revision principles" in shown and "harm" in shown and "comparison principles" in shown


def test_judge_agreement_with_labelled_preferences(tmp_path, stub, capsys):
    """Six labelled pairs, as the annotation app exports them; the stub judge prefers responses saying
    GOOD. Labels: 4 pairs where the human chose the GOOD one (the judge agrees), 2 where the human chose the
    other (it disagrees): agreement 4/6."""
    from alignkit.feedback.judge_agreement import judge_agreement

    rows = [{"prompt": f"q{i}", "chosen": f"GOOD {i}" if i < 4 else f"meh {i}",
             "rejected": f"meh {i}" if i < 4 else f"GOOD {i}"} for i in range(6)]
    report = judge_agreement(OpenAIJudge(stub(quality=0.9).url), rows)
    assert report["pairs"] == 6 and report["agreement"] == pytest.approx(4 / 6, abs=1e-4)
    assert report["cohen_kappa"] is not None and report["cohen_kappa"] < 1
    data = tmp_path / "human.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["judge-agreement", "--judge", "rules", "--data", str(data)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["judge"] == "rules" and shown["pairs"] == 6


def test_unusable_revisions_are_rejected():
    from alignkit.feedback.cai import usable_revision

    critique = "The reply is rude to the reader and should apologise for the tone it takes here."
    assert usable_revision("Sorry for my tone. Here is a kinder answer: drink water and rest.", critique)
    assert not usable_revision("   ", critique)
    assert not usable_revision(critique + " Also more.", critique)  # the critique parroted back
    assert not usable_revision("the most accurate claim is " * 8, critique)  # a loop


def test_pointwise_judge_scores_each_reply_alone(tmp_path):
    """llm-score: σ(s_first − s_second) with s = log P(Yes) − log P(No); swapping the replies gives 1 − P,
    and each distinct reply is scored once per question."""
    from alignkit.feedback.judges import make_judge

    judge = make_judge("llm-score:embedded:tiny", device="cpu")
    assert not judge.order_sensitive
    (p, detail), (q, _) = judge.compare(["q", "q"], ["one reply", "two"], ["two", "one reply"], [{}, {}])
    assert p == pytest.approx(1 / (1 + math.exp(detail["score_second"] - detail["score_first"])), abs=1e-4)
    assert q == pytest.approx(1 - p, abs=1e-6)  # the same unordered pair: the same question, each reply once
    assert len(judge.audit) == 2 and "Answer Yes or No." in judge.audit[0]["text"]
