"""Statistics over masked tensors (padding and prompt positions excluded)."""

from __future__ import annotations


def masked_sum(values, mask, dim=None):
    """Sum of `values` where `mask` is true."""
    values = values * mask
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(values, mask, dim=None):
    """Mean of `values` where `mask` is true; 0 where nothing is selected."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values, mask, unbiased: bool = True):
    """Variance of the selected values (Bessel-corrected by default, as PPO implementations use)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        if count < 2:
            raise ValueError("masked_var needs at least two selected values for an unbiased estimate")
        var = var * count / (count - 1)
    return var


def masked_whiten(values, mask, shift_mean: bool = True, eps: float = 1e-8):
    """Normalise the selected values to unit variance (and zero mean unless shift_mean is False)."""
    import torch

    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened
