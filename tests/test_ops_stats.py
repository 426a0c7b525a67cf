"""Masked statistics against values worked out by hand."""

import pytest
import torch

from alignkit.ops.stats import masked_mean, masked_sum, masked_var, masked_whiten

VALUES = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 6.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.float32)


def test_masked_sum_and_mean_skip_masked_values():
    # selected: 1 2 3 | 4 5 6  -> sum 21, mean 3.5; rows: 6/3 = 2, 15/3 = 5
    assert masked_sum(VALUES, MASK).item() == 21.0
    assert masked_mean(VALUES, MASK).item() == 3.5
    assert masked_mean(VALUES, MASK, dim=1).tolist() == [2.0, 5.0]


def test_masked_mean_of_nothing_is_zero_not_nan():
    assert masked_mean(VALUES, torch.zeros_like(MASK)).item() == 0.0


def test_masked_var_bessel_corrected():
    # values 1..6, mean 3.5, squared deviations sum 17.5; biased 17.5/6, unbiased 17.5/5 = 3.5
    assert masked_var(VALUES, MASK).item() == pytest.approx(3.5)
    assert masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(17.5 / 6)


def test_masked_whiten_gives_zero_mean_unit_variance_on_selected():
    w = masked_whiten(VALUES, MASK)
    assert masked_mean(w, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, MASK).item() == pytest.approx(1.0, rel=1e-5)
    kept = masked_whiten(VALUES, MASK, shift_mean=False)
    assert masked_mean(kept, MASK).item() == pytest.approx(3.5, rel=1e-5)


def test_masked_var_needs_two_values():
    with pytest.raises(ValueError):
        masked_var(VALUES, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
