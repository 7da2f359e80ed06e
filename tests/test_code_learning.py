"""EODRec code learning (Gumbel straight-through autoencoder, warm-started from residual quantisation):
determinism, never worse than its initialisation, padding row ignored, building blocks."""

from __future__ import annotations

import pytest
import torch

from pocketrec.tables import CodebookTable
from pocketrec.train.codes import CodeEncoder, gumbel_straight_through, learn_codes, learn_codes_with_report


def clustered(n: int = 2000, d: int = 32, clusters: int = 20, seed: int = 0) -> torch.Tensor:
    """``(n + 1, d)`` teacher-like vectors (row 0 = padding zeros): cluster centres plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 3.0
    x = centres[torch.randint(clusters, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return torch.cat([torch.zeros(1, d), x])


def additive(n: int = 1500, d: int = 32, M: int = 3, K: int = 16, seed: int = 0) -> torch.Tensor:
    """Vectors that ARE sums of M codewords (plus a little noise): greedy RQ misses this structure."""
    g = torch.Generator().manual_seed(seed)
    books = torch.randn(M, K, d, generator=g)
    codes = torch.randint(K, (n, M), generator=g)
    x = books[torch.arange(M), codes].sum(1) + 0.1 * torch.randn(n, d, generator=g)
    return torch.cat([torch.zeros(1, d), x])


FAST = dict(epochs=4, warmstart_epochs=8, hidden=128, batch_size=256)


def test_encoder_gives_log_softplus_logits() -> None:
    enc = CodeEncoder(8, M=3, K=5)
    assert enc.fc1.out_features == 7  # M*K/2 as in the paper
    e = torch.randn(4, 8)
    logits = enc(e)
    assert logits.shape == (4, 3, 5)
    a = torch.nn.functional.softplus(enc.fc2(torch.tanh(enc.fc1(e)))).view(4, 3, 5)
    torch.testing.assert_close(logits.softmax(-1), a / a.sum(-1, keepdim=True))


def test_gumbel_straight_through_is_hard_forward_soft_backward() -> None:
    logits = torch.randn(6, 3, 5, requires_grad=True)
    y = gumbel_straight_through(logits, 0.3, torch.Generator().manual_seed(0))
    assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(-1) == 1)
    y2 = gumbel_straight_through(logits, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)
    (y * torch.arange(5.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_learn_codes_is_deterministic_with_a_seed() -> None:
    vectors = clustered()
    t1, r1 = learn_codes_with_report(vectors, 2, 16, seed=3, **FAST)
    t2, r2 = learn_codes_with_report(vectors, 2, 16, seed=3, **FAST)
    assert torch.equal(t1.codes, t2.codes) and torch.equal(t1.codebooks, t2.codebooks)
    assert r1.to_dict() == r2.to_dict()
    t3 = learn_codes(vectors, 2, 16, seed=3, **FAST)
    assert isinstance(t3, CodebookTable) and torch.equal(t3.codes, t1.codes)
    assert (t1.num_items, t1.dim, t1.M, t1.K) == (2000, 32, 2, 16)


def test_learned_codes_are_not_worse_than_their_rq_init() -> None:
    vectors = clustered()
    table, report = learn_codes_with_report(vectors, 2, 16, seed=0, **FAST)
    rq = CodebookTable.from_vectors(vectors, 2, 16, seed=0)
    assert report.init_mse == pytest.approx(rq.reconstruction_error(vectors), rel=1e-6)
    assert table.reconstruction_error(vectors) == pytest.approx(report.polished_mse, rel=1e-5)
    assert report.polished_mse <= report.final_mse <= report.init_mse
    assert table.reconstruction_error(vectors) <= rq.reconstruction_error(vectors) + 1e-6
    # the encoder's own argmax codes are meaningful: far better than random codes
    random_err = CodebookTable.from_vectors(vectors, 2, 16, method="random").reconstruction_error(vectors)
    assert report.learned_mse < 0.2 * random_err
    assert 0.0 <= report.changed_fraction <= 1.0 and 0.0 <= report.warmstart_agreement <= 1.0
    assert len(report.train_loss) == FAST["epochs"]


def test_autoencoder_learns_codes_without_a_warm_start() -> None:
    vectors = clustered(n=1000)
    _, report = learn_codes_with_report(vectors, 2, 16, seed=0, epochs=6, warmstart_epochs=0, hidden=64)
    random_err = CodebookTable.from_vectors(vectors, 2, 16, method="random").reconstruction_error(vectors)
    assert report.warmstart_agreement < 0.5  # the encoder really started from scratch
    assert report.learned_mse < 0.6 * random_err
    assert report.train_loss[-1] < report.train_loss[0]


def test_polishing_improves_on_rq_where_rq_misses_the_structure() -> None:
    vectors = additive()
    table, report = learn_codes_with_report(vectors, 3, 16, seed=0, polish_iters=3, **FAST)
    assert report.polished_mse < 0.98 * report.init_mse
    assert table.reconstruction_error(vectors) == pytest.approx(report.polished_mse, rel=1e-5)


def test_padding_row_is_ignored() -> None:
    vectors = clustered(n=500, d=16)
    other = vectors.clone()
    other[0] = 1e3
    t1 = learn_codes(vectors, 2, 8, seed=0, epochs=2, warmstart_epochs=2)
    t2 = learn_codes(other, 2, 8, seed=0, epochs=2, warmstart_epochs=2)
    assert torch.equal(t1.codes, t2.codes) and torch.equal(t1.codebooks, t2.codebooks)
    with pytest.raises(ValueError, match="num_items"):
        learn_codes(vectors[0], 2, 8)
