"""Installed versions of Python distributions, read from their metadata (nothing is imported).

One reader for every place that records versions: the ONNX export key
(:class:`pid_trt.stores.keys.ExportKey`), ``pidtrt verify --report`` and the benchmark records.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """{distribution name: installed version} for each of ``names`` that is installed
    (e.g. ``{"torch": "2.13.0+cpu"}``); names not installed are left out."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
