"""Control tasks: labels permuted within each split, so that no input relates to them."""

from __future__ import annotations

import numpy as np


def control_labels(labels: np.ndarray, mask: np.ndarray, seed: int, stratum: int) -> np.ndarray:
    """Labels permuted at random within each label's task rows (the stratum); see the package doc.

    ``labels``/``mask`` ``[rows, labels]`` are the rows of one split; ``stratum`` tells the
    splits apart (0 train, 1 eval) so that they draw independent permutations. Rows outside a
    label's mask keep their label (they count for nothing). Each label keeps its number of
    positives among its rows exactly.
    """
    rng = np.random.default_rng([seed, 2, stratum])
    labels = np.asarray(labels)
    mask = np.asarray(mask, bool)
    shuffled = labels.copy()
    for label in range(labels.shape[1]):
        rows = np.flatnonzero(mask[:, label])
        shuffled[rows, label] = labels[rng.permutation(rows), label]
    return shuffled
