"""pytest-benchmark suite for the augmentation kernels (speed is measured here, never asserted).

    pytest benchmarks/ --benchmark-only --benchmark-group-by=param:size

Each case makes one batch of 256 patches of the full paper chain from the built-in photo
(the PIL chain: 16 patches, reported per call). For side-by-side ratios on the same cores,
with the peers in worker processes, use `fastssl bench augment` instead.
"""

import numpy as np
import pytest
from PIL import Image

from fastssl import AugmentSpec
from fastssl.image import load_image
from fastssl.mono import Renderer
from fastssl.reference import pil_batch

IMAGE = load_image(None)
N = 256


@pytest.fixture(params=[32, 64, 256], ids=lambda s: f"S{s}")
def size(request):
    return request.param


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_fastssl_batch(benchmark, size, backend):
    rend = Renderer(IMAGE, AugmentSpec(size=size), backend, "cpu")
    p = rend.params(0, N)
    rend.render_nhwc(p)  # JIT / warm-up
    out = benchmark(rend.render_nhwc, p).copy()
    ref = Renderer(IMAGE, AugmentSpec(size=size), "numba", "cpu")
    assert np.abs(out.astype(int) - ref.render_nhwc(p).astype(int)).max() <= 1  # what was timed is the chain


def test_sampler(benchmark, size):
    rend = Renderer(IMAGE, AugmentSpec(size=size), "numba", "cpu")
    p = benchmark(rend.params, 0, N)
    q = rend.params(0, N)  # the counter-based stream: the same patches every call
    assert len(p) == N and np.array_equal(p.matrix, q.matrix) and np.array_equal(p.factors, q.factors)


def test_pil_chain_16(benchmark, size):
    spec = AugmentSpec(size=size)
    rend = Renderer(IMAGE, spec, "numba", "cpu")
    p = rend.params(0, 16)
    out = benchmark(pil_batch, Image.fromarray(IMAGE), spec, p)
    diff = out.astype(np.float64) - rend.render_nhwc(p).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean(diff**2))
    assert out.shape == (16, size, size, 3) and psnr > 24  # the same patches as fastssl's, up to the filters
