"""forgeloc's detectors: learned models and training-free forensic cues under one listing.

Learned models live in :mod:`forgeloc.models` (``forgeloc.list_models()``); they need weights.
Training-free cues live here: each is a function ``detect(image: ImageInput) -> CueResult``
(see :mod:`forgeloc.detectors.base`) registered with a one-line description and the plain-language
guidance the report and the web page show next to its panel.

::

    from forgeloc.detectors import ImageInput, list_cues, run_cue
    image = ImageInput.from_path("photo.jpg")
    result = run_cue("copymove", image)          # CueResult: heatmap, score, applicable, reason
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from forgeloc.detectors.base import CueResult, ImageInput

__all__ = ["CUES", "CueInfo", "CueResult", "ImageInput", "get_cue", "list_cues", "run_cue"]


@dataclass(frozen=True)
class CueInfo:
    """A registered training-free cue.

    ``target``: ``"module:function"`` (imported on first use). ``kind``: ``"detector"`` (scored,
    may be fused), ``"visual_aid"`` or ``"facts"``. ``finds`` / ``needs``: one line each for
    ``forgeloc detectors``. ``look_for`` / ``ignore``: the two lines a non-specialist reads next to
    its panel. ``slow``: takes more than a few seconds on a 12-megapixel photo, so the report and
    the page run it only on request.
    """

    name: str
    target: str
    kind: str
    finds: str
    needs: str
    look_for: str
    ignore: str
    slow: bool = False

    def function(self) -> Callable[..., CueResult]:
        module, _, attr = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as err:
            raise RuntimeError(f"cue {self.name!r} is not available in this install: {err}") from None


CUES: dict[str, CueInfo] = {
    info.name: info
    for info in (
        CueInfo(
            "copymove", "forgeloc.detectors.copymove:detect_copymove", "detector",
            finds="regions copied within the same photo (copy-move), both the source and the copy",
            needs="any image",
            look_for="Two outlined regions with the same content: one was copied onto the other, "
                     "possibly rotated or scaled.",
            ignore="Genuinely repeated things (windows, tiles, crowds, patterns) can match; check whether "
                   "the match is pixel-for-pixel identical, which real repetition rarely is.",
        ),
        CueInfo(
            "jpeg_adq", "forgeloc.detectors.jpeg_cues:detect_adq", "detector",
            finds="areas that lack the double-JPEG-compression traces of the rest of the photo",
            needs="a JPEG file (reads its DCT coefficients)",
            look_for="A bright area with sharp edges inside a dark photo: that area was not compressed "
                     "twice like the rest, as happens when something is pasted in and the photo saved again.",
            ignore="Scattered speckle in flat or dark areas, and a uniformly bright map (the photo was "
                   "compressed only once: no evidence either way).",
        ),
        CueInfo(
            "jpeg_grid", "forgeloc.detectors.jpeg_cues:detect_nadjpg", "detector",
            finds="areas whose 8×8 JPEG block grid is missing or shifted compared with the rest",
            needs="any image that was JPEG-compressed at some point",
            look_for="An area that stands out with a clear outline: its JPEG block grid does not line up "
                     "with the photo's, as when a piece of another picture is pasted in.",
            ignore="Very smooth, very dark or saturated areas carry no grid and may light up; so do "
                   "photos that were resized after compression (no grid anywhere).",
        ),
        CueInfo(
            "jpeg_ghost", "forgeloc.detectors.jpeg_cues:detect_ghost", "detector",
            finds="areas that were compressed at a different JPEG quality than the rest",
            needs="a JPEG file",
            look_for="An area whose colour differs clearly from its surroundings: it responds to "
                     "recompression like an image saved at another quality.",
            ignore="Differences that follow textures or edges everywhere in the photo.",
            slow=True,
        ),
        CueInfo(
            "noise", "forgeloc.detectors.noise:detect_noise", "detector",
            finds="areas whose noise level differs from the rest of the photo",
            needs="any image",
            look_for="A compact area with a clearly different noise level from comparable surroundings: "
                     "it may come from another camera or have been retouched.",
            ignore="Flat sky, water, dark or blown-out areas (no usable noise: shown as no evidence), and "
                   "differences between in-focus and out-of-focus parts.",
        ),
        CueInfo(
            "ela", "forgeloc.detectors.ela:error_level", "visual_aid",
            finds="error level analysis: how much each area changes when the photo is re-saved as JPEG",
            needs="any image (most meaningful for JPEG)",
            look_for="A visual aid only, not a verdict: an area much brighter than similar content "
                     "elsewhere may have a different history.",
            ignore="Edges, fine texture and saturated colours are always bright; ELA misleads often and is "
                   "never used for the score.",
        ),
        CueInfo(
            "metadata", "forgeloc.detectors.metadata:read_metadata", "facts",
            finds="facts from the file: camera, software, dates, thumbnail, JPEG quantization tables",
            needs="a file (not a bare array)",
            look_for="Editing software named in the file, dates that disagree, an embedded thumbnail "
                     "that shows a different picture.",
            ignore="Missing metadata alone proves nothing: social networks and messengers remove it.",
        ),
    )
}


def list_cues(kind: str | None = None) -> list[str]:
    """Names of the registered training-free cues (optionally of one ``kind``)."""
    return sorted(n for n, info in CUES.items() if kind is None or info.kind == kind)


def get_cue(name: str) -> CueInfo:
    try:
        return CUES[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; training-free detectors: {', '.join(sorted(CUES))}") from None


def run_cue(name: str, image: ImageInput, **options) -> CueResult:
    """Run one cue on one image; the time taken goes into ``result.extra["seconds"]``."""
    info = get_cue(name)
    start = time.perf_counter()
    result = info.function()(image, **options)
    result.extra.setdefault("seconds", round(time.perf_counter() - start, 3))
    result.kind = info.kind
    return result
