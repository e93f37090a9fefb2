"""End-to-end engine tests: training runs as a user starts them (subprocesses of the CLI), a
SIGKILL in the middle of an epoch followed by ``--resume``, torchrun DDP on the CPU (gloo), and
``forgeloc test`` giving the same numbers with one and two processes on an uneven test set."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from forgeloc.data.synth import synthesize

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    train = synthesize(root / "train", 32, seed=3, size=64, photo_names=["astronaut", "coffee", "rocket", "camera"])
    # 7 held-out images: an odd size, so two processes get uneven shards.
    test = synthesize(root / "test", 7, seed=4, size=64, photo_names=["chelsea", "retina", "moon"])
    return {"train": train, "test": test}


def _config(tmp: Path, data: dict[str, Path], **train: object) -> Path:
    cfg = {
        "model": {"name": "unet_baseline_tiny"},
        "data": {
            "train": [str(data["train"])], "test": {"heldout": str(data["test"])},
            "input_size": 64, "augment": "light", "num_workers": 0,
        },
        "optim": {"lr": 3e-3, "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 4, "seed": 7, "deterministic": True, "eval_every": 3,
                  "save_every": 1, "keep_last": 5, "tensorboard": False, **train},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(args: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forgeloc", "train", *args], env=ENV, capture_output=True,
                          text=True, timeout=600, **kw)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path: Path, synth_data) -> None:
    cfg = _config(tmp_path, synth_data)
    # 32 steps per epoch (each sample drawn 4 times): long enough that the kill below lands inside
    # the second epoch even on a fast machine.
    longer = "data.samples_per_dataset=128"
    full = _train(["-c", str(cfg), longer, f"train.output_dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgeloc", "train", "-c", str(cfg), longer, f"train.output_dir={run}"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    first = run / "checkpoints" / "epoch_0000" / "train_state.pt"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the first epoch never finished"
    # Kill a fraction of an epoch later: the second epoch is under way, its checkpoint not written.
    epoch_seconds = json.loads((run / "log.jsonl").read_text().splitlines()[0])["seconds"]
    time.sleep(max(0.2, 0.3 * epoch_seconds))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch_0000", "the kill came too late"

    resumed = _train(["--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = _weights(tmp_path / "full"), _weights(run)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different[:5]}"
    # The evaluation at the end agrees too.
    log_full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    log_res = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log_full[-1]["results"] == log_res[-1]["results"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "forgeloc", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.ddp
def test_torchrun_ddp_training_on_cpu(tmp_path: Path, synth_data) -> None:
    cfg = _config(tmp_path, synth_data, epochs=2, eval_every=1)
    out = tmp_path / "ddp"
    res = _torchrun(2, ["train", "-c", str(cfg), f"train.output_dir={out}", "--device", "cpu"])
    assert res.returncode == 0, res.stderr[-4000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in log] == ["train", "eval", "train", "eval"], "rank 0 alone writes the log"
    heldout = log[-1]["results"]["heldout"]
    assert heldout["n_images"] == 7 and heldout.get("n_duplicates", 0) == 0  # uneven shards, none twice
    assert (out / "checkpoints" / "epoch_0001" / "model.safetensors").is_file()


@pytest.mark.ddp
def test_forgeloc_test_same_metrics_with_one_and_two_processes(tmp_path: Path, synth_data) -> None:
    cfg = _config(tmp_path, synth_data, epochs=1)
    assert _train(["-c", str(cfg), f"train.output_dir={tmp_path / 'run'}"]).returncode == 0
    # Batch size 1 in both runs: every image's prediction is then computed identically, so any
    # difference could only come from sharding and metric aggregation, which must be exact.
    common = ["test", "-k", str(tmp_path / "run"), "-d", f"heldout={synth_data['test']}", "--batch-size", "1",
              "--num-workers", "0", "--device", "cpu"]
    single = subprocess.run([sys.executable, "-m", "forgeloc", *common, "-o", str(tmp_path / "one")], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(2, [*common, "-o", str(tmp_path / "two")])
    assert double.returncode == 0, double.stderr[-4000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["results"]["heldout"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["results"]["heldout"]
    assert one["n_images"] == two["n_images"] == 7
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    for ext in ("md", "csv"):
        assert (tmp_path / "one" / f"metrics.{ext}").read_text().count("heldout") == 1


def test_auxiliary_loss_run_saves_inference_weights_and_resumes(tmp_path: Path, synth_data) -> None:
    """A model trained with NCL's losses switched on (``model.aux_loss``) predicts from its
    checkpoint like any other model, and ``--resume`` restores the auxiliary heads too."""
    from forgeloc.engine.config import load_config
    from forgeloc.engine.trainer import train
    from forgeloc.models.factory import load_model

    cfg_path = _config(tmp_path, synth_data, epochs=2, deterministic=False, max_steps_per_epoch=2)
    overrides = [f"train.output_dir={tmp_path / 'run'}", "model.aux_loss={name: ncl, weight: 0.5}"]
    first = train(load_config(cfg_path, [*overrides, "train.epochs=1"]), device="cpu")
    assert any(k.startswith("train_ncl_") for k in first.history[0]), first.history[0]
    model, meta = load_model(tmp_path / "run")
    assert meta["model"] == "unet_baseline_tiny" and not any(k.startswith("aux.") for k in model.state_dict())
    second = train(load_config(cfg_path, overrides), resume=tmp_path / "run", device="cpu")
    assert [r["epoch"] for r in second.history if r["type"] == "train"] == [0, 1]


def test_bf16_autocast_and_grad_clipping_train_on_cpu(tmp_path: Path, synth_data) -> None:
    from forgeloc.engine.config import load_config
    from forgeloc.engine.trainer import train

    cfg = load_config(_config(tmp_path, synth_data, epochs=1, deterministic=False, max_steps_per_epoch=3,
                              amp="bf16", output_dir=str(tmp_path / "bf16")), ["optim.grad_clip=1.0"])
    result = train(cfg, device="cpu")
    record = result.history[0]
    assert record["type"] == "train" and math.isfinite(record["train_loss"])
    assert result.final_metrics["heldout"]["n_images"] == 7
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(load_config(_config(tmp_path, synth_data, amp="fp16")), device="cpu")
