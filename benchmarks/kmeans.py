"""DeepCluster's clustering at the paper's scale: k-means on 1,281,167 x 256 codes, k = 10,000.

    python benchmarks/kmeans.py --n 1281167 --dim 256 --k 10000 --iters 2 --json kmeans.json

Times Lloyd iterations of fastssl's torch k-means (distances in chunks of 8,192 rows: bounded
memory) and of faiss (where installed) on the same synthetic L2-normalised codes, and reports
seconds per iteration and the process's peak resident memory after each. Each side runs in its
own process, so the peaks do not mix. Speed is measured here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
side, n, dim, k, iters, threads = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
t0 = time.perf_counter()
if side == "torch":
    from fastssl.methods.deepcluster import kmeans
    assign, loss = kmeans(x, k, iters, torch.Generator().manual_seed(1))
else:
    import faiss
    faiss.omp_set_num_threads(threads)
    from fastssl.methods.deepcluster import kmeans_faiss
    assign, loss = kmeans_faiss(x, k, iters, seed=1)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"side": side, "n": n, "dim": dim, "k": k, "iters": iters, "threads": threads,
                  "seconds": round(dt, 1), "seconds_per_iter": round(dt / iters, 1),
                  "peak_rss_bytes": peak, "codes_bytes": n * dim * 4,
                  "clusters_used": int(torch.unique(assign).numel()), "mse": round(loss, 5)}))
"""


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--only", action="append", choices=["torch", "faiss"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for side in args.only or ["torch", "faiss"]:
        cmd = [sys.executable, "-c", CHILD, side, *map(str, (args.n, args.dim, args.k, args.iters, args.threads))]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["failed"])[-1]
            rows.append({"side": side, "error": why})
            print(f"{side}: {why}", flush=True)
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every side: an interrupted run keeps what was measured
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    print(f"peak of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
