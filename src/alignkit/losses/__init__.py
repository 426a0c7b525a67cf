"""Loss functions: pure functions of tensors and hyper-parameters (no models, no configs)."""
