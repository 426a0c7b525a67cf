"""Same weights, same prompts: answer lengths sampled in the trainer's process (`sample_groups`, global random
state) against the asynchronous generator's process (`AsyncGenerator`, per-job seeds), SmolLM2-135M, 12 builtin
prompts x 4 samples x REPS repeats per side, temperature 0.7, 128 tokens at most, one thread each.

Why: in benchmarks/async_grpo.py the async runs' answers came out shorter on all three seeds (84-90 vs 92-97
tokens), which would make completions/s flatter async than it is. If the two paths sampled from different
distributions that would be a bug; this checks them at version 0, where the weights are identical.

    python benchmarks/async_lengths.py 6     # writes benchmarks/results/<date>-async-lengths.json
"""
import json
import statistics as st
import sys
import time

import torch


def main():
    from alignkit.data.readers import load_prompt_rows
    from alignkit.data.tokenize import encode_prompt
    from alignkit.models.load import load_policy, load_tokenizer
    from alignkit.rollout.async_gen import AsyncGenerator
    from alignkit.rollout.generate import SamplingSettings, stop_ids
    from alignkit.rollout.sampler import sample_groups

    model_name = "embedded:smollm2-135m-instruct"
    reps = int(sys.argv[1])
    torch.set_num_threads(1)
    tok = load_tokenizer(model_name, padding_side="left")
    model = load_policy(model_name, dtype="float32", device="cpu")
    rows = load_prompt_rows("builtin:prompts.jsonl")
    ids = [encode_prompt(tok, r["prompt"]) for r in rows]
    settings = SamplingSettings(max_new_tokens=128, temperature=0.7, top_p=1.0, top_k=0, batch_size=64)
    stop = stop_ids(model, tok)
    gen = AsyncGenerator(model_name, model, dtype="float32", lora=None, settings=settings, group=4,
                         stop_ids=stop, pad_id=tok.pad_token_id, seed=123, threads=1)
    for r in range(reps):
        gen.submit(r, ids, 0)

    def lengths(token_rows):
        out = []
        for row in token_rows:
            end = next((i for i, t in enumerate(row) if t in stop), None)
            out.append(len(row) if end is None else end + 1)
        return out

    sync, asyn = [], []
    t0 = time.time()
    for r in range(reps):
        torch.manual_seed(1000 + r)
        sync.append(lengths(sample_groups(model, ids, 4, settings, stop, tok.pad_token_id)))
        print("sync", r, time.time() - t0, flush=True)
    for r in range(reps):
        asyn.append(lengths(gen.result(r).token_rows))
    gen.close()
    # per prompt means
    n = len(ids)
    for name, data in (("sync", sync), ("async", asyn)):
        flat = [x for rep in data for x in rep]
        print(name, "mean", st.mean(flat), "sd", st.stdev(flat), "clipped", sum(x == 128 for x in flat) / len(flat))
    # paired per prompt (rows i//4 -> prompt)
    diffs = []
    for p in range(n):
        s = [rep[k] for rep in sync for k in range(4 * p, 4 * p + 4)]
        a = [rep[k] for rep in asyn for k in range(4 * p, 4 * p + 4)]
        diffs.append(st.mean(s) - st.mean(a))
        print(p, round(st.mean(s), 1), round(st.mean(a), 1))
    m, se = st.mean(diffs), st.stdev(diffs) / len(diffs) ** .5
    print("paired diff sync-async", m, "se", se)
    import datetime
    import os
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       f"{datetime.date.today():%Y-%m-%d}-async-lengths.json")
    flat_s = [x for rep in sync for x in rep]
    flat_a = [x for rep in asyn for x in rep]
    json.dump({"benchmark": "async_lengths", "reps": reps, "group": 4, "prompts": len(ids),
               "sync_mean": st.mean(flat_s), "async_mean": st.mean(flat_a), "paired_diff_sync_minus_async": m,
               "paired_diff_se": se, "sync": sync, "async": asyn}, open(out, "w"))


if __name__ == "__main__":
    main()
