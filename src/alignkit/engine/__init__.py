"""The training engine all methods share: the loop, checkpoints, metrics logging and reports."""
