"""A reference and a candidate backend through the same noise, compared step by step.

Per input: the reference runs the 4-step sampler; at each step the candidate is evaluated on
the **reference's** x (so a step's figure is that network call's error alone, not the
accumulated drift), then the candidate runs its own 4-step decode from the same noise and the
two final images are compared. Every figure comes from :func:`pid_trt.verify.metrics.figures`
and is checked against :mod:`pid_trt.verify.bounds`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pid_trt.backends.base import Backend, Conditioning, GraphKind
from pid_trt.backends.registry import BackendSpec
from pid_trt.errors import ConfigError
from pid_trt.options import Runtime, RuntimeOptions
from pid_trt.sampling import Denoiser, draw_noise, sample, timesteps
from pid_trt.verify.bounds import Bound, bound_for
from pid_trt.verify.metrics import Figures, figures

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec


def resolve_side(
    text: str, device: str, option: str = "--backend", engine_dir: Path = Path("engines"),
    export_dir: Path = Path("export"),
) -> Runtime:  # fmt: skip
    """One side of a comparison, ``NAME[:PRECISION][@DEVICE]`` (``onnxruntime:fp16``,
    ``torch:bf16@cuda``), resolved: the precision defaults to the backend's own on its device;
    the device is the one written, else ``device``, moved to the backend's own where it cannot
    run there (tensorrt: cuda; :attr:`Runtime.moved` says so)."""
    BackendSpec.parse(text, option)  # a bad name is reported under its own option
    return RuntimeOptions(text, None, device, engine_dir, export_dir).resolve(fallback_device=True)


def pair_cannot_run(candidate: Runtime, reference: Runtime, layers: bool = False) -> str | None:
    """Why the pair cannot run here ("candidate NAME:PREC: why", one line), or None: the
    backends' own cheap checks (:meth:`Backend.unavailable`). Raises ConfigError for
    ``layers`` with a candidate that has no ONNX step graph (torch)."""
    if layers and candidate.backend.graph is GraphKind.TORCH:
        raise ConfigError("--layers compares ONNX step graphs: the candidate must be onnxruntime")
    for side, role in ((candidate, "candidate"), (reference, "reference")):
        reason = side.unavailable()
        if reason is None and layers and side is candidate and candidate.backend.graph is not GraphKind.ONNX:
            reason = (
                "--layers for TensorRT engines is not implemented (no GPU here to run Polygraphy's TrtRunner)"
            )
        if reason:
            return f"{role} {side.label}: {reason}"
    return None


@dataclass(frozen=True)
class VerifyInput:
    """One decode to compare: a label, its conditioning and the seed of its noise."""

    name: str
    cond: Conditioning
    seed: int


@dataclass(frozen=True)
class Check:
    """One bounded figure: ``output`` (``step 2 velocity`` / ``image``) of input ``input``."""

    input: str
    output: str
    figure: str
    value: float
    bound: Bound
    ok: bool

    def describe(self) -> str:
        shown = f"{self.value:.3g}" if self.figure == "max_abs" else f"{self.value:.1f} dB"
        name = "max|d|" if self.figure == "max_abs" else "PSNR"
        return f"{self.output} {name} {shown} (bound {self.bound.describe()}; {self.input})"


@dataclass
class InputResult:
    """Figures of one input: per step (velocity on the reference's x) and the final image.
    ``xs`` holds the reference's x at each step; the images are kept for the report's crops."""

    name: str
    seed: int
    ts: tuple[float, ...]
    steps: list[Figures]
    image: Figures
    reference_image: torch.Tensor
    candidate_image: torch.Tensor
    xs: list[torch.Tensor] = field(repr=False, default_factory=list)


def _atol(bound: Bound | None) -> float | None:
    return bound.limit if bound is not None and bound.figure == "max_abs" else None


def compare_input(
    inp: VerifyInput,
    reference: Denoiser,
    candidate: Denoiser,
    noise: Sequence[torch.Tensor],
    steps: int,
    bounds: dict[str, Bound | None],
) -> InputResult:
    """Run both denoisers through ``noise`` and compare every step and the image."""
    probes: list[tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]] = []

    def reference_and_probe(x: torch.Tensor, t: float) -> torch.Tensor:
        v = reference(x, t)
        probes.append((x.detach().cpu().clone(), t, v.detach().cpu(), candidate(x, t).detach().cpu()))
        return v

    ref_img = sample(reference_and_probe, noise, steps).float().cpu()
    first = True

    def candidate_own(x: torch.Tensor, t: float) -> torch.Tensor:
        nonlocal first
        if first and torch.equal(x.detach().cpu(), probes[0][0]):  # step 0: the same x as probed
            first = False
            return probes[0][3].to(x.device)
        first = False
        return candidate(x, t)

    cand_img = sample(candidate_own, noise, steps).float().cpu()
    atol_v, atol_i = _atol(bounds["velocity"]), _atol(bounds["image"])
    step_figs = [
        figures(f"step {i} velocity", vc, v, atol=atol_v) for i, (_x, _t, v, vc) in enumerate(probes)
    ]
    image = figures("image", cand_img, ref_img, atol=atol_i)
    return InputResult(
        inp.name, inp.seed, timesteps(steps), step_figs, image, ref_img, cand_img, [p[0] for p in probes]
    )


def checks(result: InputResult, bounds: dict[str, Bound | None]) -> list[Check]:
    """The bounded figures of one input, each with its verdict."""
    out = []
    for figs, which in [*((s, "velocity") for s in result.steps), (result.image, "image")]:
        bound = bounds[which]
        if bound is None:
            continue
        if bound.figure == "max_abs":
            value, ok = figs.max_abs, bool(figs.within_tolerance)
        else:
            value, ok = figs.psnr_db, bound.holds(figs.psnr_db)
        out.append(Check(result.name, figs.name, bound.figure, value, bound, ok and figs.nonfinite == 0))
    return out


@dataclass(frozen=True)
class PairRequest:
    """Everything a verify run needs but the inputs: the net, the two resolved runtimes
    (:func:`resolve_side`; each with its own stores), ``device`` as given (the report's) and the
    sampler steps."""

    spec: NetSpec
    reference: Runtime
    candidate: Runtime
    device: str = "cpu"
    steps: int = 4

    @property
    def bounds(self) -> dict[str, Bound | None]:
        p = self.reference.precision, self.candidate.precision
        return {"image": bound_for(*p, "image"), "velocity": bound_for(*p, "velocity")}

    def open(self, side: Runtime, height: int, width: int, batch: int) -> Backend:
        """Construct ``side``'s backend for one (size, batch)."""
        from pid_trt.backends.factory import BackendRequest, create_backend

        return create_backend(BackendRequest(self.spec, side, height, width, batch))


def run_pair(
    request: PairRequest, inputs: Sequence[VerifyInput], on_input: Callable[[str], None] | None = None
) -> list[InputResult]:
    """Compare the pair on every input; one pair of backends per (size, batch)."""
    groups: dict[tuple[int, int, int], list[VerifyInput]] = {}
    for inp in inputs:
        groups.setdefault((inp.cond.height, inp.cond.width, inp.cond.batch), []).append(inp)
    results = []
    for (h, w, b), group in groups.items():
        cand = request.open(request.candidate, h, w, b)  # first: a candidate that cannot load fails fast
        try:
            ref = request.open(request.reference, h, w, b)
            try:
                for inp in group:
                    if on_input:
                        on_input(inp.name)
                    dev = torch.device(request.reference.device)
                    noise = draw_noise((b, 3, h, w), request.steps, inp.seed, dev)
                    results.append(
                        compare_input(
                            inp, ref.bind(inp.cond), cand.bind(inp.cond), noise, request.steps, request.bounds
                        )
                    )
            finally:
                ref.close()
        finally:
            cand.close()
    return results
