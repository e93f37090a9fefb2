"""Training the default detector (:mod:`forgeloc.models.gridnet`) on :mod:`forgeloc.data.realsynth` data.

Why a loop of its own: GridNet reads block-grid traces, so its samples must be cropped at
multiples of 8 and never resized, and JPEG samples carry the file's DCT coefficients next to the
pixels. The general engine (:mod:`forgeloc.engine.trainer`) resizes every sample to the model's
input and knows nothing of a JPEG stream. This loop keeps what matters for reproducibility:
a config file, a fixed step budget (no selection on any test set), seeded data order, atomic
checkpoints and resume.

::

    python -m forgeloc.engine.gridnet_training -c configs/default_detector/gridnet.yaml
    python -m forgeloc.engine.gridnet_training -c configs/default_detector/gridnet.yaml --resume

and the two release steps of the default detector (docs/models/default.md): the WiSE-FT midpoint of
a checkpoint and its fine-tuned descendant, then a shippable, calibrated detector folder::

    python -m forgeloc.engine.gridnet_training --interpolate START END --alpha 0.5 --out MIXED
    python -m forgeloc.engine.gridnet_training --package MIXED --extra configs/default_detector/package.json \
        --calibrate VAL/dataset.json --out forgeloc/weights/default
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from forgeloc.data.io import read_image, read_mask
from forgeloc.data.jpeg import dct_grid
from forgeloc.data.transforms import normalize

BLOCK = 8


@dataclass
class GridNetTrainConfig:
    train: str | list[str] = "data/realsynth/train/dataset.json"  # one dataset.json, or several joined
    val: str | None = None
    output_dir: str = "runs/default_detector"
    model: str = "gridnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    crop: int = 384
    batch_size: int = 16
    steps: int = 6000
    lr: float = 2e-3
    min_lr: float = 2e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    seed: int = 0
    threads: int = 2
    num_workers: int = 1
    save_every: int = 500
    log_every: int = 25
    init: str | None = None  # a checkpoint folder to start from (fine-tuning); None: random weights

    @classmethod
    def from_yaml(cls, path: str | Path, base: Path | None = None) -> GridNetTrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        cfg = cls(**raw)
        root = base or Path(path).resolve().parent
        cfg.resolve_paths(root)
        return cfg

    def resolve_paths(self, root: Path) -> None:
        """Make the data, output and init paths absolute, relative to ``root`` (the config's folder)."""
        def absolute(value: str) -> str:
            return value if Path(value).is_absolute() else str((root / value).resolve())

        if isinstance(self.train, list):
            self.train = [absolute(v) for v in self.train]
        else:
            self.train = absolute(self.train)
        for key in ("val", "output_dir", "init"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, absolute(value))


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def _flip_coefficients(dct: np.ndarray, axis: int) -> np.ndarray:
    """Flip a ``(64,hb,wb)`` coefficient grid like the image: reverse the blocks, and negate the
    frequencies that are odd along the flipped axis (a mirrored cosine of odd order changes sign)."""
    sign = np.ones((8, 8), np.float32)
    if axis == 2:   # horizontal flip: v odd
        sign[:, 1::2] = -1
    else:           # vertical flip: u odd
        sign[1::2, :] = -1
    return np.flip(dct, axis=axis) * sign.reshape(64, 1, 1)


class RealSynthDataset(Dataset):
    """Samples of one or several :mod:`forgeloc.data.realsynth` folders, block-aligned crops with flips."""

    def __init__(self, dataset_json: str | Path | list[str], crop: int, seed: int = 0, train: bool = True) -> None:
        self.pairs = []
        for path in dataset_json if isinstance(dataset_json, list) else [dataset_json]:
            root = Path(path).parent
            self.pairs += [(root / image, mask if mask == "Negative" else root / mask)
                           for image, mask in json.loads(Path(path).read_text())]
        self.crop, self.seed, self.train = crop, seed, train
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_path, mask_path = self.pairs[i]
        data = image_path.read_bytes()
        rgb = read_image(data, name=image_path.name)
        h, w = rgb.shape[:2]
        mask = np.zeros((h, w), np.uint8) if mask_path == "Negative" else read_mask(mask_path)
        dct = dct_grid(data, h, w) if image_path.suffix == ".jpg" else None
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else np.random.default_rng([i])
        by = int(rng.integers(0, (h - self.crop) // BLOCK + 1)) if h > self.crop else 0
        bx = int(rng.integers(0, (w - self.crop) // BLOCK + 1)) if w > self.crop else 0
        sl = np.s_[by * BLOCK: by * BLOCK + self.crop, bx * BLOCK: bx * BLOCK + self.crop]
        nb = self.crop // BLOCK
        rgb, mask = rgb[sl], mask[sl]
        if dct is not None:
            dct = dct[:, by: by + nb, bx: bx + nb]
        if self.train:
            for axis in (1, 0):
                if rng.random() < 0.5:
                    rgb, mask = np.flip(rgb, axis), np.flip(mask, axis)
                    if dct is not None:
                        dct = _flip_coefficients(dct, axis + 1)
        return {
            "image": normalize(np.ascontiguousarray(rgb)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            "dct": torch.from_numpy(np.ascontiguousarray(dct)) if dct is not None else torch.zeros(64, nb, nb),
            "dct_valid": torch.tensor(dct is not None),
        }


# --------------------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------------------
def lr_at(step: int, cfg: GridNetTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _save(out: Path, model: torch.nn.Module, optim: torch.optim.Optimizer, step: int, cfg: GridNetTrainConfig,
          metrics: dict[str, Any]) -> None:
    from forgeloc.engine.checkpointing import write_model_folder
    from forgeloc.io import atomic_write

    config = {
        "format": "forgeloc-checkpoint", "format_version": 1, "model": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs), "input": {"mode": "native", "size": cfg.crop},
        "threshold": 0.5, "image_score": "topk_mean", "epoch": step, "metrics": metrics,
        "train_config": asdict(cfg),
    }
    write_model_folder(out / "last", {k: v.detach().cpu() for k, v in model.state_dict().items()}, config)
    atomic_write(out / "train_state.pt", lambda p: torch.save({"optim": optim.state_dict(), "step": step}, p))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    """Pixel F1 at 0.5 (mean over tampered samples) and mean flagged share on authentic ones."""
    model.eval()
    f1s, flagged = [], []
    for batch in loader:
        pred = model(batch)["pred_mask"] > 0.5
        for p, m in zip(pred, batch["mask"] > 0.5, strict=True):
            if m.any():
                tp = (p & m).sum().item()
                f1s.append(2 * tp / max(1, p.sum().item() + m.sum().item()))
            else:
                flagged.append(p.float().mean().item())
    model.train()
    return {"val_f1": float(np.mean(f1s)) if f1s else float("nan"),
            "val_authentic_flagged": float(np.mean(flagged)) if flagged else float("nan")}


def _batches(data: RealSynthDataset, cfg: GridNetTrainConfig, step: int):
    """Batches from ``step`` on: a seeded shuffle per epoch, so a resumed run sees the same order."""
    per_epoch = len(data) // cfg.batch_size
    epoch = step // per_epoch
    while True:
        data.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True,
                            num_workers=cfg.num_workers)
        skip = step - epoch * per_epoch
        for i, batch in enumerate(loader):
            if i >= skip:
                yield batch
        step, epoch = (epoch + 1) * per_epoch, epoch + 1


def _restore(model: torch.nn.Module, optim: torch.optim.Optimizer, out: Path) -> int:
    from forgeloc.models.factory import load_weights

    if not (out / "train_state.pt").exists():
        return 0
    load_weights(model, out / "last")
    state = torch.load(out / "train_state.pt", weights_only=True)
    optim.load_state_dict(state["optim"])
    return int(state["step"])


def train(cfg: GridNetTrainConfig, resume: bool = False) -> Path:
    """Train for ``cfg.steps`` steps (continuing from ``output_dir/last`` with ``resume``)."""
    from forgeloc.models.factory import create_model, load_weights

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = create_model(cfg.model, **cfg.model_kwargs)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.init and not (resume and (out / "train_state.pt").exists()):
        load_weights(model, cfg.init)
    step = _restore(model, optim, out) if resume else 0
    data = RealSynthDataset(cfg.train, cfg.crop, cfg.seed)
    val = DataLoader(RealSynthDataset(cfg.val, cfg.crop, train=False), batch_size=cfg.batch_size) if cfg.val else None
    model.train()
    t0 = time.time()
    with open(out / "log.jsonl", "a") as log:
        for batch in _batches(data, cfg, step):
            if step >= cfg.steps:
                break
            for group in optim.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = model(batch)["loss"]
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            if step % cfg.log_every == 0:
                rec = {"step": step, "loss": loss.item(), "lr": lr_at(step, cfg),
                       "s_per_step": round((time.time() - t0) / cfg.log_every, 3)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                t0 = time.time()
            if step % cfg.save_every == 0 or step == cfg.steps:
                metrics = evaluate(model, val) if val is not None else {}
                log.write(json.dumps({"step": step, **metrics}) + "\n")
                log.flush()
                _save(out, model, optim, step, cfg, metrics)
    return out / "last"


def interpolate(start: str | Path, end: str | Path, alpha: float, dest: str | Path) -> Path:
    """Write the weights ``(1 − alpha)·start + alpha·end`` as a checkpoint folder ``dest``.

    WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): when ``end``
    was fine-tuned from ``start``, both lie in one basin of the loss, and the interpolated weights
    keep much of what each one does well; on data unlike the fine-tuning data they often beat
    both. BatchNorm running statistics are interpolated alike; integer buffers (the batch
    counters) are taken from ``end``. ``dest``'s config is ``end``'s, with the recipe recorded.
    """
    from forgeloc.engine.checkpointing import write_model_folder
    from forgeloc.io.state_dict import load_state_dict_file

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    a, b = load_state_dict_file(start), load_state_dict_file(end)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError(f"{start} and {end} hold different networks: interpolation needs one architecture")
    mixed = {k: torch.lerp(a[k].float(), b[k].float(), alpha).to(a[k].dtype) if a[k].is_floating_point() else b[k]
             for k in a}
    config = json.loads((Path(end) / "config.json").read_text())
    for key in ("metrics", "epoch"):  # they describe END, not the mix
        config.pop(key, None)
    config["interpolated"] = {"start": str(start), "end": str(end), "alpha": alpha, "method": "WiSE-FT"}
    write_model_folder(Path(dest), mixed, config)
    return Path(dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="train with this recipe")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--interpolate", nargs=2, metavar=("START", "END"),
                        help="instead of training: write the WiSE-FT weights (1-alpha)*START + alpha*END to --out")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--package", metavar="CHECKPOINT",
                        help="instead of training: write CHECKPOINT as a shippable detector folder to --out")
    parser.add_argument("--extra", help="--package: a JSON file of config keys to add (fused detectors, cues, card)")
    parser.add_argument("--calibrate", metavar="DATASET_JSON",
                        help="--package: fix the verdict bands on this set's untouched images")
    parser.add_argument("--calibrate-first", type=int, metavar="N", help="--calibrate: only the set's first N samples")
    parser.add_argument("--out", help="output folder of --interpolate or --package")
    parser.add_argument("overrides", nargs="*", help="key=value (YAML values)")
    args = parser.parse_args(argv)
    if args.interpolate:
        if not args.out:
            parser.error("--interpolate needs --out")
        print(interpolate(*args.interpolate, alpha=args.alpha, dest=args.out))
        return
    if args.package:
        if not args.out:
            parser.error("--package needs --out")
        try:
            extra = json.loads(Path(args.extra).read_text()) if args.extra else {}
        except (OSError, ValueError) as err:
            parser.error(f"--extra {args.extra}: not a readable JSON file ({err})")
        print(release(args.package, args.out, extra, args.calibrate, args.calibrate_first))
        return
    if not args.config:
        parser.error("give -c CONFIG to train, --interpolate START END --out DIR, or --package CHECKPOINT --out DIR")
    cfg = GridNetTrainConfig.from_yaml(args.config)
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key not in GridNetTrainConfig.__dataclass_fields__:
            parser.error(f"unknown key {key!r} in {item!r}")
        setattr(cfg, key, yaml.safe_load(value))
    cfg.resolve_paths(Path.cwd())  # paths given on the command line are relative to where it runs
    print(train(cfg, resume=args.resume))


def package(checkpoint: str | Path, dest: str | Path, extra: dict[str, Any]) -> Path:
    """Write a trained GridNet checkpoint as a shippable detector folder: the same
    ``model.safetensors`` and a ``config.json`` extended with ``extra`` (the fused cues, the
    calibration, the model card's headline numbers). An object in ``extra`` updates the object of
    the same key key by key (``train_config``: the recipe's paths in place of a machine's)."""
    import shutil

    from forgeloc.io import atomic_write

    src, dest = Path(checkpoint), Path(dest)
    config = json.loads((src / "config.json").read_text())
    for key, value in extra.items():
        both_objects = isinstance(value, dict) and isinstance(config.get(key), dict)
        config[key] = {**config[key], **value} if both_objects else value
    dest.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dest.resolve():
        shutil.copyfile(src / "model.safetensors", dest / "model.safetensors")
    atomic_write(dest / "config.json", lambda p: p.write_text(json.dumps(config, indent=1, sort_keys=True)))
    return dest


def release(checkpoint: str | Path, dest: str | Path, extra: dict[str, Any],
            calibration_set: str | Path | None = None, calibration_first: int | None = None) -> Path:
    """:func:`package` the checkpoint, after (given a set) :func:`calibrate` has run the detector as
    it will ship, its fused detectors included, from a temporary folder: ``dest`` is written once,
    calibration and all."""
    import tempfile

    about_set = extra.get("calibration", {}).get("data")
    extra = {k: v for k, v in extra.items() if k != "calibration"}
    if calibration_set is not None:
        from forgeloc.inference.predictor import load

        with tempfile.TemporaryDirectory() as tmp:
            trial = package(checkpoint, Path(tmp) / "detector", extra)
            extra["calibration"] = calibrate(load(trial), calibration_set, description=about_set,
                                             first=calibration_first)
    return package(checkpoint, dest, extra)


def calibrate(predictor: Any, dataset_json: str | Path, low_q: float = 0.90, high_q: float = 0.99,
              description: str | None = None, first: int | None = None) -> dict[str, Any]:
    """Score bands for :func:`forgeloc.inference.predictor.verdict_for` from a calibration set.

    Method: the image scores of the set's *authentic* images fix the bands, so the false-alarm
    rate of each verdict is known: ``low`` = their ``low_q`` quantile (about 90 % of untouched
    photos read "no evidence found"), ``high`` = their ``high_q`` quantile (about 1 % of untouched
    photos read "likely manipulated"). The tampered images' scores are reported for reference.
    ``description`` says in words what the set is (default: its folder's name); ``first``: use only
    the set's first samples.
    """
    pairs = json.loads(Path(dataset_json).read_text())[:first]
    root = Path(dataset_json).parent
    authentic, tampered = [], []
    for image, mask in pairs:
        score = predictor.predict(root / image).score
        (authentic if mask == "Negative" else tampered).append(score)
    a, t = np.asarray(authentic), np.asarray(tampered)
    low, high = float(np.quantile(a, low_q)), float(np.quantile(a, high_q))
    return {
        "low": round(low, 4), "high": round(max(high, low), 4),
        "method": f"authentic-score quantiles {low_q:g} / {high_q:g}",
        "data": f"{description or Path(dataset_json).parent.name}: {len(a)} authentic, {len(t)} tampered images",
        "tampered_share_above_high": round(float((t >= max(high, low)).mean()), 4) if t.size else None,
        "tampered_share_above_low": round(float((t >= low).mean()), 4) if t.size else None,
    }


if __name__ == "__main__":
    main()
