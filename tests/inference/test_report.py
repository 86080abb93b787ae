"""report.html in a real browser: headless Debian chromium loads the page offline, shows the
summary table and every image (each <img> complete with a natural width above 0)."""

import html
import json
import re

import pytest

from inference import api
from inference.data import DataRequest
from tests.browser import chromium, headless
from tests.toy import TOY

# Written into the DOM once the page has loaded, so that --dump-dom reports what the browser
# actually rendered: every image's state and the tables.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth,
            height: img.naturalHeight};
  });
  var rows = document.querySelectorAll("#summary tbody tr").length;
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images: images, summary_rows: rows,
                                      title: document.title});
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    api.compare(TOY, data=DataRequest(standardize=True), steps=30, seeds=2, gap_rows=8,
                draws=20, out=out)
    return out / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources
    assert "http://" not in text and "https://" not in text  # nothing to fetch: opens offline


def test_report_renders_with_every_image_in_headless_chromium(report, tmp_path):
    browser = chromium()
    probed = report.with_name("probed.html")
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    done = headless(browser, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                    probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium rendered no probe (exit {done.returncode}): {done.stderr[-2000:]}"
    page = json.loads(html.unescape(found.group(1)))
    assert page["title"].startswith("lvm-zoo compare toy")
    assert page["summary_rows"] == 1  # one strategy: svi amortized, two seeds
    names = {image["alt"] for image in page["images"]}
    assert {"curves", "yardstick", "posterior", "forest"} <= names
    for image in page["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert "±" in done.stdout  # the table shows mean ± standard deviation

    shot = tmp_path / "report.png"
    done = headless(browser, tmp_path / "profile2", "--window-size=1200,2000",
                    f"--screenshot={shot}", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
