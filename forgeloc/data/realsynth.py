"""Forgeries that carry real traces: JPEG histories, resampling, feathered edges, inpainting.

:mod:`forgeloc.data.synth` makes clean, easy forgeries for the quickstart. A detector that must work
on real photos needs the traces real forgeries carry, and must learn that processing alone is
not tampering. This module makes such samples from real photographs (see :mod:`forgeloc.data.corpus`):

* **host**: a crop of a photo, at native scale or downscaled, compressed as a camera would
  (JPEG quality 60–97, 4:2:0 or 4:4:4), sometimes cropped again after decoding so that its block
  grid no longer starts at pixel (0, 0); sometimes never compressed at all;
* **splicing**: a region of *another* photo with its own JPEG history (quality 50–97), optionally
  rescaled (0.6–1.6×) and rotated (±30°), colour-matched to the host, pasted with a feathered edge;
* **copy-move**: a region of the host itself, shifted (and optionally rotated/scaled); its traces
  are the host's, off the host's grid when the shift is not a multiple of 8 — the mask is the
  pasted target only (local traces cannot tell the source from the copy);
* **removal**: a region filled by OpenCV inpainting (Telea or Navier–Stokes);
* optional **noise-level mismatch** in the altered region;
* **authentic** samples through the same global chains (resize after compression, blur, sharpen,
  recompression), labelled untouched;
* a **final save** as JPEG (quality 65–100, aligned to the image origin) or lossless PNG.

The history of each sample is recorded in ``history.jsonl``, so that results can be broken down
by chain. Sample ``i`` depends only on ``(seed, i)`` and the photos, so generation is parallel and
reproducible.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

__all__ = ["RealSynthConfig", "make_sample", "synthesize_real"]

KINDS = ("splicing", "copy-move", "removal", "authentic")


@dataclass(frozen=True)
class RealSynthConfig:
    """Proportions and ranges of :func:`make_sample` (defaults: the default detector's recipe)."""

    size: int = 512
    kind_weights: tuple[float, float, float, float] = (0.45, 0.15, 0.1, 0.3)  # KINDS order
    host_jpeg_p: float = 0.85
    host_quality: tuple[int, int] = (60, 97)
    donor_jpeg_p: float = 0.75
    donor_quality: tuple[int, int] = (50, 97)
    final_jpeg_p: float = 0.55
    final_quality: tuple[int, int] = (65, 100)
    area: tuple[float, float] = (0.01, 0.3)


def _jpeg(img: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    """Compress and decode with libjpeg through Pillow (4:2:0 or 4:4:4 chroma)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(quality), subsampling=int(rng.choice([0, 2])))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _encode(img: np.ndarray, quality: int | None, rng: np.random.Generator) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if quality is None:
        Image.fromarray(img).save(buf, "PNG", compress_level=1)
        return buf.getvalue(), "png"
    Image.fromarray(img).save(buf, "JPEG", quality=int(quality), subsampling=int(rng.choice([0, 2])))
    return buf.getvalue(), "jpg"


def _uniform_int(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _crop(photo: np.ndarray, rng: np.random.Generator, size: int, native_p: float = 0.5) -> tuple[np.ndarray, float]:
    """A ``size×size`` crop at native scale (probability ``native_p``) or downscaled."""
    h, w = photo.shape[:2]
    fit = size / min(h, w)
    scale = 1.0 if rng.random() < native_p else math.exp(rng.uniform(math.log(0.3), 0.0))
    scale = max(scale, fit * 1.001)
    if scale < 0.999:
        photo = cv2.resize(photo, (max(size, round(w * scale)), max(size, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    elif scale > 1.001:  # the photo is smaller than the crop
        photo = cv2.resize(photo, (max(size, math.ceil(w * scale)), max(size, math.ceil(h * scale))),
                           interpolation=cv2.INTER_CUBIC)
    h, w = photo.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return np.ascontiguousarray(photo[y:y + size, x:x + size]), float(scale)


def _host(photo: np.ndarray, rng: np.random.Generator, cfg: RealSynthConfig, hist: dict) -> np.ndarray:
    """A host crop with a camera-like JPEG history, its grid sometimes shifted off the origin."""
    shift = rng.random() < 0.35
    img, hist["host_scale"] = _crop(photo, rng, cfg.size + (8 if shift else 0))
    if rng.random() < cfg.host_jpeg_p:
        hist["host_quality"] = _uniform_int(rng, cfg.host_quality)
        img = _jpeg(img, hist["host_quality"], rng)
    if shift:
        oy, ox = int(rng.integers(0, 8)), int(rng.integers(0, 8))
        img = img[oy:oy + cfg.size, ox:ox + cfg.size]
        hist["host_grid"] = [(8 - oy) % 8, (8 - ox) % 8]
    return np.ascontiguousarray(img)


def _blob(rng: np.random.Generator, size: int, area: tuple[float, float]) -> np.ndarray:
    """A random smooth region (union of a rotated ellipse and a random polygon), as a 0/1 mask."""
    target = math.exp(rng.uniform(math.log(area[0]), math.log(area[1]))) * size * size
    r = math.sqrt(target / math.pi)
    cy, cx = rng.uniform(r * 0.6, size - r * 0.6, size=2)
    mask = np.zeros((size, size), np.uint8)
    axes = (max(3, int(r * rng.uniform(0.6, 1.4))), max(3, int(r * rng.uniform(0.6, 1.4))))
    cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    n = int(rng.integers(5, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.5, 1.3, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1)
    return mask


def _transform(patch: np.ndarray, rng: np.random.Generator, hist: dict) -> np.ndarray:
    """Optional rescale and rotation of a full-size layer (what a forger does to fit the paste)."""
    size = patch.shape[0]
    scale = float(math.exp(rng.uniform(math.log(0.6), math.log(1.6)))) if rng.random() < 0.6 else 1.0
    angle = float(rng.uniform(-30, 30)) if rng.random() < 0.3 else 0.0
    if scale == 1.0 and angle == 0.0:
        return patch
    hist["scale"], hist["rotation"] = round(scale, 3), round(angle, 2)
    mat = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    interp = int(rng.choice([cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA]))
    return cv2.warpAffine(patch, mat, (size, size), flags=interp, borderMode=cv2.BORDER_REFLECT)


def _match_colour(patch: np.ndarray, host: np.ndarray, region: np.ndarray, strength: float) -> np.ndarray:
    """Move the patch's per-channel Lab mean/std toward the host's (Reinhard et al. 2001), partially."""
    sel = region.astype(bool)
    p = cv2.cvtColor(patch, cv2.COLOR_RGB2LAB).astype(np.float32)
    h = cv2.cvtColor(host, cv2.COLOR_RGB2LAB).astype(np.float32)
    pm, ps = p[sel].mean(0), p[sel].std(0) + 1e-3
    hm, hs = h.reshape(-1, 3).mean(0), h.reshape(-1, 3).std(0) + 1e-3
    target_m, target_s = pm + strength * (hm - pm), ps + strength * (hs - ps)
    out = (p - pm) / ps * target_s + target_m
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _paste(host: np.ndarray, layer: np.ndarray, region: np.ndarray, rng: np.random.Generator, hist: dict):
    """Alpha-blend ``layer`` into ``host`` through a feathered ``region``; the mask is alpha > 0.5."""
    sigma = float(rng.uniform(0.0, 2.5))
    alpha = region.astype(np.float32)
    if sigma > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    hist["feather"] = round(sigma, 2)
    if rng.random() < 0.25:  # noise-level mismatch
        hist["noise_sigma"] = round(float(rng.uniform(2.0, 6.0)), 2)
        layer = np.clip(layer + rng.normal(0, hist["noise_sigma"], layer.shape), 0, 255).astype(np.uint8)
    out = host * (1 - alpha[..., None]) + layer * alpha[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), (alpha > 0.5).astype(np.uint8)


def _splice(host, donor_photo, rng, cfg, hist):
    layer, _ = _crop(donor_photo, rng, cfg.size)
    if rng.random() < cfg.donor_jpeg_p:
        hist["donor_quality"] = _uniform_int(rng, cfg.donor_quality)
        layer = _jpeg(layer, hist["donor_quality"], rng)
    layer = _transform(layer, rng, hist)
    region = _blob(rng, cfg.size, cfg.area)
    if rng.random() < 0.5:
        layer = _match_colour(layer, host, region, float(rng.uniform(0.3, 1.0)))
    return _paste(host, layer, region, rng, hist)


def _copy_move(host, _donor, rng, cfg, hist):
    size = cfg.size
    region = _blob(rng, size, (cfg.area[0], min(cfg.area[1], 0.15)))
    ys, xs = np.nonzero(region)
    for _ in range(20):  # a shift that keeps the copy inside and off its source
        dy, dx = (int(v) for v in rng.integers(-size // 2, size // 2, 2))
        if abs(dy) + abs(dx) >= 24 and ys.min() + dy >= 0 and ys.max() + dy < size \
                and xs.min() + dx >= 0 and xs.max() + dx < size:
            break
    else:
        dy, dx = 0, 24 if xs.max() + 24 < size else -24
    hist["shift"] = [dy, dx]
    layer = _transform(host, rng, hist)
    shifted = cv2.warpAffine(layer, np.float32([[1, 0, dx], [0, 1, dy]]), (size, size), borderMode=cv2.BORDER_REFLECT)
    target = cv2.warpAffine(region, np.float32([[1, 0, dx], [0, 1, dy]]), (size, size), flags=cv2.INTER_NEAREST)
    return _paste(host, shifted, target, rng, hist)


def _removal(host, _donor, rng, cfg, hist):
    region = _blob(rng, cfg.size, (cfg.area[0], min(cfg.area[1], 0.08)))
    method = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    hist["inpaint"] = "telea" if method == cv2.INPAINT_TELEA else "ns"
    filled = cv2.inpaint(host, region, int(rng.integers(3, 8)), method)
    return filled, region


def _global_processing(img: np.ndarray, rng: np.random.Generator, hist: dict) -> np.ndarray:
    """Processing that changes the whole photo alike: not tampering, and the model must learn so."""
    size = img.shape[0]
    if rng.random() < 0.25:
        s = float(rng.uniform(0.5, 0.95))
        small = cv2.resize(img, (round(size * s), round(size * s)), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
        hist["global_resize"] = round(s, 3)
    if rng.random() < 0.15:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.0)))
        hist["global_blur"] = True
    elif rng.random() < 0.15:
        blur = cv2.GaussianBlur(img, (0, 0), 1.0)
        img = cv2.addWeighted(img, 1.5, blur, -0.5, 0)
        hist["global_sharpen"] = True
    return img


_MANIPULATE = {"splicing": _splice, "copy-move": _copy_move, "removal": _removal}


def make_sample(photos: Sequence[np.ndarray], seed: int, index: int, cfg: RealSynthConfig = RealSynthConfig()):
    """Sample ``index``: ``(file bytes, extension, uint8 mask 0/1, history dict)``."""
    rng = np.random.default_rng([seed, index])
    kind = str(rng.choice(KINDS, p=np.asarray(cfg.kind_weights) / sum(cfg.kind_weights)))
    host_i = int(rng.integers(len(photos)))
    hist: dict[str, Any] = {"index": index, "kind": kind, "host": host_i}
    host = _host(photos[host_i], rng, cfg, hist)
    if kind == "authentic":
        img, mask = _global_processing(host, rng, hist), np.zeros(host.shape[:2], np.uint8)
    else:
        donor_i = int(rng.integers(len(photos) - 1))
        donor_i += donor_i >= host_i
        hist["donor"] = donor_i if kind == "splicing" else host_i
        img, mask = _MANIPULATE[kind](host, photos[donor_i], rng, cfg, hist)
    final_q = _uniform_int(rng, cfg.final_quality) if rng.random() < cfg.final_jpeg_p else None
    hist["final_quality"] = final_q
    data, ext = _encode(img, final_q, rng)
    return data, ext, mask, hist


# --------------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------------
_WORKER_PHOTOS: list[np.ndarray] = []


def _init_worker(paths: list[str]) -> None:
    global _WORKER_PHOTOS
    cv2.setNumThreads(1)
    _WORKER_PHOTOS = [_read_photo(p) for p in paths]


def _read_photo(path: str) -> np.ndarray:
    from forgeloc.data.io import read_image

    return read_image(path)


def _write_one(args: tuple[str, int, RealSynthConfig]) -> dict[str, Any]:
    out, i, cfg = args
    data, ext, mask, hist = make_sample(_WORKER_PHOTOS, cfg_seed(out), i, cfg)
    folder = Path(out)
    (folder / "images" / f"{i:06d}.{ext}").write_bytes(data)
    if mask.any():
        cv2.imwrite(str(folder / "masks" / f"{i:06d}.png"), mask * 255)
    hist["image"] = f"images/{i:06d}.{ext}"
    hist["mask"] = f"masks/{i:06d}.png" if mask.any() else "Negative"
    return hist


def cfg_seed(out: str) -> int:
    return json.loads((Path(out) / "realsynth.json").read_text())["seed"]


def synthesize_real(photo_paths: Sequence[str | Path], out: str | Path, n: int, *, seed: int = 0,
                    cfg: RealSynthConfig = RealSynthConfig(), workers: int = 2) -> Path:
    """Write ``n`` samples to ``out`` (``images/``, ``masks/``, ``dataset.json``, ``history.jsonl``)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    paths = sorted(str(p) for p in photo_paths)
    (out / "realsynth.json").write_text(json.dumps({"seed": seed, "n": n, "photos": paths,
                                                    "config": cfg.__dict__}, indent=1, default=list))
    jobs = [(str(out), i, cfg) for i in range(n)]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(paths,)) as pool:
        hists = list(pool.map(_write_one, jobs, chunksize=16))
    with open(out / "history.jsonl", "w") as f:
        for h in hists:
            f.write(json.dumps(h) + "\n")
    pairs = [[h["image"], h["mask"]] for h in hists]
    (out / "dataset.json").write_text(json.dumps(pairs))
    return out / "dataset.json"
