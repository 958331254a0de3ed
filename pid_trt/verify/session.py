"""One ``pidtrt verify`` run as data: the pair run over the inputs, every bounded figure
checked, optionally the step graph compared layer by layer, and its report written.

The CLI parses options and prints; this module runs (:func:`verify_pair`) and keeps what a
run found (:class:`Verification`) so the text table, the report files and the exit code all
read the same figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pid_trt.verify.bounds import Bound
from pid_trt.verify.pairs import Check, InputResult, PairRequest, checks, run_pair


@dataclass(frozen=True)
class Verification:
    """What one verify run found: per-input results, the bounds they were held to, every
    check (inside / outside its bound), the layer comparison when asked for, the wall time (s)."""

    request: PairRequest
    inputs: Sequence[Any]
    results: Sequence[InputResult]
    bounds: dict[str, Bound | None]
    checks: Sequence[Check]
    layers: Any | None = None
    layers_text: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        """The checks outside their bound, in order."""
        return [c for c in self.checks if not c.ok]

    def write(self, out_dir: Path, command: str) -> tuple[list[Path], str | None]:
        """report.json, report.md, steps.png, worst_crop.png under ``out_dir``; returns the
        files written and the note that says why the plot is missing (None: drawn)."""
        from pid_trt.verify.report import build_report, report_header, write_report

        header = report_header(command, self.request, list(self.inputs))
        rep = build_report(
            header=header, results=self.results, bounds=self.bounds, checks=self.checks, layers=self.layers
        )
        written, files = write_report(out_dir, rep, self.results, self.bounds, self.checks, self.layers_text)
        return written, files["plot_note"]


def verify_pair(
    request: PairRequest,
    inputs: Sequence[Any],
    *,
    layers: bool = False,
    on_input: Callable[[str], None] | None = None,
) -> Verification:
    """Run ``request``'s pair over ``inputs`` (``on_input(name)`` as each starts), check every
    bounded figure, and with ``layers`` compare the worst step's graph layer by layer."""
    import time

    from pid_trt.sampling import TIMESCALE
    from pid_trt.verify.layers import worst_step_layers

    start = time.perf_counter()
    results = run_pair(request, list(inputs), on_input=on_input or (lambda name: None))
    bounds = request.bounds
    found = [c for r in results for c in checks(r, bounds)]
    layer_rep = layer_text = None
    if layers:
        layer_rep, layer_text = worst_step_layers(request, list(inputs), results, TIMESCALE)
    return Verification(
        request, inputs, results, bounds, found, layer_rep, layer_text, time.perf_counter() - start
    )
