"""The run owner (engine.run): one config check per run, run.json running -> complete / failed (with the
reason) / stopped, for training methods and non-training stages alike; the pipeline shows a failed stage."""

import json

import pytest

from alignkit.engine.outputs import read_status
from alignkit.engine.run import one_line, run_owner, stage_action
from alignkit.errors import AlignkitError
from alignkit.rollout.stage import GenerateConfig


def count_checks(monkeypatch, config_cls) -> dict:
    """{"n": how many times config_cls.check has run since}."""
    calls = {"n": 0}
    real = config_cls.check

    def counted(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(config_cls, "check", counted)
    return calls


def test_a_stage_that_raises_is_failed_with_its_reason(tmp_path):
    config = GenerateConfig(dataset_name="x.jsonl", output_dir=str(tmp_path / "gen"))
    with pytest.raises(RuntimeError):
        with run_owner(config, kind="generate") as run:
            run.start()
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
    status = read_status(tmp_path / "gen")
    assert status["status"] == "failed" and status["error"] == "RuntimeError: CUDA out of memory."
    assert (tmp_path / "gen" / "config.yaml").exists()


def test_stopped_complete_and_nothing_written_before_start(tmp_path):
    config = GenerateConfig(dataset_name="x.jsonl", output_dir=str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        with run_owner(config, kind="generate") as run:
            run.start()
            raise KeyboardInterrupt
    assert read_status(tmp_path / "a")["status"] == "stopped"
    with run_owner(config, kind="generate", model="m") as run:
        run.start()
        run.complete(rows=3)
    assert read_status(tmp_path / "a") == {"status": "complete", "method": "generate",
                                           "output_dir": str(tmp_path / "a"), "model": "m", "rows": 3}
    config = GenerateConfig(dataset_name="x.jsonl", output_dir=str(tmp_path / "b"))
    with pytest.raises(AlignkitError):
        with run_owner(config, kind="generate"):
            raise AlignkitError("x.jsonl:1: prompt: missing")  # bad input, before the run started
    assert not (tmp_path / "b").exists()
    assert one_line(AlignkitError("x.jsonl:1: prompt: missing")) == "x.jsonl:1: prompt: missing"


def test_a_bad_config_raises_before_anything_is_written(tmp_path):
    config = GenerateConfig(dataset_name="", output_dir=str(tmp_path / "c"))
    with pytest.raises(AlignkitError, match="dataset_name"):
        with run_owner(config, kind="generate"):
            pass
    assert not (tmp_path / "c").exists()


def test_stage_action_skips_complete_runs(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"status": "complete"}))
    assert stage_action(GenerateConfig, {"output_dir": str(tmp_path)})[0] == "complete"
    assert stage_action(GenerateConfig, {"output_dir": str(tmp_path / "new")})[0] == "run"


def test_a_training_method_checks_its_config_once(tmp_path, monkeypatch, make_marker_pairs):
    from alignkit.methods.simpo import SimPOConfig, train_simpo

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_marker_pairs(8)))
    config = SimPOConfig(model_name_or_path="embedded:tiny", dataset_name=str(path))
    config.train.output_dir, config.train.max_steps = str(tmp_path / "run"), 1
    config.train.per_device_train_batch_size = 2
    calls = count_checks(monkeypatch, SimPOConfig)
    train_simpo(config)
    assert calls["n"] == 1
    assert read_status(tmp_path / "run")["status"] == "complete"


def test_a_training_method_that_crashes_after_start_is_failed(tmp_path, monkeypatch, make_marker_pairs):
    import alignkit.methods.simpo as simpo

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_marker_pairs(8)))
    config = simpo.SimPOConfig(model_name_or_path="embedded:tiny", dataset_name=str(path))
    config.train.output_dir = str(tmp_path / "run")

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(simpo, "load_policy", broken)
    with pytest.raises(OSError):
        simpo.train_simpo(config)
    assert read_status(tmp_path / "run") | {"output_dir": None} == {
        "status": "failed", "method": "simpo", "output_dir": None, "model": "embedded:tiny",
        "error": "OSError: disk on fire"}


def test_the_pipeline_shows_a_failed_stage_with_its_reason(tmp_path, capsys):
    from alignkit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\noutput_dir: {tmp_path / 'run'}\nstages:\n"
                      f"  - name: answers\n    method: generate\n"
                      f"    config: {{model_name_or_path: embedded:tiny, dataset_name: {tmp_path / 'none.jsonl'}}}\n")
    rc = main(["pipeline", str(recipe)])
    out, err = capsys.readouterr()
    assert rc != 0 and "Traceback" not in err
    status = read_status(tmp_path / "run" / "answers")
    assert status["status"] == "failed" and "none.jsonl" in status["error"]
    assert f"[1/1] answers (generate): failed: {status['error']}" in out
    index = (tmp_path / "run" / "index.html").read_text()
    assert "failed" in index and "none.jsonl" in index


def test_a_command_line_run_checks_its_config_once(tmp_path, monkeypatch, make_marker_pairs):
    """The CLI checks the config as it builds it (a bad option costs no model load); the run owner does not
    check the same values again, but does check a config changed after it was built."""
    from alignkit.cli import main
    from alignkit.config import checked
    from alignkit.methods.simpo import SimPOConfig

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_marker_pairs(8)))
    calls = count_checks(monkeypatch, SimPOConfig)
    assert main(["simpo", "--model", "embedded:tiny", "--data", str(path), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "1", "--per_device_train_batch_size", "2"]) == 0
    assert calls["n"] == 1
    config = checked(SimPOConfig(model_name_or_path="embedded:tiny", dataset_name=str(path)))
    config.train.learning_rate = -1.0  # changed after the check: checked again, and refused
    with pytest.raises(AlignkitError, match="learning_rate"):
        checked(config)
    assert calls["n"] == 3
