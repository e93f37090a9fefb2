"""Reading untrusted pickled checkpoints without executing them (forgeloc.io).

Every pickle here is built by the test itself: whole models whose classes no longer exist, payloads
whose ``__reduce__`` would run a command, and files that are not checkpoints at all.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from forgeloc.io import (
    CheckpointError,
    InertObject,
    extract_state_dict,
    load_state_dict_file,
    read_checkpoint_object,
    restricted_load,
)


def _assert_same_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


# --------------------------------------------------------------------------------------------------
# (1) a whole-model pickle whose class cannot be imported any more
# --------------------------------------------------------------------------------------------------
THROWAWAY = textwrap.dedent(
    """
    import torch
    from torch import nn

    from forgeloc.models.ncl import NCL


    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.register_buffer("scale", torch.arange(4.0))
            self.register_buffer("scratch", torch.zeros(2), persistent=False)
            self.seq = nn.Sequential(nn.Linear(4, 2), nn.ReLU())


    class CaCLNet(NCL):
        # stands for the authors' model: our tiny NCL plus a head of their own, unknown to forgeloc
        def __init__(self):
            super().__init__(layers=(1, 1, 1, 1), multi_grid=(1,), width=8, aspp_channels=64,
                             low_level_channels=16, decoder_channels=32, input_size=128,
                             head_hidden=64, embed_dim=32)
            self.projection = nn.Sequential(nn.Conv2d(64, 16, 1), nn.BatchNorm2d(16))
    """
)


@pytest.fixture
def vanished_module(tmp_path):
    """Import a module written to tmp_path, hand it to the test, then make it unimportable."""
    name = f"ncl_throwaway_{os.getpid()}"
    path = tmp_path / f"{name}.py"
    path.write_text(THROWAWAY)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)

        def vanish() -> None:
            sys.modules.pop(name, None)
            path.unlink()
            sys.path.remove(str(tmp_path))
            importlib.invalidate_caches()
            assert importlib.util.find_spec(name) is None  # a real unpickler would raise ImportError

        yield module, name, vanish
    finally:
        sys.modules.pop(name, None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))


def test_whole_model_of_vanished_class(tmp_path, vanished_module):
    module, name, vanish = vanished_module
    torch.manual_seed(0)
    net = module.Classifier()
    net.bn.running_mean.uniform_()
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    src = tmp_path / "whole.pth"
    torch.save(net, src)
    del net
    vanish()

    obj, how = read_checkpoint_object(src)
    assert how == "restricted" and isinstance(obj, InertObject)
    assert obj.qualname == f"{name}.Classifier"
    sd = extract_state_dict(obj, str(src))
    _assert_same_state(sd, expected)  # the non-persistent buffer is left out, as state_dict() does
    assert "scratch" not in sd
    _, inert = restricted_load(src)
    assert f"{name}.Classifier" in inert and "torch.nn.modules.conv.Conv2d" in inert
    assert name not in sys.modules  # nothing was imported


def test_convert_pickled_authors_model(tmp_path, vanished_module, caplog):
    """``forgeloc convert whole.pth OUT --model ncl_tiny`` on a pickled whole model of an unknown class."""
    from typer.testing import CliRunner

    from forgeloc.cli import _register_commands, app

    module, _, vanish = vanished_module
    torch.manual_seed(1)
    net = module.CaCLNet()
    for p in net.parameters():
        p.data.normal_()
    expected = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("projection.")}
    src = tmp_path / "20230319-010.pth"
    torch.save(net, src)
    del net
    vanish()

    if not any(c.name == "convert" for c in app.registered_commands):
        _register_commands()
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out"), "--model", "ncl_tiny"])
    assert result.exit_code == 0, result.output
    assert "projection.0.weight" in caplog.text  # the unknown head is dropped, by name
    converted = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(converted) == set(expected)
    for k, v in expected.items():
        assert torch.equal(converted[k], v), k


# --------------------------------------------------------------------------------------------------
# (2) malicious payloads
# --------------------------------------------------------------------------------------------------
class SystemPayload:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class SubprocessPayload:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


class EvalPayload:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


class Carrier(nn.Module):
    def __init__(self, marker) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.payload = SubprocessPayload(marker)  # pickled inside the module's __dict__


def test_malicious_training_dict_is_read_inertly(tmp_path):
    markers = [tmp_path / f"pwned_{i}" for i in range(3)]
    torch.manual_seed(0)
    sd = nn.Linear(3, 2).state_dict()
    src = tmp_path / "evil.pth"
    torch.save(
        {"model": sd, "epoch": 1, "hook": SystemPayload(markers[0]),
         "nested": [{"x": EvalPayload(markers[2])}], "sub": SubprocessPayload(markers[1])},
        src,
    )
    with pytest.raises(pickle.UnpicklingError):
        torch.load(src, map_location="cpu", weights_only=True)  # the safe loader refuses it ...
    got = load_state_dict_file(src)  # ... and our fallback reads it without running anything
    _assert_same_state(got, sd)
    assert not any(m.exists() for m in markers)
    obj, inert = restricted_load(src)
    assert isinstance(obj["hook"], InertObject) and obj["hook"].args == (f"touch {markers[0]}",)
    assert {"posix.system", "subprocess.call", "builtins.eval"} <= inert
    assert not any(m.exists() for m in markers)


def test_malicious_module_state_is_read_inertly(tmp_path):
    marker = tmp_path / "pwned_module"
    torch.manual_seed(0)
    net = Carrier(marker)
    src = tmp_path / "carrier.pth"
    torch.save(net, src)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(src, map_location="cpu", weights_only=True)
    got = load_state_dict_file(src)
    _assert_same_state(got, net.state_dict())
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# (3) a zip checkpoint of a whole nn.Module of a class defined here (also wrapped in DataParallel)
# --------------------------------------------------------------------------------------------------
class LocalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)
        self.head.weight.requires_grad_(False)  # a frozen parameter is still a parameter
        self.register_buffer("index", torch.arange(5, dtype=torch.int64))
        self.register_buffer("half_buf", torch.ones(3, dtype=torch.float16))


@pytest.mark.parametrize("wrap", [False, True])
def test_zip_whole_module_of_local_class(tmp_path, wrap):
    torch.manual_seed(0)
    net = LocalNet()
    net.stem[1].running_var.uniform_(0.5, 2.0)
    src = tmp_path / "local.pth"
    torch.save(nn.DataParallel(net) if wrap else net, src)
    import zipfile

    assert zipfile.is_zipfile(src)
    got = load_state_dict_file(src)  # DataParallel's "module." prefix is removed
    _assert_same_state(got, net.state_dict())
    # A view saved with its storage (shared or offset) comes back with the right values.
    shared = torch.arange(12.0)
    torch.save({"state_dict": {"a": shared[2:8].view(2, 3), "b": shared}}, tmp_path / "views.pth")
    obj, _ = restricted_load(tmp_path / "views.pth")
    assert torch.equal(obj["state_dict"]["a"], shared[2:8].view(2, 3))


# --------------------------------------------------------------------------------------------------
# (4) things that are not checkpoints
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(16))
def test_garbage_is_a_clear_error(tmp_path, seed):
    # Seeded, so that CI is deterministic (os.urandom once let torch's KeyError escape, 1 run in N);
    # many more seeded cases, truncations and bit flips: tests/test_reliability_checkpoints.py.
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_state_dict_file(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth"):
        load_state_dict_file(empty)
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
        restricted_load(garbage)
    # A truncated zip archive.
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_state_dict_file(truncated)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_legacy_whole_model_is_refused_clearly(tmp_path):
    src = tmp_path / "legacy.pth"
    torch.save(LocalNet(), src, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        load_state_dict_file(src)
