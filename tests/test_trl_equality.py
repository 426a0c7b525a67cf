"""Our preference losses against TRL's own code (not a re-typed formula), on the same random tensors, to 1e-6.

test_preference_losses.py checks the formulas by hand; this file runs TRL's real trainers. DPO and KTO compute
their losses inside `_compute_loss`, so a real `DPOTrainer` / `KTOTrainer` is built on the tiny model (2–3
rows, reference log-probs precomputed so no reference model is kept) and `compute_loss` is called with
`StubLM`, a stand-in for a model patched with TRL's fused LM head: its per-token log-probs are fixed random
numbers. Our losses get the same log-probs, summed over each completion as alignkit does, and TRL's batch mean
(and its logged rewards) must equal the mean of ours. CPO/SimPO and ORPO have standalone tensor methods
(`CPOTrainer.cpo_loss`, `ORPOTrainer.odds_ratio_loss`) that are called directly on a real trainer; their
NLL terms come from `concatenated_forward`, run on a stub with random logits.

Random tensors are float64 (TRL's DPO/KTO/CPO code keeps the input dtype), so 1e-6 leaves no room for a
formula difference. Written against TRL 1.16.0. Differences found, each pinned by a test below:
- TRL 1.16's DPO `sigmoid` ignores `label_smoothing` (no cDPO in DPOTrainer; test skipped, cDPO checked
  against CPOTrainer's conservative sigmoid instead).
- IPO: same loss; `ipo` returns rewards from per-token means, and `dpo_loss` logs β·summed log-ratios as TRL does.
- RPO's NLL (DPO `loss_type=["sigmoid", "sft"]`): TRL pools tokens over the batch, alignkit averages each
  response's per-token NLL (equal only when the chosen responses have equal lengths).
- CPO's and ORPO's NLL: TRL pools tokens over the batch, and ORPO's includes the prompt tokens; alignkit's
  `nll_term` is each chosen response's per-token NLL averaged over pairs.
- ORPO: TRL's metric `log_odds_ratio` is mean log σ(log-odds ratio) and its `log_odds_chosen` the mean
  log-odds ratio; alignkit logs both under the same names. `log_odds` uses log1mexp as TRL does, so float32
  values near p = 1 agree too.
"""

import pytest

trl = pytest.importorskip("trl")

import math  # noqa: E402
import warnings  # noqa: E402
import zlib  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl.trainer.utils import FusedCausalLMOutput  # noqa: E402

from alignkit.losses import preference as P  # noqa: E402

ATOL = 1e-6
DTYPE = torch.float64
PAIRS = Dataset.from_dict({"prompt": ["one two", "three four five"], "chosen": [" six", " seven eight"],
                           "rejected": [" nine ten", " eleven"]})


def _common(tmp_path) -> dict:
    return {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, "save_strategy": "no"}


class StubLM(torch.nn.Module):
    """A causal LM as TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`) presents it:
    `model(..., labels=labels, fused_lm_head=True)` returns per-token fields of shape (B, T − 1), zero where
    the next-token label is −100. The values are random but a fixed function of each row's tokens, so the
    mismatched KL rows of KTO get their own log-probs and a second call returns the same numbers."""

    def forward(self, input_ids, attention_mask=None, labels=None, fused_lm_head=False, **kwargs):
        assert fused_lm_head and labels is not None, "TRL should ask for the fused LM head's log-probs"
        mask = labels[:, 1:] != -100
        fields = torch.stack([self._row(ids) for ids in input_ids])  # (B, T − 1, 4)
        fields = fields * mask.unsqueeze(-1)
        log_probs, entropy, mean_logits, is_top1 = fields.unbind(-1)
        return FusedCausalLMOutput(loss=-log_probs.sum() / mask.sum().clamp(min=1), log_probs=log_probs,
                                   entropy=entropy, log_sum_sq_probs=log_probs * 0.5, mean_logits=mean_logits,
                                   is_top1=is_top1 > 0.5, label_mask=mask)

    @staticmethod
    def _row(ids):
        g = torch.Generator().manual_seed(zlib.crc32(str(ids.tolist()).encode()))
        n = len(ids) - 1
        log_probs = -(0.02 + 3 * torch.rand(n, generator=g, dtype=DTYPE))  # −3.02 … −0.02 per token
        return torch.stack([log_probs, 5 * torch.rand(n, generator=g, dtype=DTYPE),
                            torch.randn(n, generator=g, dtype=DTYPE), torch.rand(n, generator=g, dtype=DTYPE)], -1)


def completion_sums(model, input_ids, completion_mask):
    """(summed log-probs of each completion, completion token counts), as alignkit's `sequence_sums` gives."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    log_probs = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
    return (log_probs * completion_mask[:, 1:]).sum(1), completion_mask.sum(1)


def random_ids(g, low, high):
    return torch.randint(3, 500, (int(torch.randint(low, high + 1, (1,), generator=g)),), generator=g).tolist()


def last_metrics(trainer) -> dict:
    return {k: v[-1] for k, v in trainer._metrics["eval"].items()}


# --------------------------------------------------------------------------------------------------- DPO

def make_dpo_trainer(tiny_model, tiny_tokenizer, tmp_path, **config):
    args = trl.DPOConfig(precompute_ref_log_probs=True, per_device_train_batch_size=2, **_common(tmp_path), **config)
    trainer = trl.DPOTrainer(model=tiny_model, args=args, train_dataset=PAIRS, processing_class=tiny_tokenizer)
    assert trainer.ref_model is None and trainer.precompute_ref_logps
    trainer.model.eval()  # metrics land in _metrics["eval"]
    return trainer


def dpo_batch(trainer, seed=0, pairs=8, chosen_len=None, spread=20.0):
    """TRL's collator on random token ids (prompts 1–5 tokens, responses 1–9), then reference log-probs
    placed around the policy's so that β·h spans the interesting range (h has std ≈ `spread`)."""
    g = torch.Generator().manual_seed(seed)
    examples = [{"prompt_ids": random_ids(g, 1, 5),
                 "chosen_ids": random_ids(g, *((chosen_len, chosen_len) if chosen_len else (1, 9))),
                 "rejected_ids": random_ids(g, 1, 9)} for _ in range(pairs)]
    batch = trainer.data_collator(examples)
    sums, counts = completion_sums(StubLM(), batch["input_ids"], batch["completion_mask"])
    ref = sums + spread / math.sqrt(2) * torch.randn(sums.shape, generator=g, dtype=DTYPE)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref.chunk(2)
    return batch, (*sums.chunk(2), *ref.chunk(2)), counts.chunk(2)


def trl_dpo(trainer, batch):
    loss = trainer.compute_loss(StubLM(), batch)
    return loss.item(), last_metrics(trainer)


def assert_dpo_metrics(metrics, out: P.PreferenceLoss, pc, pr):
    margins = out.chosen_rewards - out.rejected_rewards
    ours = {"rewards/chosen": out.chosen_rewards.mean().item(),
            "rewards/rejected": out.rejected_rewards.mean().item(),
            "rewards/margins": margins.mean().item(), "rewards/accuracies": (margins > 0).double().mean().item(),
            "logps/chosen": pc.mean().item(), "logps/rejected": pr.mean().item()}
    for name, value in ours.items():
        assert metrics[name] == pytest.approx(value, abs=ATOL), name


@pytest.mark.parametrize("loss_type, beta, eps, seed, ours", [
    ("sigmoid", 0.1, 0.0, 1, lambda *a, beta, eps: P.dpo_sigmoid(*a, beta=beta)),
    ("sigmoid", 0.5, 0.0, 2, lambda *a, beta, eps: P.dpo_sigmoid(*a, beta=beta)),
    ("robust", 0.1, 0.2, 3, lambda *a, beta, eps: P.dpo_robust(*a, beta=beta, label_smoothing=eps)),
    ("robust", 0.3, 0.1, 4, lambda *a, beta, eps: P.dpo_robust(*a, beta=beta, label_smoothing=eps)),
    ("hinge", 0.1, 0.0, 5, lambda *a, beta, eps: P.hinge(*a, beta=beta)),
], ids=["sigmoid-b0.1", "sigmoid-b0.5", "robust-b0.1-e0.2", "robust-b0.3-e0.1", "hinge-b0.1"])
def test_dpo_losses_equal_trl(tiny_model, tiny_tokenizer, tmp_path, loss_type, beta, eps, seed, ours):
    """DPOTrainer._compute_loss (summed completion log-probs, precomputed reference) against ours, loss and
    rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected}."""
    trainer = make_dpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type=[loss_type], beta=beta,
                               label_smoothing=eps)
    batch, logps, _ = dpo_batch(trainer, seed=seed)
    loss, metrics = trl_dpo(trainer, batch)
    out = ours(*logps, beta=beta, eps=eps)
    if loss_type == "hinge":  # the batch must exercise both sides of the hinge
        assert (out.losses == 0).any() and (out.losses > 0).any()
    assert loss == pytest.approx(out.losses.mean().item(), abs=ATOL)
    assert_dpo_metrics(metrics, out, logps[0], logps[1])


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_equals_trl(tiny_model, tiny_tokenizer, tmp_path, beta):
    """IPO (Azar et al. 2023, eq. 17): TRL divides each summed log-ratio by the completion's token count;
    alignkit's `dpo_loss` passes per-token means to `ipo`. Same loss.

    The loss function `ipo` returns rewards from the per-token means it works on (TRL's = those × length);
    `dpo_loss` logs β·(summed log-ratio), as TRL does for every loss type."""
    trainer = make_dpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type=["ipo"], beta=beta)
    batch, (pc, pr, rc, rr), (nc, nr) = dpo_batch(trainer, seed=7, spread=8.0)
    loss, metrics = trl_dpo(trainer, batch)
    out = P.ipo(pc / nc, pr / nr, rc / nc, rr / nr, beta=beta)
    assert loss == pytest.approx(out.losses.mean().item(), abs=ATOL)
    assert metrics["rewards/chosen"] == pytest.approx((out.chosen_rewards * nc).mean().item(), abs=ATOL)
    assert metrics["rewards/rejected"] == pytest.approx((out.rejected_rewards * nr).mean().item(), abs=ATOL)
    assert metrics["rewards/chosen"] != pytest.approx(out.chosen_rewards.mean().item(), abs=1e-3)


def test_cdpo_label_smoothing_in_dpo_trainer(tiny_model, tiny_tokenizer, tmp_path):
    """Conservative DPO (Mitchell 2023): −(1−ε)·log σ(βh) − ε·log σ(−βh).

    TRL 1.16's DPOTrainer no longer applies label_smoothing to `sigmoid` (its DPOConfig documents
    label_smoothing for robust and exo_pair only, and `sigmoid` computes −log σ(βh) whatever ε is), so there
    is no cDPO in TRL's DPOTrainer to compare with: skipped when TRL ignores ε. If a TRL version applies it
    again, this compares the two."""
    trainer = make_dpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type=["sigmoid"], beta=0.1,
                               label_smoothing=0.1)
    batch, logps, _ = dpo_batch(trainer, seed=3)
    loss, _ = trl_dpo(trainer, batch)
    plain = P.dpo_sigmoid(*logps, beta=0.1).losses.mean().item()
    cdpo = P.dpo_sigmoid(*logps, beta=0.1, label_smoothing=0.1).losses.mean().item()
    assert abs(plain - cdpo) > 1e-3
    if loss == pytest.approx(plain, abs=ATOL):
        pytest.skip(f"TRL {trl.__version__} DPOTrainer ignores label_smoothing for loss_type='sigmoid' (no cDPO)")
    assert loss == pytest.approx(cdpo, abs=ATOL)


def test_cdpo_equals_trl_conservative_sigmoid(tiny_model, tiny_tokenizer, tmp_path):
    """TRL 1.16 still has the conservative sigmoid, in CPOTrainer.cpo_loss: −(1−ε)·log σ(β·x) − ε·log σ(−β·x)
    with x = π_c − π_r. Given the log-ratios π − ρ instead of π, x = h and it is exactly cDPO."""
    cpo = make_cpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type="sigmoid", beta=0.1,
                           label_smoothing=0.1)
    g = torch.Generator().manual_seed(11)
    pc, pr, rc, rr = -30 * torch.rand(4, 16, generator=g, dtype=DTYPE)
    losses, chosen_rewards, rejected_rewards = cpo.cpo_loss(pc - rc, pr - rr)
    out = P.dpo_sigmoid(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    torch.testing.assert_close(out.losses, losses, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected_rewards, rejected_rewards, atol=ATOL, rtol=0)


@pytest.mark.parametrize("equal_lengths", [True, False])
def test_rpo_nll_term_against_trl_sft(tiny_model, tiny_tokenizer, tmp_path, equal_lengths):
    """RPO = DPO + α·NLL(chosen); in TRL 1.16 `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, α]`.

    TRL's sft term is −(Σ_i Σ_t log π(y_it)) / Σ_i n_i, the token mean pooled over the batch's chosen
    responses; alignkit's `nll_term` is each response's per-token NLL, −Σ_t log π(y_it) / n_i, averaged over
    pairs, as in RPO (Pang et al. 2024, eq. 1: −log M(c_w, y_w | x) / (|c_w| + |y_w|) per example). Equal when
    the chosen responses have equal lengths; otherwise TRL weights each pair by its length (pinned below)."""
    alpha = 0.7
    trainer = make_dpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type=["sigmoid", "sft"],
                               loss_weights=[1.0, alpha], beta=0.1)
    batch, (pc, pr, rc, rr), (nc, _) = dpo_batch(trainer, seed=5, chosen_len=4 if equal_lengths else None)
    loss, _ = trl_dpo(trainer, batch)
    nll = P.nll_term(pc, nc)
    ours = (P.dpo_sigmoid(pc, pr, rc, rr, beta=0.1).losses + alpha * nll).mean().item()
    if equal_lengths:
        assert loss == pytest.approx(ours, abs=ATOL)
    else:
        pooled = (nll * nc).sum() / nc.sum()
        assert loss == pytest.approx(P.dpo_sigmoid(pc, pr, rc, rr, beta=0.1).losses.mean().item()
                                     + alpha * pooled.item(), abs=ATOL)
        assert abs(loss - ours) > 1e-3


# --------------------------------------------------------------------------------------------------- KTO

def make_kto_trainer(tiny_model, tiny_tokenizer, tmp_path, batch_size, **config):
    data = Dataset.from_dict({"prompt": ["one two", "three four five", "six"],
                              "completion": [" seven", " eight nine", " ten"], "label": [True, False, True]})
    args = trl.KTOConfig(precompute_ref_log_probs=True, per_device_train_batch_size=batch_size,
                         **_common(tmp_path), **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice on desirable/undesirable weights for the 3-row dataset
        trainer = trl.KTOTrainer(model=tiny_model, args=args, train_dataset=data, processing_class=tiny_tokenizer)
    assert trainer.ref_model is None and trainer.precompute_ref_logps and trainer.calculate_KL
    trainer.model.eval()
    return trainer


@pytest.mark.parametrize("beta, desirable_weight, undesirable_weight, kl_shift, labels", [
    (0.1, 1.0, 1.0, 4.0, [1, 0, 1, 1, 0, 0, 1, 0]),
    (0.5, 1.33, 0.75, 4.0, [1, 1, 1, 1, 1, 0, 0, 0]),
    (0.1, 1.0, 1.0, -4.0, [1, 0, 0, 1, 0, 1, 1, 0]),  # negative KL estimate: clamped to z₀ = 0
    (0.2, 1.0, 1.0, 4.0, [1, 1, 1, 1, 1, 1, 1, 1]),  # desirable only
], ids=["b0.1", "weighted", "kl-clamped", "desirable-only"])
def test_kto_equals_trl(tiny_model, tiny_tokenizer, tmp_path, beta, desirable_weight, undesirable_weight,
                        kl_shift, labels):
    """KTOTrainer._compute_loss against ours: loss (TRL: mean over the batch of λ_D(1 − σ(β(r − z₀))) and
    λ_U(1 − σ(β(z₀ − r)))), with z₀ = max(0, mean(π_KL − ρ_KL)) over the batch's mismatched KL rows, computed by
    TRL from the stub's KL log-probs; and the logged kl and rewards/{chosen,rejected,margins}."""
    trainer = make_kto_trainer(tiny_model, tiny_tokenizer, tmp_path, batch_size=len(labels), beta=beta,
                               desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    g = torch.Generator().manual_seed(len(labels) + int(beta * 10))
    examples = [{"prompt_ids": random_ids(g, 1, 5), "completion_ids": random_ids(g, 1, 9),
                 "KL_completion_ids": random_ids(g, 1, 9), "label": bool(lab)} for lab in labels]
    batch = trainer.data_collator(examples)
    stub = StubLM()
    policy, _ = completion_sums(stub, batch["input_ids"], batch["completion_mask"])
    kl_policy, _ = completion_sums(stub, batch["KL_input_ids"], batch["KL_completion_mask"])
    batch["ref_logps"] = policy + 12 * torch.randn(policy.shape, generator=g, dtype=DTYPE)
    batch["ref_KL_logps"] = kl_policy - kl_shift + torch.randn(kl_policy.shape, generator=g, dtype=DTYPE)
    desirable = torch.tensor(labels, dtype=torch.bool)
    assert batch["label"].tolist() == desirable.tolist()

    loss = trainer.compute_loss(stub, batch).item()
    metrics = last_metrics(trainer)

    kl = (kl_policy - batch["ref_KL_logps"]).mean()
    assert (kl > 0) == (kl_shift > 0)
    out = P.kto(policy, batch["ref_logps"], desirable, kl, beta=beta, desirable_weight=desirable_weight,
                undesirable_weight=undesirable_weight)
    assert loss == pytest.approx(out.losses.mean().item(), abs=ATOL)
    assert metrics["kl"] == pytest.approx(kl.clamp(min=0).item(), abs=ATOL)
    assert metrics["rewards/chosen"] == pytest.approx(out.chosen_rewards.mean().item(), abs=ATOL)
    if out.rejected_rewards.numel():
        assert metrics["rewards/rejected"] == pytest.approx(out.rejected_rewards.mean().item(), abs=ATOL)
        margin = out.chosen_rewards.mean() - out.rejected_rewards.mean()
        assert metrics["rewards/margins"] == pytest.approx(margin.item(), abs=ATOL)
    else:
        assert "rewards/rejected" not in metrics


# ------------------------------------------------------------------------------------------ CPO / SimPO

def make_cpo_trainer(tiny_model, tiny_tokenizer, tmp_path, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRLExperimentalWarning
        cpo = pytest.importorskip("trl.experimental.cpo")
        return cpo.CPOTrainer(model=tiny_model, args=cpo.CPOConfig(**_common(tmp_path), **config),
                              train_dataset=PAIRS, processing_class=tiny_tokenizer)


def random_logps(seed, n=16, low=-40.0):
    g = torch.Generator().manual_seed(seed)
    return low * torch.rand(n, generator=g, dtype=DTYPE), low * torch.rand(n, generator=g, dtype=DTYPE)


def assert_pairwise(out: P.PreferenceLoss, trl_out):
    losses, chosen_rewards, rejected_rewards = trl_out[:3]
    torch.testing.assert_close(out.losses, losses, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected_rewards, rejected_rewards, atol=ATOL, rtol=0)


@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_cpo_equals_trl(tiny_model, tiny_tokenizer, tmp_path, beta, eps):
    """CPOTrainer.cpo_loss, loss_type="sigmoid" (summed log-probs; Xu et al. 2024, eq. 3, with TRL's label
    smoothing) against our `cpo`, per pair, with the rewards β·π. (The NLL term is added by the methods.)"""
    trainer = make_cpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type="sigmoid", beta=beta,
                               label_smoothing=eps)
    pc, pr = random_logps(seed=int(beta * 10 + eps * 100))
    assert_pairwise(P.cpo(pc, pr, beta=beta, label_smoothing=eps), trainer.cpo_loss(pc, pr))


@pytest.mark.parametrize("beta, gamma, eps", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (10.0, 3.0, 0.1)])
def test_simpo_equals_trl(tiny_model, tiny_tokenizer, tmp_path, beta, gamma, eps):
    """SimPO (Meng et al. 2024, eq. 6): −log σ(β(π̄_c − π̄_r) − γ) on per-token mean log-probs.

    Parameter mapping: TRL's CPOConfig(loss_type="simpo", beta=β, simpo_gamma=γ) is our simpo(beta=β,
    gamma=γ). TRL computes logits = (π̄_c − π̄_r) − γ/β and then σ(β·logits) = σ(β(π̄_c − π̄_r) − γ): γ is the
    paper's reward margin, not divided by β twice. β ≠ 1, γ ≠ 0 here so a γ/β slip would show."""
    trainer = make_cpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type="simpo", beta=beta,
                               simpo_gamma=gamma, label_smoothing=eps, cpo_alpha=0.0)
    assert trainer.simpo_gamma == gamma and trainer.alpha == 0.0
    pc, pr = random_logps(seed=int(beta + gamma * 10), low=-3.0)  # per-token means
    assert_pairwise(P.simpo(pc, pr, beta=beta, gamma=gamma, label_smoothing=eps), trainer.cpo_loss(pc, pr))


# ------------------------------------------------------------------------------------------------- ORPO

def make_orpo_trainer(tiny_model, tiny_tokenizer, tmp_path, lam):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRLExperimentalWarning
        orpo = pytest.importorskip("trl.experimental.orpo")
        return orpo.ORPOTrainer(model=tiny_model, args=orpo.ORPOConfig(beta=lam, **_common(tmp_path)),
                                train_dataset=PAIRS, processing_class=tiny_tokenizer)


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_equals_trl(tiny_model, tiny_tokenizer, tmp_path, lam):
    """ORPOTrainer.odds_ratio_loss (ORPOConfig.beta is the paper's λ; Hong et al. 2024, eq. 6–7) against
    our `orpo` on mean log-probs in [−3, −0.02] (both sides of −ln 2, where TRL's log1mexp switches branch).

    Sign and names: TRL returns λ·log σ(log-odds ratio) per pair and subtracts its mean from the NLL; ours
    returns the loss, −λ·log σ(…). TRL's 4th output (logged as `log_odds_ratio`) is mean log σ(log-odds
    ratio) and its 5th (logged as `log_odds_chosen`) is the mean log-odds ratio, which is what alignkit logs
    under the name `log_odds_ratio`. TRL casts to float32, so its side carries float32 rounding."""
    trainer = make_orpo_trainer(tiny_model, tiny_tokenizer, tmp_path, lam)
    pc, pr = random_logps(seed=int(lam * 10), low=-3.0)
    pc, pr = pc - 0.02, pr - 0.02
    losses, chosen_rewards, rejected_rewards, mean_logsigmoid, mean_log_odds = trainer.odds_ratio_loss(pc, pr)
    out, ratio = P.orpo(pc, pr, lam=lam)
    torch.testing.assert_close(out.losses, -losses.to(DTYPE), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards.to(DTYPE), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected_rewards, rejected_rewards.to(DTYPE), atol=ATOL, rtol=0)
    assert mean_log_odds.item() == pytest.approx(ratio.mean().item(), abs=ATOL)
    assert mean_logsigmoid.item() == pytest.approx(torch.nn.functional.logsigmoid(ratio).mean().item(), abs=ATOL)


def trl_log_odds_ratios(trainer, pc, pr):
    """TRL's log-odds ratio of each pair: odds_ratio_loss on one pair at a time returns it as its mean."""
    return torch.stack([trainer.odds_ratio_loss(c[None], r[None])[4] for c, r in zip(pc, pr)])


def orpo_float32_case(tiny_model, tiny_tokenizer, tmp_path):
    """float32 mean log-probs in (−0.05, −0.001): mean token probability above 0.95 (a confident policy)."""
    trainer = make_orpo_trainer(tiny_model, tiny_tokenizer, tmp_path, 0.1)
    g = torch.Generator().manual_seed(0)
    pc, pr = (-(0.001 + 0.049 * torch.rand(64, generator=g))).chunk(2)
    exact = P.orpo(pc.double(), pr.double(), lam=0.1)[1]  # float64 log-odds ratio: no cancellation here
    return trl_log_odds_ratios(trainer, pc, pr).double(), pc, pr, exact


def test_orpo_float32_trl_is_accurate(tiny_model, tiny_tokenizer, tmp_path):
    """TRL's log1mexp (log(−expm1 x) above −ln 2, log1p(−eˣ) below; Mächler 2012) keeps the float32 log-odds
    ratio within 1e-6 of the float64 value."""
    trl_ratio, _, _, exact = orpo_float32_case(tiny_model, tiny_tokenizer, tmp_path)
    torch.testing.assert_close(trl_ratio, exact, atol=ATOL, rtol=0)


def test_orpo_float32_equals_trl(tiny_model, tiny_tokenizer, tmp_path):
    """Our float32 log-odds ratio against TRL's (which is within 1e-6 of exact)."""
    trl_ratio, pc, pr, _ = orpo_float32_case(tiny_model, tiny_tokenizer, tmp_path)
    torch.testing.assert_close(P.orpo(pc, pr, lam=0.1)[1].double(), trl_ratio, atol=ATOL, rtol=0)


def test_orpo_mean_probability_near_one_equals_trl(tiny_model, tiny_tokenizer, tmp_path):
    """Chosen mean log-probs between −1e-7 and −1e-8 (a near-deterministic response), float64."""
    trainer = make_orpo_trainer(tiny_model, tiny_tokenizer, tmp_path, 0.1)
    pc = torch.tensor([-1e-7, -3e-8, -1e-8], dtype=DTYPE)
    pr = torch.tensor([-0.5, -1.0, -2.0], dtype=DTYPE)
    trl_ratio = trl_log_odds_ratios(trainer, pc, pr).double()
    assert torch.isfinite(trl_ratio).all()
    torch.testing.assert_close(P.orpo(pc, pr, lam=0.1)[1], trl_ratio, atol=ATOL, rtol=0)


# ------------------------------------------------------------------ NLL terms of CPO and ORPO (`nll_term`)

class LogitsStub(torch.nn.Module):
    """A plain causal LM for CPO/ORPO's `concatenated_forward`: fixed random float64 logits; keeps its inputs."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.input_ids, self.attention_mask = input_ids, attention_mask
        g = torch.Generator().manual_seed(0)
        self.logits = torch.randn(*input_ids.shape, self.vocab, generator=g, dtype=DTYPE)
        return SimpleNamespace(logits=self.logits)


def next_token_logps(logits, targets):
    """(B, T − 1) log-probs of targets[:, 1:] (0 where −100) and their mask: what our `sequence_sums` sums."""
    mask = targets[:, 1:] != -100
    logps = logits[:, :-1].log_softmax(-1).gather(-1, targets[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def reference_free_forward(trainer, tiny_tokenizer):
    """TRL's concatenated_forward on its own collated batch of PAIRS, and our per-response sums and counts of
    the chosen responses' log-probs under the same logits."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    stub = LogitsStub(len(tiny_tokenizer))
    out = trainer.concatenated_forward(stub, batch)
    n = batch["chosen_labels"].shape[0]
    width = stub.input_ids.shape[1] - batch["chosen_labels"].shape[1]
    labels = torch.nn.functional.pad(batch["chosen_labels"], (0, width), value=-100)  # response tokens only
    logps, mask = next_token_logps(stub.logits[:n], labels)
    sums, counts = logps.sum(1), mask.sum(1)
    assert len(set(counts.tolist())) > 1, "the chosen responses should differ in length"
    return out, stub, sums, counts


def test_cpo_nll_against_trl(tiny_model, tiny_tokenizer, tmp_path):
    """CPO adds λ·NLL(chosen) (Xu et al. 2024: L_NLL = −E[log π_θ(y_w | x)]). TRL's CPOTrainer (cpo_alpha)
    takes the cross-entropy over the chosen responses' tokens pooled across the batch,
    Σ_i Σ_t −log π(y_it) / Σ_i n_i; alignkit's `nll_term` averages each response's per-token NLL over pairs.
    Same summed log-probs (TRL's chosen_logps = our sums); the NLL differs when lengths differ."""
    trainer = make_cpo_trainer(tiny_model, tiny_tokenizer, tmp_path, loss_type="sigmoid", cpo_alpha=1.0)
    (chosen_logps, _, _, _, nll), _, sums, counts = reference_free_forward(trainer, tiny_tokenizer)
    torch.testing.assert_close(chosen_logps, sums, atol=ATOL, rtol=0)
    ours = P.nll_term(sums, counts)
    assert nll.item() == pytest.approx(((ours * counts).sum() / counts.sum()).item(), abs=ATOL)
    assert abs(nll.item() - ours.mean().item()) > 1e-3


def test_orpo_nll_against_trl(tiny_model, tiny_tokenizer, tmp_path):
    """ORPO = NLL(chosen) + λ·L_OR (Hong et al. 2024, eq. 6), the NLL being the chosen response's given the
    prompt. TRL's ORPOTrainer takes it over the prompt *and* the response tokens (every attended token of the
    chosen rows, "computed over the full prompt and response" in its code), pooled across the batch;
    alignkit's `nll_term` is each response's per-token NLL, averaged over pairs. The odds ratio itself uses
    per-token mean response log-probs on both sides (TRL's chosen_logps = our sums / counts)."""
    trainer = make_orpo_trainer(tiny_model, tiny_tokenizer, tmp_path, 0.1)
    (chosen_logps, _, _, _, nll), stub, sums, counts = reference_free_forward(trainer, tiny_tokenizer)
    torch.testing.assert_close(chosen_logps, sums / counts, atol=ATOL, rtol=0)
    n = len(counts)
    attended = stub.input_ids[:n].masked_fill(stub.attention_mask[:n] == 0, -100)  # prompt and response
    full, full_mask = next_token_logps(stub.logits[:n], attended)
    assert nll.item() == pytest.approx((-full.sum() / full_mask.sum()).item(), abs=ATOL)
    assert abs(nll.item() - P.nll_term(sums, counts).mean().item()) > 1e-3


# --------------------------------------------------------------------------------------------------- GRPO / GSPO

def make_grpo_trainer(tiny_model, tiny_tokenizer, tmp_path, **config):
    args = trl.GRPOConfig(per_device_train_batch_size=4, num_generations=4, max_completion_length=9,
                          **_common(tmp_path), **config)
    prompts = Dataset.from_dict({"prompt": ["one two", "three four five"]})
    trainer = trl.GRPOTrainer(model=tiny_model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=prompts, processing_class=tiny_tokenizer)
    trainer.model.eval()  # metrics land in _metrics["eval"], no accumulation scaling
    return trainer


def grpo_inputs(seed, rows=8):
    """Random prompt/completion ids (completions 1–9 tokens, right-padded), old and reference log-probs
    around the stub's, and random advantages."""
    g = torch.Generator().manual_seed(seed)
    prompts = [random_ids(g, 2, 5) for _ in range(rows)]
    completions = [random_ids(g, 1, 9) for _ in range(rows)]
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.tensor([[0] * (width_p - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [0] * (width_c - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (width_c - len(c)) for c in completions])
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    labels = input_ids.masked_fill(torch.cat([torch.zeros_like(prompt_mask), completion_mask], 1) == 0, -100)
    logps = StubLM()(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs[:, -width_c:]
    shift = 1.2 * torch.rand(rows, 1, generator=g, dtype=DTYPE) - 0.6  # whole sequences move: GSPO clips some
    old = logps + shift + 0.3 * torch.randn(logps.shape, generator=g, dtype=DTYPE)
    ref = logps + 0.5 * torch.randn(logps.shape, generator=g, dtype=DTYPE)
    advantages = torch.randn(rows, generator=g, dtype=DTYPE)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum()}
    return inputs, logps, completion_mask


@pytest.mark.parametrize("level, loss_type, beta, entropy_coef, seed", [
    ("sequence", "grpo", 0.0, 0.0, 1), ("sequence", "grpo", 0.04, 0.0, 2), ("sequence", "dr_grpo", 0.0, 0.0, 3),
    ("token", "grpo", 0.04, 0.0, 4), ("token", "bnpo", 0.0, 0.0, 5), ("sequence", "grpo", 0.0, 0.05, 6)])
def test_gspo_and_grpo_losses_equal_trl(tiny_model, tiny_tokenizer, tmp_path, level, loss_type, beta,
                                        entropy_coef, seed):
    """GRPOTrainer._compute_loss (importance_sampling_level, loss_type, beta, entropy_coef) on the stub's
    log-probs with old log-probs moved by up to ±0.6 nats per sequence and 0.3 per token (ratios ≠ 1, some clipped) against `clipped_policy_loss` +
    k3 KL + `aggregate` + `entropy_bonus` on the same tensors. TRL's bnpo is our token-mean (dapo).
    TRL 1.16 multiplies the KL by the importance ratio by default (use_bias_correction_kl); alignkit does
    not (at μ = 1 the ratio is 1 in value), so that option is off here."""
    trainer = make_grpo_trainer(tiny_model, tiny_tokenizer, tmp_path, importance_sampling_level=level,
                                loss_type=loss_type, beta=beta, entropy_coef=entropy_coef, epsilon=0.2,
                                epsilon_high=0.28, use_bias_correction_kl=False)
    inputs, logps, mask = grpo_inputs(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trl_loss = trainer._compute_loss(StubLM(), dict(inputs)).item()
    from alignkit.losses import rl

    out = rl.clipped_policy_loss(logps, inputs["old_per_token_logps"], inputs["advantages"], mask, 0.2, 0.28,
                                 level=level)
    per_token = out.losses
    if beta:
        per_token = per_token + beta * rl.kl_penalty(logps, inputs["ref_per_token_logps"], "k3") * mask
    mode = {"grpo": "sequence-mean", "bnpo": "token-mean", "dr_grpo": "constant-length"}[loss_type]
    ours = rl.aggregate(per_token, mask, mode, max_length=9)
    if entropy_coef:
        width = mask.shape[1]
        entropy = torch.stack([StubLM._row(ids)[:, 1] for ids in torch.cat([inputs["prompt_ids"],
                                                                             inputs["completion_ids"]], 1)])
        ours = ours + rl.entropy_bonus(entropy[:, -width:], mask, entropy_coef)
    assert ours.item() == pytest.approx(trl_loss, abs=ATOL)
    assert out.clipped.any() and not out.clipped[mask.bool()].all()  # both branches of the clip are exercised
