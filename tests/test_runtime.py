"""Runtime behaviour: the JIT cache across processes, and sharding under torch.distributed."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from fastssl import AugmentSpec, MonoSource

PROBE = """
import json
from fastssl.mono import Renderer
from fastssl.spec import AugmentSpec
from fastssl.image import load_image
from fastssl.kernels import numba_warp as k
r = Renderer(load_image(None), AugmentSpec(size=8), "numba")
r.render_nhwc(r.params(0, 2))
print(json.dumps({"hits": sum(k.warp_colour.stats.cache_hits.values()),
                  "misses": sum(k.warp_colour.stats.cache_misses.values())}))
"""


@pytest.mark.slow
def test_second_process_loads_the_kernel_from_the_numba_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = [
        json.loads(subprocess.check_output([sys.executable, "-c", PROBE], env=env, text=True).strip().splitlines()[-1])
        for _ in range(2)
    ]
    assert runs[0]["misses"] >= 1  # the first process compiled and wrote the cache
    assert runs[1]["hits"] >= 1 and runs[1]["misses"] == 0  # the second one only loaded it


def _worker(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        src = MonoSource(None, AugmentSpec(size=8), batch_size=4, epoch_length=4 * 6, seed=1)
        assert (src.rank, src.world_size) == (rank, world)  # read from torch.distributed
        ranges = [src.batch_range(s) for s in range(len(src))]
        sums = [int(src.batch(s).sum()) for s in range(len(src))]
        got = [None] * world
        dist.all_gather_object(got, (ranges, sums))
        if rank == 0:
            torch.save(got, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_under_torch_distributed_get_disjoint_shards(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "got.pt"
    tmp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    (r0, s0), (r1, s1) = torch.load(out, weights_only=True)
    assert len(r0) == len(r1) == 3
    assert not set(r0) & set(r1)
    assert sorted(r0 + r1) == [(4 * g, 4 * g + 4) for g in range(6)]
    single = MonoSource(None, AugmentSpec(size=8), batch_size=4, epoch_length=24, seed=1)
    assert s1[0] == int(single.batch(1).sum())  # rank 1's first batch is global batch 1
