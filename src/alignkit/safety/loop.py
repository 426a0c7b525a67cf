"""The safety loop: attack → collect → train → re-attack, with attack success and over-refusal before and after.

1. `before/`: red-team the policy on the held-out split (attack success rate, over-refusal).
2. `collect/`: red-team it on the training split, with benign look-alikes and helpful prompts alongside.
   Every attacked request the policy did not refuse becomes safety SFT data: the attacked conversation →
   a helpful refusal that names the risk and offers safe help (the hazard's message in the taxonomy).
   Every benign prompt the policy answered in full keeps that answer as SFT data, so the model learns where
   the line is rather than to refuse everything. Preference pairs go alongside: refusal over the harmful
   reply for attacks, the policy's own answer over a refusal for benign prompts (for DPO).
3. `train/`: SFT (LoRA by default) on the mix, DPO on the pairs, or SFT then DPO from the SFT model
   (`sft+dpo`): SFT teaches the refusal, and DPO's answer-over-refusal pairs take it back from benign prompts.
4. `after/`: red-team the trained policy on the held-out split, exactly as in step 1.

Each step is a stage run by engine.stages.run_stages, as `alignkit pipeline` runs a recipe's stages: skipped
when its run.json says complete, resumed from a checkpoint, recorded failed with the reason when it raises,
and listed on the loop's index.html. `safety_loop.json` holds both measurements and their differences;
`before_after.png` plots them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.config import to_flat_dict
from alignkit.data.io import write_jsonl
from alignkit.data.readers import load_prompt_rows
from alignkit.engine.outputs import read_status
from alignkit.engine.run import run_owner
from alignkit.engine.stages import Stage, run_stages
from alignkit.errors import AlignkitError
from alignkit.files import write_text_atomic
from alignkit.methods.dpo import DPOConfig, train_dpo
from alignkit.methods.reward_model import RewardConfig, train_reward_model
from alignkit.methods.sft import SFTConfig, train_sft
from alignkit.rewards.model import RewardModel
from alignkit.safety.redteam import DEFAULT_ATTACKS, RESULTS, RedTeamConfig, run_redteam
from alignkit.safety.report import section, write_safety_report
from alignkit.safety.taxonomy import load_taxonomy
from alignkit.stats import format_rate, rate

METHODS = ("sft", "dpo", "sft+dpo")


@dataclass
class SafetyLoopConfig:
    """Attack → collect → train → re-attack."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """The policy to make safer (embedded:NAME or a checkpoint)."""
    dataset_name: str = "builtin:harmful.jsonl"
    """Harmful requests with a hazard column and train/test splits."""
    benign_dataset_name: str = "builtin:benign_risky.jsonl"
    """Benign look-alikes with train/test splits: over-refusal is measured on the test split."""
    train_benign_dataset_name: str = "builtin:benign_risky_train.jsonl"
    """More benign look-alikes answered while collecting (train split only), so training sees each kind of
    look-alike (homonyms, figures of speech, games, ...) many times rather than a few (empty: none)."""
    helpful_dataset_name: str = "builtin:helpful.jsonl"
    """Ordinary prompts whose answers are kept as SFT data, so helpfulness is kept (empty: none)."""
    bare_dataset_name: str = ""
    """More harmful training requests asked bare (no attack) while collecting, e.g.
    builtin:harmful_taxonomy.jsonl (empty: none). Each the policy answers becomes a refusal SFT row and a
    refusal-over-reply pair, so training sees many plain harmful requests, not only wrapped ones."""
    bare_benign_dataset_name: str = ""
    """More look-alikes asked alongside the bare requests, e.g. builtin:benign_taxonomy.jsonl (empty: none);
    their answers are kept as the other look-alikes' are, so the bare refusals do not spread to them."""
    bare_prompts: int = 300
    """How many rows of each bare file are asked: a seeded sample spread evenly over hazards (or over the
    hazard a look-alike resembles), so a file sorted by hazard is not cut to its first few."""
    train_split: str = "train"
    """Split the attacks collect training data from."""
    test_split: str = "test"
    """Held-out split measured before and after."""
    attacks: str = DEFAULT_ATTACKS
    """Attack specs (see `alignkit redteam`)."""
    harm_judge: str = "guard"
    """guard, guard:DIR, none, or a compliance judge llm:MODEL / openai:URL[#MODEL] (see `alignkit redteam`)."""
    refusal_scorer: str = "rules"
    """rules, classifier or both."""
    train_method: str = "sft+dpo"
    """sft (attacked request → refusal, benign → own answer), dpo (refusal over harmful reply, answer over
    refusal) or sft+dpo (SFT, then DPO from the SFT model: DPO takes back the refusals SFT spread to benign
    look-alikes)."""
    benign_weight: int = 2
    """Copies of each kept benign answer in the SFT mix (raise it if over-refusal grows)."""
    refusal_pairs_per_request: int = 3
    """Most attacked variants of one request kept as refusal-over-reply pairs for DPO (0: all), so the pairs
    that teach answering benign look-alikes are not outnumbered. SFT keeps every variant."""
    rpo_alpha: float = 1.0
    """With dpo or sft+dpo: weight of an NLL term on the chosen reply (refusal or benign answer), so the
    model learns to say them rather than only to rank them (0: plain DPO)."""
    safety_rm: bool = False
    """Also train a safety reward model on the safety-relevant pairs (safety_rm/) and score the held-out
    replies before and after with it: how often it prefers the trained policy's reply."""
    max_new_tokens: int = 96
    """Most tokens per reply while red-teaming."""
    batch_size: int = 16
    """Conversations per generate call."""
    use_peft: bool = True
    """Train a LoRA adapter (r 16) rather than every weight."""
    learning_rate: float = 5e-4
    """Learning rate of each training stage."""
    max_steps: int = 40
    """Optimizer steps of each training stage (sft+dpo runs this many of SFT, then of DPO)."""
    per_device_train_batch_size: int = 8
    """Examples per step."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of every training stage: about 3× less memory for 30–50%
    more time per step (SmolLM2 on CPU, the loop's pairs: RM 10.1 → 3.1 GB, DPO 9.5 → 3.2 GB)."""
    seed: int = 0
    """Seed for attacks, data order and training."""
    output_dir: str = "runs/safety_loop"
    """Directory holding before/, collect/, data/, train/, after/ and safety_loop.json."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--prompts", "--data"),
                   "benign_dataset_name": ("--benign",)}

    def check(self) -> None:
        if self.train_method not in METHODS:
            raise AlignkitError(f"config: train_method: must be one of {', '.join(METHODS)}, "
                                f"got {self.train_method!r}")
        for name in ("max_steps", "benign_weight", "per_device_train_batch_size", "bare_prompts"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"config: {name}: must be at least 1, got {getattr(self, name)}")
        if self.refusal_pairs_per_request < 0:
            raise AlignkitError("config: refusal_pairs_per_request: must be 0 (all) or more, "
                                f"got {self.refusal_pairs_per_request}")
        self.redteam_config("x", self.test_split, "x").check()

    def redteam_config(self, model: str, split: str, out: Path | str, benign: str | None = None) -> RedTeamConfig:
        return RedTeamConfig(model_name_or_path=model, dataset_name=self.dataset_name,
                             benign_dataset_name=self.benign_dataset_name if benign is None else benign,
                             dataset_split=split, attacks=self.attacks, harm_judge=self.harm_judge,
                             refusal_scorer=self.refusal_scorer, max_new_tokens=self.max_new_tokens,
                             batch_size=self.batch_size, seed=self.seed, output_dir=str(out), device=self.device)


def refusal_text(hazard: str | None) -> str:
    """The taxonomy's helpful refusal for a hazard (a general one when the hazard is unknown)."""
    taxonomy = load_taxonomy()
    if hazard not in taxonomy.ids:
        return ("I can't help with that, because it could put people at risk. If there is a safe goal behind "
                "the question, tell me more and I'll gladly help with that.")
    return taxonomy.get(hazard).refusal


def cap_per_request(rows: list[dict], limit: int, rng: random.Random) -> list[dict]:
    """At most `limit` rows per request (0: all), picked at random; the order of the kept rows is kept."""
    if limit == 0:
        return rows
    by_request: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_request.setdefault(row["request"], []).append(i)
    keep = {i for indices in by_request.values() for i in rng.sample(indices, min(limit, len(indices)))}
    return [row for i, row in enumerate(rows) if i in keep]


def _read_runs(collect: Path | list[Path], name: str) -> list[dict]:
    dirs = collect if isinstance(collect, list) else [collect]
    return [json.loads(line) for d in dirs for line in (d / name).read_text().splitlines()]


def build_training_data(collect: Path | list[Path], benign_weight: int, seed: int,
                        refusal_pairs_per_request: int = 0) -> tuple[list[dict], list[dict], dict]:
    """SFT rows and preference rows from the collect step's transcripts (one red-team directory or several,
    read in order); plus counts for the record.

    SFT gets a refusal for every attacked variant the policy complied with (each teaches the refusal behind
    another wrapper); the refusal-over-reply pairs keep at most `refusal_pairs_per_request` variants of one
    request (0: all), so the benign answer-over-refusal pairs are not outnumbered in DPO."""
    rng = random.Random(seed)
    transcripts = _read_runs(collect, "transcripts.jsonl")
    complied = [t for t in transcripts if not t["refused"]]
    sft = [{"prompt": t["conversation"], "completion": [{"role": "assistant", "content": refusal_text(t["hazard"])}]}
           for t in complied]
    prefs = [{"prompt": t["conversation"], "chosen": [{"role": "assistant", "content": refusal_text(t["hazard"])}],
              "rejected": [{"role": "assistant", "content": t["reply"]}], "hazard": t["hazard"]}
             for t in cap_per_request(complied, refusal_pairs_per_request, random.Random(seed + 1))]
    refusal_pairs = len(prefs)
    benign = _read_runs(collect, "benign.jsonl")
    kept = [b for b in benign if b["class"] == "full_compliance" and b["reply"].strip()]
    for b in kept:
        prompt = [{"role": "user", "content": b["request"]}]
        answer = [{"role": "assistant", "content": b["reply"]}]
        sft += [{"prompt": prompt, "completion": answer}] * benign_weight
        pair = {"prompt": prompt, "chosen": answer,
                "rejected": [{"role": "assistant", "content": refusal_text(b.get("looks_like"))}]}
        prefs.append({**pair, "looks_like": b["looks_like"]} if b.get("looks_like") else pair)
    rng.shuffle(sft)
    rng.shuffle(prefs)
    counts = {"attacked_not_refused": len(complied), "attacked_total": len(transcripts), "refusal_pairs": refusal_pairs,
              "benign_kept": len(kept), "benign_total": len(benign), "sft_rows": len(sft),
              "preference_rows": len(prefs)}
    return sft, prefs, counts


def stage_values(config: SafetyLoopConfig, model: str, run_dir: Path) -> dict:
    """The settings every training stage of the loop shares (resuming a stage cut off before)."""
    return {"model_name_or_path": model, "use_peft": config.use_peft, "lora_r": 16, "lora_alpha": 32,
            "learning_rate": config.learning_rate, "warmup_ratio": 0.1, "max_steps": config.max_steps,
            "max_length": 512, "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_checkpointing": config.gradient_checkpointing,
            "logging_steps": 2, "save_steps": 20, "seed": config.seed, "output_dir": str(run_dir),
            "device": config.device}


def train_stages(config: SafetyLoopConfig, data_dir: Path, out: Path) -> list[Stage]:
    """Training on the mix into `out` (out/model is the trained policy): SFT, DPO, or SFT into out/sft and
    then DPO from that model into `out`, so DPO's reference is the SFT model."""
    def values(model: str, run_dir: Path, data: str) -> dict:
        return {**stage_values(config, model, run_dir), "lora_dropout": 0.0, "lr_scheduler_type": "cosine",
                "dataset_name": str(data_dir / data)}

    stages, model = [], config.model_name_or_path
    if config.train_method in ("sft", "sft+dpo"):
        sft_dir = out if config.train_method == "sft" else out / "sft"
        name = "train" if config.train_method == "sft" else "train-sft"
        stages.append(Stage(name, "sft", SFTConfig, train_sft, values(model, sft_dir, "safety_sft.jsonl")))
        model = str(sft_dir / "model")
    if config.train_method in ("dpo", "sft+dpo"):
        stages.append(Stage("train", "dpo", DPOConfig, train_dpo, {
            **values(model, out, "safety_preferences.jsonl"), "beta": 0.1, "rpo_alpha": config.rpo_alpha}))
    return stages


def train_step(config: SafetyLoopConfig, data_dir: Path, out: Path) -> Path:
    """Only the loop's training on a data directory it made (safety_sft.jsonl, safety_preferences.jsonl), into
    `out`; returns the trained model. A finished stage is not rerun."""
    run_stages(train_stages(config, data_dir, out), root=None)
    return out / "model"


def safety_rm_stage(config: SafetyLoopConfig, data_dir: Path, out: Path) -> Stage:
    """A Bradley–Terry safety RM on the loop's safety-relevant pairs (refusal over harmful reply, answer over
    refusal for look-alikes), from the policy's own weights, into out/model."""
    return Stage("safety_rm", "reward_model", RewardConfig, train_reward_model, {
        **stage_values(config, config.model_name_or_path, out), "prompt_subset": "safety",
        "dataset_name": str(data_dir / "safety_preferences.jsonl")})


def train_safety_rm(config: SafetyLoopConfig, data_dir: Path, out: Path) -> Path:
    """The safety RM stage alone; returns the model directory."""
    run_stages([safety_rm_stage(config, data_dir, out)], root=None)
    return out / "model"


@dataclass
class SafetyDataConfig:
    """The loop's data step: safety_sft.jsonl and safety_preferences.jsonl from the collect step's transcripts."""

    collect_dir: str = ""
    """The collect step's red-team directory (transcripts.jsonl, benign.jsonl); several separated by commas."""
    benign_weight: int = 2
    refusal_pairs_per_request: int = 0
    seed: int = 0
    output_dir: str = ""
    """Directory for the two files and run.json (whose `counts` the loop's summary reports)."""

    def check(self) -> None:
        if not self.collect_dir or not self.output_dir:
            raise AlignkitError("config: collect_dir and output_dir: both are needed")


def run_safety_data(config: SafetyDataConfig) -> Path:
    """Write the training mix; fails (nothing to learn) when the policy refused every attack and no benign
    answer was kept."""
    with run_owner(config, kind="safety_data") as run:
        out = run.start()
        dirs = [Path(d) for d in config.collect_dir.split(",") if d]
        sft, prefs, counts = build_training_data(dirs, config.benign_weight, config.seed,
                                                 config.refusal_pairs_per_request)
        if not sft:  # every SFT row has its preference pair, so this covers DPO too
            raise AlignkitError(f"{config.collect_dir}: no training data: the policy refused every attack and no "
                                "benign answer was kept; nothing to learn")
        write_jsonl(out / "safety_sft.jsonl", sft)
        write_jsonl(out / "safety_preferences.jsonl", prefs)
        run.complete(counts=counts)
        return out


def spread_sample(rows: list[dict], key: str, n: int, rng: random.Random) -> list[dict]:
    """n rows (all when fewer) spread evenly over the values of `key`: each group shuffled, then one row of
    each group in turn, so every hazard gets its share."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row.get(key)), []).append(row)
    for members in groups.values():
        rng.shuffle(members)
    picked, depth = [], 0
    while len(picked) < min(n, len(rows)):
        picked += [members[depth] for members in groups.values() if depth < len(members)]
        depth += 1
    return picked[:n]


def write_bare_prompts(config: SafetyLoopConfig, out: Path) -> tuple[str, str]:
    """The bare requests and look-alikes the collect-bare step asks, sampled from the bare files' training
    split into out/bare_prompts/ (the same files for the same seed, so a resumed loop asks the same)."""
    rng = random.Random(config.seed)
    paths = []
    for name, key, stem in ((config.bare_dataset_name, "hazard", "harmful"),
                            (config.bare_benign_dataset_name, "looks_like", "benign")):
        if not name:
            paths.append("")
            continue
        path = out / "bare_prompts" / f"{stem}.jsonl"
        write_jsonl(path, spread_sample(load_prompt_rows(name, split=config.train_split), key,
                                        config.bare_prompts, rng))
        paths.append(str(path))
    return paths[0], paths[1]


def loop_stages(config: SafetyLoopConfig, out: Path) -> list[Stage]:
    """The loop's steps as stages: before, collect (and collect-bare with bare requests), data, training,
    after, and the safety RM when asked."""
    def redteam(name: str, model: str, split: str, benign: str | None = None) -> Stage:
        return Stage(name, "redteam", RedTeamConfig, run_redteam,
                     to_flat_dict(config.redteam_config(model, split, out / name, benign)))

    policy = config.model_name_or_path
    benign = ",".join(n for n in (config.benign_dataset_name, config.train_benign_dataset_name,
                                  config.helpful_dataset_name) if n)
    collect = [redteam("collect", policy, config.train_split, benign)]
    if config.bare_dataset_name or config.bare_benign_dataset_name:
        harmful, lookalikes = write_bare_prompts(config, out)
        bare = config.redteam_config(policy, config.train_split, out / "collect-bare", lookalikes)
        # no harm judge: only refused-or-not decides what becomes training data
        bare.dataset_name, bare.attacks, bare.harm_judge = harmful or config.dataset_name, "none", "none"
        collect.append(Stage("collect-bare", "redteam", RedTeamConfig, run_redteam, to_flat_dict(bare)))
    data = Stage("data", "safety_data", SafetyDataConfig, run_safety_data, {
        "collect_dir": ",".join(str(s.out) for s in collect), "benign_weight": config.benign_weight,
        "seed": config.seed, "refusal_pairs_per_request": config.refusal_pairs_per_request,
        "output_dir": str(out / "data")})
    stages = [redteam("before", policy, config.test_split), *collect,
              data, *train_stages(config, out / "data", out / "train"),
              redteam("after", str(out / "train" / "model"), config.test_split)]
    if config.safety_rm:
        stages.append(safety_rm_stage(config, out / "data", out / "safety_rm"))
    return stages


def rm_verdict(rm_dir: Path, before: Path, after: Path, device: str = "auto") -> dict:
    """Score each held-out reply before and after with the safety RM: mean scores, and how often the RM
    prefers the after reply to the before reply for the same attacked request (or benign look-alike)."""
    rm = RewardModel(str(rm_dir), device=device, max_length=512)

    def scored(run: Path, name: str, key) -> dict:
        rows = [json.loads(line) for line in (run / name).read_text().splitlines()]
        prompts = [r["conversation"] if "conversation" in r else [{"role": "user", "content": r["request"]}]
                   for r in rows]
        scores = rm(prompts, [[{"role": "assistant", "content": r["reply"]}] for r in rows])
        return {key(r): s for r, s in zip(rows, scores)}

    verdict = {}
    for name, label, key in (("transcripts.jsonl", "attacked", lambda r: (r["index"], r["attack"])),
                             ("benign.jsonl", "benign", lambda r: r["request"])):
        b, a = scored(before, name, key), scored(after, name, key)
        common = [k for k in b if k in a]
        if not common:
            continue
        verdict[label] = {"mean_before": sum(b[k] for k in common) / len(common),
                          "mean_after": sum(a[k] for k in common) / len(common),
                          "after_preferred": rate(sum(a[k] > b[k] for k in common), len(common))}
    return verdict


def _delta(before: dict | None, after: dict | None) -> float | None:
    if not before or not after or before.get("rate") is None or after.get("rate") is None:
        return None
    return after["rate"] - before["rate"]


def compare(before: dict, after: dict) -> dict:
    """The numbers the loop is judged by, before and after."""
    def pick(results: dict) -> dict:
        return {"asr": results["asr"]["overall"], "compliance": results["compliance"],
                "over_refusal": (results.get("over_refusal") or {}).get("any"),
                "asr_by_attack": results["asr"]["by_attack"]}

    b, a = pick(before), pick(after)
    return {"before": b, "after": a, "asr_change": _delta(b["asr"], a["asr"]),
            "compliance_change": _delta(b["compliance"], a["compliance"]),
            "over_refusal_change": _delta(b["over_refusal"], a["over_refusal"])}


def plot_before_after(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(summary["before"]["asr_by_attack"])
    groups = [("ASR (all)", summary["before"]["asr"], summary["after"]["asr"]),
              ("not refused", summary["before"]["compliance"], summary["after"]["compliance"])]
    if summary["before"]["over_refusal"]:
        groups.append(("over-refusal", summary["before"]["over_refusal"], summary["after"]["over_refusal"]))
    groups += [(a, summary["before"]["asr_by_attack"][a], summary["after"]["asr_by_attack"].get(a)) for a in attacks]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(groups), 3.8))
    for offset, label, index in ((-0.2, "before", 1), (0.2, "after", 2)):
        rates = [g[index] if g[index] and g[index].get("rate") is not None else None for g in groups]
        values = [100 * r["rate"] if r else 0.0 for r in rates]
        errors = [[max(0.0, v - 100 * r["low"]) if r else 0.0 for v, r in zip(values, rates)],
                  [max(0.0, 100 * r["high"] - v) if r else 0.0 for v, r in zip(values, rates)]]
        ax.bar([i + offset for i in range(len(groups))], values, width=0.4, label=label, yerr=errors, capsize=2)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("% (95% CI)")
    ax.set_title("Safety loop: before and after")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_safety_loop(config: SafetyLoopConfig) -> Path:
    """Run the loop's stages (each skipped when complete), then compare; returns safety_loop.json."""
    with run_owner(config, kind="safety_loop", model=config.model_name_or_path) as run:
        started = time.time()
        out = run.start()
        run_stages(loop_stages(config, out), out, sections=(section,))
        trained = out / "train" / "model"
        before = json.loads((out / "before" / RESULTS).read_text())
        after = json.loads((out / "after" / RESULTS).read_text())
        summary = {"model": config.model_name_or_path, "trained_model": str(trained),
                   "train_method": config.train_method, "data": read_status(out / "data")["counts"],
                   **compare(before, after)}
        if config.safety_rm:
            verdict = out / "safety_rm" / "verdict.json"  # kept, so a rerun of a finished loop scores nothing again
            if not verdict.exists():
                scores = rm_verdict(out / "safety_rm" / "model", out / "before", out / "after", config.device)
                write_text_atomic(verdict, json.dumps(scores, indent=2) + "\n")
            summary["safety_rm"] = json.loads(verdict.read_text())
        path = out / "safety_loop.json"
        write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
        plot_before_after(summary, out / "before_after.png")
        write_safety_report(out, f"safety loop · {config.model_name_or_path}")
        run.complete(asr_change=summary["asr_change"], over_refusal_change=summary["over_refusal_change"],
                     seconds=round(time.time() - started, 2))
        print(describe(summary), flush=True)
        return path


def describe(summary: dict) -> str:
    b, a = summary["before"], summary["after"]
    rm = (summary.get("safety_rm") or {}).get("attacked")
    pct = format_rate
    verdict = f"; the safety RM prefers the trained policy's reply to {pct(rm['after_preferred'])} of attacks" \
        if rm else ""
    return (f"safety loop ({summary['train_method']}): attack success {pct(b['asr'])} -> {pct(a['asr'])}; "
            f"not refused {pct(b['compliance'])} -> {pct(a['compliance'])}; "
            f"over-refusal {pct(b['over_refusal'])} -> {pct(a['over_refusal'])}{verdict}")
