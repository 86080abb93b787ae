"""MkDocs hooks (``hooks:`` in mkdocs.yml): the tutorials, executed on every build.

- ``on_config``: the snippets extension includes README.md, ARCHITECTURE.md, ... from the
  repository root, whatever the working directory.
- ``on_files``: every ``tutorials/NN_*.py`` (jupytext percent format) is executed as a
  notebook, several at once (one process each, ``jupytext --execute``), with its working
  directory ``tutorials/``, ``LVM_ZOO_SMOKE`` as the build's environment has it, and its
  figures and ``numbers.json`` written to a temporary folder (``$LVM_ZOO_TUTORIAL_OUT``), never
  into the repository. The executed notebooks join the site as ``tutorials/NN_*.ipynb`` pages
  (mkdocs-jupyter renders them with their outputs; ``include_source`` copies each .ipynb beside
  its page), with the ``.py`` script and ``numbers.json`` beside them as downloads. A tutorial
  that raises fails the build with the cell's traceback. The ``Out[n]: PosixPath(...)`` that a
  cell ending in ``show(fig, name)`` displays is dropped (the figure above it stays); the
  outputs name the reader's folders, not this machine's (``output/NN_name/...``,
  ``$LVM_ZOO_DATA``), and a warning on stderr or a machine path left in any output fails the
  build (``clean_outputs``; tests/test_docs_site.py greps the built site for the same).
- ``on_page_content``: a box at the top of each tutorial page says how it was executed (smoke
  or full mode, seconds) and links the downloads; MathJax (the tutorials have no TeX) is dropped
  so that the pages load nothing from the network; Sphinx roles in docstrings
  (``:class:`X```) render as plain code on the API pages.

Environment: ``LVM_ZOO_SMOKE=1`` (smoke mode, as CI builds), ``LVM_ZOO_DATA`` (default
``../shared/data`` beside the checkout when it exists: Frey Face for tutorial 4),
``LVM_ZOO_DOCS_WORKERS`` (tutorials executed at once; default: the CPU count, at most 6).
"""

from __future__ import annotations

import html
import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.tutorials")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
SHARED_DATA = ROOT.parent / "shared" / "data"
TIMEOUT = 1800  # seconds for one tutorial (full mode with MNIST takes ~4 min on a busy CPU)
# Rough smoke-mode seconds, to start the slowest first; a new tutorial starts before these.
SECONDS = {"04_deep_gaussian_lvm": 55, "05_your_own_model": 30,
           "02_em_to_variational_inference": 30, "03_ppca_and_linear_autoencoders": 25,
           "06_scaling_up": 25, "01_mixtures_and_em": 20}
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):(<code>)~?")
PATH_REPR = re.compile(r"(?:Posix|Windows)Path\(")
# What no page may show: this machine's folders, and warnings (tests/test_docs_site.py greps
# the built site for the same).
MACHINE_PATH = re.compile(r"(?:/tmp/|/var/folders/|/home/|/Users/|/root/|/work/|/private/"
                          r"|[A-Za-z]:\\Users\\)[^\s'\"<>]*")
WARNING = re.compile(r"\b\w*Warning\b|\bwarnings\.warn\(")
MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)

_state: dict = {}


def smoke() -> bool:
    return os.environ.get("LVM_ZOO_SMOKE", "0") not in ("", "0")


def tutorial_sources() -> list[Path]:
    return sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def on_config(config):
    snippets = config.mdx_configs.setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(ROOT)]
    return config


def execute(source: Path, staging: Path) -> tuple[Path, Path, float]:
    """Run ``source`` as a notebook; (executed .ipynb, its output folder, seconds)."""
    notebook = staging / "tutorials" / f"{source.stem}.ipynb"
    out = staging / "output" / source.stem
    out.mkdir(parents=True)
    notebook.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "LVM_ZOO_TUTORIAL_OUT": str(out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    environment.setdefault("OMP_NUM_THREADS", "1")  # small models: one thread is fastest
    environment.setdefault("MKL_NUM_THREADS", "1")
    if "LVM_ZOO_DATA" not in environment and SHARED_DATA.is_dir():
        environment["LVM_ZOO_DATA"] = str(SHARED_DATA)
    environment.pop("MPLBACKEND", None)  # the kernel's inline backend
    # tqdm.auto warns in a kernel without ipywidgets (the page needs no progress bars); torch
    # deprecates torch.jit.trace, which Pyro's JitTrace_ELBO (on for dglvm) calls: neither is
    # about the tutorial, and a warning left on a page fails the build (check_outputs).
    environment["PYTHONWARNINGS"] = ",".join(filter(None, [
        environment.get("PYTHONWARNINGS"), "ignore:IProgress not found",
        "ignore:`torch.jit.trace` is deprecated:FutureWarning"]))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jupytext", "--to", "ipynb", "--execute",
             "--run-path", str(TUTORIALS), "--output", str(notebook), str(source)],
            env=environment, cwd=TUTORIALS, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as error:
        raise PluginError(f"tutorial {source.name} ran past {TIMEOUT} s") from error
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not notebook.is_file():
        raise PluginError(f"tutorial {source.name} failed after {seconds:.0f} s "
                          f"(exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                          f"{done.stderr[-6000:]}")
    clean_outputs(notebook, {
        str(out): f"output/{source.stem}",  # where the script writes them by default
        environment.get("LVM_ZOO_DATA", ""): "$LVM_ZOO_DATA", str(ROOT): "lvm-zoo"})
    return notebook, out, seconds


def drop_path_results(data: dict) -> None:
    """Drop the ``Out[n]: PosixPath('/tmp/...')`` results of cells that end with ``show(...)``
    (it returns the saved figure's path); the figure and its ``figure:`` line stay."""
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [output for output in cell["outputs"] if not (
                output["output_type"] == "execute_result" and set(output["data"]) == {"text/plain"}
                and PATH_REPR.match("".join(output["data"]["text/plain"])))]


def _texts(output: dict) -> list[tuple[dict, str]]:
    """(holder, key) of every text of one cell output: a stream's text, a result's text/plain."""
    if output["output_type"] == "stream":
        return [(output, "text")]
    if output["output_type"] in ("execute_result", "display_data"):
        return [(output["data"], kind) for kind in output["data"] if kind.startswith("text/")]
    return []


def clean_outputs(notebook: Path, replacements: dict[str, str]) -> None:
    """Make the executed notebook fit to publish: drop path results (:func:`drop_path_results`),
    write this machine's folders in the outputs as the reader's (``replacements``: the output
    folder as ``output/NN_name``, the data folder as ``$LVM_ZOO_DATA``, the checkout as
    ``lvm-zoo``), and fail on what would still show: a warning on stderr, or a machine path
    (:data:`MACHINE_PATH`)."""
    data = json.loads(notebook.read_text(encoding="utf-8"))
    drop_path_results(data)
    order = sorted((k for k in replacements if len(k) > 1), key=len, reverse=True)
    problems = []
    for number, cell in enumerate(data["cells"]):
        for output in cell.get("outputs", []):
            for holder, key in _texts(output):
                text = "".join(holder[key]) if isinstance(holder[key], list) else holder[key]
                for old in order:
                    text = text.replace(old, replacements[old])
                holder[key] = text.splitlines(keepends=True)
                if output.get("name") == "stderr" and WARNING.search(text):
                    problems.append(f"cell {number}: a warning on stderr: {text.strip()[:300]}")
                found = MACHINE_PATH.search(text)
                if found:
                    problems.append(f"cell {number}: a machine path {found.group(0)!r}")
    if problems:
        raise PluginError(f"{notebook.stem} would show on its page:\n" + "\n".join(problems))
    notebook.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@event_priority(50)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    sources = tutorial_sources()
    if not sources:
        raise PluginError(f"no tutorials in {TUTORIALS}")
    staging = Path(tempfile.mkdtemp(prefix="lvm-zoo-docs-"))
    _state.update(staging=staging, pages={})
    workers = int(os.environ.get("LVM_ZOO_DOCS_WORKERS") or min(6, os.cpu_count() or 1))
    order = sorted(sources, key=lambda path: -SECONDS.get(path.stem, 1e9))
    mode = "smoke" if smoke() else "full"
    log.info("executing %d tutorials in %s mode, %d at a time", len(sources), mode, workers)
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = {path: pool.submit(execute, path, staging) for path in order}
        results = {path: future.result() for path, future in futures.items()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a failure: start no more tutorials
    log.info("tutorials executed in %.0f s", time.perf_counter() - start)

    page_dir = (lambda stem: f"tutorials/{stem}") if config.use_directory_urls else (
        lambda stem: "tutorials")
    for source in sources:
        notebook, out, seconds = results[source]
        log.info("  %s: %.0f s", source.name, seconds)
        # A real source folder (not File.generated): mkdocs-jupyter reads src_dir.
        files.append(File(f"tutorials/{notebook.name}", src_dir=str(staging),
                          dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls))
        downloads = {"script": (f"{source.name}", source)}
        if (out / "numbers.json").is_file():
            name = "numbers.json" if config.use_directory_urls else f"{source.stem}.numbers.json"
            downloads["numbers"] = (name, out / "numbers.json")
        for href, path in downloads.values():
            files.append(File.generated(config, posixpath.join(page_dir(source.stem), href),
                                        abs_src_path=str(path)))
        _state["pages"][f"tutorials/{notebook.name}"] = {
            "stem": source.stem, "seconds": seconds, "notebook": notebook.name,
            **{kind: href for kind, (href, _) in downloads.items()}}
    return files


def on_page_content(content, page, config, files):
    content = MATHJAX.sub("", content)
    info = _state.get("pages", {}).get(page.file.src_uri)
    if info is None:
        return ROLE.sub(r"\1", content) if page.file.src_uri.startswith("api/") else content
    if smoke():
        mode = ("in <strong>smoke mode</strong> (<code>LVM_ZOO_SMOKE=1</code>: fewer steps, "
                "epochs and samples, smaller N): its figures are rougher, and some numbers "
                "differ from those of the full run that the text describes")
    else:
        mode = "in full mode"
    links = [f'<a href="{html.escape(info["notebook"])}" download>the notebook with its '
             f'outputs (.ipynb)</a>',
             f'<a href="{html.escape(info["script"])}" download>the jupytext script (.py)</a>']
    if "numbers" in info:
        links.append(f'<a href="{html.escape(info["numbers"])}">numbers.json</a>')
    box = (f'<div class="admonition info tutorial-run"><p class="admonition-title">Executed '
           f'when this site was built</p><p>This page is <code>tutorials/{info["stem"]}.py'
           f'</code>, run as a notebook in {info["seconds"]:.0f} s {mode}.</p><p>Download '
           f'{", ".join(links[:-1])} or {links[-1]}.</p></div>')
    return box + content


def _clean() -> None:
    staging = _state.pop("staging", None)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def on_post_build(config):
    _clean()


def on_build_error(error):
    _clean()


def on_shutdown():
    _clean()
