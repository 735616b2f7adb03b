"""DeepCluster (Caron et al. 2018): cluster the features of the whole dataset every epoch and
train the network to predict its own cluster ids.

Between epochs (``on_epoch_start``): features of every image of the fixed dataset (the output
of the head's last hidden layer, eval mode), PCA to ``pca_dim`` with whitening, L2
normalisation, k-means with ``k`` centroids (Lloyd iterations in torch, on the training
device); the cluster ids become the labels, the epoch's order samples clusters uniformly (every
non-empty cluster contributes the same number of draws), and the classifier layer is
re-initialised (its optimiser state dropped). Under DDP each rank computes the features of its
own share of the dataset, the PCA is fitted on moments summed over the ranks, rank 0 gathers
the codes, clusters once and broadcasts the assignment (the same as one process computes).

The data must be a :class:`fastssl.data.adapters.FixedData`: DeepCluster needs index access to a
fixed set of images (``TensorData``: labelled images held in memory; ``IndexedPatches``: the
one-image rows' patches, rendered by index, as the paper trains on a fixed dataset of patches).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import bad
from ..distributed import rank_world
from ..errors import FastSSLError
from ..models import AlexNet
from ..seeds import epoch_seed
from .base import Method, flip_half, random_resized_crop


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, sum of rows, sum of outer products) of the rows of ``x``, in float64: what a PCA
    needs, and what ranks can add up (all-reduce) to fit one PCA on rows they hold apart."""
    x = x.double()
    return torch.tensor(float(len(x)), dtype=torch.float64, device=x.device), x.sum(0), x.T @ x


def pca_from_moments(n, s1, s2, dim: int, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, projection) of PCA whitening to ``min(dim, d)`` dimensions from :func:`moments`:
    ``(y - mean) @ projection`` centres, projects on the top principal axes and scales each to
    unit variance."""
    n = float(n)
    mean = s1 / n
    cov = (s2 - n * torch.outer(mean, mean)) / max(n - 1, 1.0)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    dim = min(dim, len(s1))
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    return mean.unsqueeze(0), evecs / torch.sqrt(evals.clamp_min(0) + eps)


def pca_fit(x: torch.Tensor, dim: int, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, projection) of PCA whitening fitted on the rows of ``x`` (float64)."""
    return pca_from_moments(*moments(x), dim, eps)


def pca_apply(x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    return ((x.double() - mean) @ proj).float()


def pca_whiten(x: torch.Tensor, dim: int, eps: float = 1e-5) -> torch.Tensor:
    """(n, d) -> (n, min(dim, d)): centred, projected on the top principal axes, each scaled to
    unit variance."""
    return pca_apply(x, *pca_fit(x, dim, eps))


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centroid is a row drawn with probability proportional to its
    squared distance to the nearest centroid so far (the draw stays on the device: a uniform
    number from ``generator`` against the cumulative sum)."""
    n = len(x)
    c = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    first = int(torch.randint(n, (1,), generator=generator))
    c[0] = x[first]
    d = ((x - c[0]) ** 2).sum(1)
    for i in range(1, k):
        cum = torch.cumsum(d.double(), 0)
        u = torch.rand(1, generator=generator, dtype=torch.float64).to(x.device) * cum[-1]
        j = torch.searchsorted(cum, u).clamp_(max=n - 1)
        c[i] = x[j[0]]
        d = torch.minimum(d, ((x - c[i]) ** 2).sum(1))
    return c


KMEANS_PP_LIMIT = 2**31  # n * k above which the seeds are random points instead of k-means++
PCA_FIT_ROWS = 100_000  # PCA is fitted on the first rows (patches are in random order), then applied to all
FEATURE_BATCH = 512  # items per forward pass when computing the features


def split_items(lo: int, hi: int, world: int, batch: int = FEATURE_BATCH) -> list[tuple[int, int]]:
    """Items ``lo .. hi - 1`` in ``world`` consecutive ranges that start on whole batches
    counted from ``lo``: every rank's batches are batches of the single-process run."""
    nb = math.ceil((hi - lo) / batch)
    cuts = [lo + min(hi - lo, batch * (nb * r // world)) for r in range(world + 1)]
    return list(itertools.pairwise(cuts))


def gather_in_order(codes: torch.Tensor, fit_parts, rest_parts, rank: int, world: int) -> torch.Tensor | None:
    """Every rank's codes (its fitted rows, then its other rows) on rank 0, in item order;
    ``None`` elsewhere. Padded to one size, as collectives want."""
    sizes = [(f[1] - f[0]) + (r[1] - r[0]) for f, r in zip(fit_parts, rest_parts, strict=True)]
    pad = torch.zeros(max(sizes), codes.shape[1], dtype=codes.dtype, device=codes.device)
    pad[: len(codes)] = codes
    got = [torch.empty_like(pad) for _ in range(world)] if rank == 0 else None
    torch.distributed.gather(pad, got, dst=0)
    if rank != 0:
        return None
    fits = [got[r][: fit_parts[r][1] - fit_parts[r][0]] for r in range(world)]
    rests = [got[r][fit_parts[r][1] - fit_parts[r][0] : sizes[r]] for r in range(world)]
    return torch.cat(fits + rests)


def kmeans_faiss(x: torch.Tensor, k: int, iters: int, seed: int):
    """The same clustering with faiss (the reference implementation's library), where installed."""
    import faiss

    xs = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
    km = faiss.Kmeans(xs.shape[1], k, niter=iters, seed=seed, max_points_per_centroid=10**9, verbose=False)
    km.train(xs)
    dist, idx = km.index.search(xs, 1)
    return torch.from_numpy(idx[:, 0].astype(np.int64)), float(dist.mean())


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator, chunk: int = 8192):
    """Lloyd's k-means on the rows of ``x`` (n, d) in bounded memory (distances ``chunk`` rows
    at a time), seeded by k-means++ (random distinct points beyond ``KMEANS_PP_LIMIT``). An empty cluster is
    re-seeded at the point farthest from its centroid in the largest cluster. Returns
    (assignment (n,) int64, mean squared distance)."""
    n = len(x)
    if not 1 <= k <= n:
        raise FastSSLError(f"k-means needs 1 <= k <= number of images, got k={k} for {n} images")
    if n * k <= KMEANS_PP_LIMIT:
        c = kmeans_pp(x, k, generator)
    else:  # k-means++ costs k passes over the data: distinct random points, as faiss seeds
        c = x[torch.randperm(n, generator=generator)[:k].to(x.device)].clone()
    assign = torch.zeros(n, dtype=torch.int64, device=x.device)
    best = torch.zeros(n, dtype=x.dtype, device=x.device)
    for _ in range(max(iters, 1)):
        cn = (c * c).sum(1)
        for a in range(0, n, chunk):  # (chunk, k) distances at a time
            xb = x[a : a + chunk]
            d = (xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + cn
            best[a : a + chunk], assign[a : a + chunk] = d.min(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), c)
        for e in (counts == 0).nonzero().flatten().tolist():  # rare: a few per run at most
            big = int(torch.bincount(assign, minlength=k).argmax())
            members = (assign == big).nonzero().flatten()
            far = members[best[members].argmax()]
            c[e] = x[far]
            assign[far] = e
            best[far] = 0
    return assign, float(best.clamp_min(0).mean())


def uniform_over_clusters(assign: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` indices: every non-empty cluster gets ceil(n / clusters) draws (with replacement
    when it is smaller), shuffled, truncated to ``n``."""
    assign = assign.cpu()
    clusters = torch.unique(assign)
    per = math.ceil(n / len(clusters))
    out = []
    for c in clusters.tolist():
        members = (assign == c).nonzero().flatten()
        if len(members) >= per:
            pick = members[torch.randperm(len(members), generator=generator)[:per]]
        else:
            pick = members[torch.randint(len(members), (per,), generator=generator)]
        out.append(pick)
    idx = torch.cat(out)
    return idx[torch.randperm(len(idx), generator=generator)][:n]


@dataclass
class DeepClusterSettings:
    k: int = 100  # clusters (the reference: 10,000 for 1.28M images)
    pca_dim: int = 256  # PCA-whitened feature dimension before k-means
    iters: int = 20  # Lloyd iterations per clustering
    pre_relu: bool = False  # cluster the last hidden layer before its ReLU (the reference's fc7)
    kmeans: str = "torch"  # torch (on the training device) or faiss (where installed)
    # training images: a random-resized crop with this area range (the reference's
    # RandomResizedCrop and its default range; [1, 1]: none) and a horizontal flip; clustering
    # sees them whole
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])

    def check(self, where: str = "") -> None:
        if self.k < 2:
            bad(f"{where}k", "must be >= 2 clusters", self.k)
        if self.pca_dim < 1:
            bad(f"{where}pca_dim", "must be >= 1", self.pca_dim)
        if self.iters < 1:
            bad(f"{where}iters", "must be >= 1", self.iters)
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            bad(f"{where}crop_scale", "must be two numbers with 0 < lo <= hi <= 1", self.crop_scale)
        if self.kmeans not in ("torch", "faiss"):
            bad(f"{where}kmeans", "must be torch or faiss", self.kmeans)


class DeepCluster(Method):
    name = "deepcluster"

    fixed_dataset = True
    epoch_start_name = "clustering"
    Settings = DeepClusterSettings

    def __init__(self, model_kw: dict, settings: DeepClusterSettings | None = None, *, num_classes=None, seed: int = 0):
        super().__init__()
        st = settings or DeepClusterSettings()
        self.k, self.pca_dim, self.iters, self.seed = st.k, st.pca_dim, st.iters, int(seed)
        self.pre_relu, self.kmeans_with = st.pre_relu, st.kmeans
        self.crop_scale = tuple(float(v) for v in st.crop_scale)
        if self.kmeans_with == "faiss":
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise FastSSLError(
                    "deepcluster kmeans = faiss, but faiss is not installed (pip install faiss-cpu)"
                ) from None
        self.nets["model"] = AlexNet(self.k, **model_kw)
        self.targets: torch.Tensor | None = None  # cluster id per image of the dataset
        self.order: torch.Tensor | None = None  # this epoch's index order

    def _codes(self, data, ctx) -> torch.Tensor | None:
        """PCA-whitened, L2-normalised features of every item of the fixed dataset (rank 0;
        ``None`` on the other ranks). The PCA is fitted on the first ``PCA_FIT_ROWS`` items
        (all of them when fewer), so memory is (items x pca_dim), not (items x feature width).

        Under DDP each rank computes the features of its own share of the items, whole batches
        of the single-process run: the fitted rows' moments are summed over the ranks (one PCA
        for all), each rank projects its rows, and rank 0 gathers the codes in item order."""
        rank, world = rank_world()
        net = self.trunk()
        was = net.training
        net.eval()
        fit_n = min(data.n, PCA_FIT_ROWS)
        fit_parts, rest_parts = split_items(0, fit_n, world), split_items(fit_n, data.n, world)
        with torch.no_grad(), ctx.autocast():
            lo, hi = fit_parts[rank]
            fit = list(self._features_of(data, lo, hi, ctx))
            width = net.head[-1].in_features
            fit = torch.cat(fit) if fit else torch.zeros(0, width, device=ctx.device)
            mom = list(moments(fit))
            if world > 1:
                for t in mom:
                    torch.distributed.all_reduce(t)
            basis = pca_from_moments(*mom, self.pca_dim)
            if world > 1:  # identical sums give identical bases; rank 0's is taken all the same
                for t in basis:
                    torch.distributed.broadcast(t, 0)
            codes = [pca_apply(fit, *basis)]
            lo, hi = rest_parts[rank]
            codes += [pca_apply(f, *basis) for f in self._features_of(data, lo, hi, ctx)]
        net.train(was)
        codes = F.normalize(torch.cat(codes), dim=1)
        if world == 1:
            return codes
        return gather_in_order(codes, fit_parts, rest_parts, rank, world)

    def _features_of(self, data, lo: int, hi: int, ctx):
        net = self.trunk()
        hidden = net.head[:-2] if self.pre_relu else net.head[:-1]  # fc7 before / after its ReLU
        for x in data.range_batches(lo, hi, FEATURE_BATCH):
            ctx.check_stop()  # a whole dataset's features take minutes: a stop need not wait for them
            yield hidden(net.features(x)).float()

    def on_epoch_start(self, epoch: int, ctx) -> None:
        data = ctx.data
        if not hasattr(data, "set_targets"):
            raise FastSSLError("deepcluster needs a fixed dataset with index access (TensorData, IndexedPatches)")
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        rank, world = rank_world()
        t0 = time.perf_counter()
        x = self._codes(data, ctx)
        t1 = time.perf_counter()
        loss = 0.0
        if rank == 0:  # one clustering, on rank 0, for every rank
            if self.kmeans_with == "faiss":
                assign, loss = kmeans_faiss(x, self.k, self.iters, epoch_seed(self.seed, epoch))
            else:
                assign, loss = kmeans(x, self.k, self.iters, g)
            order = uniform_over_clusters(assign, len(assign), g)
        t2 = time.perf_counter()
        if world > 1:
            if rank != 0:
                assign = torch.empty(data.n, dtype=torch.int64)
                order = torch.empty(data.n, dtype=torch.int64)
            assign, order = assign.to(ctx.device), order.to(ctx.device)
            torch.distributed.broadcast(assign, 0)
            torch.distributed.broadcast(order, 0)
        self.targets, self.order = assign.cpu(), order.cpu()
        data.set_targets(self.targets, self.order)
        self._reset_classifier(ctx, g)
        sizes = torch.bincount(self.targets, minlength=self.k)
        ctx.log(
            {
                "epoch": epoch,
                "kmeans_mse": round(loss, 5),
                "clusters_used": int((sizes > 0).sum()),
                "largest_cluster": int(sizes.max()),
                "seconds_features": round(t1 - t0, 3),  # render, forward, PCA of the whole dataset
                "seconds_kmeans": round(t2 - t1, 3),
            }
        )

    def _reset_classifier(self, ctx, g: torch.Generator) -> None:
        top = self.trunk().head[-1]
        with torch.no_grad():
            top.weight.copy_(torch.randn(top.weight.shape, generator=g) * 0.01)
            top.bias.zero_()
            if rank_world()[1] > 1:  # rank 0's draw (only its generator went through k-means)
                torch.distributed.broadcast(top.weight.data, 0)
        for opt in ctx.optims.values():
            for p in (top.weight, top.bias):
                opt.state.pop(p, None)  # no momentum carried over from the last clustering

    @classmethod
    def min_items(cls, settings: dict | None) -> int:
        return int((settings or {}).get("k", DeepClusterSettings().k))  # k clusters need k items

    @classmethod
    def settings_for_items(cls, settings: dict | None, n_items: int) -> dict | None:
        st = dict(settings or {})
        st["k"] = min(int(st.get("k", DeepClusterSettings().k)), int(n_items))
        return st

    def batch_labels(self) -> int:
        return self.k  # its pseudo-labels

    def epoch_start_seconds(self, ctx, n_items: int, res: int) -> float:
        """One clustering of ``n_items``: the features' forward pass timed on a batch and scaled,
        plus ``iters`` Lloyd assignments (the distances to all k centroids dominate) timed on a
        sample of rows and scaled to ``n_items``."""
        dev = ctx.device

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        net = self.trunk()
        net.eval()
        x = torch.randint(0, 256, (256, 3, res, res), dtype=torch.uint8, device=dev).contiguous(
            memory_format=torch.channels_last
        )
        with torch.no_grad(), ctx.autocast():
            net.features(x)
            sync()
            t0 = time.perf_counter()
            net.features(x)
            sync()
        feat = (time.perf_counter() - t0) * n_items / 256
        net.train()
        sample = min(n_items, 16_384)
        codes = torch.nn.functional.normalize(torch.randn(sample, self.pca_dim, device=dev), dim=1)
        cents = torch.nn.functional.normalize(torch.randn(self.k, self.pca_dim, device=dev), dim=1)
        t0 = time.perf_counter()
        for a in range(0, sample, 8192):
            (codes[a : a + 8192] @ cents.T).max(1)
        sync()
        assign = (time.perf_counter() - t0) * n_items / sample
        return feat + assign * self.iters

    def state_dict(self) -> dict:
        if self.targets is None:
            return {}
        return {"targets": self.targets, "order": self.order}

    def load_state_dict(self, state: dict, ctx) -> None:
        if state:
            self.targets, self.order = state["targets"], state["order"]
            ctx.data.set_targets(self.targets, self.order)

    def train_step(self, batch, ctx) -> dict:
        x, y = batch
        if y is None:
            raise FastSSLError("deepcluster got a batch without cluster labels (on_epoch_start did not run)")
        x = flip_half(x)
        if self.crop_scale != (1.0, 1.0):
            x = random_resized_crop(x, self.crop_scale)
        return self.classify_step(x, y, ctx)
