"""DPO training step: alignkit (`alignkit.engine.loop.train` + `alignkit.methods.dpo.dpo_loss`) against TRL's
`DPOTrainer`, same model, same data, same settings, for each of our reference strategies.

Method (the same as benchmarks/sft.py and benchmarks/reward_model.py; all run on the shared benchmarks/harness.py):

- Every (model, data, reference, side, repeat) runs in a fresh subprocess (this script re-invoked with --worker);
  the two sides are interleaved and alternate which goes first; the table shows the median of --repeats.
- `torch.set_num_threads(--threads)` (2), float32 on CPU, fused AdamW on both sides (TRL's default
  `adamw_torch_fused`) with the same lr / betas / eps / weight decay 0 /
  grad clipping 1.0 / linear schedule with no warmup, gradient checkpointing on both sides or neither
  (--gradient-checkpointing; TRL 1.16's configs default it to *on*, so it is always passed explicitly), the sigmoid
  DPO loss -log sigmoid(beta * h) with beta 0.1, no label smoothing, no RPO/NLL term, averaged over the pairs on both
  sides (ours: the summed loss / the step's pairs; TRL: `per_sequence_loss.mean()`), dropout off on both sides
  (TRL's `disable_dropout=True`; ours zeroes every nn.Dropout the same way: embedded:tiny and SmolLM2 have none,
  their attention_dropout is 0, and the LoRA adapters get lora_dropout 0 on both sides).
- The reference, per --refs (one table section each; the precomputation is setup on both sides, never timed):
    precomputed  ours: `precompute_reference` fills every pair's reference log-probs before training from a
                 separately loaded copy of the model (as `train_dpo` does), which is then dropped, so only the policy
                 is in memory while training. TRL: `precompute_ref_log_probs=True` with `ref_model=None`, which
                 computes them in `DPOTrainer.__init__` with the policy itself (the same weights) and never loads a
                 reference model. Target: ours >= 1.5x TRL tokens/s and <= 0.8x its peak memory.
    copy         a frozen second model on both sides: ours `Reference("copy", ref_model)`; TRL gets the same model
                 loaded the same way as `ref_model` (and patches it with its fused LM head). Each step runs the
                 reference forward under no_grad on the step's batch. Target: ours >= 1.2x tokens/s, <= 1.0x memory.
    adapter      (optional, LoRA r 16, alpha 32, all linear layers but lm_head, on both sides): the reference is the
                 policy with its adapter disabled. Ours `load_policy(lora=...)` + `Reference("adapter")`; TRL gets the
                 plain model and the same `peft.LoraConfig` as `peft_config` with `ref_model=None`, so it wraps the
                 model itself and computes the reference under `use_adapter(model, None)` (adapters disabled). (Handed
                 an already wrapped PeftModel, TRL 1.16 would instead add a second "ref" adapter, a copy of the
                 first, and run it.) No target: printed for information, not part of the verdict.
- Same model: both sides load it with `alignkit.models.load.load_policy` (float32, CPU) right after
  `torch.manual_seed(--seed)`; TRL gets the model object (and mirrors the tokenizer's pad id onto its config).
- Same pairs in the same batches: each worker tokenizes the data with alignkit
  (`alignkit.data.tokenize.tokenize_rows(..., "preference", max_length, max_prompt_length)`: prompt and each
  response tokenized on their own, every response ending with EOS, BOS exactly once, long pairs cut prompt-first
  from the left rather than dropped) and lays the pairs out in one fixed order. Our engine gets them placed so its
  seeded `DataStream` reads them in that order; TRL gets the very same ids as a dataset of `prompt_ids`,
  `chosen_ids`, `rejected_ids` (the columns its `DataCollatorForPreference` reads) with
  `train_sampling_strategy="sequential"`. TRL 1.16's DPOTrainer has no path for an already tokenized dataset: its
  `_prepare_dataset` always runs `extract_prompt` (which fails without text `chosen`/`rejected` columns), appends
  EOS to plain-text rows and tokenizes the text again (and its `evaluate` comment that it "skips datasets that are
  already tokenized" does not hold in this version). The benchmark therefore uses a one-method subclass whose
  `_prepare_dataset` returns the dataset unchanged: setup only, the training step is TRL's own. `max_length=None`
  turns off the collator's per-sequence truncation (keep_start) and the "prompt fills max_length" filter, so no
  pair is dropped or cut differently (the pairs already fit --max-length); the worker checks that TRL kept every
  pair. A batch is --batch pairs: 2 x --batch sequences, the chosen ones then the rejected ones, in one forward
  pass on both sides (for `copy`/`adapter`, one more no-grad forward for the reference).
- Loss check: at the first step the policy equals its reference, so h = 0 and both sides' first loss is log 2 =
  0.693147 whatever the data: that only shows the reference is right. The table notes therefore also compare the
  first step's mean summed log-probs of the chosen and rejected responses (`logps/chosen`, `logps/rejected`, logged
  by both sides under the same names), which do depend on the tokens and the masks; the first step's gradient
  norm before clipping (logged by both), which sees the gradient's scale (beta, the averaging over pairs), so
  clipping at 1.0 acts alike; and the second step's loss (after one optimizer step, ~ log 2 minus the first
  update's gain), which depends on the update being the same. Tolerances are float32 ones: the two sides compute
  the log-probs with different kernels (ours: `ops.logprobs`, only response positions; TRL: its chunked fused LM
  head). With `harness.same_work`'s checks (the same fused AdamW, dtype, threads, trainable parameters, pairs
  kept), a configuration that fails any of them prints FAIL and why instead of a ratio, and the script exits 1.
- Warm-up steps (--warmup) are excluded: the time is from the end of the last warm-up step to the end of the last
  timed step (both loops whole: collate, reference forward, policy forward, backward, clipping, optimizer,
  schedule, per-step logging). Defaults as in benchmarks/sft.py: embedded:tiny 2 warm-up + 20 timed steps; other
  models 1 + 2. Ours logs metrics.jsonl every step (`logging_steps=1`), TRL logs every step too; neither saves
  checkpoints (ours is stopped from its on_log hook right after the last timed step, before its final save).
- tokens/s counts real (non-pad) tokens of the chosen and rejected sequences (prompt + response) of the timed
  steps, the same count on both sides; a reference forward is not counted again.
- Peak memory and contention exactly as benchmarks/sft.py: peak RSS over the post-setup baseline (VmHWM after
  /proc/self/clear_refs; "abs MiB" is the absolute peak), and "others" is the CPU share the rest of the machine
  used while steps were timed; --wait-quiet N waits for an idle machine first. One addition: both sides call
  glibc's `malloc_trim(0)` right before the baseline is read, so memory that setup freed (our dropped reference
  model, either side's precompute activations) goes back to the kernel instead of being reused by training
  without showing in the delta.
- On a shared machine where another process keeps one of the 2 cores busy for long (so --wait-quiet never sees it
  idle), 2 threads stall at every parallel op's barrier and steps become 10-100x slower, differently from run to
  run (seen here: a tiny-model step 0.05 s on an idle machine, 0.3-15 s under such load); --threads 1 then gives
  stable times and ratios (both sides time-sliced the same way), at the cost of absolute speed.

TRL settings that matter here (trl 1.16 `DPOConfig`), all set explicitly:
  gradient_checkpointing  defaults to True in every TRL config (TrainingArguments: False): set to --gradient-
                          checkpointing (off by default) on both sides
  bf16                    defaults to True unless fp16: set False (float32 on both sides)
  learning_rate           defaults to 1e-6: set to --learning-rate on both sides
  max_length              defaults to 1024, with keep_start truncation per sequence in the collator: None
  precompute_ref_log_probs  True for --refs precomputed only (`precompute_ref_batch_size` None: the train batch)
  loss_type / beta / label_smoothing  ["sigmoid"] / 0.1 / 0.0 (ours: sigmoid, 0.1, 0.0, rpo_alpha 0)
  disable_dropout         True (the default)
  padding_free            False; in 1.16 True only warns and falls back to padding ("temporarily unavailable")
  pad_to_multiple_of      None ("auto" is None off Neuron)
  sync_ref_model, use_weighting, ld_alpha, f_divergence_type  off / off / None / reverse_kl (the plain DPO loss)
  use_logits_to_keep      does not exist in 1.16: the fused LM head below replaced it
  activation_offloading   False
What TRL does per step (trl 1.16): `DataCollatorForPreference` pads the 2B sequences to the longest one; the
policy forward runs the whole padded batch through the transformer, then the fused LM head
(`add_fused_lm_head`), which on CPU (no Triton) projects *every* position, prompt and pad included, through the
vocabulary in tiles of 4096 tokens x 32768 vocabulary columns and computes per token the log-prob plus entropy,
mean logit and top-1 for its metrics (on CUDA it projects only the label positions); for copy/adapter the reference
forward does the same (log-probs only) under no_grad; then about ten `.item()` metric reads. Ours (`--layout
bucketed`, alignkit's default `batch_layout`) runs the same right-padded batch in length groups that waste little
on padding and projects only response positions (`ops.logprobs`); the reference forward (copy/adapter) uses the
same groups. `--layout padded` runs one padded batch like TRL; `--layout padding_free` packs all 2B sequences into
one row (on CPU its attention costs (total tokens)^2, so it is for flash-attention GPUs). "pad%" is the padding
share of TRL's (and padded) batches, "ours%" the share our layout computes.

Data shapes (--data), the same pairs as benchmarks/reward_model.py:
  builtin    pairs made from alignkit's src/alignkit/data/builtin/sft.jsonl (short realistic chats): the chosen
             response is the chat's last assistant turn, the rejected one the same turn cut to half its characters
             (`reward_model._builtin_pairs`); alignkit ships no builtin preference set
  hh         real HH-RLHF pairs (--hh-path, default ../shared/data/hh-rlhf-harmless-base/test.jsonl.gz from the
             repo root) with their implicit prompts made explicit (`alignkit.data.io.load_rows(path, "preference")`,
             then `explicit_prompt` inside `tokenize_rows`); falls back to `synthetic` when the file is absent
  synthetic  fixed-length random ordinary tokens: a shared half-length prompt, then different random responses, so
             chosen and rejected are both --synthetic-length long (default max_length)

    python benchmarks/dpo.py                          # tiny + SmolLM2, builtin + hh, precomputed + copy, 3 repeats
    python benchmarks/dpo.py --quick                  # a look (1 repeat, max_length 256: not a result)
    python benchmarks/dpo.py --models embedded:tiny --refs precomputed copy adapter
    python benchmarks/dpo.py --models embedded:smollm2-135m-instruct --data builtin --repeats 2 --wait-quiet 60
    python benchmarks/dpo.py --layout padded          # ours without length bucketing
    python benchmarks/dpo.py --profile ours --refs copy --models embedded:smollm2-135m-instruct --data hh

Needs TRL (`pip install 'alignkit[bench]'`) and, for --refs adapter, peft; written against trl 1.16.0 on
transformers 5.24 and peft 0.21.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also when imported from elsewhere
import harness  # noqa: E402  (options, worker plumbing, driver and table shared with sft.py, reward_model.py)

LAYOUTS = ("bucketed", "padded", "padding_free")
REFS = ("precomputed", "copy", "adapter")
BETA = 0.1
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}  # both sides, --refs adapter
# ours >= speed x TRL tokens/s and <= memory x TRL peak memory (delta over the post-setup baseline); None: no target
TARGETS = {"precomputed": (1.5, 0.8), "copy": (1.2, 1.0), "adapter": None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_options(p)
    p.add_argument("--batch", type=int, default=8,
                   help="pairs per step on both sides (per_device_train_batch_size; 2x sequences)")
    p.add_argument("--max-length", type=int, default=512, help="longest prompt + response of each sequence")
    p.add_argument("--max-prompt-length", type=int, default=0,
                   help="cut prompts (from the left) to this many tokens first (0: only max-length applies)")
    p.add_argument("--synthetic-length", type=int, default=0, help="tokens per synthetic sequence (0: max-length)")
    p.add_argument("--layout", choices=LAYOUTS, default="bucketed",
                   help="our batch layout (alignkit's batch_layout); TRL always pads to the longest sequence")
    p.add_argument("--refs", nargs="+", choices=REFS, default=["precomputed", "copy"],
                   help="reference strategies to compare, each against TRL's equivalent")
    harness.add_run_options(p, unit="pairs")
    p.add_argument("--ref", choices=REFS, help=argparse.SUPPRESS)  # internal: the worker's strategy
    return harness.parse(p, argv)


# ----------------------------------------------------------------------------------------------------------
# data: the same pairs, in the same order, in every worker


def build_sequence(args, tokenizer, shape: str, needed: int) -> list:
    """`needed` TokenizedPairs in training order (step k's batch is pairs k*B .. k*B+B-1)."""
    import random
    import warnings

    from alignkit.data.tokenize import TokenizedPair, tokenize_rows

    rng = random.Random(args.seed)
    limits = {"max_length": args.max_length, "max_prompt_length": args.max_prompt_length or None}
    if shape == "synthetic":
        length = args.synthetic_length or args.max_length
        half = length // 2
        return [TokenizedPair(harness.random_ids(rng, tokenizer, half),
                              harness.random_ids(rng, tokenizer, length - half),
                              harness.random_ids(rng, tokenizer, length - half)) for _ in range(needed)]
    if shape == "builtin":
        from reward_model import _builtin_pairs  # the reward-model benchmark's pairs

        pool = tokenize_rows(tokenizer, _builtin_pairs(), "preference", **limits)
        return harness.in_epochs(pool, needed, rng)
    from alignkit.data.io import load_rows

    path = harness.hh_path(args)
    rows = load_rows(path, "preference")
    rng.shuffle(rows)

    def tokenize(chunk):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a dropped pair is counted by tokenize_in_chunks' top-up
            return tokenize_rows(tokenizer, chunk, "preference", **limits)

    return harness.tokenize_in_chunks(rows, tokenize, needed, path, "every one was dropped at max_length")


def lengths_of(pairs: list) -> list[int]:
    """Sequence lengths of a batch in its row order: the chosen sequences, then the rejected ones."""
    return ([len(p.prompt_ids) + len(p.chosen_ids) for p in pairs]
            + [len(p.prompt_ids) + len(p.rejected_ids) for p in pairs])


def batch_stats(sequence: list, batch: int, first_step: int, layout: str) -> dict:
    """Real tokens of the steps from `first_step` on; the tokens TRL's padded batches compute, and ours."""
    from alignkit.data.collate import length_buckets

    real = padded = ours = response = 0
    for start in range(first_step * batch, len(sequence), batch):
        pairs = sequence[start:start + batch]
        lengths = lengths_of(pairs)
        real += sum(lengths)
        response += sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
        padded += len(lengths) * max(lengths)
        if layout == "padded":
            ours += len(lengths) * max(lengths)
        elif layout == "bucketed":
            ours += sum(lengths[g[0]] * len(g) for g in length_buckets(lengths))
        else:
            ours += sum(lengths)
    return {"real_tokens": real, "padded_tokens": padded, "our_tokens": ours, "response_tokens": response}


# ----------------------------------------------------------------------------------------------------------
# the two sides; each returns after the last timed step with its timings (harness.StepLog.result)


def release_freed_memory() -> None:
    """glibc's malloc_trim(0): hand freed heap pages back to the kernel before the peak-RSS baseline is read, so
    training cannot reuse pages setup freed without them counting (no-op off glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_model(args, lora: dict | None = None, checkpointing: bool = False):
    """The policy (or the frozen reference) both sides train from, seeded the same way."""
    import torch

    from alignkit.models.load import load_policy

    torch.manual_seed(args.seed)
    model = load_policy(args.model, dtype="float32", device="cpu", lora=lora, gradient_checkpointing=checkpointing)
    for module in model.modules():  # what TRL's disable_dropout does (no-op for tiny and SmolLM2)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def load_reference(args):
    model = load_model(args).eval()
    model.requires_grad_(False)
    return model


def run_ours(args, sequence: list, tokenizer, total_steps: int, memory: harness.Memory, profiler=None) -> dict:
    from alignkit.methods.dpo import DPOConfig, LikelihoodWatch, dpo_loss
    from alignkit.methods.pairs import DPOExample, collate_dpo, count_pairs
    from alignkit.models.reference import Reference, precompute_reference

    config = DPOConfig(dataset_name="benchmark", loss_type="sigmoid", beta=BETA, label_smoothing=0.0, rpo_alpha=0.0,
                       ref=args.ref, batch_layout=args.layout, gradient_checkpointing=args.gradient_checkpointing)
    pad_id = tokenizer.pad_token_id
    padding_free, bucketed = args.layout == "padding_free", args.layout == "bucketed"
    examples = [DPOExample(p) for p in sequence]
    # as train_dpo: the reference first (and for precomputed, gone before the policy is loaded)
    reference_model = load_reference(args) if args.ref in ("copy", "precomputed") else None
    if args.ref == "precomputed":
        precompute_reference(examples, reference_model, pad_id, args.batch)
        reference_model = None
    reference = Reference(args.ref, reference_model, bucketed=bucketed)
    model = load_model(args, lora=LORA if args.ref == "adapter" else None, checkpointing=args.gradient_checkpointing)
    watch = LikelihoodWatch()
    first_metrics: list[dict] = []

    def step(m, batch):
        loss, metrics = dpo_loss(m, batch, reference, config, bucketed)
        watch(metrics)
        if not first_metrics:
            first_metrics.append(metrics)
        return loss, metrics

    release_freed_memory()
    result = harness.train_ours(args, model, examples,
                                lambda items: collate_dpo(items, pad_id, padding_free), step, count_pairs, "dpo",
                                total_steps, memory, profiler)
    result["checkpointing"] = harness.checkpointing(model.get_base_model() if hasattr(model, "get_base_model")
                                                    else model)
    return {**result, "first_metrics": first_metrics[0] if first_metrics else {}, "rows_kept": len(examples)}


def run_trl(args, sequence: list, tokenizer, total_steps: int, memory: harness.Memory, profiler=None) -> dict:
    import tempfile
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    warnings.filterwarnings("ignore")

    class PreTokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on a dataset that already holds prompt_ids / chosen_ids / rejected_ids (see the docstring)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    log = harness.StepLog(memory, total_steps, profiler)
    first_metrics: list[dict] = []

    class Metrics(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "logps/chosen" in logs and not first_metrics:
                first_metrics.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    ref_model = load_reference(args) if args.ref == "copy" else None
    model = load_model(args)
    peft_config = None
    if args.ref == "adapter":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    out_dir = tempfile.mkdtemp(prefix="bench-dpo-trl-")
    config = DPOConfig(
        **harness.trl_settings(args, out_dir, total_steps),
        max_length=None, padding_free=False, pad_to_multiple_of=None, disable_dropout=True,
        precompute_ref_log_probs=args.ref == "precomputed", loss_type=["sigmoid"], beta=BETA, label_smoothing=0.0,
        sync_ref_model=False, use_weighting=False, ld_alpha=None, f_divergence_type="reverse_kl",
        activation_offloading=False,
    )
    dataset = Dataset.from_dict({"prompt_ids": [p.prompt_ids for p in sequence],
                                 "chosen_ids": [p.chosen_ids for p in sequence],
                                 "rejected_ids": [p.rejected_ids for p in sequence]})
    trainer = PreTokenizedDPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                                     processing_class=tokenizer, peft_config=peft_config,
                                     callbacks=[log.trl_callback(), Metrics()])
    if (trainer.ref_model is None) != (args.ref != "copy"):
        raise RuntimeError(f"TRL's reference model is {trainer.ref_model!r} for --ref {args.ref}")
    release_freed_memory()
    memory.reset()
    trainer.train()
    trained = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    return {**log.result(out_dir, trained), "first_metrics": first_metrics[0] if first_metrics else {},
            "rows_kept": len(trainer.train_dataset)}


def worker(args, profile: bool = False) -> dict:
    """One sample: one side, one model, one data shape, one reference strategy, in this process."""
    from alignkit.models.load import load_tokenizer

    total = harness.worker_total_steps(args)
    tokenizer = load_tokenizer(args.model)
    sequence = build_sequence(args, tokenizer, args.shape, total * args.batch)
    run = run_ours if args.side == "ours" else run_trl
    sample = harness.measure(args, run, sequence, tokenizer, total, profile)
    stats = batch_stats(sequence, args.batch, args.warmup, args.layout)
    metrics = sample.pop("first_metrics")
    losses = sample["losses"]
    return {**sample, "ref": args.ref, "layout": args.layout, "tokens_per_s": stats["real_tokens"] / sample["time_s"],
            **stats, "first_logps_chosen": metrics.get("logps/chosen"),
            "first_logps_rejected": metrics.get("logps/rejected"),
            "second_loss": losses[1] if len(losses) > 1 else None}


# ----------------------------------------------------------------------------------------------------------
# driver


def profile_main(args) -> int:
    args.ref = args.refs[0]
    res, prof = harness.profile_one(args, worker)
    print(f"profile of one {args.side} step after {args.warmup} warm-up: {args.model}, {args.shape}, ref "
          f"{args.ref}, batch {args.batch} pairs, layout {args.layout if args.side == 'ours' else 'padded (TRL)'}, "
          f"{args.threads} threads; step time over the timed steps {res['step_time_s']:.3f} s")
    harness.print_profile(prof)
    return 0


def check_agreement(samples: dict, model: str, shape: str) -> tuple[str, bool]:
    """A note comparing the sides' first-step loss and log-probs and second-step loss; whether they agree."""
    l_ours, l_trl = harness.first_losses(samples, model, shape)
    parts, agree = [f"loss[0] ours {l_ours:.6f} TRL {l_trl:.6f}"], abs(l_ours - l_trl) <= 1e-4
    for key, name, rel, abs_tol in (("first_logps_chosen", "logps/chosen[0]", 1e-4, 1e-3),
                                    ("first_logps_rejected", "logps/rejected[0]", 1e-4, 1e-3),
                                    ("second_loss", "loss[1]", 2e-3, 2e-4)):
        values = [samples[(model, shape, side)][0][key] for side in ("ours", "trl")]
        if None in values:
            continue
        ours, theirs = (harness.median(samples, key, model, shape, side) for side in ("ours", "trl"))
        ok = abs(ours - theirs) <= abs_tol + rel * abs(theirs)
        agree &= ok
        digits = 6 if name.startswith("loss") else 5
        parts.append(f"{name} ours {ours:.{digits}f} TRL {theirs:.{digits}f}" + ("" if ok else " (DIFFERENT)"))
    return ", ".join(parts), agree


def main(argv=None) -> int:
    import copy
    import time

    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.profile:
        return profile_main(args)

    versions = harness.import_versions()
    shapes = harness.resolved_shapes(args)
    print(f"DPO benchmark: alignkit vs TRL {versions['trl']} DPOTrainer (transformers {versions['transformers']}, "
          f"torch {versions['torch']}), float32 on CPU, {args.threads} threads")
    print(f"batch {args.batch} pairs ({2 * args.batch} sequences), max_length {args.max_length}, AdamW lr "
          f"{args.learning_rate} (TRL optim {args.trl_optim}), gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'} on both, sigmoid DPO loss beta {BETA}, our layout "
          f"{args.layout}, references: {', '.join(args.refs)}")
    harness.print_plan(args)

    started = time.time()
    by_ref: dict[str, dict] = {ref: {} for ref in args.refs}
    for model in args.models:
        for ref in args.refs:
            print(f"-- {model}, reference {ref}")
            one = copy.copy(args)
            one.models = [model]
            by_ref[ref].update(harness.interleaved_runs(
                one, os.path.abspath(__file__), shapes,
                ("--layout", args.layout, "--ref", ref, "--max-prompt-length", str(args.max_prompt_length)),
                loss_format=".6f"))
    print(f"(everything took {time.time() - started:.0f} s)\n")

    harness.print_table_header("ours%")
    rows = []
    notes = []
    for ref in args.refs:
        target = TARGETS[ref]
        samples = by_ref[ref]
        wording = (f"targets ours >= {target[0]}x TRL tokens/s, <= {target[1]:.1f}x its peak memory" if target
                   else "no target")
        print(f"reference {ref} ({wording})")
        for model in args.models:
            for shape in shapes:
                first = samples[(model, shape, args.sides[0])][0]
                pad_pct = 100 * (1 - first["real_tokens"] / first["padded_tokens"])
                our_pct = 100 * (1 - first["real_tokens"] / first["our_tokens"])
                harness.print_side_rows(samples, args.sides, model, shape, pad_pct, our_pct)
                if len(args.sides) != 2:
                    continue
                note, agree = check_agreement(samples, model, shape)
                notes.append(f"{ref:11s} {model} {shape}: {note}")
                # at step 1 the policy is its reference: loss log 2 on both; the gradient norm sees beta and the
                # averaging, so clipping acts alike; logps and loss[1] (check_agreement) see tokens and update
                problems = harness.same_work(samples, model, shape, loss_rel=0.0, loss_abs=1e-4, grad_rel=2e-3)
                problems += [] if agree else [f"log-probs or second-step loss differ ({note})"]
                row = harness.print_ratio_row(samples, model, shape, *(target or (None, None)), problems)
                rows.append({**row, "ref": ref, "shape": f"{shape}, ref {ref}"})
    print("\ntok/s = real (non-pad) chosen + rejected tokens (prompt + response) / wall time of the timed steps; "
          "s/step = wall seconds per step; cpu s = process CPU seconds per step (all threads)")
    print(f"pad% = padding share of TRL's padded batches; ours% = padding share our layout ({args.layout}) computes")
    print("peak MiB = peak RSS over the post-setup baseline (the memory target); abs MiB = absolute peak RSS")
    print("ratios: the median of paired runs (repeat r of each side, run back to back), with their range")
    print("first steps (medians; at step 1 the policy is its reference, so loss[0] = log 2 on both sides; the "
          "log-probs check the tokens, loss[1] the first update):")
    for note in notes:
        print("  " + note)
    everything = {(*k[:2], ref, k[2]): v for ref, samples in by_ref.items() for k, v in samples.items()}
    harness.print_contention(everything, args.threads)
    targets = "; ".join(f"targets ({ref}): ours >= {TARGETS[ref][0]}x TRL tokens/s and <= {TARGETS[ref][1]:.1f}x "
                        "its peak memory" for ref in args.refs if TARGETS[ref])
    return harness.finish(args, "dpo", everything, rows, versions, targets or "no targets for these references")


if __name__ == "__main__":
    sys.exit(main())
