"""lessons/ is generated from solutions/, and `course build --check` notices hand edits."""

import shutil

import nbformat
import pytest

from course import build, manifest
from course.notebooks import STUB, MarkerError, make_lesson, strip_solutions

SOLVED = '''def f(x):
    """Double x."""
    # BEGIN SOLUTION
    y = 2 * x
    return y
    # END SOLUTION'''


def test_strip_solutions_keeps_signature_and_docstring():
    stripped = strip_solutions(SOLVED)
    assert stripped == f'def f(x):\n    """Double x."""\n    {STUB}'
    namespace = {}
    exec(stripped, namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


@pytest.mark.parametrize(
    "source, problem",
    [
        ("# BEGIN SOLUTION\nx = 1", "never closed"),
        ("x = 1\n# END SOLUTION", "without a BEGIN"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside another"),
    ],
)
def test_unbalanced_markers_are_clear_errors(source, problem):
    with pytest.raises(MarkerError, match=problem):
        strip_solutions(source)


def test_make_lesson_clears_outputs_and_keeps_prose():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# BEGIN SOLUTION stays in prose"),
        nbformat.v4.new_code_cell(SOLVED, execution_count=3,
                                  outputs=[nbformat.v4.new_output("stream", text="hi")]),
    ])
    lesson = make_lesson(nb)
    assert lesson.cells[0].source == nb.cells[0].source
    assert STUB in lesson.cells[1].source and lesson.cells[1].outputs == []
    assert lesson.cells[1].execution_count is None
    assert "2 * x" in nb.cells[1].source  # the solution itself is untouched


def test_every_available_lesson_is_current():
    assert manifest.available_lessons(), "no lesson notebooks found"
    assert build.check() == []


def test_every_lesson_exercise_is_stubbed_out():
    for lesson in manifest.available_lessons():
        solution = nbformat.read(lesson.solution_path, as_version=4)
        learner = nbformat.read(lesson.lesson_path, as_version=4)
        assert "# BEGIN SOLUTION" in "".join(c.source for c in solution.cells), lesson.filename
        assert "# BEGIN SOLUTION" not in "".join(c.source for c in learner.cells), lesson.filename
        assert STUB in "".join(c.source for c in learner.cells), lesson.filename


@pytest.fixture
def copied_course(tmp_path, monkeypatch):
    """A copy of lessons/ and solutions/ that a test may damage."""
    for folder in ("lessons", "solutions"):
        shutil.copytree(manifest.ROOT / folder, tmp_path / folder, ignore=lambda d, names: [n for n in names if not n.endswith(".ipynb")])
    monkeypatch.setattr(manifest, "LESSONS_DIR", tmp_path / "lessons")
    monkeypatch.setattr(manifest, "SOLUTIONS_DIR", tmp_path / "solutions")
    monkeypatch.setattr(build, "LESSONS_DIR", tmp_path / "lessons")
    return tmp_path


def test_check_fails_when_a_lesson_is_edited_by_hand(copied_course):
    lesson = copied_course / "lessons" / manifest.LESSONS[0].filename
    nb = nbformat.read(lesson, as_version=4)
    nb.cells[0].source += "\n\nA learner-facing sentence edited by hand."
    nbformat.write(nb, lesson)
    problems = build.check()
    assert len(problems) == 1 and "drifted" in problems[0] and "cell 0" in problems[0]


def test_check_fails_when_a_lesson_is_missing_or_stray(copied_course):
    (copied_course / "lessons" / manifest.LESSONS[0].filename).unlink()
    shutil.copy(manifest.LESSONS[0].solution_path, copied_course / "lessons" / "99_extra.ipynb")
    problems = " ".join(build.check())
    assert "is missing" in problems and "99_extra.ipynb" in problems


def test_check_fails_when_outputs_were_not_stored(copied_course):
    lesson = copied_course / "lessons" / manifest.LESSONS[0].filename
    nb = nbformat.read(lesson, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, lesson)
    assert any("no stored output" in p for p in build.check())


def test_cli_check_exit_code(copied_course):
    from course.__main__ import main

    assert main(["build", "--check"]) == 0
    lesson = copied_course / "lessons" / manifest.LESSONS[0].filename
    nb = nbformat.read(lesson, as_version=4)
    nb.cells.pop()
    nbformat.write(nb, lesson)
    assert main(["build", "--check"]) == 1
