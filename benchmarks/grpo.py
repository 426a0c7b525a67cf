"""GRPO training step: alignkit's `GroupPolicyStep` on the shared engine against TRL's `GRPOTrainer`, on the same
model, prompts, reward function and settings.

Each step of either side samples `--generations` responses to each of `--prompts-per-step` prompts with HF
`generate` (KV cache, temperature 1.0, no top-p/top-k), scores them with the same plain Python reward
(`e_share`: the share of the letter "e" in the completion), turns the scores into group-normalised advantages and
takes one AdamW step on the clipped objective (μ = 1, beta 0: no reference model, loss_type "dapo": token-mean).
Generation dominates the step on CPU.

Method: every measurement is a fresh subprocess (this script re-invoked with a hidden --worker flag), sides
interleaved (alternating which goes first), --repeats of each, medians reported. Inside a worker: the model is
loaded, the peak-RSS mark is reset (VmHWM via /proc/self/clear_refs; the baseline is the RSS after model loading),
then --warmup untimed steps (the first allocates AdamW's state) and --steps timed ones. Reported per side:

- s/step: wall seconds per timed step;
- tokens/s: (prompt + generated tokens processed in the timed steps) / their wall time, counted from each side's
  own outputs: ours from `batch["num_tokens"]` (the rollout's attention-mask count, which the engine logs as
  `num_tokens`), TRL from `state.num_input_tokens_seen` (prompt + completion lengths, which it logs as
  `num_tokens`). Completion lengths differ by chance between the sides (different random streams), so tokens/s,
  not s/step, is the fair speed;
- peak MiB: VmHWM over the post-load baseline, read at the end of the last step;
- mean completion length of the timed steps.

Targets (the issue's): ours >= 2x TRL's tokens/s and <= 1.0x its peak memory.

TRL 1.16 `GRPOConfig` defaults overridden, and why:

- gradient_checkpointing: TRL defaults to True -> False (ours is off by default; the issue compares with it off);
- bf16: TRL defaults to True when fp16 is unset -> False, with use_cpu=True and model dtype float32 (float32 on
  CPU on both sides);
- learning_rate: TRL's 1e-6 (ours too) -> --learning-rate on both (default 1e-6, i.e. unchanged);
- logging_steps: TRL's 10 -> 1, so completion lengths and token counts are seen every step (ours logs every step);
- shuffle_dataset: TRL's True -> False, and ours reads its seeded permutation placed so that both sides take the
  same prompts in the same order at every step;
- optim: adamw_torch_fused, TRL's own default on torch>=2.8 and the kernel our engine uses (`make_optimizer`),
  weight_decay 0, betas (0.9, 0.999), eps 1e-8, warmup 0, linear schedule, max_grad_norm 1.0;
- steps_per_generation / generation_batch_size: left None with gradient_accumulation_steps=1, so TRL generates
  every step (steps_per_generation = gradient_accumulation_steps = 1); num_iterations=1 (its default, stated);
  with these TRL skips the extra "old log-probs" forward pass, as ours does (μ = 1);
- per_device_train_batch_size counts completions on both: prompts-per-step x generations;
- report_to "none", save_strategy "no", disable_tqdm, dataloader_num_workers 0 (no side work in the timed steps);
- log_completions stays False (TRL's default); use_vllm=False (its default, stated); beta 0.0, loss_type "dapo",
  temperature 1.0, top_p 1.0, top_k 0, epsilon 0.2, scale_rewards "group", mask_truncated_completions False are
  TRL's defaults and equal ours, but are passed explicitly so a changed default cannot silently change the run.

The prompts are conversations (builtin:prompts.jsonl / builtin:helpful.jsonl): both sides render them with the
tokenizer's chat template and a generation prompt. TRL then hands the reward function completions as message lists
([{"role": "assistant", "content": ...}]), ours as strings; `e_share` accepts both.

Same objective, checked: in its first step the TRL worker keeps the completions TRL sampled, the rewards and
advantages TRL computed and the loss it took; ours then scores the same completions with its own reward path
(`RewardMix`), group advantages (`losses.rl.ADVANTAGES["grpo"]`) and token-mean aggregation. At μ = 1 the ratio
is 1, so the loss is the advantage-weighted token mean: rewards, advantages and loss must agree to 1e-5. With
the same fused AdamW, dtype and threads on both (`harness.same_work`), a run that fails prints FAIL and why,
never a ratio, and the script exits 1. Ratios are the median of paired runs (repeat r of each side).

`--trl-continuous-batching` lets TRL generate with transformers' continuous-batching engine
(`use_transformers_continuous_batching`) instead of `generate`: its other generation path without vLLM.

    python benchmarks/grpo.py                                   # embedded:tiny, 3 repeats
    python benchmarks/grpo.py --models embedded:smollm2-135m-instruct --repeats 1 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REPO = harness.REPO
SIDES = ("ours", "trl")
TARGET_SPEED = 2.0
TARGET_MEMORY = 1.0


def e_share(prompts, completions, **kwargs) -> list[float]:
    """Share of the letter "e" among a completion's characters (0 for an empty one). Takes TRL's conversational
    completions (a list of messages) as well as plain strings."""
    out = []
    for c in completions:
        if isinstance(c, list):
            c = "".join(m.get("content") or "" for m in c if isinstance(m, dict))
        out.append(c.count("e") / len(c) if c else 0.0)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["embedded:tiny"],
                   help="e.g. embedded:tiny embedded:smollm2-135m-instruct")
    p.add_argument("--prompts", default="builtin:prompts.jsonl", help="builtin:prompts.jsonl or builtin:helpful.jsonl")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--generations", type=int, default=8, help="num_generations (group size) on both sides")
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per worker (at least 1)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per worker")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--trl-continuous-batching", action="store_true",
                   help="TRL generates with transformers' continuous-batching engine "
                        "(use_transformers_continuous_batching) instead of generate")
    p.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    p.add_argument("--json", help="also write the raw samples here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step's end starts the clock)")
    return args


# ----------------------------------------------------------------------------------------------------------
# worker


def prompt_sequence(args, total_steps: int) -> list[dict]:
    """The prompt rows, in the order both sides take them: whole shuffled epochs of the file."""
    from alignkit.data.io import load_rows

    rows = [{"prompt": r["prompt"]} for r in load_rows(args.prompts, "prompt")]
    return harness.in_epochs(rows, total_steps * args.prompts_per_step, random.Random(args.seed))


def run_ours(args, sequence, tokenizer, total_steps, memory, profiler=None) -> dict:
    from alignkit.methods.grpo import GroupPolicyStep, GRPOConfig
    from alignkit.models.load import load_policy
    from alignkit.rewards.sources import RewardMix

    config = GRPOConfig(model_name_or_path=args.model, dataset_name=args.prompts,
                        num_generations=args.generations, max_completion_length=args.max_completion_length,
                        temperature=1.0, top_p=1.0, top_k=0, advantage="grpo", scale_rewards=True,
                        loss_type="dapo", beta=0.0, epsilon=0.2, ref="none", gradient_checkpointing=False,
                        dtype="float32", device="cpu")
    config.train.per_device_train_batch_size = args.prompts_per_step * args.generations
    config.check()
    rewards = RewardMix([e_share], max_new_tokens=args.max_completion_length)
    step = GroupPolicyStep(config, tokenizer, rewards)
    model = load_policy(args.model, dtype="float32", device="cpu", gradient_checkpointing=False)
    tokens, lengths = [], []

    def step_fn(model, batch):
        loss, metrics = step(model, batch)
        tokens.append(int(batch["num_tokens"]))
        lengths.append(metrics["completions/mean_length"])
        return loss, metrics

    def collate(items):
        return {"rows": items}

    def count(batch):
        return len(batch["rows"]) * args.generations

    # harness.train_ours: the engine's per_device_train_batch_size counts prompts (train_grpo divides the same way)
    ours_args = argparse.Namespace(batch=args.prompts_per_step, learning_rate=args.learning_rate, seed=args.seed)
    result = harness.train_ours(ours_args, model, sequence, collate, step_fn, count, "grpo", total_steps, memory,
                                profiler)
    result.update(step_tokens=tokens, step_lengths=lengths)
    return result


def run_trl(args, sequence, tokenizer, total_steps, memory, profiler=None) -> dict:
    import tempfile
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.models.load import resolve_path

    warnings.filterwarnings("ignore")
    log = harness.StepLog(memory, total_steps, profiler)
    out_dir = tempfile.mkdtemp(prefix="bench-grpo-trl-")
    settings = harness.trl_settings(argparse.Namespace(batch=args.prompts_per_step * args.generations,
                                                       learning_rate=args.learning_rate,
                                                       trl_optim="adamw_torch_fused",
                                                       seed=args.seed, gradient_checkpointing=False),
                                    out_dir, total_steps)
    settings.pop("train_sampling_strategy", None)  # GRPO's own RepeatSampler reads shuffle_dataset instead
    config = GRPOConfig(
        **settings, num_generations=args.generations, max_completion_length=args.max_completion_length,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", epsilon=0.2, scale_rewards="group",
        num_iterations=1, shuffle_dataset=False, use_vllm=False, mask_truncated_completions=False,
        log_completions=False, model_init_kwargs={"dtype": "float32"},
        use_transformers_continuous_batching=args.trl_continuous_batching,
    )
    if config.steps_per_generation != 1 or config.generation_batch_size != args.prompts_per_step * args.generations:
        raise RuntimeError(f"TRL would not generate every step: steps_per_generation {config.steps_per_generation}, "
                           f"generation_batch_size {config.generation_batch_size}")
    tokens_seen, lengths = [], []

    class Counter(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            tokens_seen.append(int(state.num_input_tokens_seen))

        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    dataset = Dataset.from_list(sequence)
    trainer = GRPOTrainer(model=resolve_path(args.model), reward_funcs=e_share, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Counter(), log.trl_callback()])
    first = capture_first_step(trainer)
    memory.reset()
    trainer.train()
    result = log.result(out_dir, trainer.model)
    result.update(step_tokens=[b - a for a, b in zip([0] + tokens_seen[:-1], tokens_seen)], step_lengths=lengths,
                  objective=objective_check(first, args, tokenizer))
    return result


def capture_first_step(trainer) -> dict:
    """Keep what TRL's first step computed: the rewards of its completions, the batch it trains on (completion ids
    and mask, advantages) and its loss. The trainer's own methods are wrapped; what they return is unchanged."""
    first: dict = {}
    rewards, generate, loss = (trainer._calculate_rewards, trainer._generate_and_score_completions,
                               trainer._compute_loss)

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        out = rewards(inputs, prompts, completions, completion_ids_list)
        first.setdefault("rewards", out[:, 0].detach().clone())
        return out

    def generate_and_score(inputs):
        out = generate(inputs)
        first.setdefault("batch", {k: out[k].detach().clone() for k in ("completion_ids", "completion_mask",
                                                                        "advantages")})
        return out

    def compute_loss(model, inputs):
        out = loss(model, inputs)
        first.setdefault("loss", float(out.detach()))
        return out

    trainer._calculate_rewards, trainer._generate_and_score_completions = calculate_rewards, generate_and_score
    trainer._compute_loss = compute_loss
    return first


def objective_check(first: dict, args, tokenizer) -> dict:
    """Ours on TRL's first-step completions: our reward path's rewards, our group advantages, and our token-mean
    loss at ratio 1 (μ = 1), each against TRL's; the largest absolute differences."""
    import torch

    from alignkit.losses import rl
    from alignkit.methods.grpo import LOSS_TYPES
    from alignkit.rewards.sources import RewardMix

    batch = first["batch"]
    mask = batch["completion_mask"].float()
    texts = [tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
             for ids, m in zip(batch["completion_ids"], batch["completion_mask"])]
    lengths = [int(m.sum()) for m in batch["completion_mask"]]
    scores, _ = RewardMix([e_share], max_new_tokens=args.max_completion_length)(
        [None] * len(texts), texts, ["stop"] * len(texts), lengths, [{}] * len(texts))
    rewards = torch.tensor(scores, dtype=torch.float32)
    advantages = rl.ADVANTAGES["grpo"](rewards, args.generations, None, mask, 0.0, True)
    zeros = torch.zeros_like(mask)
    out = rl.clipped_policy_loss(zeros, zeros, advantages, mask, 0.2, None)
    loss = float(rl.aggregate(out.losses, mask, LOSS_TYPES["dapo"], args.max_completion_length))
    theirs = batch["advantages"].reshape(-1)
    return {"rewards_diff": float((rewards - first["rewards"].float()).abs().max()),
            "advantages_diff": float((advantages.reshape(-1) - theirs).abs().max()),
            "loss_ours": loss, "loss_trl": first["loss"], "completions": len(texts)}


def worker(args) -> dict:
    from alignkit.models.load import load_tokenizer

    total = args.warmup + args.steps
    tokenizer = load_tokenizer(args.model, padding_side="left")
    sequence = prompt_sequence(args, total)
    run = run_ours if args.side == "ours" else run_trl
    # harness.measure reads these
    args.shape, args.max_length = args.prompts, 0
    sample = harness.measure(args, run, sequence, tokenizer, total)
    tokens = sample.pop("step_tokens")[args.warmup:total]
    lengths = sample.pop("step_lengths")[args.warmup:total]
    if len(tokens) != args.steps or len(lengths) != args.steps:
        raise RuntimeError(f"{args.side}: token counts for {len(tokens)} and lengths for {len(lengths)} of "
                           f"{args.steps} timed steps")
    sample.update(tokens_per_step=sum(tokens) / args.steps, tokens_per_s=sum(tokens) / sample["time_s"],
                  mean_completion_length=sum(lengths) / len(lengths))
    return sample


# ----------------------------------------------------------------------------------------------------------
# driver


def run_worker_subprocess(args, side: str, model: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--side", side, "--model", model,
           "--prompts", args.prompts, "--prompts-per-step", str(args.prompts_per_step),
           "--generations", str(args.generations), "--max-completion-length", str(args.max_completion_length),
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--learning-rate", str(args.learning_rate),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.trl_continuous_batching:
        cmd.append("--trl-continuous-batching")
    return harness.run_worker(cmd, f"{side}/{model}", args.threads, args.timeout, checkpointing=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(json.dumps(worker(args)))
        return 0
    versions = harness.import_versions()
    print(f"GRPO step: alignkit vs TRL {versions['trl']} (torch {versions['torch']}, transformers "
          f"{versions['transformers']}), {args.threads} threads")
    print(f"{args.prompts}: {args.prompts_per_step} prompts x {args.generations} generations per step, "
          f"max {args.max_completion_length} new tokens, temperature 1.0, beta 0, loss dapo, lr {args.learning_rate}; "
          f"{args.repeats} repeat(s), each a fresh process, {args.warmup} warm-up + {args.steps} timed steps\n",
          flush=True)
    samples: dict[tuple[str, str, str], list[dict]] = {}
    started = time.time()
    for model in args.models:
        for r in range(args.repeats):
            for side in (args.sides if r % 2 == 0 else args.sides[::-1]):
                res = run_worker_subprocess(args, side, model)
                samples.setdefault((model, args.prompts, side), []).append(res)
                print(f"  {model:32s} {side:4s} repeat {r + 1}: {res['tokens_per_s']:8.1f} tok/s "
                      f"{res['step_time_s']:7.2f} s/step {res['peak_bytes'] / 2**20:8.1f} MiB peak "
                      f"{res['mean_completion_length']:6.1f} mean len  {res['tokens_per_step']:7.0f} tok/step  "
                      f"loss[0] {res['first_loss']:+.4f}  others {res['other_load']:.0%}", flush=True)
    print(f"\n(all runs took {time.time() - started:.0f} s)\n")

    keys = ("tokens_per_s", "step_time_s", "peak_bytes", "mean_completion_length", "tokens_per_step")
    header = (f"{'model':32s} {'side':8s} {'tok/s':>9s} {'s/step':>8s} {'peak MiB':>9s} {'mean len':>9s} "
              f"{'tok/step':>9s}  result")
    print(header)
    print("-" * len(header))
    rows = []
    for model in args.models:
        key = (model, args.prompts)
        for side in args.sides:
            v = {k: statistics.median(s[k] for s in samples[(*key, side)]) for k in keys}
            print(f"{model:32s} {side:8s} {v['tokens_per_s']:9.1f} {v['step_time_s']:8.2f} "
                  f"{v['peak_bytes'] / 2**20:9.1f} {v['mean_completion_length']:9.1f} {v['tokens_per_step']:9.0f}")
        if len(args.sides) == 2:
            # the sides sample different completions, so losses and token counts differ by chance: the objective
            # is checked on TRL's own first-step completions instead (objective_problems)
            problems = harness.same_work(samples, *key, loss_rel=None, grad_rel=None, counted=())
            problems += objective_problems(samples[(*key, "trl")])
            rows.append(harness.print_ratio_row(samples, *key, TARGET_SPEED, TARGET_MEMORY, problems))
            if not problems:
                length = harness.spread(harness.paired_ratios(samples, *key, "mean_completion_length"))
                print(f"{'':32s} mean completion length ours/TRL {length['median']:.2f}x (tokens/s is the fair speed)")
    print()
    print("ratios: the median of paired runs (repeat r of each side, run back to back), with their range")
    for s in samples.get((args.models[0], args.prompts, "trl"), [])[:1]:
        o = s["objective"]
        print(f"objective check on TRL's first-step completions ({o['completions']}): rewards differ by at most "
              f"{o['rewards_diff']:.1e}, advantages by {o['advantages_diff']:.1e}; loss ours {o['loss_ours']:.6f}, "
              f"TRL {o['loss_trl']:.6f}")
    harness.print_contention(samples, args.threads)
    return harness.finish(args, "grpo", samples, rows, versions,
                          f"targets: ours >= {TARGET_SPEED}x TRL tokens/s and <= {TARGET_MEMORY:.1f}x its peak memory")


def objective_problems(trl_runs: list[dict], tolerance: float = 1e-5) -> list[str]:
    """Where ours, on TRL's first-step completions, computes other rewards, advantages or loss than TRL did."""
    problems = []
    for run in trl_runs:
        o = run["objective"]
        for name, diff in (("rewards", o["rewards_diff"]), ("advantages", o["advantages_diff"]),
                           ("loss", abs(o["loss_ours"] - o["loss_trl"]))):
            if not diff <= tolerance:  # also catches NaN
                problems.append(f"{name} differ by {diff:.2e} on the same completions (tolerance {tolerance:g})")
    return sorted(set(problems))


if __name__ == "__main__":
    sys.exit(main())
