"""The harness shared by benchmarks/sft.py and benchmarks/reward_model.py: alignkit's training step against a TRL
trainer, same model, same data, same settings. Not a script: each benchmark imports it and keeps only what is its
own (its data shapes, the bodies of its two sides, its targets, its wording).

What lives here, in the order a run uses it:

- options: the command-line options both scripts share (`add_common_options`, `add_run_options`, `parse`), and
  how many warm-up and timed steps a model gets (`warmup_for`, `steps_for`, `worker_total_steps`);
- data: where the HH-RLHF file is and what a missing one falls back to (`hh_path`, `resolved_shape`), and the
  small pieces both scripts' `build_sequence` repeat (`random_ids`, `in_epochs`, `tokenize_in_chunks`);
- measuring inside a worker: peak RSS (`Memory`), the per-step marks (`mark`), what a side records at each step's
  end (`StepLog`), our engine's loop (`train_ours`), TRL's settings that both trainers take (`trl_settings`), and
  `measure`, which runs one side (optionally under torch.profiler) and turns its marks into times and the
  contention share ("others");
- the driver: `wait_quiet`, `run_worker_subprocess`, `interleaved_runs`, `median`, the results table
  (`print_table_header`, `print_side_rows`), the equality check (`same_work`), paired ratios (`paired_ratios`,
  `spread`, `print_ratio_row`), `first_losses`, `print_contention`, the verdict and results file (`finish`,
  `machine`), and the profile mode (`profile_one`, `print_profile`).

The method itself (fresh subprocess per measurement, sides interleaved, medians, warm-up excluded, peak RSS over the
post-setup baseline) is described in each script's docstring, which is what the docs point at.
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


# ----------------------------------------------------------------------------------------------------------
# options


def add_common_options(p) -> None:
    """--models, --data, --hh-path: what to measure. Each script adds its own --batch, --max-length,
    --synthetic-length (their help says what one example is) after these, then `add_run_options`."""
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--data", nargs="+", choices=DATA, default=["builtin", "hh"])
    p.add_argument("--hh-path", default=DEFAULT_HH, help="HH-RLHF jsonl(.gz); relative paths are from the repo root")


def add_run_options(p, unit: str) -> None:
    """How to measure: steps, repeats, optimizer, threads, sides, profile, timeouts; and the hidden options a
    worker subprocess gets. `unit` names what --seed picks ("examples", "pairs")."""
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed steps in each subprocess (0: 2 for embedded:tiny, 1 for other models)")
    p.add_argument("--steps", type=int, default=0,
                   help="timed steps per subprocess (0: 20 for embedded:tiny, 2 for other models)")
    p.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per configuration (median)")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    p.add_argument("--trl-optim", default="adamw_torch_fused",
                   help="TRL's optim: its own default, torch's fused AdamW kernel, which our engine uses too "
                        "(`make_optimizer`); the run fails its equality check when the two sides' optimizers differ")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0, help=f"which {unit}, in which order")
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


def parse(p, argv=None):
    """Parse, then apply --quick (its step counts are applied by `steps_for`)."""
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_length = 1, min(args.max_length, 256)
    return args


def _tiny(model: str) -> bool:
    return model.startswith("embedded:tiny")


def steps_for(args, model: str) -> int:
    """Timed steps: many for the tiny model (a step is milliseconds), few for real ones (a step is seconds)."""
    if args.steps:
        return args.steps
    if args.quick:
        return 10 if _tiny(model) else 1
    return 20 if _tiny(model) else 2


def warmup_for(args, model: str) -> int:
    """The first step allocates AdamW's state and grows the allocator; after it a step costs what it will."""
    return args.warmup or (2 if _tiny(model) else 1)


def worker_total_steps(args) -> int:
    """Warm-up + timed steps for this worker's model; fixes args.warmup to the number actually used."""
    args.warmup = warmup_for(args, args.model)
    return args.warmup + steps_for(args, args.model)


# ----------------------------------------------------------------------------------------------------------
# data


def hh_path(args) -> str:
    return args.hh_path if os.path.isabs(args.hh_path) else os.path.join(REPO, args.hh_path)


def resolved_shape(args, shape: str) -> str:
    return "synthetic" if shape == "hh" and not os.path.exists(hh_path(args)) else shape


def random_ids(rng, tokenizer, n: int) -> list[int]:
    """`n` random ordinary tokens (above every special id), so no row holds a pad, EOS or chat-template token."""
    low = max(tokenizer.all_special_ids, default=2) + 1
    return [rng.randrange(low, len(tokenizer)) for _ in range(n)]


def in_epochs(pool: list, needed: int, rng) -> list:
    """`needed` items of a small set: whole epochs of it, each in its own shuffled order."""
    out = []
    while len(out) < needed:
        rng.shuffle(pool)
        out += pool
    return out[:needed]


def tokenize_in_chunks(rows: list, tokenize, needed: int, path: str, dropped: str) -> list:
    """`needed` examples from `rows` (already shuffled), tokenized 256 at a time so a large file is tokenized only as
    far as it is used; `tokenize(rows)` returns the examples it kept. Repeats them if the file runs short.
    `dropped` says, in the error for a file that yields nothing, why rows are dropped."""
    out = []
    for start in range(0, len(rows), 256):
        out += tokenize(rows[start:start + 256])
        if len(out) >= needed:
            return out[:needed]
    if not out:
        raise SystemExit(f"{path}: no usable HH-RLHF pairs ({dropped})")
    while len(out) < needed:
        out += out
    return out[:needed]


# ----------------------------------------------------------------------------------------------------------
# measuring, inside one worker


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


def mark() -> tuple[float, float, float]:
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


def checkpointing(model) -> bool:
    """Whether gradient (activation) checkpointing is on; transformers 5 renamed the attribute."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in getattr(model, "__dict__", {}):
            return bool(getattr(model, name))
    return False


class StepLog:
    """What a side records at the end of every step: a `mark()`, the logged loss, and after the last step the peak
    memory (read there, before the trainer's teardown can allocate more). Both sides feed it the same way: ours
    from the engine's on_log hook, TRL's from a TrainerCallback (`trl_callback`)."""

    def __init__(self, memory: Memory, total_steps: int, profiler=None):
        self.memory, self.total_steps, self.profiler = memory, total_steps, profiler
        self.times, self.losses, self.peaks, self.grad_norms = [], [], [], []
        self.tokens_seen = None  # the side's own count of tokens put through the model, where it logs one

    def step_end(self, step: int) -> None:
        self.times.append(mark())
        if self.profiler is not None:
            self.profiler.step()
        if step >= self.total_steps:
            self.peaks.append(self.memory.peak())

    def trl_callback(self):
        """A transformers TrainerCallback that calls `step_end` and collects the logged losses."""
        from transformers import TrainerCallback

        log = self

        class Timer(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                log.step_end(state.global_step)

            def on_log(self, _args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    log.losses.append(float(logs["loss"]))
                if logs and logs.get("grad_norm") is not None:
                    log.grad_norms.append(float(logs["grad_norm"]))
                if logs and logs.get("num_tokens") is not None:
                    log.tokens_seen = int(logs["num_tokens"])

        return Timer()

    def result(self, out_dir: str, model) -> dict:
        """What a side returns to `measure`."""
        delta, absolute = self.peaks[-1] if self.peaks else self.memory.peak()
        return {"times": self.times, "losses": self.losses, "peak_bytes": delta, "abs_peak_bytes": absolute,
                "out_dir": out_dir, "checkpointing": checkpointing(model), **what_trains(model),
                "first_grad_norm": self.grad_norms[0] if self.grad_norms else None, "tokens_seen": self.tokens_seen}


def what_trains(model) -> dict:
    """The parameters a side trains and their dtype: equal on both sides, or they do different work."""
    params = [p for p in model.parameters() if p.requires_grad]
    return {"trainable_params": sum(p.numel() for p in params),
            "dtype": str(params[0].dtype).replace("torch.", "") if params else None}


class _Done(Exception):
    """Raised from our engine's on_log hook after the last timed step, so the run ends before its final save."""


def train_ours(args, model, sequence: list, collate_fn, loss_fn, count_fn, method: str, total_steps: int,
               memory: Memory, profiler=None) -> dict:
    """Our side: `alignkit.engine.loop.train` over `sequence` in order, with the optimizer settings TRL gets
    (`trl_settings`), logging every step, stopped right after the last one."""
    import tempfile

    from alignkit.engine.loop import DataStream, TrainSettings, train

    out_dir = tempfile.mkdtemp(prefix=f"bench-{method}-ours-")
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
    log = StepLog(memory, total_steps, profiler)

    def on_log(record):
        log.losses.append(record["loss"])
        if record.get("grad_norm") is not None:
            log.grad_norms.append(float(record["grad_norm"]))
        if record.get("num_tokens") is not None:
            log.tokens_seen = int(record["num_tokens"])
        log.step_end(record["step"])
        if record["step"] >= total_steps:
            raise _Done

    memory.reset()
    try:
        train(model, placed, collate_fn, loss_fn, settings, count_fn=count_fn, device="cpu", method=method,
              on_log=on_log)
    except _Done:
        pass
    return log.result(out_dir, model)


def trl_settings(args, out_dir: str, total_steps: int) -> dict:
    """The TrainingArguments both TRL configs get: the same optimizer, schedule and logging as `train_ours`, no
    checkpoints, float32 on CPU, batches read in dataset order."""
    return dict(
        output_dir=out_dir, max_steps=total_steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=args.learning_rate, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, optim=args.trl_optim,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=args.seed, data_seed=args.seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        bf16=False, fp16=False, dataloader_num_workers=0, train_sampling_strategy="sequential",
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
    )


def measure(args, run, sequence: list, tokenizer, total: int, profile: bool = False) -> dict:
    """Run one side (`run(args, sequence, tokenizer, total, memory, profiler)`, which returns a `StepLog.result`)
    on --threads torch threads and turn its step marks into the sample's times: the clock starts at the end of the
    last warm-up step, so the first step's allocations (optimizer state, allocator growth) are not counted.
    With `profile`, torch.profiler records the first timed step and comes back under "profiler"."""
    import shutil

    import torch

    torch.set_num_threads(args.threads)
    optimizers = record_optimizers()
    memory = Memory()
    profiler = None
    if profile:
        from torch.profiler import ProfilerActivity, schedule
        from torch.profiler import profile as torch_profile

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
    steps = total - args.warmup
    elapsed = times[total - 1][0] - times[args.warmup - 1][0]
    cpu = times[total - 1][1] - times[args.warmup - 1][1]
    # CPU the rest of the machine used while we were timed, as a share of all its CPUs: contention
    others = times[total - 1][2] - times[args.warmup - 1][2] - cpu
    other_load = max(others, 0.0) / (elapsed * (os.cpu_count() or 1))
    step_times = [b[0] - a[0] for a, b in zip(times[args.warmup - 1:total - 1], times[args.warmup:total])]
    return {"side": args.side, "model": args.model, "shape": args.shape, "steps": steps, "time_s": elapsed,
            "step_time_s": elapsed / steps, "cpu_step_s": cpu / steps, "step_times": step_times,
            "other_load": other_load, **result, "first_loss": result["losses"][0] if result["losses"] else None,
            "optimizer": "+".join(optimizers) or None, "threads": torch.get_num_threads()}


def record_optimizers() -> list[str]:
    """From now on, every torch.optim.AdamW this process builds is named in the returned list ("AdamW(fused)",
    "AdamW(foreach)" or "AdamW(unfused)"), whoever builds it: our engine or TRL's Trainer."""
    import torch

    built: list[str] = []
    original = torch.optim.AdamW.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        kind = "fused" if self.defaults.get("fused") else "foreach" if self.defaults.get("foreach") else "unfused"
        built.append(f"AdamW({kind})")

    torch.optim.AdamW.__init__ = init
    return built


# ----------------------------------------------------------------------------------------------------------
# driver


def import_versions() -> dict:
    """torch, transformers and trl versions for the banner; exits with the install hint when TRL is missing."""
    import torch

    try:
        import transformers
        import trl
    except ImportError as e:
        raise SystemExit(f"the benchmark needs TRL: pip install 'alignkit[bench]' ({e})") from None
    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def resolved_shapes(args) -> list[str]:
    """The data shapes to run, with a missing HH file's fallback applied (and said)."""
    shapes = list(dict.fromkeys(resolved_shape(args, s) for s in args.data))
    if "hh" in args.data and "hh" not in shapes:
        print(f"note: {hh_path(args)} not found: the hh shape falls back to synthetic fixed-length data")
    return shapes


def print_plan(args) -> None:
    """The banner's last line: repeats and warm-up + timed steps per model."""
    plan = ", ".join(f"{m}: {warmup_for(args, m)} + {steps_for(args, m)}" for m in args.models)
    print(f"{args.repeats} repeat(s) per configuration, each a fresh process, sides interleaved; warm-up + timed "
          f"steps: {plan}\n", flush=True)


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


def run_worker_subprocess(args, script: str, side: str, model: str, shape: str, extra: tuple[str, ...] = ()) -> dict:
    """One measurement: `script` re-invoked with --worker in a fresh process (nothing one run allocates, caches or
    compiles helps the next), offline, with the thread count pinned. `extra` are the script's own options."""
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    cmd = [sys.executable, script, "--worker", "--side", side, "--model", model,
           "--shape", shape, "--hh-path", args.hh_path, "--batch", str(args.batch),
           "--max-length", str(args.max_length), "--synthetic-length", str(args.synthetic_length), *extra,
           "--warmup", str(warmup_for(args, model)), "--steps", str(steps_for(args, model)),
           "--learning-rate", str(args.learning_rate), "--trl-optim", args.trl_optim,
           "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    return run_worker(cmd, f"{side}/{model}/{shape}", args.threads, args.timeout, args.gradient_checkpointing)


def run_worker(cmd: list[str], label: str, threads: int, timeout: float, checkpointing: bool) -> dict:
    """Run a worker command offline with the thread count pinned; its last stdout line is its JSON result.
    A worker whose gradient checkpointing differs from `checkpointing` is refused: a side that silently
    ignored the setting would compare a different computation."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(REPO, "src"), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"worker {label} took longer than --timeout {timeout} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"worker {label} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["checkpointing"] != checkpointing:
        raise SystemExit(f"worker {label}: gradient checkpointing is {'on' if result['checkpointing'] else 'off'}, "
                         "asked for the opposite")
    return result


def interleaved_runs(args, script: str, shapes: list[str], extra: tuple[str, ...] = (),
                     loss_format: str = ".4f") -> dict:
    """Every (model, shape, side, repeat) once, printing a line per run; returns the samples keyed by
    (model, shape, side). The sides alternate which goes first, so slow drift of the machine (thermal, page cache,
    other work) does not favour one."""
    samples: dict[tuple[str, str, str], list[dict]] = {}
    started = time.time()
    for model in args.models:
        for shape in shapes:
            for r in range(args.repeats):
                order = args.sides if r % 2 == 0 else args.sides[::-1]
                for side in order:
                    res = run_worker_subprocess(args, script, side, model, shape, extra)
                    samples.setdefault((model, shape, side), []).append(res)
                    print(f"  {model:32s} {shape:9s} {side:4s} repeat {r + 1}: {res['tokens_per_s']:9.1f} tok/s  "
                          f"{res['step_time_s']:7.3f} s/step  {res['cpu_step_s']:6.2f} cpu s  "
                          f"{res['peak_bytes'] / 2**20:8.1f} MiB peak  "
                          f"{res['abs_peak_bytes'] / 2**20:8.1f} MiB abs  loss[0] {res['first_loss']:{loss_format}}  "
                          f"others {res['other_load']:.0%}",
                          flush=True)
    print(f"\n(all runs took {time.time() - started:.0f} s)\n")
    return samples


def median(samples: dict, key: str, model: str, shape: str, side: str) -> float:
    """The median of one measured value over the repeats of one configuration."""
    return statistics.median(s[key] for s in samples[(model, shape, side)])


def print_table_header(pct_column: str) -> None:
    """The results table's header; the two percentage columns are pad% and the script's own (`pct_column`)."""
    header = (f"{'model':32s} {'data':9s} {'side':8s} {'tok/s':>9s} {'s/step':>8s} {'cpu s':>7s} {'peak MiB':>9s} "
              f"{'abs MiB':>8s} {'pad%':>5s} {pct_column:>5s} {'speed':>7s} {'memory':>7s}  result")
    print(header)
    print("-" * len(header))


def print_side_rows(samples: dict, sides: list[str], model: str, shape: str, pad_pct: float, other_pct: float) -> dict:
    """One row per side with its medians; returns them by side for `print_ratio_row`."""
    row = {}
    for side in sides:
        row[side] = {k: median(samples, k, model, shape, side) for k in
                     ("tokens_per_s", "step_time_s", "cpu_step_s", "peak_bytes", "abs_peak_bytes")}
        v = row[side]
        print(f"{model:32s} {shape:9s} {side:8s} {v['tokens_per_s']:9.1f} {v['step_time_s']:8.3f} "
              f"{v['cpu_step_s']:7.2f} {v['peak_bytes'] / 2**20:9.1f} {v['abs_peak_bytes'] / 2**20:8.1f} "
              f"{pad_pct:5.1f} {other_pct:5.1f}")
    return row


def paired_ratios(samples: dict, model: str, shape: str, key: str) -> list[float]:
    """ours/TRL for each repeat, pairing the runs that ran back to back (repeat r of each side), so slow drift of
    the machine cancels inside a pair rather than between two medians."""
    ours, theirs = samples[(model, shape, "ours")], samples[(model, shape, "trl")]
    if len(ours) != len(theirs):
        raise SystemExit(f"{model} {shape}: {len(ours)} runs of ours against {len(theirs)} of TRL: nothing to pair")
    return [o[key] / t[key] if t[key] else float("inf") for o, t in zip(ours, theirs)]


def spread(values: list[float]) -> dict:
    """min / median / max of paired ratios, for the results file and the table."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": values}


def close(a: float | None, b: float | None, rel: float, abs_tol: float) -> bool:
    return a is not None and b is not None and abs(a - b) <= abs_tol + rel * abs(b)


def same_work(samples: dict, model: str, shape: str, loss_rel: float | None, loss_abs: float = 0.0,
              grad_rel: float | None = 1e-3, grad_abs: float = 1e-4,
              counted: tuple[str, ...] = ("real_tokens", "rows_kept", "tokens_seen")) -> list[str]:
    """Why the two sides of one configuration do not do the same work (empty: they do). Checked on every run of
    both sides: the same optimizer (fused AdamW), dtype, threads, trainable parameters and gradient checkpointing;
    the same counts (`counted`: compared where every run reports one; `tokens_seen` is each side's own count of
    the tokens it put through the model, `rows_kept` the rows its trainer kept); and, on the medians, the first step's loss (the same model on the same
    tokens) and its gradient norm before clipping (the gradient's scale, so clipping acts alike) within the
    script's float32 tolerances (None: not compared, for a method whose sides sample different completions)."""
    runs = samples[(model, shape, "ours")] + samples[(model, shape, "trl")]
    problems = []
    for key in ("optimizer", "dtype", "threads", "trainable_params", "checkpointing", *counted):
        values = sorted({str(r.get(key)) for r in runs})
        if key in counted and "None" in values:
            continue
        if len(values) > 1:
            problems.append(f"{key} differs ({' vs '.join(values)})")
    if any(r.get("optimizer") != "AdamW(fused)" for r in runs):
        problems.append(f"optimizer is not fused AdamW on both ({runs[0].get('optimizer')}, {runs[-1].get('optimizer')})")
    medians = {side: {k: statistics.median(v) if (v := [r[k] for r in samples[(model, shape, side)]
                                                         if r.get(k) is not None]) else None
                      for k in ("first_loss", "first_grad_norm")} for side in ("ours", "trl")}
    o, t = medians["ours"], medians["trl"]
    if loss_rel is not None and not close(o["first_loss"], t["first_loss"], loss_rel, loss_abs):
        problems.append(f"first-step loss ours {o['first_loss']} vs TRL {t['first_loss']} "
                        f"(tolerance {loss_abs:g} + {loss_rel:g}x)")
    if grad_rel is not None and not close(o["first_grad_norm"], t["first_grad_norm"], grad_rel, grad_abs):
        problems.append(f"first-step gradient norm ours {o['first_grad_norm']} vs TRL {t['first_grad_norm']} "
                        f"(tolerance {grad_abs:g} + {grad_rel:g}x)")
    return problems


def print_ratio_row(samples: dict, model: str, shape: str, target_speed: float | None, target_memory: float | None,
                    problems: list[str], targets_in_row: bool = False) -> dict:
    """The ours/TRL row. When the sides did not do the same work (`problems`) it prints FAIL and why, never a
    ratio. Otherwise: speed (tokens/s) and memory (peak over baseline) as the median of paired runs' ratios with
    their range, against the targets (None: no target), and for reference the CPU-time speed and absolute-peak
    ratios. Returns the row's record for the results file ("verdict": PASS, MISS (...), UNEQUAL or INFO)."""
    lead = f"{'':32s} {shape:9s} {'ours/TRL':8s} {'':9s} {'':8s} {'':7s} {'':9s} {'':8s} {'':5s} {'':5s}"
    record = {"model": model, "shape": shape, "problems": problems}
    if problems:
        print(f"{lead} FAIL: the sides did different work, so no ratio: {'; '.join(problems)}")
        return {**record, "verdict": "UNEQUAL"}
    speed = spread(paired_ratios(samples, model, shape, "tokens_per_s"))
    mem = spread(paired_ratios(samples, model, shape, "peak_bytes"))
    cpu = spread([1 / r for r in paired_ratios(samples, model, shape, "cpu_step_s")])  # TRL's CPU time / ours
    abs_peak = spread(paired_ratios(samples, model, shape, "abs_peak_bytes"))
    if target_speed is None:
        verdict = "INFO"
    else:
        ok_s, ok_m = speed["median"] >= target_speed, target_memory is None or mem["median"] <= target_memory
        verdict = "PASS" if ok_s and ok_m else "MISS (" + ", ".join(
            x for x, bad in (("speed", not ok_s), ("memory", not ok_m)) if bad) + ")"
    targets = (f"targets >= {target_speed}x, <= {target_memory:.1f}x; " if targets_in_row and target_speed else "")
    print(f"{lead} {speed['median']:6.2f}x {mem['median']:6.2f}x  {verdict}   ({targets}paired runs: speed "
          f"{speed['min']:.2f}-{speed['max']:.2f}x, memory {mem['min']:.2f}-{mem['max']:.2f}x; CPU-time speed "
          f"{cpu['median']:.2f}x, abs peak {abs_peak['median']:.2f}x)")
    return {**record, "verdict": verdict, "speed": speed, "memory": mem, "abs_peak": abs_peak, "cpu_speed": cpu,
            "target_speed": target_speed, "target_memory": target_memory}


def first_losses(samples: dict, model: str, shape: str) -> tuple[float, float]:
    """(ours, TRL) median loss of the first step: the same model on the same tokens must start from the same loss,
    so a difference means the sides do different work. Each script judges it with its own tolerance and wording."""
    return median(samples, "first_loss", model, shape, "ours"), median(samples, "first_loss", model, shape, "trl")


def print_contention(samples: dict, threads: int) -> None:
    """How much CPU other processes used while steps were timed, and a warning when it spoils the times."""
    loads = [s["other_load"] for v in samples.values() for s in v]
    print(f"other processes used {statistics.median(loads):.0%} (median; max {max(loads):.0%}) of the machine's "
          f"{os.cpu_count()} CPUs while steps were timed")
    if max(loads) > 0.1:
        print("WARNING: other work competed for the CPU during timed steps, so times are not clean: with "
              f"{threads} threads a parallel op waits for a descheduled thread at every barrier; "
              "rerun on a quiet machine (--wait-quiet helps on a shared one)")


def machine() -> dict:
    """What the numbers were measured on: CPU model and count, platform, and the GPU when there is one."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def finish(args, benchmark: str, samples: dict, rows: list[dict], versions: dict, targets: str) -> int:
    """The targets line, the overall verdict, and the results file (--json): the benchmark, its settings, the
    machine and versions, every row's verdict and paired ratios, and every raw sample. Returns the exit status:
    1 when any row compared different work (its verdict is UNEQUAL), else 0 (a missed target is a result, not
    an error: the row says MISS and why)."""
    print(targets)
    unequal = [r for r in rows if r["verdict"] == "UNEQUAL"]
    missed = [r for r in rows if r["verdict"].startswith("MISS")]
    if rows:
        print("OVERALL: " + ("FAIL: the sides did different work in " + ", ".join(
            f"{r['model']} {r['shape']}" for r in unequal) if unequal else
                             "targets missed (see MISS rows)" if missed else "PASS"))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "side", "model", "shape", "json")}
        record = {"benchmark": benchmark, "settings": settings, "versions": versions, "machine": machine(),
                  "rows": rows, "samples": [{**s, "key": list(k)} for k, v in samples.items() for s in v]}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 1 if unequal else 0


def profile_one(args, worker) -> tuple[dict, object]:
    """--profile: one worker run in this process, for the first --models and --data, under torch.profiler.
    Returns (the sample, the profiler)."""
    args.side, args.model, args.shape = args.profile, args.models[0], resolved_shape(args, args.data[0])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    res = worker(args, profile=True)
    return res, res.pop("profiler")


def print_profile(prof) -> None:
    """Where the profiled step's time went: by op, then by op and input shape."""
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                             max_name_column_width=40))
