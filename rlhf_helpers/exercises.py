"""The check behind every exercise.

An exercise is a function the learner writes. ``check`` runs it on several inputs and compares
each answer with a reference implementation (or a library). There are three outcomes:

- **correct**: a ✓ line, and the learner's function is returned, so the rest of the lesson uses it;
- **not attempted** (the stub still raises ``NotImplementedError``): a short note, and the
  reference implementation is returned, so a learner who is stuck, or a test run, can go on;
- **wrong**: an ``ExerciseError`` that names the exercise, the input tried, what was expected,
  what came back (the first place where it differs), and a first hint, instead of a traceback
  from deep inside a helper. More help comes only on request: ``hint()`` gives the next tier
  (the formula, say), and ``show_answer()`` the last one (the code).

Each case also runs under a time limit (an endless loop says so instead of freezing the cell),
and the inputs are checked *after* the call: a function must leave them as the reference does
(unchanged, unless the exercise is to update one in place).

Typical use in a notebook::

    softmax = check_softmax(my_softmax)   # my_softmax if right, the reference if not attempted
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
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


def _short(value: Any, limit: int = 160) -> str:
    """A readable, bounded representation of an input or an answer: never a whole object's repr."""
    if isinstance(value, torch.nn.Module):
        n = sum(p.numel() for p in value.parameters())
        return f"{type(value).__name__} ({n:,} parameters)"
    if isinstance(value, torch.optim.Optimizer):
        n = sum(p.numel() for group in value.param_groups for p in group["params"])
        return f"{type(value).__name__} ({n:,} parameters)"
    if callable(value) and hasattr(value, "__qualname__"):  # a function passed in, such as a loss
        return value.__qualname__
    if isinstance(value, (list, tuple)) and any(isinstance(v, (torch.nn.Module, torch.optim.Optimizer)) for v in value):
        inner = ", ".join(_short(v, limit) for v in value)
        text = f"[{inner}]" if isinstance(value, list) else f"({inner})"
    elif isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):  # a batch
        shown = (f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else _short(v, 40) for v in value.values())
        text = "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(value, shown)) + "}"
    elif isinstance(value, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(value).detach().cpu()
        flat = tensor.flatten()[:6]
        shown = flat.double().numpy().round(4).tolist() if flat.is_floating_point() else flat.tolist()
        more = ", ..." if tensor.numel() > 6 else ""
        text = f"tensor{tuple(tensor.shape)} {tensor.dtype}: {str(shown)[:-1]}{more}]"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_difference(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str:
    """Where two same-shape tensors first differ, with both values, and the largest difference."""
    g, e = got.double(), expected.double()
    close = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    index = tuple((~close).nonzero()[0].tolist())
    worst = (g - e).abs().nan_to_num(float("inf")).max().item()
    where = f"index {index}" if index else "the value"
    return (f"values differ, first at {where}: expected {e[index].item():.6g}, got {g[index].item():.6g} "
            f"(largest absolute difference {worst:.3g})")


def compare(got: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-6, name: str = "output") -> str | None:
    """``None`` when ``got`` matches ``expected``, else a sentence saying where and how it differs.

    Tensors and arrays must match in type, shape and values (to a tolerance, NaN never
    matches); floats to a tolerance; modules in their weights, optimisers in their state;
    everything else exactly. Lists, tuples and dicts compare item by item, and the message names
    the item: ``output[1][3]``.
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{name}: expected a torch.Tensor, got {type(got).__name__}"
        if tuple(got.shape) != tuple(expected.shape):
            return f"{name}: expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        if got.dtype != expected.dtype:
            return f"{name}: expected dtype {expected.dtype}, got dtype {got.dtype}"
        if torch.isnan(got).any() and not torch.isnan(expected).any():
            return f"{name}: your answer contains NaN (an overflow or a division of zero by zero?)"
        if not torch.allclose(got.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True):
            return f"{name}: " + _first_difference(got, expected, rtol, atol)
        return None
    if isinstance(expected, np.ndarray):
        return compare(torch.as_tensor(np.asarray(got)), torch.as_tensor(expected), rtol=rtol, atol=atol, name=name)
    if isinstance(expected, torch.nn.Module):
        if type(got) is not type(expected):
            return f"{name}: expected a {type(expected).__name__}, got {type(got).__name__}"
        return compare(dict(got.state_dict()), dict(expected.state_dict()), rtol=rtol, atol=atol, name=f"{name}'s weights")
    if isinstance(expected, torch.optim.Optimizer):
        if type(got) is not type(expected):
            return f"{name}: expected a {type(expected).__name__}, got {type(got).__name__}"
        return compare(_optimizer_state(got), _optimizer_state(expected), rtol=rtol, atol=atol, name=f"{name}'s state")
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            return f"{name}: the numbers differ"
        return None
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(got) != len(expected):
            return f"{name}: expected {len(expected)} items, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            why = compare(g, e, rtol=rtol, atol=atol, name=f"{name}[{i}]")
            if why:
                return why
        return None
    if isinstance(expected, dict) and isinstance(got, dict):
        missing = [k for k in expected if k not in got]
        if missing or len(got) != len(expected):
            extra = [k for k in got if k not in expected]
            return f"{name}: " + (f"the key {missing[0]!r} is missing" if missing else f"unexpected key {extra[0]!r}")
        for key, e in expected.items():
            why = compare(got[key], e, rtol=rtol, atol=atol, name=f"{name}[{key!r}]")
            if why:
                return why
        return None
    return None if got == expected else f"{name}: the answers differ"


def _optimizer_state(optimizer: torch.optim.Optimizer) -> list:
    """An optimiser's learning rates and per-parameter state (moments, step counts), in order."""
    groups = [group["lr"] for group in optimizer.param_groups]
    return groups + [optimizer.state.get(p, {}) for group in optimizer.param_groups for p in group["params"]]


# --------------------------------------------------------------------------------------------
# Time limits, inputs after the call, and tiered hints.
# --------------------------------------------------------------------------------------------

TIME_LIMIT = 10.0  # seconds per case: every reference finishes in well under one


class _TimedOut(BaseException):
    """Raised inside a learner's function that ran past the time limit (BaseException, so that a
    bare ``except Exception`` in the learner's code cannot swallow it)."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Interrupt the block after ``seconds``, where the operating system allows it (the main thread
    of a Unix process: every notebook cell). Elsewhere the block runs without a limit."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _TimedOut()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _comparable(value: Any) -> bool:
    """Inputs whose state after the call can be compared (others, such as tokenizers, are skipped)."""
    return isinstance(value, (torch.Tensor, np.ndarray, torch.nn.Module, torch.optim.Optimizer,
                              list, tuple, dict, int, float, str, bytes))


def _inputs_after_call(case: Case, mine: tuple, theirs: tuple) -> str | None:
    """How the learner's function left its inputs, if not as the reference left them."""
    (my_args, my_kwargs), (ref_args, ref_kwargs) = mine, theirs
    pairs = [(f"argument {i + 1}", a, r, o) for i, (a, r, o) in enumerate(zip(my_args, ref_args, case.args))]
    pairs += [(f"argument {k!r}", my_kwargs[k], ref_kwargs[k], case.kwargs[k]) for k in case.kwargs]
    for label, after, expected, before in pairs:
        why = compare(after, expected, name=label) if _comparable(expected) else None
        if why is None:
            continue
        if compare(expected, before, name=label) is None:
            return f"your function changed its {label} in place; leave its inputs as they were and return a new value"
        return f"it should update its {label} in place, as the exercise asks, and after the call {why}"
    return None


@dataclass
class _HelpState:
    exercise: str = ""
    tiers: tuple[str, ...] = ()
    shown: int = 0


_HELP = _HelpState()


def hint(level: int | None = None) -> None:
    """More help with the exercise that failed last: the next tier, or tier ``level`` (1 = first)."""
    if not _HELP.tiers:
        print("No exercise has failed yet: hints appear when a check finds a mistake.")
        return
    level = min(len(_HELP.tiers), level or _HELP.shown + 1)
    _HELP.shown = max(_HELP.shown, level)
    more = " (the last tier)" if level == len(_HELP.tiers) else "; hint() again for more"
    print(f"{_HELP.exercise}, hint {level} of {len(_HELP.tiers)}{more}:\n  {_HELP.tiers[level - 1]}")


def show_answer() -> None:
    """The last tier of help for the exercise that failed last: usually the code itself."""
    hint(len(_HELP.tiers) or None)


def _tiers(hint_text: str | Sequence[str]) -> tuple[str, ...]:
    return (hint_text,) if isinstance(hint_text, str) else tuple(hint_text)


def check(
    exercise: str,
    attempt: Callable,
    reference: Callable,
    cases: Sequence[Case],
    *,
    hint: str | Sequence[str],
    comparer: Callable[[Any, Any], str | None] = compare,
    time_limit: float | None = None,
) -> Callable:
    """Run ``attempt`` on every case against ``reference``; return the function to use next.

    ``hint`` is one text, or tiers from gentle to complete: the first is shown with a wrong
    answer, the others by ``hint()`` and ``show_answer()``. ``time_limit`` is in seconds per case
    (default ``TIME_LIMIT``).
    """
    __tracebackhide__ = True  # pytest and IPython hide this frame from tracebacks
    tiers = _tiers(hint)
    time_limit = TIME_LIMIT if time_limit is None else time_limit
    for case in cases:
        mine = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            with _time_limit(time_limit):
                got = attempt(*mine[0], **mine[1])
        except NotImplementedError:
            print(f"… {exercise}: not attempted yet. The lesson goes on with the reference "
                  "implementation; come back to it whenever you like.")
            return reference
        except _TimedOut:
            _fail(exercise, tiers, f"your function did not finish within {time_limit:g} s (an endless loop? a "
                                   "`continue` where a `break` belongs, or an index that never moves?)", case)
        except Exception as err:  # the learner's code crashed: say where, not how deep
            _fail(exercise, tiers, f"your function raised {type(err).__name__}: {err}", case)
        theirs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        expected = reference(*theirs[0], **theirs[1])
        why = comparer(got, expected) or _inputs_after_call(case, mine, theirs)
        if why:
            _fail(exercise, tiers, f"wrong answer, {why}", case, expected=expected, got=got)
    print(f"✓ {exercise}: correct on all {len(cases)} inputs. Your function is used from here on.")
    return attempt


def with_stale_gradients(step: Callable) -> Callable:
    """``step(model, ...)`` on a model that arrives with the stale gradients of a previous step, as
    it does in the middle of training: a training step that forgets to clear them adds its new
    gradients to these. (The checker's copies of the inputs lose ``.grad``: ``nn.Parameter`` does
    not copy it, so the gradients are set here, after the copy.)"""
    def run(model, *args, **kwargs):
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        return step(model, *args, **kwargs)
    return run


_NOTHING = object()


def _fail(exercise: str, tiers: tuple[str, ...], what: str, case: Case, *, expected=_NOTHING, got=_NOTHING):
    """Raise the learner's error message, and keep the exercise's hints for ``hint()``."""
    __tracebackhide__ = True
    _HELP.exercise, _HELP.tiers, _HELP.shown = exercise, tiers, 1
    lines = [f"✗ {exercise}: {what}.", f"  input tried: {case.describe()}"]
    if expected is not _NOTHING:
        lines += [f"  expected:    {_short(expected)}", f"  got:         {_short(got)}"]
    lines.append(f"  hint: {tiers[0]}")
    if len(tiers) > 1:
        lines.append(f"  more help: hint() (tier 2 of {len(tiers)}), or show_answer()")
    raise ExerciseError("\n".join(lines)) from None


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
        for name, function in (("hint", hint), ("show_answer", show_answer)):
            shell.user_ns.setdefault(name, function)  # so that a failed check's advice works as written


_install_notebook_display()
