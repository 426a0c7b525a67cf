"""Peak memory and time of chunked log-probs (`alignkit.ops.logprobs.linear_log_probs`) against the naive
`torch.log_softmax(hidden @ W.T, -1).gather(...)` at SmolLM2's shapes (vocab 49,152, hidden 576), B x T tokens.

Four modes, as a training step uses them:
  ref     forward only under no_grad (reference / old-policy log-probs)
  train   forward + backward, head weight trainable, any upstream gradient (full fine-tuning: DPO, PPO)
  sft     forward + backward, head weight trainable, loss a plain sum of log-probs (full fine-tuning: SFT)
  frozen  forward + backward, head weight frozen, gradient to the hidden states only (LoRA)

Method (DESIGN.md, "Benchmarks"): each (mode, implementation, repeat) runs in a fresh subprocess (this script
re-invoked with --worker), naive and chunked interleaved, warm-up steps excluded from the time, median of
--repeats. Peak memory on CPU is the peak RSS (ru_maxrss) minus the RSS right after setup (inputs allocated,
kernels loaded at a tiny size); on CUDA it is torch.cuda.max_memory_allocated over the memory allocated after setup.

    python benchmarks/logprobs.py                       # CPU, 2 threads, B=8 T=1024, 3 repeats
    python benchmarks/logprobs.py --repeats 1 --seq 256  # quick look
    python benchmarks/logprobs.py --chunk-size 256 682 2048
    python benchmarks/logprobs.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("ref", "train", "sft", "frozen")
MODE_TITLES = {"ref": "forward, no_grad (reference)", "train": "fwd+bwd, head trainable",
               "sft": "fwd+bwd, head trainable, sum loss", "frozen": "fwd+bwd, head frozen (LoRA)"}
try:  # run from a checkout without installing: use the repository's src/
    import alignkit  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

TARGET_MEMORY = 0.25  # chunked peak <= 25% of naive
TARGET_TIME = 1.2  # chunked time <= 1.2x naive


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per configuration (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at full size in each subprocess")
    p.add_argument("--steps", type=int, default=1, help="timed steps per subprocess (their mean is one sample)")
    p.add_argument("--chunk-size", type=int, nargs="+", default=[0],
                   help="tokens per chunk for the chunked version; several values are compared in one run; "
                        "0 = the library default (about 128 MB of float32 logits)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    p.add_argument("--json", help="also write the raw samples here")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# worker: one configuration, one process


def _rss_peak_bytes() -> int:
    """The process's peak resident set so far."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _rss_now_bytes() -> int:
    """The process's resident set now (Linux); elsewhere the peak so far, which is an upper bound."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _rss_peak_bytes()


def worker(args) -> dict:
    import torch

    from alignkit.ops.logprobs import default_chunk_size, linear_log_probs

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    n, h, v = args.batch * args.seq, args.hidden, args.vocab
    g = torch.Generator().manual_seed(0)
    # filled in place: no temporary copies whose transient peak would sit above the baseline
    hidden = torch.empty(n, h).normal_(generator=g).to(device=device, dtype=dtype)
    weight = torch.empty(v, h).normal_(std=h ** -0.5, generator=g).to(device=device, dtype=dtype)
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    chunk = args.chunk or default_chunk_size(v)
    mode, impl = args.mode, args.impl

    def logps(hid, w, y):
        if impl == "naive":
            logits = (hid @ w.T).float()
            return torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return linear_log_probs(hid, w, None, y, chunk_size=chunk, uniform_grad=mode == "sft")

    if mode in ("train", "sft"):
        # the parameter's .grad buffer lives across steps in training: allocate it before the baseline
        weight.requires_grad_(True)
        weight.grad = torch.zeros_like(weight)

    def step(hid, w, y):
        if mode == "ref":
            with torch.no_grad():
                return float(logps(hid, w, y).sum())
        hid = hid.detach().requires_grad_()  # as the decoder's output would
        out = logps(hid, w, y)
        # "train" weighs tokens unequally, as DPO/PPO losses do; "sft" sums them, as SFT's loss does
        weights = 1.0 if mode != "train" else torch.linspace(0.5, 1.5, out.numel(), device=out.device)
        (out * weights).sum().backward()
        assert hid.grad is not None and (w.grad is not None) == (mode in ("train", "sft"))
        return float(out.sum().detach())

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    # load kernels and allocate autograd machinery at a tiny size, then take the baseline
    step(hidden[:16], weight, labels[:16])
    sync()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_now_bytes()
    for _ in range(args.warmup):
        step(hidden, weight, labels)
    sync()
    calib = calibrate(torch, device, dtype, sync)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        value = step(hidden, weight, labels)
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) if cuda else _rss_peak_bytes()) - base
    return {"impl": impl, "mode": mode, "chunk": chunk if impl == "chunked" else None,
            "time_s": statistics.fmean(times), "peak_bytes": max(peak, 0), "value": value, "calib_gflops": calib}


def calibrate(torch, device, dtype, sync) -> float:
    """GFLOP/s of a fixed small matmul just before the timed steps: shows how fast the machine is right now
    (shared CPUs can drift by 2x within minutes), so odd samples can be told from real differences."""
    a = torch.ones(512, 576, device=device, dtype=dtype)
    b = torch.ones(576, 4096, device=device, dtype=dtype)
    a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    sync()
    return 5 * 2 * 512 * 576 * 4096 / (time.perf_counter() - t0) / 1e9


# ----------------------------------------------------------------------------------------------------------
# driver


def run_one(args, impl: str, mode: str, chunk: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl, "--mode", mode,
           "--chunk", str(chunk), "--batch", str(args.batch), "--seq", str(args.seq), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {impl}/{mode} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _other_load(args) -> str | None:
    """A description of other work competing for the CPUs, or None (Linux load average; CPU runs only)."""
    if args.device != "cpu":
        return None
    try:
        with open("/proc/loadavg") as f:
            load = float(f.read().split()[0])
    except OSError:
        return None
    cpus = os.cpu_count() or 1
    if load > 0.5 and load + args.threads > cpus + 0.5:
        return f"load average {load:.1f} on {cpus} CPUs before starting"
    return None


def label(chunk: int) -> str:
    return "chunked" if chunk == 0 else f"chunked/{chunk}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    import torch

    from alignkit.ops.logprobs import default_chunk_size

    n = args.batch * args.seq
    chunks = list(dict.fromkeys(args.chunk_size))
    variants = [("naive", 0)] + [("chunked", c) for c in chunks]
    default = default_chunk_size(args.vocab)
    print(f"log-probs benchmark: N = {args.batch} x {args.seq} = {n} tokens, H = {args.hidden}, "
          f"V = {args.vocab}, {args.dtype}, device {args.device}"
          + (f", {args.threads} threads" if args.device == "cpu" else "")
          + f"; torch {torch.__version__}")
    print(f"one {n} x {args.vocab} float32 logits tensor = {n * args.vocab * 4 / 2**20:,.0f} MiB; "
          f"default chunk = {default} tokens ({default * args.vocab * 4 / 2**20:,.0f} MiB of logits)")
    print(f"{args.repeats} repeat(s) per configuration, each a fresh process: {args.warmup} warm-up + "
          f"{args.steps} timed step(s); naive and chunked interleaved\n", flush=True)

    busy = _other_load(args)
    if busy:
        print(f"WARNING: {busy}; timings will be slowed and noisy (peak memory is unaffected)\n", flush=True)

    samples: dict[tuple[str, str, int], list[dict]] = {}
    for mode in args.modes:
        for r in range(args.repeats):
            # alternate which goes first so drift (thermal, page cache) does not favour one side
            order = variants if r % 2 == 0 else variants[::-1]
            for impl, chunk in order:
                res = run_one(args, impl, mode, chunk)
                samples.setdefault((mode, impl, chunk), []).append(res)
                print(f"  {mode:6s} {label(chunk) if impl == 'chunked' else 'naive':14s} repeat {r + 1}: "
                      f"{res['time_s']:8.3f} s  {res['peak_bytes'] / 2**20:9.1f} MiB   "
                      f"(machine speed {res['calib_gflops']:.0f} GFLOP/s)", flush=True)

    def med(mode, impl, chunk, key):
        return statistics.median(s[key] for s in samples[(mode, impl, chunk)])

    print()
    header = f"{'mode':32s} {'variant':14s} {'time s':>9s} {'peak MiB':>10s} {'time ratio':>11s} " \
             f"{'range':>11s} {'mem ratio':>9s}  result"
    print(header)
    print("-" * len(header))
    rows = []
    best = {}
    for mode in args.modes:
        t_naive, m_naive = med(mode, "naive", 0, "time_s"), med(mode, "naive", 0, "peak_bytes")
        v_naive = med(mode, "naive", 0, "value")
        print(f"{MODE_TITLES[mode]:32s} {'naive':14s} {t_naive:9.3f} {m_naive / 2**20:10.1f}")
        for c in chunks:
            t, m = med(mode, "chunked", c, "time_s"), med(mode, "chunked", c, "peak_bytes")
            name = label(c) if c else f"chunked/{default}"
            # the same inputs and seed: the summed log-probs must agree, or the two compute different things
            v = med(mode, "chunked", c, "value")
            if abs(v - v_naive) > 1e-4 * abs(v_naive) + 1e-3:
                print(f"{'':32s} {name:14s} {t:9.3f} {m / 2**20:10.1f}  FAIL: summed log-probs differ (naive "
                      f"{v_naive:.6g}, chunked {v:.6g}), so no ratio")
                rows.append({"mode": mode, "chunk": c or default, "verdict": "UNEQUAL",
                             "problems": [f"summed log-probs naive {v_naive:.6g}, chunked {v:.6g}"]})
                continue
            # ratios of runs measured back to back (chunked, naive of the same repeat): slow drift cancels
            times = [a["time_s"] / b["time_s"] for a, b in zip(samples[(mode, "chunked", c)], samples[(mode, "naive", 0)])]
            peaks = [a["peak_bytes"] / b["peak_bytes"] if b["peak_bytes"] else float("inf")
                     for a, b in zip(samples[(mode, "chunked", c)], samples[(mode, "naive", 0)])]
            tr, mr = statistics.median(times), statistics.median(peaks)
            ok_t, ok_m = tr <= TARGET_TIME, mr <= TARGET_MEMORY
            verdict = "PASS" if ok_t and ok_m else "MISS (" + ", ".join(
                x for x, bad in (("time", not ok_t), ("memory", not ok_m)) if bad) + ")"
            print(f"{'':32s} {name:14s} {t:9.3f} {m / 2**20:10.1f} {tr:10.2f}x {min(times):.2f}-{max(times):.2f}x "
                  f"{mr:9.1%}  {verdict}")
            rows.append({"mode": mode, "chunk": c or default, "verdict": verdict, "problems": [],
                         "time": {"min": min(times), "median": tr, "max": max(times), "values": times},
                         "memory": {"min": min(peaks), "median": mr, "max": max(peaks), "values": peaks},
                         "target_time": TARGET_TIME, "target_memory": TARGET_MEMORY})
            if mode not in best or t < best[mode][1]:
                best[mode] = (c or default, t)
    print(f"\ntargets: chunked peak memory <= {TARGET_MEMORY:.0%} of naive and time <= {TARGET_TIME}x naive "
          "(medians of paired ratios: chunked and naive of the same repeat, run back to back; range shown)")
    if len(chunks) > 1:
        print("fastest chunk size per mode: " + ", ".join(f"{m} {c}" for m, (c, _) in best.items()))
    speeds = [x["calib_gflops"] for v in samples.values() for x in v]
    if max(speeds) > 1.3 * min(speeds):
        print(f"WARNING: machine speed varied from {min(speeds):.0f} to {max(speeds):.0f} GFLOP/s across samples "
              "(other work on the machine?): time ratios are uncertain")
    unequal = [r for r in rows if r["verdict"] == "UNEQUAL"]
    print("OVERALL: " + ("FAIL: naive and chunked computed different log-probs" if unequal else
                         "targets missed (see MISS rows)" if any(r["verdict"] != "PASS" for r in rows) else "PASS"))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "json")}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "logprobs", "settings": settings, "versions": {"torch": torch.__version__},
                       "machine": harness_machine(), "rows": rows,
                       "samples": [{**x, "key": list(k)} for k, v in samples.items() for x in v]}, f, indent=1)
    return 1 if unequal else 0


def harness_machine() -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import harness

    return harness.machine()


if __name__ == "__main__":
    sys.exit(main())
