"""The warp + colour jitter as an NVIDIA DALI pipeline.

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

Colour jitter is written with DALI arithmetic, not with DALI's own hue/saturation operators
(those work in YIQ, not in the HSV formula the other backends share): the four operations run
in each patch's own order through DALI conditionals, and contrast blends towards the mean
grey of the strided sample points (a second warp at every 4th row and column, carried through
the same operations), exactly as in the Numba and torch backends.
"""

from __future__ import annotations

import numpy as np

from .backend import GREY as _W
from .backend import MEAN_STRIDE, Backend
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


def _clamp(v):
    import nvidia.dali.math as dm

    return dm.clamp(v, 0.0, 255.0)


def _hue(r, g, b, shift):
    """Hue rotation through HSV without branches, in DALI arithmetic: the torch backend's
    form (f(n) = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6), which gives the
    colour of HSV's sector table as the Numba kernel's own form does, to rounding."""
    import nvidia.dali.math as dm

    maxc = dm.max(r, dm.max(g, b))
    minc = dm.min(r, dm.min(g, b))
    cr = maxc - minc
    inv = (cr > 0.0) / dm.max(cr, 1e-20)
    rc = (maxc - r) * inv
    gc = (maxc - g) * inv
    bc = (maxc - b) * inv
    is_r = maxc == r
    is_g = (maxc == g) * (1 - is_r)
    is_b = (1 - is_r) * (1 - is_g)
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    h = h / 6.0 + 1.0 + shift
    h6 = (h - dm.floor(h)) * 6.0
    out = []
    for n in (5.0, 3.0, 1.0):
        k = h6 + n
        k = k - 6.0 * (k >= 6.0)
        out.append(maxc - cr * dm.clamp(dm.min(k, 4.0 - k), 0.0, 1.0))
    return out[0], out[1], out[2]


def _colour_ops(r, g, b, sr, sg, sb, fac, order):
    """Brightness / contrast / saturation / hue in each patch's order (DALI conditionals)."""
    from nvidia.dali import fn

    for k in range(4):
        op = order[k]
        if op == 0:
            f = fac[0]
            r, g, b = _clamp(r * f), _clamp(g * f), _clamp(b * f)
            sr, sg, sb = _clamp(sr * f), _clamp(sg * f), _clamp(sb * f)
        elif op == 1:
            f = fac[1]
            m = (1.0 - f) * fn.reductions.mean(_W[0] * sr + _W[1] * sg + _W[2] * sb)
            r, g, b = _clamp(f * r + m), _clamp(f * g + m), _clamp(f * b + m)
            sr, sg, sb = _clamp(f * sr + m), _clamp(f * sg + m), _clamp(f * sb + m)
        elif op == 2:
            f = fac[2]
            grey = (1.0 - f) * (_W[0] * r + _W[1] * g + _W[2] * b)
            sgrey = (1.0 - f) * (_W[0] * sr + _W[1] * sg + _W[2] * sb)
            r, g, b = _clamp(f * r + grey), _clamp(f * g + grey), _clamp(f * b + grey)
            sr, sg, sb = _clamp(f * sr + sgrey), _clamp(f * sg + sgrey), _clamp(f * sb + sgrey)
        else:
            r, g, b = _hue(r, g, b, fac[3])
            sr, sg, sb = _hue(sr, sg, sb, fac[3])
    return r, g, b


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
        small = -(-size // MEAN_STRIDE)

        def warp(crop, ones, mat, box, side):
            # float in, float out: the interpolated value is not rounded before the colour ops
            img = fn.warp_affine(
                crop,
                matrix=mat,
                size=(side, side),
                interp_type=types.INTERP_LINEAR,
                inverse_map=True,
                dtype=types.FLOAT,
            )
            mask = fn.warp_affine(
                ones, matrix=box, size=(side, side), interp_type=types.INTERP_NN, inverse_map=True, fill_value=0
            )
            return img * mask

        @pipeline_def(
            batch_size=max_batch,
            num_threads=threads,
            device_id=device_id if dev == "gpu" else None,
            prefetch_queue_depth=1,
            enable_conditionals=True,
        )
        def graph():
            import nvidia.dali.math as dm

            crop = fn.external_source(name="crop", layout="HWC", device=dev)
            ones = fn.external_source(name="ones", layout="HWC", device=dev)
            mat = fn.external_source(name="mat")
            box = fn.external_source(name="box")
            smat = fn.external_source(name="smat")
            sbox = fn.external_source(name="sbox")
            fac = fn.external_source(name="fac")
            order = fn.external_source(name="order")
            jit = fn.external_source(name="jit")
            x = warp(crop, ones, mat, box, size)
            r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
            if jit:
                xs = warp(crop, ones, smat, sbox, small)
                # the factors enter GPU arithmetic, so they move there; the op order and the
                # jitter flag drive conditionals, which take CPU predicates
                facs = fac.gpu() if dev == "gpu" else fac
                r, g, b = _colour_ops(r, g, b, xs[:, :, 0], xs[:, :, 1], xs[:, :, 2], facs, order)
            out = fn.stack(r, g, b, axis=2)
            return fn.cast(dm.floor(_clamp(out) + 0.5), dtype=types.UINT8)

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
        xy0, side, m = dense_crops(level_matrix, level, atlas.shape, self.size)
        crops = gather_crops(atlas.image, atlas.origin, atlas.shape, level, xy0, side)  # one dense batch
        # box maps output pixels to normalised crop-box coords (p + 0.5) / R; DALI wants R-space
        # pixels, and R * box is already R-space in its pixel-edge convention
        box_r = box * self.resized
        box_r[:, :, 2] -= 0.5
        sub = np.diag([float(MEAN_STRIDE), float(MEAN_STRIDE), 1.0])  # small pixel i <- output pixel 4i
        n = len(level)
        feeds = {
            "crop": crops,
            "ones": self._ones[:n],
            "mat": to_edge_convention(m).astype(np.float32),
            "box": to_edge_convention(box_r).astype(np.float32),
            "smat": to_edge_convention(m @ sub).astype(np.float32),
            "sbox": to_edge_convention(box_r @ sub).astype(np.float32),
            "fac": np.asarray(factors, np.float32),
            "order": np.asarray(order, np.int32),
            "jit": np.asarray(jitter, bool).reshape(n),
        }
        for name, data in feeds.items():
            self.pipe.feed_input(name, data)
        (out,) = self.pipe.run()
        if self.placement == "gpu":
            # DALI reuses its output buffer, so the batch is copied once into a torch tensor, on
            # torch's current stream, ordered after DALI's work by the plugin's copy_to_external
            import torch
            from nvidia.dali.plugin.pytorch import feed_ndarray

            t = out.as_tensor()
            dst = torch.empty(t.shape(), dtype=torch.uint8, device=torch.device("cuda", self.device_id))
            return feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(dst.device))
        return np.array(out.as_tensor())


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
