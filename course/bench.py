"""``python -m course bench``: run lessons as a learner would and measure them.

Each lesson notebook (from lessons/, exercises unsolved, exactly what a learner opens) is
executed in a fresh kernel. We record wall seconds, the kernel's peak memory, and the key
figures the lesson reported through ``rlhf_helpers.figures.report``. The table and a JSON file
go to ``bench/``. Budgets (design §8, 2-core CPU, ``cpu`` profile): each lesson <= 4 minutes
(PPO and the finale <= 5), the whole course <= 20 minutes, peak memory <= 3 GB.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nbformat
import torch

from course.execute import execute
from course.manifest import LESSONS_DIR, ROOT, Lesson

BENCH_DIR = ROOT / "bench"
LESSON_BUDGET_S = {6: 300, 7: 300}  # lessons not listed: 240 s
COURSE_BUDGET_S = 20 * 60
MEMORY_BUDGET_MB = 3000

# Appended to the executed copy: the kernel reports its own peak resident memory.
_PEAK_MEMORY_CELL = """\
import resource, sys
from rlhf_helpers.figures import report
_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report(peak_mb=round(_peak / (2**20 if sys.platform == "darwin" else 2**10), 1))
"""


def bench_lesson(lesson: Lesson, profile: str) -> dict:
    """Execute one lesson and return its row: seconds, peak memory, key figures."""
    nb = nbformat.read(lesson.lesson_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_PEAK_MEMORY_CELL))
    with tempfile.TemporaryDirectory() as tmp:
        figures_file = Path(tmp) / "figures.json"
        start = time.perf_counter()
        execute(nb, LESSONS_DIR, env={"RLHF_FIGURES_FILE": str(figures_file), "RLHF_PROFILE": profile})
        seconds = time.perf_counter() - start
        figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
    peak = figures.pop("peak_mb", None)
    budget = LESSON_BUDGET_S.get(lesson.number, 240)
    within = seconds <= budget and (peak or 0) <= MEMORY_BUDGET_MB
    return {"lesson": lesson.filename, "seconds": round(seconds, 1), "peak_mb": peak,
            "budget_s": budget, "within_budget": within, "figures": figures}


def format_table(rows: list[dict]) -> str:
    """A Markdown table of bench rows."""
    lines = ["| lesson | seconds | peak MB | within budget | key figures |", "|---|---|---|---|---|"]
    for r in rows:
        figures = ", ".join(f"{k}={v}" for k, v in r["figures"].items()) or "-"
        lines.append(f"| {r['lesson']} | {r['seconds']} | {r['peak_mb']} | "
                     f"{'yes' if r['within_budget'] else 'NO'} (≤ {r['budget_s']} s) | {figures} |")
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| **all** | {total:.1f} | {max((r['peak_mb'] or 0) for r in rows)} | "
                 f"{'yes' if total <= COURSE_BUDGET_S else 'NO'} (≤ {COURSE_BUDGET_S} s) | |")
    return "\n".join(lines)


def _merge_with_earlier(rows: list[dict], profile: str) -> list[dict]:
    """Keep the earlier results of lessons not benched this time, so benching one lesson does not
    erase the others' rows; the table stays in course order."""
    earlier_file = BENCH_DIR / f"results-{profile}.json"
    earlier = json.loads(earlier_file.read_text())["rows"] if earlier_file.exists() else []
    fresh = {row["lesson"]: row for row in rows}
    kept = {row["lesson"]: row for row in earlier if row["lesson"] not in fresh}
    merged = {**kept, **fresh}
    return [merged[name] for name in sorted(merged)]  # file names sort in course order


def bench(lessons: list[Lesson], profile: str) -> list[dict]:
    """Bench ``lessons`` under ``profile``; print the table and write bench/results-<profile>.*"""
    rows = []
    for lesson in lessons:
        print(f"[{lesson.id}] running {lesson.filename} with the {profile} profile...", flush=True)
        rows.append(bench_lesson(lesson, profile))
        print(f"[{lesson.id}] {rows[-1]['seconds']} s, peak {rows[-1]['peak_mb']} MB", flush=True)
    rows = _merge_with_earlier(rows, profile)
    table = format_table(rows)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / f"results-{profile}.json").write_text(
        json.dumps({"profile": profile, "machine": machine, "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    (BENCH_DIR / f"results-{profile}.md").write_text(
        f"Profile `{profile}` on {machine['platform']}, {machine['cpus']} CPUs"
        f"{', ' + machine['cuda'] if machine['cuda'] else ''}, torch {machine['torch']}:\n\n{table}\n")
    print(table)
    return rows
