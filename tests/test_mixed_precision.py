"""bf16 autocast: switched by the profile on CUDA, tested here on the CPU, where it works too."""

import contextlib
import copy
import math
from dataclasses import replace

import pytest
import torch

from rlhf_helpers import env, gpt, ppo, sft
from tests.test_ppo import count_t7, tiny_policy, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


def tiny_gpt():
    torch.manual_seed(0)
    return gpt.GPT(gpt.GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16))


def a_batch():
    data = torch.arange(200) * 5 % 12
    return gpt.get_batch(data, 8, 4, torch.Generator().manual_seed(0))


@pytest.fixture
def bf16_everywhere(monkeypatch):
    """The gpu profile's path on this CPU: every ``env.autocast`` block asks for bf16."""
    monkeypatch.setattr(env, "autocast_dtype", lambda device, profile=None: torch.bfloat16)


def record_dtypes(module, seen: list):
    return module.register_forward_hook(lambda m, inputs, output: seen.append(output.dtype))


def test_the_profile_asks_for_bf16_on_cuda_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    gpu, laptop = env.PROFILES["gpu"], env.PROFILES["cpu"]
    assert gpu.autocast == "bf16" and laptop.autocast is None
    assert env.autocast_dtype(cuda, gpu) is torch.bfloat16
    assert env.autocast_dtype(cuda, laptop) is None and env.autocast_dtype(cpu, gpu) is None
    assert isinstance(env.autocast(cpu), contextlib.nullcontext)
    with pytest.raises(env.CourseConfigError, match="Unknown autocast 'fp16'"):
        env.autocast_dtype(cuda, replace(gpu, autocast="fp16"))


def test_trl_trainers_take_bf16_from_the_same_switch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(env.PROFILE_VAR, "gpu")
    assert sft.trainer_bf16()
    monkeypatch.setenv(env.PROFILE_VAR, "cpu")
    assert not sft.trainer_bf16()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(env.PROFILE_VAR, "gpu")
    assert not sft.trainer_bf16()
    assert sft.trainer_settings("out", 10, 2, 1e-3, 0)["bf16"] is False  # on a CPU, as before


def test_the_dry_runs_switch_runs_the_profiles_bf16_on_a_cpu_too(monkeypatch):
    """``$RLHF_AUTOCAST_ANY_DEVICE`` (set by ``python -m course dry-run``): the gpu profile's bf16 on a
    CPU, for our loops and trl's trainers alike; the cpu profile stays float32 even then."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(env.PROFILE_VAR, "gpu")
    monkeypatch.setenv(env.AUTOCAST_ANY_DEVICE_VAR, "1")
    assert env.autocast_dtype("cpu") is torch.bfloat16 and sft.trainer_bf16()
    assert sft.trainer_settings("out", 10, 2, 1e-3, 0)["bf16"] is True
    with env.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    monkeypatch.setenv(env.PROFILE_VAR, "cpu")
    assert env.autocast_dtype("cpu") is None and not sft.trainer_bf16()
    monkeypatch.setenv(env.PROFILE_VAR, "gpu")
    monkeypatch.delenv(env.AUTOCAST_ANY_DEVICE_VAR)
    assert env.autocast_dtype("cpu") is None and not sft.trainer_bf16()


def test_without_the_switch_the_step_is_the_plain_fp32_step():
    """The cpu profile (any profile on a CPU): gpt.train_step is the float32 step, bit for bit."""
    x, y = a_batch()
    ours, by_hand = tiny_gpt(), tiny_gpt()
    seen = []
    record_dtypes(ours.lm_head, seen)
    loss = gpt.train_step(ours, gpt.configure_optimizers(ours, 1e-2), x, y)
    optimizer = gpt.configure_optimizers(by_hand, 1e-2)[0]
    _, expected = by_hand(x, y)
    optimizer.zero_grad()
    expected.backward()
    torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 1.0)
    optimizer.step()
    assert seen == [torch.float32] and torch.equal(loss, expected.detach())
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), by_hand.parameters()))


def test_bf16_autocast_runs_the_base_gpts_step_in_bf16(bf16_everywhere):
    x, y = a_batch()
    model, fp32 = tiny_gpt(), tiny_gpt()
    seen = []
    record_dtypes(model.lm_head, seen)
    loss = gpt.train_step(model, gpt.configure_optimizers(model, 1e-2), x, y)
    with torch.no_grad():
        _, fp32_loss = fp32(x, y)
    assert seen == [torch.bfloat16]  # the logits: bf16 matrix multiplications
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())  # cross-entropy stays float32
    assert loss.item() != fp32_loss.item() and loss.item() == pytest.approx(fp32_loss.item(), rel=2e-2)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_autocast_runs_ppos_rollout_and_update_in_bf16(bf16_everywhere):
    policy = ppo.disable_dropout(tiny_policy())
    value_model = ppo.value_model_from_causal_lm(copy.deepcopy(policy))
    optimizer = ppo.make_optimizer(policy, value_model, 1e-2)
    seen = []
    record_dtypes(policy.lm_head, seen)
    config = ppo.PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4)
    metrics, texts = ppo.ppo_step(policy, copy.deepcopy(policy), value_model, optimizer, tiny_tokenizer(),
                                  ["t4 t5", "t6", "t7 t8", "t9"], config, ppo.FixedKLController(0.1),
                                  reward_fn=count_t7)
    assert seen and set(seen) == {torch.bfloat16}  # sampling, log-probabilities and the update's forward
    assert len(texts) == 4 and all(math.isfinite(v) for v in metrics.values()), metrics
    batch = {"sequences": torch.tensor([[4, 5, 6]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "responses": torch.tensor([[5, 6]])}
    new_logprobs, new_values = ppo.new_logprobs_and_values(policy, value_model, batch, config)
    assert new_logprobs.dtype == new_values.dtype == torch.float32  # what the losses read
    assert all(p.dtype == torch.float32 for p in policy.parameters())
