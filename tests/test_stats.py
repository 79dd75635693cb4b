"""The prompt-level bootstrap: intervals that cover, widen for correlated rows, and pair."""

import numpy as np
import pytest

from rlhf_helpers import stats


def test_an_interval_brackets_the_mean_and_repeats_with_its_seed():
    values = np.random.default_rng(1).normal(0.6, 0.2, size=300)
    first = stats.bootstrap_mean(values)
    assert first.low < values.mean() < first.high and first.estimate == pytest.approx(values.mean())
    assert stats.bootstrap_mean(values) == first
    assert first.high - first.low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(300), rel=0.15)


def test_resampling_prompts_widens_the_interval_of_correlated_rows():
    rng = np.random.default_rng(2)
    prompt_effect = rng.normal(0, 1, size=30)
    groups = np.repeat(np.arange(30), 10)  # ten rows per prompt, sharing its effect
    values = prompt_effect[groups] + rng.normal(0, 0.1, size=300)
    rows = stats.bootstrap_mean(values)
    prompts = stats.bootstrap_mean(values, groups)
    assert (prompts.high - prompts.low) > 2.5 * (rows.high - rows.low)


def test_a_paired_difference_of_a_model_with_itself_is_zero_and_a_real_gain_excludes_zero():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(40), 5)
    control = rng.integers(0, 2, size=200).astype(float)
    same = stats.paired_difference(control, control, groups)
    assert same.estimate == same.low == same.high == 0
    better = np.where(rng.random(200) < 0.3, 1.0, control)  # right on 30 % more of the rows
    gain = stats.paired_difference(better, control, groups)
    assert gain.low > 0 and gain.estimate == pytest.approx((better - control).mean())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="No values"):
        stats.bootstrap_mean([])
    with pytest.raises(ValueError, match="3 values but 2 group labels"):
        stats.bootstrap_mean([1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="same rows"):
        stats.paired_difference([1, 2], [1, 2, 3])
