"""Learning compositional codes from a teacher's item vectors (EODRec phase 1).

EODRec (Xia et al., "Efficient On-Device Session-Based Recommendation", ACM TOIS 41(4), 2023) learns
each item's ``M`` codes with the autoencoder of deep compositional code learning (Shu & Nakayama,
"Compressing Word Embeddings via Deep Compositional Code Learning", ICLR 2018), fed with the teacher's
item vector ``e`` (docs/methods/eodrec.md):

* encoder ``h = tanh(W1 e + b1)`` in ``R^{MK/2}``, ``a = softplus(W2 h + b2)`` in ``R^{M x K}``,
  ``pi = softmax_K(log a)`` (= ``a / sum_K a``; as in Shu & Nakayama the Gumbel-softmax takes
  ``log a`` as its logits);
* ``y = GumbelSoftmax(log pi, tau = 0.3)`` with a straight-through hard one-hot (forward: the one-hot
  of the noisy argmax; backward: the soft sample's gradient);
* decoder ``e_hat = sum_m y_m A_m`` with ``A`` the ``(M, K, d)`` codebooks, i.e. the table's own sum
  composition; loss ``|e_hat - e|^2`` summed over ``d``, averaged over items.

What differs from the authors' code (docs/methods/eodrec.md), on purpose:

* Reconstruction is the whole objective of this phase. The authors add the recommendation CE on a
  table mixed with the teacher's (``eta * codes + (1 - eta) * E_T``) and divide the MSE by ``n`` twice,
  which makes it negligible; we never mix teacher vectors (true compression, ``eta = 1``) and leave the
  recommendation loss to the distillation phase, where the codes are frozen and the codebooks train.
* Explicit initialisation instead of uninitialised memory: the codebooks ``A`` start from residual
  quantisation of the teacher vectors (:meth:`CodebookTable.from_vectors`), and the encoder is
  warm-started by cross-entropy on those codes until its argmax reproduces them (or
  ``warmstart_epochs`` run out), so training starts from the RQ solution instead of from noise.
* Final codes are the argmax of ``pi`` from the trained encoder (deterministic), not a noisy Gumbel
  sample taken after one epoch; the codebooks are then refitted by least squares for those codes.
* The candidate tables (init, every epoch's argmax codes) are scored by reconstruction MSE and the best
  one is returned, so the result is never worse than the initialisation; the report says which won.
  On our synthetic checks the straight-through autoencoder rarely beats residual quantisation with
  least-squares codebooks (it is a noisy local search), so expect ``used_learned`` to be often False.
* Optional ``polish_iters`` rounds of :func:`~pocketrec.tables.codebook.icm_refine` (coordinate-wise
  code re-assignment plus least-squares codebooks; never raises the error) after the selection. Off by
  default, since then the codes are no longer the encoder's argmax.
* The encoder sees the teacher vectors standardised (mean removed, divided by their overall standard
  deviation) so ``tanh`` does not saturate whatever the teacher's scale; the decoder reconstructs the
  raw vectors.
* Row 0 (padding) is excluded from learning; its codes are unused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketrec.quantize.kmeans import fit_codebooks
from pocketrec.tables.codebook import CodebookTable, icm_refine, reconstruction_mse


class CodeEncoder(nn.Module):
    """The code encoder of Shu & Nakayama / EODRec: ``(batch, dim)`` vectors -> ``(batch, M, K)`` logits.

    ``hidden`` defaults to ``M*K/2``. The logits are ``log softplus(W2 tanh(W1 e + b1) + b2)``, so
    ``softmax(logits) = pi``.
    """

    def __init__(self, dim: int, M: int, K: int, hidden: int | None = None) -> None:
        super().__init__()
        self.M, self.K = int(M), int(K)
        hidden = int(hidden) if hidden is not None else max(1, self.M * self.K // 2)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, self.M * self.K)

    def forward(self, e: Tensor) -> Tensor:
        a = F.softplus(self.fc2(torch.tanh(self.fc1(e))))
        return torch.log(a + 1e-12).view(-1, self.M, self.K)


def gumbel_straight_through(logits: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """Hard one-hot of ``argmax(logits + g)`` in the forward pass, gradient of ``softmax((logits + g)/tau)``
    in the backward pass; ``g`` is Gumbel(0, 1) noise drawn from ``generator`` (reproducible)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    soft = F.softmax((logits + g) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


@dataclass
class CodeLearningReport:
    """What :func:`learn_codes_with_report` did. MSEs are ``mean_i |e_i - e_hat_i|^2`` over items 1..n."""

    init_mse: float  # the initial table (its codes with least-squares codebooks)
    learned_mse: float  # the learned codes with least-squares codebooks
    final_mse: float  # best of init and learned (before polishing)
    used_learned: bool  # whether the returned codes are the learned ones
    changed_fraction: float  # share of the n*M codes of the returned table that differ from the init
    warmstart_agreement: float  # share of codes the warm-started encoder's argmax reproduces
    best_epoch: int  # epoch whose argmax codes were kept (-1: the initialisation)
    polished_mse: float  # the returned table, after ``polish_iters`` ICM rounds (= final_mse for 0)
    train_loss: list[float]  # mean reconstruction loss per epoch (straight-through forward)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _codes_mse(x: Tensor, codes: Tensor, K: int) -> tuple[float, Tensor]:
    books = fit_codebooks(x, codes, K)
    return reconstruction_mse(x, books, codes), books


def _argmax_codes(encoder: CodeEncoder, x_in: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([encoder(x_in[s:s + batch_size]).argmax(-1)
                          for s in range(0, x_in.shape[0], batch_size)])


def learn_codes_with_report(item_vectors: Tensor, M: int, K: int, *, epochs: int = 30, lr: float = 1e-3,
                            tau: float = 0.3, seed: int = 0, init: str = "rq", batch_size: int = 256,
                            warmstart_epochs: int = 50, warmstart_lr: float = 1e-2,
                            hidden: int | None = None, polish_iters: int = 0, dtype: str = "float32",
                            bitpack: bool = False, progress: bool = False, select_best: bool = True,
                            ) -> tuple[CodebookTable, CodeLearningReport]:
    """Learn ``M`` codes in ``0..K-1`` per item from teacher vectors ``(num_items + 1, dim)`` (row 0 =
    padding, ignored); returns the table and a :class:`CodeLearningReport`.

    Steps: (1) ``CodebookTable.from_vectors(method=init)`` gives the initial codes and codebooks;
    (2) the encoder is trained by cross-entropy on the initial codes (Adam, ``warmstart_lr``) until its
    argmax agrees on all codes or ``warmstart_epochs`` pass; (3) ``epochs`` epochs of the Gumbel
    straight-through autoencoder (Adam, ``lr``, ``tau``) on encoder and codebooks jointly; after each
    epoch the argmax codes get least-squares codebooks and are kept if they reconstruct better than
    everything so far (the initialisation included); (4) optionally ``polish_iters`` rounds of ICM
    refinement. ``select_best=False`` skips the selection and returns the encoder's final argmax codes
    (the paper's behaviour; for ablations). ``hidden`` is the encoder width (default ``M*K/2`` as in the paper).
    Deterministic for a given ``seed`` on CPU.
    """
    if item_vectors.dim() != 2 or item_vectors.shape[0] < 2:
        raise ValueError(f"item_vectors must be (num_items + 1, dim), got {tuple(item_vectors.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    x = item_vectors[1:].detach().float()
    n, dim = x.shape
    device = x.device

    init_table = CodebookTable.from_vectors(item_vectors.detach().float(), M, K, method=init, seed=seed,
                                            dtype=dtype, bitpack=bitpack)
    init_codes = init_table.codes[1:].clone()
    init_mse, init_books = _codes_mse(x, init_codes, K)
    best_mse, best_codes, best_books, best_epoch = init_mse, init_codes, init_books, -1

    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        encoder = CodeEncoder(dim, M, K, hidden).to(device)
    codebooks = nn.Parameter(init_books.clone().to(device))
    mean = x.mean(0, keepdim=True)
    scale = (x - mean).pow(2).mean().sqrt().clamp_min(1e-12)
    x_in = (x - mean) / scale

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=warmstart_epochs + epochs, desc=f"codes M={M} K={K}", unit="epoch")

    # (2) warm start: the encoder learns to output the initial codes.
    opt = torch.optim.Adam(encoder.parameters(), lr=warmstart_lr)
    agreement = float((_argmax_codes(encoder, x_in, 4096) == init_codes).float().mean())
    for _ in range(warmstart_epochs):
        if agreement >= 1.0:
            break
        for idx in torch.randperm(n, generator=gen).to(device).split(batch_size):
            loss = F.cross_entropy(encoder(x_in[idx]).reshape(-1, K), init_codes[idx].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        agreement = float((_argmax_codes(encoder, x_in, 4096) == init_codes).float().mean())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(agreement=f"{agreement:.3f}")

    # (3) the straight-through Gumbel autoencoder.
    opt = torch.optim.Adam([*encoder.parameters(), codebooks], lr=lr)
    losses: list[float] = []
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(n, generator=gen).to(device).split(batch_size):
            y = gumbel_straight_through(encoder(x_in[idx]), tau, gen)
            recon = torch.einsum("bmk,mkd->bd", y, codebooks)
            loss = (recon - x[idx]).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        losses.append(total / n)
        codes = _argmax_codes(encoder, x_in, 4096)
        mse, books = _codes_mse(x, codes, K)
        if mse < best_mse:
            best_mse, best_codes, best_books, best_epoch = mse, codes, books, epoch
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4g}", best=f"{best_mse:.4g}")
    if bar is not None:
        bar.close()

    learned_mse = init_mse
    if epochs:
        final_codes = _argmax_codes(encoder, x_in, 4096)
        learned_mse, final_books = _codes_mse(x, final_codes, K)
        if not select_best:
            best_mse, best_codes, best_books, best_epoch = learned_mse, final_codes, final_books, epochs - 1
    selected_mse = best_mse
    if polish_iters > 0:
        best_books, best_codes = icm_refine(x, best_books, best_codes, iters=polish_iters)
        best_mse = reconstruction_mse(x, best_books, best_codes)
    table = CodebookTable(n, dim, M=M, K=K, dtype=dtype, bitpack=bitpack, seed=seed).to(device)
    with torch.no_grad():
        table.codebooks.copy_(best_books)
    table.set_codes(best_codes)
    report = CodeLearningReport(
        init_mse=init_mse, learned_mse=learned_mse, final_mse=selected_mse, used_learned=best_epoch >= 0,
        changed_fraction=float((best_codes != init_codes).float().mean()), warmstart_agreement=agreement,
        best_epoch=best_epoch, polished_mse=best_mse, train_loss=losses)
    return table, report


def learn_codes(item_vectors: Tensor, M: int, K: int, *, epochs: int = 30, lr: float = 1e-3,
                tau: float = 0.3, seed: int = 0, init: str = "rq", batch_size: int = 256,
                progress: bool = False, **kwargs: Any) -> CodebookTable:
    """:func:`learn_codes_with_report` without the report; ``kwargs`` are its other options."""
    table, _ = learn_codes_with_report(item_vectors, M, K, epochs=epochs, lr=lr, tau=tau, seed=seed,
                                       init=init, batch_size=batch_size, progress=progress, **kwargs)
    return table
