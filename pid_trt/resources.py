"""Resource limits of a decode: memory needed vs available, batch ranges, out-of-memory.

Checked *before* any work starts, so that a request that cannot fit fails in milliseconds
with a message saying what would fit, instead of minutes later (or by the OOM killer).

Memory formula (bytes; H x W output pixels, B batch, S steps, px = H * W):

  weights     = params x bytes/param(precision)           (params: costmodel.param_count;
                4 / 2 / 2 / 1 for fp32 / fp16 / bf16 / fp8; with ``load_precision`` the
                larger of the two widths, for backends that stage weights in that precision
                in the same memory, e.g. the torch backend materialises fp32 on the CPU)
  activations = B x (max(pit, mmdit, lq) + kept) x act_bytes
                act_bytes = 4 for fp32, else 2 (fp8 engines keep bf16/fp16 activations)
                pit   = 19 x pixel_hidden x px        the per-pixel tensors alive at the peak of a
                                                      PiT block (its MLP's GELU), counted on the
                                                      eager graph: the AdaLN modulation (6 x ph),
                                                      the MLP hidden before and after GELU
                                                      ((4 + 4) x ph), the pixel stream: block input,
                                                      first modulated input, residual after
                                                      attention, second modulated input (4 x ph),
                                                      and the attention output expanded back to
                                                      pixels (1 x ph)
                mmdit = (T + L) x (6 x hidden + mlp_hidden)   qkv, attention out, residuals,
                                                      SwiGLU hidden; L = ceil(H/p) x ceil(W/p)
                lq    = 4 x L x lq_hidden            the LQ CNN's live feature maps
                kept  = (n_inject x L + T) x hidden   hoisted features held for all steps
  sampler     = B x 3 x px x (4 x S + 40)        fp32 noise draws (S of them), x / v in fp32,
                                                  the float64 x0 update (3 tensors), the
                                                  float64 image copy for the PNG conversion
  needed      = (weights + activations + sampler) x HEADROOM + FIXED_OVERHEAD

The largest single tensors (the pixel-level ones) dominate at 2K-4K; the formula is a
deliberately simple upper-leaning estimate, not an allocator trace (HEADROOM covers
fragmentation and framework workspaces). The sampler term is summed with the activations
although its float64 temporaries live only between network calls.

Measured (tiny, fp32, 768^2, 1 step, torch CPU): the live tensors peak at 19.5 x ph x px x 4
bytes (368 MB: the 19 pixel tensors above, the noise draw, small per-token tensors); peak RSS
grows by 387-394 MB (12 MB of it weights) when glibc maps every large block
(``MALLOC_MMAP_THRESHOLD_=1048576``) and by 443-577 MB with its default dynamic threshold,
which keeps freed blocks under 32 MiB (here the 19 MB pixel tensors) in the heap: up to
1.57 x the live peak, hence HEADROOM.

Available memory: CUDA -> free bytes of ``torch.cuda.mem_get_info``; CPU -> ``MemAvailable``
of ``/proc/meminfo``, capped by the cgroup v2 limit (``memory.max - memory.current``) when
the process runs in a limited container and by ``ulimit -v`` (RLIMIT_AS minus VmSize). Unknown (no /proc, no CUDA) -> the check is skipped.
"""

from __future__ import annotations

import gc
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pid_trt.config import NetConfig, Precision
from pid_trt.costmodel import BYTES_PER_PARAM, param_count
from pid_trt.errors import ConfigError, ResourceError

T = TypeVar("T")

#: Multiplier on the estimate for allocator fragmentation and framework workspaces: glibc's heap
#: held up to 1.57 x the live tensors of a tiny 768x768 decode (see the module docstring).
HEADROOM = 1.6
#: Per-pixel tensors alive at once in the pixel transformer, in units of pixel_hidden values per
#: pixel: 6 (AdaLN modulation) + 4 + 4 (MLP hidden, before and after GELU) + 4 (pixel stream)
#: + 1 (attention output), counted at the peak of an eager PiT block (module docstring).
PIXEL_TENSORS = 6 + 4 + 4 + 4 + 1
#: Fixed bytes added to every estimate (CUDA context / runtime buffers), 256 MiB.
FIXED_OVERHEAD = 256 << 20
#: Largest edge (pixels) :func:`largest_square` considers.
MAX_EDGE = 16384

_GIB = float(1 << 30)
#: Lower-cased fragments of the messages allocators raise when memory runs out (torch CPU /
#: CUDA, onnxruntime's BFC arena and CUDA provider, TensorRT, C++ std::bad_alloc).
_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate",
    "bad_alloc",
    "bad allocation",
    "cudaerrormemoryallocation",
    "cuda_error_out_of_memory",
)


class MemoryKind(str, Enum):
    """Where a decode's tensors live."""

    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one decode needs, by part (see the module docstring for the formula)."""

    weights: int
    activations: int
    sampler: int

    @property
    def total(self) -> int:
        """Bytes needed: (weights + activations + sampler) x HEADROOM + FIXED_OVERHEAD."""
        return math.ceil((self.weights + self.activations + self.sampler) * HEADROOM) + FIXED_OVERHEAD


@dataclass(frozen=True)
class AvailableMemory:
    """Free bytes on a device and where that number came from (for messages)."""

    kind: MemoryKind
    free_bytes: int
    source: str


def _precision(value: Precision | str) -> Precision:
    try:
        return Precision(value)
    except ValueError:
        allowed = ", ".join(p.value for p in Precision)
        raise ConfigError(f"precision {value!r} is not known: expected one of {allowed}") from None


def estimate_decode_memory(
    config: NetConfig,
    height: int,
    width: int,
    batch: int = 1,
    precision: Precision | str = Precision.BF16,
    steps: int = 4,
    load_precision: Precision | str | None = None,
) -> MemoryEstimate:
    """Bytes a decode of ``batch`` images of ``height`` x ``width`` pixels needs (module formula)."""
    for name, value in (("height", height), ("width", width), ("batch", batch), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ResourceError(f"memory estimate {name}={value!r}: expected a positive integer")
    precision = _precision(precision)
    width_bytes = BYTES_PER_PARAM[precision]
    if load_precision is not None:
        width_bytes = max(width_bytes, BYTES_PER_PARAM[_precision(load_precision)])
    c = config
    px = height * width
    tokens = math.ceil(height / c.patch_size) * math.ceil(width / c.patch_size)
    t, d = c.txt_max_length, c.hidden_size
    n_inject = c.num_lq_outputs + int(c.pit_lq_inject)
    pit = PIXEL_TENSORS * c.pixel_hidden_size * px
    mmdit = (t + tokens) * (6 * d + c.mlp_hidden)
    lq = 4 * tokens * c.lq_hidden_dim
    kept = (n_inject * tokens + t) * d
    act_bytes = 4 if precision is Precision.FP32 else 2
    return MemoryEstimate(
        weights=param_count(c) * width_bytes,
        activations=batch * (max(pit, mmdit, lq) + kept) * act_bytes,
        sampler=batch * 3 * px * (4 * steps + 40),
    )


def available_memory(device: str = "cpu") -> AvailableMemory | None:
    """Free memory of ``device`` ("cpu", "cuda", "cuda:N"), or None when it cannot be known."""
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return AvailableMemory(MemoryKind.CUDA, int(free), "torch.cuda.mem_get_info")
    free = meminfo_bytes("MemAvailable")
    if free is None:
        return None
    source = "MemAvailable"
    for limit, name in ((_cgroup_headroom(), "cgroup memory.max"), (_address_space_headroom(), "ulimit -v")):
        if limit is not None and limit < free:
            free, source = limit, name
    return AvailableMemory(MemoryKind.CPU, free, source)


def meminfo_bytes(field: str, path: Path = Path("/proc/meminfo")) -> int | None:
    """A ``/proc/meminfo`` field (``MemAvailable``, ``MemTotal`` ...) in bytes; None when the
    file or the field is missing or malformed."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024  # kB
    return None


def _address_space_headroom() -> int | None:
    """RLIMIT_AS (``ulimit -v``) minus the address space already mapped; None when unlimited."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        status = Path("/proc/self/status").read_text()
    except (ImportError, OSError):
        return None
    for line in status.splitlines():
        if line.startswith("VmSize:"):
            return max(0, soft - int(line.split()[1]) * 1024)
    return None


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """memory.max - memory.current of this process's cgroup v2 (None when unlimited / absent)."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = (root / "memory.current").read_text().strip()
    except OSError:
        return None
    if not limit.isdigit() or not current.isdigit():
        return None  # "max": no limit
    return max(0, int(limit) - int(current))


def largest_batch(
    config: NetConfig, height: int, width: int, precision: Precision | str, steps: int, free_bytes: int,
    load_precision: Precision | str | None = None,
) -> int:  # fmt: skip
    """Largest batch whose estimate fits in ``free_bytes`` at this size (0: not even batch 1)."""
    one = estimate_decode_memory(config, height, width, 1, precision, steps, load_precision)
    per_image = one.activations + one.sampler
    budget = (free_bytes - FIXED_OVERHEAD) / HEADROOM - one.weights
    return max(0, int(budget // per_image)) if per_image > 0 else 0


def largest_square(
    config: NetConfig, precision: Precision | str, steps: int, free_bytes: int,
    load_precision: Precision | str | None = None,
) -> int:  # fmt: skip
    """Largest square edge (pixels, a multiple of the net's pixels per latent cell) that fits
    at batch 1 in ``free_bytes``; 0 when not even the smallest does."""
    q = config.pixels_per_latent
    lo, hi = 0, MAX_EDGE // q  # invariant: lo fits (or is 0), hi + 1 does not matter beyond MAX_EDGE
    while lo < hi:
        mid = (lo + hi + 1) // 2
        need = estimate_decode_memory(config, mid * q, mid * q, 1, precision, steps, load_precision).total
        if need <= free_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo * q


def check_decode_memory(
    config: NetConfig,
    height: int,
    width: int,
    batch: int,
    precision: Precision | str,
    device: str = "cpu",
    steps: int = 4,
    load_precision: Precision | str | None = None,
    available: AvailableMemory | None = None,
    hint: str = "",
) -> MemoryEstimate:
    """Raise ResourceError (one line, saying what would fit) when the decode cannot fit.

    ``available`` defaults to :func:`available_memory` of ``device``; when that is unknown the
    check passes. ``hint`` is appended to the message (e.g. how to override the check).
    Returns the estimate.
    """
    need = estimate_decode_memory(config, height, width, batch, precision, steps, load_precision)
    if available is None:
        available = available_memory(device)
    if available is None or need.total <= available.free_bytes:
        return need
    free = available.free_bytes
    prec = _precision(precision).value
    fits_batch = largest_batch(config, height, width, prec, steps, free, load_precision)
    if fits_batch >= 1:
        fits = f"at {width}x{height} up to batch {fits_batch} fits"
    else:
        edge = largest_square(config, prec, steps, free, load_precision)
        fits = (
            f"the largest square output that fits at batch 1 is {edge}x{edge}"
            if edge
            else f"not even the weights ({need.weights / _GIB:.1f} GiB at {prec}) fit"
        )
    raise ResourceError(
        f"decode of batch {batch} at {width}x{height} ({prec}, {steps} steps) needs about "
        f"{need.total / _GIB:.1f} GiB (weights {need.weights / _GIB:.1f} + activations "
        f"{need.activations / _GIB:.1f} + sampler {need.sampler / _GIB:.1f}, x{HEADROOM} headroom) but "
        f"{available.kind.value} has {free / _GIB:.1f} GiB available ({available.source}); {fits}"
        + (f"; {hint}" if hint else "")
    )


def check_batch_range(batch: int, batch_range: tuple[int, int, int], engine: str = "engine") -> None:
    """Raise ResourceError when ``batch`` lies outside an engine's (min, opt, max) batch range.

    For the TensorRT backend to call before binding inputs: TensorRT itself would fail deep
    inside ``set_input_shape`` with a message that does not name the range.
    """
    lo, opt, hi = batch_range
    if not lo <= batch <= hi:
        advice = f"decode in chunks of at most {hi}" if batch > hi else f"pad the batch to {lo}"
        raise ResourceError(
            f"batch {batch} is outside the batch range {lo}..{hi} (optimum {opt}) of {engine}; "
            f"{advice}, or build an engine whose range covers {batch}"
        )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (torch CPU / CUDA, onnxruntime, TensorRT, Python)."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    from_runtime = isinstance(exc, RuntimeError) or type(exc).__module__.startswith("onnxruntime")
    text = str(exc).lower()
    return from_runtime and any(marker in text for marker in _OOM_MARKERS)


def _oom_reason(exc: BaseException, width: int = 160) -> str:
    """One line of ``exc``'s message, centred on the allocator's own words when it is long."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) <= width:
        return text
    lower = text.lower()
    at = min((i for i in (lower.find(m) for m in _OOM_MARKERS) if i >= 0), default=0)
    start = max(0, min(at - width // 4, len(text) - width))
    return ("…" if start else "") + text[start : start + width] + ("…" if start + width < len(text) else "")


def release_memory(device: str = "cpu") -> None:
    """Collect garbage and, on CUDA, return cached blocks to the driver."""
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def peak_rss_bytes(children: bool = False) -> int:
    """Peak resident set size of this process so far, in bytes; with ``children`` the larger
    of that and the peak of any finished child process (Linux: ``ru_maxrss`` is KiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return int(peak) * 1024


def run_guarded(fn: Callable[[], T], what: str, device: str = "cpu") -> T:
    """Run ``fn()``; an out-of-memory inside it becomes a one-line :class:`ResourceError`.

    The failed work's tensors are released first (the exception and its traceback, which
    hold the frames that own them, are dropped before ``gc`` and ``empty_cache`` run), so
    the next request in the same process starts from a clean slate. Other exceptions pass
    through unchanged.
    """
    try:
        return fn()
    except BaseException as exc:  # re-raised below unless it is an out-of-memory
        if not is_out_of_memory(exc):
            raise
        reason = _oom_reason(exc)
    # Outside the except block: the exception (and every frame it pins) is gone now.
    release_memory(device)
    raise ResourceError(
        f"{what}: out of memory on {device} ({reason}); try a smaller batch or output size, a lower "
        "precision, or free memory held by other processes"
    )


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else "unknown CPU"."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
