"""Issue 19: no command shows a Python traceback, whatever it is given.

Every sub-command runs over the suite's bad-input corpus (``test_bad_inputs.BAD_FILES``: empty,
truncated, text, HTML, SVG, random and corrupt files) and more built here: files cut inside their
header, a decompression bomb's header, odd modes and multi-frame files, masks of the wrong size,
deeply nested / one-line / non-list JSON, a symlink loop, a truncated image in a training set,
checkpoints that are not what their name says, output paths that are read-only, a file or under a
file, and out-of-range options. Each case must end with a non-zero exit and a one-line message
(or, for inputs that are merely unusual, succeed), never with "Traceback".

Commands run in-process through typer's CliRunner over the same command functions the
``forgeloc`` entry point registers (an exception escaping a command is ``result.exception``, which
is what the entry point would print as a traceback); two cases run ``python -m forgeloc`` in a
subprocess to check the real entry point. Tiny inputs and the tiny model keep it to seconds.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from test_bad_inputs import BAD_FILES, _png_header_only  # the suite's corpus of bad image files
from test_reliability_dataloss import _mask
from typer.testing import CliRunner

import forgeloc
from forgeloc.cli import _COMMAND_MODULES
from forgeloc.engine.checkpointing import write_model_folder
from forgeloc.io import save_state_dict

RNG = np.random.default_rng(19)


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------
def _image(path: Path, size: int = 64, seed: int = 0, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, **save)
    return path




def _jpeg_bytes(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _frames(path: Path, n: int) -> Path:
    frames = [Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def _odd_modes(folder: Path) -> None:
    """Readable images in unusual modes: each must be predicted, not refused or crashed on."""
    folder.mkdir(parents=True)
    rgb = RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((RNG.integers(0, 65535, (48, 48))).astype(np.uint16)).save(folder / "gray16.png")
    Image.fromarray(rgb).convert("1").save(folder / "bilevel.png")
    Image.fromarray(np.dstack([rgb, RNG.integers(0, 256, (48, 48), dtype=np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    _frames(folder / "pages.tif", 3)


@dataclass
class Corpus:
    root: Path
    ckpt: Path  # a tiny model's checkpoint folder (default widths, so convert can read its weights)
    data: Path  # img/, masks/ and JSON lists
    bad: Path  # the bad image files
    odd: Path  # readable images in odd modes
    anim: Path  # a 12-frame GIF
    loop: Path  # a folder holding a symbolic link to itself
    trainset: Path  # a JSON list whose last image is truncated
    a_file: Path  # a plain file, where folders are expected
    read_only: Path  # a folder no file can be written into


def _read_only_folder(root: Path) -> Path:
    if os.geteuid() != 0:
        folder = root / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # root ignores permission bits; /sys is mounted read-only in containers and on most hosts
    folder = Path("/sys/forgeloc-no-traceback-test")
    if os.access("/sys", os.W_OK) and Path("/sys").stat().st_dev == Path(root).stat().st_dev:
        pytest.skip("no read-only location to test against")
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    model = forgeloc.create_model("unet_baseline_tiny")
    ckpt = root / "ckpt"
    write_model_folder(ckpt, model.state_dict(), {"model": "unet_baseline_tiny", "model_kwargs": {},
                                                  "input": {"mode": "resize", "size": 64}, "threshold": 0.5})
    save_state_dict(model, root / "weights_really_safetensors.pth")
    (root / "garbage.pth").write_bytes(bytes(np.random.default_rng(5).integers(0, 256, 2048, dtype=np.uint8)))

    data = root / "data"
    for i in range(4):
        _image(data / "img" / f"{i}.png", seed=i)
    _mask(data / "masks" / "1.png")
    _mask(data / "masks" / "small.png", size=32)
    (data / "test.json").write_text(json.dumps([["img/0.png", "Negative"], ["img/1.png", "masks/1.png"]]))
    (data / "wrong_mask.json").write_text(json.dumps([["img/1.png", "masks/small.png"]]))
    (data / "one_line.json").write_text(json.dumps([["img/0.png", "Negative"], ["img/gone.png", "Negative"]]))
    (data / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (data / "mapping.json").write_text(json.dumps({"set": "test.json"}))
    (data / "latin1.json").write_bytes(b'[["\xe9t\xe9.png", "Negative"]]')

    bad = root / "bad"
    bad.mkdir()
    for name, (make, _) in BAD_FILES.items():
        (bad / name).write_bytes(make())
    (bad / "cut_in_header.jpg").write_bytes(_jpeg_bytes()[:20])
    (bad / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    (bad / "[draft] page.png").write_bytes(b"<!DOCTYPE html><html>[not an image]</html>")

    loop = root / "loop"
    loop.mkdir()
    (loop / "self.png").symlink_to(loop / "self.png")

    trainset = root / "trainset"
    for i in range(4):
        _image(trainset / "img" / f"{i}.png", seed=i)
    (trainset / "img" / "3.png").write_bytes((trainset / "img" / "3.png").read_bytes()[:300])
    (trainset / "train.json").write_text(json.dumps([[f"img/{i}.png", "Negative"] for i in range(4)]))

    a_file = root / "a_file.txt"
    a_file.write_text("not a folder")
    _odd_modes(root / "odd")
    return Corpus(root, ckpt, data, bad, root / "odd", _frames(root / "anim.gif", 12), loop,
                  trainset / "train.json", a_file, _read_only_folder(root))


# --------------------------------------------------------------------------------------------------
# Running a command
# --------------------------------------------------------------------------------------------------
def _app() -> typer.Typer:
    """Every sub-command of ``forgeloc``, registered as the entry point does, on a fresh app."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, so the command's name stays in the arguments
        pass

    for name in _COMMAND_MODULES:
        importlib.import_module(f"forgeloc.cli.{name}").register(app)
    return app


@pytest.fixture(scope="module")
def run(corpus: Corpus):
    app = _app()

    def invoke(*args: object) -> tuple[int, str]:
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
        output = result.output
        escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not escaped, f"{args}: {type(result.exception).__name__}: {result.exception}\n{output}"
        assert "Traceback" not in output, output
        return result.exit_code, " ".join(output.split())

    cwd = Path.cwd()
    os.chdir(corpus.root)  # a command that wrongly scans "." scans the corpus, not the repository
    try:
        yield invoke
    finally:
        os.chdir(cwd)


def _fails(run, expected: str, *args: object, code: int | None = None) -> str:
    exit_code, output = run(*args)
    assert exit_code != 0 and (code is None or exit_code == code), f"{args} exited {exit_code}: {output}"
    assert expected in output, f"{args}: {expected!r} not in {output!r}"
    return output


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A serve case that passed its checks would block the suite: make that a failure instead."""
    pytest.importorskip("fastapi")  # without the [serve] extra, serve's refusal is tested elsewhere

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server was started; every serve case here must be refused first")

    monkeypatch.setattr("forgeloc.inference.server.serve", refuse)


# --------------------------------------------------------------------------------------------------
# The cases, by command
# --------------------------------------------------------------------------------------------------
def test_predict(run, corpus: Corpus) -> None:
    k = ["-k", corpus.ckpt]
    output = _fails(run, "input(s) failed", "predict", corpus.bad, *k, "-o", corpus.root / "p_bad", code=1)
    for name, (_, expected) in BAD_FILES.items():
        assert f"{name}: " in output and expected.split()[0] in output.split(f"{name}: ", 1)[1], name
    assert "cut_in_header.jpg: truncated or corrupt JPEG" in output
    assert "bomb.png: too many pixels" in output
    assert "[draft] page.png: is an HTML document" in output  # printed verbatim: no markup eats "[draft]"

    code, output = run("predict", corpus.odd, corpus.anim, *k, "-o", corpus.root / "p_odd", "--no-report")
    assert code == 0, output
    assert "anim.gif: animated GIF: frame 1 of 12 analysed" in output
    assert "pages.tif: multi-page TIFF: page 1 of 3 analysed" in output

    _fails(run, "symbolic link loop", "predict", str(corpus.loop / "*"), *k, "-o", corpus.root / "p_loop")
    image = corpus.data / "img" / "0.png"
    damaged = corpus.root / "p_damaged"  # an --out whose results.json is not one forgeloc wrote
    damaged.mkdir()
    (damaged / "results.json").write_text('{"results": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, output = run("predict", image, *k, "-o", damaged, "--no-report")
    assert code == 0, output
    _fails(run, "is a file, not a folder", "predict", image, *k, "-o", corpus.a_file, code=2)
    _fails(run, "so no folder can be made under it", "predict", image, *k, "-o", corpus.a_file / "out", code=2)
    _fails(run, "--out", "predict", image, *k, "-o", corpus.read_only / "out", code=2)
    _fails(run, "unknown device 'tpu'", "predict", image, *k, "--device", "tpu", code=2)
    _fails(run, "--threshold must be in [0, 1]", "predict", image, *k, "--threshold", "7", code=2)
    _fails(run, "--max-pixels must be a positive", "predict", image, *k, "--max-pixels", "-5", code=2)
    _fails(run, "no such checkpoint", "predict", image, "-k", corpus.root / "nosuch", code=2)
    _fails(run, "garbage.pth", "predict", image, "-k", corpus.root / "garbage.pth", "--model",
           "unet_baseline_tiny", code=2)


def test_test(run, corpus: Corpus) -> None:
    args = ["test", "-k", corpus.ckpt, "--num-workers", "0"]
    out = ["-o", corpus.root / "t_out"]
    _fails(run, "nested too deeply", *args, "-d", corpus.data / "nested.json", *out)
    _fails(run, "must be a JSON list", *args, "-d", corpus.data / "mapping.json", *out)
    _fails(run, "not UTF-8", *args, "-d", corpus.data / "latin1.json", *out)
    _fails(run, "32x32", *args, "-d", corpus.data / "wrong_mask.json", *out)
    _fails(run, "symbolic link loop", *args, "-d", corpus.loop, *out)
    _fails(run, "no path after '='", *args, "-d", "name=", *out, code=2)  # not "." (the working folder)
    _fails(run, "is a file, not a folder", *args, "-d", corpus.data / "test.json", "-o", corpus.a_file, code=2)
    _fails(run, "--out", *args, "-d", corpus.data / "test.json", "-o", corpus.read_only / "t", code=2)
    _fails(run, "unknown device 'tpu'", *args, "-d", corpus.data / "test.json", *out, "--device", "tpu", code=2)
    _fails(run, "--input-size must be a positive", *args, "-d", corpus.data / "test.json", *out,
           "--input-size", "0", code=2)


def test_mask_size_message_names_no_python_option(run, corpus: Corpus) -> None:
    output = _fails(run, "32x32", "data", "check", corpus.data / "wrong_mask.json")
    assert "resize=True" not in output and "resize the mask file to 64x64" in output


def test_train(run, corpus: Corpus) -> None:
    base = ["train", "model.name=unet_baseline_tiny", f"data.train={corpus.data / 'test.json'}",
            "data.input_size=64", "data.num_workers=0", "data.augment=none", "train.epochs=1",
            "train.batch_size=2", "train.tensorboard=false"]
    run_dir = corpus.root / "runs" / "r"
    out = f"train.output_dir={run_dir}"
    for override, expected in (("optim.lr=-1", "optim.lr: must be a positive number"),
                               ("data.input_size=0", "data.input_size: must be a positive number of pixels"),
                               ("model.name=nosuchmodel", "model.name: unknown model 'nosuchmodel'"),
                               ("train.epcohs=3", "train.epcohs")):
        output = _fails(run, expected, *base, out, override, code=2)
        assert "errors.pydantic.dev" not in output
    _fails(run, "dataset not found", *base, out, f"data.train={corpus.root / 'nosuch.json'}", code=1)
    assert not run_dir.exists()  # all refused before the run folder was made
    _fails(run, "multiple of", *base, out, "data.input_size=63")
    _fails(run, "unknown device 'tpu'", *base, out, "--device", "tpu", code=2)
    bad_yaml = corpus.root / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    _fails(run, "not a valid YAML file", "train", "-c", bad_yaml, code=2)
    deep_yaml = corpus.root / "deep.yaml"
    deep_yaml.write_text("[" * 50_000 + "]" * 50_000)
    _fails(run, "deep.yaml", "train", "-c", deep_yaml, code=2)
    # a truncated image in the training set: one line naming the file, not a chained traceback
    _fails(run, "3.png: truncated or corrupt", *base, f"data.train={corpus.trainset}",
           f"train.output_dir={corpus.root / 'runs' / 'trunc'}", code=1)


def test_convert(run, corpus: Corpus) -> None:
    weights = corpus.ckpt / "model.safetensors"
    _fails(run, "--model 'nosuch': no such model", "convert", weights, corpus.root / "cv", "-m", "nosuch", code=2)
    for output, expected in ((corpus.a_file, "is a file, not a folder"),
                             (corpus.a_file / "sub", "so no folder can be made under it"),
                             (corpus.read_only / "cv", "OUTPUT"),
                             (corpus.read_only / "cv.safetensors", "OUTPUT")):
        _fails(run, expected, "convert", weights, output, "-m", "unet_baseline_tiny", code=2)
    _fails(run, "checkpoint file not found", "convert", corpus.root / "nosuch.pth", corpus.root / "cv",
           "-m", "unet_baseline_tiny", code=2)
    _fails(run, "garbage.pth", "convert", corpus.root / "garbage.pth", corpus.root / "cv", "-m",
           "unet_baseline_tiny", code=2)
    # a safetensors file named .pth is read as what it is, not called a legacy pickle
    code, output = run("convert", corpus.root / "weights_really_safetensors.pth", corpus.root / "cv_ok",
                       "-m", "unet_baseline_tiny")
    assert code == 0 and "legacy" not in output, output


def test_data_commands(run, corpus: Corpus) -> None:
    lists = corpus.data
    output = _fails(run, "image file not found", "data", "check", lists / "one_line.json", code=1)
    assert "one_line.json:line 1, entry 2: image file not found" in output  # not "line 1" for every entry
    _fails(run, "nested too deeply", "data", "check", lists / "nested.json", code=1)
    _fails(run, "symbolic link loop", "data", "check", corpus.loop, code=1)
    _fails(run, "truncated or corrupt", "data", "check", corpus.bad, code=1)
    _fails(run, "Invalid value for '--max-pixels'", "data", "check", lists / "test.json", "--max-pixels", "0", code=2)
    _fails(run, "Invalid value for '--threshold'", "data", "check", lists / "test.json", "--threshold", "300", code=2)
    for report, expected in ((corpus.a_file / "r.json", "so no folder can be made under it"),
                             (lists, "is a folder"), (corpus.read_only / "r.json", "--json")):
        _fails(run, expected, "data", "check", lists / "test.json", "--json", report, code=2)
    for output, expected in ((corpus.a_file / "o.json", "so no folder can be made under it"),
                             (lists, "must end in .json"), (corpus.read_only / "o.json", "cannot write")):
        _fails(run, expected, "data", "convert", lists / "test.json", output, code=2)
    _fails(run, "nested too deeply", "data", "convert", lists / "nested.json", corpus.root / "o.json", code=1)
    _fails(run, "plain image folder", "data", "convert", corpus.odd, corpus.root / "o.json")
    _fails(run, "casia1", "data", "prepare", "nosuchset", corpus.bad, "--out", corpus.root / "prep")
    _fails(run, "source folder not found", "data", "prepare", "casia1", corpus.root / "nosuch", "--out",
           corpus.root / "prep")


def test_synth(run, corpus: Corpus) -> None:
    _fails(run, "is a file, not a folder", "synth", "--out", corpus.a_file, "--n", "2", code=2)
    _fails(run, "so no folder can be made under it", "synth", "--out", corpus.a_file / "s", "--n", "2", code=2)
    _fails(run, "--out", "synth", "--out", corpus.read_only / "s", "--n", "2", "--size", "64")
    _fails(run, "--realistic needs --photos", "synth", "--out", corpus.root / "s", "--realistic")


def test_serve_argument_checks(run, corpus: Corpus, never_serve: None) -> None:
    _fails(run, "Invalid value for '--port'", "serve", corpus.ckpt, "--port", "0", code=2)
    _fails(run, "unknown device 'tpu'", "serve", corpus.ckpt, "--device", "tpu", code=2)
    _fails(run, "--threshold must be in [0, 1]", "serve", corpus.ckpt, "--threshold", "7", code=2)
    _fails(run, "no such checkpoint", "serve", corpus.root / "nosuch", code=2)
    _fails(run, "garbage.pth", "serve", corpus.root / "garbage.pth", "--model", "unet_baseline_tiny", code=2)
    _fails(run, "--amp must be bf16 or fp16", "serve", corpus.ckpt, "--amp", "fp8", code=2)
    _fails(run, "--max-upload-mb must be positive", "serve", corpus.ckpt, "--max-upload-mb", "-1", code=2)


def test_compare_robustness_export(run, corpus: Corpus) -> None:
    _fails(run, "cannot read the results", "compare", corpus.data / "nested.json", "--paper", "mesorch")
    _fails(run, "cannot read the results", "compare", corpus.a_file, "--paper", "mesorch")
    _fails(run, "not a forgeloc metrics.json", "compare", corpus.data / "test.json", "--paper", "mesorch")

    args = ["robustness", "-k", corpus.ckpt, "--num-workers", "0", "-o", corpus.root / "rob"]
    _fails(run, "unknown device 'tpu'", *args, "-d", corpus.data / "test.json", "--device", "tpu")
    _fails(run, "no path after '='", *args, "-d", "name=", code=2)
    _fails(run, "nested too deeply", *args, "-d", corpus.data / "nested.json")
    _fails(run, "is a file, not a folder", "robustness", "-k", corpus.ckpt, "-d", corpus.data / "test.json",
           "-o", corpus.a_file, code=2)

    _fails(run, "no such checkpoint", "export", "nosuch", "-o", corpus.root / "ex")
    _fails(run, "is a file, not a folder", "export", corpus.ckpt, "-o", corpus.a_file)


def test_quickstart_demo_bench_corpus(run, corpus: Corpus) -> None:
    """Only refusals: each of these commands takes minutes once it starts."""
    for command in ("quickstart", "demo"):
        _fails(run, "is a file, not a folder", command, "--out", corpus.a_file, code=2)
        _fails(run, "--out", command, "--out", corpus.read_only / "q", code=2)
    _fails(run, "so no folder can be made under it", "quickstart", "--out", corpus.a_file / "q", code=2)
    _fails(run, "Invalid value for '--epochs'", "quickstart", "--epochs", "0", "--out", corpus.root / "q", code=2)
    _fails(run, "Invalid value for '--size'", "quickstart", "--size", "0", "--out", corpus.root / "q", code=2)
    _fails(run, "unknown model(s) nosuch", "bench", "-m", "nosuch", code=2)
    _fails(run, "unknown device 'tpu'", "bench", "--device", "tpu", code=2)
    _fails(run, "--amp must be none, bf16 or fp16", "bench", "--amp", "fp8", code=2)
    _fails(run, "Invalid value for '--batch'", "bench", "--batch", "0", code=2)
    _fails(run, "so no folder can be made under it", "bench", "--json", corpus.a_file / "b.json", code=2)
    _fails(run, "is a file, not a folder", "corpus", "build", "--out", corpus.a_file, code=2)


def test_listing_and_help_commands(run) -> None:
    code, output = run("detectors")
    assert code == 0 and "copymove" in output
    for command in ("demo", "quickstart", "bench", "corpus", "train", "predict"):
        code, output = run(command, "--help")
        assert code == 0 and "Usage" in output, (command, output)


def test_train_help_names_configs_that_exist() -> None:
    from forgeloc.cli.train import train

    repo = Path(__file__).resolve().parents[1]
    named = [word.rstrip(".,)") for word in (train.__doc__ or "").split() if word.startswith("configs/")]
    assert named and all((repo / path).is_file() for path in named), named


# --------------------------------------------------------------------------------------------------
# The real entry point, in a subprocess
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["data_check_nested", "predict_bad_folder"])
def test_entry_point_prints_no_traceback(corpus: Corpus, case: str) -> None:
    args = {
        "data_check_nested": ["data", "check", corpus.data / "nested.json"],
        "predict_bad_folder": ["predict", corpus.bad, "-k", corpus.ckpt, "-o", corpus.root / "p_sub", "--no-report"],
    }[case]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-m", "forgeloc", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=corpus.root)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output
    assert "UserWarning" not in output and "Corrupt EXIF" not in output, output
