"""The warp as an NVIDIA DALI pipeline (work in progress for issue 5: geometry only so far).

One graph, two placements: ``DaliWarp(size, placement="cpu")`` builds it with CPU operators
(``device_id=None``, what CI can run), ``placement="gpu"`` with GPU operators. It applies the
same sampled parameters as the other backends:

- each patch gets a crop of its pyramid level covering its footprint (+2 texels), fed through
  ``fn.external_source``, and the 2x3 matrix re-expressed in that crop's coordinates, in DALI's
  convention (pixel edges at integers: the centre of pixel k is k + 0.5, as PIL);
- ``fn.warp_affine`` without ``fill_value`` clamps to the border, like the other backends;
- the crop-box fill is a second, nearest-neighbour warp of a constant R x R image with the box
  matrix (``fill_value=0`` outside), multiplied in.

Colour jitter is not in the graph yet (DALI's hue/saturation work in YIQ, not the HSV formula
the other backends share): patches with jitter are refused until it is.
"""

from __future__ import annotations

import numpy as np


def to_edge_convention(m: np.ndarray) -> np.ndarray:
    """(n, 2, 3) maps between pixel-centre coordinates -> the same maps with pixel edges at integers."""
    out = m.copy()
    out[:, :, 2] = m[:, :, 2] + 0.5 - m[:, :, :2] @ np.array([0.5, 0.5])
    return out


def footprint_crops(level_matrix: np.ndarray, level: np.ndarray, heights, widths, size: int, margin: int = 2):
    """Per patch: (y0, y1, x0, x1) of its level covering the output grid, and the matrix shifted
    into that crop."""
    S = size
    corners = np.array([[-0.5, -0.5, 1], [S - 0.5, -0.5, 1], [-0.5, S - 0.5, 1], [S - 0.5, S - 0.5, 1]]).T
    pts = level_matrix @ corners  # (n, 2, 4)
    lo = np.floor(pts.min(axis=2)).astype(np.int64) - margin
    hi = np.ceil(pts.max(axis=2)).astype(np.int64) + margin + 1
    h = np.asarray(heights)[level]
    w = np.asarray(widths)[level]
    x0 = np.clip(lo[:, 0], 0, w - 1)
    y0 = np.clip(lo[:, 1], 0, h - 1)
    x1 = np.clip(hi[:, 0], x0 + 1, w)
    y1 = np.clip(hi[:, 1], y0 + 1, h)
    m = level_matrix.copy()
    m[:, 0, 2] -= x0
    m[:, 1, 2] -= y0
    return np.stack([y0, y1, x0, x1], axis=1), m


class DaliWarp:
    """A built DALI pipeline for patches of side ``size`` (crop box of side ``resized``)."""

    def __init__(
        self, size: int, resized: int, max_batch: int, placement: str = "cpu", device_id: int = 0, threads: int = 2
    ):
        from nvidia.dali import fn, pipeline_def, types

        if placement not in ("cpu", "gpu"):
            raise ValueError(f"placement must be cpu or gpu, got {placement!r}")
        self.size, self.resized, self.placement = size, resized, placement
        dev = "gpu" if placement == "gpu" else "cpu"

        @pipeline_def(
            batch_size=max_batch,
            num_threads=threads,
            device_id=device_id if dev == "gpu" else None,
            prefetch_queue_depth=1,
        )
        def graph():
            crop = fn.external_source(name="crop", layout="HWC", device=dev)
            mat = fn.external_source(name="mat")
            box = fn.external_source(name="box")
            ones = fn.external_source(name="ones", layout="HWC", device=dev)
            img = fn.warp_affine(crop, matrix=mat, size=(size, size), interp_type=types.INTERP_LINEAR, inverse_map=True)
            mask = fn.warp_affine(
                ones, matrix=box, size=(size, size), interp_type=types.INTERP_NN, inverse_map=True, fill_value=0
            )
            return img * mask

        self.pipe = graph()
        self.pipe.build()
        self._ones = np.ones((resized, resized, 1), np.uint8)

    def run(self, levels: list, level_matrix: np.ndarray, box: np.ndarray, level: np.ndarray, jitter: np.ndarray):
        """(n, S, S, 3) uint8 numpy for the given parameters (``levels``: the pyramid's arrays)."""
        if np.asarray(jitter).any():
            raise NotImplementedError("the DALI backend has no colour jitter yet")
        heights = [lv.shape[0] for lv in levels]
        widths = [lv.shape[1] for lv in levels]
        boxes, m = footprint_crops(level_matrix, level, heights, widths, self.size)
        crops = [
            np.ascontiguousarray(levels[lv][y0:y1, x0:x1]) for lv, (y0, y1, x0, x1) in zip(level, boxes, strict=True)
        ]
        # box maps output pixels to normalised crop-box coords; DALI wants R-space pixels
        box_r = box * self.resized
        box_r[:, :, 2] -= 0.5  # normalised (p + 0.5) / R -> R-space pixel centres p
        mats = to_edge_convention(m).astype(np.float32)
        boxes_e = to_edge_convention(box_r).astype(np.float32)
        self.pipe.feed_input("crop", crops)
        self.pipe.feed_input("mat", list(mats))
        self.pipe.feed_input("box", list(boxes_e))
        self.pipe.feed_input("ones", [self._ones] * len(crops))
        (out,) = self.pipe.run()
        if self.placement == "gpu":
            out = out.as_cpu()
        return np.array(out.as_tensor())
