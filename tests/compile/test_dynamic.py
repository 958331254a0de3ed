"""Dynamic-shape graphs and engines (one pair for a range of sizes and batches), end to end.

Three real exports run at once, as a user runs them (the CLI, one process each): the v1 and
v1.5 golden networks (fp32, their weights written as checkpoints) for ONNX Runtime parity at
several sizes and batches, and ``pidtrt build --dynamic`` of the tiny preset (bf16) for a real
TensorRT-RTX engine pair. The tiny config is the v1 golden config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pid_trt.buckets import Bucket, ShapeRange
from pid_trt.config import Precision
from pid_trt.stores.exports import find_export
from pid_trt.stores.keys import ExportKey, weights_id
from tests.conftest import golden_case, require
from tests.engine_helpers import REPO, built_store, manifests, pidtrt

RANGE = ShapeRange((64, 128, 256), (64, 128, 256), (1, 1, 2))
RANGE_ARGS = ("--min-size", "64x64", "--opt-size", "128x128", "--max-size", "256x256")
#: Velocity tolerance of the fp32 dynamic graph on ONNX Runtime (docs/design.md §5: <= 1e-3 fp32).
ATOL = 1e-3
#: (height, width, batch) run through one graph per case; None: the golden file's own inputs.
SIZES = {
    "v1_flux": [None, (64, 96, 2), (160, 224, 1), (80, 112, 2)],
    "v15_flux2_unpatchify": [None, (128, 192, 2), (96, 160, 1)],
}
GOLDEN = {"v1_flux": ["v1_flux_square"], "v15_flux2_unpatchify": ["v15_flux2_unpatchify"]}


def _golden_checkpoint(stem: str, out: Path) -> tuple[Path, Path]:
    """A golden network's weights as a safetensors checkpoint + its net config JSON."""
    from safetensors.torch import save_file

    from pid_trt.verify.golden import load_golden

    case = load_golden(golden_case(stem))
    ckpt, cfg = out / f"{stem}.safetensors", out / f"{stem}.json"
    save_file({k: v.contiguous() for k, v in case.model.state_dict().items()}, str(ckpt))
    cfg.write_text(json.dumps(case.config.to_upstream()))
    return ckpt, cfg


@pytest.fixture(scope="session")
def dynamic(tmp_path_factory):
    """Run the three CLI jobs in parallel; returns their folders and outputs."""
    require("onnxruntime")
    require("tensorrt_rtx")
    root = tmp_path_factory.mktemp("dynamic")
    jobs, ckpts = {}, {}
    for case, stems in GOLDEN.items():
        ckpt, cfg = _golden_checkpoint(stems[0], root)
        ckpts[case] = ckpt
        jobs[case] = ["export", "--net-config", str(cfg), "--checkpoint", str(ckpt), "--dynamic", *RANGE_ARGS,
                      "--batch-range", "1:1:2", "--export-dir", str(root / "export")]  # fmt: skip
    jobs["tiny"] = ["build", "--backbone", "tiny", "--random-weights", "--dynamic", "--precision", "bf16",
                    "--engine-dir", str(root / "engines"), "--export-dir", str(root / "export-bf16")]  # fmt: skip
    env = dict(os.environ, COLUMNS="200")
    procs = {
        name: (subprocess.Popen([sys.executable, "-m", "pid_trt.cli.main", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.perf_counter())
        for name, args in jobs.items()
    }  # fmt: skip
    results = {}
    for name, (proc, start) in procs.items():
        out, err = proc.communicate(timeout=900)
        results[name] = (proc.returncode, out, err, time.perf_counter() - start)
        print(f"\n[dynamic] {name}: rc {proc.returncode}, {results[name][3]:.0f} s")
    for name, (rc, _out, err, _) in results.items():
        assert rc == 0, f"{name}: {err[-2000:]}"
    return {"root": root, "results": results, "checkpoints": ckpts}


def _export_of(dynamic, case: str):
    from pid_trt.checkpoints import file_sha256
    from pid_trt.verify.golden import load_golden

    config = load_golden(golden_case(GOLDEN[case][0])).config
    wid = weights_id(checkpoint_sha256=file_sha256(dynamic["checkpoints"][case]))
    key = ExportKey.create(config, wid, RANGE.opt_bucket, Precision.FP32, 1, shape_range=RANGE)
    found = find_export(key, dynamic["root"] / "export")
    assert found is not None, f"no dynamic export of {case}"
    return found


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_dynamic_graph_is_symbolic_and_has_fp32_islands(dynamic, case):
    from pid_trt.compile.onnx_graph import inspect_graph

    export = _export_of(dynamic, case)
    import onnx

    for path, name in ((export.prepare, "latent"), (export.step, "x")):
        model = onnx.load(str(path), load_external_data=False)
        dims = {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input
        }
        assert all(isinstance(d, str) for d in dims[name][:1] + dims[name][2:]), dims  # B, H, W symbolic
        report = inspect_graph(path)
        assert report.float64 == () and report.non_fp32_islands() == {}, (
            report.float64,
            report.island_dtypes,
        )
    step = inspect_graph(export.step)
    assert step.attention.value == "Attention" and step.attention_nodes == 6
    assert {"Sin", "Cos", "Range"} <= set(step.ops)  # RoPE from the runtime size, in the graph


def _reference(case: str, size, seed: int):
    """(inputs, expected velocity) for one size: the golden file's, or the torch reference's."""
    from pid_trt.verify.golden import load_golden

    if size is None:
        return None
    golden = load_golden(golden_case(GOLDEN[case][0]))
    config, model = golden.config, golden.model.eval()
    h, w, b = size
    g = torch.Generator().manual_seed(seed)
    px = config.pixels_per_latent
    ins = {
        "x": torch.randn(b, 3, h, w, generator=g),
        "t": torch.full((b,), 634.0),
        "y": torch.randn(b, config.txt_max_length, config.txt_embed_dim, generator=g),
        "lq_latent": torch.randn(
            b, config.lq_latent_channels, math.ceil(h / px), math.ceil(w / px), generator=g
        ),
        "degrade_sigma": torch.full((b,), 0.2),
    }
    with torch.no_grad():
        v = model(ins["x"], ins["t"], ins["y"], ins["lq_latent"], ins["degrade_sigma"])
    return ins, v


def _run_graphs(export, ins: dict[str, torch.Tensor], patch: int) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    prep = ort.InferenceSession(str(export.prepare), opts, providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(export.step), opts, providers=["CPUExecutionProvider"])
    x = ins["x"].numpy()
    grid = np.zeros((x.shape[2] // patch, x.shape[3] // patch), np.float32)
    out = prep.run(None, {"caption": ins["y"].numpy(), "latent": ins["lq_latent"].numpy(), "grid": grid})
    feeds = {"x": x, "t": ins["t"].numpy(), "y_emb": out[0], "lq_feats": out[1],
             "degrade_sigma": ins["degrade_sigma"].numpy()}  # fmt: skip
    if len(out) == 3:
        feeds["pit_feat"] = out[2]
    return step.run(None, feeds)[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_one_dynamic_graph_matches_at_several_sizes_and_batches(dynamic, case):
    """One exported graph pair, run by ONNX Runtime at every size: <= 1e-3 against the golden
    velocity (the official network) where the golden file has that size, else against the
    torch reference of the same weights."""
    from pid_trt.verify.golden import load_golden

    export = _export_of(dynamic, case)
    rows = []
    for stem in GOLDEN[case]:
        golden = load_golden(golden_case(stem))
        ins = {k[3:]: v for k, v in golden.tensors.items() if k.startswith("in/")}
        v = _run_graphs(export, ins, golden.config.patch_size)
        rows.append(
            (stem, tuple(ins["x"].shape), float(np.abs(v - golden.tensors["out/velocity"].numpy()).max()))
        )
    for i, size in enumerate(s for s in SIZES[case] if s is not None):
        ins, ref = _reference(case, size, seed=i)
        v = _run_graphs(export, ins, 16)
        rows.append(("torch", tuple(ins["x"].shape), float(np.abs(v - ref.numpy()).max())))
    print(
        "\n"
        + "\n".join(
            f"[dynamic parity] {case} {src:<24} x{list(shape)} max|dv| {d:.2e}" for src, shape, d in rows
        )
    )
    assert len({r[1][2:] for r in rows}) >= 3 and len({r[1][0] for r in rows}) == 2  # 3+ sizes, batch 1 and 2
    for src, shape, d in rows:
        assert d <= ATOL, f"{case} {src} {list(shape)}: max|dv| {d:.3g} > {ATOL}"


@pytest.mark.slow
def test_dynamic_engine_pair_built_with_a_profile_and_fused_attention(dynamic):
    rc, out, err, _ = dynamic["results"]["tiny"]
    assert "dynamic 64-256x64-256 b1-2" in out and "6 fused" in out, out
    ms = {m["build"]["graph"]: m for m in manifests(dynamic["root"] / "engines")}
    assert set(ms) == {"prepare", "step"}
    for graph, m in ms.items():
        assert m["key"]["range"] == RANGE.fields() and "height" not in m["key"]
        assert m["key"]["batch_range"] == [1, 1, 2] and m["build"]["dynamic_shapes"] is True
        profile = m["key"]["build_options"]["profile"]
        first = "x" if graph == "step" else "latent"
        assert profile[first][0][0] == 1 and profile[first][2][0] == 2  # batch min / max
        assert m["path"].startswith("dyn64-256x64-256-b1-2-bf16-")
    step = ms["step"]["key"]["build_options"]["profile"]
    assert step["x"] == [[1, 3, 64, 64], [1, 3, 128, 128], [2, 3, 256, 256]]
    assert step["lq_feats"][2] == [2, 2, 256, 64]  # L = (256/16)^2 at the max size
    assert ms["step"]["build"]["attention_layers"] == 6  # all attention fused (bf16; unfused would fail)
    assert ms["prepare"]["key"]["build_options"]["profile"]["grid"] == [[4, 4], [8, 8], [16, 16]]


@pytest.fixture(scope="session")
def mixed_store(dynamic, tmp_path_factory):
    """The dynamic pair beside the static 64x64 fp16 / bf16 pairs of tests/engine_helpers."""
    static = built_store(tmp_path_factory.getbasetemp() / "trt-store")
    assert all(r[0] == 0 for r in static["results"].values()), static["results"]
    engines = tmp_path_factory.mktemp("mixed") / "engines"
    shutil.copytree(dynamic["root"] / "engines", engines)
    for p in (static["root"] / "engines").glob("*"):
        if p.is_file():
            shutil.copy2(p, engines / p.name)
    return engines


@pytest.mark.slow
def test_engines_list_shows_static_and_dynamic_side_by_side(mixed_store):
    res = pidtrt("engines", "list", "--engine-dir", str(mixed_store))
    assert res.returncode == 0, res.stderr
    print("\n" + res.stdout)
    rows = [line for line in res.stdout.splitlines() if "tiny" in line]
    assert len(rows) == 6
    assert sum("64-256x64-256 dynamic" in r and "1-2" in r for r in rows) == 2
    assert sum("│ 64x64 " in r for r in rows) == 4 and all(r.rstrip(" │").endswith("ok") for r in rows)


@pytest.mark.slow
def test_store_selection_on_real_engines(mixed_store):
    """Exact static first, else the covering range, else the build command (both forms)."""
    from pid_trt.errors import StoreError
    from pid_trt.netspec import resolve_net
    from pid_trt.stores.select import build_command, select_pair

    spec = resolve_net("tiny", None, None, None, True)
    wid = weights_id(random_seed=0)

    def pick(h, w, b, prec=Precision.BF16):
        return select_pair(mixed_store, spec.config, wid, Bucket(h, w), prec, b, "HINT", dynamic_hint="DYN")

    assert pick(64, 64, 1).kind == "static" and pick(64, 64, 1, Precision.FP16).kind == "static"
    for h, w, b in ((64, 64, 2), (128, 96, 1), (256, 160, 2)):
        pair = pick(h, w, b)
        assert pair.kind == "dynamic" and pair.key.shape_range == RANGE
    with pytest.raises(StoreError) as err:
        pick(96, 128, 1, Precision.FP16)  # no fp16 dynamic pair, no fp16 static one at this size
    assert "build it: HINT (or one engine for a range of sizes: DYN)" in str(err.value)
    assert "64x64 batch 1 fp16" in str(err.value)
    with pytest.raises(StoreError, match="no TensorRT engine for 512x512"):
        pick(512, 512, 1)
    hint = build_command(spec, None, Precision.BF16, 1, Path("engines"), dynamic=True)
    assert hint == "pidtrt build --backbone tiny --dynamic --precision bf16 --random-weights"


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_dynamic_engine_decodes_two_sizes_on_a_gpu(mixed_store):
    """The one dynamic pair at two sizes and both batches against the torch reference; its
    runtime caches land in the engine store (TensorRT-RTX, an RTX GPU)."""
    from pid_trt import Decoder
    from pid_trt.verify.parity import psnr

    trt = Decoder.load(backbone="tiny", random_weights=True, backend="tensorrt", precision="bf16",
                       engine_dir=mixed_store)  # fmt: skip
    ref = Decoder.load(backbone="tiny", random_weights=True, backend="torch", device="cuda")
    for (h, w), b in (((96, 128), 2), ((160, 64), 1)):
        latent = torch.randn(b, 16, h // 32, w // 32)
        img, img_ref = trt.decode(latent, seed=3), ref.decode(latent, seed=3)
        assert psnr(img, img_ref) > 35.0
    trt.close()
    assert list((mixed_store / "runtime-cache").glob("*.rtcache"))
