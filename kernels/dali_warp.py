"""The warp as an NVIDIA DALI pipeline, the colour jitter in torch on the same device.

One graph, two placements: ``DaliWarp(size, placement="cpu")`` builds it with CPU operators
(``device_id=None``, what CI can run), ``placement="gpu"`` with GPU operators. It applies the
same sampled parameters as the other backends:

- each patch gets a crop of its pyramid level covering its footprint (+2 texels; one crop
  side for the whole batch, gathered from the pyramid atlas in one indexing op and fed through
  ``fn.external_source`` as one dense array), and the 2x3 matrix re-expressed in that crop's
  coordinates, in DALI's convention (pixel edges at integers: the centre of pixel k is k + 0.5,
  as PIL);
- ``fn.warp_affine`` without ``fill_value`` clamps to the border, like the other backends;
- the crop-box fill is a second, nearest-neighbour warp of a constant R x R image with the box
  matrix (``fill_value=0`` outside), multiplied in.

The pipeline hands the float warp to torch (on the GPU without leaving it), where the colour
jitter runs as in the torch backend (:func:`~kernels.torch_warp.colour`: each patch's four
operations in its own order, contrast towards the mean grey of every 4th row and column),
then the rounding to uint8. The jitter was first written in DALI arithmetic with one DALI
conditional per operation and position, which split and merge the batch sample by sample: on
the CPU placement that form rendered 2,698 patches/s at S = 16 against 25,180 for this one
(``fastssl bench augment --only fastssl-dali``), and on an H200 it held the pipeline to a few
thousand patches/s at every patch size (``docs/benchmarks.md``).
"""

from __future__ import annotations

import numpy as np

from .backend import Backend
from .pyramid import atlas_of


def to_edge_convention(m: np.ndarray) -> np.ndarray:
    """(n, 2, 3) maps between pixel-centre coordinates -> the same maps with pixel edges at integers."""
    out = m.copy()
    out[:, :, 2] = m[:, :, 2] + 0.5 - m[:, :, :2] @ np.array([0.5, 0.5])
    return out


def dense_crops(level_matrix: np.ndarray, level: np.ndarray, shape: np.ndarray, size: int, margin: int = 2, align=8):
    """One crop side ``C`` for the whole batch and, per patch, the (x0, y0) of its crop in its
    level, with the matrix shifted into crop coordinates.

    ``C`` covers the largest footprint of the batch (+ ``margin`` texels each side), rounded up
    to ``align`` so few distinct shapes reach the pipeline. The crop starts inside the level;
    where it runs past the level's edge the gather replicates the edge, which is the border
    clamp of the other backends. Computed on the host from the sampled parameters: no device
    synchronisation.
    """
    S = size
    corners = np.array([[-0.5, -0.5, 1], [S - 0.5, -0.5, 1], [-0.5, S - 0.5, 1], [S - 0.5, S - 0.5, 1]]).T
    pts = level_matrix @ corners  # (n, 2, 4)
    lo = np.floor(pts.min(axis=2)).astype(np.int64) - margin
    hi = np.ceil(pts.max(axis=2)).astype(np.int64) + margin + 1
    side = int((hi - lo).max()) if len(lo) else 1
    side = -(-side // align) * align
    wh = shape[level]  # (n, 2) of (w, h)
    xy0 = np.clip(lo, 0, wh - 1)
    m = level_matrix.copy()
    m[:, :, 2] -= xy0
    return xy0, side, m


def gather_crops(image, origin, shape, level, xy0, side: int):
    """(n, C, C, 3) crops of an :class:`~kernels.pyramid.Atlas` image (numpy, or a torch tensor
    on its device: one indexing op either way), edges replicated past each level's border."""
    k = np.arange(side)
    wh = shape[level]
    xs = np.minimum(xy0[:, :1] + k, wh[:, :1] - 1) + origin[level][:, :1]  # (n, C)
    ys = np.minimum(xy0[:, 1:] + k, wh[:, 1:] - 1) + origin[level][:, 1:]
    if isinstance(image, np.ndarray):
        return image[ys[:, :, None], xs[:, None, :]]
    import torch

    xs = torch.from_numpy(xs).to(image.device, non_blocking=True)
    ys = torch.from_numpy(ys).to(image.device, non_blocking=True)
    return image[ys[:, :, None], xs[:, None, :]]


class DaliWarp:
    """A built DALI pipeline for patches of side ``size`` (crop box of side ``resized``)."""

    def __init__(
        self, size: int, resized: int, max_batch: int, placement: str = "cpu", device_id: int = 0, threads: int = 2
    ):
        from nvidia.dali import fn, pipeline_def, types

        if placement not in ("cpu", "gpu"):
            raise ValueError(f"placement must be cpu or gpu, got {placement!r}")
        self.size, self.resized, self.placement, self.max_batch = size, resized, placement, max_batch
        self.device_id = device_id
        dev = "gpu" if placement == "gpu" else "cpu"

        @pipeline_def(
            batch_size=max_batch,
            num_threads=threads,
            device_id=device_id if dev == "gpu" else None,
            prefetch_queue_depth=1,
        )
        def graph():
            crop = fn.external_source(name="crop", layout="HWC", device=dev)
            ones = fn.external_source(name="ones", layout="HWC", device=dev)
            mat = fn.external_source(name="mat")
            box = fn.external_source(name="box")
            # float out: the interpolated value is not rounded before the colour jitter
            img = fn.warp_affine(
                crop,
                matrix=mat,
                size=(size, size),
                interp_type=types.INTERP_LINEAR,
                inverse_map=True,
                dtype=types.FLOAT,
            )
            mask = fn.warp_affine(
                ones, matrix=box, size=(size, size), interp_type=types.INTERP_NN, inverse_map=True, fill_value=0
            )
            return img * mask

        self.pipe = graph()
        self.pipe.build()
        # the crop-box mask's source, one per sample, resident where the pipeline runs
        self._ones = np.ones((max_batch, resized, resized, 1), np.uint8)
        if dev == "gpu":
            import torch

            self._ones = torch.from_numpy(self._ones).to(torch.device("cuda", device_id))

    def run(
        self,
        atlas,
        level_matrix: np.ndarray,
        box: np.ndarray,
        level: np.ndarray,
        jitter: np.ndarray,
        factors: np.ndarray,
        order: np.ndarray,
    ):
        """(n, S, S, 3) uint8 for the given parameters: numpy in the CPU placement, a CUDA tensor
        in the GPU one. ``atlas``: a :class:`~kernels.pyramid.Atlas` whose image is a numpy array
        (CPU) or a uint8 CUDA tensor resident on the device (GPU)."""
        import torch

        from .torch_warp import colour, to_uint8_nhwc

        xy0, side, m = dense_crops(level_matrix, level, atlas.shape, self.size)
        crops = gather_crops(atlas.image, atlas.origin, atlas.shape, level, xy0, side)  # one dense batch
        # box maps output pixels to normalised crop-box coords (p + 0.5) / R; DALI wants R-space
        # pixels, and R * box is already R-space in its pixel-edge convention
        box_r = box * self.resized
        box_r[:, :, 2] -= 0.5
        n = len(level)
        feeds = {
            "crop": crops,
            "ones": self._ones[:n],
            "mat": to_edge_convention(m).astype(np.float32),
            "box": to_edge_convention(box_r).astype(np.float32),
        }
        for name, data in feeds.items():
            self.pipe.feed_input(name, data)
        (out,) = self.pipe.run()
        if self.placement == "gpu":
            # DALI reuses its output buffer, so the batch is copied once into a torch tensor, on
            # torch's current stream, ordered after DALI's work by the plugin's copy_to_external
            from nvidia.dali.plugin.pytorch import feed_ndarray

            t = out.as_tensor()
            dev = torch.device("cuda", self.device_id)
            x = feed_ndarray(t, torch.empty(t.shape(), dtype=torch.float32, device=dev), torch.cuda.current_stream(dev))
        else:
            dev = torch.device("cpu")
            x = torch.from_numpy(np.array(out.as_tensor()))

        def t(a, dt):
            return torch.as_tensor(a, dtype=dt).to(dev, non_blocking=True)

        x = colour(x.permute(0, 3, 1, 2), t(jitter, torch.bool), t(factors, torch.float32), t(order, torch.int64))
        nhwc = to_uint8_nhwc(x).permute(0, 2, 3, 1)  # NHWC view of the channels-last batch
        return nhwc if self.placement == "gpu" else nhwc.numpy()


class DaliBackend(Backend):
    """The DALI pipeline: GPU operators on a CUDA device (the pyramid atlas resident there),
    DALI's CPU operators on the CPU. The pipeline is built on first use, for the largest batch
    seen."""

    name = "dali"
    auto_rank = {"cuda": 1}  # auto: after torch on a GPU (gpu_check on an H200: 7-68x slower)
    many_images = True

    @classmethod
    def unavailable(cls, device_type: str) -> str | None:
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            return "NVIDIA DALI is not installed (pip install 'fastssl[dali]')"
        return None

    def __init__(self, levels, size, resized, device, threads=None, **options):
        import os

        import torch

        super().__init__(levels, size, resized, device, threads)
        self.device = torch.device(device)
        self.threads = int(threads or len(os.sched_getaffinity(0)))
        self.atlas, self.first = atlas_of(levels)
        if self.device.type == "cuda":  # the pyramid stays resident on the GPU
            self.atlas.image = torch.from_numpy(self.atlas.image).to(self.device)
        self._pipe = None

    def render(self, p, out=None):
        n = p.n
        if self._pipe is None or self._pipe.max_batch < n:
            gpu = self.device.type == "cuda"
            self._pipe = DaliWarp(
                self.size,
                self.resized,
                max(n, 1),
                "gpu" if gpu else "cpu",
                (self.device.index or 0) if gpu else 0,
                self.threads,
            )
        return self._pipe.run(self.atlas, p.level_matrix, p.box, p.level, p.jitter, p.factors, p.order)
