"""Quiet logs: a run says nothing about libraries it does not use."""

import subprocess
import sys


def test_a_training_run_without_deepspeed_neither_imports_it_nor_mentions_it(tmp_path):
    code = ("import sys\nfrom alignkit.cli import main\n"
            f"rc = main(['sft', '--model', 'embedded:tiny', '--data', 'builtin:sft.jsonl', '--max_steps', '2',"
            f" '--save_steps', '1', '--output_dir', {str(tmp_path / 'run')!r}, '--device', 'cpu'])\n"
            "print('deepspeed imported:', sys.modules.get('deepspeed') is not None)\nraise SystemExit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "deepspeed imported: False" in out.stdout
    log = (out.stdout + out.stderr).lower()
    assert "deepspeed" not in log.replace("deepspeed imported: false", "")
    assert "setting accelerator" not in log
    assert (tmp_path / "run" / "model").is_dir()
