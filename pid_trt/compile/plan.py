"""The rules of a build or export request, in one place: one size or a range of sizes, the
batch, the precision, weightless plans, and the builder's options.

``pidtrt build`` and ``pidtrt export`` parse their options and hand the text here;
:func:`plan_build` / :func:`plan_export` raise :class:`~pid_trt.errors.ConfigError` naming the
bad value (the option names in the messages are the CLI's) and return a plan with the notes
the user should see (one line each), which the caller prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pid_trt.buckets import Bucket, ShapeRange, check_bucket, parse_batch, parse_bucket, parse_range
from pid_trt.compile.build import BuildOptions
from pid_trt.config import Precision
from pid_trt.errors import ConfigError

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec


@dataclass(frozen=True)
class BuildPlan:
    """What a build or export request resolves to.

    ``bucket``: the output size in pixels (with a ``shape_range``: the range's opt size);
    ``batch_range``: (min, opt, max) batch, all equal for a static one; ``options``: the
    builder's options (None for an export); ``notes``: warnings for the user, one line each.
    """

    precision: Precision
    bucket: Bucket
    batch_range: tuple[int, int, int]
    shape_range: ShapeRange | None = None
    options: BuildOptions | None = None
    notes: tuple[str, ...] = ()

    @property
    def batch(self) -> int:
        """The export's batch: the static batch, or the range's opt batch."""
        return self.shape_range.batch[1] if self.shape_range is not None else self.batch_range[0]

    def describe(self) -> str:
        """``256x256 batch 1`` or ``dynamic <range>``."""
        if self.shape_range is not None:
            return f"dynamic {self.shape_range.name}"
        return f"{self.bucket.name} batch {self.batch_range[0]}"


def _size(
    spec: NetSpec,
    verb: str,
    res: int | None,
    size: str | None,
    dynamic: bool,
    min_size: str | None,
    opt_size: str | None,
    max_size: str | None,
    batch: str,
    check: Any = None,
) -> tuple[Bucket, ShapeRange | None]:
    """(bucket, None) of ``--res`` / ``--size``, or (opt bucket, range) of ``--dynamic``;
    ``check()`` runs after the --res/--size check of a dynamic request."""
    if dynamic:
        if res is not None or size is not None:
            raise ConfigError(
                f"--dynamic {verb} a range: give --min-size/--opt-size/--max-size, not --res/--size"
            )
        if check is not None:
            check()
        shape_range = parse_range(min_size, opt_size, max_size, parse_batch(batch), spec.preset)
        return shape_range.opt_bucket, shape_range
    return parse_bucket(res, size), None


def plan_build(
    spec: NetSpec,
    *,
    precision: str,
    res: int | None = None,
    size: str | None = None,
    batch: str | None = None,
    dynamic: bool = False,
    min_size: str | None = None,
    opt_size: str | None = None,
    max_size: str | None = None,
    weightless: bool = False,
    target_cc: str | None = None,
    opt_level: int = 3,
    workspace_gb: float | None = None,
) -> BuildPlan:
    """The plan of ``pidtrt build`` for ``spec`` (a :class:`pid_trt.netspec.NetSpec`): the
    option texts as the CLI took them (``batch``: ``N``, or ``MIN:OPT:MAX`` with ``dynamic``;
    ``target_cc``: comma-separated compute capabilities; ``workspace_gb``: GiB).

    fp8 checks that ModelOpt is installed (BackendUnavailableError) before anything is built.
    """
    try:
        prec = Precision(precision.lower())
    except ValueError:
        raise ConfigError(f"--precision {precision!r}: expected fp16, bf16, fp8 or fp32") from None
    if weightless and prec is Precision.FP8:
        raise ConfigError(
            "--weightless --precision fp8: FP8 scales are calibrated per checkpoint, so an fp8 plan cannot "
            "serve other checkpoints; build it per checkpoint (without --weightless)"
        )

    def no_dynamic_fp8() -> None:
        if prec is Precision.FP8:
            raise ConfigError(
                "--dynamic --precision fp8: not supported; build static fp8 engines (--size WxH)"
            )

    if not dynamic and (min_size or opt_size or max_size):
        raise ConfigError("--min-size/--opt-size/--max-size need --dynamic")
    bucket, shape_range = _size(
        spec, "builds", res, size, dynamic, min_size, opt_size, max_size, batch or "1:1:2", no_dynamic_fp8
    )
    notes: list[str] = []
    if prec is Precision.FP8:
        from pid_trt.compile.quantize import calibration_for_bucket, require_modelopt

        require_modelopt()
        cal = calibration_for_bucket(spec.config, bucket.height, bucket.width)
        notes.append(
            f"fp8: the step graph is quantized with ModelOpt before export, calibrated on {cal.num_samples} "
            f"seeded fp32 decodes at {cal.width}x{cal.height} (the slow part of an fp8 export on a CPU)"
        )
    note = check_bucket(bucket, spec.preset) if shape_range is None else None
    if note:
        notes.append(note)
    if prec is Precision.FP32:
        notes.append(
            "fp32 engines use decomposable (unfused) attention, O(tokens^2) memory: for parity checks only"
        )
    batch_range = shape_range.batch if shape_range is not None else parse_batch(batch or "1")
    if batch_range[0] != batch_range[2] and shape_range is None:
        raise ConfigError(
            f"--batch {batch}: the exporter writes static-batch graphs, so an engine serves one batch; "
            "build one engine pair per batch (--batch N), or one pair for a batch range with --dynamic"
        )
    targets = tuple(c.strip() for c in target_cc.split(",") if c.strip()) if target_cc else ()
    options = BuildOptions(
        precision=prec,
        optimization_level=opt_level,
        workspace_bytes=int(workspace_gb * 2**30) if workspace_gb else None,
        compute_capabilities=targets,
        batch_range=batch_range,
        decomposable_attention=prec is Precision.FP32,
        weightless=weightless,  # the weights to strip come per graph from the export (build_pair)
    )
    return BuildPlan(prec, bucket, batch_range, shape_range, options, tuple(notes))


def plan_export(
    spec: NetSpec,
    *,
    precision: str,
    res: int | None = None,
    size: str | None = None,
    batch: int = 1,
    dynamic: bool = False,
    min_size: str | None = None,
    opt_size: str | None = None,
    max_size: str | None = None,
    batch_range: str = "1:1:2",
) -> BuildPlan:
    """The plan of ``pidtrt export`` for ``spec``: one bucket at ``batch``, or with ``dynamic``
    a range with ``batch_range`` (``MIN:OPT:MAX``). What the exporter cannot write (fp8 ranges,
    refittable fp8, opsets below 23) the export key refuses (:meth:`pid_trt.stores.keys.ExportKey.create`)."""
    bucket, shape_range = _size(
        spec, "exports", res, size, dynamic, min_size, opt_size, max_size, batch_range
    )
    notes: list[str] = []
    if shape_range is None:
        note = check_bucket(bucket, spec.preset)
        if note:
            notes.append(note)
    try:
        prec = Precision(precision)
    except ValueError:
        raise ConfigError(f"precision {precision!r}: expected fp32, fp16, bf16 or fp8") from None
    batches = shape_range.batch if shape_range is not None else (batch, batch, batch)
    return BuildPlan(prec, bucket, batches, shape_range, None, tuple(notes))
