"""Training-free JPEG compression cues: aligned double quantization, the block grid, JPEG ghosts, and
the file's quality factor.

Each cue is a function ``detect_*(image: ImageInput, **options) -> CueResult`` (see
:mod:`forgeloc.detectors.base`):

* :func:`detect_adq` (``"jpeg_adq"``): aligned double JPEG compression. Reads the file's quantized
  DCT coefficients, fits the double-quantization model of Bianchi & Piva (2012) per low-frequency
  mode and maps the probability that each 8×8 block was **not** double compressed, i.e. lost the
  host's first compression (a pasted or re-rendered region).
* :func:`detect_nadjpg` (``"jpeg_grid"``): the 8×8 grid an image was once compressed on, found in
  its decoded pixels by the quantization lattice of the blockwise DCT (the non-aligned model of
  Bianchi & Piva 2012), with its block artifact grid strength (Li, Yuan & Yu 2009); blocks off that
  lattice (grid absent or shifted) are flagged. Works on any decoded image that was a JPEG once
  (PNG, TIFF, ...); on a JPEG file it looks for a primary grid other than the file's own.
* :func:`detect_ghost` (``"jpeg_ghost"``): JPEG ghosts (Farid 2009): requantize at qualities
  50..95 below the file's and find regions whose error curve departs from the rest of the image.
* :func:`estimate_quality`: the file's IJG quality factor (exact table or nearest), and the primary
  quality implied by the double-quantization step estimates (also in the cues' ``extra``).

The coefficient cues (ADQ, ghost) work on the *stored* block grid and map their results to the
displayed orientation with :meth:`ImageInput.to_display`; their maps have block resolution
(constant over each 8×8 block), cropped to the image size.

References:

* Z. Lin, J. He, X. Tang, C.-K. Tang, "Fast, automatic and fine-grained tampered JPEG image
  detection via DCT coefficient analysis", Pattern Recognition 42(11), 2009.
* T. Bianchi, A. Piva, "Image forgery localization via block-grained analysis of JPEG artifacts",
  IEEE Trans. Information Forensics and Security 7(3), 2012.
* W. Li, Y. Yuan, N. Yu, "Passive detection of doctored JPEG image via block artifact grid
  extraction", Signal Processing 89(9), 2009.
* H. Farid, "Exposing digital forgeries from JPEG ghosts", IEEE Trans. Information Forensics and
  Security 4(1), 2009.
* ITU-T T.81 Annex K (the example quantization tables) and the IJG libjpeg quality scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import gammainc, gammaln, ndtr

from forgeloc.data.jpeg import JpegStream, JpegStreamError, read_jpeg_stream
from forgeloc.detectors.base import CueResult, ImageInput
from forgeloc.detectors.metadata import estimate_jpeg_quality, ijg_table

__all__ = [
    "detect_adq",
    "detect_ghost",
    "detect_nadjpg",
    "estimate_quality",
]

# ---------------------------------------------------------------------------------------------
# IJG quantization tables and quality
# ---------------------------------------------------------------------------------------------

# The IJG quality → table formula lives in forgeloc.detectors.metadata (one copy for every cue, so
# that the metadata facts and these cues never disagree on a file's quality).
_IJG_LUMA_TABLES = np.stack([ijg_table(q) for q in range(1, 101)])  # index q - 1


def _nearest_ijg_quality(table: np.ndarray, mask: np.ndarray) -> dict:
    """Qualities whose IJG luma table is closest to ``table`` on the modes in ``mask``."""
    # relative error: a step off by 1 matters more at step 2 than at step 50
    err = (np.abs(_IJG_LUMA_TABLES - table)[:, mask] / np.maximum(table[mask], 1)).mean(axis=1)
    best = np.flatnonzero(err <= err.min() + 1e-9) + 1
    return {"quality": int(best[-1]), "quality_range": [int(best[0]), int(best[-1])],
            "relative_error": round(float(err.min()), 4)}


def _file_quality(stream: JpegStream) -> dict:
    """The last (the file's) quality: the IJG quality of ``qt_y`` (exact, or the nearest for other
    encoders' tables), from :func:`forgeloc.detectors.metadata.estimate_jpeg_quality`."""
    found = estimate_jpeg_quality(stream.qt_y, stream.qt_c)
    exact = found["exact_ijg"] and found["chroma_exact_ijg"] is not False
    return {"quality": found["quality"], "exact_ijg_table": "yes" if exact else "no"}


def _primary_quality(steps: dict[tuple[int, int], int]) -> dict | None:
    """The IJG quality whose table best matches the primary steps the ADQ fit estimated."""
    if not steps:
        return None
    table = np.zeros((8, 8), np.int32)
    mask = np.zeros((8, 8), bool)
    for (u, v), q1 in steps.items():
        table[u, v], mask[u, v] = q1, True
    found = _nearest_ijg_quality(table, mask)
    return {"quality": found["quality"], "quality_range": found["quality_range"],
            "relative_error": found["relative_error"], "modes": len(steps)}


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def _zigzag() -> list[tuple[int, int]]:
    """JPEG zigzag order as (vertical, horizontal) frequency pairs."""
    cells = [(u, v) for u in range(8) for v in range(8)]
    return sorted(cells, key=lambda uv: (uv[0] + uv[1], uv[0] if (uv[0] + uv[1]) % 2 else uv[1]))


ZIGZAG = _zigzag()


def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II: JPEG's FDCT is ``D @ block @ D.T`` with this ``D``."""
    k = np.arange(8)
    d = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


_DCT = _dct_matrix()


def _blockwise(blocks: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ b @ right`` for every 8×8 block of ``(..., 8, 8)`` (numpy's stacked matmul: measured
    an order of magnitude faster here than one large GEMM over the reshaped blocks)."""
    return left @ blocks @ right


def _dct_blocks(blocks: np.ndarray) -> np.ndarray:
    return _blockwise(blocks.astype(np.float32, copy=False), _DCT, _DCT.T)


def _plane_to_blocks(plane: np.ndarray) -> np.ndarray:
    """``(H, W)`` → ``(H//8, W//8, 8, 8)`` (incomplete blocks at the bottom/right dropped)."""
    hb, wb = plane.shape[0] // 8, plane.shape[1] // 8
    return plane[: hb * 8, : wb * 8].reshape(hb, 8, wb, 8).transpose(0, 2, 1, 3)


def _block_map_to_pixels(block_map: np.ndarray, height: int, width: int, offset=(0, 0)) -> np.ndarray:
    """Block-resolution map → ``height×width`` pixels, block ``[i, j]`` covering pixels
    ``offset + 8i.., offset + 8j..``; pixels outside every block take the nearest block's value."""
    oy, ox = offset
    rows = np.clip((np.arange(height) - oy) // 8, 0, block_map.shape[0] - 1)
    cols = np.clip((np.arange(width) - ox) // 8, 0, block_map.shape[1] - 1)
    return np.ascontiguousarray(block_map[rows[:, None], cols[None, :]], dtype=np.float32)


def _read_stream(image: ImageInput, name: str) -> JpegStream | CueResult:
    """The file's JPEG stream, or the not-applicable result that says why there is none."""
    if not image.is_jpeg:
        what = image.format or ("an array without file bytes" if image.data is None else "unknown format")
        return CueResult.not_applicable(name, f"not a JPEG file: {what}")
    if not _has_complete_scan(image.data):
        return CueResult.not_applicable(name, "corrupt JPEG: no end-of-image marker after the scan (truncated?)")
    try:
        return read_jpeg_stream(image.data)
    except JpegStreamError as err:
        return CueResult.not_applicable(name, f"corrupt JPEG: {err}")


def _has_complete_scan(data: bytes) -> bool:
    """Whether an EOI marker follows the first scan header. libjpeg only *warns* on a truncated scan
    (and fills the missing blocks with zeros), so a truncated file must be caught here. Marker
    segments before the scan are skipped by their lengths so that an EXIF thumbnail's own EOI is
    not mistaken for the image's."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2: pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data never holds FF D9 (byte stuffing)
            return data.find(b"\xff\xd9", pos + 2 + length) >= 0
        pos += 2 + length
    return False


def _display_map(image: ImageInput, stream: JpegStream, block_map: np.ndarray) -> np.ndarray:
    """Stored-grid block map → displayed-orientation pixel map of ``image``'s size."""
    stored = _block_map_to_pixels(block_map, stream.height, stream.width)
    shown = image.to_display(stored)
    if shown.shape != (image.height, image.width):  # a stream/pixels mismatch is a bug upstream
        raise ValueError(f"JPEG stream {stored.shape} does not match the decoded image {image.rgb.shape[:2]}")
    return shown


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# aligned double quantization (ADQ)
# ---------------------------------------------------------------------------------------------


@dataclass
class _ModeFit:
    """The double-quantization model fitted to one DCT mode."""

    mode: tuple[int, int]
    q2: int
    q1: int = 0  # estimated primary step (0 = no double quantization found)
    alpha: float = 0.0  # fraction of coefficients the fit attributes to double quantization
    gain: float = 0.0  # log-likelihood gain per coefficient over single quantization (nats)
    low: int = 0  # histogram bins are -low..low
    llr: np.ndarray | None = None  # log p(k | single) - log p(k | double), per bin


def _gg_cdf(x: np.ndarray, shape: float, scale: float) -> np.ndarray:
    """CDF of the zero-mean generalized Gaussian ``∝ exp(-(|x|/scale)^shape)``, the usual model of
    AC DCT coefficients before quantization (Bianchi & Piva 2012 keep the unquantized density
    generic; a two-parameter family is enough for the envelope)."""
    tail = 0.5 * gammainc(1.0 / shape, (np.abs(x) / scale) ** shape)
    return 0.5 + np.sign(x) * tail


def _single_pmf(shape: float, scale: float, q2: int, low: int) -> np.ndarray:
    """p(k | single): the unquantized density integrated over the bins of step ``q2``."""
    edges = (np.arange(-low, low + 2) - 0.5) * q2
    return np.diff(_gg_cdf(edges, shape, scale))


def _double_pmf(shape: float, scale: float, q1: int, q2: int, sigma: float, low: int) -> np.ndarray:
    """p(k | double): quantize with ``q1``, add the pixel-rounding error of the decoded image
    (Gaussian, ``sigma`` in coefficient units), quantize with ``q2`` (the model of Bianchi & Piva 2012:
    p_DQ(k) = Σ_j p1(j)·P(round((j·q1 + e)/q2) = k))."""
    top = int(np.ceil((low + 1) * q2 / q1)) + 2
    first = np.diff(_gg_cdf((np.arange(-top, top + 2) - 0.5) * q1, shape, scale))  # p1(j), j = -top..top
    centres = np.arange(-top, top + 1)[:, None] * q1
    cdf = ndtr(((np.arange(-low, low + 2)[None, :] - 0.5) * q2 - centres) / sigma)
    return first @ (cdf[:, 1:] - cdf[:, :-1])


def _fit_envelope(h: np.ndarray, q2: int, low: int) -> tuple[float, float]:
    """Generalized-Gaussian shape and scale that best explain the histogram as singly quantized
    (grid search; the double-quantization modulation averages out of this smooth fit)."""
    k = np.arange(-low, low + 1)
    mean_abs = max(float(np.sum(h * np.abs(k))) * q2, 0.25 * q2)
    edges = (np.arange(-low, low + 2) - 0.5) * q2
    best, best_ll = (1.0, mean_abs), -np.inf
    for shape in _GG_SHAPES:
        # scales around the first absolute moment's, E|x| = scale·Γ(2/shape)/Γ(1/shape), all at once
        scales = mean_abs * np.exp(gammaln(1 / shape) - gammaln(2 / shape)) * _GG_SCALE_STEPS
        pmfs = np.diff(_gg_cdf(edges[None, :], shape, scales[:, None]), axis=1)
        ll = np.log(pmfs + 1e-12) @ h
        if ll.max() > best_ll:
            best, best_ll = (shape, float(scales[ll.argmax()])), float(ll.max())
    return best


_GG_SHAPES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0)
_GG_SCALE_STEPS = np.exp(np.linspace(-1.5, 1.0, 21))


def _fit_alpha(h: np.ndarray, p_dq: np.ndarray, p_sq: np.ndarray,
               iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """EM for the mixtures ``alpha·p_dq + (1-alpha)·p_sq`` on histogram ``h``, one per row of ``p_dq``
    (a candidate ``q1``); returns each alpha and log-likelihood gain per coefficient over ``p_sq``."""
    alpha = np.full((p_dq.shape[0], 1), 0.5)
    for _ in range(iterations):
        alpha = (alpha * p_dq / (alpha * p_dq + (1 - alpha) * p_sq)) @ h
        alpha = alpha[:, None]
    gain = (np.log(alpha * p_dq + (1 - alpha) * p_sq) - np.log(p_sq)) @ h
    return alpha[:, 0], gain


def _fit_mode(observed: np.ndarray, mode: tuple[int, int], q2: int, q1_max: int, sigma: float,
              floor: float) -> _ModeFit:
    """Estimate the primary step ``q1`` of one mode by maximum likelihood over ``1..q1_max`` (EM over
    the mixture weight for each candidate, as Bianchi & Piva 2012 do), and the per-bin likelihood
    ratio single/double that maps each coefficient."""
    # bins past the 99.5th percentile of |k| hold too few coefficients to show any periodicity
    low = int(np.clip(np.quantile(np.abs(observed), 0.995), 4, 120))
    h = _histogram(observed.astype(np.int64), low)
    shape, scale = _fit_envelope(h, q2, low)
    p_sq = _normalised(_single_pmf(shape, scale, q2, low))
    # q1 dividing q2 (q1 = q2 included) leaves no trace of the double quantization
    candidates = [q1 for q1 in range(1, q1_max + 1) if q2 % q1]
    if not candidates:
        return _ModeFit(mode, q2, low=low)
    p_dq = np.stack([_normalised(_double_pmf(shape, scale, q1, q2, sigma, low)) for q1 in candidates])
    alpha, gain = _fit_alpha(h, p_dq, p_sq)
    i = int(gain.argmax())
    if gain[i] <= 0:
        return _ModeFit(mode, q2, low=low)
    # floor: a bin the double model calls (almost) empty must not give unbounded evidence
    safe_dq = (1 - floor) * p_dq[i] + floor * p_sq
    llr = (np.log(p_sq) - np.log(safe_dq)).astype(np.float32)
    return _ModeFit(mode, q2, candidates[i], float(alpha[i]), float(gain[i]), low, llr)


def _histogram(k: np.ndarray, low: int) -> np.ndarray:
    """Normalised histogram over ``-low..low`` of integer values (outside values dropped)."""
    k = k[np.abs(k) <= low]
    return _normalised(np.bincount(k + low, minlength=2 * low + 1).astype(np.float64))


def _normalised(pmf: np.ndarray) -> np.ndarray:
    pmf = np.maximum(pmf, 1e-9)  # keeps empty bins finite in logs
    return pmf / pmf.sum()


_MIN_DQ_MODES = 3  # one or two modes alone are too easily a histogram accident
_MIN_BLOCKS = 256  # a 128×128 image: fewer coefficients per mode make no histogram


def _adq_fits(stream: JpegStream, modes: int, q1_max: int, sigma: float, floor: float,
              min_gain: float, min_alpha: float) -> tuple[list[_ModeFit], list[_ModeFit]]:
    """All fitted modes and the ones that show double quantization (none for a tiny image)."""
    if stream.y.shape[0] * stream.y.shape[1] < _MIN_BLOCKS:
        return [], []
    fits = [_fit_mode(stream.y[:, :, u, v].ravel(), (u, v), int(stream.qt_y[u, v]), q1_max, sigma, floor)
            for u, v in ZIGZAG[1: modes + 1]]
    detected = [f for f in fits if f.q1 and f.gain >= min_gain and f.alpha >= min_alpha]
    return fits, detected


def _adq_block_llr(stream: JpegStream, detected: list[_ModeFit]) -> np.ndarray:
    """Per-block log-likelihood ratio single/double summed over the detected modes (naive Bayes
    over modes, as Lin et al. 2009 and Bianchi & Piva 2012 combine them)."""
    total = np.zeros(stream.y.shape[:2], np.float32)
    for fit in detected:
        k = stream.y[:, :, fit.mode[0], fit.mode[1]].astype(np.int64)
        inside = np.abs(k) <= fit.low
        total += np.where(inside, fit.llr[np.clip(k, -fit.low, fit.low) + fit.low], 0.0)
    return total


_ADQ_DEFAULTS = {"modes": 15, "q1_max": 20, "sigma": 0.6, "floor": 0.05, "min_gain": 0.02, "min_alpha": 0.5}


def detect_adq(image: ImageInput, *, modes: int = 15, q1_max: int = 20, sigma: float = 0.6,
               floor: float = 0.05, min_gain: float = 0.02, min_alpha: float = 0.5,
               prior_log_odds: float = 0.0, smooth_blocks: int = 5) -> CueResult:
    """Aligned double JPEG compression map (``"jpeg_adq"``).

    Per AC mode among the first ``modes`` (zigzag), with ``k`` the file's quantized coefficient and
    ``q2`` its step (Bianchi & Piva 2012, aligned model; Lin et al. 2009 for the per-mode
    histograms combined per block):

    * ``p(k|single)``: a generalized-Gaussian density of the unquantized coefficient, fitted to the
      mode's histogram (:func:`_fit_envelope`), integrated over the bins of step ``q2``;
    * ``p(k|double)``: the same density quantized with a primary step ``q1``, plus a Gaussian
      pixel-rounding error (``sigma``, coefficient units: decoding rounds luma, the RGB conversion
      rounds again; 0.6 measured best on Pillow round trips), requantized with ``q2``;
    * ``q1`` in ``1..q1_max`` and the mixture weight ``α`` maximise the likelihood of
      ``α·p(k|double) + (1-α)·p(k|single)`` (EM). A mode counts as double compressed when the mixture
      gains at least ``min_gain`` nats per coefficient over single compression with
      ``α ≥ min_alpha``; the image when at least 3 modes do.

    Per block, ``LLR = Σ_modes log p(k|single)/p(k|double)`` (a bin the double model calls empty
    is floored at ``floor`` of the single model, so one coefficient cannot decide a block), averaged
    over ``smooth_blocks×smooth_blocks`` blocks; heatmap = ``sigmoid(LLR + prior_log_odds)``, the
    probability that the block was *not* double compressed: a pasted region lost the host's first
    compression. Bianchi & Piva threshold the LLR at 0 (equal priors, ``prior_log_odds = 0``).

    ``score``: the 99th percentile of the heatmap (a region of ≥ 1 % of the image must look singly
    compressed to score high); 0 when no double compression is found (the heatmap is then all 0:
    with no double compression anywhere, this cue cannot tell regions apart).
    ``extra``: the file's and the primary quality (:func:`estimate_quality`) and every mode's fit.
    """
    name = "jpeg_adq"
    stream = _read_stream(image, name)
    if isinstance(stream, CueResult):
        return stream
    if stream.y.shape[0] * stream.y.shape[1] < _MIN_BLOCKS:
        return CueResult.not_applicable(name, f"image too small for DCT histograms (under {_MIN_BLOCKS} blocks)")
    fits, detected = _adq_fits(stream, modes, q1_max, sigma, floor, min_gain, min_alpha)
    quality = _quality_facts(stream, detected)
    extra = {"quality": quality, "modes": [_describe_fit(f) for f in fits], "double_compressed_modes": len(detected)}
    if len(detected) < _MIN_DQ_MODES:
        heatmap = np.zeros((image.height, image.width), np.float32)
        return CueResult(name, heatmap, 0.0, extra={**extra, "verdict": "no aligned double compression found"})
    llr = _adq_block_llr(stream, detected)
    if smooth_blocks > 1:
        llr = ndimage.uniform_filter(llr, smooth_blocks, mode="nearest")
    heatmap = _display_map(image, stream, _sigmoid(llr + prior_log_odds))
    score = float(np.quantile(heatmap, 0.99))
    return CueResult(name, heatmap, score, extra={**extra, "verdict": "aligned double compression found"})


def _describe_fit(fit: _ModeFit) -> dict:
    return {"mode": list(fit.mode), "q2": fit.q2, "q1": fit.q1, "alpha": round(fit.alpha, 3),
            "gain": round(fit.gain, 5)}


def _quality_facts(stream: JpegStream, detected: list[_ModeFit]) -> dict:
    primary = _primary_quality({f.mode: f.q1 for f in detected}) if len(detected) >= _MIN_DQ_MODES else None
    return {**_file_quality(stream), "primary_quality": primary}


def estimate_quality(image: ImageInput, **adq_options) -> dict:
    """The file's quality and, where aligned double compression is found, the primary quality.

    ``quality``: the IJG quality of the file's luma table, exact or (other encoders: cameras,
    Photoshop) the nearest, only indicative then; ``exact_ijg_table``: ``"yes"`` when the luma (and
    chroma) tables are exactly libjpeg's. ``primary_quality``: ``{"quality", "quality_range",
    "relative_error", "modes"}``, the IJG quality whose table is nearest (mean relative step error)
    to the primary steps the ADQ fit estimated on ``modes`` modes (``quality_range`` when several
    qualities fit equally), or ``None`` without aligned double compression. A non-JPEG or corrupt
    file gives ``{"applicable": False, "reason": ...}``.
    """
    stream = _read_stream(image, "jpeg_quality")
    if isinstance(stream, CueResult):
        return {"applicable": False, "reason": stream.reason}
    _, detected = _adq_fits(stream, **{**_ADQ_DEFAULTS, **adq_options})
    return {"applicable": True, **_quality_facts(stream, detected)}


# ---------------------------------------------------------------------------------------------
# block grid: block artifact grid + quantization lattice (non-aligned double JPEG)
# ---------------------------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    """JFIF luma of decoded RGB, level-shifted like JPEG's input (float32)."""
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return rgb.astype(np.float32) @ weights - 128.0


def _blockiness_profile(luma: np.ndarray, axis: int, clip: float) -> np.ndarray:
    """Mean absolute luma step across each of the 8 boundary phases along ``axis`` (phase ``o``: the
    step between pixels ``8n+o-1`` and ``8n+o``). The block artifact grid of Li, Yuan & Yu (2009) is
    this step pattern; steps are clipped at ``clip`` so that strong edges do not swamp it, and
    folding the whole image onto 8 phases averages texture out (each phase sees the same texture)."""
    steps = np.minimum(np.abs(np.diff(luma, axis=axis)), clip)
    per_line = steps.mean(axis=1 - axis)
    phases = np.arange(1, per_line.size + 1) % 8
    return np.bincount(phases, weights=per_line, minlength=8) / np.maximum(np.bincount(phases, minlength=8), 1)


def _grid_strength(profile: np.ndarray, phase: int) -> float:
    """How much the boundary at ``phase`` exceeds the other phases (0 = no grid)."""
    others = np.delete(profile, phase)
    return float(profile[phase] / max(others.mean(), 1e-6) - 1.0)


def _own_grid_offset(image: ImageInput) -> tuple[int, int] | None:
    """Where a JPEG file's own 8×8 grid lies in the displayed image (row, column offsets): a flip of
    an axis whose length is not a multiple of 8 moves the partial block to the start."""
    if not image.is_jpeg:
        return None
    flip_rows = image.orientation in (3, 4, 7, 8)
    flip_cols = image.orientation in (2, 3, 6, 7)
    return (image.height % 8 if flip_rows else 0, image.width % 8 if flip_cols else 0)


def _pixel_dct(luma: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Blockwise DCT ``(Hb, Wb, 8, 8)`` of the luma on the grid starting at ``offset``."""
    return _dct_blocks(_plane_to_blocks(luma[offset[0]:, offset[1]:]))


def _lattice_step(c: np.ndarray, q_max: int, min_periodicity: float, min_z: float = 5.0,
                  near_best: float = 0.98) -> tuple[int, float]:
    """The quantization step whose lattice the coefficients ``c`` sit on, and how tightly.

    Periodicity of step ``q``: mean of ``cos(2π c/q)`` over coefficients with ``|c| ≥ q/2`` (the zero
    bin is left out: unquantized coefficients crowd it too). A lattice of step ``q0`` with rounding
    noise ``σ`` gives ``exp(-2π²σ²/q0²)`` at ``q0``, less at its divisors (the noise counts double,
    triple), less at ``q0 ± 1`` and little or negative at its multiples. The step is the largest
    ``q`` within ``near_best`` of the best periodicity (divisors come close when ``σ ≪ q0``).
    Candidates need ``min_periodicity`` and, since off any lattice the mean has standard deviation
    ``1/√(2n)``, ``min_z`` of those above 0. ``(0, 0.0)`` when none qualifies."""
    magnitude = np.abs(c)
    found: dict[int, float] = {}
    for q in range(2, q_max + 1):
        on = c[magnitude >= q / 2]
        if on.size < 16:
            break
        periodicity = float(np.cos(on * (2 * np.pi / q)).mean())
        if periodicity >= max(min_periodicity, min_z / np.sqrt(2 * on.size)):
            found[q] = periodicity
    if not found:
        return 0, 0.0
    best = max(found.values())
    step = max(q for q, p in found.items() if p >= near_best * best)
    return step, found[step]


@dataclass
class _Lattice:
    """Quantization steps found at one grid offset."""

    offset: tuple[int, int]
    steps: dict[tuple[int, int], tuple[int, float]]  # mode -> (step, periodicity)

    @property
    def evidence(self) -> float:
        return sum(p for _, p in self.steps.values())


def _block_origins(shape: tuple[int, int], sample: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (for offset 0) of at most ``sample`` blocks that fit at every offset 0..7."""
    hb, wb = (shape[0] - 7) // 8, (shape[1] - 7) // 8
    picked = np.random.default_rng(seed).choice(hb * wb, min(sample, hb * wb), replace=False)
    return 8 * (picked // wb), 8 * (picked % wb)


def _half_aligned(offset: tuple[int, int], own: tuple[int, int] | None) -> bool:
    """Whether ``offset`` shares exactly one axis with the file's own grid. Its blocks straddle two
    blocks of the file's grid along one axis only, and mix their quantized coefficients into weak
    false lattices (measured on aligned double JPEGs: 3-5 modes at periodicity 0.2-0.7)."""
    return own is not None and (offset[0] == own[0]) != (offset[1] == own[1])


def _informative_modes(offset: tuple[int, int], own: tuple[int, int] | None, count: int) -> list[tuple[int, int]]:
    """The first ``count`` AC modes (zigzag) that can show a lattice at ``offset`` of its own. On a
    half-aligned grid (:func:`_half_aligned`), a mode of frequency 0 along the shifted axis averages
    two neighbouring blocks of the file's grid and so sits on half the file's steps: a strong false
    lattice (all ``(0, v)`` modes at offset (4, 0) of a q=90 JPEG)."""
    shifted_rows = _half_aligned(offset, own) and offset[0] != own[0]
    shifted_cols = _half_aligned(offset, own) and offset[1] != own[1]
    usable = [(u, v) for u, v in ZIGZAG[1:] if not (shifted_rows and u == 0) and not (shifted_cols and v == 0)]
    return usable[:count]


def _find_lattice(luma: np.ndarray, offset: tuple[int, int], origins: tuple[np.ndarray, np.ndarray],
                  modes: list[tuple[int, int]], q_max: int, min_periodicity: float) -> _Lattice:
    """The lattice steps of ``modes`` on the grid at ``offset``, from the blocks at ``origins`` (a
    sample: the steps are global)."""
    r = np.arange(8)
    rows = (origins[0] + offset[0])[:, None, None] + r[None, :, None]
    cols = (origins[1] + offset[1])[:, None, None] + r[None, None, :]
    coefficients = _dct_blocks(luma[rows, cols])
    steps = {}
    for u, v in modes:
        q, periodicity = _lattice_step(coefficients[:, u, v], q_max, min_periodicity)
        if q:
            steps[(u, v)] = (q, periodicity)
    return _Lattice(offset, steps)


def _lattice_block_llr(coefficients: np.ndarray, lattice: _Lattice, min_magnitude: float) -> np.ndarray:
    """Per block, ``Σ_modes log p(c | on the lattice) - log p(c | not)``: on the lattice, the
    fractional part ``r = c/q - round(c/q)`` is Gaussian around 0 with the spread the periodicity
    implies (``periodicity = exp(-2π²s²)``); off it, ``r`` is uniform (Bianchi & Piva 2012, the
    non-aligned model, with the primary grid and steps estimated from the pixels). Coefficients
    smaller than ``min_magnitude`` say nothing either way (unquantized ones are small too)."""
    total = np.zeros(coefficients.shape[:2], np.float32)
    for (u, v), (q, periodicity) in lattice.steps.items():
        spread = float(np.clip(np.sqrt(-np.log(periodicity) / (2 * np.pi ** 2)), 0.03, 0.2))
        c = coefficients[:, :, u, v]
        r = c / q - np.round(c / q)
        llr = -0.5 * (r / spread) ** 2 - np.log(spread * np.sqrt(2 * np.pi))
        total += np.where(np.abs(c) >= min_magnitude, np.maximum(llr, -4.0), 0.0)
    return total


def _clipped_blocks(rgb: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Blocks holding a channel at 0 or 255: the decoder clipped them, so their luma is off any
    lattice for reasons that have nothing to do with editing."""
    hb, wb = shape
    crop = rgb[offset[0]: offset[0] + 8 * hb, offset[1]: offset[1] + 8 * wb]
    extreme = ((crop == 0) | (crop == 255)).any(axis=2)
    return extreme.reshape(hb, 8, wb, 8).any(axis=(1, 3))


def _scan_offsets(luma: np.ndarray, own: tuple[int, int] | None, min_periodicity: float,
                  sample: int) -> list[tuple[int, int]]:
    """All 64 grid offsets ranked by a quick lattice check (6 modes, steps up to 16, ``sample``
    blocks), a JPEG's own grid left out: its lattice is trivially everywhere, and aligned double
    compression is ``jpeg_adq``'s cue. The blockiness phases alone miss a primary grid that a later
    compression's grid outshines; the lattice does not."""
    origins = _block_origins(luma.shape, sample)
    offsets = [(oy, ox) for oy in range(8) for ox in range(8) if (oy, ox) != own]
    quick = [_find_lattice(luma, o, origins, _informative_modes(o, own, 6), 16, min_periodicity).evidence
             for o in offsets]
    return [offsets[i] for i in np.argsort(quick, kind="stable")[::-1]]


def detect_nadjpg(image: ImageInput, *, clip: float = 12.0, modes: int = 15, q_max: int = 32,
                  min_periodicity: float = 0.3, min_lattice_modes: int = 3, min_magnitude: float = 1.0,
                  prior_log_odds: float = -2.0, smooth_blocks: int = 3, sample: int = 8192,
                  scan_sample: int = 2048) -> CueResult:
    """Block-grid map (``"jpeg_grid"``): where the decoded image lacks the 8×8 JPEG grid that the
    rest of it carries, or carries it shifted.

    1. The quantization lattice (Bianchi & Piva 2012, non-aligned model): at the offset of the grid
       an image was once compressed on, the blockwise DCT of its decoded pixels sits, per
       low-frequency mode, on multiples of the step it was quantized with (:func:`_lattice_step`).
       All 64 offsets are ranked by a quick lattice check (:func:`_scan_offsets`; for a JPEG file
       its own grid is left out, so this cue looks for a *primary* non-aligned grid) and the best of
       the top two, checked on ``modes`` modes, is the reference grid.
    2. The block artifact grid (Li, Yuan & Yu 2009): the luma steps folded onto the 8 boundary
       phases per axis (:func:`_blockiness_profile`) say how strongly the reference grid shows as
       blocking (``extra["grid_strength"]``, per axis; ``extra["blockiness_phase"]`` = the
       strongest phases, which differ from the reference when a later grid outshines it).
    3. Per block, the lattice log-likelihood ratio (:func:`_lattice_block_llr`) summed over the
       modes, averaged over ``smooth_blocks×smooth_blocks`` blocks; heatmap =
       ``sigmoid(-LLR + prior_log_odds)``, the probability that the block is *off* the grid.
       Blocks with clipped channels are neutral (LLR 0).

    Applies to any decoded image: a JPEG decoded and saved as PNG/TIFF keeps its lattice. No lattice
    with at least ``min_lattice_modes`` modes: not applicable, "no JPEG block grid found" (for a
    JPEG file: applicable, zeros, score 0, "no grid besides the file's own").
    ``score``: the 99th percentile of the heatmap.
    """
    name = "jpeg_grid"
    luma = _luma(image.rgb)
    if min(luma.shape) < 32:
        return CueResult.not_applicable(name, "image too small for a block grid analysis")
    rows, cols = _blockiness_profile(luma, 0, clip), _blockiness_profile(luma, 1, clip)
    own = _own_grid_offset(image)
    ranked = _scan_offsets(luma, own, min_periodicity, scan_sample)
    origins = _block_origins(luma.shape, sample)
    best = max((_find_lattice(luma, o, origins, _informative_modes(o, own, modes), q_max, min_periodicity)
                for o in ranked[:2]), key=lambda lat: lat.evidence)
    strength = [round(_grid_strength(rows, best.offset[0]), 4), round(_grid_strength(cols, best.offset[1]), 4)]
    extra = {
        "grid_offset": list(best.offset),
        "grid_strength": strength,
        "blockiness_phase": [int(np.argmax(rows)), int(np.argmax(cols))],
        "lattice_modes": len(best.steps),
        "lattice_steps": {f"{u},{v}": q for (u, v), (q, _) in best.steps.items()},
        "file_grid_offset": None if own is None else list(own),
    }
    # a half-aligned grid must show a lattice in most modes, not in the few its mixing fakes
    needed = max(min_lattice_modes, modes // 2) if _half_aligned(best.offset, own) else min_lattice_modes
    if len(best.steps) < needed:
        if own is not None:
            zeros = np.zeros((image.height, image.width), np.float32)
            return CueResult(name, zeros, 0.0, extra={**extra, "verdict": "no JPEG grid besides the file's own"})
        return CueResult.not_applicable(name, "no JPEG block grid found", **extra)
    extra["quality_at_grid"] = _primary_quality({m: q for m, (q, _) in best.steps.items()})
    coefficients = _pixel_dct(luma, best.offset)
    llr = _lattice_block_llr(coefficients, best, min_magnitude)
    llr[_clipped_blocks(image.rgb, best.offset, llr.shape)] = 0.0
    if smooth_blocks > 1:
        llr = ndimage.uniform_filter(llr, smooth_blocks, mode="nearest")
    heatmap = _block_map_to_pixels(_sigmoid(-llr + prior_log_odds), image.height, image.width, best.offset)
    return CueResult(name, heatmap, float(np.quantile(heatmap, 0.99)), extra={**extra, "verdict": "JPEG grid found"})


# ---------------------------------------------------------------------------------------------
# JPEG ghosts
# ---------------------------------------------------------------------------------------------


def _requantization_error(coefficients: np.ndarray, quality: int) -> np.ndarray:
    """Per block, the mean squared pixel difference between the image and its recompression at
    ``quality`` (IJG luma table). By Parseval (the DCT is orthonormal) it is the mean squared
    requantization error of the coefficients: the recompression of Farid (2009), done in the DCT
    domain on the stored grid, without the rounding of pixels to integers."""
    table = ijg_table(quality).astype(np.float32)
    error = coefficients - table * np.round(coefficients / table)
    return np.einsum("ijuv,ijuv->ij", error, error) / 64.0


def _ghost_curves(stream: JpegStream, qualities: list[int], window_blocks: int,
                  floor: float) -> tuple[np.ndarray, np.ndarray]:
    """``log`` requantization error per quality, averaged over ``window_blocks²`` blocks (Farid's
    b×b window, b = 16 pixels), split into each block's *level* (mean over the qualities: texture)
    and *shape* (the curve minus its level). ``(len(qualities), Hb, Wb)`` and ``(Hb, Wb)``."""
    coefficients = stream.dequantized_y()
    curves = np.log(np.stack([
        ndimage.uniform_filter(_requantization_error(coefficients, q), window_blocks, mode="nearest")
        for q in qualities
    ]) + floor)
    level = curves.mean(axis=0)
    return curves - level, level


def _typical_shapes(shapes: np.ndarray, level: np.ndarray, texture_bins: int) -> np.ndarray:
    """Per block, the median curve shape of the blocks of similar texture (``texture_bins`` quantile
    bins of the level). Flat and busy blocks have different curve shapes whatever their history (a
    flat block's error sits at the floor at every quality); comparing like with like keeps them from
    passing for ghosts. Few bins: a pasted region of uniform texture must not become the majority
    of its bin (measured: 8 bins inverted a 10 %-of-image paste, 4 did not)."""
    edges = np.quantile(level, np.linspace(0, 1, texture_bins + 1)[1:-1])
    bins = np.digitize(level, edges)
    typical = np.empty_like(shapes)
    for b in np.unique(bins):
        members = bins == b
        typical[:, members] = np.median(shapes[:, members], axis=1, keepdims=True)
    return typical


def detect_ghost(image: ImageInput, *, qualities: tuple[int, ...] = tuple(range(50, 100, 5)),
                 window_blocks: int = 2, floor: float = 1 / 12, texture_bins: int = 4,
                 full_dip: float = float(np.log(3.0))) -> CueResult:
    """JPEG ghost map (``"jpeg_ghost"``, Farid 2009).

    A region once compressed at a quality ``q1`` keeps a local minimum of its recompression error
    at ``q1`` (the "ghost"); a region pasted into a once-compressed host lacks the host's. The file is
    recompressed at each of ``qualities`` below its own (:func:`_requantization_error`), the errors
    are averaged over 16×16 pixels (``window_blocks`` = 2 blocks, Farid's b = 16), with ``floor`` =
    1/12 grey level², the pixel rounding that Farid's pixel-domain recompression adds to every
    difference, and compared as curve shapes in log units (:func:`_ghost_curves`). Farid normalises
    each quality's map to [0, 1] and inspects it by eye; here the median curve of blocks of similar
    texture (:func:`_typical_shapes`) stands for "the rest", and a block's inconsistency is the
    largest deviation of its curve from it, either way: ``g = max_q |L_q(x) - typical_q(x)|``.
    heatmap = ``clip(g / full_dip, 0, 1)``: an error 3× off the typical block at some quality
    saturates it, √3× crosses 0.5 (chosen on the shared CASIA/NC2016 JPEGs against clean Pillow
    JPEGs: 2.5× flagged 6 % of clean photos at 0.5, 3× 4 %, 4× 2.5 % but missed half the real
    splices).

    JPEG files only: it needs the file's coefficients and quality (a PNG saved from a JPEG would need
    pixel-domain recompression at every grid offset). Grids are assumed aligned, as in Farid's
    main experiments. ``score``: the 99th percentile of the heatmap; a weak image-level verdict
    (clean photos with large flat areas reach 0.9 and more). ``extra["ghost_quality"]``: the quality
    at which the most inconsistent blocks deviate most.
    """
    name = "jpeg_ghost"
    stream = _read_stream(image, name)
    if isinstance(stream, CueResult):
        return stream
    quality = _quality_facts(stream, _adq_fits(stream, **_ADQ_DEFAULTS)[1])
    below = [q for q in qualities if q < quality["quality"]]
    extra = {"quality": quality, "qualities": below}
    if len(below) < 2:
        zeros = np.zeros((image.height, image.width), np.float32)
        return CueResult(name, zeros, 0.0, extra={**extra, "verdict": "file quality too low for ghosts below it"})
    shapes, level = _ghost_curves(stream, below, window_blocks, floor)
    deviation = np.abs(shapes - _typical_shapes(shapes, level, texture_bins))
    block_map = np.clip(deviation.max(axis=0) / full_dip, 0.0, 1.0).astype(np.float32)
    strongest = block_map >= np.quantile(block_map, 0.99)
    ghost_quality = below[int(np.bincount(deviation.argmax(axis=0)[strongest], minlength=len(below)).argmax())]
    heatmap = _display_map(image, stream, block_map)
    return CueResult(name, heatmap, float(np.quantile(heatmap, 0.99)), extra={**extra, "ghost_quality": ghost_quality})
