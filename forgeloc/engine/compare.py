"""Your numbers next to the papers' (``forgeloc compare``).

The published tables are transcribed below (:data:`TABLES`), each with its source, protocol,
input size, metric and the metric definition the authors used. :func:`compare` takes the
``metrics.json`` that ``forgeloc test`` writes, matches its test-set names to the table's columns
(common aliases accepted: ``CASIA1``, ``NIST16_1024``, ``coverage``, ``IMD20_1024`` ...), and
returns one row per set: your value, the paper's, the difference, and — when the difference is
beyond the tolerance — the known causes of such differences for that set and for your run's
settings (definition, threshold, input, authentic images counted).

All values are fractions (0-1); NCL's own tables, published in percent, are stored in percent with
``scale=100`` and compared after dividing by 100.

Sources: the papers' tables as collected in ``shared/spec/published_results.md`` of the project
(SparseViT arXiv 2412.14598 Table 4 and Table 2; Mesorch arXiv 2412.13753 Table 1 and Table 2;
NCL ICCV 2023 arXiv 2309.14900 Tables 1-2; IMDL-BenCo NeurIPS 2024 D&B arXiv 2406.10580 Table 3;
Mesorch's maintainer comment in github.com/scu-zjz/Mesorch/issues/10).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TOLERANCE",
    "PAPERS",
    "REPORTED",
    "ROBUSTNESS",
    "SET_CAUSES",
    "TABLES",
    "CompareError",
    "Comparison",
    "PublishedTable",
    "canonical_set",
    "compare",
    "load_results",
    "write_comparison",
]

#: Differences larger than this (absolute, on the 0-1 scale) are flagged.
DEFAULT_TOLERANCE = 0.02

#: The test-set names of the tables.
SETS = ("CASIAv1", "Columbia", "NIST16", "COVERAGE", "IMD2020", "DEF-12k", "CocoGlide", "AutoSplice")


class CompareError(ValueError):
    """Unknown paper/table/row, or a results file that cannot be read."""


@dataclass(frozen=True)
class PublishedTable:
    """One metric of one published table: ``rows[model][set]`` (``"avg"`` = the table's average)."""

    key: str
    paper: str
    source: str
    protocol: str
    input: str  # how the authors fed the images ("resize 512x512")
    metric: str  # the forgeloc key it compares with
    metric_name: str  # what the number is
    definition: str  # the authors' metric definition and which forgeloc mode reproduces it
    rows: dict[str, dict[str, float]]
    default_row: str
    scale: float = 1.0  # 100 for tables in percent
    notes: tuple[str, ...] = ()
    avg_over: tuple[str, ...] = ()  # the sets an average-only row averages (Mesorch's permute-F1)

    @property
    def sets(self) -> list[str]:
        seen: list[str] = []
        for row in self.rows.values():
            seen += [k for k in row if k != "avg" and k not in seen]
        return seen or list(self.avg_over)

    def averaged_sets(self, row: str) -> list[str]:
        """The sets the row's ``avg`` is the mean of."""
        own = [s for s in self.rows[row] if s != "avg"]
        return own or list(self.avg_over)


_IMDLBENCO_F1 = ("pixel F1 at threshold 0.5 (strict >), computed per image and averaged over the tampered images "
                 "(IMDLBenCo's PixelF1, mode 'origin'); authentic images are left out. = forgeloc's pixel_f1 in the "
                 "forgeloc definition on any list; the imdlbenco definition gives the same only on lists without "
                 "authentic images (it scores them F1 = 0)")
_IMDLBENCO_AUC = ("pixel AUC per image, averaged over the tampered images (IMDLBenCo's PixelAUC: untied ROC, "
                  "trapezoid rule). forgeloc's pixel_auc groups ties like scikit-learn (forgeloc definition) or "
                  "reproduces IMDLBenCo's untied value (imdlbenco definition); they differ only where scores tie")
_PERMUTE_F1 = ("permute-F1: per image, the larger of the F1 of the prediction and of its complement (IMDLBenCo "
               "PixelF1 mode 'double', Mesorch's test_permute.py), averaged over tampered images; forgeloc: "
               "ForgeryMetrics(permute=True) (not an option of forgeloc test: compared only when the results carry "
               "pixel_f1_permute)")

SPARSEVIT = "SparseViT (Su et al., AAAI 2025, arXiv 2412.14598)"
MESORCH = "Mesorch / Mesorch-P (Zhu, Ma et al., AAAI 2025, arXiv 2412.13753)"
NCL = "NCL (Zhou et al., ICCV 2023, arXiv 2309.14900)"
IMDLBENCO = "IMDL-BenCo (Ma et al., NeurIPS 2024 Datasets & Benchmarks, arXiv 2406.10580)"
_CAT = "Protocol-CAT: trained on the balanced CAT-Net mix (CASIAv2, FantasticReality, IMD2020, tampCOCO sp/cm/bcm/bcmc)"
_MVSS = "Protocol-MVSS: trained on CASIAv2 only"


def _row(sets: tuple[str, ...], values: tuple[float | None, ...]) -> dict[str, float]:
    return {s: v for s, v in zip(sets, values, strict=True) if v is not None}


_SV = ("COVERAGE", "Columbia", "CASIAv1", "NIST16", "avg")
_ME = ("COVERAGE", "Columbia", "NIST16", "CASIAv1", "avg")
_BENCO = ("COVERAGE", "Columbia", "NIST16", "CASIAv1", "IMD2020", "avg")
_NCL = ("NIST16", "CASIAv1", "COVERAGE", "Columbia", "DEF-12k")

TABLES: dict[str, PublishedTable] = {t.key: t for t in (
    PublishedTable(
        "sparsevit_t4_f1", SPARSEVIT, "arXiv 2412.14598, Table 4 (pixel F1)", _CAT, "resize 512x512", "pixel_f1",
        "pixel F1", _IMDLBENCO_F1,
        {
            "ManTraNet": _row(_SV, (0.196, 0.462, 0.327, 0.193, 0.295)),
            "PSCC-Net": _row(_SV, (0.379, 0.864, 0.592, 0.369, 0.551)),
            "MVSS-Net": _row(_SV, (0.439, 0.740, 0.583, 0.348, 0.528)),
            "CAT-Net": _row(_SV, (0.428, 0.915, 0.808, 0.252, 0.601)),
            "TruFor": _row(_SV, (0.457, 0.885, 0.818, 0.348, 0.627)),
            "SparseViT": _row(_SV, (0.513, 0.959, 0.827, 0.384, 0.671)),
        }, "SparseViT",
        notes=("all of SparseViT's F1 numbers are pixel-level (SparseViT issue #14)",)),
    PublishedTable(
        "sparsevit_t4_auc", SPARSEVIT, "arXiv 2412.14598, Table 4 (pixel AUC; per set for SparseViT only)", _CAT,
        "resize 512x512", "pixel_auc", "pixel AUC", _IMDLBENCO_AUC,
        {
            "ManTraNet": {"avg": 0.661}, "PSCC-Net": {"avg": 0.888}, "MVSS-Net": {"avg": 0.872},
            "CAT-Net": {"avg": 0.917}, "TruFor": {"avg": 0.895},
            "SparseViT": {"COVERAGE": 0.935, "Columbia": 0.970, "CASIAv1": 0.982, "NIST16": 0.861, "avg": 0.937},
        }, "SparseViT", avg_over=("COVERAGE", "Columbia", "CASIAv1", "NIST16")),
    PublishedTable(
        "sparsevit_t2_def12k", SPARSEVIT, "arXiv 2412.14598, Table 2 (ablation, DEF-12k)", _CAT, "resize 512x512",
        "pixel_f1", "pixel F1", _IMDLBENCO_F1, {"SparseViT": {"DEF-12k": 0.197}}, "SparseViT",
        notes=("the same table gives pixel AUC 0.816 on DEF-12k",)),
    PublishedTable(
        "sparsevit_t2_def12k_auc", SPARSEVIT, "arXiv 2412.14598, Table 2 (ablation, DEF-12k)", _CAT,
        "resize 512x512", "pixel_auc", "pixel AUC", _IMDLBENCO_AUC, {"SparseViT": {"DEF-12k": 0.816}}, "SparseViT"),
    PublishedTable(
        "mesorch_t1_f1", MESORCH, "arXiv 2412.13753, Table 1 (F1)", _CAT, "resize 512x512", "pixel_f1", "pixel F1",
        _IMDLBENCO_F1,
        {
            "MVSS-Net": _row(_ME, (0.4860, 0.7399, 0.3363, 0.5832, 0.5364)),
            "PSCC-Net": _row(_ME, (0.4475, 0.8841, 0.3457, 0.6304, 0.5769)),
            "CAT-Net": _row(_ME, (0.4273, 0.9150, 0.2521, 0.8081, 0.6006)),
            "TruFor": _row(_ME, (0.4573, 0.8845, 0.3480, 0.8176, 0.6269)),
            "Mesorch": _row(_ME, (0.5862, 0.8903, 0.3921, 0.8398, 0.6771)),
            "Mesorch-P": _row(_ME, (0.5470, 0.9224, 0.3888, 0.8465, 0.6762)),
        }, "Mesorch",
        notes=("NIST16 lists pre-resized to long side 1024 (Mesorch / IMDLBenCo)",
               "released mesorch-98.pth, users: Columbia 0.8899, NIST16 0.3823-0.4224 depending on the resize; "
               "CASIAv1 and COVERAGE reproduce (Mesorch issues #20, #24)")),
    PublishedTable(
        "mesorch_t1_permute", MESORCH, "arXiv 2412.13753, Table 1 (average permute-F1)", _CAT, "resize 512x512",
        "pixel_f1_permute", "permute-F1 (average only)", _PERMUTE_F1,
        {"MVSS-Net": {"avg": 0.5711}, "PSCC-Net": {"avg": 0.6048}, "CAT-Net": {"avg": 0.6546},
         "TruFor": {"avg": 0.6826}, "Mesorch": {"avg": 0.7259}, "Mesorch-P": {"avg": 0.7194}}, "Mesorch",
        avg_over=("COVERAGE", "Columbia", "NIST16", "CASIAv1")),
    PublishedTable(
        "mesorch_mvss_issue10", "Mesorch (maintainer's comment, github.com/scu-zjz/Mesorch/issues/10; not in the "
        "paper)", "github.com/scu-zjz/Mesorch/issues/10", _MVSS, "resize 512x512", "pixel_f1", "pixel F1",
        _IMDLBENCO_F1,
        {"Mesorch": {"CASIAv1": 0.740, "COVERAGE": 0.326, "Columbia": 0.726, "NIST16": 0.343, "IMD2020": 0.269,
                     "CocoGlide": 0.162, "AutoSplice": 0.249, "avg": 0.402}}, "Mesorch"),
    PublishedTable(
        "imdlbenco_t3_mvss", IMDLBENCO, "arXiv 2406.10580, Table 3 (Protocol-MVSS rows)", _MVSS,
        "resize at the size given per model (512; PSCC-Net 256; IML-ViT pad 1024)", "pixel_f1", "pixel F1",
        _IMDLBENCO_F1,
        {
            "MVSS-Net": _row(_BENCO, (0.259, 0.386, 0.246, 0.534, 0.279, 0.341)),
            "CAT-Net": _row(_BENCO, (0.296, 0.584, 0.269, 0.581, 0.273, 0.401)),
            "PSCC-Net": _row(_BENCO, (0.231, 0.604, 0.214, 0.378, 0.235, 0.333)),
            "NCL-IML": _row(_BENCO, (0.225, 0.446, 0.260, 0.502, 0.237, 0.334)),
            "TruFor": _row(_BENCO, (0.419, 0.865, 0.324, 0.721, 0.322, 0.530)),
            "IML-ViT": _row(_BENCO, (0.435, 0.780, 0.331, 0.721, 0.327, 0.519)),
        }, "NCL-IML",
        notes=("NCL-IML is IMDL-BenCo's cross-dataset re-implementation of NCL: the comparison the spec recommends "
               "for a forgeloc NCL (no official training code exists)",)),
    PublishedTable(
        "imdlbenco_t3_cat", IMDLBENCO, "arXiv 2406.10580, Table 3 (Protocol-CAT rows)", _CAT,
        "resize at the size given per model (512; IML-ViT pad 1024)", "pixel_f1", "pixel F1", _IMDLBENCO_F1,
        {
            "CAT-Net": _row(_ME, (0.427, 0.915, 0.252, 0.808, 0.601)),
            "NCL-IML": _row(_ME, (0.320, 0.657, 0.315, 0.570, 0.467)),
            "TruFor": _row(_ME, (0.457, 0.885, 0.348, 0.818, 0.627)),
            "IML-ViT": _row(_ME, (0.654, 0.948, 0.501, 0.795, 0.725)),
        }, "NCL-IML"),
    PublishedTable(
        "ncl_t1_f1", NCL, "arXiv 2309.14900, Table 1 (F1, %)", "per-benchmark train/test splits (disputed: NCL "
        "issue #12); not comparable with a cross-dataset run", "resize 512x512 (official notebook)", "pixel_f1",
        "F1 (%)", "F1 in percent; the paper's exact F1 definition (threshold, per image or pooled) is not given",
        {
            "NCL": _row(_NCL, (83.1, 59.8, 80.1, 85.0, 60.7)),
            "ELA": _row(_NCL[:4], (23.6, 21.4, 22.2, 47.0)),
            "NOI": _row(_NCL[:4], (28.5, 26.3, 26.9, 57.4)),
            "CFA": _row(_NCL[:4], (17.4, 20.7, 19.0, 46.7)),
        }, "NCL", scale=100.0,
        notes=("CASIA = CASIAv1 as the test set; Defacto = the DEFACTO subset of the paper",
               "the training-free rows (ELA, NOI, CFA) are from the same table")),
    PublishedTable(
        "ncl_t1_auc", NCL, "arXiv 2309.14900, Table 1 (AUC, %)", "per-benchmark train/test splits (disputed)",
        "resize 512x512 (official notebook)", "pixel_auc", "AUC (%)", "AUC in percent (definition not given)",
        {"NCL": _row(_NCL, (91.2, 86.4, 92.8, 94.3, 88.9))}, "NCL", scale=100.0),
    PublishedTable(
        "ncl_t2_auc", NCL, "arXiv 2309.14900, Table 2 (cross-dataset AUC, %)", _MVSS,
        "resize 512x512 (official notebook)", "pixel_auc", "AUC (%)", "AUC in percent (definition not given)",
        {"NCL": _row(_NCL, (75.6, 86.4, 81.6, 66.9, 53.0))}, "NCL", scale=100.0),
)}

#: ``--paper`` names → (table key, row) pairs compared by default, per protocol.
PAPERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "sparsevit": {"cat": [("sparsevit_t4_f1", "SparseViT"), ("sparsevit_t4_auc", "SparseViT"),
                          ("sparsevit_t2_def12k", "SparseViT"), ("sparsevit_t2_def12k_auc", "SparseViT")]},
    "mesorch": {"cat": [("mesorch_t1_f1", "Mesorch"), ("mesorch_t1_permute", "Mesorch")],
                "mvss": [("mesorch_mvss_issue10", "Mesorch")]},
    "mesorch_p": {"cat": [("mesorch_t1_f1", "Mesorch-P"), ("mesorch_t1_permute", "Mesorch-P")]},
    "ncl": {"mvss": [("imdlbenco_t3_mvss", "NCL-IML"), ("ncl_t2_auc", "NCL")],
            "cat": [("imdlbenco_t3_cat", "NCL-IML")],
            "paper": [("ncl_t1_f1", "NCL"), ("ncl_t1_auc", "NCL")]},
}
_DEFAULT_PROTOCOL = {"sparsevit": "cat", "mesorch": "cat", "mesorch_p": "cat", "ncl": "mvss"}

#: Numbers reported by users, not compared but quoted in the causes (source: the issue threads).
REPORTED: tuple[dict[str, Any], ...] = (
    {"model": "Mesorch (user retrain, 4 GPU, 150 epochs, epoch 98)", "protocol": "Protocol-CAT",
     "values": {"CASIAv1": 0.850, "COVERAGE": 0.606, "Columbia": 0.702, "NIST16": 0.390, "avg": 0.637},
     "source": "github.com/scu-zjz/Mesorch/issues/21"},
    {"model": "Mesorch (user retrain, epoch 114)", "protocol": "Protocol-CAT",
     "values": {"CASIAv1": 0.851, "COVERAGE": 0.605, "Columbia": 0.796, "NIST16": 0.314, "avg": 0.641},
     "source": "github.com/scu-zjz/Mesorch/issues/21"},
    {"model": "mesorch-98.pth (released)", "protocol": "Protocol-CAT",
     "values": {"Columbia": 0.8899, "NIST16": 0.3823}, "note": "NIST16 0.3823-0.4224 depending on the resize",
     "source": "github.com/scu-zjz/Mesorch/issues/20, /24"},
)

#: Robustness on CASIAv1 (pixel F1), Mesorch Table 2; SparseViT Fig. 6 exists only as a plot
#: (approximate readings, marked as such).
ROBUSTNESS: dict[str, dict[str, Any]] = {
    "mesorch_t2": {
        "source": "arXiv 2412.13753, Table 2 (CASIAv1, pixel F1)",
        "note": "the noise levels are passed to albumentations as a variance (the caption says standard deviation)",
        "levels": {"noise": (0, 3, 7, 11, 15, 19, 23), "blur": (0, 3, 7, 11, 15, 19, 23),
                   "jpeg": (None, 100, 90, 80, 70, 60, 50)},
        "rows": {
            ("noise", "Mesorch"): (0.8398, 0.8205, 0.8050, 0.7968, 0.7887, 0.7780, 0.7696, 0.7998),
            ("noise", "Mesorch-P"): (0.8465, 0.8184, 0.7872, 0.7694, 0.7636, 0.7543, 0.7501, 0.7842),
            ("blur", "Mesorch"): (0.8398, 0.7898, 0.7081, 0.6277, 0.5328, 0.4193, 0.2940, 0.6016),
            ("blur", "Mesorch-P"): (0.8465, 0.7867, 0.7179, 0.6380, 0.5262, 0.4106, 0.2967, 0.6032),
            ("jpeg", "Mesorch"): (0.8398, 0.8312, 0.8194, 0.7716, 0.7706, 0.7285, 0.6552, 0.7738),
            ("jpeg", "Mesorch-P"): (0.8465, 0.8314, 0.8219, 0.7653, 0.7598, 0.7161, 0.6239, 0.7664),
        },
        "columns": ("none", "1st", "2nd", "3rd", "4th", "5th", "6th", "avg"),
    },
    "sparsevit_fig6": {
        "source": "arXiv 2412.14598, Fig. 6 (CASIAv1; approximate readings of a plot)",
        "approximate": True,
        "points": {"jpeg": {90: 0.80, 70: 0.74, 50: 0.64}, "blur": {7: 0.72, 15: 0.49, 23: 0.27},
                   "noise": {23: 0.76}},
    },
}

#: Known causes of a difference, per test set (shown for flagged rows).
SET_CAUSES: dict[str, tuple[str, ...]] = {
    "NIST16": (
        "resize: Mesorch's / IMDLBenCo's NIST16 lists pre-resize the long side to 1024 "
        "(forgeloc data prepare nist16 --long-side 1024); the released Mesorch checkpoint gives 0.3823-0.4224 "
        "depending on it (Mesorch #20, #24)",
        "authentic images counted: NC2016's reference lists authentic probes (IsTarget=N); with the imdlbenco "
        "definition each scores F1 = 0 (prepare with --no-authentic, or use the forgeloc definition)",
        "masks: NIST masks are inverted (black = manipulated) and must be converted",
    ),
    "Columbia": (
        "masks: Columbia's edge masks are colour-coded and must be converted (forgeloc data prepare columbia: green "
        "= spliced); read as grey they give wrong masks (Mesorch #24)",
        "authentic images counted: a list with the 183 4cam_auth images scores each F1 = 0 with the imdlbenco "
        "definition",
    ),
    "COVERAGE": (
        "masks: 9 image/mask size mismatches (41, 48, 55-59, 61, 95): dropped by default, resized with "
        "--resize-masks or replaced with --corrections; each choice gives a different set",
        "authentic images counted: the 100 originals score F1 = 0 each with the imdlbenco definition",
    ),
    "CASIAv1": (
        "masks: Sp_D_NRN_A_cha0011_sec0011_0542 has no mask; the masks are Pham et al.'s, the images their renamed "
        "'Modified Tp'",
        "authentic images counted: the 800 Au images score F1 = 0 each with the imdlbenco definition",
        "data overlap: CASIAv1's authentic photos overlap CASIAv2's (MVSS-Net data README); user retrains of "
        "Mesorch report 0.85 (Mesorch #21)",
    ),
    "IMD2020": (
        "masks: z14/00030_fake has a mask of another size (IML-Dataset-Corrections)",
        "resize: IMDLBenCo's IMD_20_1024 is pre-resized to long side 1024",
    ),
    "DEF-12k": ("masks: DEFACTO's masks are JPEG and thresholded at 127.5; the list is MVSS-Net's 12k subset",),
}
_GENERIC_CAUSES = (
    "input: the papers resize to 512x512 (aspect ratio not kept); metrics at the model's input resolution with "
    "masks resized nearest, as IMDLBenCo",
    "training variance: user retrains of Mesorch differ from the paper by up to 0.19 on Columbia (Mesorch #21); "
    "compare released checkpoints first",
)

_ALIASES = {
    "casiav1": "CASIAv1", "casia1": "CASIAv1", "casia10": "CASIAv1", "casiav10": "CASIAv1", "casia": "CASIAv1",
    "columbia": "Columbia", "columbiauncompressed": "Columbia", "col": "Columbia",
    "nist16": "NIST16", "nist": "NIST16", "nist2016": "NIST16", "nc2016": "NIST16", "nc16": "NIST16",
    "coverage": "COVERAGE", "cover": "COVERAGE", "cov": "COVERAGE",
    "imd2020": "IMD2020", "imd20": "IMD2020", "imd": "IMD2020",
    "def12k": "DEF-12k", "defacto12k": "DEF-12k", "defacto": "DEF-12k", "def": "DEF-12k",
    "cocoglide": "CocoGlide", "autosplice": "AutoSplice",
    "casiav2": "CASIAv2", "casia2": "CASIAv2", "casia20": "CASIAv2",
}
_SUFFIXES = ("1024", "cleaned", "cleaning", "resized", "test", "tampered", "tp", "only", "json")


def canonical_set(name: str) -> str | None:
    """The table's name for a test set called ``name`` (``"NIST16_1024"`` → ``"NIST16"``), or ``None``."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for _ in range(3):
        if key in _ALIASES:
            return _ALIASES[key]
        for suffix in _SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                key = key[: -len(suffix)]
                break
    return _ALIASES.get(key)


# --------------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------------
def load_results(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``(rows, meta)`` of a ``metrics.json`` written by ``forgeloc test`` (``{"meta", "results"}``);
    a bare ``{set: {metric: value}}`` mapping is accepted too."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise CompareError(f"{path}: cannot read the results ({err})") from err
    if isinstance(data, dict) and isinstance(data.get("results"), dict):
        rows, meta = data["results"], data.get("meta") or {}
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        rows, meta = data, {}
    else:
        raise CompareError(f"{path}: not a forgeloc metrics.json ({{\"meta\": ..., \"results\": {{set: metrics}}}})")
    return rows, meta


@dataclass
class ComparedRow:
    set: str  # the table's set name ("avg" for the average)
    your_set: str | None  # the name in your results
    yours: float | None
    paper: float | None
    diff: float | None
    flagged: bool
    status: str  # ok | beyond tolerance | missing in your results | not in the table's row | ...
    causes: list[str] = field(default_factory=list)
    n_tampered: int | None = None
    n_authentic: int | None = None


@dataclass
class Comparison:
    table: PublishedTable
    row: str
    tolerance: float
    rows: list[ComparedRow]
    run_notes: list[str]  # causes that come from your run's settings
    unmatched: list[str]  # your sets that match no column

    @property
    def flagged(self) -> list[ComparedRow]:
        return [r for r in self.rows if r.flagged]

    def to_dict(self) -> dict[str, Any]:
        t = self.table
        return {
            "table": t.key, "paper": t.paper, "source": t.source, "protocol": t.protocol, "input": t.input,
            "metric": t.metric, "metric_name": t.metric_name, "definition": t.definition, "row": self.row,
            "tolerance": self.tolerance, "run_notes": self.run_notes, "unmatched_sets": self.unmatched,
            "notes": list(t.notes),
            "rows": [r.__dict__ for r in self.rows],
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(float(value)) else float(value)


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and float(number).is_integer() else None


def _run_notes(meta: dict[str, Any], table: PublishedTable) -> list[str]:
    notes = []
    definition = meta.get("definition")
    if definition is None:
        notes.append("your results do not say which metric definition they used")
    threshold = meta.get("threshold")
    if isinstance(threshold, (int, float)) and abs(float(threshold) - 0.5) > 1e-9 and "f1" in table.metric:
        notes.append(f"threshold: your run binarised at {threshold}; the papers use 0.5")
    inp = str(meta.get("input", ""))
    if inp and "512" not in inp and "512" in table.input:
        notes.append(f"input: your run used '{inp}'; the paper: {table.input}")
    elif inp.startswith("pad") and "resize" in table.input:
        notes.append(f"input: your run padded ('{inp}'); the paper resized ({table.input})")
    if "native" in inp:
        notes.append("input: your metrics are at each photo's native resolution; the papers' at 512x512")
    return notes


def _match_sets(results: dict[str, dict[str, Any]], table: PublishedTable, mapping: dict[str, str]):
    """Your set for each table set: explicit ``mapping`` first, then the aliases (first one wins).
    Returns ``(yours_for, unmatched, duplicates)``."""
    yours_for: dict[str, str] = {}
    unmatched: list[str] = []
    duplicates: dict[str, list[str]] = {}
    for name in results:
        if name in mapping.values():
            continue
        canon = canonical_set(name)
        if canon is None or canon not in table.sets:
            unmatched.append(name)
        elif canon in yours_for or canon in mapping:
            duplicates.setdefault(canon, []).append(name)
        else:
            yours_for[canon] = name
    for canon, name in mapping.items():
        if name not in results:
            raise CompareError(f"--set {canon}={name}: your results have no set {name!r} ({', '.join(results)})")
        yours_for[canon] = name
    return yours_for, unmatched, duplicates


def _flag_causes(compared: ComparedRow, s: str, definition: Any, table: PublishedTable) -> list[str]:
    """The known causes of a difference beyond tolerance on set ``s``."""
    causes = []
    if definition == "imdlbenco" and compared.n_authentic:
        causes.append(f"authentic images counted: your run used the imdlbenco definition and this set has "
                      f"{compared.n_authentic} authentic images, each scored 0 in {table.metric}")
    said = bool(causes)
    for cause in SET_CAUSES.get(s, ()):
        # "authentic images counted" only where it can apply: not under the forgeloc definition
        # (which leaves them out) and not when the set is known to have none.
        if cause.startswith("authentic images counted") and (
                definition == "forgeloc" or compared.n_authentic == 0 or said):
            continue
        causes.append(cause)
    return causes + list(_GENERIC_CAUSES)


def _compare_set(s: str, name: str | None, results: dict[str, dict[str, Any]], published: dict[str, float],
                 table: PublishedTable, row: str, tolerance: float, definition: Any) -> ComparedRow:
    """One table set: your value, the paper's, the difference and its status."""
    paper = published.get(s)
    metrics = results.get(name, {}) if name else {}
    yours = _number(metrics.get(table.metric)) if name else None
    compared = ComparedRow(s, name, yours, None if paper is None else paper / table.scale, None, False, "",
                           n_tampered=_count(metrics.get("n_tampered")),
                           n_authentic=_count(metrics.get("n_authentic")))
    if name is None:
        compared.status = "missing in your results"
    elif yours is None:
        compared.status = (f"your results have no {table.metric}" if table.metric not in metrics
                           else f"{table.metric} is undefined (nan) in your results")
    elif paper is None:
        compared.status = f"no per-set value for {row} in this table"
    else:
        compared.diff = yours - compared.paper
        compared.flagged = abs(compared.diff) > tolerance
        compared.status = "beyond tolerance" if compared.flagged else "within tolerance"
    if compared.flagged:
        compared.causes = _flag_causes(compared, s, definition, table)
    return compared


def _average_row(published: dict[str, float], table: PublishedTable, row: str, rows: list[ComparedRow],
                 tolerance: float) -> ComparedRow:
    """The table's average, recomputed from your values over the same sets."""
    our_values = {r.set: r.yours for r in rows if r.yours is not None}
    paper_avg = published["avg"] / table.scale
    sets_in_avg = table.averaged_sets(row)
    avg = ComparedRow("avg", None, None, paper_avg, None, False, "")
    if sets_in_avg and all(s in our_values for s in sets_in_avg):
        avg.yours = sum(our_values[s] for s in sets_in_avg) / len(sets_in_avg)
        avg.your_set = "mean of " + ", ".join(sets_in_avg)
        avg.diff = avg.yours - paper_avg
        avg.flagged = abs(avg.diff) > tolerance
        avg.status = "beyond tolerance" if avg.flagged else "within tolerance"
        if avg.flagged:
            avg.causes = ["see the flagged sets"] if any(r.flagged for r in rows) else list(_GENERIC_CAUSES)
    else:
        missing = [s for s in sets_in_avg if s not in our_values]
        avg.status = f"not computed: no {table.metric} for " + ", ".join(missing)
    return avg


def compare(
    results: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    table_key: str,
    row: str | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    mapping: dict[str, str] | None = None,
) -> Comparison:
    """Compare ``results`` (set name → metrics, as in ``metrics.json``) with one published table row.

    ``mapping``: explicit ``{table set: your set name}`` pairs, for names the aliases do not cover.
    """
    if table_key not in TABLES:
        raise CompareError(f"unknown table {table_key!r}; tables: {', '.join(TABLES)}")
    table = TABLES[table_key]
    row = row or table.default_row
    if row not in table.rows:
        raise CompareError(f"table {table_key} has no row {row!r}; rows: {', '.join(table.rows)}")
    published = table.rows[row]
    yours_for, unmatched, duplicates = _match_sets(results, table, dict(mapping or {}))
    definition = meta.get("definition")
    run_notes = _run_notes(meta, table)
    for canon, names in duplicates.items():
        run_notes.append(f"{', '.join(names)} also match {canon}; compared: {yours_for[canon]} (choose with --set "
                         f"{canon}=NAME)")
    rows = [_compare_set(s, yours_for.get(s), results, published, table, row, tolerance, definition)
            for s in table.sets]
    if "avg" in published:
        rows.append(_average_row(published, table, row, rows, tolerance))
    return Comparison(table, row, tolerance, rows, run_notes, unmatched)


def compare_paper(
    results: dict[str, dict[str, Any]], meta: dict[str, Any], paper: str, protocol: str | None = None, **kw: Any,
) -> list[Comparison]:
    """Every default comparison of ``paper`` (see :data:`PAPERS`) under ``protocol``."""
    key = paper.lower().replace("-", "_")
    if key not in PAPERS:
        raise CompareError(f"unknown paper {paper!r}; papers: {', '.join(PAPERS)} (or give --table)")
    protocol = (protocol or _DEFAULT_PROTOCOL[key]).lower()
    if protocol not in PAPERS[key]:
        raise CompareError(f"{paper}: no published numbers under protocol {protocol!r}; "
                           f"protocols: {', '.join(PAPERS[key])}")
    return [compare(results, meta, table, row, **kw) for table, row in PAPERS[key][protocol]]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def comparison_markdown(comparisons: list[Comparison], meta: dict[str, Any], results_path: str = "") -> str:
    lines = ["# Your results next to the published tables", ""]
    if results_path:
        lines.append(f"- **results**: {results_path}")
    for key in ("model", "checkpoint", "weights_sha256", "definition", "threshold", "input"):
        if key in meta:
            lines.append(f"- **{key}**: {meta[key]}")
    lines.append("")
    for comp in comparisons:
        t = comp.table
        lines += [
            f"## {t.paper}: {t.source}, row {comp.row}", "",
            f"- **protocol**: {t.protocol}",
            f"- **input**: {t.input}",
            f"- **metric**: {t.metric_name} (forgeloc key `{t.metric}`)",
            f"- **definition**: {t.definition}",
            f"- **tolerance**: ±{comp.tolerance:g} (absolute)",
        ]
        lines += [f"- **note**: {n}" for n in t.notes]
        lines += [f"- **your run**: {n}" for n in comp.run_notes]
        if comp.unmatched:
            lines.append(f"- **your sets not in this table**: {', '.join(comp.unmatched)}")
        lines += ["", "| set | your set | yours | paper | difference | tampered / authentic | status |",
                  "|---|---|---|---|---|---|---|"]
        for r in comp.rows:
            n_a = "?" if r.n_authentic is None else r.n_authentic
            counts = "–" if r.n_tampered is None else f"{r.n_tampered} / {n_a}"
            status = f"**{r.status}**" if r.flagged else r.status
            lines.append(f"| {r.set} | {r.your_set or '–'} | {_fmt(r.yours)} | {_fmt(r.paper)} | "
                         f"{_fmt(r.diff, signed=True)} | {counts} | {status} |")
        flagged = comp.flagged
        if flagged:
            lines += ["", "Known causes of the flagged differences:", ""]
            for r in flagged:
                lines.append(f"- **{r.set}** ({_fmt(r.diff, signed=True)}):")
                lines += [f"  - {c}" for c in r.causes]
        lines.append("")
    return "\n".join(lines)


def comparison_csv(comparisons: list[Comparison]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "source", "row", "metric", "set", "your_set", "yours", "paper", "difference", "flagged",
                "status", "n_tampered", "n_authentic"])
    for comp in comparisons:
        for r in comp.rows:
            w.writerow([comp.table.key, comp.table.source, comp.row, comp.table.metric, r.set, r.your_set or "",
                        "" if r.yours is None else r.yours, "" if r.paper is None else r.paper,
                        "" if r.diff is None else r.diff, r.flagged, r.status,
                        "" if r.n_tampered is None else r.n_tampered,
                        "" if r.n_authentic is None else r.n_authentic])
    return buf.getvalue()


def write_comparison(
    comparisons: list[Comparison], out_dir: str | Path, meta: dict[str, Any], results_path: str = "",
    stem: str = "compare",
) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.csv`` and ``compare.json`` to ``out_dir``."""
    from forgeloc.io import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = comparison_markdown(comparisons, meta, results_path)
    payload = {"results": results_path, "meta": meta, "comparisons": [c.to_dict() for c in comparisons]}
    return {
        "md": atomic_write(out / f"{stem}.md", lambda p: p.write_text(md)),
        "csv": atomic_write(out / f"{stem}.csv", lambda p: p.write_text(comparison_csv(comparisons))),
        "json": atomic_write(out / f"{stem}.json",
                             lambda p: p.write_text(json.dumps(payload, indent=2, default=str) + "\n")),
    }
