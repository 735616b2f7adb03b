"""DeepCluster (Caron et al. 2018): cluster the features of the whole dataset every epoch and
train the network to predict its own cluster ids.

Between epochs (``on_epoch_start``): features of every image of the fixed dataset (the output
of the head's last hidden layer, eval mode), PCA to ``pca_dim`` with whitening, L2
normalisation, k-means with ``k`` centroids (Lloyd iterations in torch, on the training
device); the cluster ids become the labels, the epoch's order samples clusters uniformly (every
non-empty cluster contributes the same number of draws), and the classifier layer is
re-initialised (its optimiser state dropped). Under DDP, rank 0 clusters and broadcasts.

The data must be a :class:`fastssl.data.adapters.FixedData`: DeepCluster needs index access to a
fixed set of images (``TensorData``: labelled images held in memory; ``IndexedPatches``: the
one-image rows' patches, rendered by index, as the paper trains on a fixed dataset of patches).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import bad
from ..errors import FastSSLError
from ..models import AlexNet
from ..seeds import epoch_seed
from .base import Method, flip_half, random_resized_crop


def pca_fit(x: torch.Tensor, dim: int, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, projection) of PCA whitening to ``min(dim, d)`` dimensions, fitted on the rows of
    ``x`` (float64 for the eigendecomposition): ``(y - mean) @ projection`` centres, projects on
    the top principal axes and scales each to unit variance."""
    x = x.double()
    mean = x.mean(0, keepdim=True)
    xc = x - mean
    cov = xc.T @ xc / max(len(x) - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    dim = min(dim, x.shape[1])
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    return mean, evecs / torch.sqrt(evals.clamp_min(0) + eps)


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
    kmeans: str = "torch"  # torch (on the training device) or faiss (where installed; its PCA too)
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

    def _codes(self, data, ctx) -> torch.Tensor:
        """PCA-whitened, L2-normalised features of every item of the fixed dataset, computed
        batch by batch: the PCA is fitted on the first ``PCA_FIT_ROWS`` items (all of them
        when fewer), so memory is (items x pca_dim), not (items x feature width)."""
        net = self.trunk()
        was = net.training
        net.eval()
        hidden = net.head[:-2] if self.pre_relu else net.head[:-1]  # fc7 before / after its ReLU
        fit, codes, basis = [], [], None
        with torch.no_grad(), ctx.autocast():
            for x in data.all_batches(512):
                f = hidden(net.features(x)).float()
                if basis is not None:
                    codes.append(pca_apply(f, *basis))
                    continue
                fit.append(f)
                if sum(len(a) for a in fit) >= PCA_FIT_ROWS:
                    basis = self._pca(torch.cat(fit))
                    codes.append(pca_apply(torch.cat(fit), *basis))
                    fit = []
        if basis is None:
            f = torch.cat(fit)
            codes.append(pca_apply(f, *self._pca(f)))
        net.train(was)
        return F.normalize(torch.cat(codes), dim=1)

    def _pca(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, projection) of the whitening PCA: torch, or faiss's PCAMatrix with the faiss
        k-means (the same subspace; its scale differs, which the L2 normalisation removes)."""
        if self.kmeans_with != "faiss":
            return pca_fit(x, self.pca_dim)
        import faiss

        d = x.shape[1]
        pca = faiss.PCAMatrix(d, min(self.pca_dim, d), -0.5)
        pca.train(np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32))
        A = torch.from_numpy(faiss.vector_to_array(pca.A).reshape(pca.d_out, d)).double().to(x.device)
        b = torch.from_numpy(faiss.vector_to_array(pca.b)).double().to(x.device)
        # faiss computes A y + b; as (y - mean) @ proj: proj = A^T, mean = -b A^+ (A has full row rank)
        mean = -(b @ torch.linalg.pinv(A).T).unsqueeze(0)
        return mean, A.T

    def on_epoch_start(self, epoch: int, ctx) -> None:
        data = ctx.data
        if not hasattr(data, "set_targets"):
            raise FastSSLError("deepcluster needs a fixed dataset with index access (TensorData, IndexedPatches)")
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        t0 = time.perf_counter()
        x = self._codes(data, ctx)
        t1 = time.perf_counter()
        if self.kmeans_with == "faiss":
            assign, loss = kmeans_faiss(x, self.k, self.iters, epoch_seed(self.seed, epoch))
        else:
            assign, loss = kmeans(x, self.k, self.iters, g)
        order = uniform_over_clusters(assign, len(assign), g)
        t2 = time.perf_counter()
        if dist:  # one clustering for all ranks: rank 0's
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
