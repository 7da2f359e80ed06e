"""The fused, chunked catalogue CE/KL equals the plain autograd formulas, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from pocketrec.train.catalogue_loss import catalogue_cross_entropy, catalogue_losses


def reference(queries, rows, targets, t_queries, t_rows, temperature):
    logits = queries @ rows.t()
    teacher = t_queries @ t_rows.t()
    ce = F.cross_entropy(logits[:, 1:], targets - 1)  # column 0 (padding) never competes
    kl = F.kl_div(F.log_softmax(logits[:, 1:] / temperature, -1), F.log_softmax(teacher[:, 1:] / temperature, -1),
                  log_target=True, reduction="batchmean") * temperature ** 2
    return ce, kl


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("chunk", [3, 1000])
def test_matches_autograd_reference(temperature, chunk):
    gen = torch.Generator().manual_seed(0)
    n, d, items = 11, 8, 37
    queries = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(items + 1, d, generator=gen, dtype=torch.float64, requires_grad=True)
    t_queries = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    t_rows = torch.randn(items + 1, 5, generator=gen, dtype=torch.float64)
    targets = torch.randint(1, items + 1, (n,), generator=gen)
    w_rec, w_kd = 0.3, 0.7

    ce, kl = catalogue_losses(queries, rows, targets, t_queries, t_rows, temperature, chunk=chunk)
    (w_rec * ce + w_kd * kl).backward()
    got = queries.grad.clone(), rows.grad.clone()
    queries.grad = rows.grad = None
    ref_ce, ref_kl = reference(queries, rows, targets, t_queries, t_rows, temperature)
    (w_rec * ref_ce + w_kd * ref_kl).backward()

    assert torch.allclose(ce, ref_ce) and torch.allclose(kl, ref_kl)
    assert torch.allclose(got[0], queries.grad)
    assert torch.allclose(got[1], rows.grad)
    assert torch.all(got[1][0] == 0)  # the padding row gets no gradient


def test_cross_entropy_alone_and_gradient_only_where_asked():
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(6, 4, generator=gen, requires_grad=True)
    rows = torch.randn(10, 4, generator=gen)  # a frozen table: only the queries learn
    targets = torch.randint(1, 10, (6,), generator=gen)
    ce = catalogue_cross_entropy(queries, rows, targets, chunk=4)
    ce.backward()
    ref = F.cross_entropy((queries @ rows.t())[:, 1:], targets - 1)
    assert torch.allclose(ce, ref, atol=1e-6)
    assert queries.grad is not None and rows.grad is None
    assert catalogue_losses(queries, rows, targets)[1].item() == 0.0


def test_kl_vanishes_when_student_equals_teacher():
    gen = torch.Generator().manual_seed(2)
    queries, rows = torch.randn(5, 4, generator=gen), torch.randn(9, 4, generator=gen)
    _, kl = catalogue_losses(queries, rows, torch.ones(5, dtype=torch.long), queries, rows)
    assert abs(kl.item()) < 1e-5


def test_bad_shapes_are_refused():
    q, r = torch.randn(3, 4), torch.randn(9, 4)
    with pytest.raises(ValueError, match="targets"):
        catalogue_losses(q, r, torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="must be"):
        catalogue_losses(q, torch.randn(9, 5), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="both"):
        catalogue_losses(q, r, torch.ones(3, dtype=torch.long), teacher_queries=q)
