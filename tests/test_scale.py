"""scale/: the accelerate configs and the SkyPilot task files, each checked by the tool that reads it.

The accelerate part runs wherever the course is installed, CI included: accelerate's own config
class, its launch-time checks and the plugins a launched process builds, then a real two-process
launch on the CPU. The SkyPilot part needs SkyPilot, which the course does not install (it is
heavy): ``make test-scale`` builds ``.venv-sky`` and runs ``pytest tests/test_scale.py -k skypilot``
there. Each part also shows that a broken file is refused.
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = ROOT / "scale" / "accelerate"
SKY = ROOT / "scale" / "sky"

try:
    import sky
except ImportError:
    sky = None

# --------------------------------------------------------------------------------------------
# accelerate
# --------------------------------------------------------------------------------------------

CONFIGS = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "zero2.yaml": "DEEPSPEED", "zero3.yaml": "DEEPSPEED",
           "cpu_gloo.yaml": "MULTI_GPU"}


def launch_plan(path: Path):
    """What ``accelerate launch --config_file path -m course run sft`` would start, by accelerate's code.

    1. ``load_config_from_file``: accelerate's ``ClusterConfig`` refuses an unknown top-level key
       and an unknown ``distributed_type``.
    2. accelerate copies the keys of ``fsdp_config`` and ``deepspeed_config`` onto its launch
       options *without* checking them, so a misspelled one would be silently ignored: here each
       must name an option of ``accelerate launch``.
    3. ``_validate_launch_command`` and ``prepare_*_env``, as ``accelerate launch`` runs them,
       turn the config into the environment of the launched processes (refusing, for example,
       an unknown ``mixed_precision``); the FSDP or DeepSpeed plugin that a launched process
       builds from that environment checks the values of its section.

    Returns ``(config, launch arguments, plugin or None)``.
    """
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin, patch_environment
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    config = load_config_from_file(str(path))
    parser = launch_command_parser()
    options = {action.dest for action in parser._actions}
    for section, prefix in (("fsdp_config", "fsdp_"), ("deepspeed_config", "")):
        for key in getattr(config, section):
            if (key if key.startswith(prefix) else prefix + key) not in options:
                raise ValueError(f"{path.name}: {section}.{key} is not an option of accelerate launch")
    args = parser.parse_args(["--config_file", str(path), "-m", "course", "run", "sft"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    env = {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    with patch_environment(**env):
        plugin = (FullyShardedDataParallelPlugin() if args.use_fsdp else
                  DeepSpeedPlugin() if args.use_deepspeed else None)
    return config, args, plugin


def test_every_config_in_the_folder_is_checked_here():
    assert {p.name for p in ACCELERATE.glob("*.yaml")} == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_accelerate_accepts_the_config(name):
    config, args, _ = launch_plan(ACCELERATE / name)
    assert config.distributed_type.value == CONFIGS[name]
    assert args.num_processes >= 2 and args.num_machines == 1
    assert args.module and args.training_script == "course"  # `-m course run ...` reaches the processes


@pytest.mark.parametrize("name", ["ddp.yaml", "cpu_gloo.yaml"])
def test_data_parallel_configs_keep_the_courses_fp32(name):
    _, args, _ = launch_plan(ACCELERATE / name)
    assert args.mixed_precision == "no"


def test_fsdp_shards_fully_and_wraps_each_transformer_block():
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    _, _, plugin = launch_plan(ACCELERATE / "fsdp.yaml")
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"


@pytest.mark.parametrize("name, stage", [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_deepspeed_configs_have_their_zero_stage(name, stage):
    _, args, plugin = launch_plan(ACCELERATE / name)
    assert args.use_deepspeed and plugin.zero_stage == stage
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == stage
    assert plugin.zero3_init_flag is (stage == 3)


@pytest.mark.parametrize("name, old, new, error", [
    ("ddp.yaml", "num_processes:", "num_proceses:", "unknown keys"),
    ("ddp.yaml", "distributed_type: MULTI_GPU", "distributed_type: MULTI_GPUS", "not a valid DistributedType"),
    ("ddp.yaml", "mixed_precision: 'no'", "mixed_precision: bf61", "Unknown mixed_precision"),
    ("fsdp.yaml", "fsdp_reshard_after_forward:", "fsdp_reshard_after_foward:", "not an option of accelerate launch"),
    ("fsdp.yaml", "TRANSFORMER_BASED_WRAP", "TRANSFORMER_WRAP", "Invalid auto wrap policy"),
    ("zero3.yaml", "zero_stage:", "zero_stag:", "not an option of accelerate launch"),
])
def test_a_broken_config_is_refused(tmp_path, name, old, new, error):
    text = (ACCELERATE / name).read_text()
    assert old in text, f"{name} no longer contains {old!r}: update this test"
    broken = tmp_path / name
    broken.write_text(text.replace(old, new))
    with pytest.raises(ValueError, match=error):
        launch_plan(broken)


def test_the_cpu_config_launches_two_gloo_processes_that_add_up():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ACCELERATE / "cpu_gloo.yaml"), str(ACCELERATE / "hello_ranks.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    reports = re.findall(r"process (\d) of (\d): backend (\w+), device ([\w:]+), sum (\d+)", done.stdout)
    assert sorted(reports) == [("0", "2", "gloo", "cpu:0", "3"), ("1", "2", "gloo", "cpu:0", "3")], done.stdout


# --------------------------------------------------------------------------------------------
# SkyPilot (make test-scale)
# --------------------------------------------------------------------------------------------

needs_skypilot = pytest.mark.skipif(
    sky is None, reason="SkyPilot is not installed here (it is heavy): `make test-scale` checks scale/sky/ "
                        "with SkyPilot's own parser in .venv-sky")
TASKS = ("test-gpu.yaml", "recipe-multigpu.yaml")


@pytest.fixture
def offline(monkeypatch):
    """Any network connection raises: SkyPilot may parse a task, never fetch a catalog or reach a cloud."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while the network is blocked")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def parse_task(path: Path, monkeypatch):
    """``sky.Task.from_yaml`` (SkyPilot's schema, resources and accelerator counts), then the
    checks ``sky launch`` makes before it asks a cloud for anything: the name, the run script, and
    the workdir, resolved from the repository root as the task files say to launch them."""
    monkeypatch.chdir(ROOT)
    task = sky.Task.from_yaml(str(path))
    task.validate_name()
    task.validate_run()
    task.expand_and_validate_workdir()
    return task


def accelerator_counts(task) -> list[int]:
    return [count for resources in task.resources for count in (resources.accelerators or {}).values()]


@needs_skypilot
def test_skypilot_checks_only_the_task_files_in_the_folder():
    assert {p.name for p in SKY.glob("*.yaml")} == set(TASKS)


@needs_skypilot
@pytest.mark.parametrize("name", TASKS)
def test_skypilot_parses_the_task_offline(offline, monkeypatch, name):
    task = parse_task(SKY / name, monkeypatch)
    assert task.workdir == str(ROOT)  # the checkout is synced, .gitignore'd files left out
    assert task.envs["RLHF_PROFILE"] == "gpu"
    assert "make setup" in task.setup


@needs_skypilot
def test_skypilot_test_gpu_runs_the_tests_on_one_gpu(offline, monkeypatch):
    task = parse_task(SKY / "test-gpu.yaml", monkeypatch)
    assert task.num_nodes == 1 and accelerator_counts(task) and set(accelerator_counts(task)) == {1}
    assert 'make test TEST_PATHS="$TEST_PATHS"' in task.run
    assert task.run.index("make dry-run") < task.run.index("make test"), "the minute-long check comes first"
    default = re.search(r"^TEST_PATHS \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert task.envs["TEST_PATHS"] == default  # the task's default run is make test's


@needs_skypilot
def test_skypilot_recipe_launches_training_stages_on_every_gpu(offline, monkeypatch):
    from course.run import STAGES

    task = parse_task(SKY / "recipe-multigpu.yaml", monkeypatch)
    assert task.num_nodes == 1 and accelerator_counts(task) and min(accelerator_counts(task)) >= 2
    run = " ".join(task.run.replace("\\\n", " ").split())
    launches = re.findall(r"accelerate launch --config_file (\S+) --num_processes \"\$SKYPILOT_NUM_GPUS_PER_NODE\" "
                          r"(-m course run (\w+)|\S+)", run)
    assert launches, run
    for config, _, stage in launches:
        assert (ROOT / config).is_file()
        assert stage in ("", "base", "sft", "sft_lora", "reward", "ppo", "dpo", "grpo")  # stages that train
    single = re.findall(r"\.venv/bin/python -m course run (\w+)", run)  # any stage in one process
    assert all(stage in STAGES for stage in single) and {"sft", "ppo"} <= {s for _, _, s in launches}


@needs_skypilot
@pytest.mark.parametrize("old, new, error", [
    ("resources:", "resource:", "Invalid task YAML"),  # a misspelled key
    ("L4: 1,", "L4: 0,", "Accelerator count must be a positive number"),
    ("disk_size: 64", "disk_size: lots", "disk_size"),  # a bad value
    ("name: rlhf-test-gpu", "name: rlhf test gpu", "Invalid task name"),
])
def test_skypilot_refuses_a_broken_task(offline, monkeypatch, tmp_path, old, new, error):
    text = (SKY / "test-gpu.yaml").read_text()
    assert old in text, f"test-gpu.yaml no longer contains {old!r}: update this test"
    broken = tmp_path / "test-gpu.yaml"
    broken.write_text(text.replace(old, new))
    with pytest.raises(ValueError, match=error):
        parse_task(broken, monkeypatch)
