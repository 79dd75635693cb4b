"""The check behind every exercise.

An exercise is a function the learner writes. ``check`` runs it on several inputs and compares
each answer with a reference implementation (or a library). There are three outcomes:

- **correct**: a ✓ line, and the learner's function is returned, so the rest of the lesson uses it;
- **not attempted** (the stub still raises ``NotImplementedError``): a short note, and the
  reference implementation is returned, so a learner who is stuck, or a test run, can go on;
- **wrong**: an ``ExerciseError`` that names the exercise, the input tried, what was expected,
  what came back, and a hint, instead of a traceback from deep inside a helper.

Typical use in a notebook::

    softmax = check_softmax(my_softmax)   # my_softmax if right, the reference if not attempted
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch


class ExerciseError(AssertionError):
    """A wrong answer to an exercise; the message is meant for the learner."""


@dataclass
class Case:
    """One input to try: positional and keyword arguments, and a few words saying what it tests."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    about: str = ""

    def describe(self) -> str:
        parts = [_short(a) for a in self.args] + [f"{k}={_short(v)}" for k, v in self.kwargs.items()]
        call = f"({', '.join(parts)})"
        return f"{call}  [{self.about}]" if self.about else call


def _short(value: Any, limit: int = 300) -> str:
    """A readable, bounded representation of an input or an answer."""
    if isinstance(value, torch.Tensor):
        values = value.detach().cpu()
        values = values.double().numpy().round(4) if values.is_floating_point() else values.numpy()
        text = f"tensor{tuple(value.shape)} {value.dtype}: {values.tolist()}"
    elif isinstance(value, np.ndarray):
        values = value.astype(float).round(4) if value.dtype.kind == "f" else value
        text = f"array{value.shape} {value.dtype}: {values.tolist()}"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare(got: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """``None`` when ``got`` matches ``expected``, else a sentence saying how it differs.

    Tensors and arrays must match in type, shape and values (to a tolerance, NaN never
    matches); floats to a tolerance; everything else exactly. Lists and tuples compare element
    by element.
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__}"
        if tuple(got.shape) != tuple(expected.shape):
            return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        if got.dtype != expected.dtype:
            return f"expected dtype {expected.dtype}, got dtype {got.dtype}"
        if torch.isnan(got).any() and not torch.isnan(expected).any():
            return "your answer contains NaN (an overflow or a division of zero by zero?)"
        if not torch.allclose(got.float(), expected.float(), rtol=rtol, atol=atol, equal_nan=True):
            worst = (got.float() - expected.float()).abs().nan_to_num(float("inf")).max().item()
            return f"values differ (largest absolute difference {worst:.3g})"
        return None
    if isinstance(expected, np.ndarray):
        return compare(torch.as_tensor(np.asarray(got)), torch.as_tensor(expected), rtol=rtol, atol=atol)
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            return "the numbers differ"
        return None
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)) and len(got) == len(expected):
        for i, (g, e) in enumerate(zip(got, expected)):
            why = compare(g, e, rtol=rtol, atol=atol)
            if why:
                return f"item {i}: {why}"
        return None
    return None if got == expected else "the answers differ"


def check(
    exercise: str,
    attempt: Callable,
    reference: Callable,
    cases: Sequence[Case],
    *,
    hint: str,
    comparer: Callable[[Any, Any], str | None] = compare,
) -> Callable:
    """Run ``attempt`` on every case against ``reference``; return the function to use next."""
    __tracebackhide__ = True  # pytest and IPython hide this frame from tracebacks
    for case in cases:
        try:
            got = attempt(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        except NotImplementedError:
            print(f"… {exercise}: not attempted yet. The lesson goes on with the reference "
                  "implementation; come back to it whenever you like.")
            return reference
        except Exception as err:  # the learner's code crashed: say where, not how deep
            raise ExerciseError(
                f"✗ {exercise}: your function raised {type(err).__name__}: {err}\n"
                f"  input tried: {case.describe()}\n  hint: {hint}"
            ) from None
        expected = reference(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        why = comparer(got, expected)
        if why:
            raise ExerciseError(
                f"✗ {exercise}: wrong answer, {why}.\n"
                f"  input tried: {case.describe()}\n"
                f"  expected:    {_short(expected)}\n"
                f"  got:         {_short(got)}\n"
                f"  hint: {hint}"
            )
    print(f"✓ {exercise}: correct on all {len(cases)} inputs. Your function is used from here on.")
    return attempt


def _show_exercise_error(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython handler: show an ``ExerciseError`` as its message alone, no helper frames.

    ``_showtraceback`` is how IPython (and Jupyter's kernel) publishes an error, so the cell is
    still marked as failed and *Run All* still stops at a wrong answer.
    """
    stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb


def _install_notebook_display() -> None:
    """In IPython/Jupyter, wrong answers print as a clean message instead of a traceback."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((ExerciseError,), _show_exercise_error)


_install_notebook_display()
