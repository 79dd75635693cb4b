"""Lesson 04's pipeline: lesson 03's SFT recipe with peft adapters, trained tiny.

One test, so the tiny base model is built once: the ``sft_lora`` adapter, then the comparison
table that reuses it.
"""

import torch

from rlhf_helpers import env, gpt, lora, peft_sft
from tests.test_base_artifact import TINY


def test_adapters_train_only_themselves_and_switch_on_one_base(monkeypatch, isolated_artifacts):
    monkeypatch.setattr(env, "get_profile", lambda name=None: TINY)
    # The sft_lora adapter: saved by peft, loaded onto the base, and off means the base model.
    assert (peft_sft.sft_lora_path() / "adapter" / "adapter_model.safetensors").exists()
    model, tokenizer = peft_sft.load_sft_lora()
    base, _ = gpt.load_base_model()
    ids = torch.tensor([tokenizer("ROMEO:\nBut soft")["input_ids"]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            unadapted = model(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    assert torch.allclose(unadapted, plain, atol=1e-6)
    assert not torch.allclose(adapted, plain, atol=1e-4)
    assert any("loss" in row for row in peft_sft.lora_log_history())

    # The comparison: one row per method, sizes as the arithmetic says, adapters kept.
    rows = {row["method"]: row for row in peft_sft.peft_comparison()}
    assert set(rows) == {"LoRA r=2, 3 steps", "LoRA r=1", "LoRA r=2", "LoRA r=2, special tokens frozen", "IA3",
                         "prompt tuning (2 tokens)"}
    assert [row["steps"] for row in rows.values()] == [3, 2, 2, 2, 2, 2]  # the lesson's adapter, then the sweep
    assert rows["LoRA r=2, 3 steps"]["trainable"] == rows["LoRA r=2"]["trainable"]
    frozen = rows["LoRA r=1"]["total"] - rows["LoRA r=1"]["trainable"]
    tokens = len(peft_sft.SPECIAL_TOKEN_IDS) * TINY.gpt.n_embd  # the special tokens' embedding rows
    assert rows["LoRA r=2, special tokens frozen"]["trainable"] + tokens == rows["LoRA r=2"]["trainable"]
    assert rows["LoRA r=2"]["trainable"] - tokens == 2 * (rows["LoRA r=1"]["trainable"] - tokens)  # r * (in + out)
    assert rows["prompt tuning (2 tokens)"]["trainable"] == 2 * TINY.gpt.n_embd
    for row in rows.values():
        assert 0 < row["trainable"] < frozen and row["final_loss"] > 0
        assert 0.0 <= row["rate_low"] <= row["rate"] <= row["rate_high"] <= 1.0
        assert row["adam_state_mb"] == 8 * row["trainable"] / 1e6
    assert peft_sft.peft_comparison() == list(rows.values())  # the second call reads the artifact

    # A second adapter on the same base, switched at run time.
    with lora.quiet_peft():
        model.load_adapter(str(peft_sft.comparison_adapter("LoRA r=1")), adapter_name="r1")
    model.set_adapter("r1")
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-4)
        model.set_adapter("default")
        assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-6)
