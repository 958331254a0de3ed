"""The backend interface: bind a decode's conditioning once, then step many times.

A backend class also describes itself (its name, default precision and device, which
precisions and devices it runs, whether one instance serves every size, what it runs, whether
it compiles or reads weights early), and a loaded backend reports what its artifacts cost
(:meth:`Backend.artifacts`), so that the Decoder, the server, ``pidtrt bench``, ``verify`` and
``doctor`` read those facts from the class (:mod:`pid_trt.backends.registry`) instead of
switching on its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from pid_trt.backends.registry import GraphKind
from pid_trt.config import Precision
from pid_trt.sampling import Denoiser

if TYPE_CHECKING:
    from pid_trt.backends.factory import BackendRequest

__all__ = ["Artifacts", "Backend", "Conditioning", "GraphKind"]


@dataclass(frozen=True)
class Conditioning:
    """Everything constant over one decode.

    latent: [B, C, h, w] float32 normalised LDM latent.
    caption: [B, T, D] float32 caption embedding (T = txt_max_length of the net).
    degrade_sigma: [B] float32 noise level of the latent, in [0, 1].
    height, width: output size in pixels.
    """

    latent: torch.Tensor
    caption: torch.Tensor
    degrade_sigma: torch.Tensor
    height: int
    width: int

    @property
    def batch(self) -> int:
        return int(self.latent.shape[0])


@dataclass(frozen=True)
class Artifacts:
    """What a backend's artifacts cost (:meth:`Backend.artifacts`). engine_mb: its graph or
    engine files on disk (MiB; None: it runs the torch module); build_s: seconds it took to
    make them (builder time from the manifests, or this run's export; None: not known or taken
    from the store); device_mb: device memory it holds outside torch's allocator (MiB; engine
    weights and context); threads: the CPU threads it runs with (None: torch's)."""

    engine_mb: float | None = None
    build_s: float | None = None
    device_mb: float | None = None
    threads: int | None = None


class Backend(ABC):
    """A way to evaluate the PiD network. ``bind`` does the per-decode constant work once
    (latent adapter, caption projection) and returns the per-step :class:`Denoiser`.

    Class attributes (the facts every front end reads; see :mod:`pid_trt.backends.registry`):

    name: the ``--backend`` name.
    precisions: the precisions it runs.
    devices: device kinds it runs on ("cpu", "cuda").
    shares_sizes: one instance decodes every size and batch (the Decoder caches one).
    can_unhoist: it can re-run the per-decode work every step (``hoist=False``).
    graph: what it runs (:class:`GraphKind`): verify's ``--layers`` compares ONNX graphs.
    compiles_on_first_decode: the first decode at a shape compiles (its time is build time).
    loads_weights_at_start: it runs the checkpoint's weights itself, so a server reads them
    before it says ready (the others read them only to export a missing graph).
    makes_artifacts: :meth:`make_artifacts` makes files it needs (an export) apart from loading.
    """

    name: ClassVar[str] = "abstract"
    precisions: ClassVar[tuple[Precision, ...]] = (Precision.FP32,)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    shares_sizes: ClassVar[bool] = False
    can_unhoist: ClassVar[bool] = True
    graph: ClassVar[GraphKind] = GraphKind.TORCH
    compiles_on_first_decode: ClassVar[bool] = False
    loads_weights_at_start: ClassVar[bool] = False
    makes_artifacts: ClassVar[bool] = False

    @classmethod
    def default_device(cls) -> str:
        """The device a decode runs on when the user names none."""
        return cls.devices[0]

    @classmethod
    def default_precision(cls, device: str) -> Precision:
        """The precision a decode runs at on ``device`` when the user names none."""
        return cls.precisions[0]

    @classmethod
    def unavailable(cls, device: str, precision: Precision) -> str | None:
        """Why this backend cannot run ``precision`` on ``device`` on this machine (one
        line), or None when it can. Checks only what needs no model, export or engine."""
        if device.startswith("cuda") and not torch.cuda.is_available():
            return f"{cls.name}:{precision.value} on {device} runs on an NVIDIA GPU with CUDA; this machine has none"
        return None

    @classmethod
    def make_artifacts(cls, request: BackendRequest) -> Artifacts:
        """Make (or find in the store) the files ``request`` needs, without loading them, so that
        a front end can do it in another process; what they cost. Nothing to make: empty."""
        return Artifacts()

    @classmethod
    @abstractmethod
    def from_request(cls, request: BackendRequest) -> Backend:
        """Construct the backend for one :class:`~pid_trt.backends.factory.BackendRequest` (size, batch, precision, device, stores)."""

    @abstractmethod
    def bind(self, cond: Conditioning) -> Denoiser:
        """Prepare one decode; the returned callable maps (x [B,3,H,W], t in [0,1]) -> v."""

    def artifacts(self) -> Artifacts:
        """What this loaded backend's artifacts cost (sizes, build time, device memory, threads)."""
        return Artifacts()

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release device memory / sessions. Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
