"""SFT training step: alignkit (`alignkit.engine.loop.train` + `alignkit.methods.sft.sft_loss`) against TRL's
`SFTTrainer`, same model, same data, same settings.

Method (DESIGN.md, "Benchmarks: how we compare with TRL"):

- Every (model, data, side, repeat) runs in a fresh subprocess (this script re-invoked with --worker); the two
  sides are interleaved and alternate which goes first; the table shows the median of --repeats.
- `torch.set_num_threads(--threads)` (2), float32 on CPU, torch's fused AdamW on both sides (TRL's default
  `adamw_torch_fused`) with the same lr / betas / eps / weight decay 0 / grad clipping 1.0 / linear schedule
  with no warmup, gradient checkpointing on both sides or neither
  (--gradient-checkpointing), no packing and no padding-free on either side, right padding to the longest row.
- Same examples in the same batches: each worker tokenizes the data with alignkit (`tokenize_sft`, which cuts
  prompts from the left and keeps responses) and lays the examples out in one fixed order. Our engine gets them
  placed so its seeded `DataStream` reads them in that order; TRL gets them as an already tokenized dataset
  (`input_ids` + `completion_mask`, `completion_only_loss=True`, `train_sampling_strategy="sequential"`), so its
  own labels are `-100` outside the completion mask and its `max_length` truncation is a no-op (rows already fit).
  TRL's own tokenization is not used: it truncates from the right only (`keep_start`) and its
  `assistant_only_loss` needs a chat template with `{% generation %}` markers, which SmolLM2's lacks; handing it
  our token ids is the only way both sides train on the very same tokens. Tokenizing is setup, never timed.
  Before any ratio is printed, `harness.same_work` checks that both sides did the same work: the same
  optimizer (fused AdamW), dtype, threads, trainable parameters and checkpointing; the rows TRL's trainer
  kept and the tokens each side counts itself; the first step's loss and its gradient norm before clipping.
  A configuration that fails prints FAIL and why instead of a ratio, and the script exits 1.
- Warm-up steps (--warmup) are excluded: the time is from the end of the last warm-up step to the end of the last
  timed step (both loops whole: collate, forward, backward, clipping, optimizer, schedule, per-step logging).
  Defaults: embedded:tiny 2 warm-up + 20 timed steps; other models 1 + 2 (a SmolLM2 step on 2 cores takes
  5-25 s, and a run must stay near 10 minutes; --steps/--warmup raise them). Both sides time the same batches,
  so a few long steps compare as well as many short ones.
  Ours logs metrics.jsonl every step (`logging_steps=1`), TRL logs every step too; neither saves checkpoints
  (ours is stopped from its on_log hook right after the last timed step, before its final save).
- tokens/s counts real (non-pad) tokens of the timed steps, the same count on both sides.
- Peak memory: the worker resets the kernel's peak-RSS mark (/proc/self/clear_refs) after setup (model loaded,
  data ready, trainer built), reads VmRSS as the baseline, and reads VmHWM after the last timed step.
  "peak MiB" is that peak minus the baseline (activations, gradients, optimizer state, logits); "abs MiB" is the
  absolute peak RSS of the process (includes the model, the libraries each side imports, and TRL's datasets).
  The memory target is judged on the delta. Without /proc (not Linux), ru_maxrss is used for both.
- Contention: each worker also records how much CPU the rest of the machine used while it was timed ("others");
  with 2 threads every parallel op waits at a barrier for a descheduled thread, so a busy machine slows small ops
  tenfold and the numbers mean nothing. The driver warns; --wait-quiet N waits for an idle machine first.

What TRL does here (trl 1.16): SFTTrainer patches the model with a fused LM head that computes log-probs in
chunks without full logits, but on CPU (no Triton) it projects every position, prompt and pad included, and also
computes entropy and top-1 accuracy per token; on CUDA it projects only the label positions. Ours projects only
the trained (response) positions on every device. Both run the transformer body on pad positions (no packing).

Data shapes (--data):
  builtin    alignkit's src/alignkit/data/builtin/sft.jsonl: short realistic chats (messages format;
             every assistant turn trained)
  hh         real HH-RLHF pairs (--hh-path, default ../shared/data/hh-rlhf-harmless-base/test.jsonl.gz from the
             repo root): each pair's implicit prompt + chosen as a prompt/completion row
             (`alignkit.data.formats.explicit_prompt`); falls back to `synthetic` when the file is absent
  synthetic  fixed-length random tokens, --synthetic-length long (default max_length), half prompt, half response

    python benchmarks/sft.py                          # tiny + SmolLM2, builtin + hh, 3 repeats (~11 min on 2 cores)
    python benchmarks/sft.py --quick                  # a look in ~2 minutes (1 repeat, max_length 256: not a result)
    python benchmarks/sft.py --models embedded:smollm2-135m-instruct --data hh --steps 10
    python benchmarks/sft.py --gradient-checkpointing
    python benchmarks/sft.py --profile ours --models embedded:smollm2-135m-instruct --data hh  # where time goes

Needs TRL (`pip install 'alignkit[bench]'`); measured with trl 1.16.0 on transformers 5.24.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also when imported from elsewhere
import harness  # noqa: E402  (options, worker plumbing, driver and table shared with reward_model.py)

TARGET_SPEED = 1.3  # ours >= 1.3x TRL tokens/s
TARGET_MEMORY = 1.0  # ours <= 1.0x TRL peak memory (delta over the post-setup baseline)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_options(p)
    p.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size on both sides")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--synthetic-length", type=int, default=0, help="tokens per synthetic example (0: max-length)")
    harness.add_run_options(p, unit="examples")
    return harness.parse(p, argv)


# ----------------------------------------------------------------------------------------------------------
# data: the same examples, in the same order, in every worker


def build_sequence(args, tokenizer, shape: str, needed: int) -> list:
    """`needed` MaskedExamples in training order (batch k is items k*B .. k*B+B-1)."""
    import gzip
    import random

    from alignkit.data.tokenize import MaskedExample
    from alignkit.methods.sft import tokenize_sft

    rng = random.Random(args.seed)
    if shape == "synthetic":
        length = args.synthetic_length or args.max_length
        half = length // 2
        return [MaskedExample(harness.random_ids(rng, tokenizer, length), [0] * half + [1] * (length - half))
                for _ in range(needed)]
    if shape == "builtin":
        from alignkit.data.builtin import builtin_path

        with open(builtin_path("sft.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        pool, _ = tokenize_sft(tokenizer, rows, args.max_length)
        return harness.in_epochs(pool, needed, rng)
    from alignkit.data.formats import explicit_prompt

    path = harness.hh_path(args)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rng.shuffle(rows)

    def tokenize(chunk):
        pairs = [explicit_prompt(r) for r in chunk]
        examples, _ = tokenize_sft(tokenizer, [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs],
                                   args.max_length)
        return examples

    return harness.tokenize_in_chunks(rows, tokenize, needed, path, "every one was empty or dropped at max_length")


def batch_stats(sequence: list, batch: int, first_step: int) -> dict:
    """Real, trained and padded token counts of the steps from `first_step` on."""
    real = trained = padded = 0
    for start in range(first_step * batch, len(sequence), batch):
        rows = sequence[start:start + batch]
        real += sum(len(e.input_ids) for e in rows)
        trained += sum(sum(e.loss_mask[1:]) for e in rows)  # nothing predicts position 0
        padded += len(rows) * max(len(e.input_ids) for e in rows)
    return {"real_tokens": real, "trained_tokens": trained, "padded_tokens": padded}


# ----------------------------------------------------------------------------------------------------------
# the two sides; each returns after the last timed step with its timings (harness.StepLog.result)


def run_ours(args, sequence: list, tokenizer, total_steps: int, memory: harness.Memory, profiler=None) -> dict:
    from alignkit.data.collate import collate_masked
    from alignkit.methods.sft import count_trained_tokens, sft_loss
    from alignkit.models.load import load_policy

    model = load_policy(args.model, dtype="float32", device="cpu", gradient_checkpointing=args.gradient_checkpointing)
    pad_id = tokenizer.pad_token_id
    result = harness.train_ours(args, model, sequence, lambda items: collate_masked(items, pad_id), sft_loss,
                                count_trained_tokens, "sft", total_steps, memory, profiler)
    return {**result, "rows_kept": len(sequence)}


def run_trl(args, sequence: list, tokenizer, total_steps: int, memory: harness.Memory, profiler=None) -> dict:
    import tempfile
    import warnings

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignkit.models.load import resolve_path

    warnings.filterwarnings("ignore")
    log = harness.StepLog(memory, total_steps, profiler)
    out_dir = tempfile.mkdtemp(prefix="bench-sft-trl-")
    config = SFTConfig(
        **harness.trl_settings(args, out_dir, total_steps),
        max_length=args.max_length, packing=False, padding_free=False, completion_only_loss=True,
        model_init_kwargs={"dtype": "float32"},
    )
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in sequence],
                                 "completion_mask": [e.loss_mask for e in sequence]})
    trainer = SFTTrainer(model=resolve_path(args.model), args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[log.trl_callback()])
    memory.reset()
    trainer.train()
    return {**log.result(out_dir, trainer.model), "rows_kept": len(trainer.train_dataset)}


def worker(args, profile: bool = False) -> dict:
    """One sample: one side, one model, one data shape, in this process."""
    from alignkit.models.load import load_tokenizer

    total = harness.worker_total_steps(args)
    tokenizer = load_tokenizer(args.model)
    sequence = build_sequence(args, tokenizer, args.shape, total * args.batch)
    run = run_ours if args.side == "ours" else run_trl
    sample = harness.measure(args, run, sequence, tokenizer, total, profile)
    stats = batch_stats(sequence, args.batch, args.warmup)
    return {**sample, "tokens_per_s": stats["real_tokens"] / sample["time_s"], **stats}


# ----------------------------------------------------------------------------------------------------------
# driver


def profile_main(args) -> int:
    res, prof = harness.profile_one(args, worker)
    print(f"profile of one {args.side} step after {args.warmup} warm-up: {args.model}, {args.shape}, "
          f"batch {args.batch}, {args.threads} threads; step time over the timed steps {res['step_time_s']:.3f} s")
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
    print(f"SFT benchmark: alignkit vs TRL {versions['trl']} (transformers {versions['transformers']}, "
          f"torch {versions['torch']}), float32 on CPU, {args.threads} threads")
    print(f"batch {args.batch}, max_length {args.max_length}, AdamW lr {args.learning_rate} (TRL optim "
          f"{args.trl_optim}), gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} on both, "
          f"no packing, completion-only loss")
    harness.print_plan(args)

    samples = harness.interleaved_runs(args, os.path.abspath(__file__), shapes)
    harness.print_table_header("trn%")
    rows = []
    for model in args.models:
        for shape in shapes:
            first = samples[(model, shape, args.sides[0])][0]
            pad_pct = 100 * (1 - first["real_tokens"] / first["padded_tokens"])
            trained_pct = 100 * first["trained_tokens"] / first["real_tokens"]
            harness.print_side_rows(samples, args.sides, model, shape, pad_pct, trained_pct)
            if len(args.sides) == 2:
                # slack for float32: the two sides compute the same loss with different kernels
                problems = harness.same_work(samples, model, shape, loss_rel=2e-3, loss_abs=1e-3, grad_rel=5e-3)
                rows.append(harness.print_ratio_row(samples, model, shape, TARGET_SPEED, TARGET_MEMORY, problems))
    print("\ntok/s = real (non-pad) tokens / wall time of the timed steps; s/step = wall seconds per step; "
          "cpu s = process CPU seconds per step (all threads)")
    print("pad% = padding share of the batches; trn% = share of real tokens that are trained (responses)")
    print("peak MiB = peak RSS over the post-setup baseline (the memory target); abs MiB = absolute peak RSS")
    print("ratios: the median of paired runs (repeat r of each side, run back to back), with their range")
    harness.print_contention(samples, args.threads)
    return harness.finish(args, "sft", samples, rows, versions,
                          f"targets: ours >= {TARGET_SPEED}x TRL tokens/s and <= {TARGET_MEMORY:.1f}x its peak memory")


if __name__ == "__main__":
    sys.exit(main())
