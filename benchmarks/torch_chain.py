"""Patches/s of the torch backend, eager and compiled, per patch size.

    python benchmarks/torch_chain.py --size 64,224 --batch 256 --seconds 6
    python benchmarks/torch_chain.py --device cuda --batch 2048      # the same on a GPU

The torch backend is the GPU path (``torch.compile``d there by default) and runs on the CPU
too, where its compiled form is the one to watch between two versions of the chain: run this
script on both, back to back, on the same cores. Each (size, form) renders the paper chain
(sampling included) from the built-in photo, or ``--image``; the first call (the compile, when
compiled) is timed apart, and its batch is compared with the Numba kernel's on the same
parameters (the share of values that differ, and by how much at most). Prints one JSON line per
(size, form).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64,224", help="patch sides, comma-separated")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image", default=None, help="source image (default: the built-in photo)")
    ap.add_argument("--forms", default="eager,compiled")
    args = ap.parse_args(argv)

    import torch

    from fastssl.bench import _run_in_process
    from fastssl.image import load_image
    from fastssl.mono import Renderer
    from fastssl.spec import AugmentSpec

    image = load_image(args.image)
    dev = torch.device(args.device)
    for size in (int(s) for s in args.size.split(",")):
        numba = Renderer(image, AugmentSpec(size=size), "numba")
        for form in args.forms.split(","):
            r = Renderer(image, AugmentSpec(size=size), "torch", device=dev, compile=form == "compiled")
            step = {"k": 0}

            def one(r=r, step=step):
                k = step["k"] = step["k"] + 1
                out = r.render(r.params(k * args.batch, (k + 1) * args.batch))
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                return out

            t0 = time.perf_counter()
            out = one().permute(0, 2, 3, 1).cpu().numpy().astype(np.int16)
            first = time.perf_counter() - t0
            ref = numba.render_nhwc(r.params(args.batch, 2 * args.batch)).astype(np.int16)
            diff = np.abs(out - ref)
            rate = _run_in_process(lambda one=one: (one, args.batch), args.seconds)
            row = {"size": size, "form": form, "batch": args.batch, "device": str(dev)}
            row |= {"threads": torch.get_num_threads(), "first_call_s": round(first, 1)}
            row |= {"values_off_vs_numba": float((diff > 0).mean()), "max_off": int(diff.max())}
            row["patches_per_s"] = round(rate, 1)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
