"""lessons/ is generated from solutions/: one source, two notebooks.

In a solution notebook each exercise's answer sits between two marker lines::

    def stable_softmax(logits, dim=-1):
        \"\"\"docstring the learner keeps\"\"\"
        # BEGIN SOLUTION
        ...the answer...
        # END SOLUTION

The lesson notebook gets the same cell with the answer replaced by a stub that raises
``NotImplementedError`` (at the marker's indentation), so the signature and docstring stay and
the exercise's check reports "not attempted" until the learner writes it.
"""

from __future__ import annotations

import copy
import re

import nbformat

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
STUB = 'raise NotImplementedError("Your turn: write this exercise, then run the check below.")'


class MarkerError(ValueError):
    """Solution markers that do not pair up."""


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace every BEGIN/END SOLUTION block in ``source`` with a stub."""
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.split("\n"), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if inside:
                raise MarkerError(f"{where}, line {number}: BEGIN SOLUTION inside another solution block")
            inside = True
            out.append(begin.group("indent") + STUB)
        elif end:
            if not inside:
                raise MarkerError(f"{where}, line {number}: END SOLUTION without a BEGIN SOLUTION")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: BEGIN SOLUTION is never closed by END SOLUTION")
    return "\n".join(out)


def has_solution(source: str) -> bool:
    return any(BEGIN.match(line) for line in source.split("\n"))


def make_lesson(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The learner's notebook for a solution notebook: answers stubbed, outputs cleared."""
    lesson = copy.deepcopy(solution)
    for index, cell in enumerate(lesson.cells):
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source, where=f"{name}, cell {index}")
        cell.outputs = []
        cell.execution_count = None
    return lesson


def comparable(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple]]:
    """What must agree between a lesson and its solution-derived form: cell types, sources, tags."""
    return [(c.cell_type, c.source, tuple(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def drift(expected: nbformat.NotebookNode, actual: nbformat.NotebookNode) -> str | None:
    """``None`` when ``actual`` has the cells of ``expected``; else where they first differ."""
    want, have = comparable(expected), comparable(actual)
    for index, (w, h) in enumerate(zip(want, have)):
        if w != h:
            first = (h[1].splitlines() or [""])[0][:60]
            return f"cell {index} differs (it begins {first!r})"
    if len(want) != len(have):
        return f"it has {len(have)} cells, the solution gives {len(want)}"
    return None


def unexecuted_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Code cells with no stored execution: outputs must be stored for nbval and the web."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
