"""The architecture of docs/architecture.md holds: imports point down the layers (import-linter contracts in
pyproject.toml), and modules and functions stay small enough to read."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "alignkit"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120


def modules() -> list[Path]:
    return sorted(p for p in SOURCE.rglob("*.py") if "migrations" not in p.parts)


def test_imports_follow_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def long_modules() -> list[str]:
    lines = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in modules()}
    return [f"{p.relative_to(SOURCE)} ({n})" for p, n in lines.items() if n > MAX_MODULE_LINES]


def long_functions() -> list[str]:
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(SOURCE)}:{node.name} ({length})")
    return found


def test_no_module_over_500_lines():
    assert long_modules() == []


def test_no_function_over_120_lines():
    assert long_functions() == []
