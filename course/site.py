"""``python -m course site`` (``make site``): the course as a static website, readable offline.

Many people read a lesson before they run it. The notebooks are stored *with* their outputs, so
a website is a conversion, not a re-run: nbconvert (Jupyter's own exporter) turns each executed
notebook into one HTML page, plots embedded as images, and an index page shows the course map.

- ``site/index.html``           the course map, one link per lesson, and its solutions
- ``site/lessons/NN_*.html``    what a learner opens (exercises unsolved)
- ``site/solutions/NN_*.html``  the same lessons with every exercise solved

The pages work from the file system (``file://``), with no server and no network: nbconvert's
template loads require.js and MathJax from a CDN, and those two tags are removed, so formulas
show as their LaTeX source. Widgets show as the text they were saved with.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from course.manifest import ROOT, available_lessons

SITE_DIR = ROOT / "site"
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>\s*')
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RLHF from scratch</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.4rem .6rem;vertical-align:top}}</style>
</head><body>
<h1>RLHF from scratch</h1>
<p>From raw Shakespeare to a language model aligned with human feedback, on a laptop, offline.
Read a lesson here; run it with <code>make lab</code> (or <code>python -m course lab</code>).</p>
<table><tr><th>#</th><th>lesson</th><th>you will</th><th>minutes (CPU / GPU)</th><th>solved</th></tr>
{rows}
</table></body></html>
"""


def notebook_html(path: Path) -> str:
    """One notebook as a self-contained HTML page that needs no network."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(path, as_version=4))
    return _REMOTE_SCRIPT.sub("", body)


def index_html() -> str:
    rows = []
    for lesson in available_lessons():
        page = lesson.filename.replace(".ipynb", ".html")
        rows.append(f'<tr><td>{lesson.id}</td><td><a href="lessons/{page}">{html.escape(lesson.title)}</a></td>'
                    f'<td>{html.escape("; ".join(lesson.objectives))}</td>'
                    f'<td>{lesson.minutes_cpu} / {lesson.minutes_gpu}</td>'
                    f'<td><a href="solutions/{page}">solutions</a></td></tr>')
    return PAGE.format(rows="\n".join(rows))


def build_site(destination: Path = SITE_DIR) -> list[Path]:
    """Write the website into ``destination``; return the pages written."""
    pages = []
    for folder in ("lessons", "solutions"):
        (destination / folder).mkdir(parents=True, exist_ok=True)
        for lesson in available_lessons():
            source = lesson.lesson_path if folder == "lessons" else lesson.solution_path
            page = destination / folder / lesson.filename.replace(".ipynb", ".html")
            page.write_text(notebook_html(source), encoding="utf-8")
            pages.append(page)
    index = destination / "index.html"
    index.write_text(index_html(), encoding="utf-8")
    return [index, *pages]
