"""course/memory.py: parameter counts against real models and published figures, the memory
arithmetic against a case worked by hand, and README.md's table against the function."""

import pytest

from course import memory
from rlhf_helpers.env import PROFILES
from rlhf_helpers.tokenizers import COURSE_VOCAB_SIZE

# A GPT-2 shape small enough to count by hand: 1 layer, width 4, 10 tokens, context 8.
TINY = memory.gpt2("tiny", layers=1, width=4, vocab=10, context=8)


def test_a_tiny_gpt2_counted_by_hand():
    # token table 10 x 4 = 40, position table 8 x 4 = 32;
    # block: c_attn 4x12 + 12 = 60, attn c_proj 4x4 + 4 = 20, c_fc 4x16 + 16 = 80,
    #        mlp c_proj 16x4 + 4 = 68, two LayerNorms 2 x (4 + 4) = 16  -> 244;
    # final LayerNorm 8; the output layer is the token table (tied): 0.
    assert memory.parameters(TINY) == 40 + 32 + 244 + 8 == 324
    assert memory.parameters(TINY, head="scalar") == 324 + 4  # a width -> 1 score, no bias
    # rank 2 on c_attn 2x(4+12), c_proj 2x(4+4), c_fc 2x(4+16), c_proj 2x(16+4)
    assert memory.lora_parameters(TINY, rank=2) == 32 + 16 + 40 + 40 == 128


def test_sft_memory_of_the_tiny_model_by_hand():
    got = memory.estimate(TINY, memory.STAGES["sft"], memory.Batch(examples=2, context=8), memory.FP32)
    assert got.weights == 324 * 4 and got.gradients == 324 * 4 and got.optimizer == 324 * 8
    # 2 x 8 tokens x 1 layer x width 4 x 17 values x 4 bytes, and 2 x 8 tokens x 10 logits x 8 bytes
    assert got.activations == 2 * 8 * 1 * 4 * 17 * 4 + 2 * 8 * 10 * 8 == 4352 + 1280
    assert got.total == 5184 + 5632


def test_ppo_keeps_four_models_and_a_lora_policy_drops_the_reference():
    lm, scalar = 324, 328  # parameters of TINY with either head, counted above
    batch = memory.Batch(examples=1, context=8)
    full = memory.estimate(TINY, memory.STAGES["ppo"], batch, memory.FP32)
    # trained: policy (lm) and value (scalar) at 16 bytes; frozen: reference (lm), reward (scalar) at 4
    assert full.weights + full.gradients + full.optimizer == 16 * (lm + scalar) + 4 * (lm + scalar)
    # activations of the two trained models; logits only for the policy
    assert full.activations == 2 * (8 * 1 * 4 * 17 * 4) + 8 * 10 * 8

    lora = memory.estimate(TINY, memory.STAGES["ppo"], batch, memory.FP32, lora_rank=2)
    adapters = 128 + (128 + 4)  # the policy's adapter; the value model's, and its score head in full
    frozen = lm + scalar + scalar  # the policy's and the value model's bases, the reward model; no reference
    assert lora.weights == 4 * frozen + 4 * adapters
    assert lora.gradients == 4 * adapters and lora.optimizer == 8 * adapters


def test_one_model_agrees_with_lesson_04s_arithmetic():
    from rlhf_helpers import lora

    got = memory.estimate(memory.GPT2_SMALL, memory.STAGES["sft"], memory.Batch(1, 1))
    params = memory.parameters(memory.GPT2_SMALL)
    assert got.weights + got.gradients + got.optimizer == pytest.approx(lora.training_memory_gb(params, "fp32") * 1e9)


def test_dpo_runs_each_comparison_as_two_sequences():
    one = memory.estimate(TINY, memory.STAGES["sft"], memory.Batch(1, 8))
    dpo = memory.estimate(TINY, memory.STAGES["dpo"], memory.Batch(1, 8))
    assert dpo.activations == 2 * one.activations
    assert dpo.weights == one.weights + 324 * 4  # plus the frozen reference


def test_4bit_stores_only_the_block_matrices_in_4_bits():
    # TINY's matrices: 4x12 + 4x4 + 4x16 + 16x4 = 192 of its 324 (or 328) parameters
    assert memory.matrix_parameters(TINY) == 192
    assert memory.frozen_bytes(TINY, "lm", memory.NF4) == pytest.approx(192 * 4.127 / 8 + (324 - 192) * 2)


@pytest.mark.parametrize("shape, published", [
    (memory.GPT2_SMALL, 124_439_808),  # Hugging Face's gpt2: model.num_parameters()
    (memory.GPT2_MEDIUM, 354_823_168),  # gpt2-medium
    (memory.LLAMA2_7B, 6_738_415_616),  # Llama-2-7b-hf
])
def test_parameter_counts_match_the_published_models(shape, published):
    assert memory.parameters(shape) == published


def test_qwen_and_smollm_match_their_model_cards():
    # Qwen2.5-0.5B's card: 0.49 B parameters, 0.36 B without embeddings; SmolLM-135M: 135 M
    qwen = memory.parameters(memory.QWEN25_05B)
    assert round(qwen / 1e9, 2) == 0.49
    assert round((qwen - memory.QWEN25_05B.vocab * memory.QWEN25_05B.width) / 1e9, 2) == 0.36
    assert abs(memory.parameters(memory.SMOLLM_135M) / 135e6 - 1) < 0.01


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_course_shape_counts_the_course_models_parameters(profile):
    import torch
    from transformers import GPT2ForSequenceClassification

    from rlhf_helpers import gpt, lora

    sizes = PROFILES[profile]
    shape = memory.course_shape(sizes, COURSE_VOCAB_SIZE)
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = gpt.GPT(gpt.GPTConfig.from_sizes(sizes.gpt, COURSE_VOCAB_SIZE))
        config = gpt.hf_config(model.config)
        config.num_labels = 1  # one score, as rlhf_helpers/reward.py loads it
        reward_model = GPT2ForSequenceClassification(config)
    assert memory.parameters(shape) == sum(p.numel() for p in model.parameters())
    assert memory.parameters(shape, "scalar") == sum(p.numel() for p in reward_model.parameters())
    lora.add_lora(model, r=sizes.peft.r)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory.lora_parameters(shape, sizes.peft.r) == trainable


def test_comparisons_are_cut_where_the_trainers_cut_them(tmp_path):
    from rlhf_helpers import beyond_ppo, reward

    sizes = PROFILES["cpu"]
    assert reward.reward_trainer_config(sizes.reward, str(tmp_path)).max_length == memory.PAIR_MAX_LENGTH
    assert beyond_ppo.dpo_trainer_config(sizes.beyond, str(tmp_path)).max_length == memory.PAIR_MAX_LENGTH


def test_a_cell_says_which_card_fits():
    gib = memory.GIB
    assert memory.cell(0.5 * gib) == "512 MB"
    assert memory.cell(21 * gib) == "21"  # under 90% of 24 GB
    assert memory.cell(23 * gib) == "23 †"  # over it: an 80 GB card
    assert memory.cell(73 * gib) == "73 ✗"  # over 90% of 80 GB too
    assert memory.cell(None) == "—"


def test_lora_only_rows_have_no_pretraining_column():
    row = next(r for r in memory.rows(PROFILES, COURSE_VOCAB_SIZE) if r.lora_only)
    estimates = memory.row_estimates(row)
    assert estimates["base"] is None and estimates["sft"] == estimates["sft_lora"]


def test_readme_table_is_the_functions_output():
    readme = (memory.Path(memory.__file__).resolve().parents[1] / "README.md").read_text()
    table = memory.markdown_table(PROFILES, COURSE_VOCAB_SIZE)
    assert memory.readme_with_current_table(readme, table) == readme, \
        "README.md's memory table is stale: run `python -m course memory --readme`"
    assert table in readme
