"""Capacity-constrained k-means: k clusters of at most `capacity` points each.

Lloyd's iterations in which the assignment step is an optimal transport of points to cluster slots:
every cluster offers `capacity` slots, and scipy's `linear_sum_assignment` gives each point one slot so
that the total squared distance is least. Centers start from sklearn's (unconstrained) k-means++ run, so
the constraint only moves the points that would overflow a cluster.
"""
from __future__ import annotations

import warnings

import numpy as np


def capacity_kmeans(x: np.ndarray, k: int, capacity: int, seed: int, max_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Points [n, d] -> (labels [n] in 0..k-1, centers [k, d]) with at most `capacity` points per label.

    Needs k * capacity >= n. A cluster left empty keeps its starting center.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans  # heavy import, only when building
    from sklearn.exceptions import ConvergenceWarning

    n = x.shape[0]
    if k < 1 or capacity < 1 or k * capacity < n:
        raise ValueError(f"{k} clusters of at most {capacity} points cannot hold {n} points")
    if k == 1:
        return np.zeros(n, np.int64), x.mean(axis=0, keepdims=True)
    if k >= n:  # one point per cluster
        return np.arange(n, dtype=np.int64), np.concatenate([x, np.repeat(x[:1], k - n, axis=0)])
    with warnings.catch_warnings():  # duplicate points leave fewer distinct clusters than k
        warnings.simplefilter("ignore", ConvergenceWarning)
        centers = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(x).cluster_centers_
    slots = min(capacity, n)  # no cluster needs more slots than there are points
    labels = np.full(n, -1, np.int64)
    for _ in range(max_iter):
        cost = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=-1)  # [n, k]
        _, slot = linear_sum_assignment(np.repeat(cost, slots, axis=1))  # rows come back in order 0..n-1
        new = (slot // slots).astype(np.int64)
        if (new == labels).all():
            break
        labels = new
        for c in np.unique(labels):
            centers[c] = x[labels == c].mean(axis=0)
    return labels, centers
