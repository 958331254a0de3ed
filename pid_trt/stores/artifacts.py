"""Generic content-addressed artifact store: manifests, per-key locks, atomic commits.

Shared by the engine store (:mod:`pid_trt.stores.store`) and the ONNX export cache.

Layout of a store root (e.g. ``engines/``)::

    <label>-<digest16>.plan                 the artifact (a file, or a folder for ONNX +
                                            external data)
    <label>-<digest16>.plan.manifest.json   its manifest: the full key, sha256, size, times
    .locks/<digest>.lock                    one flock file per key

The digest is the sha256 of the key's canonical JSON: everything that invalidates the
artifact. Protocol of a write (:meth:`ArtifactStore.put`): take the key's exclusive lock;
re-check (another process may have just built it); build into a temp path; fsync; rename
onto the final name; then write the manifest atomically. The manifest is the commit point:
an artifact without one is unfinished and is never returned. A manifest that disagrees with
the key, names a path outside the store, or whose artifact's hash differs raises
:class:`StoreError` on lookup instead of being loaded.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pid_trt.atomic import TEMP_PREFIX, atomic_write_bytes, temp_path_for
from pid_trt.errors import ConfigError, StoreError
from pid_trt.quoting import printable, quote

MANIFEST_FORMAT = "pid-trt-manifest/1"
MANIFEST_SUFFIX = ".manifest.json"
_CHUNK = 8 << 20  # bytes read per hashing step
#: Largest manifest read, in bytes (real ones are ~2 KB): a bigger file is refused unread.
MAX_MANIFEST_BYTES = 1 << 20


def _short(value: Any, limit: int = 60) -> str:
    """``value`` quoted for a one-line message about untrusted data (:func:`pid_trt.quoting.quote`)."""
    return quote(value, limit)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: stable input for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class ArtifactKey(Protocol):
    """What a store needs of a key: a kind, a file suffix, JSON-ready fields and a label."""

    kind: ClassVar[str]
    suffix: ClassVar[str]

    def fields(self) -> dict[str, Any]: ...

    def label(self) -> str: ...


def key_digest(key: ArtifactKey) -> str:
    """sha256 (hex) of the key's kind and canonical fields."""
    return hashlib.sha256(canonical_json({"kind": key.kind, "key": key.fields()}).encode()).hexdigest()


def _safe_label(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-" else "_" for c in text)
    return keep.strip("._-")[:80] or "artifact"


def artifact_name(key: ArtifactKey) -> str:
    """File name of the key's artifact: ``<label>-<first 16 hex of digest><suffix>``."""
    return f"{_safe_label(key.label())}-{key_digest(key)[:16]}{key.suffix}"


@dataclass(frozen=True)
class Entry:
    """One committed artifact of a store. Size in bytes; ``created`` is ISO-8601 UTC.

    ``problem`` is None for a sound entry, else a one-line reason (missing file, bad path...).
    """

    digest: str
    kind: str
    path: Path
    manifest_path: Path
    size_bytes: int
    created: str
    manifest: dict[str, Any]
    problem: str | None = None


@dataclass(frozen=True)
class PutResult:
    """Outcome of :meth:`ArtifactStore.put`: where the artifact is and whether this call built it.

    ``replaced`` names why an older artifact under the same key was discarded (or None).
    """

    path: Path
    manifest: dict[str, Any]
    built: bool
    replaced: str | None = None


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed) for the ``with`` body.

    Blocks until free, or raises :class:`StoreError` after ``timeout_s`` seconds. The lock
    goes with the process: a killed holder releases it.
    """
    import fcntl  # POSIX only, like the rest of the deployment path

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"lock {path.name}: still held by another build after {timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def hash_artifact(path: Path) -> tuple[str, int]:
    """sha256 (hex) and size in bytes of a file, or of a folder (relative names + contents)."""
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest(), path.stat().st_size
    h, total = hashlib.sha256(), 0
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        sub, size = hash_artifact(p)
        h.update(f"{p.relative_to(path).as_posix()}\0{size}\0{sub}\n".encode())
        total += size
    return h.hexdigest(), total


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in files:
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class ArtifactStore:
    """A folder of content-addressed artifacts of one ``kind`` (``engine`` or ``onnx``)."""

    def __init__(self, root: str | os.PathLike[str], kind: str) -> None:
        self.root = Path(root)
        self.kind = kind

    # ----------------------------------------------------------------- paths
    def path_for(self, key: ArtifactKey) -> Path:
        """Where the key's artifact lives (whether or not it exists yet)."""
        self._check_kind(key)
        return self.root / artifact_name(key)

    def manifest_path_for(self, key: ArtifactKey) -> Path:
        """Where the key's manifest lives."""
        return self.path_for(key).with_name(artifact_name(key) + MANIFEST_SUFFIX)

    def _lock_path(self, digest: str) -> Path:
        return self.root / ".locks" / f"{digest}.lock"

    def _check_kind(self, key: ArtifactKey) -> None:
        if key.kind != self.kind:
            raise ConfigError(f"key of kind {key.kind!r} given to the {self.kind!r} store at {self.root}")

    # ----------------------------------------------------------------- reading
    def _read_manifest(self, manifest_path: Path) -> dict[str, Any]:
        try:
            size = manifest_path.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise StoreError(
                    f"manifest {printable(manifest_path)}: {size} bytes, expected at most {MAX_MANIFEST_BYTES}; "
                    "remove it or rebuild"
                )
            data = json.loads(manifest_path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 / JSON
            reason = printable(" ".join(str(exc).split()), 120) or type(exc).__name__
            raise StoreError(
                f"manifest {printable(manifest_path)}: unreadable ({reason}); remove it or rebuild"
            ) from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise StoreError(
                f"manifest {printable(manifest_path)}: not a {MANIFEST_FORMAT} manifest; remove it or rebuild"
            )
        return data

    def _artifact_of(self, manifest: Mapping[str, Any], manifest_path: Path) -> Path:
        """The artifact a manifest names, refusing anything but a plain name inside the root."""
        name = manifest.get("path")
        refused = StoreError(
            f"manifest {printable(manifest_path.name)} names path {_short(name)}: outside the store {printable(self.root)}"
        )
        if (
            not isinstance(name, str)
            or not name
            or name in (".", "..")
            or any(c in name for c in "/\\\0")
            or len(name.encode("utf-8", "surrogatepass")) > 255
        ):
            raise refused
        path = self.root / name
        try:
            root = self.root.resolve()
            if path.resolve().parent != root or (
                path.is_symlink() and not path.resolve().is_relative_to(root)
            ):
                raise refused
        except (OSError, ValueError, RuntimeError):  # symlink loops, odd names
            raise refused from None
        return path

    def _validate(
        self, manifest: dict[str, Any], manifest_path: Path, key: ArtifactKey, verify_hash: bool
    ) -> Path:
        what = f"{self.kind} {printable(manifest_path.name[: -len(MANIFEST_SUFFIX)])}"
        if manifest.get("kind") != self.kind:
            raise StoreError(
                f"{what}: manifest is of kind {_short(manifest.get('kind'))}, expected {self.kind!r}"
            )
        want = key.fields()
        have = manifest.get("key")
        if have != json.loads(canonical_json(want)) or manifest.get("digest") != key_digest(key):
            have = have if isinstance(have, dict) else {}
            diffs = [
                f"{printable(str(k), 30)}: built with {_short(have.get(k))}, expected {_short(want.get(k))}"
                for k in sorted(set(want) | set(map(str, have)))
                if canonical_json(have.get(k)) != canonical_json(want.get(k))
            ]
            detail = "; ".join(diffs[:4]) or "digest differs"
            raise StoreError(f"stale or foreign {what} refused ({detail}); rebuild it")
        path = self._artifact_of(manifest, manifest_path)
        if path.name != artifact_name(key):
            raise StoreError(f"{what}: manifest names {_short(path.name)}, expected {artifact_name(key)!r}")
        if not path.exists():
            raise StoreError(f"{what}: manifest present but {printable(path.name)} is missing; rebuild it")
        if verify_hash:
            sha, size = hash_artifact(path)
            if size != manifest.get("size_bytes") or sha != manifest.get("sha256"):
                raise StoreError(
                    f"corrupt {what} refused: {printable(path.name)} has sha256 {sha[:16]}… ({size} bytes), "
                    f"manifest says {_short(manifest.get('sha256'), 18)} ({_short(manifest.get('size_bytes'), 24)} bytes)"
                )
        return path

    def lookup(self, key: ArtifactKey, verify_hash: bool = True) -> Path | None:
        """Path of the key's committed artifact, or None when there is none.

        Raises :class:`StoreError` for a stale / foreign / corrupt artifact (manifest key
        differs, path outside the store, hash mismatch) rather than returning it.
        ``verify_hash`` re-hashes the artifact (about 1 s per GB); False checks size only.
        """
        manifest_path = self.manifest_path_for(key)
        if not manifest_path.is_file():
            return None
        manifest = self._read_manifest(manifest_path)
        path = self._validate(manifest, manifest_path, key, verify_hash)
        if not verify_hash and path.is_file() and path.stat().st_size != manifest.get("size_bytes"):
            raise StoreError(
                f"corrupt {self.kind} {printable(path.name)} refused: size differs from its manifest"
            )
        return path

    def manifest(self, key: ArtifactKey) -> dict[str, Any] | None:
        """The key's manifest as stored (unvalidated), or None."""
        manifest_path = self.manifest_path_for(key)
        return self._read_manifest(manifest_path) if manifest_path.is_file() else None

    # ----------------------------------------------------------------- writing
    def put(
        self,
        key: ArtifactKey,
        build_fn: Callable[[Path], Mapping[str, Any] | None],
        *,
        verify_hash: bool = True,
        lock_timeout_s: float | None = None,
    ) -> PutResult:
        """Return the key's artifact, building it with ``build_fn`` if absent or unsound.

        ``build_fn(tmp_path)`` must write the artifact (file or folder) at ``tmp_path``; what it
        returns (JSON-ready) is recorded under ``build`` in the manifest, with the measured
        ``build_seconds``. Runs under the key's exclusive lock: concurrent callers wait and
        then reuse the one artifact. A stale / corrupt artifact under the key is replaced.
        """
        self._check_kind(key)
        digest = key_digest(key)
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock_path(digest), lock_timeout_s):
            replaced = None
            try:
                found = self.lookup(key, verify_hash=verify_hash)
            except StoreError as exc:
                found, replaced = None, str(exc)
            if found is not None:
                return PutResult(found, self.manifest(key) or {}, built=False)
            final, manifest_path = self.path_for(key), self.manifest_path_for(key)
            _delete(manifest_path)  # un-commit first, then the artifact and orphaned temps
            _delete(final)
            for orphan in self.root.glob(f"{TEMP_PREFIX}{final.name}*"):
                _delete(orphan)
            tmp = temp_path_for(final)
            start = time.perf_counter()
            try:
                extra = dict(build_fn(tmp) or {})
                seconds = time.perf_counter() - start
                if not tmp.exists():
                    raise StoreError(f"{self.kind} build for {final.name} wrote nothing to its temp path")
                _fsync_tree(tmp)
                sha, size = hash_artifact(tmp)
                os.replace(tmp, final)
            except BaseException:
                _delete(tmp)
                raise
            manifest = {
                "format": MANIFEST_FORMAT,
                "kind": self.kind,
                "digest": digest,
                "path": final.name,
                "key": json.loads(canonical_json(key.fields())),
                "sha256": sha,
                "size_bytes": size,
                "build_seconds": round(seconds, 3),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "build": json.loads(canonical_json(extra)),
            }
            atomic_write_bytes(
                manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            )
            return PutResult(final, manifest, built=True, replaced=replaced)

    # ----------------------------------------------------------------- listing / removal
    def list(self) -> list[Entry]:
        """Every committed artifact (by manifest), sorted by name; unsound ones carry ``problem``."""
        out = []
        for manifest_path in sorted(self.root.glob(f"*{MANIFEST_SUFFIX}")):
            problem, manifest, path = None, {}, manifest_path
            try:
                manifest = self._read_manifest(manifest_path)
                path = self._artifact_of(manifest, manifest_path)
                if not path.exists():
                    problem = f"{printable(path.name)} is missing"
                elif path.is_file() and path.stat().st_size != manifest.get("size_bytes"):
                    problem = f"{printable(path.name)} size differs from its manifest"
            except StoreError as exc:
                problem = str(exc)
            size = manifest.get("size_bytes")
            raw = manifest.get("digest")
            # it names the lock file: never a path from the manifest
            digest = raw if isinstance(raw, str) and _is_digest(raw) else ""
            if problem is None and not (isinstance(size, int) and digest):
                problem = "manifest lacks an integer size_bytes or a sha256 digest"
            out.append(
                Entry(
                    digest=digest,
                    kind=printable(manifest.get("kind", ""), 40),
                    path=path,
                    manifest_path=manifest_path,
                    size_bytes=size if isinstance(size, int) and not isinstance(size, bool) else 0,
                    created=printable(manifest.get("created", ""), 40),
                    manifest=manifest,
                    problem=problem,
                )
            )
        return out

    def remove(self, which: str) -> builtins.list[str]:  # list: this class's method
        """Remove ``'all'`` or the entry whose digest starts with ``which`` (6+ hex chars).

        Returns the removed artifact names. Unfinished artifacts and temp files go with
        ``'all'``. Raises :class:`StoreError` when nothing or more than one entry matches.
        """
        entries = self.list()
        if which == "all":
            chosen = entries
        else:
            if len(which) < 6 or any(c not in "0123456789abcdef" for c in which.lower()):
                raise StoreError(
                    f"{self.kind} id {quote(which)}: expected 'all' or 6+ hex digits of a digest"
                )
            chosen = [e for e in entries if e.digest.startswith(which.lower())]
            if len(chosen) != 1:
                found = "no" if not chosen else f"{len(chosen)}"
                raise StoreError(
                    f"{self.kind} id {quote(which)}: {found} entries match in {printable(self.root)}"
                )
        removed = []
        for entry in chosen:
            lock = self._lock_path(entry.digest) if entry.digest else None
            with file_lock(lock) if lock else contextlib.nullcontext():
                _delete(entry.manifest_path)
                if entry.path != entry.manifest_path and entry.path.resolve().parent == self.root.resolve():
                    _delete(entry.path)
            removed.append(entry.path.name)
        if which == "all" and self.root.is_dir():
            for stray in self.root.glob(f"{TEMP_PREFIX}*"):
                _delete(stray)
        return removed
