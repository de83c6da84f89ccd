"""Learn&Drop: drop the leading blocks that stopped learning, and train the rest on their cached output.

How to use: ``--strategy learn_drop --set warmup_epochs=5``; in a study, search ``warmup_epochs``.
The whole net trains for ``warmup_epochs`` epochs. From then on, at the end of every epoch each
block still training is scored by how much its weights still move: P_l = 1 - sum_i |sum_j g_lij| /
sum_i sum_j |g_lij| (Eq. 2; i runs over the block's conv/linear kernels, j over the epoch's steps),
standardized over the blocks (Eq. 3), and the leading blocks up to the first block t with
P'_t > 0 and P'_{t+1} < 0 (Eq. 4; the blocks before t may score either way) are dropped if their
median P'_l is at least the median P'_l
the already dropped blocks had when they were dropped (the median rule). From the next epoch the
dropped prefix runs once over the training set (eval mode, no grad), its output is kept in the
feature cache (device memory if it fits its budget, else pinned host memory, else a memory-mapped
file in the run's directory, removed at the end) and only the remaining blocks and the head train,
fed from the cache. A later drop pushes the cache through the newly dropped blocks (never again
from the images). Evaluation always runs the whole net. Every epoch's P_l and P'_l per block go to
the epoch record (``layer_scores``, ``layer_scores_std``; a dropped block keeps its last score), with
``dropped_blocks`` (out of training this epoch) and ``drop_selected`` (for the next one).

Suggested hyperparameters: the paper's ``warmup_epochs`` are 5 of 60 epochs (MNIST), 10 of 60
(CIFAR-10) and 25 of 150 (Imagenette), with batch size 256; the study default searches 1..10, cut to
the values that still act in a shorter run, and down to 0 where only 1 would (a 3-epoch study
searches 0..1).
The paper reports 57-74% less training time for 0.3-3.2 points of accuracy.

What it skips: for the dropped prefix, every forward, backward, weight gradient and optimizer
update (its parameters leave the optimizer, its BatchNorm stays in eval mode and its weights,
running statistics included, are bit-identical from the drop to the end). The cost is one forward
of the newly dropped blocks over the training set at each drop. The cache holds the maps of the
un-augmented images (the paper stores them once too), so the trained part sees no crop/flip after
a drop. The last block and the head are never dropped.

Readings where the paper is ambiguous (the defaults follow the printed formulas):

* Units: the paper scores conv layers; here a "layer" is a block of the net (a conv+BN+ReLU(+pool)
  for VGG, a residual unit with its shortcut for ResNets, so the skip path is inside the cached
  map, as the paper's Fig. 4 requires). A block's P_l sums Eq. 2 over all its conv/linear kernels;
  BN parameters and biases are not scored. Gradients are the loss gradients (weight decay not
  included).
* Timing: Algorithm 1 trains e1 warm-up epochs, then scores after every following epoch; so the
  first selection is at the end of epoch ``warmup_epochs`` (0-based) and a drop takes effect at the
  start of the next epoch (the paper's k+1). Scores are still computed and recorded during warm-up.
* ``selection``: ``eq4`` (default) is Eq. 4 as printed, the smallest t with P'_t > 0 and
  P'_{t+1} < 0 (the candidates are the blocks up to and including t); ``max_prefix_sum`` is the
  text's "sub-vector of maximum sum starting from the first element" (dropped only if that sum
  is positive). They differ when the maximum-sum prefix runs past Eq. 4's first sign change:
  scores 1, -0.1, 2, -3 make one block a candidate under ``eq4`` and three under ``max_prefix_sum``.
* ``min_drop``: the text asks for a prefix that "includes at least one layer" (default 1);
  Algorithm 1's ``n* > 1`` reads as at least two blocks (``min_drop=2``).
* ``median_rule``: M_c over the candidates' P'_l; M_d over the P'_l the dropped blocks had when
  they were dropped (stored, never recomputed); before any drop M_d does not exist and the rule
  passes. ``median_rule=false`` turns the check off.
* ``standardize``: Eq. 3's mean and (population) standard deviation are taken over the blocks
  still training (``head``, default: "P'_l is recomputed only for each layer of the head") or
  over all blocks, the dropped ones with their stored P_l (``all``). All scores equal: P' = 0,
  nothing dropped.

Paper: Cruciata, Cruciata, Lo Presti, van Gemert, La Cascia, "Learn & drop: fast learning of CNNs
based on layer dropping", Neural Computing and Applications (2024) (../shared/papers/learn-and-drop.txt, Sec. 3, Alg. 1).
"""
from .layer_scores import ScoreSelection


class LearnDrop(ScoreSelection):
    __doc__ = __doc__
    name = "learn_drop"
    cache = True  # the dropped prefix's output comes from the feature cache: no forward at all
    hparams = ScoreSelection.hparams
