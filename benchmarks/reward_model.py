"""Reward-model training step: alignkit (`alignkit.engine.loop.train` + `alignkit.methods.reward_model.reward_loss`)
against TRL's `RewardTrainer`, same model, same data, same settings.

Method (the same as benchmarks/sft.py; both run on the shared benchmarks/harness.py):

- Every (model, data, side, repeat) runs in a fresh subprocess (this script re-invoked with --worker); the two
  sides are interleaved and alternate which goes first; the table shows the median of --repeats.
- `torch.set_num_threads(--threads)` (2), float32 on CPU, fused AdamW on both sides (TRL's default
  `adamw_torch_fused`) with the same lr / betas / eps / weight decay 0 /
  grad clipping 1.0 / linear schedule with no warmup, gradient checkpointing on both sides or neither
  (--gradient-checkpointing), Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) averaged over the pairs, no
  margin, no reward centring (ours 0.0, TRL's `center_rewards_coefficient=None`), dropout off on both sides
  (TRL's `disable_dropout=True`; ours zeroes every nn.Dropout the same way: embedded:tiny and SmolLM2 have none,
  and their attention_dropout is 0).
- Same model: both sides load it with `alignkit.models.load.load_reward_model` (AutoModelForSequenceClassification
  with one label) right after `torch.manual_seed(0)`, so the new scalar head starts from the same weights; TRL
  gets the model object (and sets `config.pad_token_id` to the tokenizer's pad id, as it requires).
- Same pairs in the same batches: each worker tokenizes the data with alignkit (`tokenize_preferences`, which cuts
  prompts from the left and keeps both responses, each ending with EOS) and lays the pairs out in one fixed order.
  Our engine gets them placed so its seeded `DataStream` reads them in that order; TRL gets them as an already
  tokenized dataset (`chosen_ids` + `rejected_ids`, which its `_prepare_dataset` detects and does not touch;
  `max_length=None`, so its length filter is off too) with `train_sampling_strategy="sequential"`. TRL's own
  tokenization is not used: it concatenates prompt and response text, appends EOS to plain-text rows, and drops
  (rather than truncates) pairs longer than max_length, so only handing it our ids makes both sides train on the
  very same tokens. Tokenizing is setup, never timed. A batch is --batch pairs: 2 x --batch sequences, the chosen
  ones then the rejected ones, in one forward pass on both sides.
- Pooling: TRL's *ForSequenceClassification reads the score at the rightmost token that is not the pad id, ours
  at the last real token through the attention mask. SmolLM2's pad is its EOS, which ends every real row, so TRL
  would pool the token before it: different work. Each worker therefore pads with a special token that occurs in
  none of its rows (`distinct_pad`; SmolLM2: `<|endoftext|>`), on both sides, and both read the final EOS.
- Before any ratio, `harness.same_work` checks that both sides did the same work: the same fused AdamW, dtype,
  threads, trainable parameters, checkpointing and pairs kept; the first step's loss (to 1e-4) and gradient norm
  before clipping (to 1e-3). A configuration that fails prints FAIL and why instead of a ratio; exit status 1.
- Warm-up steps (--warmup) are excluded: the time is from the end of the last warm-up step to the end of the last
  timed step (both loops whole: collate, forward, backward, clipping, optimizer, schedule, per-step logging).
  Defaults as in benchmarks/sft.py: embedded:tiny 2 warm-up + 20 timed steps; other models 1 + 2.
  Ours logs metrics.jsonl every step (`logging_steps=1`), TRL logs every step too; neither saves checkpoints
  (ours is stopped from its on_log hook right after the last timed step, before its final save).
- tokens/s counts real (non-pad) tokens of the chosen and rejected sequences of the timed steps, the same count on
  both sides.
- Peak memory and contention exactly as benchmarks/sft.py: peak RSS over the post-setup baseline (VmHWM after
  /proc/self/clear_refs; "abs MiB" is the absolute peak), and "others" is the CPU share the rest of the machine
  used while steps were timed; --wait-quiet N waits for an idle machine first.

What TRL does here (trl 1.16): RewardTrainer pads the 2B sequences to the longest one and runs the whole padded
batch through the transformer, then the score head over every position (cheap: one output), and pools at the last
non-pad token; it also gathers per-step reward min/mean/max, accuracy and margin with `.item()` calls. Ours
(`--layout bucketed`, the default and alignkit's default `batch_layout`) runs the same right-padded batch in
length groups that waste at most 15% on padding, scoring only each sequence's last real token; `--layout padded`
runs one padded batch like TRL; `--layout padding_free` packs all 2B sequences into one row (on CPU its attention
costs (total tokens)^2, so it is for flash-attention GPUs). "pad%" is the padding share of TRL's (and padded)
batches, "our pad%" the share our layout computes.

Data shapes (--data):
  builtin    pairs made from alignkit's src/alignkit/data/builtin/sft.jsonl (short realistic chats): the chosen
             response is the chat's last assistant turn, the rejected one the same turn cut to half its characters
             (prompt/completion split by `alignkit.data.formats.split_sft`); alignkit ships no builtin preference set
  hh         real HH-RLHF pairs (--hh-path, default ../shared/data/hh-rlhf-harmless-base/test.jsonl.gz from the
             repo root) with their implicit prompts made explicit (`alignkit.data.io.load_rows(path, "preference")`,
             then `explicit_prompt` inside `tokenize_preferences`); falls back to `synthetic` when the file is absent
  synthetic  fixed-length random ordinary tokens: a shared half-length prompt, then different random responses, so
             chosen and rejected are both --synthetic-length long (default max_length)

    python benchmarks/reward_model.py                 # tiny + SmolLM2, builtin + hh, 3 repeats
    python benchmarks/reward_model.py --quick         # a look (1 repeat, max_length 256: not a result)
    python benchmarks/reward_model.py --models embedded:tiny --repeats 1
    python benchmarks/reward_model.py --models embedded:smollm2-135m-instruct --data hh --steps 10
    python benchmarks/reward_model.py --layout padded # ours without length bucketing
    python benchmarks/reward_model.py --profile ours --models embedded:smollm2-135m-instruct --data hh

Needs TRL (`pip install 'alignkit[bench]'`); written against trl 1.16.0 on transformers 5.24.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also when imported from elsewhere
import harness  # noqa: E402  (options, worker plumbing, driver and table shared with sft.py)

LAYOUTS = ("bucketed", "padded", "padding_free")
HEAD_SEED = 0  # torch.manual_seed before loading the model on both sides: the same new scalar head
TARGET_SPEED = 1.5  # ours >= 1.5x TRL tokens/s
TARGET_MEMORY = 1.0  # ours <= 1.0x TRL peak memory (delta over the post-setup baseline)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_options(p)
    p.add_argument("--batch", type=int, default=8,
                   help="pairs per step on both sides (per_device_train_batch_size; 2x sequences)")
    p.add_argument("--max-length", type=int, default=512, help="longest prompt + response of each sequence")
    p.add_argument("--synthetic-length", type=int, default=0, help="tokens per synthetic sequence (0: max-length)")
    p.add_argument("--layout", choices=LAYOUTS, default="bucketed",
                   help="our batch layout (alignkit's batch_layout); TRL always pads to the longest sequence")
    harness.add_run_options(p, unit="pairs")
    return harness.parse(p, argv)


# ----------------------------------------------------------------------------------------------------------
# data: the same pairs, in the same order, in every worker


def _builtin_pairs() -> list[dict]:
    """Preference rows from the builtin SFT chats: chosen = the last assistant turn, rejected = its first half."""
    from alignkit.data.builtin import builtin_path
    from alignkit.data.formats import split_sft

    with open(builtin_path("sft.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pairs = []
    for row in rows:
        prompt, completion = split_sft(row)
        if isinstance(completion, list):
            text = completion[-1]["content"]
            rejected = [{**completion[-1], "content": text[:len(text) // 2].rstrip()}]
        else:
            rejected = completion[:len(completion) // 2].rstrip()
        pairs.append({"prompt": prompt, "chosen": completion, "rejected": rejected})
    return pairs


def build_sequence(args, tokenizer, shape: str, needed: int) -> list:
    """`needed` RewardExamples in training order (step k's batch is pairs k*B .. k*B+B-1)."""
    import random

    from alignkit.methods.reward_model import RewardExample, tokenize_preferences

    rng = random.Random(args.seed)
    if shape == "synthetic":
        length = args.synthetic_length or args.max_length
        half = length // 2
        out = []
        for _ in range(needed):
            prompt = harness.random_ids(rng, tokenizer, half)
            out.append(RewardExample(prompt + harness.random_ids(rng, tokenizer, length - half),
                                     prompt + harness.random_ids(rng, tokenizer, length - half)))
        return out
    if shape == "builtin":
        pool, _ = tokenize_preferences(tokenizer, _builtin_pairs(), args.max_length)
        return harness.in_epochs(pool, needed, rng)
    from alignkit.data.io import load_rows

    path = harness.hh_path(args)
    rows = load_rows(path, "preference")
    rng.shuffle(rows)

    def tokenize(chunk):
        examples, _ = tokenize_preferences(tokenizer, chunk, args.max_length)
        return examples

    return harness.tokenize_in_chunks(rows, tokenize, needed, path, "every one was dropped at max_length")


def batch_stats(sequence: list, batch: int, first_step: int, layout: str) -> dict:
    """Real tokens of the steps from `first_step` on; the tokens TRL's padded batches compute, and ours."""
    from alignkit.data.collate import length_buckets

    real = padded = ours = 0
    for start in range(first_step * batch, len(sequence), batch):
        lengths = [len(e.chosen_ids) for e in sequence[start:start + batch]]
        lengths += [len(e.rejected_ids) for e in sequence[start:start + batch]]
        real += sum(lengths)
        padded += len(lengths) * max(lengths)
        if layout == "padded":
            ours += len(lengths) * max(lengths)
        elif layout == "bucketed":
            ours += sum(lengths[g[0]] * len(g) for g in length_buckets(lengths))
        else:
            ours += sum(lengths)
    return {"real_tokens": real, "padded_tokens": padded, "our_tokens": ours}


def distinct_pad(tokenizer, sequence: list) -> None:
    """Make the tokenizer's pad a special token that occurs in none of the rows, so TRL's pad-id pooling reads
    the last real token as ours does (a row ending with the pad id would be pooled one token early)."""
    used = {t for e in sequence for t in (*e.chosen_ids, *e.rejected_ids)}
    if tokenizer.pad_token_id not in used:
        return
    free = [i for i in tokenizer.all_special_ids if i not in used]
    if not free:
        raise SystemExit("every special token occurs in the pairs: no pad id that TRL's pooling can skip safely")
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(free[0])


# ----------------------------------------------------------------------------------------------------------
# the two sides; each returns after the last timed step with its timings (harness.StepLog.result)


def load_model(args):
    import torch

    from alignkit.models.load import load_reward_model

    torch.manual_seed(HEAD_SEED)
    return load_reward_model(args.model, dtype="float32", device="cpu",
                             gradient_checkpointing=args.gradient_checkpointing and args.side == "ours")


def run_ours(args, sequence: list, tokenizer, total_steps: int, memory: harness.Memory, profiler=None) -> dict:
    import torch

    from alignkit.methods.reward_model import collate_rewards, count_pairs, reward_loss

    model = load_model(args)
    for module in model.modules():  # what TRL's disable_dropout does (no-op for tiny and SmolLM2)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    pad_id = tokenizer.pad_token_id
    padding_free, bucketed = args.layout == "padding_free", args.layout == "bucketed"
    result = harness.train_ours(args, model, sequence,
                                lambda items: collate_rewards(items, pad_id, padding_free=padding_free),
                                lambda m, b: reward_loss(m, b, 0.0, bucketed=bucketed),
                                count_pairs, "reward_model", total_steps, memory, profiler)
    return {**result, "rows_kept": len(sequence), "pad_id": pad_id}


def run_trl(args, sequence: list, tokenizer, total_steps: int, memory: harness.Memory, profiler=None) -> dict:
    import tempfile
    import warnings

    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    warnings.filterwarnings("ignore")
    log = harness.StepLog(memory, total_steps, profiler)
    model = load_model(args)
    model.config.pad_token_id = tokenizer.pad_token_id  # SeqCls pooling finds the last token by it (TRL sets it too)
    out_dir = tempfile.mkdtemp(prefix="bench-rm-trl-")
    config = RewardConfig(
        **harness.trl_settings(args, out_dir, total_steps),
        max_length=None, disable_dropout=True, center_rewards_coefficient=None,
    )
    dataset = Dataset.from_dict({"chosen_ids": [e.chosen_ids for e in sequence],
                                 "rejected_ids": [e.rejected_ids for e in sequence]})
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[log.trl_callback()])
    memory.reset()
    trainer.train()
    return {**log.result(out_dir, trainer.model), "rows_kept": len(trainer.train_dataset),
            "pad_id": model.config.pad_token_id}


def worker(args, profile: bool = False) -> dict:
    """One sample: one side, one model, one data shape, in this process."""
    from alignkit.models.load import load_tokenizer

    total = harness.worker_total_steps(args)
    tokenizer = load_tokenizer(args.model)
    sequence = build_sequence(args, tokenizer, args.shape, total * args.batch)
    distinct_pad(tokenizer, sequence)
    run = run_ours if args.side == "ours" else run_trl
    sample = harness.measure(args, run, sequence, tokenizer, total, profile)
    stats = batch_stats(sequence, args.batch, args.warmup, args.layout)
    return {**sample, "layout": args.layout, "tokens_per_s": stats["real_tokens"] / sample["time_s"], **stats}


# ----------------------------------------------------------------------------------------------------------
# driver


def profile_main(args) -> int:
    res, prof = harness.profile_one(args, worker)
    print(f"profile of one {args.side} step after {args.warmup} warm-up: {args.model}, {args.shape}, "
          f"batch {args.batch} pairs, layout {args.layout if args.side == 'ours' else 'padded (TRL)'}, "
          f"{args.threads} threads; step time over the timed steps {res['step_time_s']:.3f} s")
    harness.print_profile(prof)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.profile:
        return profile_main(args)

    versions = harness.import_versions()
    shapes = harness.resolved_shapes(args)
    print(f"Reward-model benchmark: alignkit vs TRL {versions['trl']} RewardTrainer (transformers "
          f"{versions['transformers']}, torch {versions['torch']}), float32 on CPU, {args.threads} threads")
    print(f"batch {args.batch} pairs ({2 * args.batch} sequences), max_length {args.max_length}, AdamW lr "
          f"{args.learning_rate} (TRL optim {args.trl_optim}), gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'} on both, Bradley-Terry loss, our layout {args.layout}")
    harness.print_plan(args)

    samples = harness.interleaved_runs(args, os.path.abspath(__file__), shapes, ("--layout", args.layout),
                                       loss_format=".5f")
    harness.print_table_header("ours%")
    rows = []
    for model in args.models:
        for shape in shapes:
            first = samples[(model, shape, args.sides[0])][0]
            pad_pct = 100 * (1 - first["real_tokens"] / first["padded_tokens"])
            our_pct = 100 * (1 - first["real_tokens"] / first["our_tokens"])
            harness.print_side_rows(samples, args.sides, model, shape, pad_pct, our_pct)
            if len(args.sides) == 2:
                problems = harness.same_work(samples, model, shape, loss_rel=1e-4, loss_abs=1e-4,
                                             counted=("real_tokens", "rows_kept", "pad_id"))
                rows.append(harness.print_ratio_row(samples, model, shape, TARGET_SPEED, TARGET_MEMORY, problems,
                                                    targets_in_row=True))
    print("\ntok/s = real (non-pad) chosen + rejected tokens / wall time of the timed steps; s/step = wall seconds "
          "per step; cpu s = process CPU seconds per step (all threads)")
    print(f"pad% = padding share of TRL's padded batches; ours% = padding share our layout ({args.layout}) computes")
    print("peak MiB = peak RSS over the post-setup baseline (the memory target); abs MiB = absolute peak RSS")
    print("ratios: the median of paired runs (repeat r of each side, run back to back), with their range")
    harness.print_contention(samples, args.threads)
    return harness.finish(args, "reward_model", samples, rows, versions,
                          f"targets: ours >= {TARGET_SPEED}x TRL tokens/s and <= {TARGET_MEMORY:.1f}x its peak memory")


if __name__ == "__main__":
    sys.exit(main())
