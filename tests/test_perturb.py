"""Robustness perturbations: each one does exactly what the protocol (section d) says, repeatably."""

from __future__ import annotations

import math
import pickle

import cv2
import numpy as np
import pytest

from forgeloc.data.perturb import (
    PERTURBATIONS,
    GaussianBlur,
    GaussianNoise,
    JpegCompression,
    Rescale,
    gaussian_blur,
    gaussian_noise,
    jpeg_compress,
    make_perturbation,
    opencv_gaussian_sigma,
    parse_levels,
    parse_perturbation_names,
    rescale_down_up,
)
from forgeloc.data.transforms import SampleTransform

PROTOCOL = (50, 60, 70, 80, 90, 100)  # JPEG qualities; blur kernels / noise variances are 3..23 step 4
KERNELS = (3, 7, 11, 15, 19, 23)
VARIANCES = (3, 7, 11, 15, 19, 23)


def _photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with some texture and an edge (JPEG has something to remove)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    img[h // 3: 2 * h // 3, w // 4: w // 2] = (250, 30, 60)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg_ref(img: np.ndarray, q: int) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    assert ok
    return cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)


# --------------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", PROTOCOL)
def test_jpeg_protocol_mode_is_opencv_at_q_minus_1_or_q(q):
    img = _photo()
    refs = {qq: _jpeg_ref(img, qq) for qq in (q - 1, q)}
    assert not np.array_equal(refs[q - 1], refs[q]), "the two candidate qualities must be distinguishable here"
    perturb = make_perturbation("jpeg", q)
    used = []
    for seed in range(24):
        out = perturb(img, np.random.default_rng(seed))
        match = [qq for qq, ref in refs.items() if np.array_equal(out, ref)]
        assert len(match) == 1, f"q={q}: output is neither OpenCV JPEG at {q - 1} nor at {q}"
        used.append(match[0])
    assert set(used) == {q - 1, q}, f"q={q}: both qualities must be drawn, got only {set(used)}"
    # Exact mode: always q.
    exact = make_perturbation("jpeg", q, jpeg_exact=True)
    for seed in range(5):
        assert np.array_equal(exact(img, np.random.default_rng(seed)), refs[q])
    assert exact.label == f"jpeg q={q} exact" and perturb.label == f"jpeg q={q}"


def test_jpeg_quality_100_still_changes_colour_detail_but_not_a_flat_image():
    # OpenCV subsamples chroma (4:2:0) even at quality 100, so colour noise is lost; a flat grey
    # image has nothing to lose and comes back bit-identical.
    noisy = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = jpeg_compress(noisy, 100)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - noisy).mean() > 5
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert np.array_equal(jpeg_compress(flat, 100), flat)
    # ... and lower quality loses more than 100 on a natural-ish image.
    img = _photo()
    err = {q: np.abs(jpeg_compress(img, q).astype(int) - img).mean() for q in (50, 100)}
    assert err[50] > err[100] > 0


def test_jpeg_rejects_bad_levels():
    with pytest.raises(ValueError, match="quality"):
        JpegCompression(101)
    with pytest.raises(ValueError, match="quality"):
        JpegCompression(0)  # protocol mode would draw quality -1
    with pytest.raises(ValueError, match="integers"):
        make_perturbation("jpeg", 70.5)
    with pytest.raises(ValueError, match="0..100"):
        jpeg_compress(_photo(), 120)


# --------------------------------------------------------------------------------------------------
# Gaussian blur
# --------------------------------------------------------------------------------------------------
def test_opencv_sigma_formula_matches_protocol_table():
    expected = {3: 0.8, 7: 1.4, 11: 2.0, 15: 2.6, 19: 3.2, 23: 3.8}
    for k, sigma in expected.items():
        assert opencv_gaussian_sigma(k) == pytest.approx(sigma)
        assert GaussianBlur(k).params()["sigma"] == pytest.approx(sigma)


@pytest.mark.parametrize("k", KERNELS)
def test_blur_impulse_response_is_the_opencv_kernel_of_size_k(k):
    g = cv2.getGaussianKernel(k, 0)[:, 0]
    ref = np.outer(g, g)
    c, r = 40, (k - 1) // 2
    # Float image: the impulse response is the separable kernel exactly, with support exactly k × k.
    impulse = np.zeros((81, 81, 3), np.float32)
    impulse[c, c] = 1.0
    out = gaussian_blur(impulse, k)
    np.testing.assert_allclose(out[c - r: c + r + 1, c - r: c + r + 1, 0], ref, atol=1e-6)
    assert np.count_nonzero(out[..., 0]) == k * k
    assert out[..., 0].sum() == pytest.approx(1.0, abs=1e-5)
    # The uint8 path the evaluation uses: 255 × kernel, rounded (OpenCV's fixed-point path: ±1).
    bright = np.zeros((81, 81, 3), np.uint8)
    bright[c, c] = 255
    perturbed = make_perturbation("blur", k)(bright, np.random.default_rng(0))
    assert perturbed.dtype == np.uint8 and perturbed.shape == bright.shape
    window = perturbed[c - r: c + r + 1, c - r: c + r + 1, 0].astype(float)
    assert np.abs(window - 255 * ref).max() <= 1.0
    outside = perturbed[..., 0].astype(int).copy()
    outside[c - r: c + r + 1, c - r: c + r + 1] = 0
    assert outside.max() == 0
    assert np.array_equal(perturbed[..., 0], perturbed[..., 2])  # every channel blurred alike
    # k ≥ 11: a true Gaussian with the formula's sigma; k ≤ 7: OpenCV's fixed table, which is not.
    x = np.arange(k) - r
    gauss = np.exp(-(x ** 2) / (2 * opencv_gaussian_sigma(k) ** 2))
    gauss /= gauss.sum()
    if k >= 11:
        np.testing.assert_allclose(g, gauss, atol=1e-9)
    else:
        assert np.abs(g - gauss).max() > 1e-3
        assert GaussianBlur(k).params()["weights"] == "OpenCV fixed table"


def test_blur_kernel_size_matters_and_rejects_even_sizes():
    img = _photo()
    outs = [gaussian_blur(img, k) for k in (3, 7, 11)]
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])
    assert np.array_equal(outs[1], cv2.GaussianBlur(img, (7, 7), 0))
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(4)
    with pytest.raises(ValueError, match="odd"):
        parse_levels(["blur=3,6"])


# --------------------------------------------------------------------------------------------------
# Gaussian noise
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", VARIANCES)
def test_noise_level_is_a_variance(v):
    grey = np.full((384, 384, 3), 128, np.uint8)  # far from 0 and 255: no clipping
    out = make_perturbation("noise", v)(grey, np.random.default_rng(v))
    diff = out.astype(np.float64) - 128
    std = math.sqrt(v)
    # Quantising to whole grey levels adds 1/12 to the variance; std must be √v within 3 %.
    assert diff.std() == pytest.approx(math.sqrt(v + 1 / 12), rel=0.01)
    assert diff.std() == pytest.approx(std, rel=0.03)
    # albumentations 1.x truncates to uint8 → mean −½ grey level; "round" is unbiased.
    assert diff.mean() == pytest.approx(-0.5, abs=0.03)
    rounded = make_perturbation("noise", v, noise_rounding="round")(grey, np.random.default_rng(v))
    rdiff = rounded.astype(np.float64) - 128
    assert abs(rdiff.mean()) < 0.03 and rdiff.std() == pytest.approx(std, rel=0.03)
    # Independent per channel (and per pixel).
    chans = diff.reshape(-1, 3).T
    corr = np.corrcoef(chans)
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.01
    assert abs(np.corrcoef(diff[:, :-1, 0].ravel(), diff[:, 1:, 0].ravel())[0, 1]) < 0.01
    assert GaussianNoise(v).label == f"noise var={v} (std {std:.2f})"


def test_noise_is_clipped_to_uint8_and_truncates_like_albumentations():
    black = np.zeros((64, 64, 3), np.uint8)
    out = gaussian_noise(black, 23, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.min() == 0 and 0 < out.mean() < 3
    white = np.full((64, 64, 3), 255, np.uint8)
    assert gaussian_noise(white, 23, np.random.default_rng(0)).max() == 255
    # Bit-exact with the albumentations 1.3.0 arithmetic: float add, clip, astype (truncation).
    img = _photo()
    noise = np.random.default_rng(5).normal(0, math.sqrt(11), img.shape)
    expected = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    assert np.array_equal(gaussian_noise(img, 11, np.random.default_rng(5)), expected)
    with pytest.raises(ValueError, match="variance"):
        GaussianNoise(-1)
    with pytest.raises(ValueError, match="rounding"):
        GaussianNoise(3, rounding="floor")


# --------------------------------------------------------------------------------------------------
# Resize (forgeloc-only)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [0.25, 0.5, 0.75, 1.5])
def test_rescale_changes_pixels_but_keeps_size(factor):
    img = _photo(50, 70)
    out = make_perturbation("resize", factor)(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    mid = (round(70 * factor), round(50 * factor))
    if factor < 1:
        ref = cv2.resize(cv2.resize(img, mid, interpolation=cv2.INTER_AREA), (70, 50), interpolation=cv2.INTER_LINEAR)
    else:
        ref = cv2.resize(cv2.resize(img, mid, interpolation=cv2.INTER_LINEAR), (70, 50), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out, ref)


def test_rescale_harsher_factor_loses_more_and_identity_at_one():
    img = _photo(64, 64)
    err = [np.abs(rescale_down_up(img, f).astype(int) - img).mean() for f in (0.75, 0.5, 0.25)]
    assert err[0] < err[1] < err[2]
    assert np.array_equal(rescale_down_up(img, 1.0), img)
    assert PERTURBATIONS["resize"].protocol_levels is None  # labelled forgeloc-only
    assert Rescale(0.5).label == "resize x0.5"
    with pytest.raises(ValueError, match="factor"):
        Rescale(0)


# --------------------------------------------------------------------------------------------------
# Determinism through the sample pipeline, registry, parsing
# --------------------------------------------------------------------------------------------------
def test_perturbation_is_deterministic_per_sample_seed_and_varies_by_index():
    img = _photo()
    noise = SampleTransform(mode="none", perturb=make_perturbation("noise", 15))
    a = noise.augment_arrays(img, None, (42, 0, 3))[0]
    b = noise.augment_arrays(img, None, (42, 0, 3))[0]
    c = noise.augment_arrays(img, None, (42, 0, 4))[0]
    d = noise.augment_arrays(img, None, (43, 0, 3))[0]
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    # The JPEG quality draw follows the seed too: over 20 indices both qualities occur, repeatably.
    jpeg = SampleTransform(mode="none", perturb=make_perturbation("jpeg", 70))
    refs = {q: _jpeg_ref(img, q) for q in (69, 70)}

    def quality(i: int) -> int:
        out = jpeg.augment_arrays(img, None, (42, 0, i))[0]
        return next(q for q, ref in refs.items() if np.array_equal(out, ref))

    first = [quality(i) for i in range(20)]
    assert first == [quality(i) for i in range(20)] and set(first) == {69, 70}
    # The mask is not touched: size is kept, so the mask passes through unchanged.
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[10:20, 5:30] = 1
    for kind, level in (("jpeg", 50), ("blur", 23), ("noise", 23), ("resize", 0.25)):
        t = SampleTransform(mode="none", perturb=make_perturbation(kind, level))
        out_img, out_mask = t.augment_arrays(img, mask, (1, 0, 0))
        assert out_img.shape == img.shape and np.array_equal(out_mask, mask)


def test_registry_and_parsing():
    assert set(PERTURBATIONS) == {"jpeg", "blur", "noise", "resize"}
    assert PERTURBATIONS["jpeg"].protocol_levels == PROTOCOL
    assert PERTURBATIONS["blur"].protocol_levels == KERNELS
    assert PERTURBATIONS["noise"].protocol_levels == VARIANCES
    for kind in PERTURBATIONS:
        assert make_perturbation(kind, 0) is None and make_perturbation(kind, "none") is None
        p = make_perturbation(kind, PERTURBATIONS[kind].default_levels[0])
        assert p.kind == kind and pickle.loads(pickle.dumps(p)) == p  # travels to DataLoader workers
    assert parse_perturbation_names("jpeg, noise") == ["jpeg", "noise"]
    assert parse_perturbation_names(None) == ["jpeg", "blur", "noise", "resize"]
    assert parse_perturbation_names("none") == []
    assert parse_levels(["jpeg=50,70,90", "blur=0,3,7", "noise=3.5", "resize=0.5"]) == {
        "jpeg": [50, 70, 90], "blur": [0, 3, 7], "noise": [3.5], "resize": [0.5]
    }
    with pytest.raises(ValueError, match="unknown perturbation"):
        parse_perturbation_names("jpeg,rotate")
    with pytest.raises(ValueError, match="KIND="):
        parse_levels(["jpeg"])
    with pytest.raises(ValueError, match="twice"):
        parse_levels(["jpeg=50", "jpeg=60"])
    with pytest.raises(ValueError, match="not a number"):
        parse_levels(["noise=abc"])
