"""The engine store as a table (``pidtrt engines list``): one row of text per entry, read
from its manifest alone (nothing is deserialised), and the human sizes of the listing."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pid_trt.quoting import printable
from pid_trt.stores.store import Entry, engine_status

#: The columns of :func:`engine_row`, in order.
ENGINE_COLUMNS = (
    "id",
    "net",
    "graph",
    "bucket",
    "batch",
    "precision",
    "flavour",
    "targets",
    "size",
    "created",
    "status",
)


def mebibytes(n: int) -> str:
    """``n`` bytes as ``1,234.5 MiB``."""
    return f"{n / 2**20:,.1f} MiB"


def net_name(net: dict[str, Any]) -> str:
    """The preset name whose net config equals ``net``, else ``custom-<hash4>``."""
    from pid_trt.config import all_presets

    for preset in all_presets():
        if json.loads(preset.config.to_json()) == net:
            return preset.name
    return "custom-" + hashlib.sha256(json.dumps(net, sort_keys=True).encode()).hexdigest()[:4]


def bucket_text(key: dict[str, Any]) -> str:
    """``WxH`` of a static engine; ``Wmin-WmaxxHmin-Hmax dynamic`` of a dynamic one."""
    rng = key.get("range")
    if isinstance(rng, dict):
        w, h = (v if isinstance(v, list) and v else ["?"] for v in (rng.get("width"), rng.get("height")))
        return f"{w[0]}-{w[-1]}x{h[0]}-{h[-1]} dynamic"
    return f"{key.get('width', '?')}x{key.get('height', '?')}"


def _section(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """A manifest's ``name`` section, or {} where it is missing or not an object."""
    value = manifest.get(name)
    return value if isinstance(value, dict) else {}


def engine_row(entry: Entry) -> tuple[str, ...]:
    """One entry as the texts of :data:`ENGINE_COLUMNS` ("?" where its manifest lacks a field;
    the status says why a stale or corrupt entry cannot be used)."""
    status, reason = engine_status(entry)
    k, b = _section(entry.manifest, "key"), _section(entry.manifest, "build")
    batches = k.get("batch_range")
    lo, hi = (batches[0], batches[-1]) if isinstance(batches, list) and batches else ("?", "?")
    texts = (
        entry.digest[:12] or "?",
        net_name(k["net_config"]) if isinstance(k.get("net_config"), dict) else "?",
        str(b.get("graph", "?")),
        bucket_text(k),
        str(lo) if lo == hi else f"{lo}-{hi}",
        str(k.get("precision", "?")) + (" weightless" if k.get("weightless") else ""),
        f"{k.get('flavour', '?')} {k.get('trt_version', '?')}",
        ",".join(map(str, caps)) if isinstance(caps := k.get("compute_capabilities"), list) else "?",
        mebibytes(entry.size_bytes),
        entry.created.replace("+00:00", "Z"),
        status.value + (f": {reason}" if reason else ""),
    )
    # Every field but the digest comes from the manifest, a file anyone can edit.
    return tuple(printable(t, 300) for t in texts)
