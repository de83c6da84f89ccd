"""Freezing: Learn&Drop's selection, but the frozen prefix still runs forward every step.

How to use: ``--strategy freezing --set warmup_epochs=5``; in a study, search ``warmup_epochs``.
This is the Learn&Drop paper's "Freezing" column: the layers to freeze are chosen exactly as
``learn_drop`` chooses the layers to drop (Eqs. 2-4, the median rule, the same warm-up and the
same options: ``selection``, ``min_drop``, ``median_rule``, ``standardize``; see the ``learn_drop``
card for their readings), after Xiao et al.'s freezing by gradient score. Once selected, a prefix
of blocks is frozen for the rest of training: it runs forward under ``no_grad`` every step (with
augmentation, like the baseline), its BatchNorm is in eval mode and its parameters leave the
optimizer. The epoch record carries the same ``layer_scores``, ``layer_scores_std``,
``dropped_blocks`` (frozen this epoch) and ``drop_selected`` fields.

Suggested hyperparameters: as for ``learn_drop`` (``warmup_epochs`` 5 of 60 epochs on MNIST, 10 of
60 on CIFAR-10, 25 of 150 on Imagenette in the paper); the study default searches 1..10, cut to
the values that still act in a shorter run, and down to 0 where only 1 would (a 3-epoch study
searches 0..1).

What it skips: the frozen prefix's backward (input and weight gradients) and its optimizer
update; not its forward, which is why the paper measures only 1-8% less training time for freezing
against 57-74% for dropping, at about the same accuracy.

Paper: Cruciata et al., "Learn & drop: fast learning of CNNs based on layer dropping", Neural
Computing and Applications (2024), Tables 1-2 "Freezing" (../shared/papers/learn-and-drop.txt);
Xiao et al., "Fast deep learning training through intelligently freezing layers" (2019).
"""
from .layer_scores import ScoreSelection


class Freezing(ScoreSelection):
    __doc__ = __doc__
    name = "freezing"
    cache = False  # the frozen prefix runs forward (no grad) every step
    hparams = ScoreSelection.hparams
