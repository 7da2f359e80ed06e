"""k-means and the quantisers built on it, in torch (chunked, deterministic with a seed): residual and product
quantisation whose codewords *sum* to the approximation (the codebook table's composition), and least-squares
codebooks for fixed codes. pocketrec's own quantisers; :mod:`pocketrec.quantize.faiss_quantizers` has FAISS's.
Arrays in, arrays out: nothing here knows a table."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Distance blocks in k-means hold at most this many floats (64 MiB at float32).
_DIST_BLOCK = 1 << 24


def _row_chunk(num_rows: int, width: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return max(1, int(chunk_size))
    return max(1, min(num_rows, _DIST_BLOCK // max(1, width)))


def nearest_centroids(x: Tensor, centroids: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Index of the nearest centroid for every row of ``x`` and the squared distance to it.

    Uses ``|x|^2 - 2 x.c + |c|^2`` over row chunks, so no ``n x K x d`` tensor is ever built.
    """
    n = x.shape[0]
    c_sq = (centroids * centroids).sum(1)
    assign = torch.empty(n, dtype=torch.long, device=x.device)
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _row_chunk(n, centroids.shape[0], chunk_size)
    for start in range(0, n, step):
        xb = x[start:start + step]
        d = torch.addmm(c_sq.unsqueeze(0), xb, centroids.t(), alpha=-2.0)  # |c|^2 - 2 x.c
        best, idx = d.min(1)
        assign[start:start + step] = idx
        dist[start:start + step] = (best + (xb * xb).sum(1)).clamp_min_(0.0)
    return assign, dist


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator, chunk_size: int | None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on ``x``; ``k`` rows of ``x`` as centroids."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    x_sq = (x * x).sum(1)

    def sq_dist(i: int) -> Tensor:  # |x - x_i|^2 for all rows, as a mat-vec
        return (x_sq - 2.0 * (x @ x[i]) + x_sq[i]).clamp_min_(0.0)

    chosen = [first]
    min_dist = sq_dist(first)
    for _ in range(1, k):
        total = float(min_dist.sum())
        if total > 0.0:
            probs = (min_dist / total).double().cpu()
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        else:  # all points coincide with a centroid already: any point will do
            nxt = int(torch.randint(n, (1,), generator=gen))
        chosen.append(nxt)
        torch.minimum(min_dist, sq_dist(nxt), out=min_dist)
    return x[torch.tensor(chosen, device=x.device)]


def kmeans(x: Tensor, k: int, *, iters: int = 25, seed: int = 0, init_sample: int | None = None,
           chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means in torch; returns ``(centroids (k, d), assignment (n,))``.

    Seeding is k-means++ on a random subsample of ``init_sample`` rows (default ``max(32 k, 4096)``;
    all rows when fewer), then ``iters`` Lloyd iterations on all rows (stopping early once assignments
    stop changing). An empty cluster is re-seeded with the point farthest from its centroid.
    Deterministic for a given ``seed`` (on CPU). The returned assignment is to the returned centroids.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects a 2-D tensor, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < 1 or k < 1:
        raise ValueError(f"kmeans needs at least one point and one cluster, got n={n}, k={k}")
    x = x.detach()
    gen = torch.Generator().manual_seed(int(seed))
    sample = init_sample if init_sample is not None else max(32 * k, 4096)
    if n > sample:
        idx = torch.randperm(n, generator=gen)[:sample].to(x.device)
        seed_points = x.index_select(0, idx)
    else:
        seed_points = x
    centroids = _kmeans_pp(seed_points, min(k, seed_points.shape[0]), gen, chunk_size)
    if centroids.shape[0] < k:  # fewer points than clusters: duplicate centroids stay unused
        extra = centroids[torch.arange(k - centroids.shape[0]) % centroids.shape[0]]
        centroids = torch.cat([centroids, extra])
    assign, dist = nearest_centroids(x, centroids, chunk_size)
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        new = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel() and n > k:
            far = dist.topk(int(empty.numel())).indices  # farthest points become the new centroids
            new[empty] = x[far]
        elif empty.numel():
            new[empty] = centroids[empty]
        centroids = new
        new_assign, dist = nearest_centroids(x, centroids, chunk_size)
        if torch.equal(new_assign, assign) and not empty.numel():
            assign = new_assign
            break
        assign = new_assign
    return centroids, assign


def residual_quantize(x: Tensor, M: int, K: int, *, iters: int = 25, seed: int = 0,
                      chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Residual quantisation: k-means on ``x`` gives codebook 1, k-means on the residuals codebook 2, ...

    Returns ``(codebooks (M, K, d), codes (n, M) long)``; ``x`` is approximated by the SUM of the ``M``
    chosen codewords, which is exactly the table's composition. Codebook ``m`` uses seed ``seed + m``.
    """
    residual = x.detach().clone()
    books, codes = [], []
    for m in range(M):
        centroids, assign = kmeans(residual, K, iters=iters, seed=seed + m, chunk_size=chunk_size)
        residual -= centroids.index_select(0, assign)
        books.append(centroids)
        codes.append(assign)
    return torch.stack(books), torch.stack(codes, 1)


def product_quantize(x: Tensor, M: int, K: int, *, iters: int = 25, seed: int = 0,
                     chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Product quantisation written as a sum: codebook ``m`` is zero outside the ``m``-th slice of dims.

    The dims are cut into ``M`` contiguous slices (sizes differ by at most one); k-means on each slice
    gives that codebook. The sum of the ``M`` zero-padded codewords is the concatenation of the slices.
    """
    n, d = x.shape
    if M > d:
        raise ValueError(f"product quantisation needs M <= dim, got M={M}, dim={d}")
    bounds = np.linspace(0, d, M + 1).round().astype(int)
    books = torch.zeros(M, K, d, dtype=x.dtype, device=x.device)
    codes = []
    for m in range(M):
        lo, hi = int(bounds[m]), int(bounds[m + 1])
        centroids, assign = kmeans(x[:, lo:hi].contiguous(), K, iters=iters, seed=seed + m,
                                   chunk_size=chunk_size)
        books[m, :, lo:hi] = centroids
        codes.append(assign)
    return books, torch.stack(codes, 1)


#: the most codewords ``M * K`` whose least-squares codebooks are solved (an ``(M K) x (M K)`` system)
MAX_LEAST_SQUARES = 8192


def fit_codebooks(x: Tensor, codes: Tensor, K: int, *, ridge: float = 1e-6) -> Tensor:
    """Least-squares codebooks for fixed codes: ``argmin_A sum_i |x_i - sum_m A[m, c_i^m]|^2``.

    Solves the ``(M K) x (M K)`` normal equations in float64 with a tiny ridge (``ridge`` times the
    mean diagonal) that removes the null space (a constant moved between codebooks) and sends unused
    codewords to zero. ``x (n, d)``, ``codes (n, M)``; returns ``(M, K, d)`` in ``x``'s dtype.
    """
    n, d = x.shape
    M = codes.shape[1]
    if M * K > MAX_LEAST_SQUARES:
        raise ValueError(f"least-squares codebooks need M*K <= {MAX_LEAST_SQUARES}, got {M * K}")
    codes = codes.to(device=x.device, dtype=torch.long)
    gram = torch.zeros(M * K, M * K, dtype=torch.float64, device=x.device)
    rhs = torch.zeros(M * K, d, dtype=torch.float64, device=x.device)
    xd = x.detach().double()
    for m in range(M):
        rhs[m * K:(m + 1) * K].index_add_(0, codes[:, m], xd)
        for m2 in range(m, M):
            pair = torch.bincount(codes[:, m] * K + codes[:, m2], minlength=K * K).view(K, K).double()
            gram[m * K:(m + 1) * K, m2 * K:(m2 + 1) * K] = pair
            if m2 != m:
                gram[m2 * K:(m2 + 1) * K, m * K:(m + 1) * K] = pair.t()
    lam = ridge * max(float(gram.diagonal().mean()), 1e-12)
    gram.diagonal().add_(lam)
    solution = torch.linalg.solve(gram, rhs)
    return solution.view(M, K, d).to(x.dtype)
