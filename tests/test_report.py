"""The augment report: report.png and report.html from a fake augment output folder."""

import json

import numpy as np
import pytest
from PIL import Image

from earthsynth.augment.report import CELL, class_rates, load_manifest, pass_rates, write_report
from earthsynth.errors import InputError
from tests_support import assert_input_error

SIZE = 64
RUN = {"real": {"images": 10, "class_counts": {"Tree": 20, "Dead": 5}, "objects_per_image": 2.5},
       "timing": {"total_s": 120.5, "generate_s": 80.1, "filter_s": 20.3, "write_s": 5.0, "images_per_s": 0.53},
       "model": "tiny-aerogen", "seed": 7, "num_images": 2, "formats": ["coco"], "image_size": SIZE,
       "thresholds": {"min_recall": 0.5}}
ESCAPED_REASON = "layout: recall 0.33 < 0.50"


def record(index, accepted, rboxes, labels, reasons=(), rotated=False, checks=None):
    return {"index": index, "image_id": f"synth_{index:06d}", "file": f"candidates/{index:06d}.png",
            "seed": 1000 + index, "prompt": f"aerial image, {len(labels)} trees", "origin": "sampled",
            "layout": {"rboxes": rboxes, "labels": labels, "rotated": rotated},
            "accepted": accepted, "reasons": list(reasons),
            "checks": checks or {"quality": True, "layout": accepted, "semantic": True, "duplicate": True},
            "scores": {"recall": 1.0 if accepted else 0.33, "precision": 1.0, "duplicate_similarity": 0.4},
            "model": "tiny-aerogen", "rank": 0}


def fake_output(tmp_path, records, missing=()):
    """An augment output folder: candidate PNGs (except `missing` indices), manifest, run.json."""
    (tmp_path / "candidates").mkdir()
    rng = np.random.default_rng(0)
    for r in records:
        if r["index"] not in missing:
            pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / r["file"])
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    return tmp_path


def mixed_records():
    return [
        record(0, True, [[20, 20, 12, 12, 0], [40, 44, 16, 10, 0]], ["Tree", "Tree"]),
        record(1, True, [[32, 32, 20, 8, 30.0]], ["Dead"], rotated=True),
        record(2, False, [[10, 10, 8, 8, 0]], ["Tree"], reasons=[ESCAPED_REASON, "duplicate of real:YELL_x0 (0.97)"],
               checks={"quality": True, "layout": False, "semantic": True, "duplicate": False}),
        record(3, False, [], [], reasons=["quality: std 0.01 < 0.03"],
               checks={"quality": False, "layout": True, "semantic": True, "duplicate": True}),
        record(4, False, [[50, 50, 10, 10, 0]], ["Tree"], reasons=["semantic: classifier agrees on 0.00"],
               checks={"quality": True, "layout": True, "semantic": False, "duplicate": True}),
    ]


def test_report_files_and_contents(tmp_path):
    out = fake_output(tmp_path, mixed_records(), missing={4})
    records = load_manifest(out / "manifest.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    png, page = write_report(out, records, json.loads((out / "run.json").read_text()))
    assert png == out / "report.png" and page == out / "report.html"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind

    with Image.open(png) as image:
        image.load()
        assert image.mode == "RGB"
        width, height = image.size
        pixels = np.asarray(image)
    assert width >= 8 * CELL and 2 * CELL < height < 4000
    # the figure is drawn on, not blank: many distinct colours (thumbnails) and dark text
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000
    assert (pixels.sum(axis=2) < 100).sum() > 500

    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "tiny-aerogen" in text and "120.5 s" in text and "0.53 images/s" in text
    # counts: 5 candidates, 2 accepted (40%), each check passed by 4 of 5
    assert "<td>candidates</td><td>5</td>" in text
    assert "<td>accepted</td><td>2</td>" in text
    assert "40% (2/5)" in text and "80% (4/5)" in text
    # reasons are escaped, never raw markup
    assert "layout: recall 0.33 &lt; 0.50" in text and ESCAPED_REASON not in text
    assert "duplicate of real:YELL_x0 (0.97)" in text
    # thumbnails: one per candidate plus the embedded figure, all data URIs; only report.png linked
    assert text.count('src="data:image/png;base64,') == 5 + 1
    srcs = [s for s in text.split('src="')[1:]]
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert 'href="report.png"' in text


def test_numbers_for_chart_and_pass_rates():
    records = mixed_records()
    rates = pass_rates(records)
    assert rates["accepted"] == (2, 5)
    assert rates["quality"] == (4, 5) and rates["layout"] == (4, 5)
    assert rates["semantic"] == (4, 5) and rates["duplicate"] == (4, 5)
    rows = {name: (real, synth) for name, real, synth in class_rates(records, RUN)}
    # real: 20 Tree, 5 Dead over 10 images; accepted: 2 Tree, 1 Dead over 2 images
    assert rows["Tree"] == pytest.approx((2.0, 1.0)) and rows["Dead"] == pytest.approx((0.5, 0.5))
    # many classes: the chart keeps the 12 most frequent
    many = [record(i, True, [[10, 10, 5, 5, 0]] * (i + 1), [f"c{i}"] * (i + 1)) for i in range(20)]
    names = [name for name, _, _ in class_rates(many, {})]
    assert names == [f"c{i}" for i in range(19, 7, -1)]


def test_zero_accepted_and_missing_images(tmp_path):
    records = [r for r in mixed_records() if not r["accepted"]]
    out = fake_output(tmp_path, records, missing={2, 3, 4})  # no candidate image at all
    png, page = write_report(out, records, {})  # an empty run summary too
    with Image.open(png) as image:
        assert image.size[0] >= 8 * CELL
    text = page.read_text(encoding="utf-8")
    assert "<td>accepted</td><td>0</td>" in text and "0% (0/3)" in text
    assert "<td>timing</td><td>not recorded</td>" in text


def test_zero_rejected_and_no_candidates(tmp_path):
    records = [r for r in mixed_records() if r["accepted"]]
    out = fake_output(tmp_path, records)
    write_report(out, records, RUN)
    assert "100% (2/2)" in (out / "report.html").read_text(encoding="utf-8")
    write_report(out, [], RUN)
    assert "<td>candidates</td><td>0</td>" in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("line, words", [
    ('{"index": 1, "accepted": tru', ("line 2", "not valid JSON")),
    ("[1, 2]", ("line 2", "JSON object")),
    ('{"accepted": true}', ("line 2", "index")),
    ('{"index": 1, "accepted": true, "layout": {"rboxes": [[1, 2, 3]], "labels": ["Tree"]}}', ("line 2", "layout")),
])
def test_malformed_manifest_line(tmp_path, line, words):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(record(0, True, [], [])) + "\n" + line + "\n")
    with pytest.raises(InputError) as err:
        load_manifest(path)
    assert_input_error(err, path, *words)
