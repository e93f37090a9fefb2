"""``forgeloc compare``: a tiny metrics.json next to the transcribed tables."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from forgeloc.cli.compare import register
from forgeloc.engine.compare import (
    PAPERS,
    TABLES,
    CompareError,
    canonical_set,
    compare,
    compare_paper,
    load_results,
)
from forgeloc.engine.tables import write_tables

META = {"checkpoint": "runs/mesorch_cat/best", "model": "mesorch", "weights_sha256": "ab" * 32,
        "definition": "forgeloc", "threshold": 0.5, "input": "resize 512"}


def _metrics(tmp_path: Path, rows: dict[str, dict], meta: dict | None = None) -> Path:
    """A metrics.json exactly as forgeloc test writes it (engine.tables.write_tables)."""
    return write_tables(rows, tmp_path / "results", "metrics", meta if meta is not None else META)["json"]


ROWS = {
    # names as people write them: each must land on the table's column
    "CASIA1": {"pixel_f1": 0.8400, "pixel_auc": 0.98, "n_images": 920, "n_tampered": 920, "n_authentic": 0},
    "coverage": {"pixel_f1": 0.5000, "pixel_auc": 0.90, "n_images": 91, "n_tampered": 91, "n_authentic": 0},
    "NIST16_1024": {"pixel_f1": 0.3921, "pixel_auc": 0.86, "n_images": 564, "n_tampered": 564, "n_authentic": 0},
    "Columbia": {"pixel_f1": 0.8800, "pixel_auc": 0.97, "n_images": 180, "n_tampered": 180, "n_authentic": 0},
    "quickstart_heldout": {"pixel_f1": 0.3, "n_images": 96, "n_tampered": 72, "n_authentic": 24},
}


def _by_set(comparison) -> dict[str, object]:
    return {r.set: r for r in comparison.rows}


def test_set_name_aliases() -> None:
    for name, canon in {"CASIAv1": "CASIAv1", "CASIA1.0": "CASIAv1", "casia_v1": "CASIAv1", "NIST16_1024": "NIST16",
                        "NIST16_cleaned": "NIST16", "nist": "NIST16", "coverage": "COVERAGE", "COVER": "COVERAGE",
                        "IMD20_1024": "IMD2020", "IMD2020": "IMD2020", "columbia": "Columbia",
                        "DEF-12k": "DEF-12k", "defacto12k": "DEF-12k", "CocoGlide": "CocoGlide"}.items():
        assert canonical_set(name) == canon, name
    assert canonical_set("quickstart_heldout") is None and canonical_set("CASIAv2") == "CASIAv2"


def test_mesorch_side_by_side_carries_the_tables_numbers(tmp_path: Path) -> None:
    rows, meta = load_results(_metrics(tmp_path, ROWS))
    f1, permute = compare_paper(rows, meta, "mesorch")
    got = _by_set(f1)
    # the paper column: Mesorch's row of Table 1, arXiv 2412.13753
    assert {s: got[s].paper for s in ("COVERAGE", "Columbia", "NIST16", "CASIAv1", "avg")} == {
        "COVERAGE": 0.5862, "Columbia": 0.8903, "NIST16": 0.3921, "CASIAv1": 0.8398, "avg": 0.6771}
    assert got["CASIAv1"].your_set == "CASIA1" and got["NIST16"].your_set == "NIST16_1024"
    assert got["CASIAv1"].yours == 0.84 and got["CASIAv1"].diff == pytest.approx(0.0002)
    assert not got["CASIAv1"].flagged and not got["Columbia"].flagged and got["NIST16"].diff == pytest.approx(0)
    assert got["COVERAGE"].flagged and got["COVERAGE"].diff == pytest.approx(0.5 - 0.5862)
    assert any("9 image/mask size mismatches" in c for c in got["COVERAGE"].causes)
    assert got["avg"].yours == pytest.approx((0.84 + 0.5 + 0.3921 + 0.88) / 4)
    assert f1.unmatched == ["quickstart_heldout"]
    assert "pixel_f1" in f1.table.metric and "threshold 0.5" in f1.table.definition
    # permute-F1 is average-only in the paper, and forgeloc test does not compute it
    [avg] = [r for r in permute.rows if r.set == "avg"]
    assert avg.paper == 0.7259 and avg.yours is None and "no pixel_f1_permute" in avg.status

    mp = _by_set(compare_paper(rows, meta, "mesorch_p")[0])
    assert (mp["Columbia"].paper, mp["CASIAv1"].paper) == (0.9224, 0.8465)


def test_sparsevit_f1_and_auc_columns(tmp_path: Path) -> None:
    rows, meta = load_results(_metrics(tmp_path, ROWS))
    f1, auc, def12k, _ = compare_paper(rows, meta, "sparsevit")
    assert {r.set: r.paper for r in f1.rows} == {"COVERAGE": 0.513, "Columbia": 0.959, "CASIAv1": 0.827,
                                                 "NIST16": 0.384, "avg": 0.671}
    assert {r.set: r.paper for r in auc.rows} == {"COVERAGE": 0.935, "Columbia": 0.970, "CASIAv1": 0.982,
                                                  "NIST16": 0.861, "avg": 0.937}
    assert _by_set(auc)["CASIAv1"].yours == 0.98
    assert _by_set(def12k)["DEF-12k"].status == "missing in your results"
    cat = _by_set(compare(rows, meta, "sparsevit_t4_f1", "CAT-Net"))
    assert (cat["CASIAv1"].paper, cat["NIST16"].paper) == (0.808, 0.252)


def test_authentic_images_counted_is_named_as_the_cause(tmp_path: Path) -> None:
    rows = {"Columbia": {"pixel_f1": 0.45, "n_tampered": 180, "n_authentic": 183}}
    rows, meta = load_results(_metrics(tmp_path, rows, {**META, "definition": "imdlbenco", "threshold": 0.3}))
    comp = compare(rows, meta, "mesorch_t1_f1")
    col = _by_set(comp)["Columbia"]
    assert col.flagged and col.causes[0].startswith("authentic images counted: your run used the imdlbenco")
    assert "183 authentic" in col.causes[0]
    assert any("threshold" in n for n in comp.run_notes)
    assert _by_set(comp)["avg"].status.startswith("not computed")


def test_percent_tables_and_protocols(tmp_path: Path) -> None:
    rows = {"NIST16": {"pixel_f1": 0.30, "pixel_auc": 0.75}, "CASIAv1": {"pixel_f1": 0.50, "pixel_auc": 0.86},
            "IMD2020": {"pixel_f1": 0.24}, "COVERAGE": {"pixel_f1": 0.22}, "Columbia": {"pixel_f1": 0.44}}
    rows, meta = load_results(_metrics(tmp_path, rows))
    benco, ncl_auc = compare_paper(rows, meta, "ncl")  # default protocol for NCL: MVSS, IMDL-BenCo's NCL-IML row
    assert _by_set(benco)["IMD2020"].paper == 0.237 and _by_set(benco)["avg"].paper == 0.334
    assert _by_set(ncl_auc)["NIST16"].paper == pytest.approx(0.756)  # Table 2 is in percent
    paper = _by_set(compare_paper(rows, meta, "ncl", "paper")[0])
    assert paper["NIST16"].paper == pytest.approx(0.831) and paper["DEF-12k"].status == "missing in your results"
    mvss = _by_set(compare_paper(rows, meta, "mesorch", "mvss")[0])
    assert mvss["IMD2020"].paper == 0.269 and mvss["CocoGlide"].status == "missing in your results"
    with pytest.raises(CompareError, match="protocol"):
        compare_paper(rows, meta, "sparsevit", "mvss")
    with pytest.raises(CompareError, match="no row"):
        compare(rows, meta, "mesorch_t1_f1", "SparseViT")
    mapped = _by_set(compare({"mine": {"pixel_f1": 0.39}}, {}, "mesorch_t1_f1", mapping={"NIST16": "mine"}))
    assert mapped["NIST16"].yours == 0.39


def test_transcribed_averages_are_the_means_of_their_rows() -> None:
    for table in TABLES.values():
        for name, row in table.rows.items():
            per_set = [v for k, v in row.items() if k != "avg"]
            if "avg" in row and per_set:
                assert sum(per_set) / len(per_set) == pytest.approx(row["avg"], abs=0.0016 * table.scale), \
                    (table.key, name)
    for paper in PAPERS.values():
        for pairs in paper.values():
            for key, row in pairs:
                assert row in TABLES[key].rows


def _app() -> typer.Typer:
    """A fresh app with only this command (the module's register(), as forgeloc.cli uses it)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    return app


def test_cli_writes_markdown_csv_json(tmp_path: Path) -> None:
    app = _app()
    results = _metrics(tmp_path, ROWS)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(results), "--paper", "mesorch", "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "compare.md").read_text()
    assert "| COVERAGE | coverage | 0.5000 | 0.5862 | -0.0862 | 91 / 0 | **beyond tolerance** |" in md
    assert "| CASIAv1 | CASIA1 | 0.8400 | 0.8398 | +0.0002 | 920 / 0 | within tolerance |" in md
    assert "arXiv 2412.13753, Table 1 (F1)" in md and "Known causes" in md
    table = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    nist = next(r for r in table if r["set"] == "NIST16" and r["table"] == "mesorch_t1_f1")
    assert float(nist["paper"]) == 0.3921 and nist["your_set"] == "NIST16_1024"
    data = json.loads((out / "compare.json").read_text())
    assert [c["table"] for c in data["comparisons"]] == ["mesorch_t1_f1", "mesorch_t1_permute"]
    assert data["meta"]["weights_sha256"] == META["weights_sha256"]

    result = CliRunner().invoke(app, ["compare", str(results), "--table", "imdlbenco_t3_cat", "--model", "TruFor",
                                      "--tolerance", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "beyond tolerance" not in (out / "compare.md").read_text()
    bad = CliRunner().invoke(app, ["compare", str(results), "--paper", "nope"])
    assert bad.exit_code == 2 and "unknown paper" in bad.output
