"""A live FFCV loader thread and the CPU training step of the same process.

    python benchmarks/ffcv_thread.py --beton train.beton --teacher teacher/ckpt.pt

Times the distill student's step (``cpu-mini-distill``, batches of 64 from the one-image
stream of ``--image``, not from the loader) in a fresh process for each case:

- ``none``: no FFCV loader in the process;
- ``built``: a loader of ``--beton`` built, never iterated;
- ``live``: one batch drawn, the loader's thread alive (it prefetches, then waits on its queue);
- ``exhausted``: a whole epoch drawn, the loader's thread ended.

and reports images/s and the process's CPU use (200% = both of two cores busy). The step never
reads the loader: any difference is what its thread's presence costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import itertools, json, sys, tempfile, time
from pathlib import Path
import torch
from fastssl.config import build_for, load, train_config
from fastssl.data.adapters import LoaderData
from fastssl.data.prepare import loader, mono_stream
from fastssl.train import Trainer

case, beton, teacher, image, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
rc = load("cpu-mini-distill", None, methods=("distill", "supervised"))
rc["distill"]["settings"]["teacher"] = teacher
cfg = train_config(rc, "distill", False, False)
cfg.progress = False
if case != "none":
    ld = LoaderData(loader((beton, None), rc, True, 64, "cpu", 0))
    if case in ("live", "exhausted"):
        ld.set_epoch(0)
        it = ld.iter_from(0)
        next(it)
        if case == "exhausted":
            for _ in it:
                pass
            time.sleep(1.0)
mono = mono_stream(rc, image, 64, 0)
torch.manual_seed(0)
m = build_for(rc, "distill")
tr = Trainer(m, mono, cfg, Path(tempfile.mkdtemp()))
for n in m.nets.values():
    n.train()


def endless(data):
    for epoch in itertools.count():
        data.set_epoch(epoch)
        yield from data.iter_from(0)


batches = endless(mono)
for _ in range(5):
    m.train_step(tr.prepare(next(batches)), tr.ctx)
t, c = time.perf_counter(), time.process_time()
for _ in range(steps):
    m.train_step(tr.prepare(next(batches)), tr.ctx)
dt = time.perf_counter() - t
cpu = round(100 * (time.process_time() - c) / dt)
print(json.dumps({"case": case, "images_per_s": round(64 * steps / dt, 1), "cpu_percent": cpu}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beton", required=True, help="a labelled .beton (fastssl data convert)")
    ap.add_argument("--teacher", required=True, help="a classifier checkpoint of the recipe's teacher network")
    ap.add_argument("--image", default="paper:ameyoko", help="the one-image stream's photo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for case in ("none", "built", "live", "exhausted"):
        cmd = [sys.executable, "-c", CHILD, case, args.beton, args.teacher, args.image, str(args.steps)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            rows.append({"case": case, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        from fastssl.report import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
