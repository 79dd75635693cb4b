import socket

import pytest
import torch

from rlhf_helpers import env


def test_profile_defaults_to_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv(env.PROFILE_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert env.get_profile().name == "cpu"


def test_profile_defaults_to_gpu_with_cuda(monkeypatch):
    monkeypatch.delenv(env.PROFILE_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert env.get_profile().name == "gpu"


def test_environment_variable_overrides_profile(monkeypatch):
    monkeypatch.setenv(env.PROFILE_VAR, "GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert env.get_profile().name == "gpu"
    assert env.get_profile("cpu").name == "cpu"  # an explicit argument wins


def test_unknown_profile_is_one_clear_error_listing_valid_ones(monkeypatch):
    monkeypatch.setenv(env.PROFILE_VAR, "laptop")
    with pytest.raises(env.CourseConfigError) as err:
        env.get_profile()
    message = str(err.value)
    assert "'laptop'" in message and "cpu, gpu" in message and env.PROFILE_VAR in message


def test_profiles_differ_only_in_sizes():
    cpu, gpu = env.PROFILES["cpu"], env.PROFILES["gpu"]
    assert type(cpu.gpt) is type(gpu.gpt)
    assert gpu.gpt.n_embd > cpu.gpt.n_embd and gpu.gpt.max_steps > cpu.gpt.max_steps
    assert cpu.gpt.n_embd % cpu.gpt.n_head == 0 and gpu.gpt.n_embd % gpu.gpt.n_head == 0


def test_device_choice(monkeypatch):
    monkeypatch.delenv(env.DEVICE_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(env, "_mps_is_reliable", lambda: False)
    assert env.get_device().type == "cpu"
    monkeypatch.setattr(env, "_mps_is_reliable", lambda: True)
    assert env.get_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert env.get_device().type == "cuda"


def test_device_override_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(env.DEVICE_VAR, "cuda")
    with pytest.raises(env.CourseConfigError, match="no cuda device"):
        env.get_device()
    monkeypatch.setenv(env.DEVICE_VAR, "tpu")
    with pytest.raises(env.CourseConfigError, match="Valid devices: cpu, cuda, mps"):
        env.get_device()
    monkeypatch.setenv(env.DEVICE_VAR, "cpu")
    assert env.get_device().type == "cpu"


def test_seed_everything_repeats_random_draws():
    env.seed_everything(7)
    first = torch.randn(5)
    env.seed_everything(7)
    assert torch.equal(first, torch.randn(5))
    env.seed_everything(8)
    assert not torch.equal(first, torch.randn(5))


def test_go_offline_sets_hub_switches_unless_opted_in(monkeypatch):
    for var in env.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(env.ALLOW_HUB_VAR, "1")
    env.go_offline()
    assert all(var not in __import__("os").environ for var in env.OFFLINE_VARS)
    monkeypatch.delenv(env.ALLOW_HUB_VAR)
    env.go_offline()
    assert all(__import__("os").environ[var] == "1" for var in env.OFFLINE_VARS)


def test_network_blocked_refuses_connections_and_restores():
    with env.network_blocked():
        with pytest.raises(OSError, match="network"):
            socket.create_connection(("127.0.0.1", 9))
        with pytest.raises(OSError, match="network"):
            socket.getaddrinfo("example.org", 80)
    assert socket.getaddrinfo("127.0.0.1", 80)  # works again afterwards (no DNS needed)


def test_library_progress_bars_are_off_unless_the_learner_set_them(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "0")  # the learner's own choice
    env.quiet_library_progress_bars()
    assert __import__("os").environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert __import__("os").environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "0"


def test_sizes_can_be_overridden_by_name_and_keep_their_types(monkeypatch):
    monkeypatch.setenv(env.PROFILE_VAR, "cpu")
    monkeypatch.setenv(env.SIZES_VAR, "ppo.steps=40, sft.lr=0.0005, ppo.overopt_betas=0 0.01")
    profile = env.get_profile()
    assert profile.ppo.steps == 40 and profile.sft.lr == 0.0005 and profile.ppo.overopt_betas == (0.0, 0.01)
    assert profile.gpt == env.PROFILES["cpu"].gpt, "only what was named changes"
    assert env.PROFILES["cpu"].ppo.steps == 20, "the built-in profile is left alone"


def test_the_number_of_evaluation_prompts_is_a_size_too(monkeypatch):
    monkeypatch.setenv(env.SIZES_VAR, "eval_prompts=40, ppo.steps=2")
    profile = env.get_profile("cpu")
    assert profile.eval_prompts == 40 and profile.ppo.steps == 2
    monkeypatch.setenv(env.SIZES_VAR, "eval_prompts=many")
    with pytest.raises(env.CourseConfigError, match="eval_prompts takes a int"):
        env.get_profile("cpu")


@pytest.mark.parametrize("spec, message", [("ppo.stepz=40", "section.field=value"), ("lr=1", "section.field"),
                                           ("ppo.steps=forty", "takes a int")])
def test_a_bad_size_override_is_one_clear_error(monkeypatch, spec, message):
    monkeypatch.setenv(env.SIZES_VAR, spec)
    with pytest.raises(env.CourseConfigError, match=message):
        env.get_profile("cpu")


def test_under_a_launch_cuda_is_each_processs_own_gpu(monkeypatch):
    """``accelerate launch`` and ``torchrun`` set ``LOCAL_RANK``: process i of a machine takes GPU i
    (the models are moved there before any process group exists). Alone, nothing changes."""
    monkeypatch.delenv(env.DEVICE_VAR, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert env.get_device() == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert env.get_device() == torch.device("cuda", 3)
    monkeypatch.setenv(env.DEVICE_VAR, "cuda")
    assert env.get_device() == torch.device("cuda", 3)
