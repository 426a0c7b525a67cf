"""`--report_to wandb|mlflow`: the tracker run holds exactly the metrics of metrics.jsonl (names, steps, values,
NaN included), a resumed run goes on in a new tracker run from the resumed step, a run that stops ends its
tracker run as failed, and a missing tracker is one line. No network: W&B runs offline, MLflow writes a SQLite
file in tmp_path.

The tracking libraries are dev dependencies (`make test` installs them); each test skips without its library.
"""

from __future__ import annotations

import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.builtin import builtin_path
from alignkit.data.collate import collate_masked
from alignkit.data.io import load_rows
from alignkit.engine.loop import TrainingStopped, train
from alignkit.engine.runlog import read_metrics
from alignkit.engine.settings import TrainSettings
from alignkit.methods.sft import count_trained_tokens, sft_loss, tokenize_sft
from alignkit.models.load import load_policy

TINY = "embedded:tiny"
TRACKER_KEYS = {"_step", "_runtime", "_timestamp"}  # W&B's own history columns
# MLflow's SQLite store, inside SQLAlchemy; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """Trackers that write under tmp_path and never reach the network."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME",
                 "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TAGS", "MLFLOW_NESTED_RUN"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    if "wandb" in sys.modules:  # wandb reads WANDB_DIR once per process, at setup: start afresh for the next test
        sys.modules["wandb"].teardown()


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made: creating them takes seconds, so it is done once."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def mlflow_db(offline, empty_mlflow_db):
    pytest.importorskip("mlflow")
    shutil.copyfile(empty_mlflow_db, offline / "mlflow.db")


def sft(out: Path, tracker: str, *extra: str) -> int:
    """SFT on the tiny model: 3 logged steps, a checkpoint at step 2, evaluation at step 2 and at the end."""
    return main(["sft", "--model", TINY, "--data", "builtin:sft.jsonl", "--eval_data", "builtin:sft_eval.jsonl",
                 "--output_dir", str(out), "--max_steps", "3", "--logging_steps", "1", "--eval_steps", "2",
                 "--save_steps", "2", "--per_device_train_batch_size", "2", "--seed", "5", "--report_to", tracker,
                 "--progress", "false", *extra])


def by_step(rows: list[dict]) -> dict[int, dict]:
    """metrics.jsonl as {step: {name: value}}; a step's train and eval lines merge (the trackers merge them too)."""
    merged: dict[int, dict] = {}
    for row in rows:
        merged.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k != "step"})
    return merged


def assert_same(tracked: dict[int, dict], logged: dict[int, dict]) -> None:
    assert sorted(tracked) == sorted(logged)
    for step, row in logged.items():
        assert set(tracked[step]) == set(row), step
        for name, value in row.items():
            got = tracked[step][name]
            if isinstance(value, str):  # metrics.jsonl writes nan/inf as strings
                assert str(float(got)) == value, (step, name)
            else:
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (step, name)


# ----------------------------------------------------------------------------------------------------
# W&B: read the offline run's .wandb file (a LevelDB-style log of protobuf records) with wandb's own protos


def wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    block, pos, chunk = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        part = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(part, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum
        pos += 7 + length
        chunk += part
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_runs(root: Path) -> list[dict]:
    """Each offline run under root, oldest first: its project, history {step: {name: value}}, exit code."""
    import json

    runs = []
    for path in sorted(root.glob("wandb/offline-run-*/run-*.wandb")):
        run = {"project": None, "history": {}, "exit_code": None}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["project"] = record.run.project
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)  # eval/loss: nested
                       for item in record.history.item}
                run["history"].setdefault(record.history.step.num, {}).update(
                    {k: v for k, v in row.items() if k not in TRACKER_KEYS})
            elif kind == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs


def test_wandb_run_holds_the_metrics_of_metrics_jsonl_and_resume_goes_on(offline):
    pytest.importorskip("wandb")
    out = offline / "run"
    assert sft(out, "wandb") == 0
    assert sft(out, "wandb", "--max_steps", "4", "--resume") == 0

    logged = by_step(read_metrics(out / "metrics.jsonl"))
    assert sorted(logged) == [1, 2, 3, 4] and "eval/loss" in logged[2] and "loss" in logged[2]
    first, resumed = wandb_runs(offline)
    assert first["project"] == resumed["project"] == "sft"
    assert first["exit_code"] == resumed["exit_code"] == 0  # both closed, as successes
    assert sorted(first["history"]) == [1, 2, 3] and sorted(resumed["history"]) == [4]
    assert_same({**first["history"], **resumed["history"]}, logged)


# ----------------------------------------------------------------------------------------------------
# MLflow


def mlflow_runs(tmp: Path) -> list[dict]:
    """Each run of the `sft` experiment, oldest first: status, params, history {step: {name: value}}."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("sft")
    assert experiment is not None
    runs = []
    for info in sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time):
        history: dict[int, dict] = {}
        for name in info.data.metrics:
            points = client.get_metric_history(info.info.run_id, name)
            assert len({m.step for m in points}) == len(points), name  # one value per step, no repeats
            for m in points:
                history.setdefault(m.step, {})[name] = m.value
        runs.append({"status": info.info.status, "params": info.data.params, "history": history})
    return runs


def test_mlflow_run_holds_the_metrics_of_metrics_jsonl_and_resume_goes_on(offline, mlflow_db):
    out = offline / "run"
    assert sft(out, "mlflow") == 0
    assert sft(out, "mlflow", "--max_steps", "4", "--resume") == 0

    logged = by_step(read_metrics(out / "metrics.jsonl"))
    assert sorted(logged) == [1, 2, 3, 4] and "eval/loss" in logged[2]
    first, resumed = mlflow_runs(offline)
    assert first["status"] == resumed["status"] == "FINISHED"
    assert float(first["params"]["learning_rate"]) > 0 and first["params"]["report_to"] == "mlflow"
    assert sorted(first["history"]) == [1, 2, 3] and sorted(resumed["history"]) == [4]
    assert_same({**first["history"], **resumed["history"]}, logged)


# ----------------------------------------------------------------------------------------------------
# a run that raises, and a tracker that is not installed


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_stopped_run_logs_its_nan_step_and_ends_its_tracker_run_as_failed(offline, tracker, tiny_tokenizer,
                                                                           request, monkeypatch):
    """Step 2's loss is NaN and max_bad_steps is 1: the engine logs the NaN row (metrics.jsonl writes "nan"),
    then raises TrainingStopped; the tracker run holds both rows and ends as failed, not as a success."""
    pytest.importorskip(tracker)
    if tracker == "mlflow":
        request.getfixturevalue("mlflow_db")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    examples, _ = tokenize_sft(tiny_tokenizer, load_rows(builtin_path("sft.jsonl"), "sft")[:8], max_length=96)
    calls = []

    def step_fn(model, batch):
        calls.append(1)
        loss, metrics = sft_loss(model, batch)
        return (loss * float("nan") if len(calls) == 2 else loss), metrics

    settings = TrainSettings(output_dir=str(offline / "run"), max_steps=3, per_device_train_batch_size=2,
                             logging_steps=1, max_bad_steps=1, progress=False, report_to=tracker)
    with pytest.raises(TrainingStopped):
        train(load_policy(TINY, device="cpu"), examples, lambda b: collate_masked(b, tiny_tokenizer.pad_token_id),
              step_fn, settings, count_fn=count_trained_tokens, device="cpu", method="sft")
    logged = by_step(read_metrics(offline / "run" / "metrics.jsonl"))
    assert sorted(logged) == [1, 2] and logged[2]["loss"] == "nan"
    if tracker == "wandb":
        (run,) = wandb_runs(offline)
        assert run["exit_code"] == 1 and run["project"] == "mine"  # WANDB_PROJECT names the project
    else:
        (run,) = mlflow_runs(offline)
        assert run["status"] == "FAILED"
    assert_same(run["history"], logged)


def test_a_missing_tracker_is_one_line(offline, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert sft(offline / "run", "wandb") == 2
    assert not (offline / "run").exists()  # refused with the config, before the run or a model starts
    err = capsys.readouterr().err.strip()
    assert err == ("alignkit: error: report_to wandb: the tracker is not installed; pip install wandb "
                   "(or pip install 'alignkit[tracking]')")
