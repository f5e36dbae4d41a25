"""The HTML report: what it shows from a real compress run, escaping, errors, the CLI, the per-layer
costs it draws, and a real headless Chromium that loads it with no console errors."""
import base64
import html
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import prunekit
from prunekit import ConfigError, OutputError
from prunekit.cli import main
from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.report import REPORT, build_report, write_report
from prunekit.train import evaluate, finetune

X28 = torch.zeros(1, 1, 28, 28)
EVIL = "<script>alert('unit')</script>&\"x $\\frac{$"  # markup, and broken mathtext for matplotlib
SWEEP = {"method": "l1+global", "points": [
    {"budget": "0.7", "macs": 28_000_000, "macs_dense": 40_000_000, "params": 190_000, "params_dense": 270_000,
     "accuracy_pruned_bn": 91.5, "accuracy_finetuned": 93.25, "seconds_to_plan": 1.5},
    {"budget": "0.5", "macs": 20_000_000, "macs_dense": 40_000_000, "params": 140_000, "params_dense": 270_000,
     "accuracy_pruned_bn": 84.0, "accuracy_finetuned": 92.5, "seconds_to_plan": 1.25},
    {"budget": "0.2", "macs": 8_000_000, "macs_dense": 40_000_000, "params": 60_000, "params_dense": 270_000,
     "accuracy_pruned_bn": 41.0, "accuracy_finetuned": None, "seconds_to_plan": 1.0}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real run: ResNet-20 to half its MACs with ITPruner (per-Unit importance), evaluated, and two
    one-step fine-tuning epochs, saved the way ``prunekit compress --out`` saves it."""
    torch.manual_seed(0)
    dense = create_model("resnet20", in_channels=1).eval()
    train, test = load_dataset("synthetic", split="train"), load_dataset("synthetic", split="test")
    result = prunekit.compress(dense, X28, "flops=0.5", method="itpruner", data=train, calibration_batches=1,
                               calibration_batch_size=100)
    result.summary["model"] = "resnet20"
    result.summary["accuracy_dense"] = evaluate(dense, test)
    result.summary["accuracy_pruned_bn"] = evaluate(result.model, test)
    finetune(result, train, epochs=2, teacher=dense, batch_size=32, max_steps_per_epoch=1, progress=False)
    result.summary["accuracy_finetuned"] = evaluate(result.model, test)
    d = prunekit.save(result, tmp_path_factory.mktemp("run"))
    return d, json.loads((d / "summary.json").read_text())


@pytest.fixture(scope="module")
def evil_run(run, tmp_path_factory):
    """The same run with a unit and a layer renamed to markup, everywhere the summary names them."""
    src, summary = run
    d = tmp_path_factory.mktemp("evil")
    old = summary["units"][0]["name"]
    text = (src / "summary.json").read_text().replace(json.dumps(old), json.dumps(EVIL))
    text = text.replace(json.dumps(summary["model"]), json.dumps(EVIL + "model"))
    (d / "summary.json").write_text(text)
    return d


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "sweep.json").write_text(json.dumps(SWEEP))
    return d


def _section(page: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">.*?</section>', page, re.S)
    assert m, f"no section {anchor!r}"
    return m.group(0)


def _row(page: str, first_cell: str) -> str:
    m = re.search(rf"<tr><td>{re.escape(first_cell)}</td>.*?</tr>", page)
    assert m, f"no table row for {first_cell!r}"
    return m.group(0)


# -- what the page shows ---------------------------------------------------------------------------
def test_report_shows_every_unit_layer_and_number(run):
    d, s = run
    page = build_report(d)
    widths, layers = _section(page, "widths"), _section(page, "layers")
    for u in s["units"]:
        row = _row(widths, u["name"])
        assert row.startswith(f"<tr><td>{u['name']}</td><td>{u['width']:,}</td><td>{u['kept']:,}</td>")
        assert f"{s['signals']['importance'][u['name']]:.4g}" in row  # the method's own signal, per Unit
    for layer in s["layers"]:
        assert _row(layers, layer["name"]).startswith(
            f"<tr><td>{layer['name']}</td><td>{layer['type']}</td><td>{layer['macs_dense']:,}</td>"
            f"<td>{layer['macs_pruned']:,}</td>")
    macs = _row(page, "MACs")
    assert f"{s['macs']['dense']:,}" in macs and f"{s['macs']['pruned']:,}" in macs
    assert f"{round(s['macs']['target']):,}" in macs
    assert f"{s['params']['pruned']:,}" in _row(page, "parameters")
    for key in ("accuracy_dense", "accuracy_pruned_bn", "accuracy_finetuned"):
        assert f"<td>{s[key]:.2f}</td>" in page
    assert "pruned and fine-tuned (2 epochs, distillation)" in page
    assert f"beta</td><td>{s['signals']['beta']:.4g}" in page
    assert "<h1>prunekit report: resnet20</h1>" in page and "method itpruner (l1 + itpruner)" in page
    for section in ("budget", "accuracy", "widths", "layers", "signals", "finetune", "timing"):
        assert f'<section id="{section}">' in page
    per_unit = [k for k, v in s["signals"].items() if isinstance(v, dict) and set(v) == {u["name"] for u in s["units"]}]
    assert page.count("<svg") == 3 + len(per_unit)  # widths, layers, fine-tuning, one per per-Unit signal
    assert "sweep" not in re.findall(r'<section id="([^"]+)"', page)


def test_report_is_self_contained_and_reproducible(run):
    page = build_report(run[0])
    assert "<script" not in page.lower() and "@import" not in page
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert all(r.startswith(("data:", "#")) for r in refs), refs  # nothing fetched: no file, no network
    assert not re.search(r"url\((?!#)", page)
    assert page == build_report(run[0])  # the same run gives the same bytes (no dates, fixed chart ids)


def test_markup_in_names_is_escaped(evil_run):
    page = build_report(evil_run)
    assert EVIL not in page and "<script" not in page.lower()
    assert html.escape(EVIL) in page  # in the tables, the signal columns and the header
    assert page.count(html.escape(EVIL)) >= 3


def test_summary_without_layers_signals_or_accuracy_still_reports(run, tmp_path):
    """Run directories written before per-layer costs were recorded, or without data, still get a report."""
    _, s = run
    old = {k: v for k, v in s.items() if k in ("macs", "params", "units", "method", "budget", "binding", "budget_gap",
                                                 "within_tolerance")}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    page = build_report(tmp_path)
    assert page.count("<svg") == 1 and '<section id="widths">' in page
    for absent in ("layers", "accuracy", "signals", "finetune"):
        assert f'<section id="{absent}">' not in page


def test_sweep_directory_gets_the_accuracy_curve(sweep_dir):
    page = build_report(sweep_dir)
    assert '<section id="sweep">' in page and page.count("<svg") == 1
    assert "<h1>prunekit report: l1+global sweep</h1>" in page
    for p in SWEEP["points"]:
        row = _row(page, p["budget"])
        assert f"{p['macs']:,}" in row and f"{p['accuracy_pruned_bn']:.2f}" in row
    assert "<td>50.0%</td>" in _row(page, "0.5")  # MACs kept of dense
    assert "<td>-</td>" in _row(page, "0.2")  # no fine-tuned accuracy


# -- errors ---------------------------------------------------------------------------------------------
def test_directory_without_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="has no summary.json or sweep.json"):
        build_report(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_report(tmp_path / "missing")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        write_report(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        write_report(tmp_path)
    (tmp_path / "summary.json").unlink()
    (tmp_path / "sweep.json").write_text('{"method": "l1"}')
    with pytest.raises(ConfigError, match="no list of points"):
        write_report(tmp_path)
    assert not (tmp_path / REPORT).exists()


def test_write_report_is_atomic_and_refuses_a_directory(run, tmp_path):
    d, _ = run
    dest = write_report(d, tmp_path / "sub" / "r.html")
    assert dest.read_text().startswith("<!doctype html>") and dest.read_text().isascii()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["r.html"]  # no temp file left behind
    with pytest.raises(OutputError, match="is a directory"):
        write_report(d, tmp_path)


# -- CLI ------------------------------------------------------------------------------------------------
def test_cli_report(run, sweep_dir, tmp_path, capsys):
    d, _ = run
    assert main(["report", str(d)]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {d / REPORT}"
    assert (d / REPORT).is_file()
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "s.html"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"report": str(tmp_path / "s.html")}
    for argv in ([str(tmp_path / "empty")], [str(d), "--out", str(tmp_path)]):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert main(["report", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("prunekit: error: ") and "Traceback" not in err


def test_cli_compress_writes_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--model", "resnet20", "--in-channels", "1", "--input-size", "28", "--budget", "flops=0.5",
                 "--out", str(out), "--report"])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith(f"report: {out / REPORT}")
    page = (out / REPORT).read_text()
    assert "<h1>prunekit report: resnet20</h1>" in page and "budget flops=0.5" in page


# -- per-layer costs (recorded by compress for the report) -------------------------------------------
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_per_layer_costs_sum_to_the_totals_and_match_the_pruned_model(name):
    torch.manual_seed(0)
    result = prunekit.compress(create_model(name, in_channels=1).eval(), X28, "flops=0.4", method="l1+global")
    s, model = result.summary, result.model
    for kind in ("macs", "params"):
        for when in ("dense", "pruned"):
            assert sum(layer[f"{kind}_{when}"] for layer in s["layers"]) == s[kind][when], (kind, when)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(X28)
    measured = fc.get_flop_counts()
    prefix = type(model).__name__
    for layer in s["layers"]:
        module = model.get_submodule(layer["name"])
        assert layer["type"] == type(module).__name__
        assert layer["params_pruned"] == sum(p.numel() for p in module.parameters(recurse=False))
        assert layer["macs_pruned"] == sum(measured.get(f"{prefix}.{layer['name']}", {}).values()) // 2, layer
    assert any(layer["macs_pruned"] < layer["macs_dense"] for layer in s["layers"])


# -- a real browser -------------------------------------------------------------------------------------
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)

CHARTS_JS = """return [...document.querySelectorAll('svg')].map(s => {
  const r = s.getBoundingClientRect();
  return {w: r.width, h: r.height, marks: s.querySelectorAll('path, rect, use').length,
          text: s.textContent};
});"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed: apt-get install -y chromium chromium-driver (scripts/setup.sh does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromium is installed but chromedriver is not: apt-get install -y chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # a Service: Selenium Manager stays off
    yield driver
    driver.quit()


def _load(driver, page: Path) -> list[dict]:
    """Open the page; return the console messages at SEVERE level (errors)."""
    driver.get(page.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _screenshot(driver, dest: Path) -> np.ndarray:
    """The whole page, not just the first screen, through the DevTools protocol."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": clip})
    dest.write_bytes(base64.b64decode(shot["data"]))
    from matplotlib.image import imread
    return imread(dest)


def test_report_in_headless_chromium(run, sweep_dir, evil_run, browser, tmp_path):
    t0 = time.perf_counter()
    d, s = run
    page = write_report(d)
    assert _load(browser, page) == []
    charts = browser.execute_script(CHARTS_JS)
    assert len(charts) == build_report(d).count("<svg") >= 3
    for c in charts:
        assert c["w"] > 300 and c["h"] > 150 and c["marks"] > 10, c  # drawn, with bars/lines and axes
    assert all(u["name"] in charts[0]["text"] for u in s["units"])  # the widths chart labels every Unit
    ids = browser.execute_script("return [...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids))  # the inline SVGs do not clash
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shots = Path(os.environ.get("PRUNEKIT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    image = _screenshot(browser, shots / "report.png")
    assert image.shape[0] > 1500 and image.shape[1] >= 1000
    rgb = (image[..., :3] * 255).astype(np.uint32)
    colors = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert rgb.std() > 10 and len(colors) > 50  # not blank: text, bars and lines in many shades

    assert _load(browser, write_report(sweep_dir)) == []
    sweep = browser.execute_script(CHARTS_JS)
    assert len(sweep) == 1 and all(p["budget"] in sweep[0]["text"] for p in SWEEP["points"])
    _screenshot(browser, shots / "sweep.png")

    assert _load(browser, write_report(evil_run)) == []
    assert browser.execute_script("return document.scripts.length") == 0
    assert EVIL in browser.execute_script("return document.body.innerText")  # shown as text, not run
    print(f"\nChromium checks of 3 reports: {time.perf_counter() - t0:.1f} s; screenshots in {shots}")
