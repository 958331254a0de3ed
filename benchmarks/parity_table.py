"""Parity table of every golden case (tests/golden): torch fp32 and ONNX Runtime fp32 against
the official network (max / mean |d| of one call's velocity and of the 4-step image), and the
image PSNR of the fp16 ONNX graph (ONNX Runtime CPU) and of the bf16 model (torch CPU: ONNX
Runtime's CPU provider has no bf16 MatMul) against the golden image.

    python benchmarks/parity_table.py [GOLDEN_DIR] > benchmarks/results/parity_golden_<date>.md
"""

from __future__ import annotations

import copy
import platform
import sys
import tempfile
from pathlib import Path

import torch

from pid_trt.backends.base import Conditioning
from pid_trt.backends.ort_backend import OrtBackend
from pid_trt.buckets import Bucket
from pid_trt.checkpoints import file_sha256
from pid_trt.compile.export import export_onnx
from pid_trt.config import Precision
from pid_trt.sampling import TIMESCALE, sample
from pid_trt.stores.keys import ExportKey, weights_id
from pid_trt.verify.bounds import BOUNDS
from pid_trt.verify.golden import GoldenCase, load_golden
from pid_trt.verify.parity import compare, psnr


def _torch_denoiser(model, d):
    b = d["in/x"].shape[0]
    dtype = next(model.parameters()).dtype

    def denoise(x, t):
        with torch.no_grad():
            v = model(x.to(dtype), torch.full((b,), t * TIMESCALE), d["in/y"].to(dtype),
                      d["in/lq_latent"].to(dtype), d["in/degrade_sigma"])  # fmt: skip
        return v.float()

    return denoise


def _ort(case: GoldenCase, path: Path, precision: Precision, root: Path) -> OrtBackend:
    b, h, w = case.size
    key = ExportKey.create(
        case.config, weights_id(checkpoint_sha256=file_sha256(path)), Bucket(h, w), precision, b
    )
    res = export_onnx(case.model, key, root)
    return OrtBackend(res.prepare, res.step, case.config, Bucket(h, w), b, precision)


def main(golden_dir: Path) -> None:
    d_rows, p_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(golden_dir.glob("*.safetensors")):
            case = load_golden(path)
            d, (_, h, w) = case.tensors, case.size
            t = float(d["in/t"][0]) / TIMESCALE
            cond = Conditioning(d["in/lq_latent"], d["in/y"], d["in/degrade_sigma"], h, w)
            ref_v, ref_i = d["out/velocity"], d["out/image"]
            torch_den = _torch_denoiser(case.model, d)
            ort32 = _ort(case, path, Precision.FP32, Path(tmp)).bind(cond)
            for name, den in (("torch fp32", torch_den), ("ONNX Runtime fp32", ort32)):
                v = compare("velocity", den(d["in/x"], t), ref_v)
                i = compare("image", sample(den, case.noises()), ref_i, image=True)
                d_rows.append(f"| {case.name} | {name} | {v.max_abs:.2e} | {v.mean_abs:.2e} | "
                              f"{i.max_abs:.2e} | {i.mean_abs:.2e} |")  # fmt: skip
            ort16 = _ort(case, path, Precision.FP16, Path(tmp)).bind(cond)
            fp16 = psnr(sample(ort16, case.noises()), ref_i)
            bf16 = psnr(
                sample(_torch_denoiser(copy.deepcopy(case.model).to(torch.bfloat16), d), case.noises()), ref_i
            )
            p_rows.append(f"| {case.name} | {fp16:.1f} | {bf16:.1f} |")
            print(f"done {case.name}", file=sys.stderr, flush=True)
    print(f"Machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, CPU only.\n")  # fmt: skip
    onnx_bound = BOUNDS[Precision.FP32]["image"].limit
    print(f"fp32 against the official network (bound: torch 1e-4, ONNX Runtime {onnx_bound:g}, max |d|; "
          "figures by Polygraphy)\n")  # fmt: skip
    print("| case | backend | velocity max abs | velocity mean abs | image max abs | image mean abs |")
    print("|---|---|---|---|---|---|")
    print("\n".join(d_rows))
    fp16, bf16 = (BOUNDS[p]["image"].describe() for p in (Precision.FP16, Precision.BF16))
    print(
        f"\nReduced precision, image PSNR (dB) against the golden image (bounds: fp16 {fp16}, bf16 {bf16})\n"
    )
    print("| case | ONNX Runtime fp16 graph | torch bf16 model |")
    print("|---|---|---|")
    print("\n".join(p_rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests" / "golden")
