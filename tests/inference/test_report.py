"""report.html in a real browser: headless Debian chromium loads the page offline, shows the
summary table and every image (each <img> complete with a natural width above 0)."""

import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from inference import api
from inference.compare import report as report_module
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
  var promised = Array.prototype.map.call(
    document.querySelectorAll("#contents li"), function (li) { return li.dataset.figure; });
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images: images, summary_rows: rows,
                                      promised: promised, title: document.title});
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


def _rendered(report, tmp_path) -> tuple[dict, str]:
    """What headless chromium rendered of the page: the probe's JSON and the DOM."""
    probed = report.with_name("probed.html")
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    done = headless(chromium(), tmp_path / "profile", "--virtual-time-budget=10000",
                    "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium rendered no probe (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1))), done.stdout


def _every_promised_figure_loaded(page: dict) -> None:
    """Each figure the page's contents promise is an image the browser loaded."""
    loaded = {image["alt"] for image in page["images"]
              if image["complete"] and image["width"] > 0 and image["height"] > 0}
    assert page["promised"] and set(page["promised"]) <= loaded, (page["promised"], loaded)


def test_report_renders_with_every_image_in_headless_chromium(report, tmp_path):
    page, dom = _rendered(report, tmp_path)
    assert page["title"].startswith("lvm-zoo compare toy")
    assert page["summary_rows"] == 1  # one strategy: svi amortized, two seeds
    assert {"curves", "yardstick", "posterior", "forest"} <= set(page["promised"])
    _every_promised_figure_loaded(page)
    assert "±" in dom  # the table shows mean ± standard deviation

    shot = tmp_path / "report.png"
    done = headless(chromium(), tmp_path / "profile2", "--window-size=1200,2000",
                    f"--screenshot={shot}", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]


def test_a_promised_figure_that_is_missing_fails_the_check(report, tmp_path):
    broken = report.with_name("broken.html")
    text = report.read_text()
    start = text.index('<img src="data:image/png;base64,')  # the first figure's image, gone
    broken.write_text(text[:start] + text[text.index(">", start) + 1:])
    page, _ = _rendered(broken, tmp_path)
    with pytest.raises(AssertionError):
        _every_promised_figure_loaded(page)


def test_a_bayesian_model_with_nuts_gets_its_global_latents_figure(tmp_path):
    # a declared model with a global mean and local offsets, NUTS as the reference: the
    # report adds the forest plot of the global latent (every guide and NUTS) and its
    # captions speak of what is drawn (no mixture labels, no ARI)
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n" + "\n".join(f"{0.3 * ((i * 7) % 11 - 5):.2f}" for i in range(24)))
    model = str(Path(__file__).resolve().parents[1] / "data" / "bayes_models.py") \
        + ":normal-normal-local"
    api.compare(model, data=str(rows), reference="nuts", nuts_samples=60, nuts_warmup=60,
                nuts_chains=2, steps=60, gap_rows=4, draws=20, out=tmp_path / "out",
                strategies=["svi-auto-normal", "svi-amortized"])
    report = tmp_path / "out" / "report.html"
    page, dom = _rendered(report, tmp_path)
    assert {"global", "yardstick"} <= set(page["promised"])
    _every_promised_figure_loaded(page)
    text = re.sub(r'src="data:[^"]*"', "", report.read_text())  # the words, not the images
    assert "global latents (mu)" in text and "nuts" in text
    assert "ARI" not in text
    # 2 chains of 60 draws cannot reach ESS 400: the page says so beside the distances to NUTS
    assert "largest R-hat" in text and "misses the targets" in text
    assert "posterior-nuts.nc" in text


def test_the_notes_say_why_a_number_is_missing_and_what_the_summaries_hold():
    mean_field = SimpleNamespace(per_datapoint=True)
    spec = SimpleNamespace(guides={"mean-field": mean_field, "amortized": SimpleNamespace()},
                           global_sites=(), local_sites=("z",))
    records = [{"strategy": "svi mean-field", "guide": "mean-field", "n_test": 10,
                "test_log_likelihood": None, "inference": "svi"},
               {"strategy": "svi amortized", "guide": "amortized", "n_test": 10,
                "test_log_likelihood": -3.0, "inference": "svi"}]
    note = report_module._held_out_note(spec, records)
    assert "svi mean-field" in note and "free parameters" in note and "amortized" not in note
    assert report_module._held_out_note(spec, records[1:]) == ""  # nothing missing: no note
    no_test = [{**records[0], "n_test": 0}]
    assert report_module._held_out_note(spec, no_test) == ""  # no test rows: "-" is plain
    assert "global" not in report_module._summaries_note(spec, records, {})
    bayes = SimpleNamespace(global_sites=("mu", "tau"), local_sites=("theta",))
    assert "global latents (mu, tau)" in report_module._summaries_note(bayes, records, {})
    baseline = {"strategy": "ppca em", "guide": None, "inference": "em"}  # no summary of its own
    assert "ppca em" in report_module._summaries_note(spec, [*records, baseline], {})
    assert "ppca em" not in report_module._summaries_note(
        spec, [*records, baseline], {}, {"svi mean-field": None})


def test_every_fit_table_has_the_summary_tables_mixture_columns():
    record = {"strategy": "em", "seed": 0, "train_log_likelihood": -1.0, "ari": 1.0,
              "matched_param_error": 0.25, "converged": True}
    cells = report_module._record_cells([record])
    assert cells[1][cells[0].index("matched |Δθ|")] == "0.2500"

