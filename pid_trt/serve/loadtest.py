"""``pidtrt bench --server``: load test of a running ``pidtrt serve``.

``concurrency`` clients (threads, each its own connection) send ``requests`` requests in
all, one image each, of one size, every request with its own seed, asking for ``output``:
the float ``image`` (binary data) or the ``png`` file (encoded on the server). Each ends with an image
or a named error (:data:`~pid_trt.serve.client.ERROR_KINDS`): nothing is lost, and the
record says so (``ok + sum(errors) == requests``). The server's side comes from Triton's
statistics extension (``/v2/models/pid_decoder/stats``), read before and after: how many
decodes ran at each batch size, and the mean time a request waited in the queue.

Record units as :mod:`pid_trt.bench.records`: ``*_ms`` milliseconds, ``*_s`` seconds,
``images_per_s`` images per second (successful requests / wall time).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pid_trt.bench.records import Percentiles
from pid_trt.serve.client import ERROR_KINDS, PidClient, ServeRequestError

#: Version tag of the JSON document ``pidtrt bench --server --json`` writes.
SCHEMA_VERSION = "pid_trt.bench.server/1"
#: Seconds a load test waits for the server's statistics to count every answered request.
STATS_SETTLE_S = 2.0
#: What a load test's requests may ask for (``pidtrt bench --server-output``).
OUTPUTS = ("image", "png")


@dataclass(frozen=True)
class ServerBenchRecord:
    """One load test: ``concurrency`` clients, ``requests`` requests of ``height`` x ``width``.

    latency_ms: per-request round trip percentiles (successful requests; None if none);
    images_per_s: successful requests / wall_s; errors: failed requests by kind;
    batches: decodes the server ran during the test by batch size ({size: count});
    mean_batch: images per decode; queue_ms / compute_ms: server-side mean per request;
    output: what each request asked for (``image`` or ``png``).
    """

    url: str
    net: str
    backend: str
    precision: str
    height: int
    width: int
    concurrency: int
    requests: int
    ok: int
    errors: dict[str, int]
    wall_s: float
    latency_ms: Percentiles | None
    images_per_s: float
    batches: dict[int, int]
    mean_batch: float | None
    queue_ms: float | None
    compute_ms: float | None
    error_examples: dict[str, str] = field(default_factory=dict)
    output: str = "image"

    @property
    def lost(self) -> int:
        """Requests that ended with neither an image nor a named error (always 0)."""
        return self.requests - self.ok - sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["batches"] = {str(k): v for k, v in self.batches.items()}
        d["lost"] = self.lost
        return d


def run_load(
    url: str,
    height: int,
    width: int,
    concurrency: int,
    requests: int,
    *,
    timeout_s: float = 600.0,
    seed: int = 0,
    output: str = "image",
) -> ServerBenchRecord:
    """Run one load test against the server at ``url`` (see the module docstring)."""
    if concurrency < 1 or requests < 1:
        raise ValueError(f"concurrency={concurrency}, requests={requests}: expected both >= 1")
    check_output(output)
    with PidClient(url, timeout_s=timeout_s) as probe:
        params = probe.parameters()
        before = probe.stats()
    latent, caption = _inputs(params, height, width, seed)
    tally = _Tally()
    threads = [
        threading.Thread(
            target=tally.work,
            args=(url, latent, caption, requests, timeout_s, seed, output),
            name=f"pidtrt-load-{k}",
        )
        for k in range(concurrency)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    with PidClient(url, timeout_s=timeout_s) as probe:
        after = probe.stats()
        # A PNG answer may reach its client before Triton records the batch that decoded it
        # (the model sends it from an encoding thread): wait a moment for the last batches.
        deadline = time.monotonic() + STATS_SETTLE_S
        while _decoded(before, after) < len(tally.latencies) and time.monotonic() < deadline:
            time.sleep(0.05)
            after = probe.stats()
    batches, queue_ms, compute_ms = _server_side(before, after)
    images = sum(k * v for k, v in batches.items())
    runs = sum(batches.values())
    pct = None
    if tally.latencies:
        ms = np.asarray(tally.latencies) * 1e3
        pct = Percentiles(*(float(np.percentile(ms, q)) for q in (50, 95, 99)))
    ordered = {k: tally.errors[k] for k in ERROR_KINDS if k in tally.errors}
    ok = len(tally.latencies)
    return ServerBenchRecord(
        url=url, net=params.get("net", "?"), backend=params.get("backend", "?"),
        precision=params.get("precision", "?"), height=height, width=width, concurrency=concurrency,
        requests=requests, ok=ok, errors=ordered, wall_s=wall, latency_ms=pct,
        images_per_s=ok / wall if wall > 0 else 0.0, batches=batches,
        mean_batch=images / runs if runs else None, queue_ms=queue_ms, compute_ms=compute_ms,
        error_examples=tally.examples, output=output,
    )  # fmt: skip


def check_output(output: str) -> None:
    """Refuse an ``output`` a load test cannot ask for (one of :data:`OUTPUTS`)."""
    if output not in OUTPUTS:
        from pid_trt.errors import ConfigError

        raise ConfigError(f"--server-output {output!r}: expected one of {', '.join(OUTPUTS)}")


def _inputs(params: dict[str, str], height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The load test's latent [1, C, h, w] and caption [1, T, D] (seeded normal, float32) for a
    ``width`` x ``height`` output on the server whose model parameters are ``params``."""
    ppl = int(params["pixels_per_latent"])
    if height % ppl or width % ppl:
        from pid_trt.errors import ConfigError

        raise ConfigError(
            f"--size {width}x{height}: expected multiples of {ppl} (the server's pixels per latent cell)"
        )
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal(
        (1, int(params["latent_channels"]), height // ppl, width // ppl), dtype=np.float32
    )
    caption = rng.standard_normal(
        (1, int(params["txt_max_length"]), int(params["txt_embed_dim"])), dtype=np.float32
    )
    return latent, caption


class _Tally:
    """The requests of one load test, shared by its client threads: the next request's index,
    the latencies (s) of the answered ones, failures by kind and one message of each kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_index = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def take(self, requests: int) -> int | None:
        """The index of the next request to send, None when all ``requests`` are taken."""
        with self.lock:
            if self.next_index >= requests:
                return None
            self.next_index += 1
            return self.next_index - 1

    def work(
        self, url: str, latent, caption, requests: int, timeout_s: float, seed: int, output: str
    ) -> None:
        """One client thread: send requests until none is left; every outcome is counted."""
        with PidClient(url, timeout_s=timeout_s) as client:
            while (i := self.take(requests)) is not None:
                start = time.perf_counter()
                try:
                    client.decode(latent, caption, seed=seed + i, outputs=(output,), request_id=f"bench-{i}")
                except ServeRequestError as exc:
                    kind, message = exc.kind, str(exc)
                except Exception as exc:  # counted, never lost
                    kind, message = "client", f"{type(exc).__name__}: {exc}"
                else:
                    with self.lock:
                        self.latencies.append(time.perf_counter() - start)
                    continue
                with self.lock:
                    self.errors[kind] = self.errors.get(kind, 0) + 1
                    self.examples.setdefault(kind, " ".join(message.split())[:300])


def _decoded(before: dict, after: dict) -> int:
    """Images the server's batches decoded between two stats."""
    return sum(k * v for k, v in _server_side(before, after)[0].items())


def _server_side(before: dict, after: dict) -> tuple[dict[int, int], float | None, float | None]:
    """Decodes per batch size, mean queue and compute ms per request, between two stats."""

    def by_size(stats: dict) -> dict[int, int]:
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}

    def totals(stats: dict, key: str) -> tuple[int, int]:
        entry = stats.get("inference_stats", {}).get(key, {})
        return int(entry.get("count", 0)), int(entry.get("ns", 0))

    b0, b1 = by_size(before), by_size(after)
    batches = {k: b1[k] - b0.get(k, 0) for k in sorted(b1) if b1[k] - b0.get(k, 0) > 0}
    means = []
    for key in ("queue", "compute_infer"):
        (c0, n0), (c1, n1) = totals(before, key), totals(after, key)
        means.append((n1 - n0) / (c1 - c0) / 1e6 if c1 > c0 else None)
    return batches, means[0], means[1]


def render_markdown(records: list[ServerBenchRecord], title: str | None = None) -> str:
    """The load-test table."""
    lines = [f"## {title}", ""] if title else []
    if records:
        r = records[0]
        lines += [
            f"Server {r.url}: {r.net}, {r.backend} {r.precision}; requests ask for `{r.output}`; "
            "latency is the client's round trip.",
            "",
        ]
    lines += [
        "| size | concurrency | requests | ok | errors | p50 ms | p95 ms | p99 ms | images/s | batches (size: decodes) "
        "| mean batch | queue ms | compute ms |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in records:
        errs = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
        lat = r.latency_ms
        cells = [f"{lat.p50:.0f}", f"{lat.p95:.0f}", f"{lat.p99:.0f}"] if lat else ["-"] * 3
        batches = ", ".join(f"{k}: {v}" for k, v in r.batches.items()) or "-"

        def num(x: float | None, fmt: str = ".1f") -> str:
            return "-" if x is None else format(x, fmt)

        lines.append(
            f"| {r.width}x{r.height} | {r.concurrency} | {r.requests} | {r.ok} | {errs} | {' | '.join(cells)} "
            f"| {r.images_per_s:.2f} | {batches} | {num(r.mean_batch, '.2f')} | {num(r.queue_ms)} "
            f"| {num(r.compute_ms)} |"
        )
    notes = [f"- {kind}: {msg}" for r in records for kind, msg in r.error_examples.items()]
    if notes:
        lines += ["", "Errors (one example per kind):", *dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def dump_document(records: list[ServerBenchRecord], meta: dict[str, Any] | None = None) -> str:
    """The ``--json`` document: {"schema", "meta", "records": [...]}."""
    doc = {"schema": SCHEMA_VERSION, "meta": meta or {}, "records": [r.to_dict() for r in records]}
    return json.dumps(doc, indent=2) + "\n"
