"""Layout rules of docs/design.md §2, checked on the source: the declared import contracts
(pyproject.toml's ``[tool.importlinter]``: the package's layers, no cycle between modules), and
the CLI imports the core and never the reverse (lazy imports inside functions included)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pid_trt"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the pid_trt modules it imports anywhere in its source."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def lint_imports(root: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (import-linter) on the contracts in ``config``, with ``root`` importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", str(config)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_import_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter] contracts: the package's layers (the CLI on top, each
    layer importing only those below it, so the package-level graph has no cycle) and no cycle
    between the modules of any package; imports inside functions count."""
    root = PACKAGE.parent
    run = lint_imports(root, root / "pyproject.toml")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_import_contracts_catch_an_upward_import(tmp_path: Path) -> None:
    """The same kinds of contract, on a planted package whose lower layer imports an upper one
    inside a function: both are reported broken."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("import planted.bottom\n")
    (pkg / "bottom.py").write_text("def late():\n    import planted.top\n")
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "planted"\n\n'
        '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
        'containers = ["planted"]\nexhaustive = true\nlayers = ["top", "bottom"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "siblings"\ntype = "acyclic_siblings"\nancestors = ["planted"]\n'
    )
    run = lint_imports(tmp_path, config)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "planted.bottom is not allowed to import planted.top" in run.stdout
    assert "0 kept, 2 broken" in run.stdout


def test_a_type_checking_import_does_not_count(tmp_path: Path) -> None:
    """As in pyproject.toml (``exclude_type_checking_imports``): an upward import under ``if
    TYPE_CHECKING:`` (a type for annotations only, never imported at run time) breaks neither
    contract; the same import at run time breaks both."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("import planted.bottom\n")
    (pkg / "bottom.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from planted.top import Thing\n"
    )
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "planted"\nexclude_type_checking_imports = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
        'containers = ["planted"]\nexhaustive = true\nlayers = ["top", "bottom"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "siblings"\ntype = "acyclic_siblings"\nancestors = ["planted"]\n'
    )
    run = lint_imports(tmp_path, config)
    assert run.returncode == 0 and "2 kept, 0 broken" in run.stdout, run.stdout + run.stderr
    (pkg / "bottom.py").write_text("from planted.top import Thing\n")
    run = lint_imports(tmp_path, config)
    assert run.returncode == 1 and "0 kept, 2 broken" in run.stdout, run.stdout + run.stderr


def test_core_never_imports_the_cli() -> None:
    graph = import_graph()
    bad = sorted(
        (m, t)
        for m, targets in graph.items()
        if not m.startswith("pid_trt.cli")
        for t in targets
        if t.startswith("pid_trt.cli")
    )
    assert bad == []


#: Size limits of docs/design.md §4: lines per module and per function (decorators, signature
#: and docstring included).
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def oversized(package: Path) -> list[str]:
    """Modules over :data:`MAX_MODULE_LINES` lines and functions (methods and nested functions
    included) over :data:`MAX_FUNCTION_LINES`, as ``path:line name (N lines)``."""
    out = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(package.parent)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            out.append(f"{where} ({lines} lines)")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{where}:{first} {node.name} ({length} lines)")
    return out


def test_sizes() -> None:
    """No module of pid_trt over 450 lines, no function over 80."""
    assert oversized(PACKAGE) == []


def test_sizes_catch_a_long_function_and_a_long_module(tmp_path: Path) -> None:
    """The gate reports a planted 81-line method and a 451-line module, and passes their
    80-line and 450-line neighbours."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    body = "".join(f"        x{i} = {i}\n" for i in range(78))
    (pkg / "fits.py").write_text(f"class A:\n    def ok(self):\n{body}        return 0\n")  # 80-line method
    (pkg / "long.py").write_text(
        f"class A:\n    @staticmethod\n    def too_long():\n{body}        return 0\n"  # 81 with its decorator
    )
    (pkg / "big.py").write_text("x = 0\n" * 451)
    (pkg / "edge.py").write_text("x = 0\n" * 450)
    assert oversized(pkg) == ["planted/big.py (451 lines)", "planted/long.py:2 too_long (81 lines)"]


#: docs/design.md §4: a CLI function only translates flags into core calls, so its body (the
#: lines from its first statement after the docstring to its last) stays within this.
MAX_CLI_BODY_LINES = 40
#: Functions of pid_trt/cli/ still over the limit, to be split (``module.py:function``).
CLI_BODY_ALLOWANCES: set[str] = set()


def long_bodies(folder: Path, limit: int = MAX_CLI_BODY_LINES) -> list[str]:
    """Functions (methods and nested functions included) in ``folder``'s modules whose body is
    over ``limit`` lines, as ``module.py:name (N lines)``."""
    out = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            length = (node.end_lineno or node.lineno) - body[0].lineno + 1
            if length > limit:
                out.append(f"{path.name}:{node.name} ({length} lines)")
    return out


def test_cli_functions_only_translate() -> None:
    """No function of pid_trt/cli/ with a body over 40 lines (bar the listed allowances)."""
    found = [f for f in long_bodies(PACKAGE / "cli") if f.split(" ")[0] not in CLI_BODY_ALLOWANCES]
    assert found == []


def test_the_cli_body_gate_catches_a_long_body(tmp_path: Path) -> None:
    """A 41-line body is reported, a 40-line one (a docstring and signature aside) is not."""
    lines = "".join(f"    x{i} = {i}\n" for i in range(39))
    (tmp_path / "fits.py").write_text(f'def ok(\n    a: int,\n):\n    """Doc."""\n{lines}    return 0\n')
    (tmp_path / "long.py").write_text(f"def too_long():\n    y = 0\n{lines}    return 0\n")
    assert long_bodies(tmp_path) == ["long.py:too_long (41 lines)"]
