"""Shared test fixtures: the golden vectors (in the repository), optional-extra checks,
the gpu marker, and the rule that nothing but a GPU test may skip.

Ground truth lives in the repository: ``tests/golden/`` (listed, with hashes, in
``tests/golden/SHA256SUMS``) and the checkpoint inventory, package data read by
:mod:`pid_trt.verify.inventory`. A missing file fails the tests that need it, naming the path; it is
never a skip. ``$PIDTRT_GOLDEN_DIR`` may name a folder of further golden files: they are
added to the parity tests, never substituted for the repository's.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------- hypothesis profiles
#: Environment variable choosing the Hypothesis profile (``ci``, the default, or ``dev``).
HYPOTHESIS_PROFILE_ENV = "HYPOTHESIS_PROFILE"
#: ``ci``: the same examples on every run (derandomized: drawn from a seed fixed per test),
#: no example database (nothing written to the tree, nothing replayed from an earlier run),
#: a bounded number of examples per test, and no deadline (a slow CI machine is no failure;
#: a hang is still bounded by the example count). Tests that set ``max_examples`` keep theirs.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
#: ``dev``: fresh random examples on every run, ten times as many, failures remembered in
#: ``.hypothesis/`` (git-ignored) and replayed first on the next run.
settings.register_profile(
    "dev",
    derandomize=False,
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_ENV, "ci"))


def fuzz_examples(n: int) -> int:
    """``n`` examples under the ``ci`` profile, ten times as many under ``dev``: for tests
    that set their own ``max_examples`` (the profile's applies to the others)."""
    return n * 10 if settings.default.max_examples > 100 else n


#: The repository's golden vectors of the official network (tests/golden/README.md).
GOLDEN_DIR = REPO / "tests" / "golden"
#: ``sha256sum`` lines of every golden file the suite expects.
GOLDEN_MANIFEST = GOLDEN_DIR / "SHA256SUMS"
#: Environment variable naming a folder of extra golden files.
GOLDEN_ENV = "PIDTRT_GOLDEN_DIR"
#: Environment variable: ``1`` makes any skipped test outside the ``gpu`` marker fail the run.
FAIL_ON_SKIP_ENV = "PIDTRT_FAIL_ON_SKIP"

#: Optional modules the suite uses, with the pyproject extra that provides each
#: (scripts/test.sh installs dev,rtx,fp8). Missing ones fail the tests that need them.
EXTRAS = {
    "onnxruntime": "dev",
    "matplotlib": "dev",
    "modelopt.torch.quantization": "fp8",
    "tensorrt_rtx": "rtx",
}


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A command run in-process (typer's CliRunner, ``--threads N``) sets torch's threads for
    the whole process; restore them after each test so later bit-for-bit comparisons with a
    server or a subprocess (torch's default threads) compare like with like."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _caption_store_of_the_session(tmp_path_factory):
    """Module- and session-scoped fixtures (servers started once per module) run before any
    test's own fixtures: they get this session's caption store, never the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIDTRT_CAPTION_STORE", str(tmp_path_factory.mktemp("session-caption-store")))
        patch.delenv("PIDTRT_NULL_CAPTION", raising=False)
        yield


@pytest.fixture(autouse=True)
def _caption_store_in_tmp(tmp_path_factory, monkeypatch):
    """Every test (and every subprocess it starts) gets its own persistent caption store in a
    temp folder, never the user's cache; and no null caption from the environment."""
    monkeypatch.setenv("PIDTRT_CAPTION_STORE", str(tmp_path_factory.mktemp("caption-store")))
    monkeypatch.delenv("PIDTRT_NULL_CAPTION", raising=False)


def golden_manifest() -> dict[str, str]:
    """File name → SHA-256 hex of every golden file the suite expects (tests/golden/SHA256SUMS)."""
    if not GOLDEN_MANIFEST.is_file():
        raise FileNotFoundError(f"golden manifest {GOLDEN_MANIFEST} not found: the test data is incomplete")
    out = {}
    for line in GOLDEN_MANIFEST.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def extra_golden_dir() -> Path | None:
    """``$PIDTRT_GOLDEN_DIR`` as a path, or None when unset."""
    value = os.environ.get(GOLDEN_ENV)
    return Path(value) if value else None


def golden_files() -> list[Path]:
    """Every golden case: the repository's (listed in the manifest, present or not, so that a
    missing one fails), then the extra folder's ``*.safetensors`` that are not byte-identical
    to one of them (a copy of the repository's cases adds nothing)."""
    manifest = golden_manifest()
    files = [GOLDEN_DIR / name for name in sorted(manifest)]
    extra = extra_golden_dir()
    if extra is not None and extra.is_dir():
        known = set(manifest.values())
        files += [p for p in sorted(extra.glob("*.safetensors")) if sha256_file(p) not in known]
    return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def golden_case(stem: str) -> Path:
    """The repository's golden file ``<stem>.safetensors`` (its path, whether present or not)."""
    assert f"{stem}.safetensors" in golden_manifest(), f"{stem} is not listed in {GOLDEN_MANIFEST}"
    return GOLDEN_DIR / f"{stem}.safetensors"


GOLDEN = golden_files()


def require(module: str):
    """Import ``module`` (a key of :data:`EXTRAS`) and return it; fail, never skip, when it
    is missing: the test command installs every extra the suite uses."""
    extra = EXTRAS[module]
    try:
        if module == "tensorrt_rtx":  # importable and its libraries load
            from pid_trt.trt_flavour import Flavour, load_trt

            return load_trt(Flavour.TENSORRT_RTX)
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, BackendUnavailableError, a broken install
        problem = str(exc)
    pytest.fail(
        f"{module} is not usable ({problem}): the test suite needs the [{extra}] extra; "
        f"./scripts/test.sh installs it (or: pip install -e '.[{extra}]')",
        pytrace=False,
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with CUDA; skipped without one")
    config.addinivalue_line("markers", "slow: left out of the quick tier (scripts/test.sh --quick)")
    config.addinivalue_line(
        "markers", "requires(*modules): optional modules (keys of tests.conftest.EXTRAS); missing = failure"
    )


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA not available)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("skip") is not None:
        return  # a gpu test on a machine without one: skipped before anything is required
    for mark in item.iter_markers("requires"):
        for module in mark.args:
            require(module)


# ----------------------------------------------------------------- shared test data
@pytest.fixture(scope="session")
def tiny_checkpoint_bytes(tmp_path_factory) -> bytes:
    """A valid safetensors checkpoint of the tiny net (bf16 random weights drawn with seed 0,
    its net config in the metadata), as bytes: what the checkpoint fuzz tests mutate."""
    import torch
    from safetensors.torch import save_file

    from pid_trt.config import TINY
    from pid_trt.model import PidNet

    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=gen).to(torch.bfloat16)
        for k, v in PidNet(TINY).state_dict().items()
    }
    path = tmp_path_factory.mktemp("tiny-checkpoint") / "tiny.safetensors"
    save_file(state, str(path), metadata={"pid_net_config": TINY.to_json()})
    return path.read_bytes()


# ----------------------------------------------------------------- no skips but GPU ones
#: Skipped tests outside the gpu marker, as (node id, reason), in the order they ran.
_SKIPPED: list[tuple[str, str]] = []


def _fail_on_skip() -> bool:
    return os.environ.get(FAIL_ON_SKIP_ENV) == "1"


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail") and "gpu" not in report.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    if _fail_on_skip() and _SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not (_fail_on_skip() and _SKIPPED):
        return
    tr = terminalreporter
    tr.section(f"skipped outside the gpu marker ({FAIL_ON_SKIP_ENV}=1): the run fails", sep="=", red=True)
    for nodeid, reason in _SKIPPED:
        tr.line(f"SKIPPED {nodeid}: {reason}", red=True)
    tr.line(
        f"{len(_SKIPPED)} test(s) skipped without the gpu marker; only a missing GPU may skip a test "
        "(missing test data or extras are failures)",
        red=True,
    )


# ----------------------------------------------------------------- the quick tier
def quick_first(values, keep: int = 1) -> list:
    """Values for a one-argument ``pytest.mark.parametrize``: the first ``keep`` run in the quick
    tier, the others (the same path again on other inputs) are marked ``slow``: full suite only."""
    values = list(values)
    return values[:keep] + [pytest.param(v, marks=pytest.mark.slow) for v in values[keep:]]
