"""What an answer of ``pidtrt serve`` costs beside its decode, per output and encoding.

    pidtrt serve --backbone tiny --random-weights --http-port 8000 &
    python benchmarks/serve_answers.py --url http://127.0.0.1:8000 --size 2048 --runs 2

For each way of asking (plain JSON ``image`` floats, plain JSON ``png`` as base64, binary
``image``, binary ``png``), one request of a random latent of that size (same seed each
time): the wall time at the client (the answer received, read and parsed), the server's
decode time (Triton's ``compute_infer`` for that request, which includes the PNG encoding
in the model), and the answer's bytes. Plain JSON is what ``curl`` gets; the project's
clients (``pidtrt request``, ``pidtrt decode --server``, ``PidClient``) ask for binary.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request

import numpy as np


def _stats(url: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{url}/v2/models/pid_decoder/stats", timeout=60) as resp:
        entry = json.load(resp)["model_stats"][0]["inference_stats"]
    return int(entry["compute_infer"]["ns"]), int(entry["success"]["count"])


def _params(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v2/models/pid_decoder/config", timeout=60) as resp:
        doc = json.load(resp)
    return {k: v["string_value"] for k, v in doc.get("parameters", {}).items()}


def _body(lat: np.ndarray, cap: np.ndarray, output: str, binary: bool) -> bytes:
    inputs = [
        {"name": "latent", "datatype": "FP32", "shape": list(lat.shape), "data": lat.reshape(-1).tolist()},
        {"name": "caption_embedding", "datatype": "FP32", "shape": list(cap.shape), "data": cap.reshape(-1).tolist()},
    ]  # fmt: skip
    out = {"name": output, "parameters": {"binary_data": binary}}
    params = {"png_encoding": "binary"} if binary and output == "png" else {}
    return json.dumps({"inputs": inputs, "outputs": [out], "parameters": params}).encode()


def measure(url: str, size: int, output: str, binary: bool) -> dict:
    p = _params(url)
    ppl = int(p["pixels_per_latent"])
    gen = np.random.default_rng(0)
    lat = gen.standard_normal((1, int(p["latent_channels"]), size // ppl, size // ppl), dtype=np.float32)
    cap = gen.standard_normal((1, int(p["txt_max_length"]), int(p["txt_embed_dim"])), dtype=np.float32)
    body = _body(lat, cap, output, binary)
    ns0, n0 = _stats(url)
    req = urllib.request.Request(
        f"{url}/v2/models/pid_decoder/infer", data=body, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=3600) as resp:
        raw = resp.read()
        header = int(resp.headers.get("Inference-Header-Content-Length", len(raw)))
    received = time.perf_counter()
    doc = json.loads(raw[:header])
    parsed = time.perf_counter()
    if not binary and output == "image":
        np.asarray(doc["outputs"][0]["data"], dtype=np.float32)
    done = time.perf_counter()
    ns1, n1 = _stats(url)
    assert n1 == n0 + 1, "another request ran meanwhile"
    decode_s = (ns1 - ns0) / 1e9
    return {
        "size": f"{size}x{size}", "output": output, "answer": "binary" if binary else "JSON",
        "answer_mb": round(len(raw) / 1e6, 2), "decode_s": round(decode_s, 3),
        "received_s": round(received - start, 3), "parsed_s": round(done - start, 3),
        "beyond_decode_s": round(done - start - decode_s, 3), "json_parse_s": round(done - received, 3),
        "parse_header_s": round(parsed - received, 3),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        for output, binary in (("image", True), ("png", True), ("png", False), ("image", False)):
            rows.append(measure(args.url, args.size, output, binary))
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
