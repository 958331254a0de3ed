"""A real ``pidtrt serve`` (Triton, tiny preset, random weights, CPU) under load, as users
and clients see it: images equal to a direct decode, malformed requests refused one by one
with the CLI's words, batches formed, overload refused at once, health and metrics answer,
and shutdown leaves no process, port, /dev/shm region or workspace behind.

The tests of this module share one server and run in file order; the last one stops it."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pid_trt.errors import PidTrtError
from pid_trt.io import latent_from_tensors, read_latent_file, write_images, write_latent_file
from tests.serve.conftest import (
    REQUEST_TIMEOUT_S,
    assert_nothing_left,
    start_server,
    stop_server,
)

# A Triton server per module (~10-45 s to start on 2 cores) and 240 s+ for the module: the quick tier
# keeps one real server (health, parameters, and `pidtrt request` = `pidtrt decode`); the rest are marked.

#: Two output sizes (tiny preset: 32 pixels per latent cell).
SIZES = ((32, 32), (32, 64))
#: Largest difference between a batched decode and the same request decoded alone (torch
#: CPU fp32: measured ~1.1e-5, the matrix products of 4 rows round differently from 1 row).
BATCH_TOL = 1e-4
MAX_QUEUE = 8
#: The trained sizes the server is given (tiny has none): SIZES are inside, 128x96 is not.
ENVELOPE = "64x64"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = start_server(
        tmp_path_factory.mktemp("serve"), "--max-batch", "4", "--max-queue-delay-ms", "50",
        "--max-queue-size", str(MAX_QUEUE), "--envelope", ENVELOPE,
    )  # fmt: skip
    yield served
    if served.proc.poll() is None:  # a test failed before the shutdown test ran
        stop_server(served, signal.SIGKILL)


@pytest.fixture(scope="module")
def decoder():
    from pid_trt import Decoder

    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        yield dec


def client(served):
    from pid_trt.serve.client import PidClient

    return PidClient(served.url, timeout_s=REQUEST_TIMEOUT_S)


def latents(config, seed: int) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """One latent [1, C, h, w] and caption [1, T, D] per size."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for h, w in SIZES:
        lat = torch.randn(1, config.lq_latent_channels, h // 32, w // 32, generator=gen)
        cap = torch.randn(1, config.txt_max_length, config.txt_embed_dim, generator=gen)
        out[(h, w)] = (lat.numpy(), cap.numpy())
    return out


def stats(served) -> dict[int, int]:
    """Decodes run so far, by batch size (Triton's statistics extension)."""
    with urllib.request.urlopen(f"{served.url}/v2/models/pid_decoder/stats", timeout=10) as resp:
        doc = json.load(resp)
    entry = doc["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in entry.get("batch_stats", [])}


def malformed(kind: str, lat: np.ndarray, cap: np.ndarray) -> dict:
    """Inputs of a malformed request of ``kind`` (what the server must refuse alone)."""
    lat, cap = lat.copy(), cap.copy()
    if kind == "nan":
        lat[0, 0, 0, 0] = np.nan
        return {"latent": lat, "caption": cap}
    if kind == "channels":
        return {"latent": np.zeros((1, lat.shape[1] + 3, *lat.shape[2:]), np.float32), "caption": cap}
    if kind == "caption_width":
        return {"latent": lat, "caption": cap[..., :-1].copy()}
    if kind == "sigma":
        return {"latent": lat, "caption": cap, "degrade_sigma": 1.5}
    raise AssertionError(kind)


def cli_message(config, req: dict, what: str) -> str:
    """What the CLI's checks say of these inputs (pid_trt.io.latent_from_tensors)."""
    sigma = req.get("degrade_sigma")
    try:
        latent_from_tensors(
            req["latent"],
            req["caption"],
            None if sigma is None else np.array([sigma], np.float32),
            config,
            what,
        )
    except PidTrtError as exc:
        return str(exc)
    raise AssertionError("inputs expected to be refused were accepted")


# ---------------------------------------------------------------------------------------------- tests
def test_health_metrics_and_model_parameters(server) -> None:
    with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    assert 'nv_inference_request_success{model="pid_decoder"' in text
    with client(server) as c:
        assert c.ready()
        params = c.parameters()
    assert params["latent_channels"] == "16" and params["pixels_per_latent"] == "32"
    assert params["net"] == "tiny" and params["backend"] == "torch"


def test_request_cli_equals_decode_cli_bit_for_bit(server, tmp_path: Path) -> None:
    """`pidtrt request` of a latent file = `pidtrt decode` of it, same seed, torch CPU, batch 1."""
    gen = torch.Generator().manual_seed(3)
    lat = tmp_path / "lat.safetensors"
    write_latent_file(
        lat, torch.randn(1, 16, 2, 2, generator=gen), torch.randn(1, 8, 32, generator=gen), 0.25
    )
    common = [sys.executable, "-m", "pid_trt.cli.main"]
    req = subprocess.run(
        [*common, "request", lat, "--url", server.url, "--seed", "11", "-o", tmp_path / "req.safetensors"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert req.returncode == 0, req.stderr
    assert "wrote" in req.stdout and "64x64" in req.stdout
    dec = subprocess.run(
        [*common, "decode", lat, "--backbone", "tiny", "--random-weights", "--seed", "11",
         "-o", tmp_path / "dec.safetensors"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dec.returncode == 0, dec.stderr
    got = load_file(str(tmp_path / "req.safetensors"))["image"]
    want = load_file(str(tmp_path / "dec.safetensors"))["image"]
    assert torch.equal(got, want)


@pytest.mark.slow
def test_png_output_is_the_decode_clis_png(server, decoder, tmp_path: Path) -> None:
    lat, cap = latents(decoder.config, 5)[SIZES[1]]
    with client(server) as c:
        out = c.decode(lat, cap, seed=2, outputs=("png", "image"), request_id="png")
    want = decoder.decode(lat, cap, seed=2)
    assert torch.equal(torch.from_numpy(np.array(out["image"])), want)
    served = tmp_path / "served.png"
    served.write_bytes(out["png"][0])
    from PIL import Image

    with Image.open(served) as im:  # the request's provenance: the same chunk as pidtrt decode writes
        text = {"pid-trt": im.text["pid-trt"]}
    assert json.loads(text["pid-trt"])["seed"] == 2
    (path,) = write_images(want, tmp_path / "direct.png", text=text)
    assert out["png"] == [path.read_bytes()]
    with client(server) as c:  # the PNG alone: quantized where it was decoded, the same file
        alone = c.decode(lat, cap, seed=2, outputs=("png",), request_id="png")
    assert alone["png"] == out["png"] and "image" not in alone


def test_decode_server_honours_png_level_quality_and_bit_depth(server, decoder, tmp_path: Path) -> None:
    """`pidtrt decode --server` writes what `pidtrt decode` writes with the same encoding options:
    --png-level 9, .jpg --quality 80, --bit-depth 16 (the served provenance carried over)."""
    from pid_trt.io.encoders import OutputOptions
    from pid_trt.serve.remote import request_file

    gen = torch.Generator().manual_seed(6)
    lat = tmp_path / "lat.safetensors"
    write_latent_file(lat, torch.randn(1, 16, 2, 1, generator=gen), torch.randn(1, 8, 32, generator=gen))
    want = decoder.decode(read_latent_file(lat).latent, read_latent_file(lat).caption, seed=5)
    run = subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", "decode", lat, "--server", server.url, "--seed", "5",
         "--png-level", "9", "-o", tmp_path / "level9.png"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    from PIL import Image

    with Image.open(tmp_path / "level9.png") as im:
        text = dict(im.text)
    assert json.loads(text["pid-trt"])["seed"] == 5
    (level9,) = write_images(want, tmp_path / "direct9.png", OutputOptions(png_level=9), text=text)
    assert (tmp_path / "level9.png").read_bytes() == level9.read_bytes()
    (level1,) = write_images(want, tmp_path / "direct1.png", text=text)
    assert level1.read_bytes() != level9.read_bytes()  # the option changed the file
    with client(server) as c:
        for name, options in (
            ("q80.jpg", OutputOptions(quality=80)),
            ("deep.png", OutputOptions(bit_depth=16)),
        ):
            request_file(c, lat, tmp_path / name, seed=5, options=options)
            (direct,) = write_images(want, tmp_path / f"direct_{name}", options, text=text)
            assert (tmp_path / name).read_bytes() == direct.read_bytes(), name


@pytest.mark.slow
def test_concurrent_clients_two_sizes_with_malformed_requests(server, decoder) -> None:
    """4 clients x 25 requests, two sizes, every fifth one malformed: each good request gets
    the image of a direct decode (bit for bit when it ran alone, else within BATCH_TOL), each
    malformed one its own error in the CLI's words, and batches larger than 1 form."""
    config = decoder.config
    inputs = [latents(config, s) for s in range(2)]
    kinds = ("nan", "channels", "caption_width", "sigma")
    before = stats(server)
    results: dict[int, tuple[str, object]] = {}
    plan: dict[int, dict] = {}
    for i in range(100):  # client k sends i = k, k + 4, ...: the clients move through the sizes together
        size = SIZES[(i // 4) % 2]
        lat, cap = inputs[(i // 8) % 2][size]
        if i % 5 == 4:
            plan[i] = {"bad": kinds[(i // 5) % 4], **malformed(kinds[(i // 5) % 4], lat, cap)}
        else:
            plan[i] = {"latent": lat, "caption": cap, "seed": i % 3, "key": ((i // 8) % 2, size, i % 3)}

    def worker(k: int) -> None:
        from pid_trt.serve.client import ServeRequestError

        with client(server) as c:
            for i in range(k, 100, 4):
                req = plan[i]
                try:
                    out = c.decode(
                        req["latent"], req["caption"], degrade_sigma=req.get("degrade_sigma", 0.0),
                        seed=req.get("seed", 0), request_id=f"r{i}",
                    )  # fmt: skip
                    results[i] = ("ok", out["image"])
                except ServeRequestError as exc:
                    results[i] = (exc.kind, str(exc))
                except Exception as exc:  # recorded, so that nothing is lost silently
                    results[i] = ("client", repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert sorted(results) == list(range(100)), "requests lost"

    refs: dict[tuple, torch.Tensor] = {}
    exact = 0
    for i, req in plan.items():
        kind, value = results[i]
        if "bad" in req:
            assert kind == "invalid", (i, req["bad"], kind, value)
            assert value == cli_message(config, req, f"request r{i}"), (i, value)
            continue
        assert kind == "ok", (i, kind, value)
        key = req["key"]
        if key not in refs:
            refs[key] = decoder.decode(req["latent"], req["caption"], seed=req["seed"])
        got = torch.from_numpy(np.array(value))
        assert got.shape == refs[key].shape
        diff = (got - refs[key]).abs().max().item()
        assert diff <= BATCH_TOL, (i, diff)
        exact += diff == 0.0
    formed = stats(server)
    new = {b: formed.get(b, 0) - before.get(b, 0) for b in formed}
    assert any(b > 1 and n > 0 for b, n in new.items()), f"no batch larger than 1 formed: {new}"
    assert sum(b * n for b, n in new.items()) == 100, new
    print(f"batches formed (size: decodes): {new}; {exact} of 80 good images bit-identical to a lone decode")


@pytest.mark.slow
def test_bad_request_fails_alone_inside_a_batch(server, decoder) -> None:
    """Two good and two malformed requests sent together: one decode of 4 forms (checked on
    the server's statistics), the good ones get their images, the bad ones their errors."""
    from pid_trt.serve.client import ServeRequestError

    config = decoder.config
    lat, cap = latents(config, 9)[(32, 32)]
    # Triton batches only requests whose inputs have equal shapes: the malformed ones here
    # (a NaN, a sigma out of range) look like good ones until the model checks them.
    reqs = [
        {"latent": lat, "caption": cap, "seed": 1},
        malformed("nan", lat, cap),
        {"latent": lat, "caption": cap, "seed": 2},
        malformed("sigma", lat, cap),
    ]
    for _attempt in range(3):  # the batcher may split them when the machine stalls: bounded retries
        before = stats(server)
        barrier = threading.Barrier(4, timeout=30)
        results: dict[int, object] = {}

        def send(i: int, barrier=barrier, results=results) -> None:
            with client(server) as c:
                req = reqs[i]
                barrier.wait()
                try:
                    results[i] = c.decode(
                        req["latent"], req["caption"], degrade_sigma=req.get("degrade_sigma", 0.0),
                        seed=req.get("seed", 0), request_id=f"mix{i}",
                    )["image"]  # fmt: skip
                except ServeRequestError as exc:
                    results[i] = exc

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        after = stats(server)
        if after.get(4, 0) > before.get(4, 0):
            break
    else:
        pytest.fail(f"the four requests never formed one batch: {before} -> {after}")
    for i in (0, 2):
        want = decoder.decode(lat, cap, seed=reqs[i]["seed"])
        assert (torch.from_numpy(np.array(results[i])) - want).abs().max().item() <= BATCH_TOL
    for i in (1, 3):
        assert isinstance(results[i], ServeRequestError) and results[i].kind == "invalid"
        assert str(results[i]) == cli_message(config, reqs[i], f"request mix{i}")
    print(f"malformed request in a batch of 4: {results[1]}")


@pytest.mark.slow
def test_overload_is_refused_at_once_not_queued(server, decoder) -> None:
    """A burst of 24 requests at a server that holds 4 decoding + MAX_QUEUE waiting: the rest
    are refused immediately with the overload error; every request ends, none is lost."""
    from pid_trt.serve.client import ServeRequestError

    lat, cap = latents(decoder.config, 4)[SIZES[1]]
    n = 24
    barrier = threading.Barrier(n, timeout=60)
    results: dict[int, tuple[str, float, str]] = {}

    def send(i: int) -> None:
        with client(server) as c:
            barrier.wait()
            start = time.monotonic()
            try:
                c.decode(lat, cap, seed=i, request_id=f"burst{i}")
                results[i] = ("ok", time.monotonic() - start, "")
            except ServeRequestError as exc:
                results[i] = (exc.kind, time.monotonic() - start, str(exc))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    assert len(results) == n, "requests lost"
    kinds = [k for k, _, _ in results.values()]
    assert set(kinds) <= {"ok", "overload"}, results
    refused = [(t, m) for k, t, m in results.values() if k == "overload"]
    assert refused, f"no request refused with {n} sent at a queue of {MAX_QUEUE}: {kinds}"
    assert kinds.count("ok") >= MAX_QUEUE, kinds
    assert all(t < 10.0 for t, _ in refused), f"overload answers were slow: {[t for t, _ in refused]}"
    assert "Exceeds maximum queue size" in refused[0][1]


@pytest.mark.slow
def test_decode_many_files_through_the_server_and_resume(server, tmp_path: Path) -> None:
    src = tmp_path / "lats"
    src.mkdir()
    gen = torch.Generator().manual_seed(8)
    for k in range(3):
        write_latent_file(src / f"l{k}.safetensors", torch.randn(1, 16, 1, 1, generator=gen))
    (src / "broken.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pid_trt.cli.main", "decode", src, "-o", out, "--server", server.url,
           "--concurrency", "3", "--seed", "4"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 2, first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["l0.png", "l1.png", "l2.png"]
    assert "broken.safetensors" in first.stderr and "failed 1 of 4" in first.stdout
    (out / "l1.png").unlink()
    again = subprocess.run([*cmd, "--skip-existing"], capture_output=True, text=True, timeout=300)
    assert "decoded 1, skipped 2" in again.stdout, again.stdout + again.stderr
    assert (out / "l1.png").is_file()


@pytest.mark.slow
def test_bench_server_records_every_request(server, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", "bench", "--server", server.url, "--size", "32x32",
         "--concurrency", "1", "--concurrency", "3", "--requests", "6", "--json", out],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "pid_trt.bench.server/1"
    assert [r["concurrency"] for r in doc["records"]] == [1, 3]
    for r in doc["records"]:
        assert r["ok"] + sum(r["errors"].values()) == r["requests"] == 6 and r["lost"] == 0
        assert r["ok"] == 6 and r["latency_ms"]["p50"] > 0 and r["images_per_s"] > 0
        assert sum(int(b) * n for b, n in r["batches"].items()) == 6
    assert "| 32x32 | 3 | 6 | 6 |" in res.stdout
    png = subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", "bench", "--server", server.url, "--size", "32x32",
         "--concurrency", "2", "--requests", "4", "--server-output", "png", "--json", out],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert png.returncode == 0, png.stderr
    doc = json.loads(out.read_text())
    assert doc["meta"]["output"] == "png" and "requests ask for `png`" in png.stdout
    (r,) = doc["records"]
    assert r["output"] == "png" and r["ok"] == 4 and r["lost"] == 0 and not r["errors"]
    assert sum(int(b) * n for b, n in r["batches"].items()) == 4  # the stats counted every PNG answer


def tiled_requests(served) -> float:
    """``pid_tiled_requests_total`` summed over instances, from the Prometheus page."""
    with urllib.request.urlopen(served.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("pid_tiled_requests_total{")]
    assert lines, "no pid_tiled_requests_total metric"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


@pytest.mark.slow
def test_a_request_outside_the_envelope_is_answered_tiled(server, tmp_path: Path) -> None:
    """128x96 is outside the server's 64x64 envelope: answered in tiles, bit for bit
    Decoder.decode(tiles="auto") with the same envelope and seed; a request's own tiles win;
    with tiles off it gets the decode's one-line refusal as HTTP 400; the metric counts."""
    from pid_trt import Decoder
    from pid_trt.serve.client import ServeRequestError

    gen = torch.Generator().manual_seed(21)
    lat = torch.randn(1, 16, 3, 4, generator=gen).numpy()
    cap = torch.randn(1, 8, 32, generator=gen).numpy()
    before = tiled_requests(server)
    with client(server) as c:
        params = c.parameters()
        auto = c.decode(lat, cap, seed=5, request_id="tiled")["image"]
        grid = c.decode(lat, cap, seed=5, tiling={"tiles": "2x2", "tile_batch": 2})["image"]
        with pytest.raises(ServeRequestError) as err:
            c.decode(lat, cap, seed=5, request_id="off", tiling={"tiles": "off"})
    assert params["envelope"] == ENVELOPE and params["tiling"] == "--tiles auto --tile-batch 1"
    assert err.value.kind == "invalid" and "\n" not in str(err.value)  # HTTP 400
    assert str(err.value).startswith(
        "request off: 128x96 is outside the trained sizes of tiny (given) (64x64): decode it in tiles of a "
        "trained size (--tiles auto) or force one shot with --allow-untrained-size"
    )
    with Decoder.load(backbone="tiny", random_weights=True, envelope=ENVELOPE) as dec:
        assert dec.plan(96, 128).tiled
        assert torch.equal(torch.from_numpy(np.array(auto)), dec.decode(lat, cap, seed=5))
        assert torch.equal(
            torch.from_numpy(np.array(grid)), dec.decode(lat, cap, seed=5, tiles="2x2", tile_batch=2)
        )
    assert tiled_requests(server) == before + 2


#: A tiling the server's auto plan does not choose for 128x96 (auto: 3x2 tiles of 64x64).
TILING_FLAGS = ("--tiles", "2x2", "--tile-size", "96x64", "--tile-batch", "2")


@pytest.mark.slow
def test_tiling_options_travel_with_decode_server_request_and_pid_client(server, tmp_path: Path) -> None:
    """`pidtrt decode --server` / `pidtrt request` with tiling options, and PidClient's tiling
    keywords, write the PNG bytes of a local `pidtrt decode` with the same options and seed
    (and not those of the server's own plan); `--tiles off` outside the envelope gets the
    server's one-line refusal, exit 2, nothing written."""
    from pid_trt.serve.client import ServeRequestError

    gen = torch.Generator().manual_seed(22)
    lat_t, cap_t = torch.randn(1, 16, 3, 4, generator=gen), torch.randn(1, 8, 32, generator=gen)
    lat = tmp_path / "lat.safetensors"
    write_latent_file(lat, lat_t, cap_t, 0.0)
    common = [sys.executable, "-m", "pid_trt.cli.main"]

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([*common, *map(str, args)], capture_output=True, text=True, timeout=300)

    local = run("decode", lat, "--backbone", "tiny", "--random-weights", "--seed", "5", *TILING_FLAGS,
                "-o", tmp_path / "local.png")  # fmt: skip
    assert local.returncode == 0, local.stderr
    before = tiled_requests(server)
    remote = run(
        "decode", lat, "--server", server.url, "--seed", "5", *TILING_FLAGS, "-o", tmp_path / "remote.png"
    )
    assert remote.returncode == 0, remote.stdout + remote.stderr
    req = run("request", lat, "--url", server.url, "--seed", "5", *TILING_FLAGS, "-o", tmp_path / "req.png")
    assert req.returncode == 0, req.stderr
    plain = run("request", lat, "--url", server.url, "--seed", "5", "-o", tmp_path / "plain.png")
    assert plain.returncode == 0, plain.stderr
    with client(server) as c:
        kw = c.decode(
            lat_t.numpy(),
            cap_t.numpy(),
            seed=5,
            outputs=("png",),
            tiles="2x2",
            tile_size="96x64",
            tile_batch=2,
        )["png"]
        with pytest.raises(ServeRequestError) as err:
            c.decode(lat_t.numpy(), cap_t.numpy(), seed=5, tiles="off", tile_overlap="8")
    want = (tmp_path / "local.png").read_bytes()
    assert (tmp_path / "remote.png").read_bytes() == want
    assert (tmp_path / "req.png").read_bytes() == want
    assert kw == [want]
    assert (tmp_path / "plain.png").read_bytes() != want  # the server's auto plan: another grid
    assert tiled_requests(server) == before + 4
    assert err.value.kind == "invalid" and "parameter tile_overlap '8': expected an integer" in str(err.value)

    written = sorted(p.name for p in tmp_path.iterdir())
    off = run("request", lat, "--url", server.url, "--tiles", "off", "-o", tmp_path / "off.png")
    assert off.returncode == 2, off.stdout + off.stderr
    assert off.stderr.count("\n") == 1 and "Traceback" not in off.stderr
    assert off.stderr.startswith(
        f"error: {lat}: request lat.safetensors: 128x96 is outside the trained sizes of tiny (given) (64x64): "
        "decode it in tiles of a trained size (--tiles auto) or force one shot with --allow-untrained-size"
    ), off.stderr
    assert off.stderr.rstrip().endswith("(invalid)") and off.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == written


@pytest.mark.slow
def test_hostile_request_id_and_parameters_come_back_escaped(server, decoder) -> None:
    """A request id and a tiling value carrying terminal escapes, CR, BEL and U+202E: refused
    as a malformed request, the answer's error one printable line naming both, escaped."""
    from pid_trt.serve.client import ServeRequestError
    from tests.message_helpers import assert_printable_line

    lat, cap = latents(decoder.config, 3)[SIZES[0]]
    with client(server) as c, pytest.raises(ServeRequestError) as info:
        c.decode(lat, cap, request_id="id\x1b[2J\r\u202e", tiles="\x1b[31m\x07")
    assert info.value.kind == "invalid"
    assert_printable_line(
        str(info.value), names=("request id\\x1b[2J\\r\\u202e:", "--tiles '\\x1b[31m\\x07'")
    )
    with client(server) as c:  # the server still answers
        assert c.decode(lat, cap, seed=1)["image"] is not None


@pytest.mark.slow
def test_png_and_float_requests_of_concurrent_clients_through_the_response_sender(
    server, decoder, tmp_path: Path
) -> None:
    """Requests answered by the response sender after execute returned: 4 float clients and
    a PNG client at 32x32 (batched together, so their PNGs are encoded while the next batch
    decodes), a PNG client alone at 64x32, and malformed requests among them. Every request
    gets exactly its answer: the 64x32 PNG (decoded alone) is the file `pidtrt decode` writes,
    byte for byte; a batched PNG is the file of its own float image, within BATCH_TOL of a lone
    decode; a malformed one its error in the CLI's words."""
    from pid_trt.serve.client import ServeRequestError

    config = decoder.config
    gen = torch.Generator().manual_seed(31)
    small = (torch.randn(1, 16, 1, 1, generator=gen).numpy(), torch.randn(1, 8, 32, generator=gen).numpy())
    tall = (torch.randn(1, 16, 2, 1, generator=gen).numpy(), torch.randn(1, 8, 32, generator=gen).numpy())
    rounds = 4
    plan: dict[str, tuple[tuple, int, tuple[str, ...]]] = {}
    for r in range(rounds):
        for k in range(4):
            plan[f"f{k}-{r}"] = (small, 10 * k + r, ("image",))
        plan[f"p-{r}"] = (small, 100 + r, ("png", "image"))
        plan[f"t-{r}"] = (tall, 200 + r, ("png",))
    bad = malformed("nan", *small)
    clients = [[f"f{k}-{r}" for r in range(rounds)] for k in range(4)]
    clients += [[f"p-{r}" for r in range(rounds)] + ["bad"], [f"t-{r}" for r in range(rounds)]]
    barrier = threading.Barrier(len(clients), timeout=60)
    results: dict[str, object] = {}

    def worker(names: list[str]) -> None:
        with client(server) as c:
            barrier.wait()
            for name in names:
                try:
                    if name == "bad":
                        c.decode(bad["latent"], bad["caption"], request_id=name, outputs=("png",))
                        results[name] = "answered"
                        continue
                    (lat, cap), seed, outputs = plan[name]
                    results[name] = c.decode(lat, cap, seed=seed, outputs=outputs, request_id=name)
                except ServeRequestError as exc:
                    results[name] = exc
                except Exception as exc:  # recorded, so that nothing is lost silently
                    results[name] = repr(exc)

    threads = [threading.Thread(target=worker, args=(names,)) for names in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert sorted(results) == sorted([*plan, "bad"]), "requests lost"
    assert isinstance(results["bad"], ServeRequestError) and results["bad"].kind == "invalid"
    assert str(results["bad"]) == cli_message(config, bad, "request bad")
    from PIL import Image

    for name, ((lat, cap), seed, outputs) in plan.items():
        out = results[name]
        assert isinstance(out, dict) and sorted(out) == sorted(outputs), (name, out)
        want = decoder.decode(lat, cap, seed=seed)
        if "image" in out:
            assert (torch.from_numpy(np.array(out["image"])) - want).abs().max().item() <= BATCH_TOL, name
        if "png" in out:
            served = tmp_path / f"{name}.png"
            served.write_bytes(out["png"][0])
            with Image.open(served) as im:
                text = {"pid-trt": im.text["pid-trt"]}
            assert json.loads(text["pid-trt"])["seed"] == seed
            image = want if name.startswith("t-") else torch.from_numpy(np.array(out["image"]))
            (direct,) = write_images(image, tmp_path / f"direct-{name}.png", text=text)
            assert out["png"] == [direct.read_bytes()], name


@pytest.mark.slow
def test_sigint_stops_the_server_and_leaves_nothing(server) -> None:
    """Stopped while PNG requests are in flight: three requests of three sizes (three decodes,
    one after another), sent together, SIGINT once the first is answered; the other two are
    still answered with their PNGs (the stop waits for the answers in flight)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(41)
    cap = torch.randn(1, 8, 32, generator=gen).numpy()
    shapes = ((2, 2), (2, 1), (1, 2))  # latent cells: 64x64, 32x64, 64x32 (inside the envelope)
    results: dict[int, object] = {}
    answered = threading.Event()
    barrier = threading.Barrier(3, timeout=60)

    def send(k: int) -> None:
        lat = torch.randn(1, 16, *shapes[k], generator=torch.Generator().manual_seed(k)).numpy()
        try:
            with client(server) as c:
                barrier.wait()
                results[k] = c.decode(lat, cap, seed=k, outputs=("png",), request_id=f"stop{k}")["png"]
        except Exception as exc:  # recorded: a request lost to the stop fails the test below
            results[k] = exc
        answered.set()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    assert answered.wait(REQUEST_TIMEOUT_S), "no request answered"
    code = stop_server(server, signal.SIGINT)
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S)
    assert code == 0, server.stderr()
    assert sorted(results) == [0, 1, 2]
    for k, (h, w) in enumerate(shapes):
        assert isinstance(results[k], list), (k, results[k])
        with Image.open(io.BytesIO(results[k][0])) as im:
            assert im.size == (32 * w, 32 * h)
    assert_nothing_left(server)


@pytest.mark.slow
def test_sigterm_stops_a_two_instance_server_and_leaves_nothing(tmp_path: Path, decoder) -> None:
    served = start_server(tmp_path, "--instances", "2", "--max-batch", "2")
    try:
        lat, cap = latents(decoder.config, 1)[(32, 32)]
        with client(served) as c:
            got = c.decode(lat, cap, seed=3)["image"]
        # two instances share the 2 cores: torch runs 1 thread each, so sums may round differently
        diff = (torch.from_numpy(np.array(got)) - decoder.decode(lat, cap, seed=3)).abs().max().item()
        assert diff <= BATCH_TOL
    finally:
        code = stop_server(served, signal.SIGTERM)
    assert code == 0, served.stderr()
    assert_nothing_left(served)
