"""Baseline: plain SGD on the whole net.

How to use: ``--strategy baseline``; in a study, repeat it over seeds (``repeats``) so every other
strategy's ``time_saved`` and ``accuracy_delta`` has a reference (the median baseline).
Hyperparameters: none. What it skips: nothing. Paper: none (the reference every paper compares to).
"""
from .base import Strategy


class Baseline(Strategy):
    __doc__ = __doc__
    name = "baseline"
    hparams = {}
