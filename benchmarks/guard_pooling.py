"""A lever for the guard measured, not shipped unless it wins on the training data: how the chat model's states
are pooled into features (docs/guard.md, "Why these features").

    python benchmarks/guard_pooling.py [--seeds 0] [--xstest ../shared/data/xstest/xstest_prompts.csv]
        [--output benchmarks/results/guard_pooling.json] [--cache /tmp/guard_pooling_features.pt]

The default guard reads the last token's state after the chat template's generation prompt, at layers 8-30
(`policy_encoder.LAYERS`). This reads the same forward pass two more ways: the mean of the states over the
text's own tokens (not the template's), and both side by side; and it averages each guard's p(unsafe) with
the MiniLM guard's, as the earlier ensemble did. Every variant is the default guard's training otherwise
(the built-in train split, the same head, 300 full-batch steps, 5-fold out-of-fold calibration).

Which variant would ship is decided on the training data alone: by the out-of-fold AUPRC and F1 of
p(unsafe), never by XSTest or the held-out split, which are only measured (docs/data.md, "Train/eval
separation"). Writes raw numbers as JSON and prints one row per variant, seed and data set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

DEFAULT_CSV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "xstest" / "xstest_prompts.csv"
VARIANTS = ("last", "mean", "last+mean")


class PooledStates:
    """The policy encoder's forward pass, pooled two ways at once: [last token per layer | text mean per layer],
    each L2-normalised. Features are kept for every text it reads (the dev run's texts fit in memory)."""

    def __init__(self, instruction: str = ""):
        from alignkit.safety.policy_encoder import MARK, PolicyStateEncoder

        self.inner = PolicyStateEncoder(cache_size=100_000)
        self.inner._states = self._states  # the same batching, windows and cache; two poolings
        self.half = self.inner.dim
        prefix, suffix = instruction.split(MARK) if instruction else ("", "")
        self.prefix, self.suffix = self.inner.token_ids([prefix])[0] if prefix else [], \
            self.inner.token_ids([suffix])[0] if suffix else []

    def _states(self, texts_ids: list[list[int]]):
        import torch

        from alignkit.safety.policy_encoder import LAYERS

        inner = self.inner
        input_ids, mask, positions = inner.batch([self.prefix + ids + self.suffix for ids in texts_ids])
        with torch.no_grad():
            states = inner.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 output_hidden_states=True).hidden_states
        width, after = input_ids.shape[1], len(inner._after) + len(self.suffix)
        text_mask = torch.zeros(input_ids.shape, dtype=torch.float32)
        for b, ids in enumerate(texts_ids):
            if ids:
                text_mask[b, width - after - len(ids):width - after] = 1.0
            else:
                text_mask[b, -1] = 1.0  # an empty text: its only state is the template's
        weights = (text_mask / text_mask.sum(1, keepdim=True)).unsqueeze(-1)
        last = [torch.nn.functional.normalize(states[layer][:, -1].float(), dim=-1) for layer in LAYERS]
        mean = [torch.nn.functional.normalize((states[layer].float() * weights).sum(1), dim=-1) for layer in LAYERS]
        return torch.cat(last + mean, dim=1)


class View:
    """An encoder that gives columns of another's features (what the guard sees as its encoder)."""

    def __init__(self, pooled: PooledStates, variant: str):
        half = pooled.half
        self.pooled, self.name = pooled, "smollm2"
        self.columns = {"last": slice(0, half), "mean": slice(half, 2 * half), "last+mean": slice(0, 2 * half)}[variant]
        self.dim = self.columns.stop - self.columns.start

    def encode(self, texts: list[str]):
        return self.pooled.inner.encode(texts)[:, self.columns]

    def encode_windows(self, texts: list[str]):
        features, counts = self.pooled.inner.encode_windows(texts)
        return features[:, self.columns], counts


def out_of_fold_unsafe(rows, encoder, config) -> list[float]:
    """p(unsafe) of every training row from heads trained on the other folds, at a temperature fitted to them:
    the scores `GuardClassifier.train` calibrates on, which it does not keep."""
    import torch

    from alignkit.safety.guard import _features, _out_of_fold_logits
    from alignkit.safety.guard_fit import fit_temperature
    from alignkit.safety.taxonomy import load_taxonomy

    present = {c for r in rows for c in r["categories"]}
    categories = [c for c in load_taxonomy().ids if c in present]  # GuardClassifier.train's column order
    targets = torch.tensor([[float(c in r["categories"]) for c in categories] + [float(bool(r["categories"]))]
                            for r in rows])
    features = _features(encoder, [r["text"] for r in rows], [r["role"] for r in rows])
    logits = _out_of_fold_logits(rows, features, targets, config)
    temperature = fit_temperature(logits, targets)
    return torch.sigmoid(logits[:, -1] / temperature).tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--xstest", default=str(DEFAULT_CSV), help="XSTest's xstest_prompts.csv")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--weights", default="0.3,0.5", help="MiniLM's weights in the averaged p(unsafe)")
    parser.add_argument("--instruction", default="",
                        help="the user turn around the text, which stands where \\x00 is (default: the text alone)")
    parser.add_argument("--output", default="benchmarks/results/guard_pooling.json")
    args = parser.parse_args()

    import torch

    from alignkit.safety.guard import GuardClassifier, GuardConfig
    from alignkit.safety.guard_data import builtin_rows, training_rows
    from alignkit.safety.guard_eval import binary_metrics, guard_binary, xstest_rows
    from alignkit.safety.guard_fit import choose_threshold
    from alignkit.safety.policy_encoder import guard_encoder

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = training_rows()
    sets = {"held-out prompts": [r for r in builtin_rows("test") if r["role"] == "prompt"]}
    if Path(args.xstest).is_file():
        sets["XSTest prompts"] = xstest_rows(args.xstest)
    pooled = PooledStates(args.instruction.replace("\\x00", "\x00"))
    started = time.time()
    pooled.inner.encode([r["text"] for r in rows])
    print(f"states read for {len(rows)} training rows in {time.time() - started:.0f}s", flush=True)

    gold_train = [bool(r["categories"]) for r in rows]
    results = []

    def record(variant, seed, oof, threshold, evaluated):
        train_metrics = binary_metrics(gold_train, oof, threshold)
        row = {"variant": variant, "seed": seed, "out_of_fold": {k: train_metrics[k] for k in
                                                                  ("precision", "recall", "f1", "auprc")}}
        line = f"{variant:<22} seed {seed}  OOF F1 {train_metrics['f1']:.3f} AUPRC {train_metrics['auprc']:.3f}"
        for name, m in evaluated.items():
            row[name] = {k: v for k, v in m.items() if k != "scores"}
            line += (f" | {name.split()[0]} F1 {m['f1']:.3f} R {m['recall']:.3f} FPR {m['false_positive_rate']:.3f}"
                     f" AUPRC {m['auprc']:.3f}")
        print(line, flush=True)
        results.append(row)

    for seed in [int(s) for s in args.seeds.split(",")]:
        config = GuardConfig(seed=seed)
        minilm_config = GuardConfig(seed=seed, encoder="minilm")
        minilm = GuardClassifier.train(rows, minilm_config)
        minilm_oof = out_of_fold_unsafe(rows, guard_encoder("minilm"), minilm_config)
        minilm_eval = {name: guard_binary(minilm, s) for name, s in sets.items()}
        record("minilm", seed, minilm_oof, minilm.thresholds["unsafe"], minilm_eval)
        for variant in VARIANTS:
            encoder = View(pooled, variant)
            guard = GuardClassifier.train(rows, config, encoder=encoder)
            oof = out_of_fold_unsafe(rows, encoder, config)
            evaluated = {name: guard_binary(guard, s) for name, s in sets.items()}
            record(variant, seed, oof, guard.thresholds["unsafe"], evaluated)
            for w in [float(x) for x in args.weights.split(",")]:
                mixed_oof = [(1 - w) * a + w * b for a, b in zip(oof, minilm_oof)]
                threshold = choose_threshold(mixed_oof, [int(g) for g in gold_train])
                mixed = {}
                for name, s in sets.items():
                    scores = [(1 - w) * a + w * b for a, b in zip(evaluated[name]["scores"],
                                                                  minilm_eval[name]["scores"])]
                    mixed[name] = binary_metrics([bool(r["categories"]) for r in s], scores, threshold)
                record(f"{variant} + minilm w{w}", seed, mixed_oof, threshold, mixed)
    report = {"instruction": args.instruction, "rows": len(rows), "results": results}
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
