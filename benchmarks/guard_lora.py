"""A lever for the guard measured, not shipped: fine-tune the embedded chat model with LoRA together with the
guard's head, instead of reading its states frozen (docs/guard.md, "Measured quality", lists what each lever
bought).

    python benchmarks/guard_lora.py [--seeds 0] [--epochs 2] [--rank 8] [--first_layer 20]
        [--xstest ../shared/data/xstest/xstest_prompts.csv] [--output benchmarks/results/guard_lora.json]

Same features as the default guard (the last token's normalised states at layers 8-30 after the chat template's
generation prompt) and the same head shape (128 GELU units; one output per hazard and one for "unsafe at all",
binary cross-entropy), but LoRA adapters on every projection of layers `--first_layer`..29 train with it. Trains
on the built-in train split's prompts; a stratified tenth of them is held back to pick the threshold (F1-best)
and is not trained on. Measured on the built-in held-out prompts and XSTest, neither trained on (docs/data.md,
"Train/eval separation"). Writes raw numbers as JSON and prints one row per seed and data set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

DEFAULT_CSV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "xstest" / "xstest_prompts.csv"


class LoraGuard:
    """SmolLM2 with LoRA on its top layers and the guard's head on its last-token states."""

    def __init__(self, categories: list[str], rank: int, first_layer: int, seed: int):
        import torch
        from peft import LoraConfig, get_peft_model

        from alignkit.safety.guard_fit import make_head
        from alignkit.safety.policy_encoder import LAYERS, WINDOW, PolicyStateEncoder

        torch.manual_seed(seed)
        self.layers, self.categories, self.first_layer, self.window = LAYERS, categories, first_layer, WINDOW
        self.encoder = PolicyStateEncoder()  # the default guard's tokenizer, chat template and batching
        base = self.encoder.model
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"],
                            layers_to_transform=list(range(first_layer, base.config.num_hidden_layers)))
        self.model = get_peft_model(base, config)  # LoRA weights trainable, the base stays frozen
        self.inner = self.model.base_model.model  # the causal LM, its projections now carrying LoRA
        self.head = make_head(len(LAYERS) * base.config.hidden_size, 128, len(categories) + 1)

    def _batch(self, texts: list[str]):
        return self.encoder.batch([ids[:self.window] for ids in self.encoder.token_ids(texts)])

    def frozen(self, texts: list[str]) -> list[tuple]:
        """Per text, what the frozen bottom layers give: the last token's states at the frozen feature layers
        and every token's state entering `first_layer` (no padding), computed once and reused every epoch."""
        import torch

        input_ids, mask, positions = self._batch(texts)
        with torch.no_grad(), self.model.disable_adapter():
            states = self.inner(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                output_hidden_states=True).hidden_states
        out = []
        for b in range(len(texts)):
            n = int(mask[b].sum())
            low = [states[layer][b, -1].clone() for layer in self.layers if layer < self.first_layer]
            out.append((low, states[self.first_layer][b, -n:].clone()))
        return out

    def logits_from(self, frozen: list[tuple]):
        """The head's logits for texts whose frozen part is given: the LoRA layers run from `first_layer`."""
        import torch
        from transformers.masking_utils import create_causal_mask

        width = max(h.shape[0] for _, h in frozen)
        dim = frozen[0][1].shape[1]
        hidden = torch.zeros(len(frozen), width, dim)
        mask = torch.zeros(len(frozen), width, dtype=torch.long)
        for b, (_, h) in enumerate(frozen):
            hidden[b, width - h.shape[0]:] = h
            mask[b, width - h.shape[0]:] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        model = self.inner.model
        causal = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                    position_ids=positions)
        rotary = model.rotary_emb(hidden, position_ids=positions)
        states = {self.first_layer: hidden}
        for index in range(self.first_layer, model.config.num_hidden_layers):
            hidden = model.layers[index](hidden, attention_mask=causal, position_embeddings=rotary,
                                         position_ids=positions)
            states[index + 1] = hidden
        states[model.config.num_hidden_layers] = model.norm(hidden)
        features, below = [], [layer for layer in self.layers if layer < self.first_layer]
        for layer in self.layers:
            if layer < self.first_layer:
                last = torch.stack([low[below.index(layer)] for low, _ in frozen])
            else:
                last = states[layer][:, -1]
            features.append(torch.nn.functional.normalize(last.float(), dim=-1))
        return self.head(torch.cat(features, dim=1))

    def p_unsafe(self, texts: list[str], batch_size: int = 32) -> list[float]:
        import torch

        self.model.eval()
        self.head.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                frozen = self.frozen(texts[start:start + batch_size])
                out += torch.sigmoid(self.logits_from(frozen)[:, -1]).tolist()
        return out


def targets(rows: list[dict], categories: list[str]):
    import torch

    t = torch.zeros(len(rows), len(categories) + 1)
    for i, r in enumerate(rows):
        for c in r["categories"]:
            t[i, categories.index(c)] = 1.0
        t[i, -1] = float(bool(r["categories"]))
    return t


def train(rows, categories, args, seed: int, log) -> LoraGuard:
    import torch

    guard = LoraGuard(categories, args.rank, args.first_layer, seed)
    started = time.time()
    cached = []
    for start in range(0, len(rows), 32):
        cached += guard.frozen([r["text"] for r in rows[start:start + 32]])
    log(f"seed {seed}: frozen layers read for {len(rows)} rows in {time.time() - started:.0f}s")
    lora = [p for p in guard.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": lora, "lr": args.lora_lr},
                                   {"params": guard.head.parameters(), "lr": args.head_lr}], weight_decay=0.01)
    steps = args.epochs * ((len(rows) + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    rng, step, started = random.Random(seed), 0, time.time()
    for epoch in range(args.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        # batches of similar length, in random order: less padding, same gradient
        chunks = [order[i:i + args.batch_size * 8] for i in range(0, len(order), args.batch_size * 8)]
        batches = []
        for chunk in chunks:
            chunk.sort(key=lambda i: len(rows[i]["text"]))
            batches += [chunk[i:i + args.batch_size] for i in range(0, len(chunk), args.batch_size)]
        rng.shuffle(batches)
        guard.model.train()
        guard.head.train()
        for batch in batches:
            logits = guard.logits_from([cached[i] for i in batch])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets([rows[i] for i in batch],
                                                                                        categories))
            if not torch.isfinite(loss):
                raise SystemExit(f"guard_lora: non-finite loss at step {step}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora + list(guard.head.parameters()), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 25 == 0 or step == steps:
                log(f"seed {seed} epoch {epoch} step {step}/{steps} loss {loss.item():.4f} "
                    f"{time.time() - started:.0f}s")
    return guard


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--xstest", default=str(DEFAULT_CSV), help="XSTest's xstest_prompts.csv")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--first_layer", type=int, default=20)
    parser.add_argument("--lora_lr", type=float, default=2e-4)
    parser.add_argument("--head_lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=0, help="train on this many rows only (a smoke run)")
    parser.add_argument("--output", default="benchmarks/results/guard_lora.json")
    args = parser.parse_args()

    import torch

    from alignkit.safety.evaluate import f1_interval
    from alignkit.safety.guard_data import builtin_rows
    from alignkit.safety.guard_eval import binary_metrics, xstest_rows
    from alignkit.safety.guard_fit import choose_threshold, folds

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    prompts = [r for r in builtin_rows("train") if r["role"] == "prompt"]
    categories = sorted({c for r in prompts for c in r["categories"]})
    sets = {"held-out prompts": [r for r in builtin_rows("test") if r["role"] == "prompt"]}
    if Path(args.xstest).is_file():
        sets["XSTest prompts"] = xstest_rows(args.xstest)
    results = []
    print(f"{'seed':>4} {'data':<18} {'P':>6} {'R':>6} {'F1':>6} {'F1 95%':>11} {'FPR':>6} {'AUPRC':>6}", flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        fold = folds(prompts, 10, seed)
        train_rows = [r for r, f in zip(prompts, fold) if f != 0]
        valid = [r for r, f in zip(prompts, fold) if f == 0]
        if args.limit:
            train_rows = random.Random(seed).sample(train_rows, min(args.limit, len(train_rows)))
        started = time.time()
        guard = train(train_rows, categories, args, seed, lambda line: print(line, file=sys.stderr, flush=True))
        seconds = time.time() - started
        threshold = choose_threshold(guard.p_unsafe([r["text"] for r in valid]), [int(bool(r["categories"]))
                                                                                 for r in valid])
        for name, data in sets.items():
            gold = [bool(r["categories"]) for r in data]
            scores = guard.p_unsafe([r["text"] for r in data])
            m = binary_metrics(gold, scores, threshold)
            m["f1_interval"] = f1_interval(gold, [s >= threshold for s in scores], seed)
            results.append({"seed": seed, "data": name, "train_rows": len(train_rows), "train_seconds": round(seconds),
                            "settings": {k: v for k, v in vars(args).items() if k not in ("xstest", "output", "seeds")},
                            **m})
            low, high = m["f1_interval"]
            print(f"{seed:>4} {name:<18} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['f1']:>6.3f} "
                  f"{low:>5.2f}-{high:<5.2f} {m['false_positive_rate']:>6.3f} {m['auprc']:>6.3f}", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.output).with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
