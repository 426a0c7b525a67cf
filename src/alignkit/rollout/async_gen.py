"""An asynchronous generator for bounded-staleness online RL: a second process samples while the trainer updates.

On CPU a GRPO step is mostly generation, and generation and the update of the previous batch do not depend on
each other once one update of staleness is allowed (Noukhovitch et al. 2024, "Asynchronous RLHF"; PipelineRL).
`AsyncGenerator` starts one child process (torch.multiprocessing, "spawn") that loads its own copy of the policy
on the CPU and samples jobs FIFO while the trainer keeps its own threads for the update:

- weights: the trainer's trainable parameters (all of them for a full fine-tune, the adapter's for LoRA) live in
  shared-memory buffers made once, keyed by parameter name. `push(policy, version)` copies them in (a memcpy
  under a lock, no pickling) and publishes `version` (never below the last one; the same again refreshes that
  version's weights); before a job the child copies them into its model under the same lock when there was a
  push since its last copy, so a job is sampled with exactly one push's weights;
- staleness: `submit(key, prompts, min_version)`; the child does not start that job before version
  `min_version` is published (it waits), and records the version it used. `stale(result_version,
  trainer_version)` says whether a result is older than `max_staleness` updates; the trainer drops those;
- behaviour log-probs: each token's log_softmax(logits / T) under the generator's weights
  (`rollout.sampler.sample_groups(return_logps=True)`), which the trainer's truncated importance sampling
  compares with its own;
- seeds: a job's random stream is seeded from (seed, key) (a hash of their repr, so keys should have a stable
  repr: ints, strings, tuples of them), so the same key sampled with the same weights gives the same tokens,
  whatever ran before it;
- failures: an error in the child (a model that does not load, names that do not match) comes back from
  `result` as one AlignkitError line; a child that dies without a word is noticed by polling its liveness, so
  `result` never waits forever on a dead process. `result(key, timeout)` raises `GenerationTimeout` (an
  AlignkitError and a TimeoutError) when the job is still running or waiting for its version.

Methods are meant to be called from one thread (the trainer's). The child sets torch's thread count to
`threads` and is started with OMP_NUM_THREADS / MKL_NUM_THREADS set to it, so it never takes every core.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.models.load import first_line, load_policy, load_tokenizer
from alignkit.rollout.episodes import model_sampler, run_episodes
from alignkit.rollout.sampler import sample_groups

POLL_S = 0.2
"""How often a waiting parent checks the child is alive, and a waiting child checks for close."""
CLOSE_WAIT_S = 10.0
"""How long close() lets the child finish its current job before terminating it."""


class GenerationTimeout(AlignkitError, TimeoutError):
    """`AsyncGenerator.result(key, timeout)` ran out of time: the job is still queued, waiting for its weight
    version, or sampling. The job stays pending; a later `result` call can still collect it."""


@dataclass
class GenResult:
    """One job's samples: group rows per prompt and their behaviour log-probs under one weight version."""

    key: Any
    """The job key given to submit."""
    token_rows: list[list[int]]
    """Group rows per prompt as `rollout.sampler.sample_groups` returns them (pad_id fillers after the first stop
    token; row i continues prompt i // group)."""
    token_logps: list[list[float]]
    """Per sampled token of each row up to and including its first stop token: log_softmax(logits / T) at the
    chosen token under the generator's weights (not the top-k/top-p filtered distribution)."""
    version: int
    """The weight version the whole job was sampled with."""
    seconds: float
    """Generation wall time of this job (sampling only)."""
    waited: float = 0.0
    """Seconds the job waited in the child for its min_version to be published."""
    episodes: list | None = None
    """Episode jobs: the `rollout.episodes.Episode`s, group per row (token_rows and token_logps are then empty)."""


@dataclass
class _ChildSpec:
    """What the child needs to load and sample (picklable: plain values and settings dataclasses)."""

    model: str
    dtype: Any
    lora: Any
    settings: Any
    group: int
    stop_ids: list[int]
    pad_id: int
    seed: int
    threads: int
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    env: Any = None
    """`rollout.settings.EnvSettings` when jobs are multi-turn episodes (the child then loads the tokenizer)."""


def job_seed(seed: int, key: Any) -> int:
    """The torch seed of job `key`: a hash of repr((seed, key)), the same in every process (Python's hash() of a
    string is salted per process, so it cannot be used)."""
    digest = hashlib.sha256(repr((seed, key)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def trainable_parameters(policy) -> dict:
    """name -> parameter for the parameters the trainer updates (requires_grad); a DDP-style wrapper's
    `.module` is looked through, so the names are those of the model load_policy returns."""
    policy = getattr(policy, "module", policy)
    return {name: p for name, p in policy.named_parameters() if p.requires_grad}


def check_names(model, shapes: dict[str, tuple[int, ...]]) -> dict:
    """The child's parameters by the shared names; one AlignkitError line when a shared name is missing or has
    another shape (the two sides were not loaded by the same load_policy call)."""
    params = dict(model.named_parameters())
    missing = [n for n in shapes if n not in params]
    if missing:
        raise AlignkitError(f"async generator: the generator's model has no parameter {missing[0]!r} "
                            f"({len(missing)} of {len(shapes)} shared names missing): load it as the trainer does")
    for name, shape in shapes.items():
        if tuple(params[name].shape) != tuple(shape):
            raise AlignkitError(f"async generator: parameter {name!r} has shape {tuple(params[name].shape)} in the "
                                f"generator and {tuple(shape)} in the trainer")
    return {n: params[n] for n in shapes}


@contextmanager
def _thread_env(threads: int):
    """OMP_NUM_THREADS and MKL_NUM_THREADS set to `threads` while the child is spawned (it copies os.environ),
    restored afterwards, so the child's thread pools start small whatever the parent's environment says."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: str(threads) for n in names})
    try:
        yield
    finally:
        for n, value in saved.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


class AsyncGenerator:
    """A generator process with its own copy of the policy: submit jobs, push weights, collect results."""

    def __init__(self, model_name_or_path: str, policy, *, dtype: str, lora, settings, group: int,
                 stop_ids: list[int], pad_id: int, seed: int, max_staleness: int = 1, threads: int = 1,
                 version: int = 0, env=None):
        """Share `policy`'s trainable weights as `version` (0: the starting weights) and start the child, which
        loads `model_name_or_path` with load_policy(dtype=dtype, device="cpu", lora=lora) and copies them in.
        Returns at once; the child loads while the caller goes on (`wait_ready` waits for it). env
        (`rollout.settings.EnvSettings` with an environment): jobs are episodes (`submit(..., rows=...)`)."""
        import torch
        import torch.multiprocessing as mp

        if group < 1 or threads < 1 or max_staleness < 0:
            raise AlignkitError(f"async generator: group ({group}) and threads ({threads}) must be at least 1, "
                                f"max_staleness ({max_staleness}) at least 0")
        params = trainable_parameters(policy)
        if not params:
            raise AlignkitError("async generator: the policy has no trainable parameters to share")
        with torch.no_grad():
            self._buffers = {n: p.detach().to("cpu").clone().share_memory_() for n, p in params.items()}
        self.max_staleness = max_staleness
        spec = _ChildSpec(str(model_name_or_path), dtype, lora, settings, group, list(stop_ids), pad_id, seed,
                          threads, {n: tuple(b.shape) for n, b in self._buffers.items()}, env)
        ctx = mp.get_context("spawn")
        self._version = ctx.Value("q", int(version), lock=False)  # guarded by _cond
        self._pushes = ctx.Value("q", 0, lock=False)  # pushes so far, guarded by _cond: the child reloads on a change
        self._cond = ctx.Condition(ctx.Lock())
        self._stop = ctx.Event()
        self._jobs, self._results = ctx.Queue(), ctx.Queue()
        self._process = ctx.Process(target=_child_main, name="alignkit-async-generator", daemon=True,
                                    args=(spec, self._buffers, self._version, self._pushes, self._cond, self._stop,
                                          self._jobs, self._results))
        self._submitted: set = set()
        self._done: dict[Any, GenResult] = {}
        self._error: str | None = None
        self._closed = False
        self.startup_seconds: float | None = None
        """Seconds the child took to import, load the model and copy the weights in (once it is ready)."""
        with _thread_env(threads):
            self._process.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._process, self._stop, self._jobs, self._results)

    # ---------------------------------------------------------------------------------------------------------
    # the trainer's side

    def push(self, policy, version: int) -> None:
        """Copy `policy`'s trainable parameters into the shared buffers and publish `version` (not below the
        published one; the same again replaces that version's weights). A memcpy under the lock: the child never
        sees half of one push and half of another."""
        import torch

        self._check_open()
        with self._cond:
            current = self._version.value
        if version < current:
            raise AlignkitError(f"async generator: push: version {version} is below the published {current}")
        params = trainable_parameters(policy)
        if params.keys() != self._buffers.keys():
            extra = sorted(set(params) ^ set(self._buffers))
            raise AlignkitError(f"async generator: push: the policy's trainable parameters differ from the shared "
                                f"ones (e.g. {extra[0]!r}); push the model the generator was made from")
        with torch.no_grad(), self._cond:
            for name, buffer in self._buffers.items():
                buffer.copy_(params[name].detach())
            self._version.value = int(version)
            self._pushes.value += 1
            self._cond.notify_all()

    @property
    def version(self) -> int:
        """The published weight version."""
        with self._cond:
            return self._version.value

    def stale(self, result_version: int, trainer_version: int) -> bool:
        """Whether samples of weight version `result_version` are too old for a trainer at `trainer_version`:
        more than max_staleness updates behind. The trainer must not use them."""
        return trainer_version - result_version > self.max_staleness

    def submit(self, key, prompt_ids: list[list[int]], min_version: int, rows: list[dict] | None = None) -> None:
        """Queue a job: `group` samples per prompt (episodes: `group` episodes per prompt row of `rows`;
        prompt_ids unused), started once weight version >= min_version is published. Keys must be picklable
        and not pending already."""
        self._check_open()
        if key in self._submitted:
            raise AlignkitError(f"async generator: job {key!r} is already pending; collect it before reusing its key")
        if rows is not None:
            if not rows:
                raise AlignkitError(f"async generator: job {key!r}: needs at least one row")
            self._jobs.put((key, list(rows), int(min_version)))
            self._submitted.add(key)
            return
        if not prompt_ids or not all(prompt_ids):
            raise AlignkitError(f"async generator: job {key!r}: needs at least one prompt, each of at least one token")
        self._jobs.put((key, [list(map(int, p)) for p in prompt_ids], int(min_version)))
        self._submitted.add(key)

    @property
    def pending(self) -> int:
        """Submitted jobs not yet collected by `result`."""
        return len(self._submitted)

    def result(self, key, timeout: float | None = None) -> GenResult:
        """Block until job `key`'s result arrives (others arriving meanwhile are kept for their own calls).
        Raises GenerationTimeout after `timeout` seconds (None: no limit), AlignkitError with the child's one-line
        reason when it failed or died."""
        if key not in self._submitted:
            raise AlignkitError(f"async generator: no pending job {key!r} (never submitted, or already collected)")
        deadline = None if timeout is None else time.monotonic() + timeout
        while key not in self._done:
            if self._error is not None:
                raise AlignkitError(self._error)
            if self._closed:
                raise AlignkitError("async generator: closed")
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise GenerationTimeout(f"async generator: job {key!r} not done after {timeout:g} s "
                                        f"(published weight version {self.version})")
            if not self._receive(wait) and not self._process.is_alive():
                self._receive(0)  # a last word sent just before it exited
                if key not in self._done and self._error is None:
                    self._error = (f"async generator: the generator process exited (code {self._process.exitcode}) "
                                   f"before job {key!r} was done")
        self._submitted.discard(key)
        return self._done.pop(key)

    def wait_ready(self, timeout: float | None = None) -> float:
        """Block until the child has loaded its model and weights; returns its start-up seconds. Raises like
        `result` when it failed, GenerationTimeout after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.startup_seconds is None:
            if self._error is not None:
                raise AlignkitError(self._error)
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise GenerationTimeout(f"async generator: not ready after {timeout:g} s")
            if not self._receive(wait) and not self._process.is_alive():
                self._receive(0)
                if self.startup_seconds is None and self._error is None:
                    self._error = f"async generator: the generator process exited (code {self._process.exitcode})"
        return self.startup_seconds

    def _receive(self, wait: float) -> bool:
        """Take one message from the child (waiting up to `wait` s); False when none came."""
        try:
            kind, key, payload = self._results.get(timeout=wait) if wait > 0 else self._results.get_nowait()
        except queue.Empty:
            return False
        if kind == "done":
            self._done[key] = payload
        elif kind == "ready":
            self.startup_seconds = payload
        else:
            self._error = payload
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise AlignkitError("async generator: closed")

    # ---------------------------------------------------------------------------------------------------------
    # lifetime

    def close(self) -> None:
        """Stop the child (it finishes the job in hand, up to CLOSE_WAIT_S, else it is terminated). Idempotent;
        also runs on garbage collection and at exit."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> AsyncGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shutdown(process, stop, jobs, results) -> None:
    """Ask the child to stop, drain what it still sends (a child whose queue pipe is full cannot exit), and
    terminate it when it does not stop in time. Holds no reference to the AsyncGenerator (a weakref finalizer)."""
    stop.set()
    try:
        jobs.put(None)
    except (OSError, ValueError):
        pass
    deadline = time.monotonic() + CLOSE_WAIT_S
    while process.is_alive() and time.monotonic() < deadline:
        try:
            results.get(timeout=0.05)
        except (queue.Empty, OSError, ValueError, EOFError):
            pass
    if process.is_alive():
        process.terminate()
        process.join(2)
    if process.is_alive():
        process.kill()
    process.join(2)
    for q in (jobs, results):
        q.cancel_join_thread()
        q.close()


# -------------------------------------------------------------------------------------------------------------
# the child process (module top level, so "spawn" can import it)


def _child_main(spec: _ChildSpec, buffers, version, pushes, cond, stop, jobs, results) -> None:
    """Load the model, check the shared names, then sample jobs until told to stop; any error goes back to the
    parent as one line."""
    import torch

    started = time.perf_counter()
    try:
        torch.set_num_threads(spec.threads)
        model = load_policy(spec.model, dtype=spec.dtype, device="cpu", lora=spec.lora)
        model.requires_grad_(False)
        model.eval()
        params = check_names(model, spec.shapes)
        tokenizer = load_tokenizer(spec.model, padding_side="left") if spec.env is not None else None
        loaded, used = _load_weights(params, buffers, version, pushes, cond, -1)
        results.put(("ready", None, time.perf_counter() - started))
        while True:
            job = _next_job(jobs, stop)
            if job is None:
                return
            key, prompt_ids, min_version = job
            t0 = time.perf_counter()
            if not _wait_version(version, cond, stop, min_version):
                return
            waited = time.perf_counter() - t0
            loaded, used = _load_weights(params, buffers, version, pushes, cond, loaded)
            torch.manual_seed(job_seed(spec.seed, key))
            t1 = time.perf_counter()
            if tokenizer is not None:  # an episode job: prompt_ids are the prompt rows
                sample = model_sampler(model, spec.settings, spec.stop_ids, spec.pad_id, logps=True)
                episodes = run_episodes(sample, tokenizer, prompt_ids, spec.env.environment, spec.group,
                                        spec.settings.max_new_tokens, spec.env, spec.stop_ids)
                results.put(("done", key, GenResult(key, [], [], used, time.perf_counter() - t1, waited, episodes)))
                continue
            rows, logps = sample_groups(model, prompt_ids, spec.group, spec.settings, spec.stop_ids, spec.pad_id,
                                        return_logps=True)
            results.put(("done", key, GenResult(key, rows, logps, used, time.perf_counter() - t1, waited)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        return
    except AlignkitError as e:
        results.put(("error", None, first_line(e)))
    except Exception as e:  # noqa: BLE001 - anything else, as one line for the parent
        results.put(("error", None, f"async generator: {type(e).__name__}: {first_line(e)}"))


def _parent_gone() -> bool:
    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


def _next_job(jobs, stop):
    """The next job, or None when close() was called or the parent is gone."""
    while not stop.is_set() and not _parent_gone():
        try:
            return jobs.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None


def _wait_version(version, cond, stop, min_version: int) -> bool:
    """Wait until weight version >= min_version is published; False when told to stop first."""
    with cond:
        while version.value < min_version:
            if stop.is_set() or _parent_gone():
                return False
            cond.wait(POLL_S)
    return True


def _load_weights(params: dict, buffers: dict, version, pushes, cond, loaded: int) -> tuple[int, int]:
    """Copy the shared buffers into the model when there was a push since push number `loaded`; returns (the
    push number, the version) now in the model. Under the lock, so a push cannot land halfway."""
    import torch

    with cond:
        if pushes.value != loaded:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(buffers[name])
        return pushes.value, version.value
