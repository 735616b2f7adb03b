"""Patches/s of the renderer from N photos: one call per batch against one call per photo.

    python benchmarks/many_images.py --photos imagenet-1k-samples.tar --n 1,10,1000

The N-image rows of ``repro`` draw every patch from one of N photos. A backend that takes
several images at once (``many_images``) renders such a batch in one call; otherwise each
photo of the batch is one call into one output. Both sides render the same parameters (the
``cpu-mini`` chain at 32 px, batches of 128, the first N photos in ``repro``'s order), on the
same threads, one after the other; a batch is drawn at random indices of a fixed set, as
DeepCluster's training batches are. Prints one JSON line per (N, side).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def rate(renderer, params, batch: int, seconds: float) -> float:
    """Patches/s of ``renderer`` on batches at random indices of ``params``."""
    from fastssl.bench import _run_in_process

    rng = np.random.default_rng(0)
    n = len(params.level)

    def one():
        renderer.render_nhwc(params.subset(rng.integers(0, n, batch)))

    return _run_in_process(lambda: (one, batch), seconds)  # one warm-up call (compiles the kernel)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="a folder or archive of photos")
    ap.add_argument("--n", default="1,10,1000", help="photo counts, comma-separated")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=None, help="render threads (default: the backend's)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--preset", default="cpu-mini")
    args = ap.parse_args(argv)

    import fastssl.kernels as kernels
    from fastssl.config import load
    from fastssl.data.prepare import source_images
    from fastssl.mono import Renderer
    from fastssl.spec import AugmentSpec

    rc = load(args.preset, None)
    spec = AugmentSpec(**{k: v for k, v in rc["mono"].items() if k != "epoch_length"})
    counts = [int(x) for x in args.n.split(",")]
    photos = source_images(None, None, rc, counts, args.photos)
    cls = kernels.backend_class(args.backend)
    together = cls.many_images
    for n in counts:
        sides = [("one call", True), ("per photo", False)] if together and n > 1 else [("one call", together)]
        for side, many in sides:
            cls.many_images = many
            try:
                r = Renderer(photos[n], spec, args.backend, threads=args.threads)
            finally:
                cls.many_images = together
            params = r.params(0, 16384, seed=0)
            row = {"photos": n, "side": side, "backend": args.backend, "threads": r.threads}
            row["patches_per_s"] = round(rate(r, params, args.batch, args.seconds))
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
