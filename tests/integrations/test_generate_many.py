"""`pidtrt generate` over many prompts and captures, and the LDM's VAE beside PiD, end to end
on the CPU: a tiny random FLUX.1 pipeline (built offline, with text encoders) and a tiny
random-weight PiD at 64x64 (the LDM runs at 16x16).

The LDM's work is counted with real forward hooks on the transformer, never by mocking the
code under test. Colour figures are checked against published CIELAB values."""

from __future__ import annotations

import json
import math

import diffusers  # noqa: F401 - the [diffusers] extra: a missing package fails here, never skips
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pid_trt import Decoder
from pid_trt.cli.main import app
from pid_trt.config import TINY
from pid_trt.integrations.colour import colour_drift, srgb_to_lab, srgb_to_xyz
from pid_trt.integrations.diffusers import pid_latent, to_pid_frame
from pid_trt.integrations.generate_run import GenerateSettings, generate_prompt, prompt_outputs
from pid_trt.integrations.vae import decode_latent
from pid_trt.io import read_latent_file
from pid_trt.jobs.prompts import prompt_folder, read_prompts_file, slug
from tests.conftest import quick_first
from tests.integrations import diffusers_helpers as helpers

SIZE = 64  # PiD output; the LDM runs at 16x16 (flux latent 2x2)
LDM = SIZE // 4

# ------------------------------------------------------------------ colour (published values)
# sRGB primaries, white and black in CIELAB (D65), as tabulated by B. Lindbloom's colour
# calculator (brucelindbloom.com) and the CIE 15 / IEC 61966-2-1 definitions.
LAB_REFERENCE = {
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),
    (0.0, 1.0, 0.0): (87.7347, -86.1827, 83.1793),
    (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602),
}


def test_cielab_matches_published_values():
    rgb = torch.tensor(list(LAB_REFERENCE), dtype=torch.float64)
    lab = srgb_to_lab(rgb, dim=-1)
    torch.testing.assert_close(lab, torch.tensor(list(LAB_REFERENCE.values()), dtype=torch.float64),
                               atol=2e-3, rtol=0)  # fmt: skip
    # sRGB red in XYZ: the first column of IEC 61966-2-1's matrix (0.4124, 0.2126, 0.0193)
    xyz = srgb_to_xyz(torch.tensor([1.0, 0.0, 0.0]), dim=-1)
    torch.testing.assert_close(
        xyz, torch.tensor([0.4124, 0.2126, 0.0193], dtype=torch.float64), atol=1e-4, rtol=0
    )
    # mid grey: linear 0.5 -> ((0.5 + 0.055) / 1.055) ** 2.4 = 0.21404, L* = 116 * Y^(1/3) - 16 = 53.389
    grey = srgb_to_lab(torch.full((1, 3, 2, 2), 0.5))
    assert grey[0, 0].sub(53.389).abs().max() < 2e-3 and grey[0, 1:].abs().max() < 1e-3


def image_of(*colours) -> torch.Tensor:
    """[1, 3, 1, N] in [-1, 1]: one pixel per sRGB colour in [0, 1]."""
    return torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, 1, len(colours)) * 2 - 1


def test_colour_drift_against_published_values():
    white, red, green = (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    same = colour_drift(image_of(red, green), image_of(red, green))
    assert max(abs(v) for k, v in same.as_dict().items() if k != "space") == 0
    (lr, ar, br), (lg, ag, bg) = LAB_REFERENCE[red], LAB_REFERENCE[green]
    d = colour_drift(image_of(red), image_of(green))  # red where the reference is green
    assert d.green_magenta_bias == pytest.approx(ar - ag, abs=5e-3)  # toward magenta
    assert d.blue_yellow_bias == pytest.approx(br - bg, abs=5e-3)
    assert d.mean_chroma_shift == pytest.approx(math.hypot(ar, br) - math.hypot(ag, bg), abs=5e-3)
    assert d.mean_lightness_shift == pytest.approx(lr - lg, abs=5e-3)
    assert d.mean_delta_e == pytest.approx(math.dist((lr, ar, br), (lg, ag, bg)), abs=5e-3)
    # half the pixels green on a white reference: half green's a* (a green cast), half its chroma
    d = colour_drift(image_of(green, white), image_of(white, white))
    assert d.green_magenta_bias == pytest.approx(ag / 2, abs=5e-3) and d.green_magenta_bias < 0
    assert d.mean_chroma_shift == pytest.approx(math.hypot(ag, bg) / 2, abs=5e-3)
    assert d.colour_cast == pytest.approx(math.hypot(ag, bg) / 2, abs=5e-3)


# ------------------------------------------------------------------ the VAE's own decode
@pytest.mark.parametrize("backbone", quick_first(["flux", "flux2", "qwenimage", "sdxl"]))
def test_vae_decode_of_the_pid_latent_is_the_pipelines_image(backbone):
    """decode_latent(PiD latent) is the image the pipeline itself decodes (output_type="pt")
    from the same run: the baseline --compare-vae writes, for every VAE layout (Flux.1,
    FLUX.2's BatchNorm + patchify, Qwen-Image's video VAE, SDXL)."""
    pipe = helpers.make_pipeline(backbone)
    h, w = 64, 96

    def run(output_type):
        gen = torch.Generator().manual_seed(3)
        return pipe(height=h, width=w, num_inference_steps=3, generator=gen, output_type=output_type,
                    **helpers.embeds(backbone)).images  # fmt: skip

    latent = pid_latent(pipe, run("latent"), backbone, h, w)
    image = decode_latent(pipe.vae, latent, backbone)
    assert image.shape == (1, 3, h, w) and image.dtype == torch.float32
    torch.testing.assert_close(image, run("pt") * 2 - 1, atol=4e-5, rtol=0)


# ------------------------------------------------------------------ prompts
def test_prompts_file_and_folder_names(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes("\ufeffa red fox\n\n   \n  Crème brûlée, at dusk!  \r\nlast".encode())
    assert read_prompts_file(f) == ["a red fox", "Crème brûlée, at dusk!", "last"]
    assert slug("Crème brûlée, at dusk!") == "creme-brulee-at-dusk" and slug("!!!") == "prompt"
    assert len(slug("word " * 40)) <= 48 and not slug("word " * 40).endswith("-")
    assert prompt_folder(7, "a red fox", 3) == "0007-a-red-fox"
    assert prompt_folder(12345, "x", 20000) == "12345-x"


# ------------------------------------------------------------------ one LDM run, several captures


@pytest.fixture(scope="module")
def tiny_decoder():
    with Decoder.load(net_config=TINY.to_upstream(), random_weights=True) as dec:
        yield dec


def test_several_captures_from_one_ldm_run(tmp_path, tiny_decoder, recorder):
    """Captures after steps 2 and 3 of 5 cost 3 transformer calls (one run stopping after 3,
    not 2 + 3), and each latent is the pipeline's own after that step; PiD's image of each is
    the Decoder's decode of that latent with the prompt's seed."""
    pipe = helpers.make_pipeline("flux")
    settings = GenerateSettings.make("flux", TINY, SIZE, SIZE, 5, [3, 2], seed=10, save_latents=True)
    assert settings.capture_steps == (2, 3) and settings.ldm_size == (LDM, LDM)
    out = prompt_outputs(tmp_path / "0001-x", 1, "x", settings)
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        record = generate_prompt(pipe, tiny_decoder, out, settings, pipe_kwargs=helpers.embeds("flux"))
    finally:
        handle.remove()
    assert len(calls) == 3
    assert [c["label"] for c in record["captures"]] == ["step2", "step3"] and record["seed"] == 11
    assert out.complete() and json.loads(out.record.read_text())["captures"] == record["captures"]

    pipe(height=LDM, width=LDM, num_inference_steps=5, generator=torch.Generator().manual_seed(11),
         output_type="latent", callback_on_step_end=recorder, **helpers.embeds("flux"))  # fmt: skip
    sigmas = pipe.scheduler.sigmas
    for cap, k in zip(out.captures, (2, 3), strict=True):
        latent, sigma = to_pid_frame(recorder.latents[k - 1], float(sigmas[k]), "flux")
        lf = read_latent_file(cap.latent, TINY)
        torch.testing.assert_close(lf.latent, pid_latent(pipe, latent, "flux", LDM, LDM), atol=0, rtol=0)
        assert lf.degrade_sigma.item() == pytest.approx(sigma)
    image = tiny_decoder.decode(lf.latent, degrade_sigma=lf.degrade_sigma.item(), seed=11, size=(SIZE, SIZE))
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).floor().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    assert np.array_equal(np.asarray(Image.open(out.captures[-1].pid)), pixels.numpy())


# ------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return helpers.make_flux_dir(tmp_path_factory.mktemp("flux") / "pipe")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"PIDTRT_TEXT_ENCODER": ""})


class TransformerCalls:
    """Counts FluxTransformer2DModel forward calls in this process (a global module hook:
    the CLI loads its own pipeline)."""

    def __enter__(self):
        self.count = 0

        def hook(module, args, output):
            if type(module).__name__ == "FluxTransformer2DModel":
                self.count += 1

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


COMMON = ("--pid", "tiny", "--random-weights", "--res", SIZE, "--steps", 4)


@pytest.mark.slow  # many prompts with captures and --compare-vae through generate (~15 s); the quick tier keeps test_cli_generate_then_decode_reproduces_the_image and the many-file decode paths in tests/jobs/
def test_cli_many_prompts_captures_manifest_and_resume(flux_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in snow\n\n\nthe lazy brown dog\n")
    out = tmp_path / "out"
    args = ("generate", "--pipeline", flux_dir, "--prompt", "cat at sunset", "--prompts-file", prompts, *COMMON,
            "--capture-step", 2, "--capture-final", "--compare-vae", "--seed", 5, "-o", out)  # fmt: skip
    with TransformerCalls() as calls:
        res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert calls.count == 3 * 4  # one 4-step run per prompt for both captures (not 2 + 4 each)
    assert "generated 3, skipped 0 (output exists), failed 0 of 3" in res.stdout

    folders = ["0000-cat-at-sunset", "0001-a-red-fox-in-snow", "0002-the-lazy-brown-dog"]
    assert sorted(p.name for p in out.iterdir()) == [*folders, "manifest.json"]
    names = ["final.png", "final_compare.png", "final_vae.png", "generation.json", "step2.png",
             "step2_compare.png", "step2_vae.png"]  # fmt: skip
    for folder in folders:
        assert sorted(p.name for p in (out / folder).iterdir()) == names
    m = json.loads((out / "manifest.json").read_text())
    assert (m["ldm"], m["steps"], m["size"], m["ldm_size"]) == ("flux", 4, [SIZE, SIZE], [LDM, LDM])
    assert (m["backend"], m["precision"], m["device"], m["pid"]["net"]) == ("torch", "fp32", "cpu", "tiny")
    assert m["captures"] == [{"step": 2, "label": "step2"}, {"step": 4, "label": "final"}]
    assert m["counts"] == {"prompts": 3, "done": 3, "skipped": 0, "failed": 0, "missing": 0}
    assert set(m["timings"]) == {"load_s", "run_s", "ldm_s", "pid_s", "vae_s"} and m["timings"]["pid_s"] > 0
    entries = m["prompts"]
    assert [e["prompt"] for e in entries] == ["cat at sunset", "a red fox in snow", "the lazy brown dog"]
    assert [e["seed"] for e in entries] == [5, 6, 7] and [e["folder"] for e in entries] == folders
    step2, final = entries[1]["captures"]
    assert final["degrade_sigma"] == 0.0 and 0 < step2["degrade_sigma"] < 1
    assert step2["files"] == {k: f"{folders[1]}/step2{s}.png" for k, s in
                              (("pid", ""), ("vae", "_vae"), ("compare", "_compare"))}  # fmt: skip
    assert entries[1]["ldm"]["steps"] == 4 and entries[1]["ldm"]["seconds"] > 0

    # the three images: PiD at 64x64, the VAE at the LDM's 16x16, the labelled pair
    pid_png, vae_png = (np.asarray(Image.open(out / step2["files"][k])) for k in ("pid", "vae"))
    assert pid_png.shape == (SIZE, SIZE, 3) and vae_png.shape == (LDM, LDM, 3)
    pair = np.asarray(Image.open(out / step2["files"]["compare"]))
    strip, width = pair.shape[0] - SIZE, pair.shape[1]
    assert strip > 0 and width > 2 * SIZE
    assert np.array_equal(pair[strip:, width - SIZE :], pid_png)  # PiD on the right, unscaled
    # the drift figures describe these two images (float images in the run; PNGs here: 8-bit)
    drift = step2["colour_drift"]
    assert drift["space"].startswith("CIELAB")

    def tensor(a):
        return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1

    up = torch.nn.functional.interpolate(tensor(vae_png), size=(SIZE, SIZE), mode="bicubic").clamp(-1, 1)
    again = colour_drift(tensor(pid_png), up)
    for key in ("mean_chroma_shift", "green_magenta_bias", "blue_yellow_bias", "mean_delta_e"):
        assert drift[key] == pytest.approx(getattr(again, key), abs=1.0), key

    # resume: nothing to do loads nothing and runs no LDM step
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    with TransformerCalls() as calls:
        res = invoke(*args, "--skip-existing")
    assert res.exit_code == 0 and calls.count == 0, res.output
    assert "generated 0, skipped 3 (output exists)" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    # a prompt missing one file is run again (one LDM run), the others are skipped
    (out / folders[2] / "step2_vae.png").unlink()
    with TransformerCalls() as calls:
        res = invoke(*args, "--skip-existing")
    assert res.exit_code == 0 and calls.count == 4, res.output
    assert "generated 1, skipped 2 (output exists)" in res.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert [e["status"] for e in m["prompts"]] == ["skipped", "skipped", "done"]
    assert (out / folders[2] / "step2_vae.png").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if folders[2] not in str(p))


def test_cli_one_image_compare_vae(flux_dir, tmp_path):
    out = tmp_path / "fox.png"
    res = invoke("generate", "--pipeline", flux_dir, "--prompt", "a fox", *COMMON, "--compare-vae", "-o", out)
    assert res.exit_code == 0, res.output
    assert "latent after step 3 of 4" in res.stdout and "green-magenta" in res.stdout
    assert Image.open(out).size == (SIZE, SIZE)
    assert Image.open(tmp_path / "fox_vae.png").size == (LDM, LDM)
    assert Image.open(tmp_path / "fox_compare.png").size[0] > 2 * SIZE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.png", "fox_compare.png", "fox_vae.png"]


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        ("empty", (), "no prompts"),
        ("blank", (), "no prompts"),
        ("latin1", (), "not UTF-8"),
        ("missing", (), "file not found"),
        ("ok", ("--capture-step", 5), "capture step 5: expected an integer in 1..4"),
        ("ok", ("--capture-step", 2, "--capture-step", 0), "capture step 0"),
        ("ok", ("--capture-step", 1, "--capture-step", 2, "-o", "one.png"), "names one file"),
    ],
)
def test_cli_bad_input_one_line_nothing_written(tmp_path, setup, extra, message):
    """Refused before the pipeline loads (its folder holds only model_index.json, so a load
    would fail with another message) and before anything is written."""
    fake = tmp_path / "pipe"
    fake.mkdir()
    (fake / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    prompts = tmp_path / "prompts.txt"
    content = {"empty": b"", "blank": b"\n  \n\t\n", "latin1": "crème brûlée\n".encode("latin-1"),
               "ok": b"a\nb\n"}  # fmt: skip
    if setup in content:
        prompts.write_bytes(content[setup])
    out = tmp_path / "out"
    args = ["generate", "--pipeline", fake, "--prompts-file", prompts, *COMMON, "-o", out, *extra]
    res = invoke(*[a if a != "one.png" else tmp_path / "one.png" for a in args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["pipe", *(["prompts.txt"] * (setup != "missing"))]
    )
