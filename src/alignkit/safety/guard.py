"""Guard classifier: which hazard categories does a prompt or a response fall into? (docs/guard.md)

A small head on frozen sentence embeddings (safety/encoder.py), one sigmoid per hazard category of the
taxonomy plus one for "unsafe at all", trained with binary cross-entropy:

- Prompts and responses share one head, with the role as an extra input feature (0 prompt, 1 response) and
  a hidden layer so the role can interact with the text. Sharing lets the response side, which has only a
  few examples per category, borrow what the prompt side learned about each topic; the role feature (and
  the hidden layer) lets the same topic count differently in the two roles, e.g. a reply that *names* a
  weapon while declining is safe, where a prompt asking for one is not.
- Calibration. The built-in data has no validation split large enough to spare (one to two positives per
  category), so the validation scores are out-of-fold: the training rows are cut into k folds, a head is
  trained on k-1 and scores the k-th. On those scores we fit one temperature T (minimising the binary
  cross-entropy of sigmoid(logit / T)), then choose each category's threshold to maximise its F1 (or, with
  `target_precision`, the lowest threshold reaching that precision), and the threshold on the "unsafe"
  output the same way. The head that ships is then trained on all training rows with the same settings.
- Long texts: the encoder reads 256 tokens, so a harmless preamble could hide a harmful tail. `probabilities`
  and `classify` therefore read a text in overlapping windows of 256 tokens, 192 apart (safety/encoder.py,
  `encode_windows`), and a text's probabilities are those of its most unsafe window: the window with the
  highest p(unsafe), whose category scores come with it. A text of up to 254 tokens is one window, scored
  exactly as before. Training reads each row's first window (`encode`); the rows are short.
- Verdict: unsafe when p(unsafe) >= its threshold; the categories listed are those whose calibrated
  probability reaches their own threshold, or the most likely one if none does (an unsafe verdict always
  names a category, as Llama Guard's does). `format_llama_guard` prints `safe` or `unsafe\\nS1,S9`.

Categories with no positive training row get no output (the saved guard.json lists the ones it has).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignkit.data.builtin import builtin_path
from alignkit.errors import AlignkitError
from alignkit.files import write_atomic, write_text_atomic
from alignkit.models.embedded import cache_dir
from alignkit.models.load import resolve_model_path
from alignkit.safety.guard_data import (
    GUARD_FILES,
    ROLES,
    builtin_rows,
    load_guard_rows,
    training_rows,
)
from alignkit.safety.guard_fit import (
    choose_threshold,
    fit_head,
    fit_temperature,
    folds,
    make_head,
    prf,
)
from alignkit.safety.policy_encoder import ENCODERS, POLICY, guard_encoder
from alignkit.safety.taxonomy import PACKAGED, load_taxonomy

UNSAFE = "unsafe"
WEIGHTS = "guard.safetensors"
META = "guard.json"
FORMAT_VERSION = 1
PACKAGED_GUARD = Path(__file__).parent / "default_guard"  # the default guard, shipped trained
DEFAULT_GUARD_VERSION = 3  # bump when the default guard's recipe changes, so stale caches are retrained


@dataclass
class GuardConfig:
    """Settings of `alignkit guard train`."""

    output_dir: str | None = None
    """where the trained guard (guard.safetensors, guard.json) and eval.json are written"""
    data: list[str] = field(default_factory=list)
    """extra training JSONL files of {"text", "role": "prompt"|"response", "categories": [...]} rows"""
    seed: int = 0
    """random seed (weight init, fold assignment)"""
    hidden_size: int = 128
    """width of the head's hidden layer; 0 for a linear head"""
    epochs: int = 300
    """full-batch optimisation steps"""
    learning_rate: float = 0.01
    """AdamW learning rate"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    calibration_folds: int = 5
    """folds whose out-of-fold scores calibrate the temperature and thresholds"""
    target_precision: float | None = None
    """if set, each threshold is the lowest reaching this validation precision instead of the F1-best one"""
    taxonomy: str | None = None
    """hazard taxonomy YAML (default: the packaged one)"""
    encoder: str = POLICY
    """features the head reads: smollm2 (the embedded chat model's hidden states) or minilm (sentence
    embeddings: faster, weaker; docs/guard.md)"""

    def check(self) -> None:
        if self.hidden_size < 0:
            raise AlignkitError("config: hidden_size: must be >= 0")
        if self.epochs < 1:
            raise AlignkitError("config: epochs: must be >= 1")
        if self.encoder not in ENCODERS:
            raise AlignkitError(f"config: encoder: expected one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.calibration_folds < 2:
            raise AlignkitError("config: calibration_folds: must be >= 2")
        if self.target_precision is not None and not 0 < self.target_precision <= 1:
            raise AlignkitError("config: target_precision: must be in (0, 1]")


@dataclass
class Verdict:
    safe: bool
    categories: list[str]
    scores: dict[str, float]


def format_llama_guard(verdict: Verdict, taxonomy=None) -> str:
    """`safe`, or `unsafe` and the comma-separated S-codes of the categories on a second line."""
    if verdict.safe:
        return "safe"
    taxonomy = taxonomy or load_taxonomy()
    return "unsafe\n" + ",".join(taxonomy.code(c) for c in verdict.categories)


# ----------------------------------------------------------------------------------------------------
# the classifier


class GuardClassifier:
    """A trained guard: head weights, the categories it has outputs for, temperature and thresholds."""

    def __init__(self, head, categories: list[str], temperature: float, thresholds: dict[str, float],
                 settings: dict, encoder=None, taxonomy=None, info: dict | None = None):
        self.head, self.categories, self.temperature = head, list(categories), float(temperature)
        self.thresholds = {k: float(v) for k, v in thresholds.items()}
        self.settings = dict(settings)
        self.info = dict(info or {})
        self._encoder = encoder
        self._taxonomy = taxonomy

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = guard_encoder(self.settings["encoder"])
        return self._encoder

    @property
    def taxonomy(self):
        if self._taxonomy is None:
            self._taxonomy = load_taxonomy(self.settings.get("taxonomy"))
        return self._taxonomy

    # -- training ------------------------------------------------------------------------------------

    @classmethod
    def train(cls, rows: list[dict], config: GuardConfig | None = None, encoder=None, taxonomy=None):
        """Fit on {"text", "role", "categories"} rows: out-of-fold calibration, then the final head on all rows."""
        import torch

        config = config or GuardConfig()
        config.check()
        if taxonomy is None:
            taxonomy = load_taxonomy(config.taxonomy)
        if encoder is None:
            encoder = guard_encoder(config.encoder)
        present = {c for r in rows for c in r["categories"]}
        unknown = sorted(present - set(taxonomy.ids))
        if unknown:
            raise AlignkitError(f"guard: training rows use unknown hazard {unknown[0]!r}")
        categories = [c for c in taxonomy.ids if c in present]  # taxonomy order, so S-codes sort naturally
        if not categories or all(r["categories"] for r in rows):
            raise AlignkitError("guard: training needs both safe rows and rows with a hazard category")

        targets = torch.tensor([[float(c in r["categories"]) for c in categories] + [float(bool(r["categories"]))]
                                for r in rows])
        features = _features(encoder, [r["text"] for r in rows], [r["role"] for r in rows])
        head = fit_head(features, targets, **_fit_settings(config))
        held_out = _out_of_fold_logits(rows, features, targets, config)
        temperature = fit_temperature(held_out, targets)
        probs = torch.sigmoid(held_out / temperature)
        names = [*categories, UNSAFE]
        thresholds = {name: choose_threshold(probs[:, j].tolist(), targets[:, j].int().tolist(),
                                             config.target_precision)
                      for j, name in enumerate(names)}
        settings = {"encoder": config.encoder, "taxonomy": config.taxonomy, "hidden_size": config.hidden_size,
                    "input_dim": int(features.shape[1])}
        info = {"train_rows": len(rows), "seed": config.seed, "calibration_folds": config.calibration_folds,
                "target_precision": config.target_precision,
                "positives": {c: int(targets[:, j].sum()) for j, c in enumerate(names)}}
        return cls(head, categories, temperature, thresholds, settings, encoder, taxonomy, info)

    # -- inference -----------------------------------------------------------------------------------

    def probabilities(self, texts: list[str], role: str = "prompt"):
        """Calibrated probabilities [n, categories + 1] (the last column is "unsafe"): for each text, those of
        its most unsafe window (module docstring)."""
        import torch

        if role not in ROLES:
            raise AlignkitError(f"guard: role: expected prompt or response, got {role!r}")
        if not texts:
            return torch.zeros(0, len(self.categories) + 1)
        embeddings, counts = _window_embeddings(self.encoder, texts)
        role_column = torch.full((len(embeddings), 1), float(role == "response"), dtype=embeddings.dtype)
        with torch.no_grad():
            windows = torch.sigmoid(self.head(torch.cat([embeddings, role_column], dim=1)) / self.temperature)
        return torch.stack([rows[rows[:, -1].argmax()] for rows in windows.split(counts)])

    def classify(self, texts: list[str], role: str = "prompt") -> list[Verdict]:
        names = [*self.categories, UNSAFE]
        verdicts = []
        for row in self.probabilities(texts, role).tolist():
            scores = dict(zip(names, row))
            unsafe = scores[UNSAFE] >= self.thresholds[UNSAFE]
            flagged = [c for c in self.categories if scores[c] >= self.thresholds[c]]
            if unsafe and not flagged:
                flagged = [max(self.categories, key=scores.get)]
            verdicts.append(Verdict(safe=not unsafe, categories=flagged if unsafe else [], scores=scores))
        return verdicts

    def evaluate(self, rows: list[dict]) -> dict:
        """Per-category precision/recall/F1, their micro and macro averages, and binary safe/unsafe metrics.

        Macro averages the categories with at least one gold example in `rows`. The binary block treats
        unsafe as the positive class, overall and per role."""
        predicted: list[list[str] | None] = [None] * len(rows)
        for role in ROLES:
            idx = [i for i, r in enumerate(rows) if r.get("role", "prompt") == role]
            for i, v in zip(idx, self.classify([rows[i]["text"] for i in idx], role)):
                predicted[i] = [] if v.safe else v.categories
        gold = [set(r["categories"]) for r in rows]
        pred = [set(p) for p in predicted]
        names = list(dict.fromkeys([*self.categories, *sorted(set().union(*gold) - set(self.categories))]))
        per_category, totals = {}, [0, 0, 0]
        for c in names:
            tp = sum(c in g and c in p for g, p in zip(gold, pred))
            fp = sum(c not in g and c in p for g, p in zip(gold, pred))
            fn = sum(c in g and c not in p for g, p in zip(gold, pred))
            precision, recall, f1 = prf(tp, fp, fn)
            per_category[c] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
            totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
        supported = [m for m in per_category.values() if m["support"]]
        micro = dict(zip(("precision", "recall", "f1"), prf(*totals)))
        macro = {k: (sum(m[k] for m in supported) / len(supported) if supported else 0.0)
                 for k in ("precision", "recall", "f1")}

        def binary(indices):
            return _binary([bool(gold[i]) for i in indices], [bool(pred[i]) for i in indices])

        report = {"rows": len(rows), "categories": per_category, "micro": micro, "macro": macro,
                  "binary": binary(range(len(rows)))}
        report["binary_by_role"] = {role: binary([i for i, r in enumerate(rows) if r.get("role", "prompt") == role])
                                    for role in ROLES if any(r.get("role", "prompt") == role for r in rows)}
        return report

    # -- files ---------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """guard.safetensors (head weights) and guard.json (everything else), each written atomically, json last."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        write_atomic(out / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
        meta = {"format_version": FORMAT_VERSION, "categories": self.categories, "temperature": self.temperature,
                "thresholds": self.thresholds, "settings": self.settings, "info": self.info,
                "weights_sha256": hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()}
        write_text_atomic(out / META, json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder=None, taxonomy=None) -> "GuardClassifier":
        from safetensors.torch import load_file

        d = Path(resolve_model_path(directory, what="guard", markers=(META,)))  # a run directory: its model/
        if not (d / META).is_file() or not (d / WEIGHTS).is_file():
            raise AlignkitError(f"{d}: guard: no trained guard here (expected {META} and {WEIGHTS}; "
                                "train one with `alignkit guard train`)")
        try:
            meta = json.loads((d / META).read_text(encoding="utf-8"))
            categories, settings = list(meta["categories"]), dict(meta["settings"])
            temperature, thresholds = float(meta["temperature"]), dict(meta["thresholds"])
        except (ValueError, KeyError, TypeError) as e:
            raise AlignkitError(f"{d / META}: guard: unreadable ({type(e).__name__}: {e})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise AlignkitError(f"{d / META}: format_version: expected {FORMAT_VERSION}, got "
                                f"{meta.get('format_version')!r}")
        if hashlib.sha256((d / WEIGHTS).read_bytes()).hexdigest() != meta.get("weights_sha256"):
            raise AlignkitError(f"{d / WEIGHTS}: guard: weights do not match {META} (a partial or mixed save?)")
        head = make_head(settings["input_dim"], settings["hidden_size"], len(categories) + 1)
        head.load_state_dict(load_file(str(d / WEIGHTS)))
        return cls(head.eval().requires_grad_(False), categories, temperature, thresholds, settings,
                   encoder, taxonomy, meta.get("info"))


def _fit_settings(config: GuardConfig) -> dict:
    return dict(hidden_size=config.hidden_size, epochs=config.epochs, learning_rate=config.learning_rate,
                weight_decay=config.weight_decay, seed=config.seed)


def _out_of_fold_logits(rows, features, targets, config: GuardConfig):
    """Each row's logits from a head trained on the other folds: the calibration scores."""
    import torch

    fold = torch.tensor(folds(rows, config.calibration_folds, config.seed))
    held_out = torch.zeros_like(targets)
    for k in range(config.calibration_folds):
        test = fold == k
        if test.any():
            held_out[test] = fit_head(features[~test], targets[~test], **_fit_settings(config))(features[test])
    return held_out


def _features(encoder, texts: list[str], roles: list[str]):
    """Sentence embedding with the role appended as one 0/1 feature."""
    import torch

    embeddings = encoder.encode(texts)
    role = torch.tensor([[float(r == "response")] for r in roles], dtype=embeddings.dtype)
    return torch.cat([embeddings, role], dim=1)


def _window_embeddings(encoder, texts: list[str]):
    """(embeddings of every window of every text, windows per text). An encoder without `encode_windows`
    (a stand-in in tests) reads each text whole, as one window."""
    if hasattr(encoder, "encode_windows"):
        return encoder.encode_windows(texts)
    return encoder.encode(texts), [1] * len(texts)


def _binary(gold: list[bool], flagged: list[bool]) -> dict:
    tp = sum(g and f for g, f in zip(gold, flagged))
    fp = sum(f and not g for g, f in zip(gold, flagged))
    fn = sum(g and not f for g, f in zip(gold, flagged))
    tn = len(gold) - tp - fp - fn
    precision, recall, f1 = prf(tp, fp, fn)
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / len(gold) if gold else 0.0,
            "false_positive_rate": fp / (fp + tn) if fp + tn else 0.0,
            "unsafe": tp + fn, "safe": fp + tn}


def _builtin_fingerprint() -> str:
    digest = hashlib.sha256(f"v{DEFAULT_GUARD_VERSION} {json.dumps(asdict(GuardConfig()))}".encode())
    for p in (*(builtin_path(n) for n in GUARD_FILES), PACKAGED):
        digest.update(Path(p).read_bytes())
    return digest.hexdigest()[:12]


_DEFAULT: GuardClassifier | None = None


def load_guard(spec: str) -> GuardClassifier | None:
    """The guard a `--guard` option names: default (the built-in one), a directory holding a saved guard, or
    none (and "") for no guard."""
    if spec in ("", "none"):
        return None
    if spec == "default":
        return default_guard()
    if not Path(spec).is_dir():
        raise AlignkitError(f"{spec}: guard: not a directory (give a saved guard classifier, default or none)")
    return GuardClassifier.load(spec)


def train_default_guard(directory: str | os.PathLike) -> GuardClassifier:
    """Train the default guard (the built-in train split, default settings) and save it to `directory`, its data
    fingerprint recorded in guard.json. `make default-guard` writes the packaged copy this way."""
    guard = GuardClassifier.train(training_rows())
    guard.info["fingerprint"] = _builtin_fingerprint()
    guard.save(directory)
    return guard


def packaged_guard_fingerprint() -> str | None:
    """The data fingerprint the packaged default guard was trained from (None when there is none)."""
    try:
        return json.loads((PACKAGED_GUARD / META).read_text(encoding="utf-8"))["info"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_guard() -> GuardClassifier:
    """The guard trained on the built-in train split with default settings. The package ships it trained
    (safety/default_guard/); when the data, taxonomy or settings no longer match what it was trained from, it
    is trained once (minutes: the features are the chat model's) and cached under the alignkit cache directory,
    keyed by their fingerprint."""
    global _DEFAULT
    if _DEFAULT is not None:
        return _DEFAULT
    fingerprint = _builtin_fingerprint()
    if packaged_guard_fingerprint() == fingerprint:
        _DEFAULT = GuardClassifier.load(PACKAGED_GUARD)
        return _DEFAULT
    target = cache_dir() / "guard" / f"default-{fingerprint}"
    if not (target / META).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            train_default_guard(tmp)
            try:
                os.replace(tmp, target)
            except OSError:
                if not (target / META).is_file():  # lost a race with another process: theirs is fine
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _DEFAULT = GuardClassifier.load(target)
    return _DEFAULT


def format_eval(report: dict, taxonomy=None) -> str:
    """A plain-text table of a report from `evaluate`."""
    taxonomy = taxonomy or load_taxonomy()
    lines = [f"{'code':<5} {'category':<20} {'P':>6} {'R':>6} {'F1':>6} {'n':>4}"]
    for c, m in report["categories"].items():
        lines.append(f"{taxonomy.code(c):<5} {c:<20} {m['precision']:>6.2f} {m['recall']:>6.2f} {m['f1']:>6.2f} "
                     f"{m['support']:>4}")
    for name in ("micro", "macro"):
        m = report[name]
        lines.append(f"{'':<5} {name:<20} {m['precision']:>6.2f} {m['recall']:>6.2f} {m['f1']:>6.2f}")
    for role, m in [("all", report["binary"]), *report["binary_by_role"].items()]:
        lines.append(f"unsafe vs safe ({role}): P {m['precision']:.2f} R {m['recall']:.2f} F1 {m['f1']:.2f}, "
                     f"accuracy {m['accuracy']:.2f}, false-positive rate {m['false_positive_rate']:.2f} "
                     f"({m['unsafe']} unsafe, {m['safe']} safe)")
    return "\n".join(lines)


def train_guard(config: GuardConfig) -> tuple[GuardClassifier, dict]:
    """Train on the built-in train split plus `config.data`, save to `config.output_dir`, evaluate on the
    built-in held-out test split and write eval.json next to the guard."""
    config.check()
    if not config.output_dir:
        raise AlignkitError("guard train: --output_dir is required")
    taxonomy = load_taxonomy(config.taxonomy)
    rows = training_rows()
    for path in config.data:
        rows += load_guard_rows(path, taxonomy.ids)
    guard = GuardClassifier.train(rows, config, taxonomy=taxonomy)
    out = guard.save(config.output_dir)
    report = guard.evaluate(builtin_rows("test"))
    report["config"] = asdict(config)
    write_text_atomic(out / "eval.json", json.dumps(report, indent=2) + "\n")
    return guard, report
