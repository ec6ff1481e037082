"""The evaluation report (focalserve.report): built from a real Evaluate with a sweep and
calibration, from Python and from the JSON file focalctl writes, rendered in headless Chromium and
checked on the screenshot and the DOM."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="python3-matplotlib draws the report's figures (scripts/install-deps.sh)")

from focalserve import _codec, report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
CLASSES = 12


@pytest.fixture(scope="module")
def evaluated(client):
    rng = np.random.default_rng(2026)
    # Predictions of a mildly over-confident model: the true class's logit raised by a margin,
    # everything scaled up, so the reliability diagram has something to show.
    batches = []
    for _ in range(6):
        y = rng.integers(0, CLASSES, 200)
        x = rng.standard_normal((200, CLASSES))
        x[np.arange(200), y] += 2.5
        batches.append(((x * 2.2).astype(np.float32), y))
    params = dict(gamma=2.0, alpha=list(np.linspace(0.5, 1.5, CLASSES)))
    result = client.evaluate(batches, "softmax_focal", gamma_sweep=[0, 0.5, 1, 2, 3, 5], calibration_bins=15, **params)
    return result, _codec.loss_spec("softmax_focal", "none", **params)


def render_in_chromium(tmp_path, page):
    profile = tmp_path / "profile"
    png = tmp_path / "shot.png"
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run(common + [f"--screenshot={png}", "--window-size=1400,2400", page.as_uri()], check=True,
                   capture_output=True, timeout=120)
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return png, dom


def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


def test_report_is_self_contained_with_every_figure_and_a_row_per_class(evaluated, tmp_path):
    result, loss = evaluated
    page = report.write(result, tmp_path / "report.html", loss=loss)
    text = page.read_text()
    assert text.count("<figure") == 4 and text.count("<svg") >= 4
    # Nothing is fetched: no external scripts, styles, images or links (SVG's xmlns is a name).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and "@import" not in text
    assert len(re.findall(r"<tr data-search=", text)) == CLASSES
    assert "ECE" in text and f"{result.calibration.ece:.4f}" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is needed to render the report (scripts/install-deps.sh)")
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    result, loss = evaluated
    page = report.write(result, tmp_path / "report.html", loss=loss)
    png, dom = render_in_chromium(tmp_path, page)
    width, height = png_size(png)
    assert (width, height) == (1400, 2400)
    assert png.stat().st_size > 100_000, "a blank page compresses to a few KB"
    assert dom.count("<figure") == 4 and dom.count("<svg") >= 4
    assert len(re.findall(r"<tr data-search=", dom)) == CLASSES
    assert 'id="class-filter"' in dom
    shutil.copy(png, tmp_path / "kept.png")


def test_report_from_the_json_focalctl_writes(evaluated, tmp_path):
    result, loss = evaluated
    source = tmp_path / "out.json"
    source.write_text(report.to_json(result, loss))
    out = tmp_path / "from_json.html"
    subprocess.run([sys.executable, "-m", "focalserve.report", str(source), "-o", str(out)], check=True,
                   capture_output=True, cwd=str(tmp_path),
                   env={"PYTHONPATH": str(report.Path(report.__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"})
    assert out.read_text() == report.write(result, tmp_path / "direct.html", loss=loss).read_text()


def test_report_without_analyses_still_lists_the_classes(client, tmp_path):
    rng = np.random.default_rng(7)
    r = client.evaluate([(rng.standard_normal((30, 4)).astype(np.float32), rng.integers(0, 4, 30))], "softmax_focal")
    text = report.write(r, tmp_path / "plain.html").read_text()
    assert "<figure" not in text and "No sweep or calibration was asked for" in text
    assert len(re.findall(r"<tr data-search=", text)) == 4


def test_the_worked_example_runs(server, tmp_path):
    """docs/evaluation.md's example end to end: training, stored batches, one Evaluate, report."""
    example = report.Path(report.__file__).resolve().parents[1] / "examples" / "evaluate_and_report.py"
    out = subprocess.run([sys.executable, str(example), "--target", server.target, "--out", str(tmp_path)],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    assert out.startswith("rows 6000, batches 6; accuracy ")
    assert len(list((tmp_path / "batches").glob("*_logits.npy"))) == 6
    assert (tmp_path / "report.html").read_text().count("<figure") == 4
    assert report.load(tmp_path / "evaluation.json")[0].sweep.gammas == [0, 0.5, 1, 2, 3, 5]
