"""`python -m course list | doctor | bench` as a learner or instructor runs them."""

import json
import subprocess
import sys

import pytest

from course import bench, manifest
from course.manifest import ROOT


def run_course(*args, env_extra=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "course", *args], cwd=ROOT, capture_output=True, text=True, env=env)


def test_list_prints_every_lesson_in_order():
    result = run_course("list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == [l.id for l in manifest.LESSONS]
    assert "ready: lessons/00_start_here.ipynb" in result.stdout


def test_doctor_reports_versions_device_profile_and_offline(isolated_artifacts):
    result = run_course("doctor")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for field in ("python", "torch", "transformers", "trl", "device", "profile", "artifacts", "kernel", "network"):
        assert f"  {field} " in out
    assert "OK with the network blocked" in out
    assert str(isolated_artifacts) in out


def test_doctor_fails_clearly_on_an_unknown_profile():
    result = run_course("doctor", env_extra={"RLHF_PROFILE": "laptop"})
    assert result.returncode == 1
    assert "Unknown profile 'laptop'" in result.stdout


def test_bench_rejects_unknown_profile_with_one_line():
    result = run_course("bench", "--profile", "huge")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: Unknown profile 'huge'")


def test_bench_lesson_measures_time_memory_and_figures(tmp_path):
    row = bench.bench_lesson(manifest.LESSONS[0], "cpu")
    assert row["seconds"] > 0 and row["peak_mb"] > 50
    assert row["figures"]["corpus_speeches"] > 30_000  # reported by the lesson itself
    table = bench.format_table([row])
    assert "00_start_here.ipynb" in table and "corpus_speeches" in table
    json.dumps(row)  # the row is what the JSON file holds


def test_benching_some_lessons_keeps_the_other_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    row = lambda name, seconds: {"lesson": name, "seconds": seconds}
    earlier = {"rows": [row("00_a.ipynb", 1.0), row("01_b.ipynb", 2.0), row("02_c.ipynb", 3.0)]}
    (tmp_path / "results-cpu.json").write_text(json.dumps(earlier))
    merged = bench._merge_with_earlier([row("01_b.ipynb", 5.0), row("03_d.ipynb", 4.0)], "cpu")
    assert merged == [row("00_a.ipynb", 1.0), row("01_b.ipynb", 5.0), row("02_c.ipynb", 3.0), row("03_d.ipynb", 4.0)]
    assert bench._merge_with_earlier([row("01_b.ipynb", 5.0)], "gpu") == [row("01_b.ipynb", 5.0)]  # no earlier file


def test_a_plain_python_runs_the_command_in_the_course_environment():
    """``python -m course memory`` from a Python without torch (``-S``: no site-packages) runs it again
    with ``.venv``'s Python, as the README's commands assume, and prints what that one prints."""
    from course.environment import VENV, venv_python

    if not venv_python(VENV).exists():
        pytest.skip("no .venv here (the conda route): nothing to run the command in")
    run = subprocess.run([sys.executable, "-S", "-m", "course", "memory"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "running in the course's environment" in run.stderr and "| course GPT, `gpu` profile" in run.stdout


def test_without_the_environment_a_command_says_to_set_it_up(tmp_path, monkeypatch):
    import importlib.util

    from course.__main__ import REEXEC_VAR, in_course_environment

    assert in_course_environment(["memory"], venv=tmp_path) is None  # this Python has torch: run here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"is not set up yet: run `make setup`"):
        in_course_environment(["memory"], venv=tmp_path / "missing")
    monkeypatch.setenv(REEXEC_VAR, "1")  # .venv's own Python lacks torch: never start itself again
    with pytest.raises(SystemExit, match="is incomplete"):
        in_course_environment(["memory"], venv=tmp_path)


def test_environment_variables_puts_back_what_the_block_found(monkeypatch):
    """What the dry run and the notebook builds use: set for the block, then every variable as before,
    including one the block set itself (``course run`` sets $RLHF_PROFILE) and one it removed."""
    import os

    from course.environment import environment_variables

    monkeypatch.setenv("RLHF_KEPT", "before")
    monkeypatch.delenv("RLHF_SET_INSIDE", raising=False)
    with environment_variables({"RLHF_KEPT": "inside"}):
        assert os.environ["RLHF_KEPT"] == "inside"
        os.environ["RLHF_SET_INSIDE"] = "x"
    assert os.environ["RLHF_KEPT"] == "before" and "RLHF_SET_INSIDE" not in os.environ
    with pytest.raises(KeyError), environment_variables({"RLHF_KEPT": "inside"}):
        del os.environ["RLHF_KEPT"]
        raise KeyError("the block fails")
    assert os.environ["RLHF_KEPT"] == "before"
