"""Direct Preference Optimization (Rafailov et al. 2023) and its reference-based variants (cDPO, robust,
IPO, hinge/SLiC, RPO's NLL term), on the shared engine.

Per step: the B chosen and B rejected sequences go through the policy in one forward pass (only response
positions are projected to the vocabulary, `ops.logprobs`); their summed log-probs (per-token means for IPO)
and the reference's give the loss of `alignkit.losses.preference`.

The reference (`ref`):
- copy: a frozen second model (`ref_model_name_or_path`, default the policy's starting weights);
- adapter: the policy itself with its LoRA adapter disabled: one model in memory (needs use_peft);
- precomputed: the reference's log-probs of every example computed once before training and cached in
  output_dir/reference_logps.pt; the reference is not in memory while training.
All three give the same loss (tested); `auto` picks adapter with LoRA, else precomputed.

Deviations from TRL's DPOTrainer, on purpose: long pairs are truncated (prompt from the left first) rather
than dropped; batches are length-bucketed by default (no compute on most pads, same numbers); the loss is
normalised over the accumulated batch's pairs, so gradient accumulation equals the large batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.errors import AlignkitError

REFERENCES = ("auto", "copy", "adapter", "precomputed")
LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")
LAYOUTS = ("bucketed", "padded", "padding_free")


@dataclass
class DPOConfig:
    """Direct preference optimisation on preference pairs."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to train: embedded:NAME, a local checkpoint or a hub id (usually an SFT model)."""
    ref_model_name_or_path: str | None = None
    """Reference model (default: the policy's starting weights)."""
    dataset_name: str = ""
    """Preference data (prompt, chosen, rejected)."""
    eval_dataset_name: str | None = None
    """Held-out preference data (default: the training file's dataset_test_split rows, if any)."""
    dataset_train_split: str = "train"
    """Split to train on (a saved DatasetDict's split, or the value of a "split" column)."""
    dataset_test_split: str = "test"
    """Split to evaluate on (eval/rewards/accuracies)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO; with label_smoothing: cDPO), robust, ipo or hinge."""
    beta: float = 0.1
    """β: strength of the pull towards the reference (IPO's τ)."""
    label_smoothing: float = 0.0
    """ε: assumed share of flipped labels (sigmoid: cDPO; robust: must be below 0.5)."""
    rpo_alpha: float = 0.0
    """Weight of the chosen responses' per-token NLL added to the loss (RPO); 0 turns it off."""
    ref: str = "auto"
    """Reference strategy: copy, adapter (LoRA disabled; needs use_peft), precomputed, or auto."""
    max_length: int = 1024
    """Longest prompt + response in tokens; the prompt is cut from the left first."""
    max_prompt_length: int | None = None
    """Cut prompts (from the left) to this many tokens first."""
    batch_layout: str = "bucketed"
    """bucketed (length groups: few pads computed), padded, or padding_free (one row; best with flash-attention
    on GPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more time."""
    dtype: str = "auto"
    """Weights dtype: auto (bfloat16 on capable GPUs, float32 on CPU), float32, bfloat16, float16."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    peft: PeftSettings = field(default_factory=PeftSettings)
    """LoRA settings (flat keys: use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules)."""
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-6))
    """Shared training settings (flat keys: learning_rate, max_steps, ...)."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--data",),
                   "eval_dataset_name": ("--eval_data",), "ref_model_name_or_path": ("--ref_model",)}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the preference data (--dataset_name / --data FILE)")
        for name, value, allowed in (("loss_type", self.loss_type, LOSS_TYPES), ("ref", self.ref, REFERENCES),
                                     ("batch_layout", self.batch_layout, LAYOUTS)):
            if value not in allowed:
                raise AlignkitError(f"config: {name}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.ref == "adapter" and not self.peft.use_peft:
            raise AlignkitError("config: ref: adapter needs a LoRA adapter to disable; add --use_peft true "
                                "or pick --ref copy / precomputed")
        if self.beta <= 0:
            raise AlignkitError(f"config: beta: must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise AlignkitError(f"config: label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if self.max_length < 2:
            raise AlignkitError(f"config: max_length: must be at least 2, got {self.max_length}")
        self.train.check()

    def reference(self) -> str:
        if self.ref != "auto":
            return self.ref
        return "adapter" if self.peft.use_peft and not self.ref_model_name_or_path else "precomputed"


@dataclass
class DPOExample:
    """A tokenized pair, with the reference's summed log-probs once precomputed."""

    pair: object  # data.tokenize.TokenizedPair
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def rows(self) -> list:
        """The sequences the reference scores, in the order `set_reference` takes their log-probs."""
        return [self.pair.chosen, self.pair.rejected]

    def set_reference(self, values: list[float]) -> None:
        self.ref_chosen, self.ref_rejected = values


def collate_dpo(examples: list[DPOExample], pad_id: int, padding_free: bool = False) -> dict:
    """Chosen rows then rejected rows, right-padded (or one padding-free row with `sequence_lengths`), and the
    precomputed reference log-probs when the examples carry them."""
    import torch

    from alignkit.data.collate import collate_responses

    pairs = [e.pair for e in examples]
    batch = collate_responses([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, padding_free)
    if examples[0].ref_chosen is not None:
        batch["ref_logps"] = torch.tensor([e.ref_chosen for e in examples] + [e.ref_rejected for e in examples])
    return batch


def sequence_sums(model, batch: dict, bucketed: bool = False, mean_logits: bool = False) -> tuple:
    """(summed response log-probs, response token counts), one per sequence in the batch's order; with
    `mean_logits`, a third tensor: each response's summed vocabulary-mean logits (no gradient)."""
    import torch

    from alignkit.data.collate import length_groups
    from alignkit.engine.distributed import world_size
    from alignkit.ops.logprobs import sequence_logps

    def sums_of(logps):
        values = (logps.token_logps, logps.mask.long())
        return values + ((logps.token_mean_logits,) if mean_logits else ())

    if "sequence_lengths" in batch:  # one padding-free row: sum each sequence's segment
        lengths = batch["sequence_lengths"]
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        per_token = sums_of(sequence_logps(model, batch, mean_logits=mean_logits))
        return tuple(torch.zeros(len(lengths), device=t.device, dtype=t.dtype).index_add(0, segment, t[0])
                     for t in per_token)
    # on several processes every rank must run the same number of forward passes (DDP and FSDP communicate
    # in each), and the number of length groups differs between ranks: one padded pass instead, same numbers
    if not bucketed or world_size() > 1:
        return tuple(t.sum(-1) for t in sums_of(sequence_logps(model, batch, mean_logits=mean_logits)))
    rows_total = batch["input_ids"].shape[0]
    out = None
    for rows, sub in length_groups(batch):
        parts = [t.sum(-1) for t in sums_of(sequence_logps(model, sub, mean_logits=mean_logits))]
        if out is None:
            out = [torch.zeros(rows_total, device=t.device, dtype=t.dtype) for t in parts]
        out = [o.index_put((rows,), t) for o, t in zip(out, parts)]
    return tuple(out)


class Reference:
    """Where the reference log-probs come from (see the module docstring)."""

    def __init__(self, strategy: str, model=None, bucketed: bool = False):
        self.strategy, self.model, self.bucketed = strategy, model, bucketed

    def logps(self, policy, batch: dict):
        import torch

        if self.strategy == "precomputed":
            return batch["ref_logps"]
        with torch.no_grad():
            if self.strategy == "adapter":
                with policy.disable_adapter():
                    return sequence_sums(policy, batch, self.bucketed)[0]
            return sequence_sums(self.model, batch, self.bucketed)[0]


def dpo_loss(model, batch: dict, reference: Reference, config: DPOConfig, bucketed: bool = False):
    """(summed loss over the batch's pairs, metrics with TRL's names)."""
    from alignkit.losses import preference

    sums, counts, logits = sequence_sums(model, batch, bucketed, mean_logits=True)
    ref = reference.logps(model, batch).to(sums)
    policy_c, policy_r = sums.chunk(2)
    ref_c, ref_r = ref.chunk(2)
    count_c, count_r = counts.chunk(2)
    if config.loss_type == "ipo":  # per-token means, so the 1/(2β) target does not scale with length
        args = (policy_c / count_c.clamp(min=1), policy_r / count_r.clamp(min=1),
                ref_c / count_c.clamp(min=1), ref_r / count_r.clamp(min=1))
    else:
        args = (policy_c, policy_r, ref_c, ref_r)
    kwargs = {"label_smoothing": config.label_smoothing} if config.loss_type in ("sigmoid", "robust") else {}
    out = preference.PAIRED_LOSSES[config.loss_type](*args, beta=config.beta, **kwargs)
    losses = out.losses
    metrics = {}
    if config.rpo_alpha:
        nll = preference.nll_term(policy_c, count_c)
        losses = losses + config.rpo_alpha * nll
        metrics["nll_loss"] = nll.detach().mean().item()
    # rewards are β × the summed log-ratios for every loss (IPO too, whose loss uses per-token means), as TRL logs
    chosen_rewards = config.beta * (policy_c - ref_c).detach()
    rejected_rewards = config.beta * (policy_r - ref_r).detach()
    margins = chosen_rewards - rejected_rewards
    metrics.update({
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
        "logps/chosen": policy_c.detach().mean().item(),
        "logps/rejected": policy_r.detach().mean().item(),
        **logit_metrics(logits, counts),
    })
    return losses.sum(), metrics


def logit_metrics(logit_sums, counts) -> dict:
    """TRL's logits/chosen and logits/rejected: the vocabulary-mean logit averaged over the batch's chosen
    (rejected) response tokens."""
    logits_c, logits_r = logit_sums.chunk(2)
    count_c, count_r = counts.chunk(2)
    return {"logits/chosen": (logits_c.sum() / count_c.sum().clamp(min=1)).item(),
            "logits/rejected": (logits_r.sum() / count_r.sum().clamp(min=1)).item()}


def count_pairs(batch: dict) -> int:
    rows = len(batch["sequence_lengths"]) if "sequence_lengths" in batch else batch["input_ids"].shape[0]
    return rows // 2


class LikelihoodWatch:
    """Warns once when the chosen responses' log-probs fall while the margin grows: DPO is then pushing
    both responses down (the rejected faster), the failure users most often ask about."""

    def __init__(self, window: int = 10, drop: float = 1.0, rpo_alpha: float = 0.0):
        self.window, self.drop, self.seen, self.warned = window, drop, [], False
        self.rpo_alpha = rpo_alpha

    def __call__(self, metrics: dict) -> None:
        self.seen.append((metrics["logps/chosen"], metrics["rewards/margins"]))
        if self.warned or len(self.seen) < 2 * self.window:
            return
        first, last = self.seen[: self.window], self.seen[-self.window:]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        fell = mean([c for c, _ in first]) - mean([c for c, _ in last])
        grew = mean([m for _, m in last]) - mean([m for _, m in first])
        if fell > self.drop and grew > 0:
            self.warned = True
            nll = (f"a larger rpo_alpha (now {self.rpo_alpha:g})" if self.rpo_alpha > 0
                   else "rpo_alpha > 0 (an NLL term on chosen)")
            warnings.warn(f"dpo: the chosen responses' log-probs fell by {fell:.2f} nats while the reward margin "
                          f"grew by {grew:.2f}: both responses are being pushed down. Consider a lower learning "
                          f"rate, a larger beta, or {nll}", stacklevel=2)


def evaluate_pairs(loss_fn, model, examples: list[DPOExample], pad_id: int, batch_size: int) -> dict:
    """Held-out eval/loss and eval/<metric> of `loss_fn(model, batch) -> (summed loss, metrics)` over
    `examples`, weighted by pairs (the engine calls it without gradients)."""
    totals: dict[str, float] = {}
    n = 0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_dpo(chunk, pad_id).items()}
        loss, metrics = loss_fn(model, batch)
        for k, v in {"loss": loss.item() / len(chunk), **metrics}.items():
            totals[k] = totals.get(k, 0.0) + v * len(chunk)
        n += len(chunk)
    return {f"eval/{k}": v / max(n, 1) for k, v in totals.items()}


def precompute_reference(examples: list, reference_model, pad_id: int, batch_size: int, cache_path=None,
                         key: str = "") -> None:
    """Fill in every example's reference log-probs (from `cache_path` when it holds the same `key`). An
    example gives the sequences to score with `rows()` and takes their summed log-probs with
    `set_reference(values)` (DPO: chosen, rejected; KTO: the completion and its mismatched KL partner)."""
    import torch

    from alignkit.data.collate import collate

    if cache_path is not None and cache_path.exists():
        cached = torch.load(cache_path, weights_only=True)
        if cached.get("key") == key and "values" in cached and len(cached["values"]) == len(examples):
            for e, values in zip(examples, cached["values"].tolist()):
                e.set_reference(values)
            return
    device = next(reference_model.parameters()).device
    computed = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            rows = [row for e in chunk for row in e.rows()]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            sums = sequence_sums(reference_model, batch, bucketed=True)[0].reshape(len(chunk), -1).cpu()
            for e, values in zip(chunk, sums.tolist()):
                e.set_reference(values)
            computed.append(sums)
    from alignkit.engine.distributed import is_main_process

    if cache_path is not None and computed and is_main_process():  # every process computes; one writes
        from alignkit.engine.checkpoint import torch_save_atomic

        torch_save_atomic(cache_path, {"key": key, "values": torch.cat(computed)})


def cache_key(config, examples: list) -> str:
    """What the cached reference log-probs depend on: the reference model and every scored sequence."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(str(config.ref_model_name_or_path or config.model_name_or_path).encode())
    for e in examples:
        digest.update(repr([(row.prompt_ids, row.completion_ids) for row in e.rows()]).encode())
    return digest.hexdigest()


def load_pairs(config) -> tuple:
    """(tokenizer, training examples, held-out examples) for a preference method's config (dataset_name,
    eval_dataset_name, the two splits, max_length, max_prompt_length)."""
    from alignkit.data.io import load_train_eval
    from alignkit.data.tokenize import tokenize_rows
    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(config.model_name_or_path)
    train_rows, eval_rows = load_train_eval(config.dataset_name, "preference", config.eval_dataset_name,
                                            config.dataset_train_split, config.dataset_test_split)
    limits = {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length}
    examples = [DPOExample(p) for p in tokenize_rows(tokenizer, train_rows, "preference", **limits)]
    eval_examples = [DPOExample(p) for p in tokenize_rows(tokenizer, eval_rows, "preference", **limits)]
    if not examples:
        raise AlignkitError(f"{config.dataset_name}: no pairs left to train on")
    return tokenizer, examples, eval_examples


def train_dpo(config: DPOConfig):
    """Train config.model_name_or_path with DPO on config.dataset_name; writes the run directory and
    returns the engine's TrainResult."""
    from pathlib import Path

    import torch

    from alignkit.engine.loop import check_output_dir
    from alignkit.engine.outputs import start_run, train_and_save
    from alignkit.models.load import load_policy

    config.check()
    check_output_dir(config.train)  # an output_dir / --resume mistake costs no time
    strategy = config.reference()
    tokenizer, examples, eval_examples = load_pairs(config)
    pad_id = tokenizer.pad_token_id
    out = Path(config.train.output_dir)
    start_run("dpo", config)  # after the data is read: bad data must not leave a "running" run.json

    ref_name = config.ref_model_name_or_path or config.model_name_or_path
    reference_model = None
    if strategy in ("copy", "precomputed"):
        reference_model = load_policy(ref_name, dtype=config.dtype, device=config.device).eval()
        reference_model.requires_grad_(False)
    if strategy == "precomputed":
        size = config.train.per_device_eval_batch_size
        precompute_reference(examples, reference_model, pad_id, size, out / "reference_logps.pt",
                             cache_key(config, examples))
        precompute_reference(eval_examples, reference_model, pad_id, size)
        reference_model = None  # not in memory while training
    reference = Reference(strategy, reference_model, bucketed=config.batch_layout == "bucketed")

    torch.manual_seed(config.train.seed)
    model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                        lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
    padding_free = config.batch_layout == "padding_free"
    bucketed = config.batch_layout == "bucketed"
    watch = LikelihoodWatch(rpo_alpha=config.rpo_alpha)

    def collate(items):
        return collate_dpo(items, pad_id, padding_free)

    def step(model, batch):
        loss, metrics = dpo_loss(model, batch, reference, config, bucketed)
        watch(metrics)
        return loss, metrics

    eval_fn = None
    if eval_examples:
        def eval_fn(model):
            return evaluate_pairs(lambda m, b: dpo_loss(m, b, reference, config, bucketed=True), model,
                                  eval_examples, pad_id, config.train.per_device_eval_batch_size)

    return train_and_save("dpo", config, model, tokenizer, examples, collate, step, count_fn=count_pairs,
                          eval_fn=eval_fn)
