"""Copy-move detection: a region of the photo copied elsewhere in the same photo, possibly rotated,
scaled or brightened. The heatmap marks both the source and the copy.

Sparse stage (Amerini, Ballan, Caldelli, Del Bimbo, Serra, "A SIFT-based forensic method for
copy-move attack detection and transformation recovery", IEEE TIFS 6(3), 2011):

1. SIFT keypoints and descriptors of the grey image (on a copy no larger than ``max_side``), with a
   low contrast threshold so that weakly textured objects still get keypoints;
2. the *generalized 2NN test* (g2NN) of Amerini et al.: for each keypoint, the sorted distances
   ``d₁ ≤ d₂ ≤ …`` to the other descriptors are scanned and ``d_i`` is a match while
   ``d_i / d_{i+1} < T`` (``T = 0.5`` as in the paper), so one keypoint may match several copies.
   Deviation from the paper: neighbours closer than ``min_distance`` pixels in the image are removed
   *before* the test, because SIFT often places two keypoints at one spot (two orientations,
   adjacent scales) and such a twin would otherwise end the scan before the real copy is reached;
3. grouping and transform recovery: instead of the paper's agglomerative clustering of keypoints,
   each match is a point ``(x, y, x', y')`` in 4-D (both orientations of every pair are kept, since
   which side is the source is unknown), and matches closer than ``group_radius`` are linked; each
   connected group gets affine transforms by RANSAC (``cv2.estimateAffine2D``), repeated on what is
   left so that one group may hold more than one transform. A transform is a candidate when it has
   at least ``min_inliers`` inliers, a positive determinant (SIFT does not match mirror images, so a
   reflection is an artefact), scales within ``1 / max_scale … max_scale``, moves its inliers by at
   least ``min_shift`` (a near-identity transform is a texture matching itself), and its inliers
   agree with a *similarity* (rotation, uniform scale, shift) to within ``max_fit_error`` pixels (the
   median residual of a least-median-of-squares fit). This last test is what separates a copy from
   the genuinely similar objects of real scenes (two bottles, two chairs): a copy's keypoints are the
   same pixels resampled and agree to ≈ 0.1 px, two photographed objects differ by perspective and
   shape and leave several tenths of a pixel. The price: copies warped by a non-similarity (shear,
   free-form) are missed.

Dense verification (Pan & Lyu, "Region duplication detection using image feature matching", IEEE
TIFS 5(4), 2010, who turn a matched transform into regions with a correlation map): for a candidate
``T`` (source → copy), the image warped by ``T`` shows, at every pixel of the copy, the source pixel
it came from. The local zero-mean normalised cross-correlation ``ρ = cov(I, W) / sqrt(var I · var W)``
over a Gaussian window between the image ``I`` and the warped ``W`` is close to 1 inside a copy (the
same pixels, up to interpolation and a global brightness/contrast change, which ``ρ`` ignores). The
copy is where ``ρ ≥ min_correlation`` and both windows carry texture (local standard deviation ≥
``texture_floor``: flat areas correlate by chance and are never flagged), restricted to the
connected parts that hold an inlier keypoint, then cleaned with morphology (opening, closing, hole
filling). Its pre-image under ``T`` is the source. Two more rejections catch repetitive patterns
(tiles, fabric, printed wallpaper), which match themselves one period away wherever they extend: a
copy that fills more than ``max_fill`` of the area where it could be verified, or that overlaps its
own source by more than ``max_overlap`` (of the smaller of the two), is a pattern, not a copied object.

Score: every verified copy has a *strength* from its area ``a`` (fraction of the image) and its
inlier count ``n``, and reads

    score = 0.5 + 0.5 · min(1, sqrt(a / AREA_REF)) · (1 − exp(−n / INLIER_REF))

(``AREA_REF = 0.5 %`` of the image, ``INLIER_REF = 8``): above 0.5 exactly when a copy was verified,
e.g. ≈ 0.96 for a copy covering 0.5 % of the photo backed by 20 inliers. The image score is the
largest over copies, 0 when none is verified. The heatmap holds the source and the copy of each
verified copy at its score (the largest where they overlap), 0 elsewhere.

Known limits: copies warped by a non-similarity, strongly blurred or recompressed correlate less or fit
worse and are missed; copies of flat areas (sky, walls) carry no keypoints and no texture and are
invisible to this detector; truly identical repeated objects placed once each (a logo printed twice)
are indistinguishable from a copy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from forgeloc.detectors.base import CueResult, ImageInput

__all__ = ["CopyMoveParams", "detect_copymove"]

NAME = "copymove"
AREA_REF = 0.005  # fraction of the image at which the area term of the score saturates
INLIER_REF = 8.0  # inlier count at which the inlier term reaches 1 − 1/e
MIN_SIDE = 32  # below this (working resolution) there is nothing to match


@dataclass(frozen=True)
class CopyMoveParams:
    """Every tunable setting, in pixels of the *working* image (at most ``max_side`` on its long side).

    ``contrast_threshold``: SIFT's (OpenCV default 0.04; lower = more keypoints on weak texture).
    ``max_keypoints``: the strongest keypoints kept (bounds the matching cost, quadratic in it).
    ``neighbours``: how many nearest descriptors the g2NN scan looks at. ``g2nn_ratio``: ``T``.
    ``min_distance``: matches between keypoints closer than this are ignored.
    ``group_radius``: linking distance of matches in ``(x, y, x', y')``, as a fraction of the diagonal.
    ``ransac_threshold``: RANSAC reprojection error. ``min_inliers``: inliers a transform needs.
    ``max_fit_error``: the largest median residual of the similarity fit of those inliers.
    ``min_shift``: the least median displacement of a transform's inliers (fraction of the diagonal,
    at least ``min_distance``). ``max_scale``: the largest scale change accepted.
    ``max_transforms``: transforms verified at most (the best supported first).
    ``smooth_sigma``: Gaussian blur before correlation (absorbs resampling of rotated copies).
    ``window_sigma``: the Gaussian window of the local correlation. ``min_correlation``: ``ρ`` threshold.
    ``texture_floor``: least local standard deviation (grey levels) for a pixel to be verifiable.
    ``min_region``: least verified copy area, as a fraction of the image.
    ``max_fill``, ``max_overlap``: the repetitive-pattern rejections (see the module docstring).
    """

    contrast_threshold: float = 0.01
    max_keypoints: int = 12000
    neighbours: int = 10
    g2nn_ratio: float = 0.5
    min_distance: float = 12.0
    group_radius: float = 0.08
    ransac_threshold: float = 3.0
    min_inliers: int = 8
    max_fit_error: float = 0.15
    min_shift: float = 0.02
    max_scale: float = 3.0
    max_transforms: int = 8
    smooth_sigma: float = 0.8
    window_sigma: float = 2.5
    min_correlation: float = 0.9
    texture_floor: float = 2.0
    min_region: float = 0.0005
    max_fill: float = 0.8
    max_overlap: float = 0.5


@dataclass
class _Transform:
    """One recovered copy: ``matrix`` maps source → copy (2×3, working pixels)."""

    matrix: np.ndarray
    source_points: np.ndarray
    copy_points: np.ndarray
    pair_ids: np.ndarray
    fit_error: float = math.inf  # median residual of the best similarity (px), see _similarity_error


def detect_copymove(image: ImageInput, *, max_side: int = 1600, **options) -> CueResult:
    """Find regions copied within ``image`` (see the module docstring for the method and score).

    ``options`` override :class:`CopyMoveParams` fields by name.
    """
    start = time.perf_counter()
    if max_side < MIN_SIDE:
        raise ValueError(f"max_side must be at least {MIN_SIDE}, got {max_side}")
    params = _params(options)
    rgb = image.rgb
    height, width = rgb.shape[:2]
    gray, scale = _working_gray(rgb, max_side)
    heat = np.zeros(gray.shape, np.float32)
    extra: dict = {"working_scale": round(scale, 4), "keypoints": 0, "matches": 0, "clusters": 0, "candidates": 0}
    extra["transforms"] = []
    if min(gray.shape) >= MIN_SIDE:
        heat, extra = _analyse(gray, scale, params, extra)
    score = max((t["score"] for t in extra["transforms"]), default=0.0)
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    extra["time_s"] = round(time.perf_counter() - start, 3)
    return CueResult(name=NAME, heatmap=np.clip(heat, 0, 1).astype(np.float32), score=float(score), extra=extra)


def _params(options: dict) -> CopyMoveParams:
    known = {f.name for f in fields(CopyMoveParams)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown copymove option(s) {unknown}; known: {sorted(known)}")
    return replace(CopyMoveParams(), **options)


def _working_gray(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Grey image no larger than ``max_side`` and the factor working = scale · original."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, max_side / max(gray.shape))
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray, scale


def _analyse(gray: np.ndarray, scale: float, params: CopyMoveParams, extra: dict) -> tuple[np.ndarray, dict]:
    points, descriptors = _sift(gray, params)
    pairs = _g2nn_pairs(points, descriptors, params)
    groups = _group_matches(points, pairs, gray.shape, params)
    transforms = _recover_transforms(points, pairs, groups, gray.shape, params)
    extra.update(keypoints=len(points), matches=len(pairs), clusters=len(groups), candidates=len(transforms))
    heat = np.zeros(gray.shape, np.float32)
    smooth = _smoothed(gray, params)
    for transform in transforms[: params.max_transforms]:
        verified = _verify(smooth, transform, params)
        if verified is None:
            continue
        source_mask = _pre_image(verified.mask, transform.matrix)
        overlap = _self_overlap(verified.mask, source_mask)
        if verified.fill > params.max_fill or overlap > params.max_overlap:
            continue  # a repetitive pattern matching itself, not an object copied
        area = float(verified.mask.mean())
        score = _transform_score(area, len(transform.pair_ids))
        np.maximum(heat, score * (verified.mask | source_mask).astype(np.float32), out=heat)
        extra["transforms"].append(_describe(transform, scale, area, verified, overlap, score))
    return heat, extra


def _sift(gray: np.ndarray, params: CopyMoveParams) -> tuple[np.ndarray, np.ndarray]:
    sift = cv2.SIFT_create(nfeatures=params.max_keypoints, contrastThreshold=params.contrast_threshold)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    points = np.array([k.pt for k in keypoints], np.float32)
    return points, descriptors.astype(np.float32)


def _g2nn_pairs(points: np.ndarray, descriptors: np.ndarray, params: CopyMoveParams) -> np.ndarray:
    """Matched keypoint pairs ``(i, j)``, ``i < j``, by the generalized 2NN test of Amerini et al."""
    count = len(points)
    if count < 3:
        return np.zeros((0, 2), np.int64)
    k = min(params.neighbours + 1, count)
    found: list[np.ndarray] = []
    desc = torch.from_numpy(descriptors)
    xy = torch.from_numpy(points)
    for begin in range(0, count, 2048):
        rows = slice(begin, min(begin + 2048, count))
        dist = torch.cdist(desc[rows], desc).clamp_min_(0)
        # Spatial neighbours (and the keypoint itself) never count as copies: push them to the end.
        near = torch.cdist(xy[rows], xy) < params.min_distance
        dist[near] = float("inf")
        values, index = torch.topk(dist, k, dim=1, largest=False)
        found.append(_g2nn_scan(values.numpy(), index.numpy(), begin, params.g2nn_ratio))
    pairs = np.concatenate(found)
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def _g2nn_scan(values: np.ndarray, index: np.ndarray, first_row: int, threshold: float) -> np.ndarray:
    """Keep neighbour ``i`` while ``d_i / d_{i+1} < T`` held for every ``i`` up to it."""
    with np.errstate(invalid="ignore"):  # inf / inf where both neighbours were masked out: set to 1 below
        ratio = values[:, :-1] / np.maximum(values[:, 1:], 1e-6)
    # No further candidate (the rest were spatial neighbours): the last one is not distinctive.
    ratio[~np.isfinite(values[:, 1:])] = 1.0
    passes = np.cumprod(ratio < threshold, axis=1).astype(bool) & np.isfinite(values[:, :-1])
    rows, cols = np.nonzero(passes)
    return np.stack([rows + first_row, index[rows, cols]], axis=1).astype(np.int64)


def _group_matches(points: np.ndarray, pairs: np.ndarray, shape: tuple[int, int], params: CopyMoveParams):
    """Connected groups of oriented matches in ``(x, y, x', y')``, largest first (indices into the
    doubled list: pair ``m`` read forwards is ``m``, backwards ``m + len(pairs)``)."""
    if len(pairs) < params.min_inliers:
        return []
    doubled = np.concatenate([pairs, pairs[:, ::-1]])
    joint = np.concatenate([points[doubled[:, 0]], points[doubled[:, 1]]], axis=1)
    links = cKDTree(joint).query_pairs(params.group_radius * math.hypot(*shape), output_type="ndarray")
    if len(links) == 0:
        return []  # every group is a single match
    n = len(joint)
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    order = np.argsort(-sizes, kind="stable")
    return [np.flatnonzero(labels == g) for g in order if sizes[g] >= params.min_inliers]


def _recover_transforms(points, pairs, groups, shape, params: CopyMoveParams) -> list[_Transform]:
    """Affine transforms by RANSAC per group, best supported first; each match explains one transform."""
    n_pairs = len(pairs)
    doubled = np.concatenate([pairs, pairs[:, ::-1]]) if n_pairs else pairs
    used = np.zeros(n_pairs, bool)
    min_shift = max(params.min_distance, params.min_shift * math.hypot(*shape))
    found: list[_Transform] = []
    for group in groups:
        members = group
        for _ in range(3):  # a group may hold a few transforms (e.g. a copy pasted twice nearby)
            members = members[~used[members % n_pairs]]
            if len(members) < params.min_inliers:
                break
            transform = _ransac_affine(points, doubled, members, n_pairs, params)
            if transform is None:
                break
            used[transform.pair_ids] = True
            if _plausible(transform, min_shift, params):
                found.append(transform)
    found.sort(key=lambda t: -len(t.pair_ids))
    return found


def _ransac_affine(points, doubled, members, n_pairs, params: CopyMoveParams) -> _Transform | None:
    src = points[doubled[members, 0]]
    dst = points[doubled[members, 1]]
    matrix, inliers = cv2.estimateAffine2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=params.ransac_threshold,
        maxIters=2000, confidence=0.995, refineIters=10,
    )
    if matrix is None or inliers is None or int(inliers.sum()) < params.min_inliers:
        return None
    keep = inliers.ravel().astype(bool)
    transform = _Transform(matrix, src[keep], dst[keep], np.unique(members[keep] % n_pairs))
    transform.fit_error = _similarity_error(transform.source_points, transform.copy_points)
    return transform


def _similarity_error(source: np.ndarray, copy: np.ndarray) -> float:
    """Median residual (px) of the least-median-of-squares similarity (rotation, uniform scale, shift)
    from ``source`` to ``copy``: ≈ 0.1 px for a copy, whose keypoints are the same pixels resampled,
    and several tenths for two photographed objects, which differ by perspective and shape."""
    if len(source) < 3:
        return math.inf
    matrix, _ = cv2.estimateAffinePartial2D(source, copy, method=cv2.LMEDS)
    if matrix is None:
        return math.inf
    residual = np.linalg.norm(source @ matrix[:, :2].T + matrix[:, 2] - copy, axis=1)
    return float(np.median(residual))


def _plausible(transform: _Transform, min_shift: float, params: CopyMoveParams) -> bool:
    linear = transform.matrix[:, :2]
    if np.linalg.det(linear) <= 0:
        return False
    singular = np.linalg.svd(linear, compute_uv=False)
    if singular.max() > params.max_scale or singular.min() < 1.0 / params.max_scale:
        return False
    if len(transform.pair_ids) < params.min_inliers or transform.fit_error > params.max_fit_error:
        return False
    shift = np.linalg.norm(transform.copy_points - transform.source_points, axis=1)
    return float(np.median(shift)) >= min_shift


def _smoothed(gray: np.ndarray, params: CopyMoveParams) -> np.ndarray:
    image = gray.astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), params.smooth_sigma) if params.smooth_sigma > 0 else image


def _local_correlation(image: np.ndarray, warped: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Local zero-mean normalised cross-correlation and the smaller of the two local std devs."""

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(a, (0, 0), sigma)

    mean_i, mean_w = blur(image), blur(warped)
    var_i = np.maximum(blur(image * image) - mean_i * mean_i, 0)
    var_w = np.maximum(blur(warped * warped) - mean_w * mean_w, 0)
    cov = blur(image * warped) - mean_i * mean_w
    rho = cov / np.sqrt(var_i * var_w + 1e-6)
    return rho, np.sqrt(np.minimum(var_i, var_w))


@dataclass
class _Verified:
    """A transform's dense verification: the copy's mask, its mean correlation, and the share of the
    verifiable area (inside the warped image, textured) that it fills."""

    mask: np.ndarray
    mean_correlation: float
    fill: float


def _verify(smooth: np.ndarray, transform: _Transform, params: CopyMoveParams) -> _Verified | None:
    """The copy where the image agrees with its warp by ``transform`` (``None`` when too small)."""
    h, w = smooth.shape
    warped = cv2.warpAffine(smooth, transform.matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    inside = cv2.warpAffine(np.ones((h, w), np.uint8), transform.matrix, (w, h), flags=cv2.INTER_NEAREST) > 0
    rho, texture = _local_correlation(smooth, warped, params.window_sigma)
    verifiable = inside & (texture >= params.texture_floor)
    mask = _clean(verifiable & (rho >= params.min_correlation), transform.copy_points, params)
    if mask.mean() < params.min_region:
        return None
    fill = float((mask & verifiable).sum()) / max(int(verifiable.sum()), 1)
    return _Verified(mask, float(rho[mask].mean()), fill)


def _clean(agree: np.ndarray, anchors: np.ndarray, params: CopyMoveParams) -> np.ndarray:
    """Opening, then the connected parts that hold an inlier keypoint, then closing and hole filling."""
    radius = max(1, round(params.window_sigma))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(agree.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    count, labels = cv2.connectedComponents(opened, connectivity=8)
    if count <= 1:
        return np.zeros(agree.shape, bool)
    h, w = agree.shape
    # A keypoint sits at a blob's centre, so look a few pixels around it for the region it belongs to.
    seeds = np.zeros((h, w), np.uint8)
    for x, y in np.round(anchors).astype(int):
        cv2.circle(seeds, (int(np.clip(x, 0, w - 1)), int(np.clip(y, 0, h - 1))), 3 * radius, 1, -1)
    kept = np.unique(labels[(seeds > 0) & (labels > 0)])
    mask = np.isin(labels, kept)
    close_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * radius + 1, 4 * radius + 1))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, close_kernel) > 0
    return ndimage.binary_fill_holes(mask)


def _pre_image(copy_mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = copy_mask.shape
    inverse = cv2.invertAffineTransform(matrix)
    return cv2.warpAffine(copy_mask.astype(np.uint8), inverse, (w, h), flags=cv2.INTER_NEAREST) > 0


def _self_overlap(copy_mask: np.ndarray, source_mask: np.ndarray) -> float:
    """Shared area of the copy and its source over the smaller of the two: near 1 for a repetitive
    pattern matching itself one period away, near 0 for an object copied elsewhere."""
    smaller = min(int(copy_mask.sum()), int(source_mask.sum()))
    return float((copy_mask & source_mask).sum()) / max(smaller, 1)


def _transform_score(area: float, inliers: int) -> float:
    """0.5 + 0.5 · strength: every verified copy reads above 0.5 (see the module docstring)."""
    strength = min(1.0, math.sqrt(area / AREA_REF)) * (1.0 - math.exp(-inliers / INLIER_REF))
    return 0.5 + 0.5 * strength


def _describe(transform: _Transform, scale: float, area: float, verified: _Verified, overlap: float, score: float):
    """JSON-ready summary, the matrix and the fit error in original-image pixels."""
    matrix = transform.matrix.astype(np.float64).copy()
    matrix[:, 2] /= scale
    return {
        "matrix": np.round(matrix, 4).tolist(),
        "inliers": len(transform.pair_ids),
        "fit_error_px": round(transform.fit_error / scale, 4),
        "copy_area": round(area, 5),
        "mean_correlation": round(verified.mean_correlation, 4),
        "fill": round(verified.fill, 4),
        "self_overlap": round(overlap, 4),
        "score": round(score, 4),
    }
