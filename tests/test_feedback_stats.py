import pytest

from alignkit.stats import wilson_interval


def test_wilson_interval_hand_worked():
    """8 of 10, z = 1.96: p = 0.8, d = 1 + z²/n = 1.38415, centre = (0.8 + z²/20)/d = 0.71674,
    half = z·√(0.016 + z²/400)/d = 0.22658 → (0.49016, 0.94332).
    0 of 10: centre = half = 0.13877 → (0, 0.27753), not the useless (0, 0) of the normal approximation."""
    assert wilson_interval(8, 10) == pytest.approx((0.490162, 0.943318), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-5)
    low, high = wilson_interval(500, 1000)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.959964 * 0.5 / 1000 ** 0.5, rel=0.01)
    assert wilson_interval(0, 0) == (0.0, 1.0)
