"""`python -m course site`: every lesson as an HTML page that renders offline, figures included."""

import os
import re
import shutil
import subprocess

import nbformat
import pytest

from course import site
from course.manifest import available_lessons

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(BROWSER is None and os.environ.get("RLHF_REQUIRE_BROWSER") != "1",
                                   reason="no Chromium here (make test-site installs nothing and requires it)")


def image_outputs(path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    return folder, site.build_site(folder)


def test_one_page_per_lesson_and_solution_with_every_figure_embedded(built):
    folder, pages = built
    assert len(pages) == 1 + 2 * len(available_lessons())
    for lesson in available_lessons():
        for kind, source in (("lessons", lesson.lesson_path), ("solutions", lesson.solution_path)):
            page = (folder / kind / lesson.filename.replace(".ipynb", ".html")).read_text()
            assert page.count('src="data:image/png') == image_outputs(source)
            assert lesson.title.split(":")[0] in page


def test_pages_load_no_script_from_the_network(built):
    folder, pages = built
    for page in pages:
        assert not re.search(r'<script[^>]*\bsrc="https?://', page.read_text()), page.name


def test_the_index_links_every_lesson_and_its_solutions(built):
    folder, _ = built
    index = (folder / "index.html").read_text()
    for lesson in available_lessons():
        page = lesson.filename.replace(".ipynb", ".html")
        assert f'href="lessons/{page}"' in index and f'href="solutions/{page}"' in index
        assert (folder / "lessons" / page).exists()


def dump_dom(url: str, tmp_path) -> str:
    assert BROWSER, "this check needs Chromium: apt-get install chromium"
    run = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    return run.stdout


@needs_browser
def test_every_page_renders_in_a_browser_from_the_file_system(built, tmp_path):
    folder, pages = built
    for page in pages:
        dom = dump_dom(page.as_uri(), tmp_path)
        assert "<h1" in dom, f"{page.name} did not render"
        if page.name != "index.html":
            source = next(l for l in available_lessons() if l.filename.replace(".ipynb", ".html") == page.name)
            path = source.lesson_path if page.parent.name == "lessons" else source.solution_path
            assert dom.count("<img") >= image_outputs(path), f"{page.name} lost figures"
