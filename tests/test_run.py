"""`python -m course run <stage>`: the notebooks' artifacts, built headless, resumable."""

import subprocess
import sys

from course.manifest import ROOT
from course.run import STAGES, _stages

TINY_BASE = ["gpt.n_layer=1", "gpt.n_head=2", "gpt.n_embd=32", "gpt.block_size=32", "gpt.batch_size=4",
             "gpt.max_steps=6"]


def course(*args, artifacts):
    import os

    env = {**os.environ, "RLHF_ARTIFACTS": str(artifacts), "RLHF_PROFILE": "cpu", "HF_HUB_OFFLINE": "1"}
    env.pop("RLHF_SIZES", None)
    return subprocess.run([sys.executable, "-m", "course", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_every_stage_has_a_recipe():
    assert list(_stages()) == list(STAGES)


def test_a_stage_builds_what_it_needs_then_resumes_without_rebuilding(tmp_path):
    sets = [arg for size in TINY_BASE for arg in ("--set", size)]
    first = course("run", "base", *sets, artifacts=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "building it" in first.stdout and (tmp_path / "tokenizer").is_dir() and (tmp_path / "base").is_dir()
    assert "gpt.max_steps=6" in first.stdout
    again = course("run", "base", *sets, artifacts=tmp_path)
    assert again.returncode == 0 and "building it" not in again.stdout, "finished stages are kept"
    assert len(list((tmp_path / "base").iterdir())) == 1


def test_a_bad_stage_or_size_is_one_clear_message(tmp_path):
    run = course("run", "rlhf", artifacts=tmp_path)
    assert run.returncode != 0 and "Stages, in pipeline order: tokenizer, base" in run.stderr
    run = course("run", "base", "--set", "gpt.layers=2", artifacts=tmp_path)
    assert run.returncode == 2 and "section.field=value" in run.stderr and not (tmp_path / "base").exists()
