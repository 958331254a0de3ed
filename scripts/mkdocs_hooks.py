"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

- The benchmarks pages come from ``benchmarks/`` itself, one source, no copy to keep in step:
  ``benchmarks/README.md`` is ``benchmarks/index.md``, and ``benchmarks/results.md`` is made of
  every ``benchmarks/results/*.md`` table, each followed by its plot (``results/<same name>.png``).
- The CLI reference page is generated from the typer app the ``pidtrt`` console script runs
  (``pid_trt.cli.reference``): the marker comment is replaced by every command's options,
  grouped by help panel.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLI_MARKER = "<!-- pidtrt-cli-reference -->"


def _demoted(markdown: str, top: int) -> str:
    """``markdown`` with its headings shifted so that the highest one is level ``top``
    (fenced code left alone)."""
    levels = [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", markdown, re.M)]
    shift = top - min(levels) if levels else 0
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            line = "#" * shift + line
        out.append(line)
    return "\n".join(out)


def results_page() -> str:
    """The benchmark results page: every committed results table, then its plot where there is one."""
    parts = [
        "# Benchmark results",
        "",
        "Every table committed under `benchmarks/results/`, newest last by name, each with its plot "
        "where the run wrote one. How they were measured, and on which machine: [Benchmarks](index.md).",
    ]
    for table in sorted(RESULTS.glob("*.md")):
        parts += ["", f"## {table.stem}", "", f"`benchmarks/results/{table.name}`", ""]
        parts.append(_demoted(table.read_text(encoding="utf-8"), 3))
        plot = table.with_suffix(".png")
        if plot.exists():
            parts += ["", f"![{table.stem}](results/{plot.name})"]
    return "\n".join(parts) + "\n"


def on_files(files: Files, config) -> Files:
    readme = ROOT / "benchmarks" / "README.md"
    files.append(File.generated(config, "benchmarks/index.md", abs_src_path=str(readme)))
    files.append(File.generated(config, "benchmarks/results.md", content=results_page()))
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARKER not in markdown:
        return markdown
    if str(ROOT) not in sys.path:  # the checkout's own package, installed or not
        sys.path.insert(0, str(ROOT))
    from pid_trt.cli.reference import render_markdown

    return markdown.replace(CLI_MARKER, render_markdown(level=2))
