"""alignkit against TRL on the same GPU: SFT, reward model, DPO and GRPO, each side with its own fast settings.

Run through `benchmarks/gpu_compare.sh`, which refuses to start without a CUDA GPU (exit 2) unless --allow-cpu is
given, and stops the whole run after 480 s. The model is random-initialised from a config, as in
benchmarks/gpu_check.py (`gpu_check.build_model`): Qwen2.5-0.5B's shape (0.40B parameters with the embedded SmolLM2
tokenizer's 49,152-token vocabulary) and Qwen2.5-1.5B's (1.39B), the latter skipped, with the reason printed, when
the GPU's memory is too small; `--tiny` uses a 2-layer, 64-wide model to check the script on CPU in seconds.

What both sides share: the checkpoint (so the same initial weights; the reward model's new score head is seeded the
same way), the token ids (synthetic random ordinary tokens with a spread of lengths, built from --seed in every
worker; GRPO: the same builtin prompts and the same reward, `grpo.e_share`), dtype (bfloat16 weights on a GPU,
float32 on CPU), batch size, learning rate and schedule (linear, no warm-up, grad clipping 1.0, weight decay 0),
the optimizer implementation (fused AdamW: TRL `optim="adamw_torch_fused"`, ours `engine.loop.make_optimizer`),
dropout off, gradient checkpointing off unless --gradient-checkpointing (then on both). The batch size fills about
60% of the GPU's memory by an estimate (activation bytes per token from the model's shape, plus 12 bytes per
parameter for weights, gradients and AdamW state); the measured fill is printed, --batch overrides it. On CPU, and
with --tiny, a small fixed batch.

Each side's own recommended fast settings, with padding-free batches (--padding-free) on both sides or neither:
  TRL 1.16   SFT `padding_free` (its collator flattens the batch into one row; `max_length=None`, the rows
             already fit); DPO `padding_free` is accepted by DPOConfig but 1.16's trainer warns and falls back to
             padding (recorded per run as `trl_padding_free`); RewardConfig and GRPOConfig have no padding-free
             option. DPO `precompute_ref_log_probs=True`. `use_liger_kernel=True` only when liger_kernel is
             importable. `bf16=True` on a GPU. GRPO: HF generate (`use_vllm=False`).
  ours       SFT padding-free rows (`collate_padding_free`, train_sft's default; padded rows without it); reward
             model and DPO the padding_free batch layout (bucketed, alignkit's default, without it); DPO reference
             log-probs precomputed before training from a copy that is then dropped (as `train_dpo` does); GRPO
             through `GroupPolicyStep` with our HF-generate sampler.
Padding-free needs varlen attention kernels to pay off: --attn auto picks flash_attention_2 when flash_attn is
installed (sdpa otherwise), and --padding-free auto turns padding-free on with it (and for --tiny, whose rows are
short, so that the path is checked), off on sdpa, where transformers runs one flattened row under a dense
block-diagonal mask: attention over the whole batch's tokens squared, wasted on both sides (TRL documents its
padding_free as supported with FlashAttention only).
Both GRPO sides: the same prompts per step, group size, completion length, temperature 1, beta 0 (no reference),
loss "dapo", one update per rollout.

Method: every measurement is a fresh subprocess (this script re-invoked with a hidden --worker flag), the two sides
alternate which goes first (per method and per repeat), warm-up steps are excluded (the clock starts at the end of
the last warm-up step, after a CUDA synchronize), medians over --repeats. Reported per method and side:

- tokens/s: real (non-pad) tokens the policy runs forward and backward in the timed steps / their wall time
  (GRPO: prompt + completion tokens of each completion, generation time included);
- MFU: model FLOPs per second / the chip's dense bf16 peak (`gpu_check.PEAK_BF16`, by device name): 6N per such
  token plus 2N per token an in-loop reference scores (none here: DPO's reference is precomputed, GRPO has beta 0),
  N = the trained model's parameters; attention FLOPs are not counted. n/a on CPU;
- peak memory: torch.cuda.max_memory_allocated over the timed run (CPU: peak RSS of the worker process);
- ours/TRL: the ratio of the median tokens/s.

Equality checks (a failed one prints FAIL with the reason and no ratio, and the script exits 1 at the end):
the first step's loss (DPO also `logps/chosen`, `logps/rejected`: its first loss is log 2 whatever the data) within
1e-4 + 2e-4 x |value| in float32, 2e-2 + 2e-2 x |value| in bfloat16; the real and trained (loss) token counts of all
steps, read from each side's own collated batches, exactly. GRPO: the prompt tokens exactly, the completion tokens
within 2% (sampled: a random-initialised model ends a completion early only by chance). Targets (GPU only, printed
PASS/FAIL per row, not part of the exit status): DPO >= 1.3x TRL tokens/s and MFU >= 30%, SFT >= 1.2x and MFU >= 30%,
GRPO >= 1.5x; the reward model is report-only.

All raw figures go to --out (default benchmarks/results/<date>-gpu.json; -gpu-tiny-cpu.json for --tiny on CPU),
rewritten after every measurement: the machine (device, torch / transformers / trl versions, CUDA version), the
settings, every worker's figures and the rows. Each shape's table is printed as soon as it is measured, and no worker
starts within 30 s of --time-limit (450 s), so a run that the shell's 480 s limit would cut short (say, 1.5b after
0.5b on a slow start) ends with the measurements it has and says which were not run.

A GPU machine without a package registry: the script first checks that TRL and what it imports (datasets,
accelerate, ...) are installed and import; if not, it names the missing ones and exits 2. Bring them as wheels:
on a connected machine with the same Python and platform `pip download --no-deps trl==1.16.0 datasets ... -d wheels/`,
copy wheels/ over, then `pip install --no-index --find-links wheels/ trl==1.16.0 datasets ...`.

    bash benchmarks/gpu_compare.sh                              # 0.5b then 1.5b, bf16, on one GPU
    bash benchmarks/gpu_compare.sh --shapes 0.5b --repeats 2
    python benchmarks/gpu_compare.py --tiny --allow-cpu         # checks the script on CPU (~1 min on 2 cores)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check  # noqa: E402  (the random-initialised model, the bf16 peak table)
import harness  # noqa: E402  (worker plumbing, step marks, RSS, TRL's shared settings)

METHODS = ("sft", "reward_model", "dpo", "grpo")
SIDES = ("ours", "trl")
SHAPE_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, max_position_embeddings=4096, tie_word_embeddings=True)
SHAPES = {"0.5b": gpu_check.SHAPE_05B, "1.5b": SHAPE_15B, "tiny": gpu_check.SHAPE_TINY}
TINY_BATCH = {"sft": 4, "reward_model": 2, "dpo": 2, "grpo": 2}  # examples, pairs, pairs, prompts
# (ours/TRL tokens/s at least, ours MFU % at least or None); None: report only
TARGETS = {"sft": (1.2, 30.0), "reward_model": None, "dpo": (1.3, 30.0), "grpo": (1.5, None)}
FIRST_KEYS = {"sft": ("loss",), "reward_model": ("loss",), "dpo": ("loss", "logps/chosen", "logps/rejected"),
              "grpo": ("loss",)}
TOLERANCE = {"float32": (1e-4, 2e-4), "bfloat16": (2e-2, 2e-2)}  # (absolute, relative)
GRPO_COMPLETION_SLACK = 0.02
FILL = 0.6  # share of GPU memory the batch estimate aims at
PROMPTS = "builtin:prompts.jsonl"
TRL_PIN = "trl==1.16.0"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=("0.5b", "1.5b"), default=["0.5b", "1.5b"],
                   help="model shapes, in this order (1.5b is skipped when the GPU's memory is too small)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model and a few steps (replaces --shapes)")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (with --tiny only), float32")
    p.add_argument("--out", help="JSON of every raw figure (default benchmarks/results/<date>-gpu[-tiny][-cpu].json)")
    p.add_argument("--tokenizer", default="embedded:smollm2-135m-instruct",
                   help="tokenizer of the random model: embedded:NAME or a local directory")
    p.add_argument("--batch", type=int, default=0,
                   help="per-step batch on both sides for every method (SFT examples, pairs, GRPO prompts); "
                        "0: estimated to fill ~60%% of the GPU (a small fixed batch on CPU and with --tiny)")
    p.add_argument("--seq-len", type=int, default=0, help="longest sequence (0: 1024, tiny 64); lengths spread "
                                                          "from half of it to all of it")
    p.add_argument("--generations", type=int, default=0, help="GRPO group size (0: 8, tiny 4)")
    p.add_argument("--completion-length", type=int, default=0, help="GRPO max_completion_length (0: 128, tiny 8)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps per worker (0: 3, GRPO and tiny 1)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per worker (0: 10, GRPO and tiny 2)")
    p.add_argument("--repeats", type=int, default=1, help="fresh workers per method and side (median)")
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    p.add_argument("--attn", choices=("auto", "sdpa", "flash_attention_2", "eager"), default="auto",
                   help="attention on both sides (auto: flash_attention_2 when flash_attn is installed on a GPU, "
                        "else sdpa)")
    p.add_argument("--padding-free", choices=("auto", "on", "off"), default="auto",
                   help="padding-free batches on both sides (auto: on with flash_attention_2 and for --tiny, off "
                        "on sdpa)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="auto: bfloat16 on a GPU, float32 on CPU")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per worker (0: 8 with a GPU; 1 on CPU, where --tiny only checks the script "
                        "and one thread avoids the barrier stalls of a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=300, help="seconds per worker")
    p.add_argument("--time-limit", type=float, default=450,
                   help="start no worker after this many seconds (gpu_compare.sh kills the run at 480); 0: none")
    # internal
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--inject-mismatch", action="store_true", help=argparse.SUPPRESS)  # ours trains other tokens
    args = p.parse_args(argv)
    tiny = args.tiny
    args.seq_len = args.seq_len or (64 if tiny else 1024)
    args.generations = args.generations or (4 if tiny else 8)
    args.completion_length = args.completion_length or (8 if tiny else 128)
    return args


def steps_of(args, method: str) -> tuple[int, int]:
    """(warm-up, timed) steps: GRPO steps are seconds of generation each, the others a fraction of a second."""
    short = args.tiny or method == "grpo"
    return args.warmup or (1 if short else 3), args.steps or (2 if short else 10)


# ----------------------------------------------------------------------------------------------------------
# before anything runs: is TRL there?


def missing_for_trl() -> list[str]:
    """Distributions TRL needs that are not installed (trl's declared requirements, followed down, except below torch,
    whose GPU build brings its own); when none is missing, whatever a real import of its four trainers still cannot
    find."""
    import importlib.metadata as md
    import re

    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ["packaging"]
    missing, seen, todo = [], set(), ["trl"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        if key == "torch":
            continue
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    if missing:
        return sorted(missing)
    try:
        import trl

        for trainer in ("SFTTrainer", "RewardTrainer", "DPOTrainer", "GRPOTrainer"):
            getattr(trl, trainer)
    except ModuleNotFoundError as e:
        return [(e.name or str(e)).split(".")[0]]
    return []


def wheels_hint(missing: list[str]) -> str:
    names = " ".join(TRL_PIN if m == "trl" else m for m in missing)
    return (f"gpu_compare: TRL cannot be imported here; missing: {', '.join(missing)}. Without a package registry "
            f"they must travel as wheels: on a machine with one (same Python and platform) `pip download --no-deps "
            f"{names} -d wheels/`, copy wheels/ here, then `pip install --no-index --find-links wheels/ {names}`")


# ----------------------------------------------------------------------------------------------------------
# data: the same token ids on both sides, rebuilt from --seed in every worker


def build_data(args, tokenizer, method: str, batch: int, total: int) -> list:
    """`total` steps of `batch` examples in training order. SFT: MaskedExamples of seq-len/2 .. seq-len tokens, the
    second half trained; DPO: TokenizedPairs whose prompt and responses are seq-len/4 .. seq-len/2 each; reward
    model: the same pairs as whole sequences; GRPO: the builtin prompt rows (`grpo.prompt_sequence`)."""
    from alignkit.data.tokenize import MaskedExample, TokenizedPair
    from alignkit.methods.reward_model import RewardExample

    if method == "grpo":
        import grpo

        rows = grpo.prompt_sequence(argparse.Namespace(prompts=PROMPTS, prompts_per_step=batch, seed=args.seed),
                                    total)
        if args.inject_mismatch and args.side == "ours":
            rows[0] = {"prompt": [{"role": "user", "content": "a different prompt, longer than the others are"}]}
        return rows
    rng, n, longest = random.Random(args.seed), batch * total, args.seq_len

    def ids(k: int) -> list[int]:
        return harness.random_ids(rng, tokenizer, k)

    if method == "sft":
        data = []
        for _ in range(n):
            length = rng.randint(longest // 2, longest)
            data.append(MaskedExample(ids(length), [0] * (length // 2) + [1] * (length - length // 2)))
        if args.inject_mismatch and args.side == "ours":
            data[0] = MaskedExample(data[0].input_ids[:-1], data[0].loss_mask[:-1])
        return data
    pairs = [TokenizedPair(*(ids(rng.randint(longest // 4, longest // 2)) for _ in range(3))) for _ in range(n)]
    if args.inject_mismatch and args.side == "ours":
        pairs[0] = TokenizedPair(pairs[0].prompt_ids, pairs[0].chosen_ids[:-1], pairs[0].rejected_ids)
    if method == "reward_model":
        return [RewardExample(p.prompt_ids + p.chosen_ids, p.prompt_ids + p.rejected_ids) for p in pairs]
    return pairs


def batch_tokens(batch: dict) -> tuple[int, int]:
    """(real tokens the model runs on, tokens the loss trains) of one collated batch, read the same way from both
    sides' batches: the attention mask (else every id: a padding-free row has no pads), and the completion mask
    (else the labels a causal LM shifts onto, else every real token)."""
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    if "completion_mask" in batch:
        return real, int(batch["completion_mask"].sum())
    if "labels" in batch:
        return real, int((batch["labels"][..., 1:] != -100).sum())
    return real, real


def counted(collate, counts: list):
    """`collate` that also appends each batch's `batch_tokens` to `counts` (on CPU, before the batch moves)."""

    def wrapped(items):
        batch = collate(items)
        counts.append(batch_tokens(batch))
        return batch

    return wrapped


# ----------------------------------------------------------------------------------------------------------
# measuring inside a worker


class CudaMemory:
    """harness.Memory's interface over the CUDA caching allocator: peak bytes allocated since `reset()`."""

    def reset(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def peak(self) -> tuple[int, int]:
        import torch

        peak = torch.cuda.max_memory_allocated()
        return max(peak - self.base, 0), peak


class Log(harness.StepLog):
    """harness.StepLog that waits for the GPU before each step's mark and keeps the first step's logged metrics,
    and for GRPO each step's token count and mean completion length."""

    def __init__(self, memory, total_steps: int):
        super().__init__(memory, total_steps)
        self.first: dict = {}
        self.tokens_seen: list[int] = []
        self.lengths: list[float] = []

    def step_end(self, step: int) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        super().step_end(step)

    def logged(self, metrics: dict) -> None:
        if "loss" not in metrics:
            return
        self.losses.append(float(metrics["loss"]))
        if not self.first:
            self.first = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if "completions/mean_length" in metrics:
            self.lengths.append(float(metrics["completions/mean_length"]))

    def trl_callback(self):
        from transformers import TrainerCallback

        log = self

        class Marks(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                log.tokens_seen.append(int(state.num_input_tokens_seen))
                log.step_end(state.global_step)

            def on_log(self, _args, state, control, logs=None, **kwargs):
                log.logged(logs or {})

        return Marks()


class _Done(Exception):
    """Raised from our engine's on_log hook after the last step, so the run ends before its final save."""


def train_ours(args, model, sequence: list, collate, loss_fn, count_fn, method: str, log: Log, out_dir: str,
               batch: int) -> None:
    """Our side: `alignkit.engine.loop.train` over `sequence` in order on this worker's device, with the settings
    TRL gets (`trl_config`), logging every step, stopped right after the last one (harness.train_ours on a GPU)."""
    import torch

    from alignkit.engine.loop import DataStream, TrainSettings, train

    settings = TrainSettings(
        output_dir=out_dir, max_steps=log.total_steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, learning_rate=args.learning_rate, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, seed=args.seed, logging_steps=1,
        save_steps=0, progress=False)
    # place the examples where the engine's seeded permutation reads them, so it reads `sequence` in order
    placed = [None] * len(sequence)
    for k, index in enumerate(DataStream(len(sequence), settings.seed).take(len(sequence))):
        placed[index] = sequence[k]

    def on_log(record):
        log.logged(record)
        log.step_end(record["step"])
        if record["step"] >= log.total_steps:
            raise _Done

    log.memory.reset()
    try:
        train(model, placed, collate, loss_fn, settings, count_fn=count_fn, method=method, on_log=on_log,
              device=None if torch.cuda.is_available() else "cpu")
    except _Done:
        pass


def trl_config(args, out_dir: str, total: int, batch: int) -> dict:
    """harness.trl_settings (the optimizer, schedule and logging `train_ours` uses) on this device and dtype, with
    fused AdamW, and Liger kernels when installed."""
    import importlib.util

    import torch

    settings = harness.trl_settings(argparse.Namespace(
        batch=batch, learning_rate=args.learning_rate, trl_optim="adamw_torch_fused", seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing), out_dir, total)
    settings.update(use_cpu=not torch.cuda.is_available(), bf16=args.dtype == "bfloat16",
                    use_liger_kernel=importlib.util.find_spec("liger_kernel") is not None)
    return settings


def load(args, method: str, device: str, checkpointing: bool | None = None):
    """The model a side trains, loaded the same way on both sides (seeded: the reward model's new head)."""
    import torch

    from alignkit.models.load import load_policy, load_reward_model

    torch.manual_seed(args.seed)
    loader = load_reward_model if method == "reward_model" else load_policy
    model = loader(args.model_dir, dtype=args.dtype, device=device,
                   gradient_checkpointing=args.gradient_checkpointing if checkpointing is None else checkpointing)
    if model.config._attn_implementation != args.attn:
        model.set_attn_implementation(args.attn)
    for module in model.modules():  # what TRL's disable_dropout does (no-op for this architecture)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


# ----------------------------------------------------------------------------------------------------------
# the sides: each trains `data` for log.total_steps steps and returns (model, per-step counts, notes)


def ours(args, method: str, data: list, tokenizer, log: Log, out_dir: str, batch: int, device: str):
    counts: list = []
    pad_id = tokenizer.pad_token_id
    free = args.padding_free == "on"
    layout = "padding_free" if free else "bucketed"  # DPO, reward model; SFT: padding-free or padded
    bucketed = not free
    if method == "sft":
        from alignkit.data.collate import collate_masked, collate_padding_free
        from alignkit.methods.sft import count_trained_tokens, sft_loss

        model = load(args, method, device)
        collate = collate_padding_free if free else collate_masked
        train_ours(args, model, data, counted(lambda items: collate(items, pad_id), counts), sft_loss,
                   count_trained_tokens, method, log, out_dir, batch)
    elif method == "reward_model":
        from alignkit.methods import reward_model as rm

        model = load(args, method, device)
        train_ours(args, model, data, counted(lambda items: rm.collate_rewards(items, pad_id, free), counts),
                   lambda m, b: rm.reward_loss(m, b, 0.0, bucketed=bucketed), rm.count_pairs, method, log, out_dir,
                   batch)
    elif method == "dpo":
        import dpo
        import torch

        from alignkit.methods.dpo import DPOConfig, dpo_loss
        from alignkit.methods.pairs import DPOExample, collate_dpo, count_pairs
        from alignkit.models.reference import Reference, precompute_reference

        config = DPOConfig(dataset_name="benchmark", loss_type="sigmoid", beta=dpo.BETA, label_smoothing=0.0,
                           rpo_alpha=0.0, ref="precomputed", batch_layout=layout)
        examples = [DPOExample(p) for p in data]
        reference = load(args, method, device, checkpointing=False).eval().requires_grad_(False)
        precompute_reference(examples, reference, pad_id, batch)  # as train_dpo: a copy, then gone
        del reference
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        model = load(args, method, device)
        ref = Reference("precomputed")
        train_ours(args, model, examples, counted(lambda items: collate_dpo(items, pad_id, free), counts),
                   lambda m, b: dpo_loss(m, b, ref, config, bucketed), count_pairs, method, log, out_dir, batch)
    else:
        import grpo

        from alignkit.methods.grpo import GroupPolicyStep, GRPOConfig
        from alignkit.rewards.sources import RewardMix

        config = GRPOConfig(model_name_or_path=args.model_dir, dataset_name=PROMPTS, num_generations=args.generations,
                            max_completion_length=args.completion_length, temperature=1.0, top_p=1.0, top_k=0,
                            advantage="grpo", scale_rewards=True, loss_type="dapo", beta=0.0, epsilon=0.2,
                            ref="none", gradient_checkpointing=args.gradient_checkpointing, dtype=args.dtype,
                            device=device)
        config.train.per_device_train_batch_size = batch * args.generations
        config.check()
        step = GroupPolicyStep(config, tokenizer, RewardMix([grpo.e_share], max_new_tokens=args.completion_length))
        model = load(args, method, device)

        def step_fn(m, b):
            loss, metrics = step(m, b)
            completion = round(metrics["completions/mean_length"] * batch * args.generations)
            counts.append((int(b["num_tokens"]), completion))
            return loss, metrics

        train_ours(args, model, data, lambda items: {"rows": items}, step_fn,
                   lambda b: len(b["rows"]) * args.generations, method, log, out_dir, batch)
    return model, counts, {"layout": ("padding_free" if free else "padded") if method == "sft" else layout}


def trl(args, method: str, data: list, tokenizer, log: Log, out_dir: str, batch: int, device: str):
    import warnings

    from datasets import Dataset

    warnings.filterwarnings("ignore")
    total = log.total_steps
    # TRL's per_device_train_batch_size counts GRPO's completions
    settings = trl_config(args, out_dir, total, batch * args.generations if method == "grpo" else batch)
    model = load(args, method, device)
    notes = {"liger": settings["use_liger_kernel"]}
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**settings, max_length=None, packing=False, padding_free=args.padding_free == "on",
                           completion_only_loss=True)
        dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in data],
                                     "completion_mask": [e.loss_mask for e in data]})
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[log.trl_callback()])
        notes["trl_padding_free"] = trainer.padding_free
    elif method == "reward_model":
        from trl import RewardConfig, RewardTrainer

        model.config.pad_token_id = tokenizer.pad_token_id  # its pooling finds the last token by it
        config = RewardConfig(**settings, max_length=None, disable_dropout=True, center_rewards_coefficient=None)
        dataset = Dataset.from_dict({"chosen_ids": [e.chosen_ids for e in data],
                                     "rejected_ids": [e.rejected_ids for e in data]})
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=[log.trl_callback()])
    elif method == "dpo":
        import dpo
        from trl import DPOConfig, DPOTrainer

        class PreTokenizedDPOTrainer(DPOTrainer):
            """DPOTrainer on prompt_ids / chosen_ids / rejected_ids as they are (see benchmarks/dpo.py)."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset

        config = DPOConfig(**settings, max_length=None, padding_free=args.padding_free == "on",
                           pad_to_multiple_of=None, disable_dropout=True, precompute_ref_log_probs=True,
                           loss_type=["sigmoid"], beta=dpo.BETA, label_smoothing=0.0, sync_ref_model=False,
                           use_weighting=False, ld_alpha=None, f_divergence_type="reverse_kl",
                           activation_offloading=False)
        dataset = Dataset.from_dict({"prompt_ids": [p.prompt_ids for p in data],
                                     "chosen_ids": [p.chosen_ids for p in data],
                                     "rejected_ids": [p.rejected_ids for p in data]})
        trainer = PreTokenizedDPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset,
                                         processing_class=tokenizer, callbacks=[log.trl_callback()])
        notes["trl_padding_free"] = trainer.padding_free  # 1.16 falls back to padding
    else:
        import grpo
        from trl import GRPOConfig, GRPOTrainer

        settings.pop("train_sampling_strategy", None)  # GRPO's RepeatSampler reads shuffle_dataset instead
        config = GRPOConfig(**settings, num_generations=args.generations,
                            max_completion_length=args.completion_length, temperature=1.0, top_p=1.0, top_k=0,
                            beta=0.0, loss_type="dapo", epsilon=0.2, scale_rewards="group", num_iterations=1,
                            shuffle_dataset=False, use_vllm=False, mask_truncated_completions=False,
                            log_completions=False)
        if config.steps_per_generation != 1:
            raise RuntimeError(f"TRL would not generate every step (steps_per_generation "
                               f"{config.steps_per_generation})")
        trainer = GRPOTrainer(model=model, reward_funcs=grpo.e_share, args=config,
                              train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                              callbacks=[log.trl_callback()])
    counts: list = []
    if method != "grpo":
        trainer.data_collator = counted(trainer.data_collator, counts)
    if len(trainer.train_dataset) != len(data):
        raise RuntimeError(f"TRL kept {len(trainer.train_dataset)} of {len(data)} rows")
    log.memory.reset()
    trainer.train()
    if method == "grpo":  # prompt + completion tokens per step from TRL's own count, completions from its mean
        seen = [b - a for a, b in zip([0] + log.tokens_seen[:-1], log.tokens_seen)]
        counts = [(s, round(n * batch * args.generations)) for s, n in zip(seen, log.lengths)]
    return trainer.model, counts[:total], notes


def worker(args) -> dict:
    """One measurement: one method, one side, in this process."""
    import shutil

    import torch

    from alignkit.models.load import load_tokenizer

    cuda = torch.cuda.is_available()
    torch.set_num_threads(args.threads)
    method = args.method
    warmup, steps = steps_of(args, method)
    total = warmup + steps
    tokenizer = load_tokenizer(args.model_dir, padding_side="left" if method == "grpo" else "right")
    data = build_data(args, tokenizer, method, args.batch, total)
    log = Log(CudaMemory() if cuda else harness.Memory(), total)
    out_dir = tempfile.mkdtemp(prefix=f"gpu-compare-{method}-{args.side}-")
    run = ours if args.side == "ours" else trl
    try:
        model, counts, notes = run(args, method, data, tokenizer, log, out_dir, args.batch, "cuda" if cuda else "cpu")
        result = log.result(out_dir, model)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    times = result.pop("times")
    if len(times) < total or len(counts) < total:
        raise RuntimeError(f"{args.side}: {len(times)} step marks and {len(counts)} token counts for {total} steps")
    elapsed = times[total - 1][0] - times[warmup - 1][0]
    timed = sum(real for real, _ in counts[warmup:total])
    return {"method": method, "side": args.side, "batch": args.batch, "warmup": warmup, "steps": steps,
            "dtype": args.dtype, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "time_s": elapsed, "step_time_s": elapsed / steps, "tokens": timed, "tokens_per_s": timed / elapsed,
            "real_tokens_all": sum(r for r, _ in counts), "trained_tokens_all": sum(t for _, t in counts),
            "step_counts": counts, "first": log.first, "losses": result["losses"],
            "peak_bytes": result["abs_peak_bytes"], "peak_over_setup_bytes": result["peak_bytes"],
            "params": sum(p.numel() for p in model.parameters()), "ref_tokens": 0,
            "checkpointing": result["checkpointing"], **notes}


# ----------------------------------------------------------------------------------------------------------
# driver: the batch, the runs, the checks, the table


def param_count(shape: dict, vocab: int) -> int:
    """Parameters of the Llama-architecture model `gpu_check.build_model` makes (tied embeddings)."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return vocab * h + layers * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h) + h


def bytes_per_token(shape: dict, vocab: int) -> int:
    """Estimated activation bytes one trained token holds until the backward pass, bf16 without checkpointing:
    per layer ~40 x hidden (norms in float32, attention, residuals) + 12 x intermediate (the SwiGLU MLP), plus
    float32 log-probs over the vocabulary."""
    return shape["num_hidden_layers"] * (40 * shape["hidden_size"] + 12 * shape["intermediate_size"]) + 12 * vocab


def choose_batch(args, method: str, shape: dict, vocab: int, memory: int | None) -> int:
    """--batch, else a small fixed one (CPU, --tiny), else the batch whose estimated memory is FILL of the GPU's:
    weights, gradients and AdamW state at 12 bytes per parameter, then activations per token."""
    if args.batch:
        return args.batch
    if memory is None or args.tiny:
        return TINY_BATCH[method]
    tokens = (FILL * memory - 12 * param_count(shape, vocab)) / bytes_per_token(shape, vocab)
    mean_length = 0.75 * args.seq_len
    per_item = {"sft": mean_length, "reward_model": 2 * mean_length, "dpo": 2 * mean_length,
                "grpo": (64 + args.completion_length) * args.generations}[method]  # ~64 prompt tokens
    return max(1, int(tokens // per_item))


def too_big(args, shape: dict, vocab: int, memory: int | None) -> str | None:
    """Why a shape cannot run here (None when it can): its weights, gradients and AdamW state plus one pair of
    longest sequences must fit in 90% of the GPU's memory."""
    if memory is None:
        return None
    need = 12 * param_count(shape, vocab) + 2 * args.seq_len * bytes_per_token(shape, vocab)
    if need > 0.9 * memory:
        return f"needs ~{need / 2**30:.0f} GiB (weights, gradients, AdamW state, one pair), the GPU has " \
               f"{memory / 2**30:.0f} GiB"
    return None


def close(a: float, b: float, dtype: str) -> bool:
    absolute, relative = TOLERANCE[dtype]
    return abs(a - b) <= absolute + relative * abs(b)


def check(method: str, ours: dict, theirs: dict, dtype: str) -> list[str]:
    """Why the two sides did not do the same work (empty when they did): the first step's logged values and the
    token counts of all steps (see the module docstring)."""
    problems = []
    for key in FIRST_KEYS[method]:
        a, b = ours["first"].get(key), theirs["first"].get(key)
        if a is None or b is None:
            problems.append(f"first-step {key} not logged by {'ours' if a is None else 'TRL'}")
        elif not close(a, b, dtype):
            absolute, relative = TOLERANCE[dtype]
            problems.append(f"first-step {key} differs: ours {a:.6g}, TRL {b:.6g} (tolerance {absolute:g} + "
                            f"{relative:g} x |TRL|)")
    real = (ours["real_tokens_all"], theirs["real_tokens_all"])
    trained = (ours["trained_tokens_all"], theirs["trained_tokens_all"])
    if method == "grpo":
        prompts = (real[0] - trained[0], real[1] - trained[1])
        if prompts[0] != prompts[1]:
            problems.append(f"prompt tokens differ: ours {prompts[0]}, TRL {prompts[1]}")
        if abs(trained[0] - trained[1]) > GRPO_COMPLETION_SLACK * max(trained):
            problems.append(f"completion tokens differ by more than {GRPO_COMPLETION_SLACK:.0%}: ours {trained[0]}, "
                            f"TRL {trained[1]}")
    else:
        if real[0] != real[1]:
            problems.append(f"real tokens differ: ours {real[0]}, TRL {real[1]}")
        if trained[0] != trained[1]:
            problems.append(f"trained tokens differ: ours {trained[0]}, TRL {trained[1]}")
    return problems


def summarize(method: str, runs: dict, dtype: str, on_gpu: bool, peak: float | None, memory: int | None) -> dict:
    """One row: per side the medians over repeats and MFU (`peak`: the chip's bf16 FLOP/s, None when unknown); the
    checks; the ratio and, on a GPU, the target verdict (pass None: an MFU target and no known peak)."""
    row = {"method": method}
    for side in SIDES:
        samples = runs[side]
        tps = statistics.median(s["tokens_per_s"] for s in samples)
        n = samples[0]["params"]
        flops = tps * 6 * n + 2 * n * statistics.median(s["ref_tokens"] / s["time_s"] for s in samples)
        row[side] = {"tokens_per_s": tps, "peak_bytes": statistics.median(s["peak_bytes"] for s in samples),
                     "mfu": 100 * flops / peak if peak else None, "first": samples[0]["first"],
                     "real_tokens_all": samples[0]["real_tokens_all"],
                     "trained_tokens_all": samples[0]["trained_tokens_all"],
                     "fill": statistics.median(s["peak_bytes"] for s in samples) / memory if memory else None}
    row["problems"] = check(method, runs["ours"][0], runs["trl"][0], dtype)
    if row["problems"]:
        row["ratio"], row["target"] = None, None
        return row
    row["ratio"] = row["ours"]["tokens_per_s"] / row["trl"]["tokens_per_s"]
    target = TARGETS[method]
    if target is None or not on_gpu:
        row["target"] = None
        return row
    speed, mfu = target
    ours_mfu = row["ours"]["mfu"]
    ok = None if mfu is not None and ours_mfu is None else row["ratio"] >= speed and (mfu is None or ours_mfu >= mfu)
    row["target"] = {"speed": speed, "mfu": mfu, "pass": ok}
    return row


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def print_row(row: dict, on_gpu: bool) -> None:
    method = row["method"]
    for side in SIDES:
        v = row[side]
        mfu = f"{v['mfu']:5.1f}%" if v["mfu"] is not None else "  n/a "
        fill = f" ({v['fill']:.0%} of the GPU)" if v["fill"] is not None else ""
        first = ", ".join(f"{k} {v['first'][k]:.6g}" for k in FIRST_KEYS[method] if k in v["first"])
        print(f"{method if side == 'ours' else '':13s} {side:4s} {v['tokens_per_s']:12,.1f} tok/s  MFU {mfu}  "
              f"peak {size(v['peak_bytes']):>11s}{fill}  tokens {v['real_tokens_all']} (trained "
              f"{v['trained_tokens_all']})  {first}")
    if row["problems"]:
        print(f"{'':13s} FAIL: {'; '.join(row['problems'])}")
        return
    target = row["target"]
    if not on_gpu:
        verdict = "targets apply on GPU only"
    elif target is None:
        verdict = "report only"
    else:
        wanted = f">= {target['speed']}x" + (f" and MFU >= {target['mfu']:.0f}%" if target["mfu"] else "")
        result = {True: "PASS", False: "FAIL", None: "not judged: no bf16 peak known for this device"}[target["pass"]]
        verdict = f"target {wanted}: {result}"
    print(f"{'':13s} ours/TRL {row['ratio']:.2f}x  ({verdict})")


def report(rows: list[dict], on_gpu: bool) -> int:
    """Print every row; the exit status: 1 when a check failed (the sides did different work), else 0."""
    for row in rows:
        print_row(row, on_gpu)
        fill = max(row[side]["fill"] or 1.0 for side in SIDES)
        if on_gpu and fill < 0.5:
            print(f"{'':13s} note: the batch filled only {fill:.0%} of the GPU (the estimate was low); raise --batch")
    failed = [r["method"] for r in rows if r["problems"]]
    if failed:
        print(f"FAIL: the two sides did not do the same work for {', '.join(failed)} (no ratio printed)")
    return 1 if failed else 0


def machine(cuda: bool) -> dict:
    import importlib.metadata as md
    import platform

    import torch

    info = {"device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
            "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "liger_kernel"):
        try:
            info[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            info[name] = None
    if cuda:
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def write_json(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def run_shape(args, name: str, shape: dict, doc: dict, save, started: float, on_gpu: bool, memory: int | None,
              work: str) -> list[dict]:
    """Build the model of one shape, run every method's workers (sides alternating), print and return its rows."""
    from alignkit.models.load import load_tokenizer

    vocab = len(load_tokenizer(args.tokenizer))
    if reason := too_big(args, shape, vocab, memory):
        print(f"shape {name}: skipped: {reason}")
        doc["shapes"][name] = {"skipped": reason}
        return []
    model_dir, n_params = gpu_check.build_model(args.tokenizer, os.path.join(work, name), shape)
    batches = {m: choose_batch(args, m, shape, vocab, memory) for m in args.methods}
    doc["shapes"][name] = {"config": shape, "params": n_params, "batch": batches}
    shown = ", ".join(f"{m} {b}" + (f"x{args.generations}" if m == "grpo" else "") for m, b in batches.items())
    print(f"\nshape {name}: {n_params / 1e9:.3f}B parameters, {args.dtype}; batch {shown}", flush=True)
    runs: dict = {m: {s: [] for s in SIDES} for m in args.methods}
    for r in range(args.repeats):
        for i, method in enumerate(args.methods):
            for side in SIDES if (i + r) % 2 == 0 else SIDES[::-1]:
                left = args.time_limit - (time.time() - started) if args.time_limit else args.timeout
                if left < 30:
                    print(f"  {method} {side}: not run (--time-limit {args.time_limit:g} s reached)")
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--method", method, "--side", side,
                       "--model-dir", str(model_dir), "--batch", str(batches[method]), "--dtype", args.dtype,
                       "--seq-len", str(args.seq_len), "--generations", str(args.generations),
                       "--completion-length", str(args.completion_length), "--warmup", str(args.warmup),
                       "--steps", str(args.steps), "--learning-rate", str(args.learning_rate),
                       "--attn", args.attn, "--padding-free", args.padding_free, "--threads", str(args.threads),
                       "--seed", str(args.seed)]
                cmd += [flag for flag, on in (("--tiny", args.tiny), ("--inject-mismatch", args.inject_mismatch),
                                              ("--gradient-checkpointing", args.gradient_checkpointing)) if on]
                try:
                    res = harness.run_worker(cmd, f"{name}/{method}/{side}", args.threads,
                                             min(args.timeout, left), args.gradient_checkpointing)
                except SystemExit as e:  # the worker failed: say why, keep going, fail at the end
                    print(f"  {method} {side}: {e}")
                    doc["errors"].append({"shape": name, "method": method, "side": side, "error": str(e)})
                    save()
                    continue
                res.update(shape=name, repeat=r)
                runs[method][side].append(res)
                doc["runs"].append(res)
                save()
                print(f"  {method:12s} {side:4s} repeat {r + 1}: {res['tokens_per_s']:12,.1f} tok/s  "
                      f"{res['step_time_s']:7.3f} s/step  peak {size(res['peak_bytes'])}", flush=True)
    peak = gpu_check.peak_flops() if on_gpu else None
    rows = []
    for method in args.methods:
        if not runs[method]["ours"] or not runs[method]["trl"]:
            continue
        rows.append({"shape": name, **summarize(method, runs[method], args.dtype, on_gpu, peak, memory)})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(json.dumps(worker(args)))
        return 0
    started = time.time()
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print("gpu_compare: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine, or "
              "pass --allow-cpu --tiny to check the script", file=sys.stderr)
        return 2
    if not on_gpu and not args.tiny:
        print("gpu_compare: --allow-cpu runs only with --tiny (a 0.5B model on CPU would take hours)", file=sys.stderr)
        return 2
    missing = missing_for_trl()
    if missing:
        print(wheels_hint(missing), file=sys.stderr)
        return 2
    if args.dtype == "auto":
        args.dtype = "bfloat16" if on_gpu else "float32"
    if args.attn == "auto":
        import importlib.util

        args.attn = "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn") else "sdpa"
    if args.padding_free == "auto":
        args.padding_free = "on" if args.attn == "flash_attention_2" or args.tiny else "off"
    args.threads = args.threads or (8 if on_gpu else 1)
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed, when installed, would say so on stdout
    info = machine(on_gpu)
    memory = info.get("gpu_memory_bytes")
    suffix = "gpu" + ("-tiny" if args.tiny else "") + ("" if on_gpu else "-cpu")
    out = args.out or os.path.join(harness.REPO, "benchmarks", "results",
                                   f"{datetime.date.today().isoformat()}-{suffix}.json")
    shapes = {"tiny": SHAPES["tiny"]} if args.tiny else {s: SHAPES[s] for s in args.shapes}
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "method", "side", "model_dir", "out")}
    doc = {"machine": info, "settings": settings, "shapes": {}, "runs": [], "rows": [], "errors": []}
    print(f"gpu_compare: alignkit vs TRL {info['trl']} (transformers {info['transformers']}, torch {info['torch']}, "
          f"CUDA {info['cuda']}) on {info['device']}, {args.dtype}, {args.attn} attention, padding-free "
          f"{args.padding_free} on both sides, fused AdamW lr {args.learning_rate}, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; {args.repeats} repeat(s), "
          f"each a fresh process, sides alternating; writing {out}", flush=True)
    rows: list[dict] = []
    work = tempfile.mkdtemp(prefix="gpu-compare-")
    try:
        for name, shape in shapes.items():
            shape_rows = run_shape(args, name, shape, doc, lambda: write_json(out, doc), started, on_gpu, memory,
                                   work)
            if shape_rows:
                print(f"\nshape {name} ({args.dtype}, {info['device']}):")
                report(shape_rows, on_gpu)
            rows += shape_rows
            doc["rows"] = rows
            write_json(out, doc)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"\n(all runs took {time.time() - started:.0f} s; raw figures in {out})")
    if not on_gpu:
        print("targets apply on GPU only: on CPU these ratios say nothing about a GPU")
    failed = [r for r in rows if r["problems"]]
    if failed or doc["errors"]:
        print("FAIL: " + "; ".join([f"{r['shape']} {r['method']}: {'; '.join(r['problems'])}" for r in failed]
                                   + [f"{e['shape']} {e['method']} {e['side']}: worker failed" for e in doc["errors"]]))
        return 1
    if on_gpu:
        verdicts = [r["target"]["pass"] for r in rows if r["target"] is not None]
        overall = "FAIL" if False in verdicts else "not judged" if None in verdicts else "PASS"
        print(f"targets: {overall} (DPO >= 1.3x and MFU >= 30%, SFT >= 1.2x and MFU >= 30%, GRPO >= 1.5x; reward "
              "model report only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
