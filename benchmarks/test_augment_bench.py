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
    out = benchmark(rend.render_nhwc, p)
    assert out.shape == (N, size, size, 3)


def test_sampler(benchmark, size):
    rend = Renderer(IMAGE, AugmentSpec(size=size), "numba", "cpu")
    p = benchmark(rend.params, 0, N)
    assert len(p) == N


def test_pil_chain_16(benchmark, size):
    spec = AugmentSpec(size=size)
    p = Renderer(IMAGE, spec, "numba", "cpu").params(0, 16)
    out = benchmark(pil_batch, Image.fromarray(IMAGE), spec, p)
    assert out.shape == (16, size, size, 3) and np.isfinite(out).all()
