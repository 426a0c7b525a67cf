"""Constitutional AI (Bai et al. 2022): phase 1, critique → revision → SFT data; phase 2, RLAIF labels.

Phase 1 (`alignkit cai revise`): the model answers each prompt; then, for `rounds` rounds, a critique
principle is drawn, the model is asked to critique its last answer under it and then to revise the answer
to fix what the critique found. Critique and revision requests come after a few-shot example exchange from
the constitution (so the critic's and the reviser's turns stay apart), and every round is kept. Outputs:

- rounds.jsonl: per prompt, the first answer and each round's principle, critique and revision (a
  revision that is empty, repeats the critique, or loops is rejected: the round keeps the previous answer
  and records accepted: false);
- sft.jsonl: prompt → final revision (SFT data); preferences.jsonl: the final revision chosen over the
  first answer (when they differ);
- audit.jsonl: the exact text of every model call (chat template applied) and what came back.

Prompts are processed a batch at a time; each finished batch is appended to rounds.jsonl and audit.jsonl
before the next starts, so a killed run resumes without redoing finished prompts. Principles are drawn
from a seed derived from (seed, prompt index, round), so a resumed run draws the same ones.

Phase 2 (`alignkit cai label`): an LLM judge (`feedback.llm_judge`) compares every pair of responses in a
pairs file under drawn comparison principles, both orders averaged; each preference row keeps the soft
label as p_chosen and as margin = log(p / (1 − p)) (the log-odds; the reward model's margin term reads it).
The rubric annotator judges the same pairs, and Cohen's κ between the two is reported.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.formats import preference_row
from alignkit.data.io import write_jsonl
from alignkit.data.readers import load_prompt_rows, read_pairs
from alignkit.data.tokenize import render_prompt
from alignkit.engine.run import run_owner
from alignkit.errors import AlignkitError
from alignkit.feedback.constitution import load_constitution
from alignkit.feedback.judge_agreement import pair_label
from alignkit.feedback.judges import RubricJudge, make_judge, preference_rows
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.rollout.generate import SamplingSettings, generate
from alignkit.stats import cohen_kappa

ROUNDS_FILE, AUDIT_FILE = "rounds.jsonl", "audit.jsonl"


@dataclass
class CAIReviseConfig:
    """Constitutional AI phase 1: answers critiqued and revised under drawn principles."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """The model that answers, critiques and revises."""
    dataset_name: str = "builtin:harmful.jsonl,builtin:helpful.jsonl"
    """Prompt rows ({"prompt": ...}); several files separated by commas."""
    dataset_split: str | None = None
    """Only the rows whose "split" column has this value."""
    max_prompts: int = 0
    """Use at most the first this many prompts of each file (0: all)."""
    constitution: str = "default"
    """A packaged constitution's name or a YAML file (see `alignkit cai principles`)."""
    rounds: int = 1
    """Critique → revision rounds per prompt."""
    few_shot: bool = True
    """Put the constitution's example exchange before each critique and revision request."""
    max_new_tokens: int = 128
    """Most tokens per answer, critique or revision."""
    temperature: float = 0.0
    """Sampling temperature (0: greedy)."""
    batch_size: int = 16
    """Prompts per batch (and per resume point)."""
    seed: int = 0
    """Seed for principle draws and sampling."""
    output_dir: str = "runs/cai_revise"
    """Directory for rounds.jsonl, sft.jsonl, preferences.jsonl, audit.jsonl and run.json."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--prompts", "--data")}

    def check(self) -> None:
        for name in ("rounds", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"config: {name}: must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise AlignkitError(f"config: temperature: must be >= 0, got {self.temperature}")
        if not load_constitution(self.constitution).critiques:
            raise AlignkitError(f"config: constitution: {self.constitution} has no critique principles")


def _messages(prompt) -> list[dict]:
    return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _request(kind: str, text: str) -> str:
    return f"{kind} request: {text}"


def few_shot_turns(constitution) -> list[dict]:
    """The constitution's first example as turns: question, answer, critique request, critique, revision
    request, revision."""
    if not constitution.examples:
        return []
    ex = constitution.examples[0]
    principle = constitution.critique(ex["principle"])
    return [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex["response"]},
            {"role": "user", "content": _request("Critique", principle.critique)},
            {"role": "assistant", "content": ex["critique"]},
            {"role": "user", "content": _request("Revision", principle.revision + " Write only the new reply.")},
            {"role": "assistant", "content": ex["revision"]}]


def critique_call(prefix, prompt, answer: str, principle) -> list[dict]:
    return prefix + _messages(prompt) + [{"role": "assistant", "content": answer},
                                         {"role": "user", "content": _request("Critique", principle.critique)}]


def revision_call(prefix, prompt, answer: str, principle, critique: str) -> list[dict]:
    return critique_call(prefix, prompt, answer, principle) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": _request("Revision", principle.revision + " Write only the new reply.")}]


def usable_revision(revision: str, critique: str) -> bool:
    """Whether a revision can replace the answer: not empty, not the critique parroted back (its first ten
    words), not stuck in a loop (under half of its word trigrams distinct). Small models often fail these;
    a failed round keeps the previous answer and is marked accepted: false."""
    words = revision.split()
    if not words:
        return False
    if critique.split()[:10] == words[:10]:
        return False
    trigrams = list(zip(words, words[1:], words[2:]))
    return len(trigrams) < 12 or len(set(trigrams)) / len(trigrams) >= 0.5


def _done_rows(path: Path) -> list[dict]:
    """Rows already written; a line cut off by a kill is dropped (and the file truncated before it)."""
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_bytes += len(raw)
    with open(path, "r+b") as f:
        f.truncate(good_bytes)
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_cai_revise(config: CAIReviseConfig) -> Path:
    """Phase 1; returns the output directory."""
    from tqdm.auto import tqdm

    with run_owner(config, kind="cai_revise", model=config.model_name_or_path) as run:
        started = time.time()
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        constitution = load_constitution(config.constitution)
        rows = load_prompt_rows(config.dataset_name, config.max_prompts, split=config.dataset_split)
        done = _done_rows(out / ROUNDS_FILE)
        _done_rows(out / AUDIT_FILE)  # drop a cut-off last line
        finished = {r["index"] for r in done}
        todo = [i for i in range(len(rows)) if i not in finished]
        run.start(prompts=len(rows), done=len(finished))
        tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device)
        prefix = few_shot_turns(constitution) if config.few_shot else []
        bar = tqdm(total=len(rows), initial=len(finished), desc="cai revise", unit="prompt")

        def call(inputs: list, kind: str, batch_no: int, step: int, audit: list, indices: list[int]) -> list[str]:
            settings = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                        batch_size=config.batch_size, seed=config.seed * 100003 + batch_no * 101 + step)
            answers = [gens[0].completion for gens in generate(model, tokenizer, inputs, settings, progress=False)]
            audit += [{"index": i, "call": kind, "text": render_prompt(tokenizer, x), "output": a}
                      for i, x, a in zip(indices, inputs, answers)]
            return answers

        try:
            for batch_no, start in enumerate(range(0, len(todo), config.batch_size)):
                indices = todo[start:start + config.batch_size]
                prompts = [rows[i]["prompt"] for i in indices]
                audit: list[dict] = []
                answers = call(prompts, "response", indices[0], 0, audit, indices)
                records = [{"index": i, **rows[i], "response": a, "rounds": []} for i, a in zip(indices, answers)]
                for round_no in range(config.rounds):
                    principles = [random.Random(f"{config.seed}:{i}:{round_no}").choice(constitution.critiques)
                                  for i in indices]
                    current = [r["rounds"][-1]["revision"] if r["rounds"] else r["response"] for r in records]
                    critiques = call([critique_call(prefix, p, a, c) for p, a, c in zip(prompts, current, principles)],
                                     f"critique {round_no + 1}", indices[0], 2 * round_no + 1, audit, indices)
                    revisions = call([revision_call(prefix, p, a, c, k) for p, a, c, k in
                                      zip(prompts, current, principles, critiques)],
                                     f"revision {round_no + 1}", indices[0], 2 * round_no + 2, audit, indices)
                    for record, principle, critique, revision, before in zip(records, principles, critiques, revisions,
                                                                             current):
                        accepted = usable_revision(revision, critique)
                        record["rounds"].append({"principle": principle.name, "critique": critique,
                                                 "revision": revision.strip() if accepted else before,
                                                 "accepted": accepted, **({} if accepted else {"rejected": revision})})
                _append(out / AUDIT_FILE, audit)
                _append(out / ROUNDS_FILE, records)  # last: a prompt counts as done only with its audit written
                done += records
                bar.update(len(indices))
        finally:
            bar.close()

        done.sort(key=lambda r: r["index"])
        sft, preferences = [], []
        for record in done:
            final = record["rounds"][-1]["revision"] if record["rounds"] else record["response"]
            extra = {k: v for k, v in record.items() if k not in ("index", "prompt", "response", "rounds")}
            prompt = record["prompt"]
            completion = [{"role": "assistant", "content": final}] if isinstance(prompt, list) else final
            sft.append({"prompt": prompt, "completion": completion, **extra})
            if final.strip() and record["response"].strip() and final.strip() != record["response"].strip():
                preferences.append(preference_row(prompt, final, record["response"], None, "cai_revision", extra))
        write_jsonl(out / "sft.jsonl", sft)
        write_jsonl(out / "preferences.jsonl", preferences)
        changed = sum(1 for r in done if r["rounds"] and r["rounds"][-1]["revision"].strip() != r["response"].strip())
        rejected = sum(not rd.get("accepted", True) for r in done for rd in r["rounds"])
        run.complete(prompts=len(done), rounds=config.rounds, revised=changed,
                     rejected_revisions=rejected,
                     preferences=len(preferences), constitution=constitution.name,
                     seconds=round(time.time() - started, 1))
        print(f"cai revise: {len(done)} prompts, {config.rounds} round(s), {changed} answers changed by revision, "
              f"{rejected} revisions rejected (empty, parroting the critique, or looping); "
              f"wrote {out / 'sft.jsonl'}, {out / 'preferences.jsonl'} and {out / AUDIT_FILE}", flush=True)
        return out


@dataclass
class CAILabelConfig:
    """Constitutional AI phase 2 (RLAIF): an LLM judge labels response pairs with soft preferences."""

    dataset_name: str = ""
    """Pairs to judge: rows with prompt and responses (alignkit generate-pairs output)."""
    judge: str = "llm:embedded:smollm2-135m-instruct"
    """llm:MODEL (A/B), llm-cot:MODEL (chain of thought, clamped to [0.4, 0.6]), llm-score:MODEL (each reply
    scored alone by P(Yes) vs P(No)) or openai:URL[#MODEL]."""
    constitution: str = "default"
    """A packaged constitution's name or a YAML file: its comparison principles are the questions."""
    seed: int = 0
    """Seed for drawing a principle per pair."""
    keep_ties: bool = False
    """Keep pairs the judge finds equal (P = 0.5) as rows marked tie: true."""
    compare_rules: bool = True
    """Also judge the pairs with the rubric annotator and report Cohen's κ between the two."""
    output_dir: str = "runs/cai_label"
    """Directory for preferences.jsonl, audit.jsonl and run.json."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""

    CLI_ALIASES = {"dataset_name": ("--pairs", "--data")}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the pairs to judge (--pairs FILE)")
        if not self.judge.startswith(("llm:", "llm-cot:", "llm-score:", "openai:")):
            raise AlignkitError(f"config: judge: an LLM judge (llm:MODEL, llm-cot:MODEL, llm-score:MODEL, "
                                f"openai:URL), got {self.judge!r}")


def run_cai_label(config: CAILabelConfig) -> Path:
    """Phase 2; returns preferences.jsonl."""
    with run_owner(config, kind="cai_label") as run:
        run.start()
        started = time.time()
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = read_pairs(config.dataset_name)
        judge = make_judge(config.judge, device=config.device, constitution=config.constitution, seed=config.seed)
        preferences, stats = preference_rows(rows, judge=judge, keep_ties=True)
        for row in preferences:
            p = min(max(row["p_chosen"], 1e-6), 1 - 1e-6)
            row["margin"] = round(math.log(p / (1 - p)), 4)
        summary = {**stats, "judge": judge.name, "constitution": config.constitution}
        if config.compare_rules:
            rubric, _ = preference_rows(rows, judge=RubricJudge(), keep_ties=True)
            ours = [pair_label(r["chosen"], r["rejected"], bool(r.get("tie"))) for r in preferences]
            theirs = [pair_label(r["chosen"], r["rejected"], bool(r.get("tie"))) for r in rubric]
            kappa = cohen_kappa(ours, theirs)
            decided = [(a, b) for a, b in zip(ours, theirs) if b != "tie"]  # LLM judges almost never tie
            summary.update(kappa_with_rules=None if kappa is None else round(kappa, 4),
                           agreement_with_rules=round(sum(a == b for a, b in zip(ours, theirs)) / max(len(ours), 1), 4),
                           rules_decided=len(decided),
                           agreement_where_rules_decide=round(sum(a == b for a, b in decided)
                                                              / max(len(decided), 1), 4))
        kept = [r for r in preferences if config.keep_ties or not r.get("tie")]
        write_jsonl(out / "preferences.jsonl", kept)
        write_jsonl(out / AUDIT_FILE, getattr(judge, "audit", []))
        run.complete(**summary, seconds=round(time.time() - started, 1))
        agreement = (f"; agreement with the rubric annotator {summary['agreement_with_rules']:.0%} (Cohen's κ "
                     f"{summary['kappa_with_rules']}), {summary['agreement_where_rules_decide']:.0%} on the "
                     f"{summary['rules_decided']} pairs the rubric does not tie" if config.compare_rules else "")
        print(f"cai label ({judge.name}): {stats['comparisons']} comparisons, {len(kept)} preferences{agreement}; "
              f"wrote {out / 'preferences.jsonl'}", flush=True)
        return out / "preferences.jsonl"
