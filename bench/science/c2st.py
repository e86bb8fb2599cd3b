"""The classifier two-sample test (C2ST) of two sets of vectors, as sbibm defines it
(Lueckmann et al. 2021, "Benchmarking simulation-based inference"; sbibm's
``sbibm.metrics.c2st``, MIT licence: read and reimplemented here, not copied; Lopez-Paz and
Oquab 2017 for the test itself).

Definition (x: n model samples, y: n reference rows, both (n, d); equal sizes, so that 0.5
is chance):

1. z-score BOTH sets with the REFERENCE's per-column mean and standard deviation (a
   constant reference column keeps scale 1, so it is only centred);
2. label the reference 0 and the samples 1 and pool them;
3. a scikit-learn ``MLPClassifier(hidden_layer_sizes=(10 d, 10 d), activation="relu",
   solver="adam", random_state=seed)``, otherwise at scikit-learn's defaults (batches of
   200, learning rate 1e-3), is trained on each of `FOLDS` stratified, shuffled
   (``random_state=seed``) folds' complement and predicts the held-out fold;
4. the value is the accuracy of all 2n held-out predictions (with stratified folds of
   equal size this is the mean of the fold accuracies, sbibm's figure).

0.5: the classifier cannot tell the sets apart (the optimum; a value below 0.5 is noise: a
flexible classifier reads a little below 0.5 on data against data, since a held-out row's
own set is under-represented near it in the training folds), 1: perfectly separated. The
Bayes accuracy 1/2 + TV(p, q)/2 bounds it from above.

Training budget (the one departure from sbibm, whose ``max_iter=10000`` stops when the
TRAINING loss stalls): scikit-learn's ``early_stopping=True`` (`VALIDATION_FRACTION` of each
training fold held out; stop after `patience` epochs without a better validation accuracy
and keep the best epoch's weights), at most `MAX_ITER` epochs. Measured on one core, 2000
vs 2000 rows, 5 folds:

- 43-D (MINIBOONE's width, 430 x 430 hidden units), N(0, I) against a 0.3 shift (Bayes
  0.560): early stopping with patience 10 gives 0.528-0.542 in 12-14 s CPU (folds stop
  after 12-22 epochs); without it the net over-fits: 0.504 after 30 epochs (22 s). 6-D
  (POWER's width), patience 16: 0.543 in 3 s.
- 2-D checkerboard, exact rows against the rows blurred by N(0, 0.75^2 I) (Bayes accuracy
  0.729, |p - q| integrated on a grid): patience 10 reads 0.52-0.53 (the net stops before
  it has learnt the squares), 20: 0.539, 30: 0.597, 50: 0.544-0.603 (4-5 s), 100:
  0.625-0.638 (10-13 s); sbibm's own rule (training loss, tol 1e-4) stops after about 25
  epochs and reads 0.50 at a 0.3 blur (Bayes 0.609), 0.52 with tol 1e-7 (about 400
  epochs, 11 s). The net is far from the Bayes classifier here: patience 100 reads
  0.49-0.51 at a 0.3 blur, patience 50 0.52-0.53 at 0.5 (Bayes 0.668) and 0.54-0.60 at
  0.75; yet MMD^2 with the median bandwidth sees none of them (z = mmd2/se within +-0.7,
  +-0.4 and 0.8-1.3 on the same draws).

So the patience grows with the rows and shrinks with the width, `patience` =
rows // (`PATIENCE_ROWS` d) within [`PATIENCE_MIN`, `PATIENCE_MAX`] epochs: 50 for 2-D
data at 2000 rows, 10 from about 21-D on and for small samples (100-400 rows cost 0.2-0.4 s
each instead of about 1 s at patience 50, which the test suite's many tiny runs pay).

Standard error: the binomial sqrt(p (1 - p) / N) of the pooled accuracy p over its
N = 2n held-out predictions. It treats the predictions as independent and ignores the
fold-to-fold variance of the trained classifiers (another seed trains other classifiers).
Measured over 20 seeded replications, 2-D, 500 rows per side: on data against data the
spread is 0.011 against a mean se of 0.016 (conservative), under a 0.5 shift 0.021
against 0.016 (the se understates the spread by about 1.3x); compare two C2STs with care.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch

from bench.api import DataError
from bench.science.sample_metrics import Estimate

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["c2st", "patience", "FOLDS", "MAX_ITER", "PATIENCE_ROWS", "PATIENCE_MIN",
           "PATIENCE_MAX", "VALIDATION_FRACTION", "WIDTH", "CLASSIFIER", "MAX_ROWS"]

#: cross-validation folds (stratified, shuffled)
FOLDS = 5
#: hidden units per layer per data dimension (two layers of WIDTH * d, sbibm's choice)
WIDTH = 10
#: most epochs per fold
MAX_ITER = 1000
#: epochs without a better validation accuracy before a fold stops:
#: rows // (PATIENCE_ROWS * d) clamped to [PATIENCE_MIN, PATIENCE_MAX] (module docstring)
PATIENCE_ROWS = 20
PATIENCE_MIN = 10
PATIENCE_MAX = 50
#: share of each training fold held out for early stopping
VALIDATION_FRACTION = 0.1
#: rows per side the harness scores by C2ST (its cost grows with rows x d^2)
MAX_ROWS = 2000

CLASSIFIER = (f"sklearn MLPClassifier(2 x {WIDTH}*d relu, adam, early stopping: "
              f"{VALIDATION_FRACTION:g} validation, patience clamp(rows/({PATIENCE_ROWS} d), "
              f"{PATIENCE_MIN}, {PATIENCE_MAX}), <= {MAX_ITER} "
              f"epochs); {FOLDS}-fold stratified shuffled cross-validated accuracy; both "
              "sets z-scored with the reference's mean/std (sbibm c2st)")


def _check(x: Tensor, y: Tensor, folds: int) -> tuple[Tensor, Tensor]:
    if folds < 2:
        raise DataError(f"c2st needs at least 2 folds, got {folds}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"c2st needs (n, d) and (n, d) samples, got {tuple(x.shape)} and "
                        f"{tuple(y.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[0] < 2 * folds:
        raise DataError(f"c2st needs equal sizes of at least {2 * folds} rows per side, got "
                        f"{x.shape[0]} and {y.shape[0]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise DataError("c2st needs finite samples")
    return x.detach().double().cpu(), y.detach().double().cpu()


def patience(rows: int, d: int) -> int:
    """Early-stopping patience (epochs) of a C2ST of ``rows`` rows per side in d
    dimensions: rows // (PATIENCE_ROWS d) within [PATIENCE_MIN, PATIENCE_MAX]."""
    return min(PATIENCE_MAX, max(PATIENCE_MIN, rows // (PATIENCE_ROWS * d)))


def c2st(x: Tensor, y: Tensor, seed: int = 0, folds: int = FOLDS,
         max_iter: int = MAX_ITER) -> Estimate:
    """Cross-validated accuracy of an MLP telling samples ``x`` from reference ``y`` (module
    docstring), with its binomial standard error; ``Estimate.n`` is the rows per side.

    Args:
        x: (n, d) model samples. y: (n, d) reference rows (their mean/std z-score both).
        seed: seeds the folds and the classifier (deterministic for a given seed).
        folds: cross-validation folds. max_iter: most epochs per fold.
    """
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neural_network import MLPClassifier

    x, y = _check(x, y, folds)
    mean, std = y.mean(0), y.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    data = torch.cat([(y - mean) / std, (x - mean) / std]).numpy()
    target = np.concatenate([np.zeros(y.shape[0]), np.ones(x.shape[0])])
    width = WIDTH * x.shape[1]
    wait = patience(x.shape[0], x.shape[1])
    correct = 0
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(data, target):
        clf = MLPClassifier(hidden_layer_sizes=(width, width), activation="relu",
                            solver="adam", max_iter=max_iter, early_stopping=True,
                            validation_fraction=VALIDATION_FRACTION,
                            n_iter_no_change=wait, random_state=seed)
        with warnings.catch_warnings():  # max_iter reached: the budget, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(data[train], target[train])
        correct += int((clf.predict(data[held]) == target[held]).sum())
    total = data.shape[0]
    p = correct / total
    return Estimate(p, math.sqrt(p * (1.0 - p) / total), x.shape[0])
