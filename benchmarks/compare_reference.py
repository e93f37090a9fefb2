"""forgeloc against the authors' implementations, side by side: same weights, same input, same run.

For each model this script

1. builds the reference network and forgeloc's, fills the reference with the parity fixtures'
   deterministic name-seeded weights, saves them as an authors'-style ``.pth`` and loads that file
   into forgeloc with ``create_model(name, checkpoint=...)`` — the path a released checkpoint takes;
2. runs both on the same input and compares ``pred_mask`` and the loss (it exits non-zero when
   they disagree: a speed-up that changes the outputs is not one);
3. times each implementation in its own fresh process (alternating which goes first), with the
   same measurement code as ``forgeloc bench``: time to import + build + load, first forward,
   median/min latency after warm-up, and peak resident memory above the loaded weights.

It installs nothing and is not part of the package or of CI. The references:

* SparseViT — IMDLBenCo's model zoo (``pip install --no-deps imdlbenco``; its model file needs
  ``timm``, which needs ``torchvision``).
* Mesorch and Mesorch-P — the official repository (github.com/scu-zjz/Mesorch, a checkout given
  with ``--mesorch-repo``); without it, Mesorch falls back to IMDLBenCo's copy and Mesorch-P is
  skipped.

IMDLBenCo's package ``__init__`` imports every dataset and model it ships (and pins
albumentations 1.3 / numpy < 2, which forgeloc does not use); the model files only need its
registry, so the package is registered here without running that ``__init__``.

Example (the README's numbers)::

    python -m venv /tmp/refenv && . /tmp/refenv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[all]" && \
        pip install --no-deps imdlbenco==0.1.45 timm
    git clone https://github.com/scu-zjz/Mesorch /tmp/Mesorch
    taskset -c 0,1 python benchmarks/compare_reference.py --mesorch-repo /tmp/Mesorch --threads 2 \
        --json compare_cpu.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("sparsevit", "mesorch", "mesorch_p")
# pred_mask is a probability map; the parity tests hold forgeloc to ~1e-5 of the fixtures. With
# --amp bf16 (forgeloc side only; 8 mantissa bits) the outputs are close, not equal.
TOLERANCE = {"none": 1e-4, "bf16": 5e-2}


def _install_torchvision_stand_in() -> None:
    """Let ``import torchvision`` succeed where it is not installed, for timm's imports only.

    timm (which IMDLBenCo's SparseViT and the Mesorch references import) imports torchvision at
    module level for its data pipeline and ``FrozenBatchNorm2d``; the three networks' forward
    passes use none of it. torchvision wheels pin one torch version and weigh gigabytes, so
    ``--torchvision-stand-in`` puts empty modules in its place: every name in them is a class that
    raises when it is called or instantiated, so a reference that did use torchvision would fail
    loudly instead of measuring something else.
    """
    import importlib.abc
    import importlib.machinery

    if importlib.util.find_spec("torchvision") is not None:
        return

    class _Missing(type):
        def __getattr__(cls, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return _missing(f"{cls.__name__}.{name}")

    def _missing(name: str) -> type:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"{name} is torchvision's, which this run replaced by a stand-in")
        return _Missing(name, (), {"__init__": fail, "__call__": fail, "__module__": "torchvision"})

    class _StandIn(types.ModuleType):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.__path__: list[str] = []  # a package, so that `import torchvision.ops.misc` resolves

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return _missing(f"{self.__name__}.{name}")

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec: Any) -> types.ModuleType:
            module = _StandIn(spec.name)
            module.__version__ = "0+stand-in"
            return module

        def exec_module(self, module: types.ModuleType) -> None:
            pass

    sys.meta_path.insert(0, _Finder())


def _register_imdlbenco_without_init() -> None:
    """Make ``IMDLBenCo.<submodule>`` importable without executing the package's ``__init__``."""
    if "IMDLBenCo" in sys.modules:
        return
    spec = importlib.util.find_spec("IMDLBenCo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "IMDLBenCo is not importable in this environment: `pip install --no-deps imdlbenco` "
            "(and timm, torchvision) in a separate environment, then run this script there."
        )
    root = next(iter(spec.submodule_search_locations))
    for name, path in (("IMDLBenCo", root), ("IMDLBenCo.model_zoo", os.path.join(root, "model_zoo"))):
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package


def build_reference(model: str, mesorch_repo: str | None) -> Any:
    """The authors' network for ``model``, in eval mode, with its own random initialisation."""
    _register_imdlbenco_without_init()
    if model == "sparsevit":
        module = importlib.import_module("IMDLBenCo.model_zoo.sparse_vit.sparse_vit")
        return module.SparseViT()
    if mesorch_repo:
        sys.path.insert(0, str(Path(mesorch_repo).resolve()))  # the files import `extractor.*`
        if model == "mesorch":
            return importlib.import_module("mesorch").MesorchFull(seg_pretrain_path=None, conv_pretrain=False)
        return importlib.import_module("mesorch_p").Mesorch_P(seg_pretrain_path=None, conv_pretrain=False)
    if model == "mesorch":
        return importlib.import_module("IMDLBenCo.model_zoo.mesorch.mesorch").Mesorch()
    raise SystemExit("mesorch_p: the reference is only in the official repository; pass --mesorch-repo")


def _inputs(size: int, seed: int = 0) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((yy - size / 3) ** 2 + (xx - size / 2) ** 2 < (size / 6) ** 2).float()[None, None]
    return image, mask


def _forward(impl: str, net: Any, image: Any, mask: Any, amp: str = "none") -> tuple[Any, Any]:
    """(pred_mask, loss) of either implementation; the reference always takes a mask and runs in
    fp32, forgeloc optionally under CPU bf16 autocast."""
    import torch

    if impl == "reference":
        out = net(image, mask)
        return out["pred_mask"], out["backward_loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        out = net({"image": image, "mask": mask})
    return out["pred_mask"].float(), out["loss"].float()


def _load(impl: str, model: str, weights: str, mesorch_repo: str | None, train: bool = False) -> Any:
    import torch

    if impl == "reference":
        net = build_reference(model, mesorch_repo)
        net.load_state_dict(torch.load(weights, weights_only=True)["model"], strict=True)
        return net
    from forgeloc import create_model
    from forgeloc.models.fusion import fuse_for_inference

    net = create_model(model, checkpoint=weights)
    if not train:  # inference runs the fused blocks, as Predictor and `forgeloc bench` do
        fuse_for_inference(net.eval())
    return net


def worker_weights(model: str, weights: str, mesorch_repo: str | None) -> dict[str, Any]:
    """Write the deterministic parity weights, taken from the reference's own state dict."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from parity_weights import parity_state_dict

    net = build_reference(model, mesorch_repo)
    state = parity_state_dict(net.state_dict())
    net.load_state_dict(state, strict=True)
    torch.save({"model": state}, weights)
    return {"tensors": len(state), "params": sum(p.numel() for p in net.parameters())}


def worker_parity(model: str, weights: str, mesorch_repo: str | None, amp: str = "none") -> dict[str, Any]:
    import torch

    image, mask = _inputs(512)
    result: dict[str, Any] = {}
    outputs = {}
    for impl in ("reference", "forgeloc"):
        net = _load(impl, model, weights, mesorch_repo).eval()
        with torch.no_grad():
            outputs[impl] = _forward(impl, net, image, mask, amp)
        del net
    (ref_mask, ref_loss), (our_mask, our_loss) = outputs["reference"], outputs["forgeloc"]
    result["pred_mask_max_abs_diff"] = float((ref_mask - our_mask).abs().max())
    result["pred_mask_mean_abs_diff"] = float((ref_mask - our_mask).abs().mean())
    result["loss_abs_diff"] = float((ref_loss - our_loss).abs())
    result["pred_mask_mean"] = float(ref_mask.mean())
    return result


def worker_time(impl: str, model: str, weights: str, mesorch_repo: str | None, options: dict[str, Any]) -> dict:
    t0 = time.perf_counter()
    import torch

    from forgeloc.engine.bench import time_and_memory

    torch.set_num_threads(options["threads"])
    train = options["train"]
    net = _load(impl, model, weights, mesorch_repo, train)
    amp = options["amp"] if impl == "forgeloc" else "none"  # the reference always runs fp32
    net.train(train)
    build_s = time.perf_counter() - t0
    image, mask = _inputs(512)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5) if train else None

    def step() -> None:
        if train:
            _, loss = _forward(impl, net, image, mask, amp)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                _forward(impl, net, image, mask, amp)

    result = time_and_memory(step, torch.device("cpu"), batch=1, warmup=options["warmup"],
                             repeats=options["repeats"])
    result.update(impl=impl, model=model, build_s=round(build_s, 3), threads=torch.get_num_threads(),
                  torch=torch.__version__, mode="train" if train else "inference", amp=amp)
    if impl == "forgeloc":
        from forgeloc.models.fast_cpu import cpu_linear_backend

        result["linear_backend"] = cpu_linear_backend()
    return result


def _spawn(payload: dict[str, Any]) -> dict[str, Any]:
    from forgeloc.engine.bench import isa_limit_environment

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(payload.get("threads", 2))}
    if payload.get("isa"):
        env.update(isa_limit_environment(payload["isa"]))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(payload)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{payload['task']} {payload.get('impl', '')} {payload['model']} failed:\n"
                           + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}×" if den > 0 else "-"


def compare(models: list[str], mesorch_repo: str | None, options: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            if model == "mesorch_p" and not mesorch_repo:
                print("mesorch_p: skipped (its reference is only in the official repository; --mesorch-repo)")
                continue
            weights = os.path.join(tmp, f"{model}.pth")
            common = {"model": model, "weights": weights, "mesorch_repo": mesorch_repo,
                      "isa": options["isa"], "stand_in": options["torchvision_stand_in"]}
            info = _spawn({"task": "weights", **common})
            parity = _spawn({"task": "parity", **common, "amp": options["amp"]})
            row: dict[str, Any] = {"model": model, **info, **parity,
                                   "outputs_agree": parity["pred_mask_max_abs_diff"] <= TOLERANCE[options["amp"]]}
            print(f"{model}: {info['params']:,} params; max |Δ pred_mask| = {parity['pred_mask_max_abs_diff']:.2e}"
                  f", |Δ loss| = {parity['loss_abs_diff']:.2e}")
            runs: dict[str, list[dict[str, Any]]] = {"forgeloc": [], "reference": []}
            for r in range(options["rounds"]):
                order = ("reference", "forgeloc") if r % 2 == 0 else ("forgeloc", "reference")
                for impl in order:
                    runs[impl].append(_spawn({"task": "time", "impl": impl, **common, **options}))
            for impl, results in runs.items():
                # The least disturbed round: the minimum over rounds of each figure.
                row[impl] = {key: min(r[key] for r in results) for key in
                             ("build_s", "first_call_s", "median_s", "min_s", "activation_mem_mb", "peak_mem_mb")}
                row[impl]["rounds"] = results
            ours, ref = row["forgeloc"], row["reference"]
            row["speedup"] = ref["median_s"] / ours["median_s"]
            row["first_call_speedup"] = ref["first_call_s"] / ours["first_call_s"]
            row["activation_memory_ratio"] = ours["activation_mem_mb"] / ref["activation_mem_mb"]
            # Peak RSS depends on how the C allocator happened to lay out the heap and varies more
            # between fresh processes than the times do: the median over rounds is reported too.
            for impl in ("forgeloc", "reference"):
                row[impl]["activation_mem_mb_median"] = statistics.median(
                    r["activation_mem_mb"] for r in row[impl]["rounds"])
            row["activation_memory_ratio_median"] = (
                ours["activation_mem_mb_median"] / ref["activation_mem_mb_median"])
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], options: dict[str, Any]) -> str:
    mode = "train step" if options["train"] else "inference"
    if options["amp"] != "none":
        mode += f" (forgeloc under {options['amp']} autocast, reference fp32)"
    lines = [
        f"{mode}, batch 1, 512², {options['threads']} threads, median of {options['repeats']} after "
        f"{options['warmup']} warm-up, best (and median) of {options['rounds']} fresh-process rounds",
        "",
        "| model | max Δ pred_mask | median s forgeloc / ref | speed-up | first forward s forgeloc / ref "
        "| import+build+load s forgeloc / ref | activation MB forgeloc / ref | memory ratio "
        "| median-round activation MB | median memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, f = r["forgeloc"], r["reference"]
        lines.append(
            f"| {r['model']} | {r['pred_mask_max_abs_diff']:.1e} | {o['median_s']:.3f} / {f['median_s']:.3f} | "
            f"{_ratio(f['median_s'], o['median_s'])} | {o['first_call_s']:.2f} / {f['first_call_s']:.2f} | "
            f"{o['build_s']:.2f} / {f['build_s']:.2f} | {o['activation_mem_mb']:.0f} / {f['activation_mem_mb']:.0f} | "
            f"{_ratio(o['activation_mem_mb'], f['activation_mem_mb'])} | "
            f"{o['activation_mem_mb_median']:.0f} / {f['activation_mem_mb_median']:.0f} | "
            f"{_ratio(o['activation_mem_mb_median'], f['activation_mem_mb_median'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=MODELS, help="repeatable; default: all three")
    parser.add_argument("--mesorch-repo", help="a checkout of github.com/scu-zjz/Mesorch (official reference)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="fresh-process rounds per implementation")
    parser.add_argument("--train", action="store_true", help="time a training step instead of inference")
    parser.add_argument("--amp", choices=sorted(TOLERANCE), default="none",
                        help="run forgeloc under CPU autocast (the reference stays fp32); outputs then differ slightly")
    parser.add_argument("--isa", choices=["avx2"],
                        help="run both sides as on a CPU without AVX-512 (PyTorch's, oneDNN's, MKL's kernels capped)")
    parser.add_argument("--torchvision-stand-in", action="store_true",
                        help="where torchvision is not installed, satisfy timm's imports of it with modules that "
                             "raise on use (the references' forward passes do not use it)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        payload = json.loads(args.worker)
        task = payload.pop("task")
        payload.pop("isa", None)  # already applied to this process's environment by _spawn
        if payload.pop("stand_in", False):
            _install_torchvision_stand_in()
        common = (payload.pop("model"), payload.pop("weights"), payload.pop("mesorch_repo"))
        if task == "cpu":  # what the timed processes saw, instruction-set limits included
            from forgeloc.engine.bench import cpu_info

            out = cpu_info()
        elif task == "weights":
            out = worker_weights(*common)
        elif task == "parity":
            out = worker_parity(*common, payload.get("amp", "none"))
        else:
            out = worker_time(payload.pop("impl"), *common, payload)
        sys.stdout.write(json.dumps(out) + "\n")
        return

    options = {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
               "rounds": args.rounds, "train": args.train, "amp": args.amp, "isa": args.isa,
               "torchvision_stand_in": args.torchvision_stand_in}
    rows = compare(args.model or list(MODELS), args.mesorch_repo, options)
    cpu = _spawn({"task": "cpu", "model": "", "weights": "", "mesorch_repo": None, "isa": args.isa})
    print(f"CPU: {cpu.get('model', cpu['machine'])}; flags {cpu.get('flags', '?')}; "
          f"limits {cpu.get('isa_limits', 'none')}")
    print(markdown(rows, options))
    if args.json:
        Path(args.json).write_text(json.dumps({"options": options, "cpu": cpu, "results": rows}, indent=2))
    if not all(r["outputs_agree"] for r in rows):
        sys.exit(f"outputs disagree beyond {TOLERANCE[args.amp]}: the comparison is void")


if __name__ == "__main__":
    main()
