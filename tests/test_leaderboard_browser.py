"""The leaderboard page in a real browser: Debian's headless Chromium driven by selenium
through chromium-driver, opened from file:// (no server). Skips only when Chromium or its
driver is not installed (`apt-get install chromium chromium-driver`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_leaderboard import ENTRIES, XSS, make_record, probe_metrics, write

from mch.leaderboard import aggregate, load_records
from mch.site import build_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)


def _gmi(attr, bits, acc_adapter, acc_final, ci=(0.0, 0.0)):
    return [
        {
            "metric": "gmi_bits",
            "value": bits,
            "stage": "llm.final",
            "attribute": attr,
            "ci_low": bits + ci[0],
            "ci_high": bits + ci[1],
            "n": 400,
        },
        {"metric": "accessibility", "value": acc_adapter, "stage": "adapter", "attribute": attr},
        {"metric": "accessibility", "value": acc_final, "stage": "llm.final", "attribute": attr},
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site from the committed reported entries plus measured fixture records (two models,
    probe + gmi) and one whose model name is a script tag."""
    res = tmp_path_factory.mktemp("results")
    accs = {
        "content": [0.97, 0.96, 0.95, 0.95, 0.94, 0.93, 0.93],
        "speaker": [0.92, 0.88, 0.80, 0.71, 0.60, 0.52, 0.45],
        "emotion": [0.81, 0.77, 0.70, 0.62, 0.55, 0.49, 0.41],
    }
    metrics = []
    for attr, a in accs.items():
        metrics += probe_metrics(attr, a, [2.0 * x - 0.2 for x in a], 0.25 if attr != "content" else 0.125)
    write(res, make_record(model="toy", metrics=metrics))
    write(
        res,
        make_record(
            model="toy",
            analysis="gmi",
            metrics=_gmi("content", 1.8, 0.95, 0.98, (-0.1, 0.1))
            + _gmi("speaker", 0.01, 0.01, 0.02, (-0.01, 0.02))
            + _gmi("emotion", 0.02, 0.02, 0.05),
        ),
    )
    write(
        res,
        make_record(
            model="tiny-llava-random",
            modality="vision",
            dataset="toy-vision",
            note="random-weight smoke run, not science",
            metrics=probe_metrics(
                "object_count", [0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3], [0.5, 0.4, 0.3, 0.2, 0.2, 0.1, 0.1], 0.2
            ),
        ),
    )
    write(res, make_record(model=XSS, metrics=probe_metrics("speaker", [0.5] * 7, [0.3] * 7, 0.25)))
    # near chance: I_probe below 0 (the I_probe chart's axis must reach below 0, ticks stay round)
    write(
        res,
        make_record(
            model="toy",
            checkpoint="/data/ckpts/run-2026-11/toy-retrained",
            revision=None,
            metrics=probe_metrics(
                "speaker",
                [0.27, 0.26, 0.25, 0.24, 0.25, 0.26, 0.25],
                [-0.02, -0.31, -0.44, -0.12, -0.05, -0.002, -0.001],
                0.25,
            ),
        ),
    )
    # a random-weight checkpoint: labelled smoke, never "measured"
    write(
        res,
        make_record(
            model="llava",
            modality="vision",
            dataset="coco",
            smoke=True,
            checkpoint="/tmp/pytest-of-root/pytest-3/tiny0/llava",
            revision=None,
            metrics=probe_metrics("object_count", [0.3] * 7, [0.01] * 7, 0.25),
        ),
    )
    loaded, warnings = load_records([res, ENTRIES])
    assert not warnings
    rows = aggregate(loaded)
    out = tmp_path_factory.mktemp("site")
    page = build_site(rows, out)
    return page, rows


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium-manager reach the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1000",
        "--allow-file-access-from-files",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    # Any dialog the page opens (an escaped script would) is recorded here instead of blocking.
    drv.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": (
                "window.__dialogs = [];"
                "['alert','confirm','prompt'].forEach(function(k){window[k]=function(m){window.__dialogs.push(String(m));};});"
            )
        },
    )
    yield drv
    drv.quit()


def visible_rows(drv):
    from selenium.webdriver.common.by import By

    return [tr for tr in drv.find_elements(By.CSS_SELECTOR, "#lb tbody tr") if tr.is_displayed()]


def column_index(drv, key):
    from selenium.webdriver.common.by import By

    ths = drv.find_elements(By.CSS_SELECTOR, "#lb thead th")
    return next(i for i, th in enumerate(ths) if th.get_attribute("data-key") == key)


def test_page_in_headless_chromium(site, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page, rows = site
    driver.get(page.as_uri())
    driver.find_element(By.ID, "lb")

    # Every entry renders, measured and reported side by side and marked as such.
    trs = driver.find_elements(By.CSS_SELECTOR, "#lb tbody tr")
    assert len(trs) == len(rows)
    assert {tr.get_attribute("data-id") for tr in trs} == {r["id"] for r in rows}
    kinds = {tr.get_attribute("data-kind") for tr in trs}
    assert kinds == {"measured", "reported"}
    for tr in trs:
        badge = tr.find_element(By.CSS_SELECTOR, ".badge")
        want = "smoke" if tr.get_attribute("data-smoke") == "1" else tr.get_attribute("data-kind")
        assert badge.text.startswith(want)
    assert sum(tr.get_attribute("data-smoke") == "1" for tr in trs) == 1

    # Runs of different checkpoints of one model are different rows, each naming its checkpoint.
    toy_speaker = [
        tr
        for tr in trs
        if tr.find_element(By.CSS_SELECTOR, "td.model .name").text == "toy"
        and tr.get_attribute("data-attribute") == "speaker"
    ]
    ckpts = {tr.find_element(By.CSS_SELECTOR, "td.model .ckpt").text for tr in toy_speaker}
    assert {"builtin:toy@r1", "…/run-2026-11/toy-retrained"} <= ckpts, ckpts

    # A script-tag model name is text, and nothing ran.
    names = [tr.find_element(By.CSS_SELECTOR, "td.model .name").text for tr in trs]
    assert XSS in names
    assert driver.execute_script("return window.__dialogs") == []

    # Clicking a header sorts (numbers descending first, empty cells last), again reverses.
    idx = column_index(driver, "acc_final")
    header = driver.find_elements(By.CSS_SELECTOR, "#lb thead th")[idx]
    header.find_element(By.TAG_NAME, "button").click()
    vals = [tr.find_elements(By.TAG_NAME, "td")[idx].get_attribute("data-v") for tr in visible_rows(driver)]
    nums = [float(v) for v in vals if v]
    assert nums == sorted(nums, reverse=True) and len(nums) >= 4
    assert all(v == "" for v in vals[len(nums) :])
    assert header.get_attribute("aria-sort") == "descending"
    header.find_element(By.TAG_NAME, "button").click()
    vals = [tr.find_elements(By.TAG_NAME, "td")[idx].get_attribute("data-v") for tr in visible_rows(driver)]
    assert [float(v) for v in vals if v] == sorted(nums)
    assert header.get_attribute("aria-sort") == "ascending"

    # A filter hides rows; the count follows.
    Select(driver.find_element(By.ID, "f-modality")).select_by_value("vision")
    shown = visible_rows(driver)
    expected = [r for r in rows if r["modality"] == "vision"]
    assert 0 < len(shown) == len(expected) < len(rows)
    assert {tr.get_attribute("data-modality") for tr in shown} == {"vision"}
    assert driver.find_element(By.ID, "count").text == f"{len(expected)} of {len(rows)} rows"
    Select(driver.find_element(By.ID, "f-modality")).select_by_value("")
    Select(driver.find_element(By.ID, "f-kind")).select_by_value("reported")
    assert {tr.get_attribute("data-kind") for tr in visible_rows(driver)} == {"reported"}
    Select(driver.find_element(By.ID, "f-kind")).select_by_value("")
    assert len(visible_rows(driver)) == len(rows)

    # The per-layer plot is visible and draws the curves of the ticked rows.
    chart = driver.find_element(By.ID, "chart-acc")
    assert chart.is_displayed() and chart.size["width"] > 300 and chart.size["height"] > 150
    lines = chart.find_elements(By.TAG_NAME, "polyline")
    assert len(lines) >= 2  # first measured and first reported row are plotted on load
    toy = next(
        tr
        for tr in visible_rows(driver)
        if tr.find_element(By.CSS_SELECTOR, "td.model .name").text == "toy"
        and tr.find_element(By.CSS_SELECTOR, "td.model .ckpt").text == "builtin:toy@r1"
        and tr.get_attribute("data-attribute") == "speaker"
    )
    box = toy.find_element(By.CSS_SELECTOR, "input.plot")
    if box.is_selected():
        box.click()
        assert len(chart.find_elements(By.TAG_NAME, "polyline")) == len(lines) - 1
    toy.find_elements(By.TAG_NAME, "td")[1].click()  # a row click plots it and shows its details
    assert box.is_selected()
    line = chart.find_element(By.CSS_SELECTOR, f'polyline[data-row="{toy.get_attribute("data-id")}"]')
    pts = line.get_attribute("points").split()
    assert len(pts) == 7  # encoder, adapter, llm.0-3, llm.final
    assert driver.find_element(By.ID, "chart-ip").find_elements(By.TAG_NAME, "polyline")
    detail = driver.find_element(By.ID, "detail")
    assert detail.is_displayed()
    assert driver.find_element(By.ID, "detail-title").text.startswith("toy (builtin:toy@r1) · toy · speaker")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#detail-metrics tbody tr")) > 10

    # Reported rows open their source.
    rep = next(tr for tr in visible_rows(driver) if tr.get_attribute("data-kind") == "reported")
    rep.find_elements(By.TAG_NAME, "td")[1].click()
    assert "arXiv 2602.23136" in detail.text

    # No console errors (CSP violations and script errors are logged as SEVERE).
    logs = driver.get_log("browser")
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == [], logs

    # A screenshot of the whole page as a test artefact.
    toy.find_elements(By.TAG_NAME, "td")[1].click()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1500, min(height + 40, 6000))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "leaderboard.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    (ARTIFACTS / "leaderboard-console.json").write_text(json.dumps(logs, indent=1))


def tick_values(driver, chart_id):
    from selenium.webdriver.common.by import By

    return [float(t.text) for t in driver.find_elements(By.CSS_SELECTOR, f"#{chart_id} text.tick")]


def is_round_step(step):
    """1, 2, 2.5 or 5 times a power of ten."""
    import math

    mant = step / 10 ** math.floor(math.log10(step))
    return any(abs(mant - m) < 1e-9 for m in (1, 2, 2.5, 5, 10))


def test_page_is_responsive_with_round_ticks_a_legend_and_a_linked_science_md(site, driver):
    """At 1400 px every column is reached without scrolling sideways; at 390 px (a phone) the
    rows are cards whose numbers show and both charts fit. The axes' ticks are round (also
    below 0), unusual values have a legend, and the footer links the definitions."""
    from selenium.webdriver.common.by import By

    page, rows = site
    driver.set_window_size(1400, 1000)
    driver.get(page.as_uri())
    wrap = driver.find_element(By.CSS_SELECTOR, ".table-wrap")
    assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth + 1", wrap)
    width = driver.execute_script("return window.innerWidth")
    for th in driver.find_elements(By.CSS_SELECTOR, "#lb thead th"):
        if th.is_displayed():
            assert th.rect["x"] + th.rect["width"] <= width + 1, th.text
    keys = [
        th.get_attribute("data-key")
        for th in driver.find_elements(By.CSS_SELECTOR, "#lb thead th")
        if th.is_displayed()
    ]
    assert {"model", "acc_final", "gmi", "access_final", "ablation_ms"} <= set(keys)

    # Ticks: round steps from 0 (accuracy) and below 0 when a plotted I_probe is negative.
    neg = next(
        tr
        for tr in visible_rows(driver)
        if tr.find_element(By.CSS_SELECTOR, "td.model .ckpt").text == "…/run-2026-11/toy-retrained"
    )
    neg.find_elements(By.TAG_NAME, "td")[1].click()
    for chart in ("chart-acc", "chart-ip"):
        ticks = tick_values(driver, chart)
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1 and is_round_step(steps.pop()), (chart, ticks)
        assert 0.0 in ticks
    ip = tick_values(driver, "chart-ip")
    assert -0.44 - (ip[1] - ip[0]) < min(ip) <= -0.44, ip  # the axis reaches the lowest point, within a step
    assert tick_values(driver, "chart-acc") == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])

    # A legend for the values that need one; the definitions are a link that resolves.
    howto = driver.find_element(By.ID, "howto").text
    assert "Retained %" in howto and "−0.00" in howto and "Access." in howto
    link = driver.find_element(By.CSS_SELECTOR, "footer a")
    assert link.text == "science.md" and link.get_attribute("href").endswith("/science.md")
    assert (page.parent / "science.md").is_file()

    # A phone: no sideways scrolling, numbers visible in cards, both charts whole.
    driver.set_window_size(390, 844)
    driver.get(page.as_uri())
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 391
    width = driver.execute_script("return window.innerWidth")
    nums = [td for td in driver.find_elements(By.CSS_SELECTOR, "#lb td.num:not(.none)")]
    assert nums and all(td.is_displayed() for td in nums)
    first = nums[0]
    driver.execute_script("arguments[0].scrollIntoView()", first)
    assert first.rect["x"] >= 0 and first.rect["x"] + first.rect["width"] <= width + 1
    assert any(c.isdigit() for c in first.text)
    for chart in ("chart-acc", "chart-ip"):
        svg = driver.find_element(By.ID, chart)
        assert svg.is_displayed() and svg.size["width"] > 250
        assert svg.rect["x"] >= 0 and svg.rect["x"] + svg.rect["width"] <= width + 1
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(390, min(height + 40, 12000))
    shot = ARTIFACTS / "leaderboard-390px.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    driver.set_window_size(1500, 1000)
