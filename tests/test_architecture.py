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


# Command-line modules load a command's implementation (and its torch/transformers) only once that command is
# chosen, so `alignkit --help` stays fast; everywhere else an import of our own code sits at module top level.
LAZY_COMMAND_MODULES = {"cli.py", "cli_tools.py", "annotate/cli.py", "safety/guard_cli.py", "safety/proxy_cli.py"}
# Optional or heavy third-party libraries may be imported where they are used: these, and nothing else.
HEAVY = {"torch", "transformers", "accelerate", "deepspeed", "peft", "safetensors", "tokenizers", "gguf", "vllm",
         "datasets", "pyarrow", "numpy", "matplotlib", "tqdm", "fastapi", "starlette", "pydantic", "uvicorn",
         "sqlalchemy", "alembic", "httpx"}


def imports_inside_functions() -> list[tuple[str, int, str]]:
    found = []
    for path in modules():
        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                if in_function and isinstance(child, ast.Import):
                    found.extend((str(path.relative_to(SOURCE)), child.lineno, a.name) for a in child.names)
                elif in_function and isinstance(child, ast.ImportFrom):
                    module = "alignkit" if child.level else child.module
                    found.append((str(path.relative_to(SOURCE)), child.lineno, module))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_imports_inside_functions_are_only_lazy_commands_and_heavy_libraries():
    misplaced = [f"{path}:{line}: {module}" for path, line, module in imports_inside_functions()
                 if not (module.split(".")[0] == "alignkit" and path in LAZY_COMMAND_MODULES)
                 and module.split(".")[0] not in HEAVY]
    assert misplaced == []


def test_alignkit_help_loads_no_model_library():
    code = "import sys; from alignkit.cli import parser_for; parser_for(['--help']); " \
           "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_no_cycle_between_subpackages():
    """Also between packages of one layer that may import each other (config : data : ...)."""
    import grimp

    graph = grimp.build_graph("alignkit")
    tops = sorted({".".join(m.split(".")[:2]) for m in graph.modules if m.count(".") >= 1})
    cycles = [(a, b) for i, a in enumerate(tops) for b in tops[i + 1:]
              if graph.chain_exists(a, b, as_packages=True) and graph.chain_exists(b, a, as_packages=True)]
    assert cycles == []
