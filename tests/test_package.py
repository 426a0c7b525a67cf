"""The package stays light to import and ships its data."""

import subprocess
import sys


def test_import_alignkit_pulls_in_no_heavy_modules():
    code = (
        "import sys, alignkit, alignkit.cli, alignkit.data.formats, alignkit.data.io\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate', 'datasets', 'pyarrow', 'vllm',"
        " 'deepspeed', 'fastapi', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_matches_metadata():
    from importlib.metadata import version

    import alignkit

    assert alignkit.__version__ == version("alignkit")


def test_builtin_prompts_ship_and_are_valid():
    from alignkit.data.builtin import builtin_path, builtin_prompts
    from alignkit.data.io import load_rows

    rows = load_rows(builtin_path("prompts.jsonl"), "prompt")
    assert len(rows) == len(builtin_prompts()) >= 10
