"""The doctor's vocabulary and the hardware rules it judges by (see
:mod:`pid_trt.doctor.verdicts` for the rules in words): a verdict, a report, which
TensorRT flavour builds for which GPU, FP8."""

from __future__ import annotations

from dataclasses import dataclass

from pid_trt.doctor.facts import GpuFacts, MachineFacts

#: Compute capabilities TensorRT-RTX 1.7 builds for, when it is not installed to ask.
RTX_TARGETS: tuple[str, ...] = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
#: The targets of a TensorRT-RTX build that names none (:data:`pid_trt.trt_flavour.DEFAULT_RTX_TARGETS`).
RTX_DEFAULT_TARGETS: tuple[str, ...] = ("8.6", "8.9", "12.0")
#: The smallest compute capability with FP8 tensor cores (Ada).
FP8_MIN_CC = (8, 9)
#: Names of GPU generations for messages.
ARCHES = {"7.5": "Turing", "8.0": "Ampere A100", "8.6": "Ampere", "8.9": "Ada", "9.0": "Hopper",
          "10.0": "data-centre Blackwell", "12.0": "Blackwell", "12.1": "Blackwell"}  # fmt: skip
PIP_TENSORRT = "pip install 'pid-trt[tensorrt]'"
PIP_RTX = "pip install 'pid-trt[rtx]'"
_GIB = float(1 << 30)


@dataclass(frozen=True)
class Verdict:
    """One line of the doctor's screen: ``check`` what was judged (short), ``ok``, a one-line
    ``message``, the ``fix`` command ("" when none applies) and whether a failure means the
    job cannot run here (``blocking``)."""

    check: str
    ok: bool
    message: str
    fix: str = ""
    blocking: bool = False


@dataclass(frozen=True)
class Report:
    """The machine's lines, then the job's; :attr:`runnable` and its one-line :attr:`reason`."""

    machine: tuple[Verdict, ...]
    job: tuple[Verdict, ...]

    @property
    def runnable(self) -> bool:
        return all(v.ok for v in self.job if v.blocking)

    @property
    def reason(self) -> str:
        """Why the job cannot run here (the first blocking failure, with its fix), or ""."""
        for v in self.job:
            if v.blocking and not v.ok:
                return v.message + (f" (fix: {v.fix})" if v.fix else "")
        return ""


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def arch(cc: str) -> str:
    return f"SM {cc}" + (f" ({ARCHES[cc]})" if cc in ARCHES else "")


def rtx_targets(facts: MachineFacts) -> tuple[str, ...]:
    """What TensorRT-RTX builds for: the installed package's list, else :data:`RTX_TARGETS`."""
    return facts.tensorrt_rtx.targets or RTX_TARGETS


def auto_builder(facts: MachineFacts) -> str | None:
    """The flavour ``--builder auto`` picks here (``tensorrt`` | ``tensorrt-rtx`` | None)."""
    if facts.tensorrt.version is not None and facts.gpus:
        return "tensorrt"
    if facts.tensorrt_rtx.version is not None:
        return "tensorrt-rtx"
    return None


def fp8_ok(g: GpuFacts | None) -> bool:
    return g is not None and cc_tuple(g.cc) >= FP8_MIN_CC
