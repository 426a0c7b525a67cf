"""The shared training loop: exact accumulation, bit-exact resume, atomic checkpoints, the non-finite guard."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alignkit.data.builtin import builtin_path
from alignkit.data.collate import collate_masked
from alignkit.data.io import load_rows
from alignkit.engine import checkpoint as ckpt
from alignkit.engine.loop import TrainingStopped, train
from alignkit.engine.runlog import read_metrics
from alignkit.engine.settings import TrainSettings
from alignkit.methods.sft import count_trained_tokens, sft_loss, tokenize_sft
from alignkit.models.load import load_policy

TINY = "embedded:tiny"


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    rows = load_rows(builtin_path("sft.jsonl"), "sft")[:24]
    out, dropped = tokenize_sft(tiny_tokenizer, rows, max_length=96)
    assert dropped == 0
    return out


def collate_fn(tokenizer):
    return lambda items: collate_masked(items, tokenizer.pad_token_id)


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(ckpt.unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(tmp: Path, examples, tokenizer, dtype="float32", step_fn=sft_loss, on_log=None, **settings):
    model = load_policy(TINY, device="cpu", dtype=dtype)
    defaults = dict(output_dir=str(tmp), learning_rate=1e-3, max_steps=6, per_device_train_batch_size=4,
                    progress=False, seed=3, warmup_steps=2, lr_scheduler_type="cosine")
    result = train(model, examples, collate_fn(tokenizer), step_fn, TrainSettings(**{**defaults, **settings}),
                   count_fn=count_trained_tokens, device="cpu", method="test", on_log=on_log)
    return model, result


# ----------------------------------------------------------------------------------------------------
# gradient accumulation


def test_accumulation_equals_the_large_batch(tmp_path, examples, tiny_tokenizer):
    """8 x 1 and 2 x 4 see the same 8 examples per step and normalise by the same token count, so
    their updates agree to rounding (float64 keeps rounding far below the 1e-6 tolerance)."""
    big, _ = run(tmp_path / "big", examples, tiny_tokenizer, dtype=torch.float64, max_steps=3,
                 per_device_train_batch_size=8, gradient_accumulation_steps=1, max_grad_norm=0.5)
    small, _ = run(tmp_path / "small", examples, tiny_tokenizer, dtype=torch.float64, max_steps=3,
                   per_device_train_batch_size=2, gradient_accumulation_steps=4, max_grad_norm=0.5)
    diff = max((a - b).abs().max().item() for a, b in zip(big.parameters(), small.parameters()))
    assert diff < 1e-6
    losses_big = [r["loss"] for r in read_metrics(tmp_path / "big" / "metrics.jsonl")]
    losses_small = [r["loss"] for r in read_metrics(tmp_path / "small" / "metrics.jsonl")]
    assert losses_big == pytest.approx(losses_small, rel=1e-9)


def test_per_micro_batch_normalisation_would_differ(examples, tiny_tokenizer):
    """Guard for the test above: with unequal token counts per micro-batch, averaging per-micro-batch
    means is not the token mean, so the equivalence really depends on the engine's normalisation."""
    collate = collate_fn(tiny_tokenizer)
    counts = [count_trained_tokens(collate(examples[i:i + 2])) for i in range(0, 8, 2)]
    assert len(set(counts)) > 1


# ----------------------------------------------------------------------------------------------------
# resume


class Interrupt(Exception):
    pass


def interrupt_at(step: int):
    def on_log(row):
        if row["step"] == step:
            raise Interrupt

    return on_log


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, examples, tiny_tokenizer, accumulation):
    common = dict(max_steps=6, save_steps=3, gradient_accumulation_steps=accumulation,
                  per_device_train_batch_size=4 // accumulation)
    straight, _ = run(tmp_path / "straight", examples, tiny_tokenizer, **common)
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", examples, tiny_tokenizer, on_log=interrupt_at(5), **common)
    assert ckpt.find_latest(tmp_path / "cut").name == "step-000003"
    resumed, result = run(tmp_path / "cut", examples, tiny_tokenizer, resume=True, **common)
    assert result.steps == 6
    assert weights_hash(resumed) == weights_hash(straight)
    keys = ("step", "loss", "lr", "grad_norm", "num_tokens", "epoch")
    first = [{k: r[k] for k in keys} for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    second = [{k: r[k] for k in keys} for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert second == first  # steps 4 and 5 logged before the cut are replaced, not repeated


def test_resume_without_checkpoint_and_reuse_without_resume_are_clear_errors(tmp_path, examples, tiny_tokenizer):
    from alignkit.errors import AlignkitError

    with pytest.raises(AlignkitError, match="no complete checkpoint"):
        run(tmp_path / "empty", examples, tiny_tokenizer, resume=True)
    run(tmp_path / "done", examples, tiny_tokenizer, max_steps=2)
    with pytest.raises(AlignkitError, match="--resume"):
        run(tmp_path / "done", examples, tiny_tokenizer, max_steps=2)


def test_checkpoints_are_pruned_to_save_total_limit(tmp_path, examples, tiny_tokenizer):
    run(tmp_path, examples, tiny_tokenizer, max_steps=6, save_steps=1, save_total_limit=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-000005", "step-000006"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000006"


KILL_SCRIPT = textwrap.dedent('''
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from test_engine import run, TINY
    from alignkit.models.load import load_tokenizer
    from alignkit.data.builtin import builtin_path
    from alignkit.data.io import load_rows
    from alignkit.methods.sft import tokenize_sft
    import alignkit.engine.checkpoint as ckpt

    tokenizer = load_tokenizer(TINY)
    examples, _ = tokenize_sft(tokenizer, load_rows(builtin_path("sft.jsonl"), "sft")[:24], max_length=96)
    real_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        if "step-000004" in str(path):  # the model is written; die while writing the trainer state
            with open(path, "wb") as f:
                f.write(b"partial")
            os._exit(9)
        return real_save(obj, path, *args, **kwargs)

    ckpt.torch.save = dying_save
    run(ckpt.Path({out!r}), examples, tokenizer, max_steps=6, save_steps=2)
''')


def test_kill_during_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, examples, tiny_tokenizer):
    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    root = out / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-step-000004")], "the writer died mid-save"
    assert ckpt.find_latest(out).name == "step-000002"
    assert (root / "latest").read_text().strip() == "step-000002"
    state = ckpt.load_state(ckpt.find_latest(out))
    assert state["step"] == 2
    # resuming ignores and removes the partial checkpoint, and ends where an uninterrupted run ends
    resumed, result = run(out, examples, tiny_tokenizer, max_steps=6, save_steps=2, resume=True)
    assert result.steps == 6
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    straight, _ = run(tmp_path / "straight", examples, tiny_tokenizer, max_steps=6, save_steps=2)
    assert weights_hash(resumed) == weights_hash(straight)


# ----------------------------------------------------------------------------------------------------
# non-finite guard


def poisoned(bad_calls: set[int]):
    """sft_loss, except that the listed micro-batch calls return a NaN loss (a poisoned batch)."""
    calls = {"n": 0}

    def step_fn(model, batch):
        calls["n"] += 1
        loss, metrics = sft_loss(model, batch)
        if calls["n"] in bad_calls:
            loss = loss * float("nan")
        return loss, metrics

    return step_fn


def test_a_poisoned_batch_is_skipped_counted_and_the_run_finishes(tmp_path, examples, tiny_tokenizer):
    seen = {}

    def remember(row):
        seen[row["step"]] = row

    model, result = run(tmp_path, examples, tiny_tokenizer, step_fn=poisoned({3}), on_log=remember, max_steps=6)
    assert result.steps == 6 and result.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[-1]["skipped_steps"] == 1
    assert rows[2]["loss"] == "nan"  # logged, visible, and not allowed into the weights
    # the scheduler did not advance on the skipped step: step 4 ran at the LR step 3 would have had
    assert seen[4]["lr"] == seen[3]["lr"]


def test_skipped_step_leaves_the_optimizer_untouched(tmp_path, examples, tiny_tokenizer):
    """A run with a poisoned step 2 matches a run that never saw step 2's update: after the bad step the
    weights equal those after step 1 exactly."""
    snapshots = {}
    model_box = {}

    def snap(row):
        snapshots[row["step"]] = weights_hash(model_box["model"])

    model = load_policy(TINY, device="cpu")
    model_box["model"] = model
    train(model, examples, collate_fn(tiny_tokenizer), poisoned({2}),
          TrainSettings(output_dir=str(tmp_path), learning_rate=1e-3, max_steps=3, per_device_train_batch_size=4,
                        progress=False),
          count_fn=count_trained_tokens, device="cpu", on_log=snap)
    assert snapshots[2] == snapshots[1] != snapshots[3]


def test_consecutive_bad_steps_stop_the_run_with_a_checkpoint(tmp_path, examples, tiny_tokenizer):
    with pytest.raises(TrainingStopped, match="non-finite") as info:
        run(tmp_path, examples, tiny_tokenizer, step_fn=poisoned({3, 4, 5}), max_steps=10, max_bad_steps=3)
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and latest.name == "step-000005"
    assert str(latest) in str(info.value)
    state = ckpt.load_state(latest)
    assert state["skipped_steps"] == 3


def test_metrics_rows_have_the_documented_fields(tmp_path, examples, tiny_tokenizer):
    run(tmp_path, examples, tiny_tokenizer, max_steps=2)
    row = read_metrics(tmp_path / "metrics.jsonl")[-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time", "peak_memory_mb", "epoch",
                "num_tokens", "skipped_steps", "mean_token_logp"):
        assert key in row
    assert json.loads(json.dumps(row)) == row


def test_tensorboard_tracker_receives_the_metrics(tmp_path, examples, tiny_tokenizer):
    pytest.importorskip("tensorboard")  # a dev dependency: installed by `make test`
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path, examples, tiny_tokenizer, max_steps=3, report_to="tensorboard")
    files = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert files
    tags = set()
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm"} <= tags


def test_missing_tracker_is_a_clear_error(tmp_path, examples, tiny_tokenizer, monkeypatch):
    import importlib.util

    from alignkit.errors import AlignkitError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(AlignkitError, match="pip install mlflow"):
        run(tmp_path, examples, tiny_tokenizer, max_steps=1, report_to="mlflow")


# ----------------------------------------------------------------------------------------------------
# the rollout hook (engine.phases): a rollout, then epochs over minibatches of it


def test_rollout_hook_runs_epochs_of_minibatch_steps(tmp_path, examples, tiny_tokenizer):
    """Each engine step collects once, then epochs × minibatches optimizer steps (the LR schedule counts them),
    each with the engine's guard: a NaN in one is skipped and counted. The row holds the mean step metrics,
    the finish metrics and the LR after the updates; checkpoints carry the method's state; seeds of the
    prompt micro-batches are set."""
    from alignkit.engine.phases import Rollouts

    calls = {"collect": [], "steps": 0, "finish": 0}

    def collect(model, batches, sum_across):
        calls["collect"].append([b["sample_seed"] for b in batches])
        return {"batches": batches, "total": float(sum_across(torch.tensor(1.0)))}

    def minibatches(experience, epoch):  # two optimizer steps: the two halves of every micro-batch
        return [[{k: v[half] for k, v in b.items() if isinstance(v, torch.Tensor)} for b in experience["batches"]]
                for half in (slice(0, 2), slice(2, 4))]

    def finish(experience):
        calls["finish"] += 1
        return {"rollout/total": experience["total"]}

    def step_fn(model, batch):
        calls["steps"] += 1
        loss, metrics = sft_loss(model, batch)
        return (loss * float("nan") if calls["steps"] == 3 else loss), metrics

    state = {"seen": 0}
    hook = Rollouts(collect, minibatches, finish, epochs=2, minibatches_per_epoch=2,
                    state_dict=lambda: {"seen": calls["finish"]}, load_state_dict=state.update)
    model = load_policy(TINY, device="cpu")
    settings = TrainSettings(output_dir=str(tmp_path), learning_rate=1e-3, max_steps=2, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, progress=False, seed=3, lr_scheduler_type="linear")
    result = train(model, examples, collate_fn(tiny_tokenizer), step_fn, settings, count_fn=count_trained_tokens,
                   device="cpu", method="test", rollouts=hook)
    assert len(calls["collect"]) == 2 and calls["steps"] == 2 * 4 * 2  # 2 rollouts × 4 steps × 2 micro-batches
    assert len(set(calls["collect"][0] + calls["collect"][1])) == 4  # one seed per micro-batch
    assert result.skipped_steps == 1
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["rollout/total"] == 1.0
    assert rows[1]["skipped_steps"] == 1 and rows[1]["lr"] == pytest.approx(1e-3 * (8 - 7) / 8)
    assert ckpt.load_state(ckpt.find_latest(tmp_path))["method_state"] == {"seen": 2}


def test_lookahead_shows_exactly_the_examples_later_micro_batches_get():
    """`upcoming` is a peek: what it promises for (step, micro) is what that micro-batch then receives, across
    epoch boundaries, and peeking does not move the stream."""
    from types import SimpleNamespace

    from alignkit.engine.loop import DataStream, _next_batches

    examples = [{"i": i} for i in range(7)]  # 7 examples, 2 per micro-batch: epochs end mid-batch
    settings = TrainSettings(output_dir="unused", per_device_train_batch_size=2, gradient_accumulation_steps=3, seed=5)
    accelerator = SimpleNamespace(process_index=0, num_processes=1, device="cpu")
    stream, plain = DataStream(7, 5), DataStream(7, 5)
    received, promised = {}, {}
    for step in range(5):
        batches = _next_batches(examples, lambda items: {"rows": items}, stream, settings, accelerator, step, None, 2)
        plain_batches = _next_batches(examples, lambda items: {"rows": items}, plain, settings, accelerator, step,
                                      None)
        assert [b["rows"] for b in batches] == [b["rows"] for b in plain_batches]  # peeking changes nothing
        for b in batches:
            assert (b["step"], b["micro"]) not in received
            received[(b["step"], b["micro"])] = b["rows"]
            keys = [(s, m) for s, m, _ in b["upcoming"]]
            assert keys == sorted(keys) and all(k > (b["step"], b["micro"]) for k in keys)
            assert len([k for k in keys if k[0] > step]) == 2 * 3  # two whole steps ahead
            for s, m, rows in b["upcoming"]:
                assert promised.setdefault((s, m), rows) == rows
    assert all(received[k] == rows for k, rows in promised.items() if k in received)
    assert len([k for k in promised if k in received]) >= 12
