"""DeepCluster: its clustering pieces against first principles, and the method in the trainer."""

import json
from pathlib import Path

import pytest
import torch

from fastssl.data.adapters import TensorData
from fastssl.errors import FastSSLError
from fastssl.methods import build_method
from fastssl.methods.deepcluster import kmeans, pca_whiten, uniform_over_clusters
from fastssl.train import TrainConfig, Trainer, load_checkpoint

MODEL = dict(small=True, input_res=16, width=0.1, fc_width=32)


def test_pca_whitening_gives_unit_covariance_on_the_top_axes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 12, generator=g) @ torch.randn(12, 12, generator=g) + 5.0
    w = pca_whiten(x, 6).double()
    assert w.shape == (2000, 6)
    cov = torch.cov(w.T)
    assert torch.allclose(cov, torch.eye(6, dtype=torch.float64), atol=1e-3)
    # the kept axes are the largest-variance ones: the projection keeps most of the variance
    xc = (x - x.mean(0)).double()
    ev = torch.linalg.eigvalsh(torch.cov(xc.T))
    assert ev[-6:].sum() / ev.sum() > 0.5


def test_kmeans_recovers_separated_blobs_and_fills_empty_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 8, generator=g) * 10
    truth = torch.randint(5, (1000,), generator=g)
    x = centres[truth] + 0.1 * torch.randn(1000, 8, generator=g)
    for seed in range(3):  # k-means++ seeding: a random start (4% chance here) would merge blobs
        assign, mse = kmeans(x, 5, 20, torch.Generator().manual_seed(seed), chunk=128)
        assert mse < 0.1  # the noise's own variance: 8 x 0.1^2
        # the same partition up to renaming: every true blob maps to one cluster and back
        assert len(set(zip(truth.tolist(), assign.tolist(), strict=True))) == 5
    # more clusters than blobs: none stays empty (re-seeded from the largest)
    assign, _ = kmeans(x, 12, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(assign, minlength=12).min() > 0
    with pytest.raises(FastSSLError, match="k-means needs"):
        kmeans(x[:3], 5, 1, torch.Generator())


def test_uniform_sampling_over_clusters():
    assign = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)  # very unbalanced
    idx = uniform_over_clusters(assign, 300, torch.Generator().manual_seed(0))
    assert len(idx) == 300
    counts = torch.bincount(assign[idx], minlength=3)
    assert counts.min() >= 99 and counts.max() <= 100  # ceil(300 / 3) each, truncated to 300


def _colour_blocks(n=256, s=16, seed=0):
    """Four flat colours with noise: four obvious clusters."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], dtype=torch.float32)
    which = torch.randint(4, (n,), generator=g)
    x = cols[which].view(n, 3, 1, 1) + 12 * torch.randn(n, 3, s, s, generator=g)
    return x.clamp(0, 255).to(torch.uint8), which


def _cfg(**kw):
    base = dict(epochs=2, batch_size=32, amp="off", compile="off", device="cpu", log_every=2, progress=False)
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.optim.lr = 0.05
    return cfg


def test_deepcluster_reclusters_every_epoch_and_learns_its_clusters(tmp_path):
    torch.manual_seed(0)
    x, _ = _colour_blocks(n=512)
    m = build_method("deepcluster", MODEL, method_kw=dict(k=4, pca_dim=8, iters=20))
    cfg = _cfg(epochs=4, log_every=16)
    cfg.optim.name, cfg.optim.lr = "adam", 3e-3
    t = Trainer(m, TensorData(x, 32, "cpu"), cfg, tmp_path)
    head0 = m.trunk().head[-1].weight.detach().clone()
    assert t.fit() == "done"
    assert len(m.targets) == 512 and len(m.order) == 512
    counts = torch.bincount(m.targets[m.order], minlength=4)
    assert counts.max() - counts.min() <= 1  # the epoch's order samples clusters uniformly
    assert not torch.equal(m.trunk().head[-1].weight, head0)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    clus = [r for r in recs if "kmeans_mse" in r]
    assert [r["epoch"] for r in clus] == [0, 1, 2, 3] and all(r["clusters_used"] == 4 for r in clus)
    assert all(r["seconds_features"] > 0 and r["seconds_kmeans"] > 0 for r in clus)  # each clustering timed
    # images and their cluster ids travel together: predicting them beats chance. The last line
    # averages 16 steps of 32 predictions; labels shuffled against the images would stay within
    # a few standard errors of chance (1/k), so 4 standard errors above it is learning
    acc = [r["acc"] for r in recs if r.get("epoch") == 3 and "acc" in r]
    chance, n = 1 / 4, 16 * 32
    assert acc[-1] > chance + 4 * (chance * (1 - chance) / n) ** 0.5


def test_deepcluster_resumes_mid_epoch_exactly(tmp_path):
    x, _ = _colour_blocks(n=192)

    def run(out, epochs, resume=False):
        torch.manual_seed(0)
        m = build_method("deepcluster", MODEL, method_kw=dict(k=3, pca_dim=8, iters=5))
        cfg = _cfg(epochs=epochs, ckpt_every=3, resume=resume)
        Trainer(m, TensorData(x, 32, "cpu"), cfg, out).fit()
        return m

    full = run(tmp_path / "a", 2)

    class Stop(Exception):
        pass

    # interrupted in epoch 1 after step 3 (a checkpoint), then resumed
    torch.manual_seed(0)
    m = build_method("deepcluster", MODEL, method_kw=dict(k=3, pca_dim=8, iters=5))
    t = Trainer(m, TensorData(x, 32, "cpu"), _cfg(epochs=2, ckpt_every=3), tmp_path / "b")
    orig = m.train_step

    def step(batch, ctx):
        if t.global_step == 9:  # epoch 1, step 3: just after the checkpoint at global step 9
            raise Stop
        return orig(batch, ctx)

    m.train_step = step
    with pytest.raises(Stop):
        t.fit()
    ck = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert (ck["epoch"], ck["step"]) == (1, 3) and set(ck["method_state"]) == {"targets", "order"}
    resumed = run(tmp_path / "b", 2, resume=True)
    for (k, a), (_, b) in zip(full.trunk().state_dict().items(), resumed.trunk().state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_a_stop_during_the_clustering_is_taken_within_a_batch(tmp_path, monkeypatch):
    """SIGTERM while DeepCluster computes its dataset's features (minutes at the paper's scale)
    stops the run at the next feature batch, not after the clustering; the checkpoint of the
    epoch boundary stands, and resuming from it gives the weights of a run never stopped."""
    import os
    import signal

    import fastssl.methods.deepcluster as dc

    monkeypatch.setattr(dc, "FEATURE_BATCH", 32)  # 6 feature batches an epoch
    x, _ = _colour_blocks(n=192)

    class Signalled(TensorData):
        """SIGTERM to this process as feature batch ``at`` is handed out (epoch 0 has 6)."""

        def __init__(self, *a, at):
            super().__init__(*a)
            self.at, self.feature_batches = at, 0

        def range_batches(self, lo, hi, batch_size):
            for b in super().range_batches(lo, hi, batch_size):
                self.feature_batches += 1
                if self.feature_batches == self.at:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield b

    def run(out, data, resume=False):
        torch.manual_seed(0)
        m = build_method("deepcluster", MODEL, method_kw=dict(k=3, pca_dim=8, iters=5))
        return m, Trainer(m, data, _cfg(epochs=2, resume=resume), out).fit()

    full, _ = run(tmp_path / "a", TensorData(x, 32, "cpu"))
    data = Signalled(x, 32, "cpu", at=8)  # the second of epoch 1
    _, how = run(tmp_path / "b", data)
    assert how == "interrupted" and data.feature_batches == 8  # 12 without the check
    ck = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert (ck["epoch"], ck["step"]) == (1, 0)
    resumed, how = run(tmp_path / "b", TensorData(x, 32, "cpu"), resume=True)
    assert how == "done"
    for (k, a), (_, b) in zip(full.trunk().state_dict().items(), resumed.trunk().state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_deepcluster_refuses_a_stream_without_index_access(tmp_path):
    from fastssl import AugmentSpec, MonoSource
    from fastssl.data.adapters import MonoData

    m = build_method("deepcluster", MODEL, method_kw=dict(k=3))
    data = MonoData(MonoSource(None, AugmentSpec(size=16), batch_size=16, epoch_length=32))
    with pytest.raises(FastSSLError, match="fixed dataset with index access"):
        Trainer(m, data, _cfg(), tmp_path).fit()
    with pytest.raises(FastSSLError, match="k must be >= 2"):
        build_method("deepcluster", MODEL, method_kw=dict(k=1))


def test_indexed_patches_render_the_stream_by_index_without_holding_pixels():
    from fastssl.data.adapters import IndexedPatches
    from fastssl.mono import MonoSource
    from fastssl.spec import AugmentSpec

    src = MonoSource(None, AugmentSpec(size=16), batch_size=50, epoch_length=300, seed=4)
    data = IndexedPatches(src.renderer, 300, batch_size=32, device="cpu", seed=4)
    assert data.nbytes == 300 * IndexedPatches.BYTES_PER_PATCH  # parameters only
    idx = torch.tensor([5, 299, 0, 120, 121])
    want = torch.cat([src.batch(s) for s in range(len(src))])[idx]
    assert torch.equal(data._get(idx), want)
    allb = torch.cat(list(data.all_batches(64)))
    assert torch.equal(allb, torch.cat([src.batch(s) for s in range(len(src))]))


def test_codes_are_streamed_with_the_pca_fitted_on_the_first_rows(monkeypatch, bare_ctx):
    import fastssl.methods.deepcluster as dc
    from fastssl.data.adapters import TensorData

    torch.manual_seed(0)
    imgs = torch.randint(0, 256, (700, 3, 16, 16), dtype=torch.uint8)
    m = build_method("deepcluster", MODEL, method_kw=dict(k=3, pca_dim=8))
    data = TensorData(imgs, 64, "cpu")

    full = m._codes(data, bare_ctx)  # fewer rows than PCA_FIT_ROWS: fitted on all, as before
    net = m.trunk().eval()
    with torch.no_grad():
        feats = torch.cat([net.head[:-1](net.features(x)) for x in data.all_batches(512)])
    assert torch.allclose(full, torch.nn.functional.normalize(dc.pca_whiten(feats, 8), dim=1), atol=1e-5)
    monkeypatch.setattr(dc, "PCA_FIT_ROWS", 256)  # fitted on the first 256, applied to the rest
    part = m._codes(data, bare_ctx)
    assert part.shape == (700, 8) and torch.allclose(part.norm(dim=1), torch.ones(700), atol=1e-5)
    mean, proj = dc.pca_fit(feats[:256], 8)
    assert torch.allclose(
        part[600:], torch.nn.functional.normalize(dc.pca_apply(feats[600:], mean, proj), dim=1), atol=1e-5
    )


def test_kmeans_seeds_with_random_points_at_scale_and_faiss_agrees(monkeypatch):
    import fastssl.methods.deepcluster as dc

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + torch.randn(200, 2, generator=g) for c in centres])
    best, best_loss = dc.kmeans(x, 3, 20, torch.Generator().manual_seed(1))  # k-means++: the blobs
    truth = torch.arange(3).repeat_interleave(200)
    assert len({(int(a), int(t)) for a, t in zip(best, truth, strict=True)}) == 3 and best_loss < 2.5
    monkeypatch.setattr(dc, "KMEANS_PP_LIMIT", 0)  # the large-scale seeding: random distinct points
    assign, loss = dc.kmeans(x, 3, 20, torch.Generator().manual_seed(1))
    assert torch.bincount(assign, minlength=3).min() > 0 and best_loss <= loss + 1e-6
    pytest.importorskip("faiss", reason="faiss is optional (pip install faiss-cpu)")
    fa, floss = dc.kmeans_faiss(x, 3, 20, seed=1)
    assert torch.bincount(fa, minlength=3).min() > 0 and floss >= best_loss - 1e-3 and floss < 60


def test_a_resume_logs_each_epochs_clustering_once(tmp_path):
    """Killed after epoch 1's clustering line (logged after the epoch-end checkpoint): the
    resumed run clusters epoch 1 again and metrics.jsonl holds that line once."""
    import json

    x, _ = _colour_blocks(n=192)

    def trainer(epochs, resume):
        torch.manual_seed(0)
        m = build_method("deepcluster", MODEL, method_kw=dict(k=3, pca_dim=8, iters=5))
        return Trainer(m, TensorData(x, 32, "cpu"), _cfg(epochs=epochs, resume=resume), tmp_path)

    trainer(1, False).fit()
    with open(tmp_path / "metrics.jsonl", "a") as f:  # what a kill after epoch 1's clustering leaves
        f.write(json.dumps({"global_step": 6, "epoch": 1, "kmeans_mse": 0.5}) + "\n")
    trainer(2, True).fit()
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "kmeans_mse" in r] == [0, 1]
    steps = [r["global_step"] for r in lines if "step" in r]
    assert steps == sorted(set(steps))


def test_random_resized_crop_on_the_device_keeps_shape_and_crops_by_area():
    from fastssl.methods.base import random_resized_crop

    x = torch.arange(32.0).view(1, 1, 1, 32).expand(8, 3, 32, 32).contiguous()  # value = column
    assert torch.equal(random_resized_crop(x, (1.0, 1.0), (1.0, 1.0)), x)  # the whole image: itself
    y = random_resized_crop(x, (0.25, 0.25), (1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    span = y[:, 0, 0, -1] - y[:, 0, 0, 0]  # half the side, stretched over the output's 31 steps
    assert torch.allclose(span, torch.full_like(span, 15.5), atol=0.01)
    assert y.min() >= 0 and y.max() <= 31


def test_deepcluster_crop_scale_is_checked_and_crops_its_training_images(bare_ctx):
    from fastssl.config import to_dataclass
    from fastssl.methods.deepcluster import DeepClusterSettings

    with pytest.raises(FastSSLError, match="crop_scale"):
        to_dataclass(DeepClusterSettings, {"crop_scale": [0.5, 0.2]}, "deepcluster.settings.")
    m = build_method("deepcluster", MODEL, None, {"k": 4, "crop_scale": [0.3, 0.3]}, 0)
    seen = []
    m.nets["model"].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))

    x = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
    m.train_step((x, torch.zeros(4, dtype=torch.int64)), bare_ctx)
    assert seen[0].dtype == torch.float32 and not torch.equal(seen[0], x.float())


class _Ctx:
    """What on_epoch_start reads of the trainer's context."""

    def __init__(self, data, optims):
        self.data, self.optims, self.device = data, optims, torch.device("cpu")

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def log(self, rec):
        pass

    def check_stop(self):
        pass


def _cluster_once(rank, world, folder):
    """One clustering of a fixed dataset as rank ``rank`` of ``world`` (gloo); saves what it got."""
    import fastssl.methods.deepcluster as dc
    from fastssl.data.adapters import TensorData

    torch.set_num_threads(1)
    dc.PCA_FIT_ROWS = 600  # fitted rows and the rest both split over the ranks, unevenly
    if world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
        )
    try:
        torch.manual_seed(0)
        imgs, _ = _colour_blocks(n=1500)
        m = build_method("deepcluster", MODEL, method_kw=dict(k=8, pca_dim=8, iters=10), seed=3)
        data = TensorData(imgs, 32, "cpu")
        opt = torch.optim.SGD(m.nets["model"].parameters(), lr=0.1)
        codes = m._codes(data, _Ctx(data, {"main": opt}))
        m.on_epoch_start(0, _Ctx(data, {"main": opt}))
        head = m.trunk().head[-1].weight.detach().clone()
        torch.save(
            {"targets": m.targets, "order": m.order, "head": head, "codes": codes}, f"{folder}/{world}-{rank}.pt"
        )
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_cluster_their_shares_into_the_one_process_assignment(tmp_path):
    """Under DDP each rank computes the features of its own share; the assignment, the epoch's
    order and the re-initialised classifier are those of one process with the same seed."""
    import torch.multiprocessing as tmp_mp

    tmp_mp.spawn(_cluster_once, args=(1, str(tmp_path)), nprocs=1)
    tmp_mp.spawn(_cluster_once, args=(2, str(tmp_path)), nprocs=2)
    one = torch.load(tmp_path / "1-0.pt")
    r0, r1 = torch.load(tmp_path / "2-0.pt"), torch.load(tmp_path / "2-1.pt")
    assert r1["codes"] is None and r0["codes"].shape == one["codes"].shape == (1500, 8)
    assert torch.allclose(r0["codes"], one["codes"], atol=1e-5)
    assert len(torch.unique(one["targets"])) > 1
    for r in (r0, r1):
        assert torch.equal(r["targets"], one["targets"]) and torch.equal(r["order"], one["order"])
        assert torch.equal(r["head"], one["head"])


def test_items_split_into_whole_batches_of_the_one_process_run():
    from fastssl.methods.deepcluster import split_items

    assert split_items(0, 600, 2, 512) == [(0, 512), (512, 600)]
    assert split_items(600, 1500, 2, 512) == [(600, 1112), (1112, 1500)]
    assert split_items(0, 100, 4, 512) == [(0, 0), (0, 0), (0, 0), (0, 100)]
    parts = split_items(7, 5000, 3, 64)
    assert parts[0][0] == 7 and parts[-1][1] == 5000 and all((a - 7) % 64 == 0 for a, _ in parts)


def test_a_row_s_fixed_dataset_takes_the_renderer_it_is_given_and_renders_the_same(tmp_path):
    from fastssl.config import load, train_config
    from fastssl.data.prepare import fixed_dataset, mono_stream

    rc = load(str(Path(__file__).parent / "data" / "tiny.toml"), None, methods=("deepcluster",))
    cfg = train_config(rc, "deepcluster", False, False)
    spec = {"jitter_p": 0.0}
    built = fixed_dataset(rc, cfg, spec=spec, progress=False)  # builds its own renderer
    given = mono_stream(rc, None, 16, cfg.seed, spec).src.renderer
    reused = fixed_dataset(rc, cfg, spec=spec, progress=False, renderer=given)
    assert reused.renderer is given and built.renderer is not given
    idx = torch.arange(int(rc["mono"]["epoch_length"]))
    assert torch.equal(reused._get(idx), built._get(idx))
