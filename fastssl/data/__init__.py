"""Labelled image data: sources (ImageFolder, tar archives, CIFAR-10, ImageNet), FFCV .beton
writing, and loaders that yield the project's batch contract (uint8 channels-last + labels)."""

from .sources import LabelledSource, open_source, split_indices

__all__ = ["LabelledSource", "open_source", "split_indices"]
