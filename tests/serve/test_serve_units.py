"""The serving pieces without a server: options and the Triton model configuration, the
batch decode (per-request validation and noise), error kinds, and the many-files decode."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from pid_trt.errors import ConfigError
from pid_trt.io import write_images, write_latent_file
from pid_trt.options import NetOptions, RuntimeOptions
from pid_trt.serve.batch import DecodeRequest, decode_requests
from pid_trt.serve.config import ModelOptions, ServeOptions, model_config_pbtxt, parse_devices
from pid_trt.tiling import TileOptions
from tests.serve.conftest import request_inputs


@pytest.fixture(scope="module")
def decoder():
    from pid_trt import Decoder

    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        yield dec


def run_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------ options
def test_model_config_has_bounded_queue_batching_and_instances() -> None:
    net = ModelOptions(NetOptions(backbone="tiny", random_weights=True)).check()
    assert net["latent_channels"] == "16" and net["needs_caption"] == "false"
    text = model_config_pbtxt(
        ServeOptions(
            max_batch=3, max_queue_size=5, max_queue_delay_ms=2.5, request_timeout_s=1.5, instances=2
        ),
        net,
    )
    assert 'name: "pid_decoder"' in text and "max_batch_size: 3" in text
    assert "max_queue_size: 5" in text and "timeout_action: REJECT" in text
    assert "default_timeout_microseconds: 1500000" in text and "max_queue_delay_microseconds: 2500" in text
    assert "kind: KIND_CPU count: 2" in text
    gpu = model_config_pbtxt(ServeOptions(devices=(0, 2)), net)
    assert "kind: KIND_GPU count: 1 gpus: [ 0, 2 ]" in gpu


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_queue_size": 0}, "--max-queue-size 0"),
        ({"max_batch": 0}, "--max-batch 0"),
        ({"http_port": 9000, "grpc_port": 9000}, "three different ports"),
        ({"request_timeout_s": 0}, "--request-timeout-s"),
        ({"devices": (1, 1)}, "distinct GPU ids"),
    ],
)
def test_serve_options_refuse_bad_values(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ServeOptions(**kwargs)


def test_devices_parse() -> None:
    assert parse_devices("0,1,3") == (0, 1, 3) and parse_devices(None) == ()
    with pytest.raises(ConfigError, match="GPU ids"):
        parse_devices("0,x")


def test_model_options_check_uses_the_clis_errors() -> None:
    with pytest.raises(ConfigError, match="--backend 'nope' is not known"):
        ModelOptions(NetOptions(backbone="tiny", random_weights=True), RuntimeOptions(backend="nope")).check()
    with pytest.raises(ConfigError, match="the tensorrt backend runs on cuda"):
        ModelOptions(
            NetOptions(backbone="tiny", random_weights=True), RuntimeOptions(backend="tensorrt", device="cpu")
        ).check()


# slow: several pidtrt serve processes (~7 s); the option checks are unit-tested in process
@pytest.mark.slow
def test_serve_cli_refuses_bad_options_and_busy_ports_in_one_line(tmp_path: Path) -> None:
    res = run_cli("serve", "--backbone", "tiny", "--random-weights", "--max-queue-size", "0")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: --max-queue-size 0")
    res = run_cli("serve", "--backbone", "tiny", "--random-weights", "--caption-cache", "-1")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == (
        "error: --caption-cache -1: expected an integer >= 0"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli(
            "serve",
            "--backbone",
            "tiny",
            "--random-weights",
            "--http-port",
            port,
            "--workspace",
            tmp_path / "ws",
        )
    assert res.returncode == 2, res.stderr
    assert f"error: --http-port {port}: 127.0.0.1:{port} is in use" in res.stderr
    assert not (tmp_path / "ws").exists()  # refused before any workspace was made


# ------------------------------------------------------------------------------- batch decode
def served_text(path: Path) -> str:
    """The raw ``pid-trt`` text of a PNG."""
    from PIL import Image

    with Image.open(path) as im:
        return im.text["pid-trt"]


def test_each_request_gets_its_own_image_or_error(decoder, tmp_path: Path) -> None:
    config = decoder.config
    lat, cap = request_inputs(config, 1)
    lat2, cap2 = request_inputs(config, 2, 1, 2)
    nan = lat.copy()
    nan[0, 0, 0, 0] = np.nan
    reqs = [
        DecodeRequest(lat, cap, seed=np.array([[5]]), what="request a", outputs=frozenset({"image", "png"})),
        DecodeRequest(nan, cap, what="request b"),
        DecodeRequest(lat, cap, seed=np.array([[6]]), degrade_sigma=np.array([[0.5]]), what="request c"),
        DecodeRequest(lat2, cap2, seed=np.array([[5]]), what="request d"),  # another size: its own decode
        DecodeRequest(lat, cap, degrade_sigma=np.array([[2.0]]), what="request e"),
        DecodeRequest(np.concatenate([lat, lat]), None, seed=np.array([[1], [2]]), what="request f"),
        DecodeRequest(lat, cap, prompt=["a fox"], what="request g"),
    ]
    out = decode_requests(decoder, reqs)
    assert [r.error is None for r in out] == [True, False, True, True, False, False, False]
    assert (
        str(out[1].error)
        == "request b: tensor 'latent' has 1 NaN/Inf value(s) as float32, expected finite values"
    )
    assert str(out[4].error) == "request e: degrade_sigma 2.0 is outside [0, 1]"
    assert "request f: seed differs across the 2 rows of one request" in str(out[5].error)
    assert "request g: give caption_embedding or prompt, not both" == str(out[6].error)
    # a and c were decoded together (batch 2): each within rounding of its lone decode
    for r, seed, sigma in ((out[0], 5, 0.0), (out[2], 6, 0.5)):
        alone = decoder.decode(lat, cap, seed=seed, degrade_sigma=sigma)
        assert (torch.from_numpy(r.image) - alone).abs().max().item() <= 1e-4
    # d ran alone (the only request of its size): bit for bit
    assert torch.equal(torch.from_numpy(out[3].image), decoder.decode(lat2, cap2, seed=5))
    # the PNG is the bytes write_images writes for that image with the request's provenance
    from pid_trt.io.provenance import read_provenance

    served = tmp_path / "served.png"
    served.write_bytes(out[0].png[0])
    record = read_provenance(served)
    assert (record["seed"], record["steps"], record["size"], record["caption"]) == (5, 4, "32x32", "latent")
    assert (record["backend"], record["precision"], record["degrade_sigma"]) == ("torch", "fp32", [0.0])
    text = {"pid-trt": served_text(served)}
    (png,) = write_images(torch.from_numpy(out[0].image), tmp_path / "a.png", text=text)
    assert out[0].png == [png.read_bytes()]
    assert out[2].png is None  # not asked for


def test_a_tiled_request_is_decoded_alone_as_decoder_decode_does() -> None:
    """Envelope 64x64: a 96x128 request tiles (alone, bit for bit Decoder.decode(tiles=auto));
    the two 32x32 requests still batch together; a request with tiles off outside the envelope
    gets the decode's one-line refusal; a request's own tiling wins over the server's."""
    from pid_trt import Decoder

    with Decoder.load(backbone="tiny", random_weights=True, envelope="64x64") as dec:
        config = dec.config
        big, big_cap = request_inputs(config, 7, 3, 4)
        lat, cap = request_inputs(config, 8)
        reqs = [
            DecodeRequest(lat, cap, seed=np.array([[1]]), what="request a"),
            DecodeRequest(big, big_cap, seed=np.array([[2]]), what="request b"),
            DecodeRequest(lat, cap, seed=np.array([[3]]), what="request c"),
            DecodeRequest(big, big_cap, what="request d", tiling={"tiles": "off"}),
            DecodeRequest(big, big_cap, seed=np.array([[2]]), what="request e", tiling={"tiles": "2x2"}),
        ]
        out = decode_requests(dec, reqs, tiling=TileOptions.create(tile_batch=2))
        assert [r.tiled for r in out] == [False, True, False, False, True]
        assert out[0].error is None and out[2].error is None
        assert torch.equal(torch.from_numpy(out[1].image), dec.decode(big, big_cap, seed=2, tile_batch=2))
        assert torch.equal(
            torch.from_numpy(out[4].image), dec.decode(big, big_cap, seed=2, tiles="2x2", tile_batch=2)
        )
        assert str(out[3].error).startswith(
            "request d: 128x96 is outside the trained sizes of tiny (given) (64x64): decode it in tiles"
        )
        for r, seed in ((out[0], 1), (out[2], 3)):  # batched together: within rounding of a lone decode
            assert (torch.from_numpy(r.image) - dec.decode(lat, cap, seed=seed)).abs().max().item() <= 1e-4


def test_request_without_caption_gets_the_stand_in_of_a_direct_decode(decoder) -> None:
    lat, _ = request_inputs(decoder.config, 3)
    (res,) = decode_requests(decoder, [DecodeRequest(lat, None, seed=np.array([[9]]))])
    assert torch.equal(torch.from_numpy(res.image), decoder.decode(lat, seed=9))


def test_failed_decode_fails_its_batch_only(decoder, monkeypatch) -> None:
    lat, cap = request_inputs(decoder.config, 4)
    lat2, cap2 = request_inputs(decoder.config, 5, 1, 2)
    real = decoder.decode

    def flaky(latent, *args, **kwargs):
        if latent.shape[-1] == 1:
            from pid_trt.errors import ResourceError

            raise ResourceError("decode of batch 2 at 32x32: out of memory on cpu (test)")
        return real(latent, *args, **kwargs)

    monkeypatch.setattr(decoder, "decode", flaky)
    out = decode_requests(
        decoder, [DecodeRequest(lat, cap), DecodeRequest(lat2, cap2), DecodeRequest(lat, cap)]
    )
    assert "out of memory" in str(out[0].error) and out[0].error is out[2].error
    assert out[1].error is None and out[1].image.shape == (1, 3, 32, 64)


def test_bench_server_refuses_an_unknown_output_in_one_line() -> None:
    res = run_cli("bench", "--server", "http://127.0.0.1:9", "--size", "32x32", "--server-output", "jpeg")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "error: --server-output 'jpeg': expected one of image, png\n", res.stderr


# -------------------------------------------------------------------------------- error kinds
def test_triton_errors_get_their_kind() -> None:
    from pid_trt.serve.client import _classify, split_url

    assert _classify("503", "[request id: x] Exceeds maximum queue size").kind == "overload"
    assert _classify("400", "request r1: latent has 5 channels").kind == "invalid"
    assert str(_classify("400", "[request id: r1] request r1: bad")) == "request r1: bad"
    assert _classify("503", "decode of batch 4 at 64x64: out of memory on cuda (x)").kind == "resource"
    assert _classify("500", "Request timeout expired").kind == "timeout"
    assert _classify("500", "request r: internal error (RuntimeError: x)").kind == "server"
    assert split_url("http://127.0.0.1:8000/") == ("127.0.0.1:8000", False)
    assert split_url("https://h:1") == ("h:1", True)
    with pytest.raises(Exception, match="expected http://HOST:PORT"):
        split_url("http://h:1/v2")


def test_unreachable_server_is_a_connection_error(tmp_path: Path) -> None:
    from pid_trt.serve.client import PidClient, ServeRequestError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with PidClient(f"http://127.0.0.1:{port}", timeout_s=10, connect_timeout_s=5) as client:
        assert not client.ready()
        with pytest.raises(ServeRequestError) as info:
            client.parameters()
    assert info.value.kind == "connection"


# ---------------------------------------------------------------------------- many-files decode
def test_plan_jobs_names_outputs_and_refuses_collisions(tmp_path: Path) -> None:
    from pid_trt.jobs import expand_inputs, is_single, plan_jobs

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        write_latent_file(d / "x.safetensors", torch.zeros(1, 16, 1, 1))
    write_latent_file(a / "y.safetensors", torch.zeros(1, 16, 1, 1))
    (a / "notes.txt").write_text("not a latent")
    files, problems = expand_inputs([a, Path(f"{tmp_path}/**/x.safetensors"), tmp_path / "empty*"])
    assert files == [a / "x.safetensors", a / "y.safetensors", b / "x.safetensors"]
    assert problems == [(f"{tmp_path}/empty*", f"no file matches '{tmp_path}/empty*'")]
    assert not is_single([a]) and is_single([a / "x.safetensors"]) and not is_single([a, b])
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="would both write"):
        plan_jobs(files, out, single=False)
    jobs = plan_jobs(files, Path(f"{out}/{{parent}}_{{stem}}.safetensors"), single=False)
    assert [j.output.name for j in jobs] == ["a_x.safetensors", "a_y.safetensors", "b_x.safetensors"]
    with pytest.raises(ConfigError, match="names one file, but 3 latent files"):
        plan_jobs(files, out / "one.png", single=False)
    assert plan_jobs(files[:1], out / "one.png", single=True)[0].output == out / "one.png"


@pytest.mark.slow  # two CLI runs over a folder; the quick tier's many-file decode runs in tests/jobs/test_pipelined_decode.py and test_torchrun.py, resume in tests/jobs/test_runner.py
def test_decode_directory_reports_bad_file_and_resumes(tmp_path: Path) -> None:
    src = tmp_path / "lats"
    src.mkdir()
    gen = torch.Generator().manual_seed(0)
    for k in range(2):
        write_latent_file(src / f"l{k}.safetensors", torch.randn(1, 16, 1, 1, generator=gen))
    write_latent_file(src / "wide.safetensors", torch.randn(2, 16, 1, 2, generator=gen))
    write_latent_file(src / "bad.safetensors", torch.randn(1, 5, 1, 1, generator=gen))
    out = tmp_path / "out"
    common = ["--backbone", "tiny", "--random-weights", "--seed", "3"]
    first = run_cli("decode", src, "-o", f"{out}/", *common)
    assert first.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == ["l0.png", "l1.png", "wide_0.png", "wide_1.png"]
    assert f"error: latent file {src / 'bad.safetensors'}: latent has 5 channels, expected 16" in first.stderr
    assert "decoded 3, skipped 0 (output exists), failed 1 of 4" in first.stdout
    # one input alone gives the same image as the single-file decode
    single = run_cli("decode", src / "l1.safetensors", "-o", tmp_path / "single.png", *common)
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "single.png").read_bytes() == (out / "l1.png").read_bytes()
    (out / "l0.png").unlink()
    again = run_cli(
        "decode", src / "l*.safetensors", src / "wide.safetensors", "-o", out, "--skip-existing", *common
    )
    assert again.returncode == 0, again.stderr
    assert "decoded 1, skipped 2 (output exists), failed 0 of 3" in again.stdout
    assert (out / "l0.png").is_file()


def test_noise_file_takes_one_latent_only(tmp_path: Path) -> None:
    for k in range(2):
        write_latent_file(tmp_path / f"l{k}.safetensors", torch.zeros(1, 16, 1, 1))
    res = run_cli(
        "decode", tmp_path / "l0.safetensors", tmp_path / "l1.safetensors", "-o", tmp_path / "o",
        "--noise", tmp_path / "n.safetensors", "--backbone", "tiny", "--random-weights",
    )  # fmt: skip
    assert res.returncode == 2 and "--noise is one decode's noise" in res.stderr


def test_prompt_requests_are_encoded_per_request(tmp_path: Path) -> None:
    """A ``prompt`` request (text encoder loaded) gets the image of a direct decode of that prompt."""
    from pid_trt import Decoder
    from tests.text_helpers import make_tiny_gemma

    gemma = make_tiny_gemma(tmp_path / "gemma")
    with Decoder.load(backbone="tiny", random_weights=True, text_encoder=gemma) as dec:
        lat, cap = request_inputs(dec.config, 7)
        fox, lake = decode_requests(
            dec,
            [
                DecodeRequest(lat, prompt=["a red fox in snow"], seed=np.array([[1]])),
                DecodeRequest(lat, cap, seed=np.array([[1]])),
                DecodeRequest(lat, prompt=["photo of mountain lake"], seed=np.array([[1]])),
            ],
        )[::2]
        for res, text in ((fox, "a red fox in snow"), (lake, "photo of mountain lake")):
            want = dec.decode(lat, prompt=text, seed=1)
            assert (torch.from_numpy(res.image) - want).abs().max().item() <= 1e-4
        assert not torch.equal(torch.from_numpy(fox.image), torch.from_numpy(lake.image))


# ------------------------------------------------------------------------------- protocol
def test_png_encoding_is_base64_unless_binary_is_asked() -> None:
    import base64

    from pid_trt.errors import InputFileError
    from pid_trt.serve.protocol import encode_pngs, png_encoding

    assert png_encoding("{}") == png_encoding("") == png_encoding(None) == "base64"
    assert png_encoding('{"png_encoding": "binary", "other": 1}') == "binary"
    assert png_encoding({"png_encoding": "base64"}) == "base64"
    with pytest.raises(InputFileError, match=r"^request r7: parameter png_encoding 'hex': expected 'base64'"):
        png_encoding('{"png_encoding": "hex"}', "request r7")
    pngs = [b"\x89PNG\r\n\x1a\n\x00\xff", b""]
    text = encode_pngs(pngs, "base64")
    assert all(t.isascii() for t in text) and [base64.b64decode(t) for t in text] == pngs
    assert encode_pngs(pngs, "binary") == pngs


def test_request_tiling_parameters_are_read_and_checked(decoder) -> None:
    """A request's tiling parameter of the wrong JSON type, or with a bad value, fails that
    request alone in one line naming it (TileOptions.from_params, the one reading of the wire
    format); other parameters (png_encoding) are not tiling."""
    from pid_trt.errors import InputFileError

    lat, cap = request_inputs(decoder.config, 4)
    bad = (
        ({"tile_batch": "2"}, InputFileError, "request r: parameter tile_batch '2': expected an integer"),
        (
            {"tile_overlap": True},
            InputFileError,
            "request r: parameter tile_overlap True: expected an integer",
        ),
        ({"tiles": 3}, InputFileError, "request r: parameter tiles 3: expected a string"),
        (
            {"allow_untrained_size": "yes"},
            InputFileError,
            "request r: parameter allow_untrained_size 'yes': expected true or false",
        ),
        ({"tile_batch": 0}, ConfigError, "request r: --tile-batch 0: expected an integer >= 1"),
        (
            {"tiles": "sideways"},
            ConfigError,
            "request r: --tiles 'sideways': expected auto, off or COLSxROWS (e.g. 3x2)",
        ),
    )
    reqs = [DecodeRequest(lat, cap, what="request r", tiling=params) for params, _, _ in bad]
    reqs.append(DecodeRequest(lat, cap, what="request ok", tiling={"png_encoding": "binary", "tiles": "off"}))
    out = decode_requests(decoder, reqs)
    for (_, kind, words), result in zip(bad, out, strict=False):
        assert type(result.error) is kind and str(result.error) == words
    assert out[-1].error is None and out[-1].image is not None and not out[-1].tiled


def test_model_options_carry_the_tiling_defaults_and_envelope() -> None:
    opts = ModelOptions(
        NetOptions(backbone="tiny", random_weights=True), tiling={"tiles": "off"}, envelope="64x64"
    )
    back = ModelOptions.from_json(opts.to_json())
    assert back.tiling == {"tiles": "off"} and back.envelope == "64x64"
    assert back.decoder_kwargs()["envelope"] == "64x64"
    net = back.check()
    assert net["tiling"] == "--tiles off --tile-batch 1" and net["envelope"] == "64x64"
    with pytest.raises(ConfigError, match=r"^--tiles 'sideways': expected auto, off or COLSxROWS"):
        ModelOptions(NetOptions(backbone="tiny", random_weights=True), tiling={"tiles": "sideways"}).check()


def test_a_request_carries_the_tiling_keywords_it_is_given(tmp_path: Path) -> None:
    """PidClient's tiling keywords and ``tiling`` dict become one set of request parameters;
    a name the server does not read, ``devices``, or one name with two values is refused
    before anything is sent (the port is closed: a send would be a connection error)."""
    from pid_trt.serve.client import PidClient, tiling_parameters

    assert tiling_parameters({"tiles": "2x2"}, tile_size="96x64", tile_batch=None) == {
        "tiles": "2x2",
        "tile_size": "96x64",
    }
    assert tiling_parameters(None, tiles=None) == {}
    assert tiling_parameters(TileOptions.create(tiles="3x2", tile_size="96x64"), tile_batch=None) == {
        "tiles": "3x2",
        "tile_size": "96x64",
        "tile_batch": 1,
        "allow_untrained_size": False,
    }
    assert tiling_parameters({"tiles": "off"}, tiles="off", allow_untrained_size=True) == {
        "tiles": "off",
        "allow_untrained_size": True,
    }
    lat = np.zeros((1, 16, 1, 1), np.float32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with PidClient(f"http://127.0.0.1:{port}", timeout_s=10, connect_timeout_s=5) as client:
        for kwargs, words in (
            ({"tiling": {"devices": "cuda:0,cuda:1"}}, "tiling 'devices': a request cannot choose devices, the "
             "server places its own (pidtrt serve --gpus)"),
            ({"tiling": {"tile": "2x2"}}, "tiling 'tile': expected one of tiles, tile_size, tile_overlap, "
             "tile_batch, allow_untrained_size"),
            ({"tiles": "2x2", "tiling": {"tiles": "off"}}, "tiles given twice: tiles='2x2' and "
             "tiling['tiles'] = 'off'"),
        ):  # fmt: skip
            with pytest.raises(ConfigError) as err:
                client.decode(lat, **kwargs)
            assert str(err.value) == words


def test_request_tiling_sends_the_options_given_on_the_command_line() -> None:
    """``given_tiling`` keeps the tiling options typed on the command line, a default's value
    included (``--tiles auto`` over a server's ``--tiles off``), and leaves out the others;
    outside a command, those that differ from their default."""
    from pid_trt.cli.options import with_request_tiling
    from pid_trt.cli.request import given_tiling

    got: list[dict] = []
    app = typer.Typer()

    @app.command()
    @with_request_tiling
    def show(ctx: typer.Context, tiling: TileOptions = None) -> None:  # type: ignore[assignment]
        got.append(given_tiling(tiling, ctx))

    runner = CliRunner()
    for args, want in (
        ([], {}),
        (["--tiles", "auto"], {"tiles": "auto"}),
        (["--tile-size", "96x64", "--tile-batch", "2"], {"tile_size": "96x64", "tile_batch": 2}),
        (
            ["--tile-overlap", "0", "--allow-untrained-size"],
            {"tile_overlap": 0, "allow_untrained_size": True},
        ),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert got.pop() == want
    assert given_tiling(TileOptions()) == {}
    assert given_tiling(TileOptions.create(tiles="2x2", allow_untrained_size=True, devices="cpu")) == {
        "tiles": "2x2",
        "allow_untrained_size": True,
    }


def test_request_without_caption_gets_the_servers_null_caption(tmp_path: Path) -> None:
    """A net that needs a caption (tiny weights from a file), served with a null caption: a
    request without caption or prompt decodes as a direct decode with those values
    (result caption: null (FILE)); the model metadata says so, and a null caption of the
    wrong width is refused before serving, in one line."""
    from safetensors.torch import save_file

    from pid_trt.config import TINY
    from pid_trt.decoder import Decoder
    from pid_trt.model import PidNet, random_init

    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in random_init(PidNet(TINY), seed=2).state_dict().items()}, str(ckpt),
              metadata={"pid_net_config": TINY.to_json()})  # fmt: skip
    values = torch.randn(
        1, TINY.txt_max_length, TINY.txt_embed_dim, generator=torch.Generator().manual_seed(3)
    )
    null = tmp_path / "null.safetensors"
    save_file({"null_caption_embs": values.to(torch.bfloat16)}, str(null))
    options = ModelOptions(NetOptions(checkpoint=ckpt), null_caption=str(null))
    assert options.check()["null_caption"] == f"null ({null})"
    lat, _ = request_inputs(TINY, 4)
    with Decoder.from_options(options.net, options.runtime, **options.decoder_kwargs()) as dec:
        out = decode_requests(dec, [DecodeRequest(lat, None, seed=np.array([[7]]), what="request n")])
        assert out[0].error is None and out[0].caption == f"null ({null})"
        direct = dec.decode(lat, values.to(torch.bfloat16).float(), seed=7)
    assert torch.equal(torch.from_numpy(out[0].image), direct)
    wide = tmp_path / "wide.safetensors"
    save_file({"caption_embedding": torch.zeros(1, 300, 2304)}, str(wide))
    with pytest.raises(Exception, match="width 2304, expected 32"):
        ModelOptions(NetOptions(checkpoint=ckpt), null_caption=str(wide)).check()
