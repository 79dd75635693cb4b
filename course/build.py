"""``python -m course build``: regenerate lessons/ from solutions/ and store fresh outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat

from course.execute import execute
from course.manifest import LESSONS_DIR, ROOT, SOLUTIONS_DIR, Lesson, available_lessons, course_map_markdown
from course.notebooks import drift, make_lesson, unexecuted_cells


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _write(nb: nbformat.NotebookNode, path: Path) -> None:
    nbformat.validate(nb)
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)  # a failed build never leaves half a notebook


MAP_START = "<!-- course-map: generated from course/manifest.py by `python -m course build` -->"
MAP_END = "<!-- /course-map -->"


def readme_with_current_map(readme: str) -> str:
    """The README text with its course-map block replaced by the manifest's table."""
    start, end = readme.index(MAP_START) + len(MAP_START), readme.index(MAP_END)
    return readme[:start] + "\n" + course_map_markdown() + "\n" + readme[end:]


def build(lessons: list[Lesson], *, execute_notebooks: bool = True) -> None:
    """Execute each solution, derive its lesson, execute that, and write both."""
    readme = ROOT / "README.md"
    readme.write_text(readme_with_current_map(readme.read_text()))
    for lesson in lessons:
        solution = _read(lesson.solution_path)
        if execute_notebooks:
            print(f"[{lesson.id}] executing {lesson.solution_path.relative_to(SOLUTIONS_DIR.parent)}", flush=True)
            execute(solution, SOLUTIONS_DIR)
            _write(solution, lesson.solution_path)
        generated = make_lesson(solution, name=lesson.solution_path.name)
        if execute_notebooks:
            print(f"[{lesson.id}] executing {lesson.lesson_path.relative_to(LESSONS_DIR.parent)}", flush=True)
            execute(generated, LESSONS_DIR)
        _write(generated, lesson.lesson_path)


def check(lessons: list[Lesson] | None = None) -> list[str]:
    """Problems that ``build`` would fix; writes nothing. Empty means lessons/ is current."""
    problems = []
    readme = (ROOT / "README.md").read_text()
    if readme_with_current_map(readme) != readme:
        problems.append("README.md's course map differs from course/manifest.py: run `python -m course build`")
    lessons = available_lessons() if lessons is None else lessons
    known = {lesson.filename for lesson in available_lessons()}
    for stray in sorted(LESSONS_DIR.glob("*.ipynb")):
        if stray.name not in known:
            problems.append(f"lessons/{stray.name} has no solution notebook or no manifest entry")
    for lesson in lessons:
        if not lesson.lesson_path.exists():
            problems.append(f"lessons/{lesson.filename} is missing: run `python -m course build`")
            continue
        expected = make_lesson(_read(lesson.solution_path), name=lesson.solution_path.name)
        actual = _read(lesson.lesson_path)
        where = drift(expected, actual)
        if where:
            problems.append(f"lessons/{lesson.filename} has drifted from solutions/: {where}. "
                            "Edit the solution and run `python -m course build`")
        for folder, nb in (("solutions", _read(lesson.solution_path)), ("lessons", actual)):
            missing = unexecuted_cells(nb)
            if missing:
                problems.append(f"{folder}/{lesson.filename} has code cells with no stored output "
                                f"(cells {missing[:5]}): run `python -m course build`")
    return problems
