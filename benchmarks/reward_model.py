"""Reward-model training step: alignkit (`alignkit.engine.loop.train` + `alignkit.methods.reward_model.reward_loss`)
against TRL's `RewardTrainer`, same model, same data, same settings.

Method (the same as benchmarks/sft.py, whose generic helpers this script imports):

- Every (model, data, side, repeat) runs in a fresh subprocess (this script re-invoked with --worker); the two
  sides are interleaved and alternate which goes first; the table shows the median of --repeats.
- `torch.set_num_threads(--threads)` (2), float32 on CPU, AdamW with the same lr / betas / eps / weight decay 0 /
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
- The first step's loss of both sides is compared. It must agree (to ~1e-4) when no sequence ends with the pad id:
  TRL's *ForSequenceClassification pooling reads the score at the rightmost token that is not the pad id, ours at
  the last real token through the attention mask. embedded:tiny has pad != EOS, so both read the final EOS.
  SmolLM2 has pad == EOS, so for every real pair (builtin, hh) TRL reads the token before the closing EOS and the
  first losses differ slightly: that is TRL's pooling, not different work, and the table says so instead of
  warning. (synthetic rows hold no special tokens, so they agree for SmolLM2 too.)
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
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sft as sft_bench  # noqa: E402  (generic helpers: memory, contention, quiet wait, steps, paths)

REPO = sft_bench.REPO
DEFAULT_HH = sft_bench.DEFAULT_HH
MODELS = sft_bench.MODELS
DATA = sft_bench.DATA
SIDES = sft_bench.SIDES
LAYOUTS = ("bucketed", "padded", "padding_free")
HEAD_SEED = 0  # torch.manual_seed before loading the model on both sides: the same new scalar head
TARGET_SPEED = 1.5  # ours >= 1.5x TRL tokens/s
TARGET_MEMORY = 1.0  # ours <= 1.0x TRL peak memory (delta over the post-setup baseline)

Memory = sft_bench.Memory
_mark = sft_bench._mark
_Done = sft_bench._Done
_checkpointing = sft_bench._checkpointing
steps_for = sft_bench.steps_for
warmup_for = sft_bench.warmup_for
hh_path = sft_bench.hh_path
resolved_shape = sft_bench.resolved_shape
wait_quiet = sft_bench.wait_quiet


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--data", nargs="+", choices=DATA, default=["builtin", "hh"])
    p.add_argument("--hh-path", default=DEFAULT_HH, help="HH-RLHF jsonl(.gz); relative paths are from the repo root")
    p.add_argument("--batch", type=int, default=8,
                   help="pairs per step on both sides (per_device_train_batch_size; 2x sequences)")
    p.add_argument("--max-length", type=int, default=512, help="longest prompt + response of each sequence")
    p.add_argument("--synthetic-length", type=int, default=0, help="tokens per synthetic sequence (0: max-length)")
    p.add_argument("--layout", choices=LAYOUTS, default="bucketed",
                   help="our batch layout (alignkit's batch_layout); TRL always pads to the longest sequence")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed steps in each subprocess (0: 2 for embedded:tiny, 1 for other models)")
    p.add_argument("--steps", type=int, default=0,
                   help="timed steps per subprocess (0: 20 for embedded:tiny, 2 for other models)")
    p.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per configuration (median)")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    p.add_argument("--trl-optim", default="adamw_torch",
                   help="TRL's optim; adamw_torch is torch.optim.AdamW as our engine uses it (TRL's own default "
                        "on torch>=2.8 is adamw_torch_fused)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0, help="which pairs, in which order")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, 1 warm-up + 1 timed step (tiny: 2 + 10), max_length 256: a look, not a result")
    p.add_argument("--profile", choices=SIDES,
                   help="instead of the comparison, run one side once in this process under torch.profiler "
                        "and print where a timed step's time goes")
    p.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    p.add_argument("--wait-quiet", type=float, default=0,
                   help="before each subprocess wait up to this many seconds for the machine to be idle "
                        "(others using < 10%% of its CPUs); for shared machines")
    p.add_argument("--json", help="also write the raw samples here")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--shape", choices=DATA, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_length = 1, min(args.max_length, 256)
    return args


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
        low = max(tokenizer.all_special_ids, default=2) + 1  # ordinary tokens only
        vocab = len(tokenizer)

        def ids(n):
            return [rng.randrange(low, vocab) for _ in range(n)]

        out = []
        for _ in range(needed):
            prompt = ids(half)
            out.append(RewardExample(prompt + ids(length - half), prompt + ids(length - half)))
        return out
    if shape == "builtin":
        pool, _ = tokenize_preferences(tokenizer, _builtin_pairs(), args.max_length)
        out = []
        while len(out) < needed:  # epochs of the small set, each in its own shuffled order
            rng.shuffle(pool)
            out += pool
        return out[:needed]
    from alignkit.data.io import load_rows

    path = hh_path(args)
    rows = load_rows(path, "preference")
    rng.shuffle(rows)
    out = []
    for start in range(0, len(rows), 256):
        examples, _ = tokenize_preferences(tokenizer, rows[start:start + 256], args.max_length)
        out += examples
        if len(out) >= needed:
            return out[:needed]
    if not out:
        raise SystemExit(f"{path}: no usable HH-RLHF pairs (every one was dropped at max_length)")
    while len(out) < needed:
        out += out
    return out[:needed]


def batch_stats(sequence: list, batch: int, first_step: int, layout: str) -> dict:
    """Real tokens of the steps from `first_step` on; the tokens TRL's padded batches compute, and ours."""
    from alignkit.ops.rewards import length_buckets

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


def ends_with_pad(sequence: list, pad_id: int) -> int:
    """How many sequences end with the pad id: there TRL's pad-id pooling reads an earlier token than ours."""
    return sum((e.chosen_ids[-1] == pad_id) + (e.rejected_ids[-1] == pad_id) for e in sequence)


# ----------------------------------------------------------------------------------------------------------
# the two sides; each returns after the last timed step with its timings


def load_model(args):
    import torch

    from alignkit.models.load import load_reward_model

    torch.manual_seed(HEAD_SEED)
    return load_reward_model(args.model, dtype="float32", device="cpu",
                             gradient_checkpointing=args.gradient_checkpointing and args.side == "ours")


def run_ours(args, sequence: list, tokenizer, total_steps: int, memory: Memory, profiler=None) -> dict:
    import tempfile

    import torch

    from alignkit.engine.loop import DataStream, TrainSettings, train
    from alignkit.methods.reward_model import collate_rewards, count_pairs, reward_loss

    model = load_model(args)
    for module in model.modules():  # what TRL's disable_dropout does (no-op for tiny and SmolLM2)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    out_dir = tempfile.mkdtemp(prefix="bench-rm-ours-")
    settings = TrainSettings(
        output_dir=out_dir, max_steps=total_steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=args.learning_rate, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, seed=args.seed, logging_steps=1,
        save_steps=0, progress=False,
    )
    # place the pairs where the engine's seeded permutation will read them, so it reads `sequence` in order
    order = DataStream(len(sequence), settings.seed).take(len(sequence))
    placed = [None] * len(sequence)
    for k, index in enumerate(order):
        placed[index] = sequence[k]
    pad_id = tokenizer.pad_token_id
    padding_free, bucketed = args.layout == "padding_free", args.layout == "bucketed"
    times, losses, peaks = [], [], []

    def on_log(record):
        times.append(_mark())
        losses.append(record["loss"])
        if profiler is not None:
            profiler.step()
        if record["step"] >= total_steps:
            peaks.append(memory.peak())
            raise _Done

    memory.reset()
    try:
        train(model, placed, lambda items: collate_rewards(items, pad_id, padding_free=padding_free),
              lambda m, b: reward_loss(m, b, 0.0, bucketed=bucketed), settings,
              count_fn=count_pairs, device="cpu", method="reward_model", on_log=on_log)
    except _Done:
        pass
    delta, absolute = peaks[-1] if peaks else memory.peak()
    return {"times": times, "losses": losses, "peak_bytes": delta, "abs_peak_bytes": absolute, "out_dir": out_dir,
            "checkpointing": _checkpointing(model)}


def run_trl(args, sequence: list, tokenizer, total_steps: int, memory: Memory, profiler=None) -> dict:
    import tempfile
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    warnings.filterwarnings("ignore")
    times, losses, peaks = [], [], []

    class Timer(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            times.append(_mark())
            if profiler is not None:
                profiler.step()
            if state.global_step >= total_steps:
                peaks.append(memory.peak())

        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model = load_model(args)
    model.config.pad_token_id = tokenizer.pad_token_id  # SeqCls pooling finds the last token by it (TRL sets it too)
    out_dir = tempfile.mkdtemp(prefix="bench-rm-trl-")
    config = RewardConfig(
        output_dir=out_dir, max_steps=total_steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=args.learning_rate, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, optim=args.trl_optim,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=args.seed, data_seed=args.seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        bf16=False, fp16=False, dataloader_num_workers=0, train_sampling_strategy="sequential",
        max_length=None, disable_dropout=True, center_rewards_coefficient=None,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
    )
    dataset = Dataset.from_dict({"chosen_ids": [e.chosen_ids for e in sequence],
                                 "rejected_ids": [e.rejected_ids for e in sequence]})
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[Timer()])
    if len(trainer.train_dataset) != len(sequence):
        raise RuntimeError(f"TRL kept {len(trainer.train_dataset)} of {len(sequence)} pairs")
    memory.reset()
    trainer.train()
    delta, absolute = peaks[-1] if peaks else memory.peak()
    return {"times": times, "losses": losses, "peak_bytes": delta, "abs_peak_bytes": absolute, "out_dir": out_dir,
            "checkpointing": _checkpointing(trainer.model)}


def worker(args, profile: bool = False) -> dict:
    import shutil

    import torch

    from alignkit.models.load import load_tokenizer

    torch.set_num_threads(args.threads)
    steps = steps_for(args, args.model)
    args.warmup = warmup_for(args, args.model)
    total = args.warmup + steps
    tokenizer = load_tokenizer(args.model)
    sequence = build_sequence(args, tokenizer, args.shape, total * args.batch)
    memory = Memory()
    run = run_ours if args.side == "ours" else run_trl
    profiler = None
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile, schedule

        # skip the warm-up steps, then record one step
        profiler = torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                                 schedule=schedule(wait=max(args.warmup - 1, 0), warmup=1, active=1, repeat=1))
        profiler.__enter__()
    result = run(args, sequence, tokenizer, total, memory, profiler)
    if profiler is not None:
        profiler.__exit__(None, None, None)
        result["profiler"] = profiler
    shutil.rmtree(result.pop("out_dir"), ignore_errors=True)
    times = result.pop("times")
    if len(times) < total:
        raise RuntimeError(f"{args.side}: only {len(times)} of {total} steps were timed")
    if args.warmup < 1:
        raise RuntimeError("--warmup must be at least 1 (the first step's end starts the clock)")
    elapsed = times[total - 1][0] - times[args.warmup - 1][0]
    cpu = times[total - 1][1] - times[args.warmup - 1][1]
    # CPU the rest of the machine used while we were timed, as a share of all its CPUs: contention
    others = times[total - 1][2] - times[args.warmup - 1][2] - cpu
    other_load = max(others, 0.0) / (elapsed * (os.cpu_count() or 1))
    stats = batch_stats(sequence, args.batch, args.warmup, args.layout)
    step_times = [b[0] - a[0] for a, b in zip(times[args.warmup - 1:total - 1], times[args.warmup:total])]
    first_batch = sequence[:args.batch]
    return {"side": args.side, "model": args.model, "shape": args.shape, "layout": args.layout, "steps": steps,
            "time_s": elapsed, "step_time_s": elapsed / steps, "cpu_step_s": cpu / steps, "step_times": step_times,
            "other_load": other_load, "tokens_per_s": stats["real_tokens"] / elapsed, **stats, **result,
            "first_loss": result["losses"][0] if result["losses"] else None,
            "first_batch_pad_ends": ends_with_pad(first_batch, tokenizer.pad_token_id)}


# ----------------------------------------------------------------------------------------------------------
# driver


def run_one(args, side: str, model: str, shape: str) -> dict:
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--side", side, "--model", model,
           "--shape", shape, "--hh-path", args.hh_path, "--batch", str(args.batch),
           "--max-length", str(args.max_length), "--synthetic-length", str(args.synthetic_length),
           "--layout", args.layout,
           "--warmup", str(warmup_for(args, model)), "--steps", str(steps_for(args, model)),
           "--learning-rate", str(args.learning_rate), "--trl-optim", args.trl_optim,
           "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    threads = str(args.threads)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(REPO, "src"), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"worker {side}/{model}/{shape} took longer than --timeout {args.timeout} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"worker {side}/{model}/{shape} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["checkpointing"] != args.gradient_checkpointing:
        raise SystemExit(f"worker {side}/{model}/{shape}: gradient checkpointing is "
                         f"{'on' if result['checkpointing'] else 'off'}, asked for the opposite")
    return result


def profile_main(args) -> int:
    args.side, args.model, args.shape = args.profile, args.models[0], resolved_shape(args, args.data[0])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    res = worker(args, profile=True)
    prof = res.pop("profiler")
    print(f"profile of one {args.side} step after {args.warmup} warm-up: {args.model}, {args.shape}, "
          f"batch {args.batch} pairs, layout {args.layout if args.side == 'ours' else 'padded (TRL)'}, "
          f"{args.threads} threads; step time over the timed steps {res['step_time_s']:.3f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                             max_name_column_width=40))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.profile:
        return profile_main(args)

    import torch

    try:
        import transformers
        import trl
    except ImportError as e:
        raise SystemExit(f"the benchmark needs TRL: pip install 'alignkit[bench]' ({e})") from None
    shapes = list(dict.fromkeys(resolved_shape(args, s) for s in args.data))
    if "hh" in args.data and "hh" not in shapes:
        print(f"note: {hh_path(args)} not found: the hh shape falls back to synthetic fixed-length data")
    print(f"Reward-model benchmark: alignkit vs TRL {trl.__version__} RewardTrainer (transformers "
          f"{transformers.__version__}, torch {torch.__version__}), float32 on CPU, {args.threads} threads")
    print(f"batch {args.batch} pairs ({2 * args.batch} sequences), max_length {args.max_length}, AdamW lr "
          f"{args.learning_rate} (TRL optim {args.trl_optim}), gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'} on both, Bradley-Terry loss, our layout {args.layout}")
    plan = ", ".join(f"{m}: {warmup_for(args, m)} + {steps_for(args, m)}" for m in args.models)
    print(f"{args.repeats} repeat(s) per configuration, each a fresh process, sides interleaved; warm-up + timed "
          f"steps: {plan}\n", flush=True)

    samples: dict[tuple[str, str, str], list[dict]] = {}
    started = time.time()
    for model in args.models:
        for shape in shapes:
            for r in range(args.repeats):
                order = args.sides if r % 2 == 0 else args.sides[::-1]
                for side in order:
                    res = run_one(args, side, model, shape)
                    samples.setdefault((model, shape, side), []).append(res)
                    print(f"  {model:32s} {shape:9s} {side:4s} repeat {r + 1}: {res['tokens_per_s']:9.1f} tok/s  "
                          f"{res['step_time_s']:7.3f} s/step  {res['cpu_step_s']:6.2f} cpu s  "
                          f"{res['peak_bytes'] / 2**20:8.1f} MiB peak  "
                          f"{res['abs_peak_bytes'] / 2**20:8.1f} MiB abs  loss[0] {res['first_loss']:.5f}  "
                          f"others {res['other_load']:.0%}",
                          flush=True)

    def med(key, model, shape, side):
        return statistics.median(s[key] for s in samples[(model, shape, side)])

    print(f"\n(all runs took {time.time() - started:.0f} s)\n")
    header = (f"{'model':32s} {'data':9s} {'side':8s} {'tok/s':>9s} {'s/step':>8s} {'cpu s':>7s} {'peak MiB':>9s} "
              f"{'abs MiB':>8s} {'pad%':>5s} {'ours%':>5s} {'speed':>7s} {'memory':>7s}  result")
    print(header)
    print("-" * len(header))
    all_pass = True
    notes = []
    for model in args.models:
        for shape in shapes:
            first = samples[(model, shape, args.sides[0])][0]
            pad_pct = 100 * (1 - first["real_tokens"] / first["padded_tokens"])
            our_pct = 100 * (1 - first["real_tokens"] / first["our_tokens"])
            row = {}
            for side in args.sides:
                row[side] = {k: med(k, model, shape, side) for k in
                             ("tokens_per_s", "step_time_s", "cpu_step_s", "peak_bytes", "abs_peak_bytes")}
                v = row[side]
                print(f"{model:32s} {shape:9s} {side:8s} {v['tokens_per_s']:9.1f} {v['step_time_s']:8.3f} "
                      f"{v['cpu_step_s']:7.2f} {v['peak_bytes'] / 2**20:9.1f} {v['abs_peak_bytes'] / 2**20:8.1f} "
                      f"{pad_pct:5.1f} {our_pct:5.1f}")
            if len(row) == 2:
                ours, theirs = row["ours"], row["trl"]
                speed = ours["tokens_per_s"] / theirs["tokens_per_s"]
                mem = ours["peak_bytes"] / theirs["peak_bytes"] if theirs["peak_bytes"] else float("inf")
                ok_s, ok_m = speed >= TARGET_SPEED, mem <= TARGET_MEMORY
                all_pass &= ok_s and ok_m
                verdict = "PASS" if ok_s and ok_m else "FAIL (" + ", ".join(
                    x for x, bad in (("speed", not ok_s), ("memory", not ok_m)) if bad) + ")"
                abs_ratio = ours["abs_peak_bytes"] / theirs["abs_peak_bytes"]
                cpu_ratio = theirs["cpu_step_s"] / ours["cpu_step_s"]
                print(f"{'':32s} {shape:9s} {'ours/TRL':8s} {'':9s} {'':8s} {'':7s} {'':9s} {'':8s} {'':5s} {'':5s} "
                      f"{speed:6.2f}x {mem:6.2f}x  {verdict}   (targets >= {TARGET_SPEED}x, <= {TARGET_MEMORY:.1f}x; "
                      f"CPU-time speed {cpu_ratio:.2f}x, abs peak {abs_ratio:.2f}x)")
                l_ours = statistics.median(s["first_loss"] for s in samples[(model, shape, "ours")])
                l_trl = statistics.median(s["first_loss"] for s in samples[(model, shape, "trl")])
                diff = l_ours - l_trl
                pad_ends = first["first_batch_pad_ends"]
                if abs(diff) > 1e-4 + 1e-4 * abs(l_trl):
                    if pad_ends:
                        notes.append(f"{model} {shape}: first-step losses differ by {diff:+.2e} (ours {l_ours:.5f}, "
                                     f"TRL {l_trl:.5f}): expected, {pad_ends} of the first batch's "
                                     f"{2 * args.batch} sequences end with EOS == pad, where TRL's pad-id pooling "
                                     "reads the token before it")
                    else:
                        print(f"  WARNING: first-step losses differ (ours {l_ours:.5f}, TRL {l_trl:.5f}, "
                              f"{diff:+.2e}): the two sides are not doing the same work")
                else:
                    notes.append(f"{model} {shape}: first-step losses agree (ours {l_ours:.6f}, TRL {l_trl:.6f}, "
                                 f"{diff:+.1e})")
    print("\ntok/s = real (non-pad) chosen + rejected tokens / wall time of the timed steps; s/step = wall seconds "
          "per step; cpu s = process CPU seconds per step (all threads)")
    print(f"pad% = padding share of TRL's padded batches; ours% = padding share our layout ({args.layout}) computes")
    print("peak MiB = peak RSS over the post-setup baseline (the memory target); abs MiB = absolute peak RSS")
    for note in notes:
        print(note)
    loads = [s["other_load"] for v in samples.values() for s in v]
    print(f"other processes used {statistics.median(loads):.0%} (median; max {max(loads):.0%}) of the machine's "
          f"{os.cpu_count()} CPUs while steps were timed")
    if max(loads) > 0.1:
        print("WARNING: other work competed for the CPU during timed steps, so times are not clean: with "
              f"{args.threads} threads a parallel op waits for a descheduled thread at every barrier; "
              "rerun on a quiet machine (--wait-quiet helps on a shared one)")
    print(f"targets: ours >= {TARGET_SPEED}x TRL tokens/s and <= {TARGET_MEMORY:.1f}x its peak memory")
    if len(args.sides) == 2:
        print("OVERALL: " + ("PASS" if all_pass else "FAIL"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([s for v in samples.values() for s in v], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
