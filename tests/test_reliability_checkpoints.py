"""Untrusted checkpoints: resource exhaustion, clear errors, tampered configs (issue 19).

Every malicious file is built here. The loads that would take gigabytes without the checks run in a
subprocess whose address space is capped at 1.5 GiB above the interpreter's baseline, so a
regression fails (MemoryError, or the child is killed) instead of exhausting the CI machine. The
fuzz cases use fixed seeds: CI is deterministic.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

import forgeloc
from forgeloc.io import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    atomic_write,
    load_state_dict_file,
    read_checkpoint_object,
    restricted_load,
    save_state_dict,
)
from forgeloc.models.factory import load_model, load_weights

REPO = Path(__file__).resolve().parents[1]
ONE_FLOAT = struct.pack("<f", 1.0)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --------------------------------------------------------------------------------------------------
# Crafting checkpoints by hand
# --------------------------------------------------------------------------------------------------
class Storage:
    """Pickled as torch.save pickles a storage: a persistent id naming a record of the archive."""

    def __init__(self, key: str, numel: int, storage_type: type = torch.FloatStorage) -> None:
        self.key, self.numel, self.storage_type = key, numel, storage_type


class Tensor:
    """Pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``, any values."""

    def __init__(self, storage: Storage, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> None:
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class System:
    def __reduce__(self):
        return (os.system, ("true",))


class Eval:
    def __reduce__(self):
        return (eval, ("1",))


class _ZipPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel, None)
        return None


def dumps(obj, pickler=_ZipPickler) -> bytes:
    buf = io.BytesIO()
    pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def zip_checkpoint(path: Path, data_pkl: bytes, records: dict[str, bytes], prefix: str = "archive") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, raw in records.items():
            zf.writestr(f"{prefix}/data/{key}", raw)
        zf.writestr(f"{prefix}/version", "3\n")
    return path


def legacy_checkpoint(path: Path, obj, records: dict[str, tuple[int, bytes]]) -> Path:
    """The pre-1.6 format: magic, protocol, system info, object, storage keys, then (numel, data) each."""
    with open(path, "wb") as fh:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, fh, protocol=2)
        fh.write(dumps(obj, _LegacyPickler))
        pickle.dump(list(records), fh, protocol=2)
        for numel, raw in records.values():
            fh.write(struct.pack("<q", numel) + raw)
    return path


def raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """Write a zip by hand: (name, stored payload, method, crc32, uncompressed size) per member."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, usize in members:
        offset, encoded = len(out), name.encode()
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload), usize,
                           len(encoded), 0) + encoded + payload
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(payload), usize,
                               len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    out += central + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                                 len(out), 0)
    path.write_bytes(bytes(out))
    return path


def deflate_bomb(path: Path, expanded_mib: int) -> Path:
    """A torch.save-shaped archive whose one storage record inflates to ``expanded_mib`` MiB of zeros.

    The deflate stream repeats one fully flushed block of 1 MiB of zeros, so it takes a few MB and
    no time to build; the CRC is the real one."""
    mib = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(mib) + comp.flush(zlib.Z_FULL_FLUSH)
    stream = block * expanded_mib + comp.flush()
    crc = 0
    for _ in range(expanded_mib):
        crc = zlib.crc32(mib, crc)
    numel = (expanded_mib << 20) // 4
    pkl = dumps({"w": Tensor(Storage("0", numel), (numel,), (1,))})
    return raw_zip(path, [
        ("archive/data.pkl", pkl, zipfile.ZIP_STORED, zlib.crc32(pkl), len(pkl)),
        ("archive/byteorder", b"little", zipfile.ZIP_STORED, zlib.crc32(b"little"), 6),
        ("archive/data/0", stream, zipfile.ZIP_DEFLATED, crc, expanded_mib << 20),
        ("archive/version", b"3\n", zipfile.ZIP_STORED, zlib.crc32(b"3\n"), 2),
    ])


def memo_bomb_pickle() -> bytes:
    """9 bytes that make CPython's C unpickler grow its memo array to 2**29 entries (4 GiB)."""
    return b"\x80\x02N" + b"r" + struct.pack("<I", 2**28) + b"."


def copy_bomb_pickle(items: int = 100_000, copies: int = 50_000) -> bytes:
    """A list of ``items`` Nones, then ``copies`` calls of ``list(that list)``: ~40 GB from 400 KB."""
    body = b"\x80\x02c__builtin__\nlist\nq\x00]q\x01(" + b"N" * items + b"e]q\x02("
    body += b"h\x00h\x01\x85R" * copies
    return body + b"e."


# --------------------------------------------------------------------------------------------------
# Running the dangerous loads with bounded memory and time
# --------------------------------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from forgeloc import io as checkpoint
    from forgeloc.models.factory import create_model, load_model

    def vm_bytes():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))

    cap = vm_bytes() + int(1.5 * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    calls = {
        "load_state_dict_file": checkpoint.load_state_dict_file,
        "restricted_load": checkpoint.restricted_load,
        "read_checkpoint_object": checkpoint.read_checkpoint_object,
        "load_model": load_model,
        "create_model": lambda p: create_model("unet_baseline_tiny", checkpoint=p),
    }
    results = []
    for name, path in json.loads(sys.argv[1]):
        start = time.monotonic()
        try:
            value = calls[name](path)
            outcome = {"ok": type(value).__name__}
        except checkpoint.CheckpointError as err:
            outcome = {"error": "CheckpointError", "message": str(err)}
        except BaseException as err:  # MemoryError and friends: what the checks must prevent
            outcome = {"error": type(err).__name__, "message": str(err)[:300]}
        outcome.update(call=name, path=path, seconds=time.monotonic() - start)
        results.append(outcome)
    print(json.dumps(results))
    """
)


def run_bounded(cases: list[tuple[str, Path]], timeout: float = 600) -> list[dict]:
    # The timeout mostly covers importing torch on a loaded 2-core CI box; each load's own time is
    # asserted separately (< 30 s; they take milliseconds).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([(call, str(path)) for call, path in cases])],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bounded_results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """All dangerous files, loaded in one capped subprocess (one torch import)."""
    d = tmp_path_factory.mktemp("malicious")
    files = {
        # 5: a stride-0 40,000 x 40,000 tensor over one stored float (6.4 GB if materialised) ...
        "stride0": zip_checkpoint(d / "stride0.pth", dumps({"w": Tensor(Storage("0", 1), (40000, 40000), (0, 0))}),
                                  {"0": ONE_FLOAT}),
        # ... the same next to an executable global, so that torch.load refuses it and the
        # restricted reader (which clones every tensor) gets it
        "stride0_evil": zip_checkpoint(
            d / "stride0_evil.pth",
            dumps({"model": {"w": Tensor(Storage("0", 1), (40000, 40000), (0, 0))}, "hook": System()}),
            {"0": ONE_FLOAT}),
        # ... a tensor whose size runs past its storage
        "overrun": zip_checkpoint(
            d / "overrun.pth", dumps({"model": {"fc.weight": Tensor(Storage("0", 1), (1000, 1000), (1000, 1))},
                                      "hook": System()}), {"0": ONE_FLOAT}),
        # 6: a deflated record that inflates to 2 GiB
        "bomb": deflate_bomb(d / "bomb.pth", expanded_mib=2048),
        # legacy format: the pickle declares a 4 GB storage (torch allocates it before reading) over 1 float
        "legacy_huge": legacy_checkpoint(d / "legacy_huge.pth", {"w": Tensor(Storage("0", 10**9), (1,), (1,))},
                                         {"0": (1, ONE_FLOAT)}),
        # pickles that ask the unpickler itself for gigabytes
        "memo": zip_checkpoint(d / "memo.pth", memo_bomb_pickle(), {}),
        "copies": zip_checkpoint(d / "copies.pth", copy_bomb_pickle(), {}),
        "bytes": zip_checkpoint(d / "bytes.pth", b"\x80\x02B" + struct.pack("<I", 0xFFFFFFF0) + b"xx.", {}),
    }
    # a checkpoint folder whose config.json asks for a 20,000-channel layer (14 GB of weights)
    folder = d / "wide"
    save_state_dict(forgeloc.create_model("unet_baseline_tiny"), folder / MODEL_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps({"model": "unet_baseline_tiny",
                                                  "model_kwargs": {"widths": [8, 16, 20000]}}))
    files["wide"] = folder
    cases = [(call, path) for key, path in files.items() if key not in ("wide",)
             for call in ("load_state_dict_file", "restricted_load")]
    cases += [("create_model", files["bomb"]), ("create_model", files["stride0"]), ("load_model", folder)]
    results = run_bounded(cases)
    return {(r["call"], Path(r["path"]).name): r for r in results}


@pytest.mark.parametrize(
    ("name", "call", "expected"),
    [
        ("stride0.pth", "load_state_dict_file", r"'w' \(size \(40000, 40000\), stride \(0, 0\)\)"),
        ("stride0.pth", "restricted_load", r"6,400,000,000 bytes"),
        ("stride0.pth", "create_model", r"more than 4x the file"),
        ("stride0_evil.pth", "load_state_dict_file", r"'model.w' .*alone takes 6,400,000,000 bytes"),
        ("stride0_evil.pth", "restricted_load", r"'model.w'"),
        ("overrun.pth", "load_state_dict_file", r"tensor 'model.fc.weight' .*reaches element 1,000,000 of storage"),
        ("overrun.pth", "restricted_load", r"'model.fc.weight'.*beyond its data"),
        ("bomb.pth", "load_state_dict_file", r"'archive/data/0' is compressed \(deflate\)"),
        ("bomb.pth", "restricted_load", r"compressed \(deflate\)"),
        ("bomb.pth", "create_model", r"compressed \(deflate\)"),
        ("legacy_huge.pth", "load_state_dict_file", r"declared with 1,000,000,000 elements but its data has 1"),
        ("memo.pth", "load_state_dict_file", r"holds a NoneType"),
        ("copies.pth", "load_state_dict_file", r"builds far more objects than it holds"),
        ("copies.pth", "restricted_load", r"builds far more objects than it holds"),
        ("bytes.pth", "load_state_dict_file", r"could not be read"),
        ("bytes.pth", "restricted_load", r"could not be read"),
        ("wide", "load_model", r"config.json: the model it describes would take more than"),
    ],
)
def test_malicious_files_are_refused_with_bounded_memory(bounded_results, name, call, expected):
    import re

    result = bounded_results[(call, name)]
    assert result.get("error") == "CheckpointError", result
    assert name in result["message"], result["message"]
    assert re.search(expected, result["message"]), result["message"]
    assert result["seconds"] < 30, result


def test_memo_bomb_is_harmless_to_the_restricted_reader(bounded_results):
    # The pickle is valid (it holds None): read without growing a 4 GiB memo.
    assert bounded_results[("restricted_load", "memo.pth")].get("ok") == "tuple"
    assert bounded_results[("load_state_dict_file", "legacy_huge.pth")]["error"] == "CheckpointError"
    assert bounded_results[("restricted_load", "legacy_huge.pth")]["message"].endswith(
        "re-save it with a current PyTorch in a sandbox, then convert)")


def test_deflate_bomb_really_is_one(tmp_path):
    """The crafted archive inflates as advertised (so the refusal above is what saves the memory)."""
    path = deflate_bomb(tmp_path / "small_bomb.pth", expanded_mib=4)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("archive/data/0")
        assert info.compress_type == zipfile.ZIP_DEFLATED and info.file_size == 4 << 20
        assert zf.read("archive/data/0") == bytes(4 << 20)  # also checks the CRC
    assert path.stat().st_size < 64 << 10


def test_legitimate_views_and_new_dtypes_still_load(tmp_path):
    """Views sharing one storage, uint16/float8 tensors (``_rebuild_tensor_v3``) and zero-size tensors."""
    shared = torch.arange(24.0)
    sd = {"a": shared[2:8].view(2, 3), "b": shared, "t": shared.view(4, 6).t(), "e": torch.empty(0, 5),
          "u": torch.arange(5).to(getattr(torch, "uint16", torch.int16)), "f8": torch.ones(3).to(torch.float8_e4m3fn)}
    torch.save(sd, tmp_path / "views.pth")
    got, how = read_checkpoint_object(tmp_path / "views.pth")
    assert how == "weights_only"
    for k, v in sd.items():
        assert torch.equal(got[k].float(), v.float()), k
    # the same through the restricted reader (the payload makes torch.load refuse the file)
    torch.save({"model": sd, "hook": System()}, tmp_path / "views_evil.pth")
    got = load_state_dict_file(tmp_path / "views_evil.pth")
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k].float(), v.float()), k


# --------------------------------------------------------------------------------------------------
# 7: executable globals are reported (and still never run)
# --------------------------------------------------------------------------------------------------
def test_executable_globals_are_reported(tmp_path, caplog):
    torch.manual_seed(0)
    sd = nn.Linear(3, 2).state_dict()
    src = tmp_path / "evil.pth"
    torch.save({"model": sd, "hook": System(), "more": [Eval()]}, src)
    with caplog.at_level(logging.WARNING, logger="forgeloc.io.unpickle"):
        got = load_state_dict_file(src)
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    warnings = [r for r in caplog.records if r.name == "forgeloc.io.unpickle" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "evil.pth" in text and "posix.system" in text and "builtins.eval" in text and "Nothing was run" in text


def test_harmless_pickled_module_is_not_reported(tmp_path, caplog):
    import types

    src = tmp_path / "args.pth"
    torch.save({"model": nn.Sequential(nn.Conv2d(1, 2, 1)).state_dict(), "args": Path("x"),
                "opts": types.SimpleNamespace(lr=0.1)}, src)
    with caplog.at_level(logging.WARNING, logger="forgeloc.io.unpickle"):
        _, inert = restricted_load(src)
    assert {"pathlib.PosixPath", "types.SimpleNamespace"} <= inert
    assert not [r for r in caplog.records if r.name == "forgeloc.io.unpickle"]


# --------------------------------------------------------------------------------------------------
# 17: whatever the bytes, a clear error (seeded fuzzing)
# --------------------------------------------------------------------------------------------------
def outcome(path: Path) -> str:
    """"error" (a CheckpointError naming the file) or "loaded" (a state dict); anything else fails."""
    try:
        sd = load_state_dict_file(path)
    except CheckpointError as err:
        assert path.name in str(err), str(err)
        return "error"
    assert isinstance(sd, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    return "loaded"


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """Small real checkpoints: torch.save zip, legacy format, and a whole pickled module (restricted reader)."""
    d = tmp_path_factory.mktemp("originals")
    torch.manual_seed(0)
    sd = {"conv.weight": torch.randn(2, 1, 3, 3), "conv.bias": torch.zeros(2), "steps": torch.tensor(3),
          "half": torch.ones(2, dtype=torch.float16)}
    torch.save({"model": sd, "epoch": 2}, d / "zip.pth")
    torch.save(sd, d / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"model": sd, "hook": System()}, d / "restricted.pth")
    return {name: (d / f"{name}.pth").read_bytes() for name in ("zip", "legacy", "restricted")}


@pytest.mark.parametrize("seed", range(48))
def test_random_bytes_are_a_clear_error(tmp_path, seed):
    rng = random.Random(seed)
    size = rng.choice([1, 2, 8, 9, 64, 512, 4096, 65536])
    head = rng.choice([b"", b"\x80\x02", b"PK\x03\x04", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", b"{",
                       struct.pack("<Q", 16) + b"{"])
    path = tmp_path / f"random_{seed}.pth"
    path.write_bytes(head + rng.randbytes(size))
    assert outcome(path) == "error"


@pytest.mark.parametrize("kind", ["zip", "legacy", "restricted"])
def test_truncations_are_a_clear_error(tmp_path, originals, kind):
    data = originals[kind]
    rng = random.Random(kind)
    cuts = sorted({*range(0, 64), *range(len(data) - 64, len(data)), *rng.sample(range(len(data)), 96)})
    for cut in cuts:
        path = tmp_path / f"{kind}_cut{cut}.pth"
        path.write_bytes(data[:cut])
        assert outcome(path) == "error", cut
        path.unlink()


@pytest.mark.parametrize("kind", ["zip", "legacy", "restricted"])
def test_bit_flips_are_a_clear_error_or_a_state_dict(tmp_path, originals, kind):
    data = originals[kind]
    rng = random.Random(f"flips-{kind}")
    seen = collections.Counter()
    for i in range(160):
        flipped = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            pos = rng.randrange(len(flipped))
            flipped[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / f"{kind}_flip{i}.pth"
        path.write_bytes(bytes(flipped))
        seen[outcome(path)] += 1
        path.unlink()
    assert seen["error"] > 0


@pytest.mark.parametrize("kind", ["zip", "restricted"])
def test_pickle_mutations_are_a_clear_error_or_a_state_dict(tmp_path, originals, kind):
    """Mutate data.pkl itself and re-zip it with a valid CRC, so the unpicklers see the damage."""
    src = io.BytesIO(originals[kind])
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    pkl_name = next(n for n in members if n.endswith("data.pkl"))
    pkl = members[pkl_name]
    rng = random.Random(f"pickle-{kind}")
    seen = collections.Counter()
    for i in range(200):
        mutated = bytearray(pkl)
        how = rng.randrange(4)
        pos = rng.randrange(len(mutated))
        if how == 0:
            mutated[pos] ^= 1 << rng.randrange(8)
        elif how == 1:
            mutated[pos] = rng.randrange(256)
        elif how == 2:
            del mutated[pos : pos + rng.randrange(1, 8)]
        else:
            mutated[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        path = tmp_path / f"{kind}_mut{i}.pth"
        with zipfile.ZipFile(path, "w") as zf:
            for name, raw in members.items():
                zf.writestr(name, bytes(mutated) if name == pkl_name else raw)
        seen[outcome(path)] += 1
        path.unlink()
    assert seen["error"] > 0


def test_safetensors_named_pth_is_read_as_safetensors(tmp_path):
    torch.manual_seed(0)
    sd = nn.Linear(3, 2).state_dict()
    path = save_state_dict(sd, tmp_path / "converted.pth")
    _, how = read_checkpoint_object(path)
    assert how == "safetensors"
    assert all(torch.equal(load_state_dict_file(path)[k], v) for k, v in sd.items())
    model = forgeloc.create_model("unet_baseline_tiny")
    save_state_dict(model, tmp_path / "unet.bin")
    forgeloc.create_model("unet_baseline_tiny", checkpoint=tmp_path / "unet.bin")
    with pytest.raises(CheckpointError, match="converted.pth: a safetensors file, not a pickle"):
        restricted_load(path)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="broken.pth: starts like a safetensors file but is not a valid one"):
        load_state_dict_file(broken)


def test_cyclic_and_deep_pickles_are_a_clear_error(tmp_path):
    cyclic: dict = {}
    cyclic["model"] = cyclic
    torch.save(cyclic, tmp_path / "cyclic.pth")
    with pytest.raises(CheckpointError, match="cyclic.pth: no state dict found"):
        load_state_dict_file(tmp_path / "cyclic.pth")
    # A pickled "module" whose children are itself, through the restricted reader.
    zip_checkpoint(tmp_path / "selfmodule.pth", dumps({"net": _SelfModule()}), {})
    with pytest.raises(CheckpointError, match="selfmodule.pth: the pickled module tree is cyclic"):
        load_state_dict_file(tmp_path / "selfmodule.pth")


class _SelfModule:
    """Pickles as a module-like object whose ``_modules`` holds itself twice (a cycle and a DAG)."""

    def __reduce__(self):
        return (_SelfModule, (), {"_parameters": {}, "_buffers": {}, "_modules": {"a": self, "b": self}})


# --------------------------------------------------------------------------------------------------
# 17: a tampered config.json is a clear error
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    save_state_dict(forgeloc.create_model("unet_baseline_tiny"), folder / MODEL_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps({"model": "unet_baseline_tiny", "model_kwargs": {},
                                                  "input": {"mode": "resize", "size": 128}, "threshold": 0.5}))
    return folder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"model": "unet_baseline_tiny", "model_kwargs": {"widths": ' + "[" * 9 + "]" * 9 + "}}", "nested too deeply"),
        ("{not json", "not a valid JSON file"),
        ('["unet_baseline_tiny"]', "must hold a JSON object"),
        ('{"model": 5}', "'model' must name a model"),
        ('{"model": "no_such_model"}', "cannot build the model it records .*unknown model"),
        ('{"model": "unet_baseline_tiny", "model_kwargs": [1, 2]}', "'model_kwargs' must be an object"),
        ('{"model": "unet_baseline_tiny", "model_kwargs": {"bogus": 1}}', "cannot build the model it records"),
        ('{"model": "unet_baseline_tiny", "model_kwargs": {"widths": [-1, 16, 32]}}', "negative dimension"),
        ('{"model": "unet_baseline_tiny", "model_kwargs": {"widths": [8, 16, 10000000000]}}', "would take more than"),
        ('{"model": "unet_baseline_tiny", "model_kwargs": {"dice_weight": NaN}}', "not a finite number"),
        ('{"model": "unet_baseline_tiny", "input": {"size": 1000000000}}', "input.size must be"),
        ('{"model": "unet_baseline_tiny", "input": {"size": -5}}', "input.size must be"),
        ('{"model": "unet_baseline_tiny", "input": "resize 128"}', "'input' must be an object"),
        ('{"model": "unet_baseline_tiny", "threshold": "high"}', "'threshold' must be a finite number"),
        ('{"model": "unet_baseline_tiny", "calibration": {"set": "no bands"}}', "'calibration' must hold numbers"),
        ('{"model": "unet_baseline_tiny", "calibration": {"low": 0.9, "high": 0.2}}', "low <= high"),
        ('{"model": "unet_baseline_tiny", "calibration": [0.2, 0.9]}', "'calibration' must hold numbers"),
    ],
)
def test_tampered_config_is_a_clear_error(folder, text, expected):
    (folder / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=rf"{CONFIG_FILE}.*{expected}") as info:
        load_model(folder)
    assert str(folder) in str(info.value)


def test_config_not_utf8_is_a_clear_error(folder):
    (folder / CONFIG_FILE).write_bytes(b'{"model": "\xff\xfe"}')
    with pytest.raises(CheckpointError, match="not a valid JSON file"):
        load_model(folder)


def test_genuine_config_still_loads(folder):
    net, meta = load_model(folder)
    assert meta["model"] == "unet_baseline_tiny" and meta["input"]["size"] == 128
    assert not net.training
    # recorded options still build under the allocation budget
    (folder / CONFIG_FILE).write_text(json.dumps({"model": "unet_baseline_tiny",
                                                  "model_kwargs": {"widths": [8, 16, 32], "srm": True}}))
    net, meta = load_model(folder)
    assert meta["model_kwargs"] == {"widths": [8, 16, 32], "srm": True}


# --------------------------------------------------------------------------------------------------
# 11: non-finite weights are refused at load time
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    model = forgeloc.create_model("unet_baseline_tiny")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    keys = [k for k, v in sd.items() if v.is_floating_point()]
    sd[keys[3]].view(-1)[1] = bad
    sd[keys[5]].view(-1)[0] = bad  # the message names the first one
    save_state_dict(sd, tmp_path / "w.safetensors")
    torch.save({"model": sd}, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        with pytest.raises(CheckpointError, match=rf"{path.name}: tensor '{keys[3]}' holds 1 non-finite value"):
            forgeloc.create_model("unet_baseline_tiny", checkpoint=path)


def test_model_with_its_own_non_finite_buffer_still_loads(tmp_path):
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("mask", torch.tensor([0.0, -float("inf")]))

    save_state_dict(Masked(), tmp_path / "masked.safetensors")
    load_weights(Masked(), tmp_path / "masked.safetensors")


# --------------------------------------------------------------------------------------------------
# 19: atomic writes respect the umask
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_write_respects_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        written = atomic_write(tmp_path / "config.json", lambda tmp: tmp.write_text("{}"))
        weights = save_state_dict({"w": torch.ones(2)}, tmp_path / MODEL_FILE)
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert (plain.stat().st_mode & 0o777) == expected
    assert (written.stat().st_mode & 0o777) == expected
    assert (weights.stat().st_mode & 0o777) == expected
