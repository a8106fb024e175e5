"""Stateless, in-place optimizer steps on explicit buffers.

Each function updates ``param`` and its state buffers in place, from ``grad``,
exactly as one step of the torch.optim class of the same name.  State buffers
have torch's names (momentum_buffer, sum, square_avg, grad_avg, exp_avg,
exp_avg_sq, max_exp_avg_sq) and the param's dtype and shape; hyperparameters
are keyword-only; ``step`` is the 1-based step number where the math needs it.

The ``*_multi`` forms take lists of buffers (``steps``: an int or one per
buffer) and update them all in one C call, bitwise equal to one call per
buffer.
"""
from gdcore._core import (adagrad, adagrad_multi, adam, adam_multi, adamw, adamw_multi,
                          rmsprop, rmsprop_multi, sgd, sgd_multi)

__all__ = ["sgd", "adagrad", "rmsprop", "adam", "adamw",
           "sgd_multi", "adagrad_multi", "rmsprop_multi", "adam_multi", "adamw_multi"]
