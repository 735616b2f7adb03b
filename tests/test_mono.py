import numpy as np
import pytest
import torch

from fastssl import AugmentSpec, FastSSLError, MonoSource
from fastssl.mono import resolve_backend


def test_batch_contract(photo):
    src = MonoSource(photo, AugmentSpec(size=32), batch_size=50, epoch_length=120)
    batches = list(src)
    assert len(src) == len(batches) == 3
    assert [b.shape[0] for b in batches] == [50, 50, 20]
    for b in batches:
        assert b.dtype == torch.uint8 and b.shape[1:] == (3, 32, 32) and b.device.type == "cpu"
        assert b.is_contiguous(memory_format=torch.channels_last)
    assert src.backend == "numba"


def test_same_patches_for_any_batch_size_and_backend(photo):
    spec = AugmentSpec(size=24)
    a = torch.cat(list(MonoSource(photo, spec, batch_size=64, epoch_length=200, seed=3)))
    b = torch.cat(list(MonoSource(photo, spec, batch_size=37, epoch_length=200, seed=3, backend="torch")))
    assert (a.int() - b.int()).abs().max() <= 1


def test_ranks_see_disjoint_streams_whose_union_is_the_single_rank_stream(photo):
    spec = AugmentSpec(size=16)
    kw = dict(batch_size=16, epoch_length=16 * 7, seed=9)
    single = MonoSource(photo, spec, **kw)
    ranks = [MonoSource(photo, spec, rank=r, world_size=3, **kw) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]  # 7 global batches, padded to 9
    seen = {}
    for r, src in enumerate(ranks):
        for step in range(len(src)):
            seen.setdefault(src.batch_range(step), []).append(r)
    assert sorted(seen) == [single.batch_range(s) for s in range(7)]
    distinct = {k: v for k, v in seen.items() if len(v) == 1}
    assert len(distinct) == 5  # batches 0 and 1 are reused as padding by ranks 1 and 2
    x = ranks[1].batch(0)
    np.testing.assert_array_equal(x.numpy(), single.batch(1).numpy())


def test_set_epoch_changes_the_patches(photo):
    src = MonoSource(photo, AugmentSpec(size=16), batch_size=8, epoch_length=8)
    a = src.batch(0)
    src.set_epoch(1)
    assert not torch.equal(a, src.batch(0))
    src.set_epoch(0)
    assert torch.equal(a, src.batch(0))


def test_default_epoch_is_the_papers_dataset_size(photo):
    src = MonoSource(photo, AugmentSpec(size=8), batch_size=256, drop_last=True)
    assert src.epoch_length == 1_281_167 and len(src) == 1_281_167 // 256


def test_backend_selection_and_clear_refusals(photo):
    assert resolve_backend("auto", torch.device("cpu")) == "numba"
    with pytest.raises(FastSSLError, match="unknown backend"):
        MonoSource(photo, AugmentSpec(size=8), backend="opencl")
    if not torch.cuda.is_available():
        with pytest.raises(FastSSLError, match="CUDA is not available"):
            MonoSource(photo, AugmentSpec(size=8), device="cuda")
    with pytest.raises(FastSSLError, match="rank"):
        MonoSource(photo, AugmentSpec(size=8), rank=2, world_size=2)
    with pytest.raises(FastSSLError, match="batch_size"):
        MonoSource(photo, AugmentSpec(size=8), batch_size=0)


def test_recycled_buffers_never_overwrite_a_batch_still_held(photo):
    src = MonoSource(photo, AugmentSpec(size=16), batch_size=8, epoch_length=80)
    held = [src.batch(s) for s in range(6)]  # more than the pool keeps
    for s, b in enumerate(held):
        assert torch.equal(b, src.batch(s))
    ptrs = set()
    for s in range(6):  # dropped at once: the same memory comes back
        ptrs.add(src.batch(s).data_ptr())
    assert len(ptrs) <= 2


def test_missing_dali_is_named_as_the_reason(photo, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if not installed
    with pytest.raises(FastSSLError, match="DALI is not installed"):
        MonoSource(photo, AugmentSpec(size=8), backend="dali")
    assert resolve_backend("auto", torch.device("cpu")) == "numba"


def test_a_device_named_with_its_index_takes_a_batch_already_there(photo):
    """A device given as ``cpu:0`` (or ``cuda``, whose batches come back on ``cuda:0``) compares
    unequal to its batches' device; the batch must stay where it is, not be pinned and copied."""
    from fastssl.mono import Renderer

    r = Renderer(photo, AugmentSpec(size=8), "torch", device="cpu:0")
    x = r.render(r.params(0, 4, seed=0))
    assert x.shape == (4, 3, 8, 8) and x.device.type == "cpu" and not x.is_pinned()
