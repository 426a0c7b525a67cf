"""SFT training step: alignkit (`alignkit.engine.loop.train` + `alignkit.methods.sft.sft_loss`) against TRL's
`SFTTrainer`, same model, same data, same settings.

Method (DESIGN.md, "Benchmarks: how we compare with TRL"):

- Every (model, data, side, repeat) runs in a fresh subprocess (this script re-invoked with --worker); the two
  sides are interleaved and alternate which goes first; the table shows the median of --repeats.
- `torch.set_num_threads(--threads)` (2), float32 on CPU, AdamW with the same lr / betas / eps / weight decay 0 /
  grad clipping 1.0 / linear schedule with no warmup, gradient checkpointing on both sides or neither
  (--gradient-checkpointing), no packing and no padding-free on either side, right padding to the longest row.
- Same examples in the same batches: each worker tokenizes the data with alignkit (`tokenize_sft`, which cuts
  prompts from the left and keeps responses) and lays the examples out in one fixed order. Our engine gets them
  placed so its seeded `DataStream` reads them in that order; TRL gets them as an already tokenized dataset
  (`input_ids` + `completion_mask`, `completion_only_loss=True`, `train_sampling_strategy="sequential"`), so its
  own labels are `-100` outside the completion mask and its `max_length` truncation is a no-op (rows already fit).
  TRL's own tokenization is not used: it truncates from the right only (`keep_start`) and its
  `assistant_only_loss` needs a chat template with `{% generation %}` markers, which SmolLM2's lacks; handing it
  our token ids is the only way both sides train on the very same tokens. Tokenizing is setup, never timed.
  The first step's loss of both sides is compared: a mismatch means they are not doing the same work.
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
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HH = os.path.join("..", "shared", "data", "hh-rlhf-harmless-base", "test.jsonl.gz")
MODELS = ("embedded:tiny", "embedded:smollm2-135m-instruct")
DATA = ("builtin", "hh", "synthetic")
SIDES = ("ours", "trl")
TARGET_SPEED = 1.3  # ours >= 1.3x TRL tokens/s
TARGET_MEMORY = 1.0  # ours <= 1.0x TRL peak memory (delta over the post-setup baseline)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--data", nargs="+", choices=DATA, default=["builtin", "hh"])
    p.add_argument("--hh-path", default=DEFAULT_HH, help="HH-RLHF jsonl(.gz); relative paths are from the repo root")
    p.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size on both sides")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--synthetic-length", type=int, default=0, help="tokens per synthetic example (0: max-length)")
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
    p.add_argument("--seed", type=int, default=0, help="which examples, in which order")
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


def _tiny(model: str) -> bool:
    return model.startswith("embedded:tiny")


def steps_for(args, model: str) -> int:
    if args.steps:
        return args.steps
    if args.quick:
        return 10 if _tiny(model) else 1
    return 20 if _tiny(model) else 2


def warmup_for(args, model: str) -> int:
    """The first step allocates AdamW's state and grows the allocator; after it a step costs what it will."""
    return args.warmup or (2 if _tiny(model) else 1)


# ----------------------------------------------------------------------------------------------------------
# memory


def _rss_peak_ru() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_busy_s() -> float:
    """Seconds all CPUs of the machine have been busy since boot (Linux); 0 elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _mark() -> tuple[float, float, float]:
    """(wall, this process's CPU, the machine's busy CPU) seconds, taken at the end of every step."""
    return time.perf_counter(), time.process_time(), _cpu_busy_s()


class Memory:
    """Peak RSS since `reset()`: VmHWM after resetting it through /proc/self/clear_refs (Linux), else ru_maxrss."""

    def reset(self) -> None:
        import gc

        gc.collect()
        self.exact = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS mark to the current RSS
            self.exact = True
        except OSError:
            pass
        self.base = _status_bytes("VmRSS") or _rss_peak_ru()

    def peak(self) -> tuple[int, int]:
        """(peak - baseline, absolute peak) in bytes."""
        peak = (_status_bytes("VmHWM") if self.exact else None) or _rss_peak_ru()
        return max(peak - self.base, 0), peak


# ----------------------------------------------------------------------------------------------------------
# data: the same examples, in the same order, in every worker


def model_path(name: str) -> str:
    from alignkit.models.load import resolve_path

    return resolve_path(name)


def hh_path(args) -> str:
    return args.hh_path if os.path.isabs(args.hh_path) else os.path.join(REPO, args.hh_path)


def resolved_shape(args, shape: str) -> str:
    return "synthetic" if shape == "hh" and not os.path.exists(hh_path(args)) else shape


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
        low = max(tokenizer.all_special_ids, default=2) + 1  # ordinary tokens only
        vocab = len(tokenizer)
        return [MaskedExample([rng.randrange(low, vocab) for _ in range(length)], [0] * half + [1] * (length - half))
                for _ in range(needed)]
    if shape == "builtin":
        from alignkit.data.builtin import builtin_path

        with open(builtin_path("sft.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        pool, _ = tokenize_sft(tokenizer, rows, args.max_length)
        out = []
        while len(out) < needed:  # epochs of the small set, each in its own shuffled order
            rng.shuffle(pool)
            out += pool
        return out[:needed]
    from alignkit.data.formats import explicit_prompt

    path = hh_path(args)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rng.shuffle(rows)
    out = []
    for start in range(0, len(rows), 256):
        pairs = [explicit_prompt(r) for r in rows[start:start + 256]]
        examples, _ = tokenize_sft(tokenizer, [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs],
                                   args.max_length)
        out += examples
        if len(out) >= needed:
            return out[:needed]
    if not out:
        raise SystemExit(f"{path}: no usable HH-RLHF pairs (every one was empty or dropped at max_length)")
    while len(out) < needed:
        out += out
    return out[:needed]


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
# the two sides; each returns after the last timed step with its timings


def _checkpointing(model) -> bool:
    """Whether gradient (activation) checkpointing is on; transformers 5 renamed the attribute."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in getattr(model, "__dict__", {}):
            return bool(getattr(model, name))
    return False


class _Done(Exception):
    """Raised from our engine's on_log hook after the last timed step, so the run ends before its final save."""


def run_ours(args, sequence: list, tokenizer, total_steps: int, memory: Memory, profiler=None) -> dict:
    import tempfile

    from alignkit.data.collate import collate_masked
    from alignkit.engine.loop import DataStream, TrainSettings, train
    from alignkit.methods.sft import count_trained_tokens, sft_loss
    from alignkit.models.load import load_policy

    model = load_policy(args.model, dtype="float32", device="cpu", gradient_checkpointing=args.gradient_checkpointing)
    out_dir = tempfile.mkdtemp(prefix="bench-sft-ours-")
    settings = TrainSettings(
        output_dir=out_dir, max_steps=total_steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=args.learning_rate, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, seed=args.seed, logging_steps=1,
        save_steps=0, progress=False,
    )
    # place the examples where the engine's seeded permutation will read them, so it reads `sequence` in order
    order = DataStream(len(sequence), settings.seed).take(len(sequence))
    placed = [None] * len(sequence)
    for k, index in enumerate(order):
        placed[index] = sequence[k]
    pad_id = tokenizer.pad_token_id
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
        train(model, placed, lambda items: collate_masked(items, pad_id), sft_loss, settings,
              count_fn=count_trained_tokens, device="cpu", method="sft", on_log=on_log)
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
    from trl import SFTConfig, SFTTrainer

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

    out_dir = tempfile.mkdtemp(prefix="bench-sft-trl-")
    config = SFTConfig(
        output_dir=out_dir, max_steps=total_steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=args.learning_rate, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, optim=args.trl_optim,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=args.seed, data_seed=args.seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        bf16=False, fp16=False, dataloader_num_workers=0, train_sampling_strategy="sequential",
        max_length=args.max_length, packing=False, padding_free=False, completion_only_loss=True,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        model_init_kwargs={"dtype": "float32"},
    )
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in sequence],
                                 "completion_mask": [e.loss_mask for e in sequence]})
    trainer = SFTTrainer(model=model_path(args.model), args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[Timer()])
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
    stats = batch_stats(sequence, args.batch, args.warmup)
    step_times = [b[0] - a[0] for a, b in zip(times[args.warmup - 1:total - 1], times[args.warmup:total])]
    return {"side": args.side, "model": args.model, "shape": args.shape, "steps": steps, "time_s": elapsed,
            "step_time_s": elapsed / steps, "cpu_step_s": cpu / steps, "step_times": step_times,
            "other_load": other_load,
            "tokens_per_s": stats["real_tokens"] / elapsed, **stats, **result,
            "first_loss": result["losses"][0] if result["losses"] else None}


# ----------------------------------------------------------------------------------------------------------
# driver


def wait_quiet(limit: float, window: float = 3.0, needed: int = 3) -> None:
    """Wait (up to `limit` seconds) until the rest of the machine has used < 10% of its CPUs for `needed`
    windows of `window` seconds in a row."""
    deadline = time.time() + limit
    quiet = 0
    while quiet < needed and time.time() < deadline:
        before = _cpu_busy_s()
        time.sleep(window)
        busy = (_cpu_busy_s() - before) / (window * (os.cpu_count() or 1))
        quiet = quiet + 1 if busy < 0.1 else 0


def run_one(args, side: str, model: str, shape: str) -> dict:
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--side", side, "--model", model,
           "--shape", shape, "--hh-path", args.hh_path, "--batch", str(args.batch),
           "--max-length", str(args.max_length), "--synthetic-length", str(args.synthetic_length),
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
          f"batch {args.batch}, {args.threads} threads; step time over the timed steps {res['step_time_s']:.3f} s")
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
    print(f"SFT benchmark: alignkit vs TRL {trl.__version__} (transformers {transformers.__version__}, "
          f"torch {torch.__version__}), float32 on CPU, {args.threads} threads")
    print(f"batch {args.batch}, max_length {args.max_length}, AdamW lr {args.learning_rate} (TRL optim "
          f"{args.trl_optim}), gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} on both, "
          f"no packing, completion-only loss")
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
                          f"{res['abs_peak_bytes'] / 2**20:8.1f} MiB abs  loss[0] {res['first_loss']:.4f}  "
                          f"others {res['other_load']:.0%}",
                          flush=True)

    def med(key, model, shape, side):
        return statistics.median(s[key] for s in samples[(model, shape, side)])

    print(f"\n(all runs took {time.time() - started:.0f} s)\n")
    header = (f"{'model':32s} {'data':9s} {'side':8s} {'tok/s':>9s} {'s/step':>8s} {'cpu s':>7s} {'peak MiB':>9s} "
              f"{'abs MiB':>8s} {'pad%':>5s} {'trn%':>5s} {'speed':>7s} {'memory':>7s}  result")
    print(header)
    print("-" * len(header))
    all_pass = True
    for model in args.models:
        for shape in shapes:
            first = samples[(model, shape, args.sides[0])][0]
            pad_pct = 100 * (1 - first["real_tokens"] / first["padded_tokens"])
            trained_pct = 100 * first["trained_tokens"] / first["real_tokens"]
            row = {}
            for side in args.sides:
                row[side] = {k: med(k, model, shape, side) for k in
                             ("tokens_per_s", "step_time_s", "cpu_step_s", "peak_bytes", "abs_peak_bytes")}
                v = row[side]
                print(f"{model:32s} {shape:9s} {side:8s} {v['tokens_per_s']:9.1f} {v['step_time_s']:8.3f} "
                      f"{v['cpu_step_s']:7.2f} {v['peak_bytes'] / 2**20:9.1f} {v['abs_peak_bytes'] / 2**20:8.1f} "
                      f"{pad_pct:5.1f} {trained_pct:5.1f}")
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
                      f"{speed:6.2f}x {mem:6.2f}x  {verdict}   (CPU-time speed {cpu_ratio:.2f}x, "
                      f"abs peak {abs_ratio:.2f}x)")
                l_ours = statistics.median(s["first_loss"] for s in samples[(model, shape, "ours")])
                l_trl = statistics.median(s["first_loss"] for s in samples[(model, shape, "trl")])
                if abs(l_ours - l_trl) > 2e-3 * abs(l_trl) + 1e-3:
                    print(f"  WARNING: first-step losses differ (ours {l_ours:.5f}, TRL {l_trl:.5f}): "
                          "the two sides are not training on the same tokens")
    print("\ntok/s = real (non-pad) tokens / wall time of the timed steps; s/step = wall seconds per step; "
          "cpu s = process CPU seconds per step (all threads)")
    print("pad% = padding share of the batches; trn% = share of real tokens that are trained (responses)")
    print("peak MiB = peak RSS over the post-setup baseline (the memory target); abs MiB = absolute peak RSS")
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
