"""Local noise level and its inconsistency: a region pasted from another photo usually carries
another camera's (or another processing chain's) noise.

Estimator (Mahdian & Saic, "Using noise inconsistencies for blind image forensics", Image and Vision
Computing 27(10), 2009): the finest diagonal wavelet subband HH of a natural image is almost pure
noise, so per block ``σ = median(|HH|) / 0.6745`` (Donoho's robust MAD estimator). We use the Haar
wavelet, ``HH = (x₀₀ − x₀₁ − x₁₀ + x₁₁) / 2`` on the 2×2 cells of the luma: orthonormal, so white
noise of standard deviation σ gives HH of standard deviation σ, and its cells start on even pixels,
so no cell straddles a JPEG 8×8 block boundary (blocking would otherwise read as noise). Blocks are
``block`` pixels square (32 by default) at a stride of half a block.

Where the estimator has nothing to say, a block carries no evidence either way
(:func:`noise_confidence` = 0, heat 0):

* clipped blocks (more than :data:`MAX_SATURATED_SHARE` of pixels at 0–4 or 251–255): no noise
  survives saturation;
* blocks whose σ is at the level of 8-bit rounding (:data:`SIGMA_FLOOR`);
* *flat* blocks (content gradient below :data:`FLAT_TEXTURE`, see :func:`_texture`) that read
  clearly cleaner than the rest (``z < −1``, none left at ``z < −2``): JPEG quantization and
  in-camera denoising wipe noise from smooth areas first, so flat sky reads σ ≈ 0 whatever camera
  took it. A flat block that reads as noisy as the rest, or noisier, is still evidence.

Inconsistency (see :func:`_reference_z`): texture leaks into HH, so each block is compared with the
informative blocks of similar texture: ``z = (log σ_b − m_t) / s_t``, ``m_t`` the median and ``s_t``
the robust spread (1.4826 · MAD, floored at :data:`MIN_LOG_SPREAD`) of log σ in the block's texture
bin. ``|z|`` is median-filtered over 3×3 blocks (a splice is a region, not one block), then
``heat = logistic(1.5 · (|z| − 2.5))``: a block more than 2.5 robust standard deviations away from
comparable blocks reads above 0.5. Image score: :func:`_image_score`.

Known limits: fine detail and noise share the finest subband, so an in-focus subject in front of a
blurred background can read as "noisier"; copy-move within one photo keeps the photo's own noise
and is invisible to this cue.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from forgeloc.detectors.base import CueResult, ImageInput

__all__ = ["NoiseMap", "detect_noise", "noise_confidence", "noise_map"]

NAME = "noise"
MAD_TO_SIGMA = 1.0 / 0.6745  # median(|N(0, σ²)|) = 0.6745 σ
DEFAULT_BLOCK = 32  # pixels; blocks overlap by half
SATURATED_LOW, SATURATED_HIGH = 4, 251  # luma levels treated as clipped
MAX_SATURATED_SHARE = 0.2  # a block with more clipped pixels than this has no usable noise
# 8-bit rounding alone leaves σ ≈ 0.29: below SIGMA_FLOOR a block holds no measurable noise
# (confidence ramps 0 → 1 between the two values).
SIGMA_FLOOR = (0.3, 0.6)
# Content gradient (grey levels per pixel, after a σ = 2 px blur) below which a block is flat.
FLAT_TEXTURE = (0.3, 0.6)
FLAT_CLEANER_Z = (-2.0, -1.0)  # a flat block reading this much cleaner loses its confidence (ramp)
TEXTURE_BINS, BLOCKS_PER_BIN = 4, 50
MIN_LOG_SPREAD = 0.15  # ≈ 15 % in σ: the smallest spread of log σ treated as meaningful
# heat = logistic(Z_SLOPE · (|z| − Z_CENTER)). On the authentic photos of COVERAGE and NoSo, 2.5 flags
# 1.0 % of the area (3.0: 0.4 %, 2.0: 2.3 %) at the same pixel AUC; 3.0 misses most of a σ = 9 square.
Z_CENTER, Z_SLOPE = 2.5, 1.5
FLAG = 0.5  # heat above this counts as a deviating block for the score
MIN_VALID_BLOCKS = 8
MEDIAN_BAND_VALUES = 4_000_000  # window values copied at once by _block_medians (16 MB of float32)


@dataclass(eq=False)
class NoiseMap:
    """Per-block noise levels on a grid of ``block``-pixel blocks at stride ``block // 2``.

    ``sigma``/``confidence``/``heat``: float32 ``(rows, cols)``; block ``[i, j]`` covers pixels
    ``i·stride .. i·stride + block`` (rows) × ``j·stride .. j·stride + block`` (columns).
    ``global_sigma``: the dominant σ over the valid blocks (grey levels, 0–255 luma), NaN if none.
    """

    sigma: np.ndarray
    confidence: np.ndarray
    heat: np.ndarray
    block: int
    global_sigma: float
    height: int
    width: int

    @property
    def stride(self) -> int:
        return self.block // 2

    def valid(self) -> np.ndarray:
        return self.confidence >= 0.5

    def to_pixels(self, grid: np.ndarray) -> np.ndarray:
        """Bilinear upsampling of a block grid to ``height × width`` (block centres land on their grid
        value; borders are held)."""
        return _grid_to_pixels(grid, self.stride, self.height, self.width)

    def confidence_pixels(self) -> np.ndarray:
        return np.clip(self.to_pixels(self.confidence), 0.0, 1.0)

    def heat_pixels(self) -> np.ndarray:
        return np.clip(self.to_pixels(self.heat), 0.0, 1.0)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the channel JPEG stores at full resolution, float32 0..255."""
    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    # cvtColor on float32 keeps the fractional luma (the uint8 path would round away small noise).
    return cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2GRAY)


def _haar_hh(luma: np.ndarray) -> np.ndarray:
    """Finest diagonal Haar subband (orthonormal), half resolution."""
    h, w = luma.shape[0] // 2 * 2, luma.shape[1] // 2 * 2
    x = luma[:h, :w]
    return 0.5 * (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2])


def _block_medians(values: np.ndarray, cell: int) -> np.ndarray:
    """Median of ``values`` over windows of 2×2 cells (``2·cell`` square) at stride ``cell``."""
    rows, cols = values.shape[0] // cell, values.shape[1] // cell
    if rows < 2 or cols < 2:
        return np.zeros((0, 0), np.float32)
    win = np.lib.stride_tricks.sliding_window_view(values[: rows * cell, : cols * cell], (2 * cell, 2 * cell))
    win = win[::cell, ::cell]
    out = np.empty(win.shape[:2], np.float32)
    # The median needs a copy of every window; a band of block rows at a time bounds that copy.
    band = max(1, MEDIAN_BAND_VALUES // (win.shape[1] * 4 * cell * cell))
    for start in range(0, win.shape[0], band):
        chunk = win[start: start + band]
        out[start: start + band] = np.median(chunk.reshape(chunk.shape[0], chunk.shape[1], -1), axis=-1)
    return out


def _block_means(values: np.ndarray, cell: int) -> np.ndarray:
    """Mean of ``values`` over windows of 2×2 cells at stride ``cell`` (via cell sums)."""
    rows, cols = values.shape[0] // cell, values.shape[1] // cell
    cells = values[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell).mean(axis=(1, 3))
    return (0.25 * (cells[:-1, :-1] + cells[1:, :-1] + cells[:-1, 1:] + cells[1:, 1:])).astype(np.float32)


def _grid_to_pixels(grid: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    rows, cols = grid.shape
    if rows == 0 or cols == 0:
        return np.zeros((height, width), np.float32)
    up = cv2.resize(grid.astype(np.float32), (cols * stride, rows * stride), interpolation=cv2.INTER_LINEAR)
    # Block i is centred on pixel i·stride + stride; the resized grid centres cell i on i·stride + stride/2.
    top = left = stride // 2
    bottom, right = max(height - top - up.shape[0], 0), max(width - left - up.shape[1], 0)
    out = cv2.copyMakeBorder(up, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out[:height, :width])


def _ramp(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _texture(luma: np.ndarray, cell: int) -> np.ndarray:
    """Per-block median gradient magnitude (grey levels per pixel) of the luma blurred by a Gaussian of
    σ = 2 px, computed on the half-resolution 2×2 means. The blur keeps noise out of the measure
    (white noise of σₙ contributes ≈ 0.05 σₙ per pixel), so it describes the content only."""
    h, w = luma.shape[0] // 2 * 2, luma.shape[1] // 2 * 2
    half = 0.25 * (luma[0:h:2, 0:w:2] + luma[0:h:2, 1:w:2] + luma[1:h:2, 0:w:2] + luma[1:h:2, 1:w:2])
    blurred = cv2.GaussianBlur(half, (0, 0), 1.0)
    # Sobel's gain is 8× the slope; /8 per half-resolution pixel, /2 again per full-resolution pixel.
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3) / 16.0
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3) / 16.0
    # The blurred gradient varies slowly: every other sample is enough (4× fewer values to sort).
    return _block_medians(np.sqrt(gx * gx + gy * gy)[::2, ::2], cell // 2)


def _reference_z(log_sigma: np.ndarray, texture: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """Robust z-score of each block's log σ against the reference blocks *of similar texture*, and the
    dominant σ. Texture leaks into the finest subband, so σ estimates rise with texture (≈ 2–3× from
    smooth to busy areas of one photo); comparing like with like removes most of that bias: on the
    authentic photos of COVERAGE and NoSo the flagged area drops from 2.8 % to 0.4 % (same threshold,
    same pixel AUC). Bins are texture quantiles of the reference blocks, at most :data:`TEXTURE_BINS`, each with
    at least :data:`BLOCKS_PER_BIN` blocks, so that a splice rarely dominates one."""
    n_bins = int(np.clip(reference.sum() // BLOCKS_PER_BIN, 1, TEXTURE_BINS))
    edges = np.quantile(texture[reference], np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    bins = np.digitize(texture, edges)
    z = np.zeros_like(log_sigma)
    for b in range(n_bins):
        ref = log_sigma[reference & (bins == b)]
        center = float(np.median(ref))
        spread = max(1.4826 * float(np.median(np.abs(ref - center))), MIN_LOG_SPREAD)
        z[bins == b] = (log_sigma[bins == b] - center) / spread
    return z, float(np.exp(np.median(log_sigma[reference])))


def _blocks(sigma: np.ndarray, texture: np.ndarray, saturated_share: np.ndarray) -> tuple[np.ndarray, ...]:
    """Confidence, heat and the dominant σ of the block grid (see the module docstring)."""
    measurable = _ramp(sigma, *SIGMA_FLOOR) * _ramp(-saturated_share, -MAX_SATURATED_SHARE, -MAX_SATURATED_SHARE / 2)
    content = _ramp(texture, *FLAT_TEXTURE)
    reference = (measurable >= 0.5) & (content >= 0.5)
    if reference.sum() < MIN_VALID_BLOCKS:  # nearly all flat (sky, a wall): the flat blocks are the photo
        reference = measurable >= 0.5
    if reference.sum() < MIN_VALID_BLOCKS:
        return np.zeros_like(sigma), np.zeros_like(sigma), float("nan")
    log_sigma = np.log(np.maximum(sigma, 1e-3))
    z, global_sigma = _reference_z(log_sigma, texture, reference)
    # A flat block that reads clearly cleaner than comparable blocks says nothing (JPEG quantization and
    # in-camera denoising wipe noise from smooth areas first): its confidence falls from 1 at z = −1 to
    # 0 at z = −2. One that reads as noisy as the rest, or noisier, is evidence.
    confidence = measurable * np.maximum(content, _ramp(z, *FLAT_CLEANER_Z))
    # Blocks without evidence count as "no deviation" in the 3×3 median, which keeps a splice's
    # coherent region and drops isolated deviating blocks.
    deviation = cv2.medianBlur(np.where(confidence >= 0.5, np.abs(z), 0.0).astype(np.float32), 3)
    heat = confidence / (1.0 + np.exp(-Z_SLOPE * (deviation - Z_CENTER)))
    return confidence.astype(np.float32), heat.astype(np.float32), global_sigma


def noise_map(image: ImageInput | np.ndarray, block: int = DEFAULT_BLOCK) -> NoiseMap:
    """Per-block noise level, confidence and inconsistency heat (see the module docstring)."""
    rgb = image.rgb if isinstance(image, ImageInput) else np.asarray(image)
    if block < 16 or block % 8:
        raise ValueError(f"block must be a multiple of 8 and at least 16 pixels, got {block}")
    height, width = rgb.shape[:2]
    luma = _luma(rgb)
    sigma = _block_medians(np.abs(_haar_hh(luma)), block // 4) * MAD_TO_SIGMA
    rows, cols = sigma.shape
    if sigma.size == 0:
        empty = np.zeros((0, 0), np.float32)
        return NoiseMap(empty, empty, empty, block, float("nan"), height, width)
    texture = _texture(luma, block // 4)[:rows, :cols]
    clipped = ((luma <= SATURATED_LOW) | (luma >= SATURATED_HIGH)).astype(np.float32)
    saturated_share = _block_means(clipped, block // 2)[:rows, :cols]
    confidence, heat, global_sigma = _blocks(sigma, texture, saturated_share)
    return NoiseMap(sigma=sigma, confidence=confidence, heat=heat, block=block, global_sigma=global_sigma,
                    height=height, width=width)


def _image_score(nmap: NoiseMap) -> float:
    """Share of the valid area whose heat exceeds :data:`FLAG`, mapped through ``1 − exp(−share / 0.05)``
    (5 % deviating area → 0.63): a splice is a coherent region, isolated deviating blocks are common."""
    valid = nmap.valid()
    if not valid.any():
        return 0.0
    share = float((nmap.heat[valid] > FLAG).mean())
    return float(1.0 - np.exp(-share / 0.05))


def noise_confidence(image: ImageInput | np.ndarray, *, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """Float32 ``H×W`` in ``[0, 1]``: how much the noise cue can say at each pixel (0 = flat or clipped,
    no evidence either way; 1 = the local noise level is measurable)."""
    return noise_map(image, block=block).confidence_pixels()


def detect_noise(image: ImageInput, *, block: int = DEFAULT_BLOCK) -> CueResult:
    """Noise-level inconsistency map (heat 1 = the local noise level deviates strongly from comparable
    blocks of the same photo) and image score (see :func:`_image_score`). ``extra``: ``global_sigma``
    (the dominant noise σ in grey levels, 0–255 luma), ``usable_share`` (share of blocks with usable
    noise), ``block``. The confidence map is :func:`noise_confidence` (or ``noise_map`` once for both)."""
    nmap = noise_map(image, block=block)
    if nmap.sigma.size == 0:
        return CueResult.not_applicable(NAME, f"image too small for {block}-pixel noise blocks")
    valid = nmap.valid()
    extra = {
        "global_sigma": None if np.isnan(nmap.global_sigma) else round(nmap.global_sigma, 4),
        "usable_share": round(float(valid.mean()), 4),
        "block": block,
    }
    if valid.sum() < MIN_VALID_BLOCKS:
        return CueResult(name=NAME, heatmap=np.zeros((nmap.height, nmap.width), np.float32), score=0.0,
                         reason="too few blocks with measurable noise (flat or clipped image)", extra=extra)
    return CueResult(name=NAME, heatmap=nmap.heat_pixels(), score=_image_score(nmap), extra=extra)
