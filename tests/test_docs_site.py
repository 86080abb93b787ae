"""The documentation site: built with its one command in smoke mode, warnings as errors, then
read in a real browser.

``python docs/build.py --site-dir TMP`` runs ``mkdocs build --strict`` with ``LVM_ZOO_SMOKE=1``;
its hook (docs/hooks.py) executes every tutorial as a notebook on the way. Headless Debian
chromium then opens each tutorial page (as tests/inference/test_report.py opens report.html: a
probe script writes what the browser rendered into the DOM, read back with ``--dump-dom``): every
promised figure is on the page and loaded (``naturalWidth > 0``), the numbers the tutorial prints
are there and say what its text promises, and the page links its executed notebook. One page is
also screenshotted. The build takes about 2 minutes on a 2-core machine; with
``LVM_ZOO_DOCS_SITE=DIR`` the tests read a site already built there instead (CI builds it once).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import chromium, headless
from tests.test_tutorials import TUTORIALS

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 1200  # seconds; the smoke build takes ~2 min on a busy 2-core machine
PACKAGE_DIRS = ("zoo/", "guides/", "inference/", "tests/", "benchmarks/")

# Written into the DOM once the page has loaded, so that --dump-dom reports what the browser
# rendered: each image of the notebook, the text of its cells' outputs, the download links.
PROBE = """<script>
window.addEventListener("load", function () {
  var notebook = document.querySelector(".jupyter-wrapper");
  var images = Array.prototype.map.call(notebook ? notebook.querySelectorAll("img") : [],
    function (img) {
      return {complete: img.complete, width: img.naturalWidth, height: img.naturalHeight};
    });
  var links = Array.prototype.map.call(document.querySelectorAll(".tutorial-run a"),
    function (a) { return {href: a.getAttribute("href"), download: a.hasAttribute("download")}; });
  var outputs = Array.prototype.map.call(
    notebook ? notebook.querySelectorAll(".jp-OutputArea-output") : [],
    function (output) { return output.innerText; });
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    title: document.title, images: images, links: links,
    box: (document.querySelector(".tutorial-run") || {}).innerText || "",
    outputs: outputs.join("\\n")});
  document.body.appendChild(probe);
});
</script>"""


def untracked_or_changed() -> set[str] | None:
    """``git status --porcelain`` lines (ignored paths excluded); None outside a git checkout."""
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return set(done.stdout.splitlines()) if done.returncode == 0 else None


@pytest.fixture(scope="module")
def site(tmp_path_factory, shared_data):
    """The site built in smoke mode into a temporary folder: (folder, build log, git status
    before, git status after). With ``LVM_ZOO_DOCS_SITE=DIR`` (CI, right after its own
    ``python docs/build.py``), the site already built there, and no log."""
    built = os.environ.get("LVM_ZOO_DOCS_SITE")
    if built:
        assert (Path(built) / "index.html").is_file(), f"LVM_ZOO_DOCS_SITE={built}: no site"
        return Path(built).resolve(), None, None, None
    for module in ("mkdocs", "material", "mkdocs_jupyter", "mkdocstrings_handlers.python"):
        try:
            __import__(module)
        except ImportError:
            pytest.fail(f"the docs test needs {module}: pip install '.[docs]'")
    site_dir = tmp_path_factory.mktemp("site")
    environment = {**os.environ, "LVM_ZOO_DATA": str(shared_data)}
    before = untracked_or_changed()
    done = subprocess.run([sys.executable, "docs/build.py", "--site-dir", str(site_dir)],
                          cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"the strict smoke build failed:\n{log[-8000:]}"
    return site_dir, log, before, untracked_or_changed()


def probe(browser: str, page: Path, profile: Path) -> dict:
    """What chromium rendered for ``page``: images, output text, download links."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = headless(browser, profile, "--virtual-time-budget=15000", "--window-size=1280,2000",
                    "--dump-dom", probed.as_uri())
    probed.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium rendered no probe (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def number(pattern: str, text: str, group: int = 1) -> float:
    found = re.search(pattern, text, re.M)
    assert found, f"the page does not show {pattern!r}"
    return float(found.group(group))


# --- what each tutorial page shows: the numbers it printed, in its cells' outputs ----------


def shows_mixtures_and_em(text: str, numbers: dict) -> None:
    em = number(r"log p\(x\) = (-\d+\.\d+) nats per point; scikit-learn: (-\d+\.\d+)", text)
    sklearn = number(r"log p\(x\) = (-\d+\.\d+) nats per point; scikit-learn: (-\d+\.\d+)",
                     text, 2)
    assert em == pytest.approx(-1.41713, abs=1e-5) and sklearn == pytest.approx(em, abs=1e-5)
    assert f"{numbers['em_final_log_likelihood']:.5f}" in text


def shows_em_to_variational_inference(text: str, numbers: dict) -> None:
    assert number(r"^EM\s+(-\d+\.\d+)", text) == pytest.approx(-1.4171, abs=1e-4)
    assert number(r"TraceEnum_ELBO \(z summed out\)\s+mean -\d+\.\d+\s+std (\S+)", text) == 0
    assert number(r"TraceEnum_ELBO \(z summed out\)\s+mean (-\d+\.\d+)", text) == pytest.approx(
        numbers["guides"]["EM"]["log_likelihood"], abs=1e-5)


def shows_ppca_and_linear_autoencoders(text: str, numbers: dict) -> None:
    gap = number(r"rotated 45°.*gap (\d+\.\d+)\s+closed form \d+\.\d+", text)
    closed = number(r"rotated 45°.*gap \d+\.\d+\s+closed form (\d+\.\d+)", text)
    assert gap == pytest.approx(0.275, abs=1e-3) and gap == pytest.approx(closed, abs=1e-6)
    assert number(r"largest principal angle to PPCA's W: (\S+) rad", text) < 0.05


def shows_deep_gaussian_lvm(text: str, numbers: dict) -> None:
    pattern = r"held-out log p\(x\), Q = 2: PPCA (-\d+\.\d+), deep model (-\d+\.\d+)"
    ppca, deep = number(pattern, text), number(pattern, text, 2)
    assert deep > ppca + 5  # the deep model beats PPCA on digits
    assert ppca == pytest.approx(numbers["held_out"]["ppca"], abs=0.01)
    assert number(r"ONE sample: largest error (\S+) nats", text) < 1e-9
    assert math.isfinite(number(r"Frey Face: \d+ epochs in [\d.]+ s, ELBO (-[\d.]+)", text))


def shows_your_own_model(text: str, numbers: dict) -> None:
    assert "ok: model 'robust-factor'" in text
    assert "constraint: site 'scale'" in text  # check names the buggy copy's site
    for guide in ("auto-normal", "amortized", "flow"):
        assert math.isfinite(number(rf"svi {guide}\s+(-\d+\.\d+)", text)), guide


def shows_scaling_up(text: str, numbers: dict) -> None:
    assert number(r"a minibatch step is (\d+)× cheaper", text) > 3
    assert number(r"B = 1000 .*log p\(x\) = (-\d+\.\d+) \(EM", text) == pytest.approx(
        numbers["em_log_likelihood"], abs=0.02)


SHOWS = {
    "01_mixtures_and_em.py": shows_mixtures_and_em,
    "02_em_to_variational_inference.py": shows_em_to_variational_inference,
    "03_ppca_and_linear_autoencoders.py": shows_ppca_and_linear_autoencoders,
    "04_deep_gaussian_lvm.py": shows_deep_gaussian_lvm,
    "05_your_own_model.py": shows_your_own_model,
    "06_scaling_up.py": shows_scaling_up,
}


# --- the tests -------------------------------------------------------------------------------


def test_every_tutorial_has_a_page_check():
    assert set(SHOWS) == set(TUTORIALS), "add the tutorial to SHOWS in this test"


def test_the_build_executes_every_tutorial_and_leaves_the_repository_clean(site):
    site_dir, log, before, after = site
    if log is not None:
        assert f"executing {len(TUTORIALS)} tutorials in smoke mode" in log
    for name in TUTORIALS:
        stem = Path(name).stem
        folder = site_dir / "tutorials" / stem
        assert (folder / "index.html").is_file(), f"no page for {name}"
        assert (folder / f"{stem}.ipynb").is_file(), f"no notebook to download for {name}"
        assert (folder / name).read_bytes() == (ROOT / "tutorials" / name).read_bytes()
        assert json.loads((folder / "numbers.json").read_text())["smoke"] is True
    if before is not None and after is not None:
        # Only what the build could have written: others may edit the packages meanwhile.
        new = {line for line in after - before if not line[3:].startswith(PACKAGE_DIRS)}
        assert new == set(), f"the docs build left files in the repository: {sorted(new)}"


def test_the_guide_pages_and_the_api_reference_are_there(site):
    site_dir = site[0]
    home = (site_dir / "index.html").read_text()
    assert "is a zoo of latent-variable models" in home  # README.md, included
    assert 'href="tutorials/"' in home
    assert "how the house is built" in (site_dir / "architecture" / "index.html").read_text()
    assert "Benchmark results" in (site_dir / "benchmarks" / "index.html").read_text()
    assert "Your own model in the zoo" in (site_dir / "your-own-model" / "index.html").read_text()
    tutorials = (site_dir / "tutorials" / "index.html").read_text()
    assert "Six tutorials follow the course" in tutorials  # tutorials/README.md
    for name in TUTORIALS:
        assert f'href="{Path(name).stem}/"' in tutorials
    api = {package: (site_dir / "api" / package / "index.html").read_text()
           for package in ("zoo", "guides", "inference")}
    for package, ids in {
        "zoo": ("zoo.registry", "zoo.registry.ModelSpec", "zoo.declare.declare", "zoo.gmm",
                "zoo.ppca", "zoo.dglvm", "zoo.datasets"),
        "guides": ("guides.registry", "guides.generic"),
        "inference": ("inference.api", "inference.api.fit", "inference.strategies",
                      "inference.fitting", "inference.data.DataRequest", "inference.evaluate",
                      "inference.svi", "inference.em", "inference.compare"),
    }.items():
        for anchor in ids:
            assert f'id="{anchor}"' in api[package], f"{anchor} missing from api/{package}"
    assert ":class:<code>" not in api["zoo"]  # Sphinx roles render as plain code


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_page_shows_its_figures_and_numbers(site, name, tmp_path):
    site_dir = site[0]
    stem = Path(name).stem
    folder = site_dir / "tutorials" / stem
    page = probe(chromium(), folder / "index.html", tmp_path / "profile")
    figures, check = TUTORIALS[name]

    title = (ROOT / "tutorials" / name).read_text().split("# # ", 1)[1].splitlines()[0]
    assert page["title"].startswith(title), page["title"]
    assert len(page["images"]) >= len(figures), f"{len(page['images'])} images on the page"
    for image in page["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert "Traceback (most recent call last)" not in page["outputs"]
    assert "smoke mode" in page["box"]

    numbers = json.loads((folder / "numbers.json").read_text())
    check(numbers)  # the numbers the executed notebook wrote keep the tutorial's promises
    SHOWS[name](page["outputs"], numbers)  # ... and the page shows them

    links = {link["href"]: link["download"] for link in page["links"]}
    assert links.get(f"{stem}.ipynb") is True and links.get(name) is True, links
    notebook = json.loads((folder / f"{stem}.ipynb").read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell["execution_count"] for cell in code), "not executed"
    pictures = sum("image/png" in output.get("data", {})
                   for cell in code for output in cell["outputs"])
    assert pictures == len(page["images"])  # the download holds the page's figures


# What no page, download or search index may hold: this machine's folders (the build's
# temporary folders, home folders, the checkout and its data), and warnings in cell outputs.
# (An example folder in a documented command, ``--out /tmp/f_bench``, is no leak; the folders
# that tools make under /tmp are: tempfile's tmp*, pytest's, the docs build's, the team's.)
MACHINE_PATH = re.compile(r"(?:/tmp/(?:tmp|pytest-of-|lvm-zoo-|team/)|/var/folders/"
                          r"|/private/var/|/home/|/Users/|/root/|/work/"
                          r"|[A-Za-z]:\\\\?Users\\)[\w.+-]")
# an output element on stderr (not the stylesheet's [data-mime-type=...] selector for it)
STDERR_BOX = re.compile(r'<[^<>]*\sdata-mime-type="application/vnd\.jupyter\.stderr"')
# what the warnings module prints: "FILE.py:LINE: SomeWarning: message"
WARNING_TEXT = re.compile(r"\.py:\d+: \w*Warning: ")
TEXT_SUFFIXES = {".html", ".ipynb", ".json", ".py", ".txt", ".xml", ".md", ".css", ".js",
                 ".svg"}


def machine_paths(text: str) -> list[str]:
    """The machine paths in ``text`` (this checkout's own folders too, wherever it lives)."""
    found = [match.group(0) for match in MACHINE_PATH.finditer(text)]
    for own in {str(ROOT), str(Path.home()), os.environ.get("LVM_ZOO_DATA", "")}:
        if len(own) > 1 and own in text:
            found.append(own)
    return found


def test_machine_paths_and_warnings_are_found_in_a_page():
    """The site test below can fail: it finds what it looks for in a page that has it."""
    page = ('<div class="jp-OutputArea-output" data-mime-type="application/vnd.jupyter.stderr">'
            '<pre>/x/_trace.py:1006: FutureWarning: `torch.jit.trace` is deprecated</pre></div>'
            '<pre>figure: /tmp/lvm-zoo-docs-abc/output/x.png</pre><p>/home/me/data</p>')
    assert machine_paths(page)[:2] == ["/tmp/lvm-zoo-d", "/home/m"]
    assert STDERR_BOX.search(page) and WARNING_TEXT.search(page)
    clean = ('<style>[data-mime-type="application/vnd.jupyter.stderr"]{padding:0}</style>'
             "<pre>figure: output/01_mixtures_and_em/gaussians.png</pre><p>$LVM_ZOO_DATA</p>"
             "<pre>| defaults | 500 | no (ConvergenceWarning) |</pre>")
    assert machine_paths(clean) == [] and not WARNING_TEXT.search(clean)
    assert not STDERR_BOX.search(clean)


def test_the_site_holds_no_machine_paths_and_no_warnings(site):
    """grep over every text file of the built site (pages, notebooks, search index, downloads):
    no temporary, home, checkout or data folder of the machine that built it; no cell output on
    stderr (the red boxes) and no warning in any tutorial's outputs."""
    site_dir = site[0]
    leaks, warnings = [], []
    for path in sorted(site_dir.rglob("*")):
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        name = str(path.relative_to(site_dir))
        leaks += [f"{name}: {found}" for found in sorted(set(machine_paths(text)))]
        if path.parent.parent.name != "tutorials":
            continue
        if path.suffix == ".html" and STDERR_BOX.search(text):
            warnings.append(f"{name}: a cell output on stderr (a red box)")
        if path.suffix == ".ipynb":  # the executed notebook the page shows: its outputs only
            for cell in json.loads(text)["cells"]:
                for output in cell.get("outputs", []):
                    shown = json.dumps(output)
                    if output.get("name") == "stderr":
                        warnings.append(f"{name}: stderr {shown[:200]}")
                    warnings += [f"{name}: {hit.group(0)}" for hit in WARNING_TEXT.finditer(shown)]
    assert leaks == [], f"machine paths in the site: {leaks[:20]}"
    assert warnings == [], f"warnings on the tutorial pages: {warnings[:20]}"


def test_screenshot_of_a_tutorial_page(site, tmp_path):
    page = site[0] / "tutorials" / "01_mixtures_and_em" / "index.html"
    shot = tmp_path / "tutorial.png"
    done = headless(chromium(), tmp_path / "profile", "--window-size=1440,6000",
                    "--hide-scrollbars", "--virtual-time-budget=15000",
                    f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000, done.stderr[-2000:]
    with open(shot, "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
