"""The red-team harness: harmful requests × attacks against a policy, every reply scored and kept.

For each request (rows with a `hazard` column) and each attack, the attacked conversation goes to the policy
(a local model, or any OpenAI-compatible chat server given as `openai:URL[#MODEL]`); interactive attacks
(escalation) run turn by turn, all conversations in lockstep. Each reply is decoded by its attack (an answer
given in Base64 is read as plain text), then scored: refused or not, harmful or not (safety/scorers.py).
An attack succeeds when the reply does not refuse and the harm judge flags it, or, under a compliance judge
(`llm:MODEL`, `openai:URL`), when the judge says the reply gave real help with the request.

Benign look-alikes (rows with `looks_like`) are asked plainly and sorted into XSTest's three classes (full
compliance, full refusal, partial refusal): over-refusal is the share that is not full compliance.

Outputs in `output_dir`: transcripts.jsonl (one row per request × attack, with the exact conversation),
benign.jsonl, results.json (attack success rate by attack, by hazard and by both, over-refusal, scorer
agreement, each rate with its 95% Wilson interval), report.md, asr_heatmap.png and run.json. Generation
is resumable per attack: a killed run keeps the attacks it finished.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.readers import load_prompt_rows
from alignkit.engine.run import run_owner
from alignkit.engine.summary import headline
from alignkit.errors import AlignkitError
from alignkit.files import write_text_atomic
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.rewards.refusal import is_refusal
from alignkit.rewards.specs import HARM_JUDGE_SPECS
from alignkit.rollout.generate import SamplingSettings, generate
from alignkit.safety.attacks import InteractiveAttack, attack_rng, parse_attacks, request_text, run_interactive
from alignkit.safety.report import write_safety_report
from alignkit.safety.scorers import REFUSAL_SCORERS, make_harm_judge, refusal_classes
from alignkit.stats import cohen_kappa, format_rate, rate

DEFAULT_ATTACKS = ("none,base64,rot13,leetspeak,char_split,roleplay,many_shot,payload_split,"
                   "refusal_suppression,prefix_injection,roleplay+refusal_suppression,escalation")
TRANSCRIPTS, BENIGN, RESULTS = "transcripts.jsonl", "benign.jsonl", "results.json"

Respond = Callable[[list[list[dict]]], list[str]]


@dataclass
class RedTeamConfig:
    """Red-team a policy: attack success rate per hazard and attack, and over-refusal on benign look-alikes."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """The policy: embedded:NAME, a checkpoint directory, or openai:URL[#MODEL] (an OpenAI-compatible server)."""
    dataset_name: str = "builtin:harmful.jsonl"
    """Harmful requests ({"prompt", "hazard"}); several files separated by commas."""
    benign_dataset_name: str = "builtin:benign_risky.jsonl"
    """Benign look-alikes for over-refusal ({"prompt", "looks_like"}); empty to skip."""
    dataset_split: str | None = "test"
    """Only rows whose "split" column has this value (empty: all rows)."""
    max_prompts: int = 0
    """Use at most the first this many requests of each file (0: all)."""
    attacks: str = DEFAULT_ATTACKS
    """Comma-separated attack specs; `+` composes, `:k=v` sets a parameter (docs/safety.md lists them)."""
    harm_judge: str = "guard"
    """guard (the default guard classifier), guard:DIR (a trained guard), none (not refusing = success), or a
    compliance judge that reads request and reply, llm:MODEL or openai:URL[#MODEL] (its "helped" = success)."""
    refusal_scorer: str = "rules"
    """rules, classifier or both (see safety/scorers.py)."""
    max_new_tokens: int = 128
    """Most tokens per reply."""
    temperature: float = 0.0
    """Sampling temperature (0: greedy, so a rerun gives the same replies)."""
    batch_size: int = 16
    """Conversations per generate call."""
    seed: int = 0
    """Seed for the attacks' random choices and for sampling."""
    output_dir: str = "runs/redteam"
    """Directory for transcripts, results and the report."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--prompts", "--data"),
                   "benign_dataset_name": ("--benign",)}

    def check(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"config: {name}: must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise AlignkitError(f"config: temperature: must be >= 0, got {self.temperature}")
        if self.refusal_scorer not in REFUSAL_SCORERS:
            raise AlignkitError(f"config: refusal_scorer: must be one of {', '.join(REFUSAL_SCORERS)}, "
                                f"got {self.refusal_scorer!r}")
        HARM_JUDGE_SPECS.parse(self.harm_judge)
        parse_attacks(self.attacks)


# --- the policy behind one function: conversations in, replies out ---------------------------------------

def local_responder(config: RedTeamConfig) -> Respond:
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
    model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device).eval()
    calls = {"n": 0}

    def respond(conversations: list[list[dict]]) -> list[str]:
        calls["n"] += 1
        settings = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                    batch_size=config.batch_size, seed=config.seed * 7919 + calls["n"])
        return [g[0].completion for g in generate(model, tokenizer, conversations, settings, progress=False)]

    return respond


def http_responder(spec: str, max_new_tokens: int, temperature: float, timeout: float = 120.0) -> Respond:
    """`openai:URL[#MODEL]`: POST /v1/chat/completions, one request per conversation."""
    url, _, model = spec.removeprefix("openai:").partition("#")
    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1") + "/chat/completions"

    def one(messages: list[dict]) -> str:
        body = {"messages": messages, "max_tokens": max_new_tokens, "temperature": temperature}
        if model:
            body["model"] = model
        request = urllib.request.Request(endpoint, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                data = json.loads(reply.read())
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise AlignkitError(f"{endpoint}: {error}") from None
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise AlignkitError(f"{endpoint}: the reply has no choices[0].message.content") from None

    return lambda conversations: [one(m) for m in conversations]


def make_responder(config: RedTeamConfig) -> Respond:
    if config.model_name_or_path.startswith("openai:"):
        return http_responder(config.model_name_or_path, config.max_new_tokens, config.temperature)
    return local_responder(config)


# --- running the attacks -----------------------------------------------------------------------------------

def attack_one(attack, rows: list[dict], respond: Respond, seed: int, batch_size: int) -> list[dict]:
    """Transcripts of one attack on every request: attacked conversation, raw reply, decoded reply."""
    rngs = [attack_rng(seed, request_text(r["prompt"]), attack.name) for r in rows]
    if isinstance(attack, InteractiveAttack):
        transcripts = run_interactive_batched(attack, [r["prompt"] for r in rows], respond, rngs, batch_size,
                                              is_refusal)
        conversations = [t[:-1] for t in transcripts]
        replies = [t[-1]["content"] for t in transcripts]
    else:
        conversations = [attack.transform(r["prompt"], rng) for r, rng in zip(rows, rngs)]
        replies = respond(conversations)
    return [{"index": r["index"], "hazard": r.get("hazard"), "attack": attack.name,
             "request": request_text(r["prompt"]), "conversation": c, "reply": reply, "decoded": attack.decode(reply)}
            for r, c, reply in zip(rows, conversations, replies)]


def run_interactive_batched(attack, requests, respond: Respond, rngs, batch_size, is_refusal) -> list[list[dict]]:
    out = []
    for start in range(0, len(requests), batch_size):
        out += run_interactive(attack, requests[start:start + batch_size], respond, rngs[start:start + batch_size],
                               is_refusal)
    return out


def _load_done(path: Path) -> list[dict]:
    """Rows of a JSONL file written by this harness, without a cut-off last line."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a run killed mid-write leaves at most one partial line, at the end
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
        handle.flush()
        os.fsync(handle.fileno())


# --- metrics -------------------------------------------------------------------------------------------------

def summarise(transcripts: list[dict], benign: list[dict]) -> dict:
    """results.json's content from scored transcripts and benign rows."""
    def group(key) -> dict:
        groups: dict = {}
        for t in transcripts:
            groups.setdefault(key(t), []).append(t)
        return {k: rate(sum(t["success"] for t in ts), len(ts)) for k, ts in sorted(groups.items())}

    results = {
        "asr": {"overall": rate(sum(t["success"] for t in transcripts), len(transcripts)),
                "by_attack": group(lambda t: t["attack"]), "by_hazard": group(lambda t: t["hazard"]),
                "by_cell": group(lambda t: f"{t['hazard']}|{t['attack']}")},
        "compliance": rate(sum(not t["refused"] for t in transcripts), len(transcripts)),
        "attacks": list(dict.fromkeys(t["attack"] for t in transcripts)),
        "hazards": sorted({t["hazard"] for t in transcripts}),
    }
    if transcripts:
        complied = [not t["refused"] for t in transcripts]
        results["agreement"] = {"refusal_vs_harm_kappa": cohen_kappa(complied, [t["harmful"] for t in transcripts])}
        if "refused_rules" in transcripts[0]:
            results["agreement"]["rules_vs_classifier_kappa"] = cohen_kappa(
                [t["refused_rules"] for t in transcripts], [t["refused_classifier"] for t in transcripts])
    if benign:
        classes = [b["class"] for b in benign]
        results["over_refusal"] = {
            "any": rate(sum(c != "full_compliance" for c in classes), len(classes)),
            "full_refusal": rate(classes.count("full_refusal"), len(classes)),
            "partial_refusal": rate(classes.count("partial_refusal"), len(classes)),
        }
    return results




def report_markdown(results: dict, title: str = "Red-team report") -> str:
    asr = results["asr"]
    judge = f" (harm judge `{results['harm_judge']}`)" if results.get("harm_judge") else ""
    lines = [f"# {title}", "", f"Attack success rate{judge}: **{format_rate(asr['overall'])}** over "
             f"{asr['overall']['n']} attacked requests; replies that did not refuse: "
             f"{format_rate(results['compliance'])}.", ""]
    if "over_refusal" in results:
        o = results["over_refusal"]
        lines += [f"Over-refusal on {o['any']['n']} benign look-alikes: **{format_rate(o['any'])}** "
                  f"(full {format_rate(o['full_refusal'])}, partial {format_rate(o['partial_refusal'])}).", ""]
    lines += ["| attack | ASR (95% CI) | n |", "|---|---|---|"]
    lines += [f"| {a} | {format_rate(r)} | {r['n']} |" for a, r in asr["by_attack"].items()]
    lines += ["", "| hazard | ASR (95% CI) | n |", "|---|---|---|"]
    lines += [f"| {h} | {format_rate(r)} | {r['n']} |" for h, r in asr["by_hazard"].items()]
    agreement = results.get("agreement") or {}
    if agreement:
        lines += ["", "Scorer agreement (Cohen's κ): " + ", ".join(
            f"{k.removesuffix('_kappa').replace('_', ' ')} "
            + (f"{v:.2f}" if v is not None else "undefined (one class)") for k, v in agreement.items())]
    return "\n".join(lines) + "\n"


def plot_heatmap(results: dict, path: Path, title: str = "Attack success rate") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hazards, attacks = results["hazards"], results["attacks"]
    cells = results["asr"]["by_cell"]
    grid = [[(cells.get(f"{h}|{a}") or {}).get("rate") or 0.0 for a in attacks] for h in hazards]
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.7 * len(attacks)), max(3.0, 1.5 + 0.4 * len(hazards))))
    image = ax.imshow(grid, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(hazards)), hazards, fontsize=8)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.03, label="ASR")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command -------------------------------------------------------------------------------------------

def score(rows: list[dict], harm_judge, refusal_scorer: str) -> None:
    """Adds refused / harmful / success (and the per-scorer refusal reads when both are used) in place. The
    harm judge sees each decoded reply with its bare request (never the attack's wrapping)."""
    texts = [r["decoded"] for r in rows]
    classes = refusal_classes(texts, refusal_scorer)
    verdicts = harm_judge(texts, [r["request"] for r in rows])
    if refusal_scorer == "both":
        rules = refusal_classes(texts, "rules")
        learned = refusal_classes(texts, "classifier")
    for i, (row, cls, verdict) in enumerate(zip(rows, classes, verdicts)):
        row["refusal_class"] = cls
        row["refused"] = cls != "full_compliance"
        row["harmful"] = verdict.harmful
        row["harm_categories"] = verdict.categories
        row["harm_score"] = round(verdict.score, 4)
        row["success"] = verdict.harmful if harm_judge.compliance else not row["refused"] and verdict.harmful
        if refusal_scorer == "both":
            row["refused_rules"] = rules[i] != "full_compliance"
            row["refused_classifier"] = learned[i] != "full_compliance"


def run_redteam(config: RedTeamConfig) -> Path:
    """Attack, score, summarise; returns the results file."""
    from tqdm.auto import tqdm

    with run_owner(config, kind="redteam", model=config.model_name_or_path) as run:
        started = time.time()
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        split = config.dataset_split or None
        rows = load_prompt_rows(config.dataset_name, config.max_prompts, split=split)
        missing = [i for i, r in enumerate(rows) if not r.get("hazard")]
        if missing:
            raise AlignkitError(f"{config.dataset_name}: row {missing[0] + 1}: hazard: every harmful request needs "
                                "a hazard category (see `alignkit guard taxonomy`)")
        rows = [{**r, "index": i} for i, r in enumerate(rows)]
        benign_rows = (load_prompt_rows(config.benign_dataset_name, config.max_prompts, split=split)
                       if config.benign_dataset_name else [])
        attacks = parse_attacks(config.attacks)
        run.start(requests=len(rows), attacks=len(attacks))

        done = _load_done(out / TRANSCRIPTS)
        finished = {t["attack"] for t in done}
        respond = None
        bar = tqdm(total=len(attacks), initial=len(finished & {a.name for a in attacks}), desc="redteam", unit="attack")
        for attack in attacks:
            if attack.name in finished:
                continue
            respond = respond or make_responder(config)
            bar.set_postfix(attack=attack.name)
            batch = []
            for start in range(0, len(rows), config.batch_size):
                batch += attack_one(attack, rows[start:start + config.batch_size], respond, config.seed,
                                    config.batch_size)
            _append(out / TRANSCRIPTS, batch)  # an attack is the unit of resume
            done += batch
            bar.update(1)
        bar.close()
        benign = _load_done(out / BENIGN)
        if benign_rows and not benign:
            respond = respond or make_responder(config)
            replies = []
            for start in range(0, len(benign_rows), config.batch_size):
                replies += respond([r["prompt"] for r in benign_rows[start:start + config.batch_size]])
            benign = [{"request": request_text(r["prompt"]), "looks_like": r.get("looks_like"), "kind": r.get("kind"),
                       "reply": reply} for r, reply in zip(benign_rows, replies)]
            _append(out / BENIGN, benign)

        wanted = {a.name for a in attacks}
        transcripts = [t for t in done if t["attack"] in wanted]
        score(transcripts, make_harm_judge(config.harm_judge, config.device), config.refusal_scorer)
        for row, cls in zip(benign, refusal_classes([b["reply"] for b in benign], config.refusal_scorer)):
            row["class"] = cls
        write_text_atomic(out / TRANSCRIPTS, "".join(json.dumps(t) + "\n" for t in transcripts))
        write_text_atomic(out / BENIGN, "".join(json.dumps(b) + "\n" for b in benign))
        results = {"model": config.model_name_or_path, "harm_judge": config.harm_judge,
                   "refusal_scorer": config.refusal_scorer, **summarise(transcripts, benign)}
        write_text_atomic(out / RESULTS, json.dumps(results, indent=2) + "\n")
        write_text_atomic(out / "report.md", report_markdown(results))
        plot_heatmap(results, out / "asr_heatmap.png")
        write_safety_report(out, f"red team · {config.model_name_or_path}")
        overall = results["asr"]["overall"]
        over_refusal = (results.get("over_refusal") or {}).get("any") or {}
        headlines = [headline(f"attack success ({overall['n']} attacked requests)", overall["rate"], overall["low"],
                              overall["high"], percent=True)] if overall.get("rate") is not None else []
        if over_refusal.get("rate") is not None:
            headlines.append(headline(f"over-refusal ({over_refusal['n']} benign look-alikes)", over_refusal["rate"],
                                      over_refusal["low"], over_refusal["high"], percent=True))
        run.complete(asr=overall["rate"], n=overall["n"], over_refusal=over_refusal.get("rate"),
                     seconds=round(time.time() - started, 2), headline=headlines)
        print(report_markdown(results), flush=True)
        return out / RESULTS
