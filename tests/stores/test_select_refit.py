"""Engine selection rules, weightless-plan checks and the runtime-cache store, on the CPU.

Selection runs on a store of plan-shaped files with real manifests (no TensorRT build needed:
the look-up reads manifests only). The refit checks run against the weight list of a real
refittable export of the tiny net; what needs a GPU (building a weightless plan with
TensorRT-RTX 1.7, the Refitter itself) is ``gpu``-marked.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pid_trt.buckets import Bucket, ShapeRange, default_range, parse_range
from pid_trt.config import TINY, Precision, get_preset
from pid_trt.errors import ConfigError, StoreError
from pid_trt.stores.keys import EngineKey
from pid_trt.stores.select import select_pair
from pid_trt.stores.store import EngineStore
from pid_trt.trt_flavour import Flavour, flavour_version
from tests.engine_helpers import pidtrt

pytestmark = pytest.mark.requires("tensorrt_rtx")

PLAN = b"vtrt" + bytes(64)
WEIGHTS = "random:0"
RANGE = ShapeRange((64, 128, 256), (64, 128, 256), (1, 1, 2))


def _key(**changes) -> EngineKey:
    from pid_trt.stores.keys import weights_sha256

    key = EngineKey(
        checkpoint_sha256=weights_sha256(WEIGHTS), net_config=TINY.to_json(), height=64, width=64,
        batch_range=(1, 1, 1), precision=Precision.BF16, flavour=Flavour.TENSORRT_RTX,
        trt_version=flavour_version(Flavour.TENSORRT_RTX), compute_capabilities=("8.6", "8.9", "12.0"),
        onnx_sha256="0" * 64, build_options="{}",
    )  # fmt: skip
    return replace(key, **changes)


def _put_pair(store: EngineStore, tag: str, **changes) -> None:
    """Both engines of one pair (distinct onnx hashes), paired by ``export_digest``."""
    for i, graph in enumerate(("prepare", "step")):
        key = _key(onnx_sha256=f"{i}{tag}".ljust(64, "0"), **changes)

        def write(tmp: Path, graph=graph) -> dict:
            tmp.write_bytes(PLAN)
            return {"graph": graph, "export_digest": tag}

        store.put(key, write)


def _pick(root: Path, h: int, w: int, b: int = 1):
    return select_pair(
        root, TINY, WEIGHTS, Bucket(h, w), Precision.BF16, b, "STATIC-HINT", dynamic_hint="DYN-HINT"
    )


def test_selection_prefers_exact_static_then_range_then_weightless(tmp_path):
    store = EngineStore(tmp_path)
    arch = "a" * 64
    _put_pair(store, "aa", weightless=True, checkpoint_sha256=arch)  # weightless static 64x64
    _put_pair(store, "bb", weightless=True, checkpoint_sha256=arch, shape_range=RANGE, batch_range=(1, 1, 2))
    assert _pick(tmp_path, 64, 64).kind == "static weightless"
    assert _pick(tmp_path, 96, 128, 2).kind == "dynamic weightless"
    _put_pair(store, "cc", shape_range=RANGE, batch_range=(1, 1, 2))
    assert _pick(tmp_path, 64, 64).kind == "dynamic"  # a range with these weights beats a refit
    _put_pair(store, "dd")
    assert _pick(tmp_path, 64, 64).kind == "static"  # the exact size beats the range
    assert _pick(tmp_path, 64, 64, 2).kind == "dynamic"  # the static pair is batch 1 only
    tight = ShapeRange((64, 96, 128), (64, 96, 128), (1, 1, 2))
    _put_pair(store, "ee", shape_range=tight, batch_range=(1, 1, 2))
    assert _pick(tmp_path, 96, 128).key.shape_range == tight  # the tightest covering range
    assert _pick(tmp_path, 256, 128).key.shape_range == RANGE
    with pytest.raises(StoreError) as err:
        _pick(tmp_path, 512, 512)
    msg = str(err.value)
    assert "no TensorRT engine for 512x512 batch 1 bf16" in msg and "STATIC-HINT" in msg and "DYN-HINT" in msg
    assert "dynamic 64-256x64-256 batch 1-2 bf16" in msg and "\n" not in msg


def test_other_weights_never_selected_but_weightless_is(tmp_path):
    store = EngineStore(tmp_path)
    _put_pair(store, "aa", checkpoint_sha256="c" * 64, shape_range=RANGE, batch_range=(1, 1, 2))
    with pytest.raises(StoreError, match="the store has none for this net|engines exist"):
        _pick(tmp_path, 128, 128)
    _put_pair(
        store, "bb", weightless=True, checkpoint_sha256="a" * 64, shape_range=RANGE, batch_range=(1, 1, 2)
    )
    assert _pick(tmp_path, 128, 128).kind == "dynamic weightless"
    with pytest.raises(StoreError):  # another net config: not even a weightless plan fits
        select_pair(tmp_path, get_preset("small").config, WEIGHTS, Bucket(128, 128), Precision.BF16, 1, "H")


def test_stale_dynamic_engine_is_refused_with_the_field(tmp_path):
    store = EngineStore(tmp_path)
    _put_pair(store, "aa", shape_range=RANGE, batch_range=(1, 1, 2))
    for p in tmp_path.glob("*.manifest.json"):
        m = json.loads(p.read_text())
        m["key"]["trt_version"] = "1.6.0.0"
        p.write_text(json.dumps(m))
    with pytest.raises(StoreError, match=r"stale .*trt_version.*1\.6\.0\.0.*rebuild: DYN-HINT"):
        _pick(tmp_path, 128, 128)


def test_range_keys_and_labels():
    from pid_trt.stores.keys import key_from_manifest

    key = _key(shape_range=RANGE, batch_range=(1, 1, 2))
    f = key.fields()
    assert f["range"] == RANGE.fields() and "height" not in f and "width" not in f
    assert key.label().startswith("dyn64-256x64-256-b1-2-bf16-tensorrt-rtx")
    assert key_from_manifest({"key": f}) == key
    wl = _key(weightless=True, checkpoint_sha256="a" * 64)
    assert wl.fields()["architecture_sha256"] == "a" * 64 and "checkpoint_sha256" not in wl.fields()
    assert "-wlaaaaaa" in wl.label() and key_from_manifest({"key": wl.fields()}) == wl
    static = _key()
    assert set(static.fields()) >= {"height", "width", "checkpoint_sha256"} and "range" not in static.fields()
    assert len({key.digest(), wl.digest(), static.digest()}) == 3


def test_shape_ranges():
    flux2k = default_range(get_preset("flux", "2k"))
    assert (flux2k.height, flux2k.width, flux2k.batch) == ((1536, 2048, 2688), (1536, 2048, 2688), (1, 1, 2))
    r4k = default_range(get_preset("flux", "2kto4k"))
    assert r4k.width == (1536, 3840, 3840) and r4k.height == (1536, 2160, 3840)
    assert r4k.contains(2160, 3840, 2) and not r4k.contains(4096, 4096) and not r4k.contains(2160, 3840, 3)
    assert default_range(get_preset("tiny")).height == (64, 128, 256)
    narrowed = parse_range("64x64", None, "128x96", (1, 1, 1), get_preset("tiny"))
    assert narrowed.height == (64, 96, 96) and narrowed.width == (64, 128, 128)
    for bad in (((64, 128, 100), (64, 64, 64)), ((16, 16, 64), (64, 64, 64)), ((64, 64, 9000), (64, 64, 64))):
        with pytest.raises(ConfigError):
            ShapeRange(*bad)
    assert ShapeRange.from_fields(RANGE.fields()) == RANGE


# --------------------------------------------------------------------------- weightless
@pytest.fixture(scope="module")
def refittable(tmp_path_factory):
    """A refittable static tiny bf16 export (seed 0) and one of seed 1: (result, result)."""
    from pid_trt.compile.export import export_onnx
    from pid_trt.netspec import build_model, resolve_net
    from pid_trt.stores.keys import ExportKey, weights_id

    root = tmp_path_factory.mktemp("refit")
    out = []
    for seed in (0, 1):
        spec = resolve_net("tiny", None, None, None, True, seed)
        key = ExportKey.create(TINY, weights_id(random_seed=seed), Bucket(64, 64), "bf16", 1, refittable=True)
        out.append(export_onnx(build_model(spec), key, root))
    return out


def _weights(export, graph: str) -> list:
    return export.manifest["build"]["graphs"][f"{graph}.onnx"]["weights"]


@pytest.mark.slow  # a refittable export, 82 s on 2 cores
def test_refittable_export_names_every_parameter_and_hashes_its_structure(refittable):
    from pid_trt.netspec import build_model, resolve_net

    a, b = refittable
    model = build_model(resolve_net("tiny", None, None, None, True))
    params = {"model." + n for n, _ in model.named_parameters()}
    step = _weights(a, "step")
    names = {n for n, _, _ in step} | {n for n, _, _ in _weights(a, "prepare")}
    assert {n for n, _, _ in step} <= params and all(t == "BFLOAT16" for _, t, _ in step)
    unused = params - names  # the last block's text branch: dead at inference, not in the graphs
    assert unused and all(".patch_blocks.3." in n and "_y" in n for n in unused), sorted(unused)
    for graph in ("prepare", "step"):
        fa, fb = (x.manifest["build"]["graphs"][f"{graph}.onnx"] for x in (a, b))
        assert fa["structure_sha256"] == fb["structure_sha256"]  # same plan serves both weight sets
        assert _weights(a, graph) == _weights(b, graph)
    assert (
        a.manifest["build"]["files"]["step.onnx.data"]["sha256"]
        != b.manifest["build"]["files"]["step.onnx.data"]["sha256"]
    )


# slow: the refittable export (~27 s idle); the quick tier keeps the store's refusals without a GPU
@pytest.mark.slow
def test_refit_tensors_equal_the_exported_initializers(refittable):
    from pid_trt.compile.refit import refit_tensors, tensors_from_onnx
    from pid_trt.netspec import build_model, resolve_net

    a, _ = refittable
    weights = _weights(a, "step")
    state = build_model(resolve_net("tiny", None, None, None, True)).state_dict()
    ours = refit_tensors(weights, state, "tiny seed 0")
    theirs = refit_tensors(weights, tensors_from_onnx(a.step, weights), "export")
    assert set(ours) == {n for n, _, _ in weights}
    assert all(torch.equal(ours[n], theirs[n]) and ours[n].dtype == torch.bfloat16 for n in ours)


def _manifest_key(export, graph: str) -> dict:
    from pid_trt.compile.refit import architecture_key

    net = json.loads(TINY.to_json())
    return {"net_config": net, "precision": "bf16",
            "architecture_sha256": architecture_key(net, "bf16", _weights(export, graph))}  # fmt: skip


# slow: the refittable export (~27 s idle); the quick tier keeps the store's refusals without a GPU
@pytest.mark.slow
def test_foreign_or_incomplete_checkpoints_are_refused_in_one_line(refittable):
    from pid_trt.compile.refit import check_architecture, missing_weights, refit_tensors
    from pid_trt.netspec import build_model, resolve_net
    from pid_trt.verify.golden import load_golden
    from tests.conftest import golden_case

    a, _ = refittable
    weights, mkey = _weights(a, "step"), _manifest_key(a, "step")
    net = json.loads(TINY.to_json())
    state = build_model(resolve_net("tiny", None, None, None, True, 7)).state_dict()  # other weights: fits
    shapes = {k: list(v.shape) for k, v in state.items()}
    check_architecture(mkey, weights, net, shapes, "tiny seed 7")

    v15 = load_golden(golden_case("v15_flux_square"))  # another architecture
    v15_shapes = {k: list(v.shape) for k, v in v15.model.state_dict().items()}
    with pytest.raises(StoreError) as err:
        check_architecture(
            mkey, weights, json.loads(v15.config.to_json()), v15_shapes, "checkpoint v15.safetensors"
        )
    assert "net config differs" in str(err.value) and "\n" not in str(err.value)

    bad = dict(shapes, **{"final_layer.linear.weight": [4, 8]})
    with pytest.raises(StoreError, match="final_layer.linear.weight has shape"):
        check_architecture(mkey, weights, net, bad, "ckpt")
    with pytest.raises(StoreError, match="architecture key"):  # same tensors, other precision
        check_architecture(dict(mkey, precision="fp16"), weights, net, shapes, "ckpt")

    gone = "patch_blocks.1.attn.qkv_x.weight"
    assert missing_weights(weights, set(state) - {gone}) == [gone]
    partial = {k: v for k, v in state.items() if k != gone}
    with pytest.raises(StoreError) as err:
        refit_tensors(weights, partial, "checkpoint x.safetensors")
    assert f"lacks '{gone}'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StoreError, match="has no tensor"):
        check_architecture(mkey, weights, net, {k: v for k, v in shapes.items() if k != gone}, "ckpt")


def test_weightless_build_refused_without_a_gpu(tmp_path):
    """TensorRT-RTX 1.7 compiles refittable plans at build time: on a CPU-only machine the
    build is refused at once, in one line (no export is attempted)."""
    from pid_trt.trt_flavour import cuda_device_count

    if cuda_device_count():
        pytest.skip("a GPU is present: the weightless build runs (see the gpu test)")
    res = pidtrt("build", "--backbone", "tiny", "--random-weights", "--dynamic", "--weightless",
                 "--engine-dir", str(tmp_path / "e"), "--export-dir", str(tmp_path / "x"))  # fmt: skip
    assert res.returncode == 3 and res.stderr.count("\n") == 1, res.stderr
    assert "weightless (refittable) plans only on a machine with a CUDA GPU" in res.stderr
    assert not (tmp_path / "x").exists()
    res = pidtrt("build", "--backbone", "tiny", "--random-weights", "--size", "64x64", "--weightless",
                 "--precision", "fp8", "--engine-dir", str(tmp_path / "e"))  # fmt: skip
    assert res.returncode == 2 and "FP8 scales are calibrated per checkpoint" in res.stderr


@pytest.mark.gpu
def test_weightless_plan_is_small_and_refits_to_the_same_decode(tmp_path):
    """On an RTX GPU: the weightless dynamic pair is far smaller than the one with weights, and
    a decode through it (refitted from the checkpoint) equals the weightful pair's."""
    from pid_trt import Decoder

    heavy, light = tmp_path / "heavy", tmp_path / "light"
    for store, extra in ((heavy, ()), (light, ("--weightless",))):
        res = pidtrt("build", "--backbone", "tiny", "--random-weights", "--dynamic", "--precision", "bf16",
                     "--engine-dir", str(store), "--export-dir", str(tmp_path / "x"), *extra)  # fmt: skip
        assert res.returncode == 0, res.stderr
    size = {d: sum(p.stat().st_size for p in d.glob("*.plan")) for d in (heavy, light)}
    assert size[light] < 0.2 * size[heavy], size
    latent = torch.randn(1, 16, 4, 3)
    imgs = []
    for d in (heavy, light):
        with Decoder.load(backbone="tiny", random_weights=True, backend="tensorrt", engine_dir=d) as dec:
            imgs.append(dec.decode(latent, seed=1))
    assert torch.equal(imgs[0], imgs[1])


# --------------------------------------------------------------------------- runtime cache
def test_runtime_cache_store_is_keyed_validated_and_atomic(tmp_path):
    from pid_trt.atomic import TEMP_PREFIX
    from pid_trt.stores.runtime_cache import RUNTIME_CACHE_DIR, RuntimeCacheKey, RuntimeCacheStore

    store = RuntimeCacheStore(tmp_path)
    key = RuntimeCacheKey("e" * 64, "8.9", "NVIDIA GeForce RTX 4090", "tensorrt-rtx", "1.7.1.116", "12.8")
    assert store.load(key) is None
    path = store.save(key, b"kernels-1")
    assert path.parent == tmp_path / RUNTIME_CACHE_DIR and store.load(key) == b"kernels-1"
    store.save(key, b"kernels-2, more of them")
    assert store.load(key) == b"kernels-2, more of them" and len(store.list()) == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]  # no temp files left
    other = replace(key, driver_version="13.0")
    assert store.load(other) is None  # another driver: never this cache
    path.write_bytes(b"kernels-X, more of them")  # same size, other bytes: corrupt
    assert store.load(key) is None
    store.save(key, b"fresh")
    (entry,) = store.list()
    assert store.remove(entry.digest) == [path.name] and store.load(key) is None and store.list() == []
