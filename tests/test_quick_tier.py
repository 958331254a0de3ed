"""The quick tier (``./scripts/test.sh --quick``: every test not marked ``slow``) keeps its promise,
checked on what pytest collects, never on timings: every test module has tests in it unless
:data:`FULL_SUITE_ONLY` names the module with its reason, and every ``pidtrt`` subcommand is run
by at least one of its tests unless :data:`FULL_SUITE_COMMANDS` names it with its reason (found in the source of the test, its fixtures and the helpers they
call: a string that starts a command line, e.g. ``pidtrt("verify", ...)``, ``["engines", "list"]``
or ``[sys.executable, "-m", "pid_trt.cli.main", "serve", ...]``; or a ``pidtrt`` line of a
documentation block that the tier runs)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
#: Test modules with no test in the quick tier, and why (each repeats a quick test's path at a
#: larger cost; the full suite, CI's command, runs them).
FULL_SUITE_ONLY: dict[str, str] = {
    "tests/backends/test_trt_backend.py": "decodes on the tiny TensorRT-RTX engine pair (~40 s to build on 2 cores, "
    "a GPU to run); the quick tier's engine path is ORT (tests/backends/test_ort_parity.py)",
    "tests/cli/test_export_verify.py": "TensorRT-RTX parses an fp16 export (~15 s); the quick tier exports "
    "through the CLI in tests/backends/test_ort_parity.py",
    "tests/tiling/test_tile_engines.py": "a TensorRT-RTX build of a tile engine (~40 s on 2 cores); "
    "tests/cli/test_tiles_cli.py checks the printed plan",
    "tests/serve/test_clients.py": "a second server (tiny Gemma, caption cache); the quick tier's real server "
    "is tests/serve/test_serve.py's",
}
#: ``pidtrt`` commands no quick-tier test runs, and why.
FULL_SUITE_COMMANDS: dict[tuple[str, ...], str] = {
    ("engines", "list"): "needs TensorRT-RTX plans: the tiny pair takes ~40 s to build on 2 cores",
    ("engines", "rm"): "needs TensorRT-RTX plans: the tiny pair takes ~40 s to build on 2 cores",
    ("engines", "show"): "needs TensorRT-RTX plans: the tiny pair takes ~40 s to build on 2 cores",
}
#: Strings after which a command line's words follow (``python -m pid_trt.cli.main decode ...``).
LAUNCHERS = {"pid_trt.cli.main", "pidtrt"}
#: The test that runs the documentation's code blocks (their commands count too).
DOCS_RUN = "tests/test_docs_examples.py::test_unmarked_block_runs["
#: This module, as a node id's file part.
SELF = "tests/test_quick_tier.py"


def collected_quick_tier(root: Path = ROOT, tests: str = "tests") -> list[str]:
    """Node ids of the quick tier: ``pytest --collect-only -m "not slow"`` in a fresh process."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider", tests],
        cwd=root, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return [line.strip() for line in run.stdout.splitlines() if "::" in line]


def command_paths() -> set[tuple[str, ...]]:
    """Every runnable ``pidtrt`` command as its words, e.g. ``("engines", "list")``."""
    from pid_trt.cli import reference

    return {entry.path for entry in reference.commands()}


@cache
def _functions(path: Path) -> tuple[dict[str, ast.AST], set[str]]:
    """A module's functions by name (nested ones included) and the ``tests.*`` modules it imports."""
    tree = _parse(path)
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    helpers = {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("tests.")
    }
    return functions, helpers


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _module_path(module: str, root: Path) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


@cache
def _pool(test_file: Path, root: Path) -> dict[str, ast.AST]:
    """The functions a test of ``test_file`` may reach by name: its module's, its conftests'
    (fixtures) and those of the ``tests.*`` helper modules it imports; nearer ones win."""
    pool: dict[str, ast.AST] = {}
    files = [test_file]
    folder = test_file.parent
    while folder == root / "tests" or (root / "tests") in folder.parents:
        files.append(folder / "conftest.py")
        folder = folder.parent
    seen: set[Path] = set()
    while files:
        path = files.pop(0)
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        functions, helpers = _functions(path)
        for name, node in functions.items():
            pool.setdefault(name, node)
        files += [_module_path(m, root) for m in sorted(helpers)]
    return pool


def _reached(start: ast.AST, pool: dict[str, ast.AST]) -> list[ast.AST]:
    """``start`` and every pool function it reaches by a called name or a fixture argument."""
    todo, found = [start], []
    while todo:
        node = todo.pop()
        if any(node is f for f in found):
            continue
        found.append(node)
        names = {a.arg for a in node.args.args} if isinstance(node, ast.FunctionDef) else set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                names.add(sub.attr)
        todo += [pool[n] for n in sorted(names) if n in pool]
    return found


def _command_lines(nodes: Iterable[ast.AST], words: frozenset[str]) -> set[tuple[str, ...]]:
    """The command words that start an argument list or a list / tuple in ``nodes``: at its
    first place or after a launcher string, as many consecutive string constants as follow."""
    return set().union(*(_lines_of(node, words) for node in nodes))


@cache
def _lines_of(node: ast.AST, words: frozenset[str]) -> frozenset[tuple[str, ...]]:
    launchers = {  # local names of a launcher list: common = [sys.executable, "-m", "pid_trt.cli.main"]
        t.id
        for sub in ast.walk(node)
        if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.List | ast.Tuple) and sub.value.elts
        for t in sub.targets
        if isinstance(t, ast.Name) and _text(sub.value.elts[-1]) in LAUNCHERS
    }
    found = set()
    for sub in ast.walk(node):
        items = (
            sub.args
            if isinstance(sub, ast.Call)
            else sub.elts
            if isinstance(sub, ast.List | ast.Tuple)
            else []
        )
        texts = [
            "pidtrt" if isinstance(i, ast.Starred) and getattr(i.value, "id", None) in launchers else _text(i)
            for i in items
        ]
        for k, text in enumerate(texts):
            if text in words and (k == 0 or texts[k - 1] in LAUNCHERS):
                run = []
                for t in texts[k:]:
                    if t is None:
                        break
                    run.append(t)
                found.add(tuple(run))
    return frozenset(found)


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def exercised_commands(node_ids: Iterable[str], root: Path = ROOT) -> set[tuple[str, ...]]:
    """The ``pidtrt`` command paths the tests ``node_ids`` start, found in their source."""
    paths = command_paths()
    words = frozenset(w for p in paths for w in p)
    lines: set[tuple[str, ...]] = set()
    tests = {(n.partition("::")[0], n.partition("::")[2].split("::")[-1].split("[")[0]) for n in node_ids}
    for file, name in sorted(tests - {(SELF, n) for _, n in tests}):  # our planted names are no runs
        test = _functions(root / file)[0].get(name)
        assert test is not None, f"{file}: no test function {name}"
        lines |= _command_lines(_reached(test, _pool(root / file, root)), words)
    lines |= _docs_command_lines(node_ids)
    return {p for p in paths if any(line[: len(p)] == p for line in lines)}


def _docs_command_lines(node_ids: Iterable[str]) -> set[tuple[str, ...]]:
    """The ``pidtrt`` command lines of the executed documentation blocks among ``node_ids``."""
    ran = {n.partition("[")[2].rstrip("]") for n in node_ids if n.startswith(DOCS_RUN)}
    if not ran:
        return set()
    from tests import test_docs_examples as docs

    lines = set()
    for block in docs.RUN:
        if block.where in ran and block.lang == "bash":
            for words in docs._commands(block.code):
                if "pidtrt" in words:
                    lines.add(tuple(words[words.index("pidtrt") + 1 :]))
    return lines


def modules_without_quick_tests(node_ids: Iterable[str], root: Path = ROOT) -> set[str]:
    """The test modules (``tests/**/test_*.py``, relative to ``root``) that none of ``node_ids`` is in."""
    modules = {p.relative_to(root).as_posix() for p in (root / "tests").rglob("test_*.py")}
    return modules - {n.partition("::")[0] for n in node_ids}


def _session_quick_tier(session: pytest.Session) -> list[str] | None:
    """The quick tier from this session's own collection when it collected the whole tree with no
    other selection (``pytest``, ``pytest tests``, ``-m "not slow"``); None otherwise."""
    option = session.config.option
    here = session.config.invocation_params.dir
    whole = [(here / a.split("::")[0]).resolve() for a in session.config.args] in ([TESTS], [ROOT])
    if not whole or option.keyword or option.deselect or option.markexpr not in ("", "not slow"):
        return None
    return [i.nodeid for i in session.items if i.get_closest_marker("slow") is None]


@pytest.fixture(scope="module")
def quick_tier(request: pytest.FixtureRequest) -> list[str]:
    ids = _session_quick_tier(request.session) or collected_quick_tier()
    assert len(ids) > 100, ids[:20]
    return ids


def test_every_module_has_quick_tests_or_a_reason(quick_tier: list[str]) -> None:
    empty = modules_without_quick_tests(quick_tier)
    unlisted = sorted(empty - set(FULL_SUITE_ONLY))
    assert not unlisted, (
        f"test modules with no test in the quick tier (mark fewer slow, or list them): {unlisted}"
    )
    stale = sorted(set(FULL_SUITE_ONLY) - empty)
    assert not stale, f"FULL_SUITE_ONLY lists modules that have quick tests or are gone: {stale}"


def test_every_subcommand_runs_in_the_quick_tier(quick_tier: list[str]) -> None:
    exercised = exercised_commands(quick_tier)
    missing = sorted(" ".join(p) for p in command_paths() - exercised - set(FULL_SUITE_COMMANDS))
    assert not missing, f"pidtrt commands no quick-tier test runs (run one, or list it): {missing}"
    stale = sorted(
        " ".join(p) for p in set(FULL_SUITE_COMMANDS) & exercised | set(FULL_SUITE_COMMANDS) - command_paths()
    )
    assert not stale, f"FULL_SUITE_COMMANDS lists commands the quick tier runs, or that are gone: {stale}"


def test_the_checks_catch_a_planted_gap(tmp_path: Path) -> None:
    """A planted tree: one module's only test is slow, and the other runs ``pidtrt decode``
    through a helper, ``engines list`` through a fixture and ``info`` after a launcher list; ``verify`` appears only in a
    slow test and as a plain string. The checks see exactly that."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "conftest.py").write_text(
        "import pytest\n@pytest.fixture\ndef listing():\n    return ['engines', 'list', '--json']\n"
    )
    (tmp_path / "tests" / "helpers.py").write_text(
        "import sys\ndef run(*a):\n    return [sys.executable, '-m', 'pid_trt.cli.main', 'decode', *a]\n"
    )
    (tmp_path / "tests" / "test_fast.py").write_text(
        "from tests.helpers import run\n"
        "def test_a(listing):\n    assert run('x') and listing\n"
        "def test_b():\n    assert 'verify' in 'pidtrt verify'\n"
        "def test_d():\n    common = ['python', '-m', 'pid_trt.cli.main']\n    assert [*common, 'info', 'x.png']\n"
    )
    (tmp_path / "tests" / "test_heavy.py").write_text(
        "import pytest\n@pytest.mark.slow\ndef test_c():\n    assert ['verify', '--backbone', 'tiny']\n"
    )
    ids = collected_quick_tier(tmp_path)
    assert sorted(ids) == [
        "tests/test_fast.py::test_a",
        "tests/test_fast.py::test_b",
        "tests/test_fast.py::test_d",
    ]
    assert modules_without_quick_tests(ids, tmp_path) == {"tests/test_heavy.py"}
    found = exercised_commands(ids, tmp_path)
    assert ("decode",) in found and ("engines", "list") in found and ("info",) in found
    assert ("verify",) not in found and ("engines", "rm") not in found
    assert ("verify",) in exercised_commands(["tests/test_heavy.py::test_c"], tmp_path)
