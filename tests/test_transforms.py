"""forgeloc.data.transforms: IMDLBenCo preprocessing parity, edge mask, pad/resize, augmentation."""

from __future__ import annotations

import pickle

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path

from forgeloc.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentations,
    GaussianBlurCV,
    RandomCopyMove,
    RandomInpainting,
    SampleTransform,
    augmentation_preset,
    build_augmentations,
    denormalize,
    edge_mask,
    normalize,
    seed_augmentations,
)

RNG = np.random.default_rng(2)


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# Parity with IMDLBenCo's preprocessing (albumentations Resize + Normalize)
# ------------------------------------------------------------------------------------------------
def test_resize_normalize_matches_imdlbenco_reference():
    from safetensors.numpy import load_file

    ref = load_file(str(shared_path("parity", "mesorch", "mesorch_input.safetensors")))
    raw = ref["image_raw_uint8_hwc"]
    mask_path = shared_path("data", "coverage", "masks", "1t.png")
    from forgeloc.data.io import read_image, read_mask

    # the stored raw image is what our reader decodes from the same file
    assert np.array_equal(read_image(shared_path("data", "coverage", "images", "1t.png")), raw)
    out = SampleTransform(mode="resize", size=512)(raw, read_mask(mask_path), 0)
    diff = (out["image"] - torch.from_numpy(ref["image"][0])).abs().max().item()
    assert out["image"].shape == (3, 512, 512) and diff <= 1e-5
    assert torch.equal(out["mask"], torch.from_numpy(ref["mask"][0]))
    assert out["origin_shape"].tolist() == [421, 424] and out["label"].item() == 1.0


def test_normalize_denormalize():
    img = _image()
    t = normalize(img)
    assert t.dtype == torch.float32 and t.shape == (3, 48, 64)
    expected = (img[..., 0].astype(np.float64) / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert np.abs(t[0].numpy() - expected).max() < 1e-5
    assert np.array_equal(denormalize(t), img)
    assert np.array_equal(denormalize(t[None]), img)
    with pytest.raises(ValueError):
        normalize(img[..., 0])


# ------------------------------------------------------------------------------------------------
# Edge mask (protocol B3)
# ------------------------------------------------------------------------------------------------
def _edge_reference(mask: np.ndarray, k: int) -> np.ndarray:
    """The protocol's definition written with torch conv2d (zero padding), independent of OpenCV."""
    kernel = torch.zeros(1, 1, k, k)
    kernel[0, 0, k // 2, :] = 1
    kernel[0, 0, :, k // 2] = 1
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    d1 = F.conv2d(x, kernel, padding=k // 2) > 0
    d0 = F.conv2d(1 - x, kernel, padding=k // 2) > 0
    return (d1 & d0)[0, 0].numpy().astype(np.uint8)


def test_edge_mask_square_band_width():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    e = edge_mask(mask, 7)
    assert e.dtype == np.uint8
    row = e[20]  # a row through the middle: bands of 3 px outside + 3 px inside on each side
    assert np.flatnonzero(row).tolist() == [7, 8, 9, 10, 11, 12, 27, 28, 29, 30, 31, 32]
    col = e[:, 20]
    assert np.flatnonzero(col).tolist() == [7, 8, 9, 10, 11, 12, 27, 28, 29, 30, 31, 32]
    # plus-shaped element: the diagonal neighbour of the corner at distance (3, 3) is not reached
    assert e[7, 7] == 0 and e[7, 10] == 1 and e[10, 7] == 1
    assert not e[15:25, 15:25].any() and not e[:5].any()


def test_edge_mask_matches_the_protocol_definition_on_random_masks():
    for k in (1, 3, 5, 7, 9):
        for seed in range(3):
            mask = (np.random.default_rng(seed).random((31, 37)) > 0.7).astype(np.uint8)
            mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))  # blobs, touching the border too
            assert np.array_equal(edge_mask(mask, k), _edge_reference(mask, k)), (k, seed)


def test_edge_mask_degenerate_cases():
    assert not edge_mask(np.zeros((20, 20), np.uint8), 7).any()
    assert not edge_mask(np.ones((20, 20), np.uint8), 7).any()  # the image border is not an edge
    for bad in (0, 2, 6, -3):
        with pytest.raises(ValueError, match="odd"):
            edge_mask(np.zeros((5, 5), np.uint8), bad)
    with pytest.raises(ValueError, match="odd"):
        SampleTransform(edge_width=4)


# ------------------------------------------------------------------------------------------------
# Output modes
# ------------------------------------------------------------------------------------------------
def _square_mask(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: h // 2, w // 4: w // 2] = 1
    return m


def test_pad_mode_small_image_pads_bottom_right():
    img, mask = _image(20, 30), _square_mask(20, 30)
    out = SampleTransform(mode="pad", size=32, edge_width=3)(img, mask, 0)
    assert out["image"].shape == (3, 32, 32) and out["shape_mask"].shape == (1, 32, 32)
    assert torch.equal(out["image"][:, :20, :30], normalize(img))
    pad_value = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    assert torch.allclose(out["image"][:, 25, 31], pad_value, atol=1e-6)
    assert out["shape_mask"][0, :20, :30].all() and out["shape_mask"].sum() == 600
    assert torch.equal(out["mask"][0, :20, :30], torch.from_numpy(mask).float()) and out["mask"][0, 20:].sum() == 0
    assert torch.equal(out["edge_mask"][0, :20, :30], torch.from_numpy(edge_mask(mask, 3)).float())
    assert out["origin_shape"].tolist() == [20, 30]


def test_pad_mode_large_image_is_cropped_top_left_like_imdlbenco():
    img, mask = _image(50, 40), _square_mask(50, 40)
    out = SampleTransform(mode="pad", size=32)(img, mask, 0)
    assert torch.equal(out["image"], normalize(img[:32, :32]))  # cropped, not downscaled (IMDLBenCo quirk)
    assert torch.equal(out["mask"][0], torch.from_numpy(mask[:32, :32]).float())
    assert out["shape_mask"].all() and out["origin_shape"].tolist() == [50, 40]
    # mixed: taller than size, narrower than size
    out = SampleTransform(mode="pad", size=32)(_image(50, 20), None, 0)
    assert out["shape_mask"][0, :, :20].all() and out["shape_mask"][0, :, 20:].sum() == 0
    assert "mask" not in out and "label" not in out


def test_resize_mode_masks_nearest_and_edge_at_native_resolution():
    img, mask = _image(60, 90), _square_mask(60, 90)
    out = SampleTransform(mode="resize", size=32, edge_width=5)(img, mask, 0)
    assert set(torch.unique(out["mask"]).tolist()) <= {0.0, 1.0}
    nearest = cv2.resize(mask, (32, 32), interpolation=cv2.INTER_NEAREST)
    assert torch.equal(out["mask"][0], torch.from_numpy(nearest).float())
    native_edge = edge_mask(mask, 5)
    resized = cv2.resize(native_edge, (32, 32), interpolation=cv2.INTER_NEAREST)
    assert torch.equal(out["edge_mask"][0], torch.from_numpy(resized).float())
    assert "shape_mask" not in out and out["origin_shape"].tolist() == [60, 90]


def test_none_mode_keeps_native_size_and_labels_follow_the_mask():
    img = _image(21, 34)
    out = SampleTransform(mode="none")(img, np.zeros((21, 34), np.uint8), 0)
    assert out["image"].shape == (3, 21, 34) and out["label"].item() == 0.0
    out = SampleTransform(mode="none")(img, _square_mask(21, 34), 0)
    assert out["label"].item() == 1.0 and out["label"].dtype == torch.float32
    with pytest.raises(ValueError, match="mode"):
        SampleTransform(mode="crop")
    with pytest.raises(ValueError, match="mask shape"):
        SampleTransform(mode="none")(img, np.zeros((5, 5), np.uint8), 0)


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------
def test_presets():
    p = augmentation_preset("imdlbenco")
    assert (p.scale, p.copy_move_p, p.inpaint_p, p.hflip_p, p.vflip_p, p.rotate90_p) == (0.2, 0.1, 0.1, 0.5, 0.5, 0.5)
    assert (p.brightness, p.contrast, p.color_p, p.jpeg_quality, p.jpeg_p, p.blur_kernel, p.blur_p) == (
        0.1, 0.1, 1.0, (70, 100), 0.2, (3, 7), 0.2)
    names = [type(t).__name__ for t in build_augmentations("imdlbenco").transforms]
    assert names == ["RandomScale", "RandomCopyMove", "RandomInpainting", "HorizontalFlip", "VerticalFlip",
                     "RandomBrightnessContrast", "ImageCompression", "RandomRotate90", "GaussianBlurCV"]
    assert augmentation_preset("none") is None and augmentation_preset("LIGHT") is not None
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        augmentation_preset("heavy")
    with pytest.raises(ValueError, match="unknown augmentation knob"):
        p.replace(flip=1)
    assert not Augmentations().enabled and Augmentations(hflip_p=0.5).enabled


def test_augmentation_is_a_pure_function_of_the_seed():
    img, mask = _image(64, 80), _square_mask(64, 80)
    t = SampleTransform(mode="resize", size=48, augment="imdlbenco", edge_width=3)
    a = t(img, mask, [0, 1, 5])
    b = SampleTransform(mode="resize", size=48, augment="imdlbenco", edge_width=3)(img, mask, [0, 1, 5])
    for key in ("image", "mask", "edge_mask", "origin_shape", "label"):
        assert torch.equal(a[key], b[key]), key
    # the transform survives pickling (DataLoader workers under spawn) with the same behaviour
    c = pickle.loads(pickle.dumps(t))(img, mask, [0, 1, 5])
    assert torch.equal(a["image"], c["image"])
    others = [t(img, mask, [0, epoch, 5]) for epoch in (2, 3, 4)]
    assert any(not torch.equal(a["image"], o["image"]) for o in others)


def test_flips_are_drawn_independently():
    # albumentations 2's Compose.set_random_seed gives every transform the same seed, which would make
    # the horizontal and vertical flips always coincide; forgeloc seeds each transform separately.
    compose = build_augmentations(Augmentations(hflip_p=0.5, vflip_p=0.5))
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    outcomes = set()
    for seed in range(40):
        seed_augmentations(compose, seed)
        out = compose(image=img, mask=np.zeros((2, 3), np.uint8))["image"]
        outcomes.add((np.array_equal(out, img[:, ::-1]), np.array_equal(out, img[::-1]),
                      np.array_equal(out, img[::-1, ::-1]), np.array_equal(out, img)))
    assert len(outcomes) == 4  # none, h only, v only, both all occur


def test_geometric_augmentation_keeps_image_and_mask_aligned():
    img = np.full((72, 96, 3), 90, np.uint8)
    mask = np.zeros((72, 96), np.uint8)
    cv2.circle(mask, (30, 40), 14, 1, -1)
    img[mask == 1] = (250, 10, 10)
    t = SampleTransform(mode="none", augment=Augmentations(scale=0.2, hflip_p=0.5, vflip_p=0.5, rotate90_p=0.5,
                                                         rotation=20, rotation_p=1.0))
    shapes = set()
    for seed in range(8):
        out = t(img, mask, seed)
        red = denormalize(out["image"])[..., 0] > 170
        m = out["mask"][0].numpy() > 0
        iou = (red & m).sum() / (red | m).sum()
        assert iou > 0.9, (seed, iou)
        shapes.add(tuple(out["origin_shape"].tolist()))
    assert len(shapes) > 1  # the random scale really changed the native size


def test_copy_move_and_inpainting_add_to_the_mask():
    img = _image(40, 50)
    empty = np.zeros((40, 50), np.uint8)
    for cls in (RandomCopyMove, RandomInpainting):
        compose = A.Compose([cls(p=1.0)])
        seed_augmentations(compose, 3)
        out = compose(image=img, mask=empty)
        m = out["mask"]
        assert m.any() and set(np.unique(m)) == {0, 1}
        ys, xs = np.nonzero(m)
        assert m[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # one filled rectangle
        changed = (out["image"] != img).any(axis=2)
        assert not changed[m == 0].any()  # nothing outside the marked rectangle changed
    # through SampleTransform an authentic image becomes a tampered sample
    t = SampleTransform(mode="none", augment=Augmentations(copy_move_p=1.0))
    assert t(img, empty, 0)["label"].item() == 1.0


def test_opencv_gaussian_blur_sigma_from_kernel():
    img = _image(30, 30)
    blur = GaussianBlurCV((5, 5), p=1.0)
    blur.set_random_seed(0)
    assert np.array_equal(blur(image=img)["image"], cv2.GaussianBlur(img, (5, 5), 0))
    assert GaussianBlurCV((3, 7)).kernels == [3, 5, 7]


def test_perturb_hook_is_seeded_and_may_resize():
    img, mask = _image(40, 40), _square_mask(40, 40)

    def noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)

    t = SampleTransform(mode="none", perturb=noise)
    a, b, c = t(img, mask, 1), t(img, mask, 1), t(img, mask, 2)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert torch.equal(a["mask"][0], torch.from_numpy(mask).float())  # image only

    def half(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return cv2.resize(image, (20, 20), interpolation=cv2.INTER_AREA)

    out = SampleTransform(mode="none", perturb=half, edge_width=3)(img, mask, 0)
    assert out["image"].shape == (3, 20, 20) and out["mask"].shape == (1, 20, 20)
    assert out["mask"].sum() == 25 and out["origin_shape"].tolist() == [20, 20]
    with pytest.raises(ValueError, match="perturb"):
        SampleTransform(mode="none", perturb=lambda im, rng: im.astype(np.float32))(img, mask, 0)
