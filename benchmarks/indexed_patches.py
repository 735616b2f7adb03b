"""DeepCluster's one-image dataset at the paper's scale without its pixels in memory.

    python benchmarks/indexed_patches.py --n 1281167 --size 224 --image paper:ameyoko --json indexed.json

Draws the parameters of patches 0..N-1 of epoch 0 (what IndexedPatches keeps), then renders
batches of random indices (what DeepCluster's training asks for) and the first batches in
index order (what its features pass asks for), and reports the time of each, the parameters'
bytes and the process's peak resident memory, against the bytes the pixels would take.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main(argv=None) -> int:
    import numpy as np
    import torch

    from fastssl import AugmentSpec, MonoSource
    from fastssl.data.adapters import IndexedPatches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--image", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    src = MonoSource(args.image, AugmentSpec(size=args.size), batch_size=args.batch, epoch_length=args.n)
    t0 = time.perf_counter()
    data = IndexedPatches(src.renderer, args.n, args.batch, "cpu")
    t_params = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    data._get(torch.arange(args.batch))  # JIT
    t0 = time.perf_counter()
    for _ in range(args.batches):
        data._get(torch.from_numpy(rng.integers(0, args.n, args.batch)))
    t_random = (time.perf_counter() - t0) / (args.batches * args.batch)
    t0 = time.perf_counter()
    for k, _ in enumerate(data.all_batches(args.batch)):
        if k + 1 == args.batches:
            break
    t_order = (time.perf_counter() - t0) / (args.batches * args.batch)
    res = {
        "n": args.n,
        "size": args.size,
        "seconds_params": round(t_params, 2),
        "params_bytes": data.nbytes,
        "pixel_bytes": args.n * 3 * args.size**2,
        "us_per_patch_random_indices": round(1e6 * t_random, 1),
        "us_per_patch_in_order": round(1e6 * t_order, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": src.renderer.threads,
    }
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
