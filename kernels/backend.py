"""The backend interface: how a batch of sampled patch parameters becomes pixels.

A backend is built once per source image and device: it receives the image's pyramid (level
0 first, each an (h, w, 3) uint8 array) and keeps whatever it needs resident on its device.
``render`` then turns one batch of parameters into a uint8 NHWC batch:

- ``level_matrix`` (n, 2, 3) float64: output pixel centre -> coordinates in the patch's level;
- ``box`` (n, 2, 3): output pixel -> normalised coordinates in the random-resized-crop box
  (pixels outside [0, 1)^2 are filled with 0);
- ``level`` (n,) int: the pyramid level each patch samples;
- ``jitter`` (n,) bool, ``factors`` (n, 4) float32 (brightness, contrast, saturation, hue),
  ``order`` (n, 4) int: the colour jitter, its four operations in that order.

They come as one :class:`RenderParams`. It returns a NumPy array (CPU placements, written
into ``out`` when one is given) or a torch tensor on the backend's device. Adding a backend is
one file with a subclass and one line in the registry (:data:`fastssl.kernels.BACKENDS`); what
the engine asks of it (``writes_into``, ``auto_rank``, ``profiler``, ``describe``) it declares.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

GREY = (0.299, 0.587, 0.114)  # luma weights of the grey image (contrast, saturation; Sobel input)
MEAN_STRIDE = 4  # contrast blends towards the mean grey of every 4th row and column


class UnsupportedInput(ValueError):
    """An input a backend cannot render (e.g. an image too large for its indices); the message
    is meant for the user, and the engine reports it as its one-line error."""


@dataclasses.dataclass(frozen=True)
class RenderParams:
    """One batch's parameters, as every backend applies them (fields: the list above)."""

    level_matrix: np.ndarray
    box: np.ndarray
    level: np.ndarray
    jitter: np.ndarray
    factors: np.ndarray
    order: np.ndarray

    @property
    def n(self) -> int:
        return len(self.level)


class Backend(abc.ABC):
    name = ""
    writes_into = False  # render() fills a caller's NumPy buffer (``out``) in place
    # ``auto``: on a device type, the available backend with the lowest rank renders (absent: never)
    auto_rank: dict[str, int] = {}
    profiler = "torch"  # how ``bench augment --profile`` looks inside: "stages" (timed passes) or "torch"
    # takes several images at once: ``levels`` a list of per-image level lists, their levels
    # numbered image after image (``RenderParams.level`` then counts over all of them), so a
    # batch from several images is one render call
    many_images = False

    @classmethod
    def describe(cls) -> str:
        """A few words on how it runs, for benchmark tables (e.g. a threading layer)."""
        return ""

    @classmethod
    def unavailable(cls, device_type: str) -> str | None:
        """None when this backend can render on a device of this type ("cpu", "cuda"), else why not."""
        return None

    def __init__(
        self, levels: list[np.ndarray], size: int, resized: int, device, threads: int | None = None, **options
    ):
        self.size, self.resized = int(size), int(resized)
        self.device = device
        self.threads = threads

    @abc.abstractmethod
    def render(self, p: RenderParams, out: np.ndarray | None = None):
        """(n, S, S, 3) uint8: a NumPy array, or a torch tensor on the device."""
