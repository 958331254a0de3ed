"""The code blocks of README.md and docs/**/*.md: every ```bash and ```python block either runs
here (tiny preset, random weights, a temp folder, a time limit) or is marked as needing what
this machine lacks, and then is at least parsed (``bash -n``, ``ast.parse``).

The mark is the block's first line, a comment: ``# needs: weights`` (real PiD or LDM weights),
``# needs: gpu``, ``# needs: server`` (a running ``pidtrt serve``) or ``# needs: network`` (it
installs packages); several may be given, comma-separated. In every block, marked or not, each
``pidtrt SUBCOMMAND --flag`` is checked against the real command tree
(:mod:`pid_trt.cli.reference`): an unknown subcommand or flag fails, so a renamed flag breaks
a test until the docs follow.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pid_trt.cli import reference

ROOT = Path(__file__).resolve().parent.parent
NEEDS = {"weights", "gpu", "server", "network"}
#: Seconds one executed block may take (each is written to take a few on a 2-core CPU).
TIME_LIMIT_S = 120
FENCE = re.compile(r"^```(\w*)\s*$")
NEEDS_LINE = re.compile(r"^#\s*needs:\s*(.+?)\s*$")
SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language and its text."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def where(self) -> str:
        return (
            f"{self.path.relative_to(ROOT)}:{self.line}"
            if self.path.is_absolute()
            else f"{self.path}:{self.line}"
        )

    @property
    def needs(self) -> set[str]:
        """The words of the block's ``# needs:`` first line (empty when it has none)."""
        first = self.code.lstrip("\n").split("\n", 1)[0]
        m = NEEDS_LINE.match(first)
        return {w.strip() for w in m.group(1).split(",")} if m else set()


def blocks_of(text: str, path: Path) -> list[Block]:
    """The ```bash and ```python blocks of a Markdown text (other fences are skipped)."""
    found, open_at, lang, body = [], None, "", []
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if open_at is None:
            if m:
                open_at, lang, body = number, m.group(1), []
        elif line.strip() == "```":
            if lang in ("bash", "python"):
                found.append(Block(path, open_at, lang, "\n".join(body) + "\n"))
            open_at = None
        else:
            body.append(line)
    if open_at is not None:
        raise ValueError(f"{path}:{open_at}: code fence never closed")
    return found


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def all_blocks() -> list[Block]:
    return [b for p in doc_files() for b in blocks_of(p.read_text(encoding="utf-8"), p)]


def _commands(code: str) -> list[list[str]]:
    """The shell words of each simple command in a bash block (comments dropped, lines joined)."""
    words, pending = [], ""
    for line in code.replace("\\\n", " ").splitlines():
        pending += line
        try:
            words += shlex.split(pending, comments=True, posix=True) + [";"]
        except ValueError:  # a quote open across lines (curl -d '{...}'): read on
            pending += "\n"
            continue
        pending = ""
    if pending:
        raise ValueError(f"unclosed quote in: {pending[:60]!r}")
    out, current = [], []
    for word in words:
        if word in SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(word.rstrip(";"))
            if word.endswith(";"):
                out.append(current)
                current = []
    return [c for c in out + [current] if c]


def flag_problems(code: str) -> list[str]:
    """Every ``pidtrt`` subcommand or flag in a bash block that the real CLI does not have."""
    root = reference.root_command()
    problems = []
    for words in _commands(code):
        if "pidtrt" not in words:
            continue
        rest = words[words.index("pidtrt") + 1 :]
        command, path = root, []
        while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
            name = rest.pop(0)
            if name not in command.commands:
                problems.append(f"pidtrt {' '.join(path + [name])}: no such command")
                command = None
                break
            command, path = command.commands[name], path + [name]
        if command is None:
            continue
        if hasattr(command, "commands"):
            if rest and rest[0] != "--help":
                problems.append(f"pidtrt {' '.join(path)}: a subcommand is needed, got {rest[0]!r}")
            continue
        flags = reference.known_flags(command)
        for word in rest:
            if word == "--":
                break
            flag = word.split("=", 1)[0]
            if flag.startswith("-") and not re.fullmatch(r"-[\d.]+", flag) and flag not in flags:
                problems.append(f"pidtrt {' '.join(path)}: no option {flag}")
    return problems


BLOCKS = all_blocks()
RUN = [b for b in BLOCKS if not b.needs]
PARSE = [b for b in BLOCKS if b.needs]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIDTRT_THREADS="1")
    return env


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_block_marks_and_flags(block: Block) -> None:
    """Every block: a known mark (or none), and only subcommands and flags the CLI has."""
    assert block.needs <= NEEDS, (
        f"{block.where}: unknown '# needs:' word(s) {block.needs - NEEDS}, expected {NEEDS}"
    )
    problems = flag_problems(block.code) if block.lang == "bash" else []
    assert problems == [], f"{block.where}: {problems}"


@pytest.mark.parametrize("block", PARSE, ids=lambda b: b.where)
def test_marked_block_parses(block: Block, tmp_path: Path) -> None:
    """A block that needs weights, a GPU, a server or the network is not run, but it must parse."""
    if block.lang == "python":
        ast.parse(block.code, filename=block.where)
        return
    script = tmp_path / "block.sh"
    script.write_text(block.code)
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, f"{block.where}: bash -n: {done.stderr.strip()}"


#: The executed blocks of the quick tier: README's (its first steps: ``sample-latent``, ``decode``,
#: ``info`` and ``doctor`` as CLI processes, and its Python example); the docs' are full suite only.
QUICK_README = ROOT / "README.md"


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=() if b.path == QUICK_README else pytest.mark.slow) for b in RUN],
    ids=lambda b: b.where,
)
def test_unmarked_block_runs(block: Block, tmp_path: Path) -> None:
    """A block without a mark runs as written, in an empty folder, on this CPU."""
    if block.lang == "python":
        script, argv = tmp_path / "block.py", [sys.executable, "block.py"]
        script.write_text(block.code)
    else:
        script, argv = tmp_path / "block.sh", ["bash", "block.sh"]
        script.write_text("set -e\n" + block.code)
    done = subprocess.run(
        argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIME_LIMIT_S
    )
    assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


# ------------------------------------------------------------------ the checker itself


def test_checker_refuses_an_unknown_flag() -> None:
    """A renamed flag breaks the docs test: the checker names it."""
    good = "pidtrt decode lat.safetensors --backbone tiny --random-weights --tile-overlap 32 -o out.png\n"
    assert flag_problems(good) == []
    renamed = good.replace("--tile-overlap", "--tile-overlapp")
    assert flag_problems(renamed) == ["pidtrt decode: no option --tile-overlapp"]
    assert flag_problems("pidtrt decode x.safetensors --bogus=3 -o y.png") == [
        "pidtrt decode: no option --bogus"
    ]
    block = Block(Path("x.md"), 1, "bash", "# needs: gpu\n" + renamed)
    assert block.needs == {"gpu"}
    with pytest.raises(AssertionError, match="tile-overlapp"):
        test_block_marks_and_flags(block)


def test_checker_refuses_an_unknown_command_and_follows_groups() -> None:
    assert flag_problems("pidtrt decodez x") == ["pidtrt decodez: no such command"]
    assert flag_problems("pidtrt engines lst") == ["pidtrt engines lst: no such command"]
    assert flag_problems("pidtrt engines list --help") == []
    # under torchrun, after a pipe, on a continued line, and a comment mentioning a flag that does not exist
    code = "# pidtrt decode --nope\ntorchrun --nproc_per_node 2 --no-python pidtrt decode d/ -o o/ \\\n    --skip-existing | cat\n"
    assert flag_problems(code) == []
    assert flag_problems("true && pidtrt serve --max-batchh 2") == ["pidtrt serve: no option --max-batchh"]


def test_blocks_are_found_with_their_marks() -> None:
    text = "x\n```bash\n# needs: weights, gpu\npidtrt build\n```\n```text\nnot code\n```\n```python\nprint(1)\n```\n"
    found = blocks_of(text, Path("t.md"))
    assert [(b.line, b.lang, b.needs) for b in found] == [
        (2, "bash", {"weights", "gpu"}),
        (9, "python", set()),
    ]
    with pytest.raises(ValueError, match="never closed"):
        blocks_of("```bash\nls\n", Path("t.md"))


def test_docs_have_examples_that_run() -> None:
    """The docs keep a few executed examples, bash and Python, and most blocks are checked."""
    assert {b.lang for b in RUN} == {"bash", "python"}
    assert {b.lang for b in RUN if b.path == QUICK_README} == {"bash", "python"}  # the quick tier's
    assert len(BLOCKS) >= 40
