"""The one formula that turns a run's seed and an epoch into the seed of that epoch's draws
(shuffles, DeepCluster's k-means and head), so every place that reseeds per epoch agrees."""


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (seed, epoch) pair."""
    return int(seed) * 1_000_003 + int(epoch)
