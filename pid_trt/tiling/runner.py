"""Runs a decode's :class:`~pid_trt.tiling.plan.SizePlan` against a backend cache: the plan
with the device's free memory, the memory check of the way it takes, and the denoiser the
sampler calls (one shot: one backend's; tiled: a :class:`TiledDenoiser` over the backends of
the tile shapes, on one device or dealt over several).

:class:`PlanRunner` is what :class:`pid_trt.Decoder` delegates to; it holds no weights
(``request.model_loader`` reads them) and no state of its own beyond the shared cache.

Backends by device (``devices``): slot 0 on the decode's own device is the ordinary cached
backend (key ``(height, width, batch)``, or None for a backend that serves every size); any
other slot ``i`` on device ``d`` is cached under ``("device", i, d)`` plus that key, so
``cpu,cpu`` gets two backends. A torch backend on another device than the decode's gets its
own copy of the model (moving the decode's model would break its backend); on the same device
the model is shared (inference only).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from pid_trt.backends.base import Backend, Conditioning
from pid_trt.backends.cache import BackendCache
from pid_trt.backends.factory import BackendRequest, create_backend
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import BackendUnavailableError, ConfigError, ResourceError
from pid_trt.sampling import Denoiser
from pid_trt.tiling.denoiser import TiledDenoiser
from pid_trt.tiling.envelope import Envelope
from pid_trt.tiling.options import TileMode, TileOptions
from pid_trt.tiling.plan import SizePlan, plan

log = logging.getLogger("pid_trt.decoder")


class PlanRunner:
    """Plans and runs the decodes of one network on one backend kind (see the module docstring).

    request: the decode's :class:`BackendRequest` (net, resolved runtime, model loader);
    backends: the cache the backends live in; envelope: the trained sizes (None: none known);
    memory_check: check the estimate against the free memory before a decode (and let
    ``tiles="auto"`` tile where one shot would not fit); memory_hint: the way out the
    refusal names.
    """

    def __init__(
        self,
        request: BackendRequest,
        backends: BackendCache,
        envelope: Envelope | None,
        memory_check: bool = True,
        memory_hint: str = "",
    ) -> None:
        self.request, self.backends, self.envelope = request, backends, envelope
        self.memory_check, self.memory_hint = memory_check, memory_hint
        self.shares = request.backend.shares_sizes

    @property
    def config(self) -> NetConfig:
        return self.request.spec.config

    @property
    def load_precision(self) -> Precision | None:
        """The width weights are staged in (torch on the CPU materialises fp32)."""
        return Precision.FP32 if self.shares and self.request.device == "cpu" else None

    # ------------------------------------------------------------------ planning and checks
    def plan(self, height: int, width: int, batch: int, steps: int, options: TileOptions) -> SizePlan:
        """The plan of a ``width`` x ``height`` decode of ``batch`` images (``auto`` sees the
        free memory when the memory check is on). Refuses bad options and devices in one line."""
        from pid_trt.resources import available_memory

        self.device_requests(options.devices)
        memory_free = None
        if options.mode is TileMode.AUTO and self.memory_check:
            avail = available_memory(self.request.device)
            memory_free = None if avail is None else avail.free_bytes
        return plan(
            self.config, height, width, options, envelope=self.envelope, batch=batch, steps=steps,
            precision=self.request.precision, load_precision=self.load_precision, memory_free=memory_free,
        )  # fmt: skip

    def check_memory(self, size_plan: SizePlan) -> None:
        """Warn about an untrained one-shot bucket; with the memory check on, a one-line
        ResourceError when the way the plan takes does not fit the decode's device."""
        from pid_trt.buckets import Bucket, check_bucket
        from pid_trt.resources import check_decode_memory

        if not size_plan.tiled:
            notice = check_bucket(
                Bucket(height=size_plan.height, width=size_plan.width), self.request.spec.preset
            )
            if notice:
                log.warning(notice)
            if self.memory_check:
                check_decode_memory(
                    self.config, size_plan.height, size_plan.width, size_plan.batch, self.request.precision,
                    self.request.device, size_plan.steps, load_precision=self.load_precision, hint=self.memory_hint,
                )  # fmt: skip
        elif self.memory_check:
            self._check_tiled_memory(size_plan)

    def _check_tiled_memory(self, size_plan: SizePlan) -> None:
        from pid_trt.resources import available_memory

        avail = available_memory(self.request.device)
        need = size_plan.cost.memory.total
        if avail is None or need <= avail.free_bytes:
            return
        g = size_plan.grid
        assert g is not None
        raise ResourceError(
            f"tiled decode of batch {size_plan.batch} at {size_plan.width}x{size_plan.height} ({g.count} tiles of "
            f"{g.tile_width}x{g.tile_height}, tile batch {size_plan.tile_batch}) needs about {need / 2**30:.1f} GiB "
            f"but {avail.kind.value} has {avail.free_bytes / 2**30:.1f} GiB available ({avail.source}); "
            f"use a smaller --tile-batch or --tile-size; {self.memory_hint}"
        )

    def device_requests(self, devices: Sequence[str]) -> tuple[BackendRequest, ...]:
        """One backend request per entry of ``devices`` (already parsed names), checked: the
        backend runs on that kind of device, and the device exists here. One-line errors."""
        cls = self.request.backend
        out = []
        for device in devices:
            kind = "cuda" if device.startswith("cuda") else "cpu"
            if kind not in cls.devices:
                raise ConfigError(
                    f"--devices {device}: the {cls.name} backend runs on {' or '.join(cls.devices)}"
                )
            why = cls.unavailable(device, self.request.precision)
            if (
                why is None
                and kind == "cuda"
                and ":" in device
                and int(device[5:]) >= torch.cuda.device_count()
            ):
                why = f"--devices {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            if why is not None:
                raise BackendUnavailableError(f"--devices {device}: {why}" if "--devices" not in why else why)
            out.append(self.request.on(device))
        return tuple(out)

    # ------------------------------------------------------------------ backends and denoisers
    @contextmanager
    def bound(
        self, height: int, width: int, batch: int, slot: int = 0, on: BackendRequest | None = None
    ) -> Iterator[Backend]:
        """The cached backend of one (size, batch), locked for the block; ``slot`` / ``on``:
        a ``--devices`` entry and its request (see the module docstring)."""
        base = self.request if on is None else on
        request = base.sized(height, width, batch)
        key: Hashable = None if self.shares else (height, width, batch)
        if on is not None and (slot != 0 or on.device != self.request.device):
            key = ("device", slot, on.device) + ((height, width, batch) if key is not None else ())
            if on.device != self.request.device:
                loader = self.request.load_model
                request = dataclasses.replace(request, model_loader=lambda: copy.deepcopy(loader()))
        with self.backends.use(key, lambda: create_backend(request)) as backend:
            yield backend

    @contextmanager
    def denoiser(
        self, size_plan: SizePlan, cond: Conditioning, devices: Sequence[str] = ()
    ) -> Iterator[Denoiser]:
        """The denoiser of ``cond``'s decode under ``size_plan``, its backends held for the block
        (tiled: every tile shape's, on each of ``devices``, in key order so that concurrent
        decodes cannot deadlock)."""
        if size_plan.grid is None:
            with self.bound(cond.height, cond.width, cond.batch) as backend:
                yield backend.bind(cond)
            return
        ons: Sequence[BackendRequest | None] = self.device_requests(devices) or (None,)
        shapes = sorted({(e.height, e.width, e.batch) for e in size_plan.engines})
        needed = len(ons) * (1 if self.shares else len(shapes))
        if needed > self.backends.max_size:
            raise ConfigError(
                f"this tiled decode needs {needed} backends at once ({len(shapes)} tile shape(s) on {len(ons)} "
                f"device(s)) but the Decoder keeps {self.backends.max_size}: raise max_backends or pass fewer --devices"
            )
        with ExitStack() as stack:
            binders = [self._binder(stack, shapes, slot, on) for slot, on in enumerate(ons)]
            yield TiledDenoiser(
                size_plan.grid, cond, binders, size_plan.tile_batch, pad_batches=not self.shares
            )

    def _binder(
        self, stack: ExitStack, shapes: list[tuple[int, int, int]], slot: int, on: BackendRequest | None
    ) -> Callable[[Conditioning], Denoiser]:
        """Hold one device slot's backends (one, or one per tile shape); its binder."""
        if self.shares:
            backend = stack.enter_context(self.bound(*shapes[0], slot=slot, on=on))
            return backend.bind
        held = {key: stack.enter_context(self.bound(*key, slot=slot, on=on)) for key in shapes}

        def bind(cond: Conditioning) -> Denoiser:
            return held[(cond.height, cond.width, cond.batch)].bind(cond)

        return bind
