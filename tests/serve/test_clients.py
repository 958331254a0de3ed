"""``pidtrt serve`` as clients nobody here wrote see it: plain HTTP + the standard ``json``
module (no binary extension), ``tritonclient.http`` in JSON and in binary mode, and
``tritonclient.grpc``. Each gets the image ``pidtrt decode`` writes for the same latent and
seed, and its own one-line error for a bad request; every answer to a JSON request is
valid JSON; each malformed request gets the answer the README's table lists; a repeated
prompt is answered from the caption cache (the server's metrics count it).

One server for the module (tiny preset, random weights, the tiny Gemma as text encoder),
``--max-batch 1``: every request is decoded alone, so images are bit for bit those of a
lone decode (batched, torch on the CPU differs by ~1e-5: tests/serve/test_serve.py).
"""

from __future__ import annotations

import base64
import json
import math
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pid_trt.io import write_latent_file
from tests.serve.conftest import REQUEST_TIMEOUT_S, start_server, stop_server

# One Triton server for the module (~80 s to start on 2 cores, 145 s in all): full suite only.
pytestmark = pytest.mark.slow

SEED = 7
#: A malformed request every client sends: sigma out of range (checked by our model, not by Triton).
BAD_SIGMA = 1.5
#: What our model answers to it (the words of `pidtrt decode`); the request id prefixes it.
BAD_SIGMA_WORDS = "degrade_sigma 1.5 is outside [0, 1]"
#: How far a caption cached by the server may be from one encoded in this process (the same
#: tiny Gemma in fp32 on the CPU; in practice identical).
PROMPT_TOL = 1e-5
PROMPT = "a red fox jumps over the lazy brown dog"


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    from tests.text_helpers import make_tiny_gemma

    return make_tiny_gemma(tmp_path_factory.mktemp("gemma") / "gemma")


@pytest.fixture(scope="module")
def server(tmp_path_factory, gemma):
    served = start_server(
        tmp_path_factory.mktemp("serve"),
        "--max-batch",
        "1",
        "--text-encoder",
        str(gemma),
        "--caption-cache",
        "4",
        "--caption-store",  # its own: the cache counters below start from an empty store
        str(tmp_path_factory.mktemp("server-caption-store")),
        "--tiles",  # one shot at any size: the too-large request is refused (503), not tiled
        "off",
    )
    yield served
    stop_server(served, signal.SIGINT if served.proc.poll() is None else signal.SIGKILL)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """A latent file and what `pidtrt decode` of it writes at SEED: image [1, 3, 64, 64] and PNG bytes."""
    tmp = tmp_path_factory.mktemp("reference")
    gen = torch.Generator().manual_seed(25)
    latent = torch.randn(1, 16, 2, 2, generator=gen)
    path = tmp / "lat.safetensors"
    write_latent_file(path, latent)
    out = {}
    for suffix in ("safetensors", "png"):
        res = subprocess.run(
            [sys.executable, "-m", "pid_trt.cli.main", "decode", path, "--backbone", "tiny", "--random-weights",
             "--seed", str(SEED), "-o", tmp / f"ref.{suffix}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    out["latent"] = latent.numpy()
    out["image"] = load_file(str(tmp / "ref.safetensors"))["image"].numpy()
    out["png"] = (tmp / "ref.png").read_bytes()
    return out


def post(served, body: bytes | dict, path: str = "/v2/models/pid_decoder/infer") -> tuple[int, str, bytes]:
    """POST ``body`` as JSON with urllib: (HTTP status, Content-Type, raw body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(served.url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def tensor(name: str, array: np.ndarray | list, datatype: str) -> dict:
    array = np.asarray(array)
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.reshape(-1).tolist(),
    }


def json_request(latent: np.ndarray, seed: int = SEED, **extra) -> dict:
    body = {"inputs": [tensor("latent", latent, "FP32"), tensor("seed", [[seed]], "INT64")]}
    for name, value in extra.items():
        body[name] = value
    return body


def strict_json(raw: bytes) -> dict:
    """Parse as any standard client does: UTF-8, then JSON (no NaN, no raw bytes)."""

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


def outputs_of(doc: dict) -> dict[str, dict]:
    return {o["name"]: o for o in doc["outputs"]}


def max_diff(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.float32) - want).max())


# ------------------------------------------------------------------------- plain HTTP + json
def test_plain_json_without_outputs_is_valid_json_with_every_output(server, reference) -> None:
    """No `outputs` list (KServe v2: every output): image as numbers, png as base64 text."""
    status, ctype, raw = post(server, json_request(reference["latent"]))
    assert status == 200 and ctype == "application/json", raw[:300]
    outs = outputs_of(strict_json(raw))
    assert set(outs) == {"image", "png"}
    image = np.array(outs["image"]["data"], dtype=np.float32).reshape(outs["image"]["shape"])
    assert max_diff(image, reference["image"]) == 0.0
    assert outs["png"]["datatype"] == "BYTES" and outs["png"]["shape"] == [1, 1]
    assert base64.b64decode(outs["png"]["data"][0], validate=True) == reference["png"]


def test_plain_json_png_only(server, reference) -> None:
    status, _, raw = post(server, json_request(reference["latent"], outputs=[{"name": "png"}]))
    assert status == 200
    outs = outputs_of(strict_json(raw))
    assert set(outs) == {"png"}
    assert base64.b64decode(outs["png"]["data"][0], validate=True) == reference["png"]


def test_plain_json_error_is_one_line_json(server, reference) -> None:
    body = json_request(reference["latent"])
    body["id"] = "plain-1"
    body["inputs"].append(tensor("degrade_sigma", [[BAD_SIGMA]], "FP32"))
    status, _, raw = post(server, body)
    assert status == 400
    assert strict_json(raw) == {"error": f"request plain-1: {BAD_SIGMA_WORDS}"}


# ------------------------------------------------------------------------- tritonclient.http
def http_inputs(http, latent: np.ndarray, binary: bool, sigma: float = 0.0) -> list:
    inputs = []
    for name, array, dtype in (
        ("latent", latent.astype(np.float32), "FP32"),
        ("degrade_sigma", np.array([[sigma]], np.float32), "FP32"),
        ("seed", np.array([[SEED]], np.int64), "INT64"),
    ):
        tensor_in = http.InferInput(name, list(array.shape), dtype)
        tensor_in.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor_in)
    return inputs


def test_tritonclient_http_json_mode(server, reference) -> None:
    import tritonclient.http as http

    with http.InferenceServerClient(f"127.0.0.1:{server.http}", network_timeout=REQUEST_TIMEOUT_S) as client:
        outputs = [http.InferRequestedOutput(n, binary_data=False) for n in ("image", "png")]
        result = client.infer("pid_decoder", http_inputs(http, reference["latent"], False), outputs=outputs)
        assert max_diff(result.as_numpy("image"), reference["image"]) == 0.0
        assert base64.b64decode(result.as_numpy("png")[0, 0]) == reference["png"]
        with pytest.raises(Exception) as err:
            client.infer(
                "pid_decoder",
                http_inputs(http, reference["latent"], False, BAD_SIGMA),
                request_id="http-json",
            )
    assert err.value.status() == "400"
    assert err.value.message() == f"request http-json: {BAD_SIGMA_WORDS}"


def test_tritonclient_http_binary_mode(server, reference) -> None:
    """Binary-data extension: png_encoding=binary gives the PNG's own bytes; without it, base64."""
    import tritonclient.http as http

    with http.InferenceServerClient(f"127.0.0.1:{server.http}", network_timeout=REQUEST_TIMEOUT_S) as client:
        outputs = [http.InferRequestedOutput(n, binary_data=True) for n in ("image", "png")]
        inputs = http_inputs(http, reference["latent"], True)
        raw = client.infer("pid_decoder", inputs, outputs=outputs, parameters={"png_encoding": "binary"})
        assert max_diff(raw.as_numpy("image"), reference["image"]) == 0.0
        assert raw.as_numpy("png")[0, 0] == reference["png"]
        text = client.infer("pid_decoder", inputs, outputs=outputs)
        assert base64.b64decode(text.as_numpy("png")[0, 0]) == reference["png"]
        with pytest.raises(Exception) as err:
            client.infer(
                "pid_decoder", http_inputs(http, reference["latent"], True, BAD_SIGMA), request_id="http-bin"
            )
    assert err.value.status() == "400"
    assert err.value.message() == f"request http-bin: {BAD_SIGMA_WORDS}"


# ------------------------------------------------------------------------- tritonclient.grpc
def test_tritonclient_grpc(server, reference) -> None:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    try:

        def inputs(sigma: float) -> list:
            out = []
            for name, array, dtype in (
                ("latent", reference["latent"].astype(np.float32), "FP32"),
                ("degrade_sigma", np.array([[sigma]], np.float32), "FP32"),
                ("seed", np.array([[SEED]], np.int64), "INT64"),
            ):
                tensor_in = grpc.InferInput(name, list(array.shape), dtype)
                tensor_in.set_data_from_numpy(array)
                out.append(tensor_in)
            return out

        outputs = [grpc.InferRequestedOutput(n) for n in ("image", "png")]
        result = client.infer(
            "pid_decoder", inputs(0.0), outputs=outputs, parameters={"png_encoding": "binary"},
            client_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        assert max_diff(result.as_numpy("image"), reference["image"]) == 0.0
        assert result.as_numpy("png")[0, 0] == reference["png"]
        with pytest.raises(Exception) as err:
            client.infer(
                "pid_decoder", inputs(BAD_SIGMA), request_id="grpc-1", client_timeout=REQUEST_TIMEOUT_S
            )
    finally:
        client.close()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.value.message() == f"request grpc-1: {BAD_SIGMA_WORDS}"


def test_pid_client_gets_the_png_bytes(server, reference) -> None:
    from pid_trt.serve.client import PidClient

    with PidClient(server.url, timeout_s=REQUEST_TIMEOUT_S) as client:
        out = client.decode(reference["latent"], seed=SEED, outputs=("image", "png"))
    assert max_diff(np.asarray(out["image"]), reference["image"]) == 0.0
    assert out["png"] == [reference["png"]]


def test_model_config_says_what_each_output_is(server) -> None:
    with urllib.request.urlopen(f"{server.url}/v2/models/pid_decoder/config", timeout=10) as resp:
        config = json.load(resp)
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["png_encoding"] == "base64" and params["caption_cache"] == "4"
    assert "base64" in params["output_png"] and "[-1, 1]" in params["output_image"]
    with urllib.request.urlopen(f"{server.url}/v2/models/pid_decoder", timeout=10) as resp:
        meta = json.load(resp)
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("image", "FP32"), ("png", "BYTES")]


# ------------------------------------------------------------------------- malformed requests
def _lat(channels: int = 16, h: int = 2, w: int = 2) -> dict:
    return tensor("latent", np.full((1, channels, h, w), 0.1, np.float32), "FP32")


def _too_large_side() -> int:
    """Latent cells per side of a tiny-preset output whose decode does not fit this machine's
    memory: 160 (5120x5120, estimated 36.7 GiB on the CPU), more where the RAM is larger."""
    total_gib = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total_gib = int(line.split()[1]) / 2**20
    return max(160, math.ceil(160 * math.sqrt(1.5 * total_gib / 36.7)))


_TOO_LARGE = _too_large_side()
#: (case, body, HTTP status, words of the error, who answers) as measured; the README's table.
MALFORMED = [
    ("not JSON", b"{inputs: oops", 500, "failed to parse the request JSON buffer", "triton"),
    ("shape larger than data", {"inputs": [{**_lat(), "shape": [1, 16, 2, 3]}]}, 500,
     "Shape does not match true shape of 'data' field", "triton"),
    ("text in FP32 data", {"inputs": [{**_lat(), "data": ["x"] * 64}]}, 500,
     "attempt to access JSON non-number as double", "triton"),
    ("latent as FP64", {"inputs": [{**_lat(), "datatype": "FP64"}]}, 400,
     "inference input 'latent' data-type is 'FP64', but model 'pid_decoder' expects 'FP32'", "triton"),
    ("latent [1, 16, 4] (rank 3)", {"inputs": [{**_lat(), "shape": [1, 16, 4]}]}, 400,
     "unexpected shape for input 'latent'", "triton"),
    ("unknown input", {"inputs": [_lat(), tensor("foo", [[1.0]], "FP32")]}, 400,
     "unexpected inference input 'foo'", "triton"),
    ("unknown output", {"inputs": [_lat()], "outputs": [{"name": "jpeg"}]}, 400,
     "unexpected inference output 'jpeg'", "triton"),
    ("batch over --max-batch", {"inputs": [_lat(16, 1, 1) | {"shape": [2, 16, 1, 1], "data": [0.1] * 32}]}, 400,
     "inference request batch-size must be <= 1", "triton"),
    ("no latent", {"inputs": [tensor("seed", [[1]], "INT64")]}, 400,
     "request: no input 'latent'; expected FP32 [B, C, h, w]", "model"),
    ("19 latent channels", {"inputs": [_lat(19)]}, 400,
     "request: latent has 19 channels, expected 16 for this net (wrong backbone?)", "model"),
    ("empty latent", {"inputs": [_lat(16, 0, 0)]}, 400,
     "request: latent has shape [1, 16, 0, 0] with a zero dimension (empty tensor)", "model"),
    ("NaN in latent", b'{"inputs":[{"name":"latent","shape":[1,16,1,1],"datatype":"FP32","data":[NaN'
     + b",0.1" * 15 + b"]}]}", 400, "request: tensor 'latent' has 1 NaN/Inf value(s)", "model"),
    ("degrade_sigma 1.5", {"inputs": [_lat(), tensor("degrade_sigma", [[1.5]], "FP32")]}, 400,
     "request: degrade_sigma 1.5 is outside [0, 1]", "model"),
    ("caption width 31", {"inputs": [_lat(), tensor("caption_embedding", np.zeros((1, 8, 31)), "FP32")]}, 400,
     "request: caption_embedding has width 31, expected 32 (txt_embed_dim)", "model"),
    ("prompt and caption", {"inputs": [_lat(), tensor("caption_embedding", np.zeros((1, 8, 32)), "FP32"),
                                       tensor("prompt", [["a fox"]], "BYTES")]}, 400,
     "request: give caption_embedding or prompt, not both", "model"),
    ("png_encoding hex", {"inputs": [_lat()], "outputs": [{"name": "png"}], "parameters": {"png_encoding": "hex"}},
     400, "request: parameter png_encoding 'hex': expected 'base64'", "model"),
    ("output too large for memory", {"inputs": [_lat(16, _TOO_LARGE, _TOO_LARGE)], "outputs": [{"name": "png"}]},
     503, f"decode of batch 1 at {32 * _TOO_LARGE}x{32 * _TOO_LARGE}", "model"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "status", "words", "who"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_its_measured_answer(server, case, body, status, words, who) -> None:
    got, ctype, raw = post(server, body)
    doc = strict_json(raw)
    assert (got, list(doc)) == (status, ["error"]), (case, got, raw[:300])
    message = doc["error"]
    assert words in message and "\n" not in message, (case, message)
    if who == "model":  # our model names the request first, as `pidtrt decode` names the file
        assert message.startswith(("request", "decode of")), message


# ------------------------------------------------------------------------- caption cache
def cache_counts(served) -> tuple[float, float]:
    """(hits, misses) of the caption cache, summed over instances, from the Prometheus page."""
    with urllib.request.urlopen(served.metrics_url, timeout=10) as resp:
        lines = resp.read().decode().splitlines()

    def total(name: str) -> float:
        return sum(float(line.rpartition(" ")[2]) for line in lines if line.startswith(name + "{"))

    return total("pid_caption_cache_hits_total"), total("pid_caption_cache_misses_total")


def test_repeated_prompt_is_served_from_the_cache(server, reference, gemma) -> None:
    """The second request of a prompt does not run the encoder (the server's counters say so)
    and gets the same image; that image is a direct decode of the prompt's embedding."""
    from pid_trt import Decoder

    body = json_request(reference["latent"], outputs=[{"name": "image"}])
    body["inputs"].append(tensor("prompt", [[PROMPT]], "BYTES"))
    images = []
    counts = [cache_counts(server)]
    for _ in range(2):
        status, _, raw = post(server, body)
        assert status == 200, raw[:300]
        out = outputs_of(strict_json(raw))["image"]
        images.append(np.array(out["data"], np.float32).reshape(out["shape"]))
        counts.append(cache_counts(server))
    assert counts[1][1] - counts[0][1] == 1 and counts[1][0] == counts[0][0]  # first: a miss
    assert counts[2][0] - counts[1][0] == 1 and counts[2][1] == counts[1][1]  # then: a hit
    assert max_diff(images[1], images[0]) == 0.0
    with Decoder.load(backbone="tiny", random_weights=True, text_encoder=gemma) as dec:
        want = dec.decode(reference["latent"], prompt=PROMPT, seed=SEED).numpy()
    assert max_diff(images[0], want) <= PROMPT_TOL
