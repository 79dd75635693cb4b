"""Data parallelism in the course's own loops: two CPU processes over gloo train as one.

The launch tests run ``tests/distributed_worker.py`` in two processes with
``scale/accelerate/cpu_gloo.yaml`` (as tests/test_scale.py launches ``hello_ranks.py``) and check
(a) that after each update both processes hold the same weights (the gradients were averaged),
(b) that those weights are the ones a single process gets on the whole batch, to 1e-5, and
(c) the control: with the all-reduce switched off the two processes drift apart, and away from
the single process. The other tests need no launch.
"""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlhf_helpers import distributed, gpt, ppo, sft
from tests import distributed_worker as worker

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


def largest_gap(a: dict, b: dict) -> float:
    """The largest difference between two sets of weights with the same names."""
    assert a and a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def part(tensors: dict, prefix: str) -> dict:
    """The weights saved under ``prefix.``, without the prefix."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def untrained(name: str) -> dict:
    models = worker.fresh_models() if name == "ppo" else (worker.fresh_gpt(),)
    return part(worker.weights(name, *models), name)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The worker's results from two processes, and the single-process reference of each run."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("two-processes")
    rollout = worker.fixed_rollout()
    tokens = rollout["mask"].sum(1)
    assert tokens[:4].sum() != tokens[4:].sum(), \
        "the check needs the two processes' halves to hold different numbers of tokens"
    save_file(rollout, out / "rollout.safetensors")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "scale" / "accelerate" / "cpu_gloo.yaml"),
                           str(ROOT / "tests" / "distributed_worker.py"), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    policy, value_model, metrics = worker.ppo_update_on(rollout)  # one process, no micro-batches
    alone = {"ppo": part(worker.weights("ppo", policy, value_model), "ppo"),
             "gpt": part(worker.weights("gpt", worker.train_gpt()), "gpt")}
    return ranks, reports, alone, metrics


def test_two_processes_hold_one_model_after_every_update(launched):
    ranks, reports, _, _ = launched
    assert [report["world_size"] for report in reports] == [2, 2]
    for name in ("ppo", "gpt", "train_ppo"):
        assert largest_gap(part(ranks[0], name), part(ranks[1], name)) == 0.0, name  # bit for bit


def test_two_processes_train_what_one_process_trains_on_the_whole_batch(launched):
    """PPO (whitening over the global batch, token-weighted shares, micro-batches, averaged
    gradients, clipping, two AdamW steps) and the base GPT's loop: two processes train the
    weights one process trains, up to rounding, and report the same metrics."""
    ranks, reports, alone, metrics = launched
    for name in ("ppo", "gpt"):
        assert largest_gap(alone[name], untrained(name)) > 1e-3, f"{name}: the update must move the weights"
        assert largest_gap(part(ranks[0], name), alone[name]) < 1e-5, name
    for report in reports:
        assert report["ppo_metrics"].keys() == metrics.keys()
        for key, value in metrics.items():
            if key != "seconds":
                assert report["ppo_metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_the_control_without_averaged_gradients_drifts_apart(launched):
    """What lets the two tests above fail: each process stepping with its own half's gradient."""
    ranks, _, alone, _ = launched
    for name in ("ppo", "gpt"):
        first, second = part(ranks[0], f"{name}_alone"), part(ranks[1], f"{name}_alone")
        assert largest_gap(first, second) > 1e-3, name
        assert largest_gap(first, alone[name]) > 1e-3, name


def test_ppo_that_samples_in_two_processes_keeps_one_model_and_reports_the_global_batch(launched):
    _, (first, second), _, _ = launched
    assert [row["step"] for row in first["history"]] == [1, 2]
    for a, b in zip(first["history"], second["history"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
        assert all(math.isfinite(v) for v in a.values()), a
    assert first["history"][1]["beta"] != first["history"][0]["beta"]  # the controller moved, alike in both
    assert first["answers"] == second["answers"]
    for prompts, texts in first["answers"]:
        assert len(prompts) == len(texts) == 4  # the global batch's answers, gathered from both processes


# --------------------------------------------------------------------------------------------
# Without a launch
# --------------------------------------------------------------------------------------------


def test_alone_every_helper_hands_back_its_input():
    """No launcher: nothing is split, summed, gathered or averaged (the loops compute what they did)."""
    rows, values = [1, 2, 3], torch.arange(3.0)
    assert distributed.shard(rows) is rows and distributed.gather(rows) is rows
    assert distributed.sum_over_processes(values) is values
    config = ppo.PPOConfig(batch_size=6, mini_batch_size=3)
    assert ppo.per_process_config(config) is config
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    grad = model.weight.grad.clone()
    distributed.average_gradients(model.parameters())
    assert torch.equal(model.weight.grad, grad)


def test_a_launch_gives_each_process_its_slice_and_refuses_an_uneven_split(monkeypatch):
    """Process 1 of 2 (as a launcher names it): the second half of every batch, and the sizes halved."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.shard(list(range(8))) == [4, 5, 6, 7]
    assert torch.equal(distributed.shard(torch.arange(6).view(6, 1)), torch.tensor([[3], [4], [5]]))
    with pytest.raises(ValueError, match="A batch of 7 does not split evenly across 2 processes"):
        distributed.shard(list(range(7)))
    local = ppo.per_process_config(ppo.PPOConfig(batch_size=8, mini_batch_size=4, micro_batch_size=1))
    assert (local.batch_size, local.mini_batch_size, local.micro_batch_size) == (4, 2, 1)
    uneven = ppo.PPOConfig(batch_size=6, mini_batch_size=3)
    with pytest.raises(ValueError, match="mini_batch_size of 3 does not split evenly across 2 processes"):
        ppo.per_process_config(uneven)
    with pytest.raises(ValueError, match="mini_batch_size of 3"):  # refused before joining any process group
        ppo.train_ppo(worker.fresh_models()[0], None, None, None, None, worker.PROMPTS, uneven, reward_fn=len)
    with pytest.raises(ValueError, match="A batch of 3 does not split evenly"):
        gpt.train(worker.fresh_gpt(), torch.arange(100) % 12, None, steps=1, batch_size=3, progress=False)
    assert sft.trainer_settings("out", 10, 16, 1e-3, 0)["per_device_train_batch_size"] == 8  # trl: the global batch


def test_micro_batches_add_up_to_the_whole_minibatch():
    """Gradient accumulation: one row at a time, each counted for its share of the minibatch's
    tokens, takes the step the whole minibatch takes at once, up to rounding."""
    rollout = worker.fixed_rollout()
    whole_policy, whole_value, whole = worker.ppo_update_on(rollout)
    row_policy, row_value, by_rows = worker.ppo_update_on(rollout, replace(worker.CONFIG, micro_batch_size=1))
    whole_weights = part(worker.weights("w", whole_policy, whole_value), "w")
    assert largest_gap(whole_weights, part(worker.weights("w", row_policy, row_value), "w")) < 1e-5
    assert largest_gap(whole_weights, untrained("ppo")) > 1e-3
    for key in ("policy_loss", "approx_kl", "clip_frac", "value_loss", "value_clip_frac"):
        assert by_rows[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
    with pytest.raises(ValueError, match="micro_batch_size"):
        ppo.PPOConfig(micro_batch_size=0)
