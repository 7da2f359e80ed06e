"""Code refresh: codes re-assigned during distillation along each row's loss gradient."""

import pytest
import torch

from helpers import student_train_config
from pocketrec.methods.eodrec import compress_eodrec
from pocketrec.tables.codebook import CodebookTable, icm_refine, reassign_codes, reconstruct
from pocketrec.train.checkpoint import load_checkpoint
from pocketrec.train.code_refresh import CodeRefreshConfig, CodeRefresher


def _table(seed: int = 0) -> tuple[CodebookTable, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(201, 8, generator=gen)
    return CodebookTable.from_vectors(vectors, 3, 4, method="rq", seed=seed), vectors


def test_reassignment_never_raises_an_items_error_and_is_one_icm_round():
    table, vectors = _table()
    x, books, codes = vectors[1:], table.codebooks.detach(), table.codes[1:]
    noisy = x + 0.5 * torch.randn_like(x)  # a target the codes were not fitted to
    new = reassign_codes(noisy, books, codes)
    before = (noisy - reconstruct(books, codes)).pow(2).sum(1)
    after = (noisy - reconstruct(books, new)).pow(2).sum(1)
    assert torch.all(after <= before + 1e-5) and after.mean() < before.mean()
    assert not torch.equal(new, codes)
    # The same round, followed by refitted codebooks, is icm_refine's first step.
    _, refined = icm_refine(noisy, books, codes, iters=1)
    assert torch.equal(refined, new)


def test_row_gradients_sum_what_autograd_gives_each_row():
    table, _ = _table()
    table.track_row_gradients()
    ids = torch.tensor([[3, 5, 3], [0, 7, 5]])
    weights = torch.randn(2, 3, 8)
    rows = table.all_rows()  # the catalogue path too
    row_weights = torch.randn_like(rows)
    ((table(ids) * weights).sum() + (rows * row_weights).sum()).backward()
    expected = row_weights.clone()
    expected.index_add_(0, ids.reshape(-1), weights.reshape(-1, 8))
    expected[0] = table.row_gradients[0]  # padding: whatever reached it is never used
    assert torch.allclose(table.row_gradients, expected, atol=1e-5)
    table.track_row_gradients(False)
    assert table.row_gradients is None and "row_gradients" not in table.state_dict()


def test_refresh_moves_codes_only_where_the_gradient_pushes():
    table = CodebookTable(2, 2, M=1, K=2)
    with torch.no_grad():
        table.codebooks.copy_(torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]))
    table.set_codes(torch.tensor([[0], [0]]))
    table.track_row_gradients()
    with torch.no_grad():
        table.row_gradients[1] = torch.tensor([-1.0, 0.0])  # the loss wants item 1 toward codeword 1
    small = table.refresh_codes(0.4)  # e - 0.4 g = (0.4, 0): still nearer codeword 0
    assert table.codes[1:, 0].tolist() == [0, 0] and small["codes_changed"] == 0.0
    with torch.no_grad():
        table.row_gradients[1] = torch.tensor([-1.0, 0.0])
    big = table.refresh_codes(0.8)  # (0.8, 0): codeword 1
    assert table.codes[1:, 0].tolist() == [1, 0] and big["items_changed"] == 0.5
    assert torch.count_nonzero(table.row_gradients) == 0  # the sums restart after a refresh


def test_refresher_checks_its_config_and_table():
    with pytest.raises(ValueError, match="every"):
        CodeRefreshConfig(every=-1)
    with pytest.raises(ValueError, match="trust"):
        CodeRefreshConfig(every=1, trust=0)
    from pocketrec.tables.dense import DenseTable
    with pytest.raises(TypeError, match="CodebookTable"):
        CodeRefresher(DenseTable(5, 4), CodeRefreshConfig(every=1))


def test_students_codes_change_during_distillation_and_bytes_do_not(synthetic_data, tiny_teacher_dir, tmp_path):
    fixed, fixed_result = compress_eodrec(tiny_teacher_dir, synthetic_data, "4x", codes="rq",
                                          train=student_train_config(1))
    moved, result = compress_eodrec(tiny_teacher_dir, synthetic_data, "4x", codes="rq", out_dir=tmp_path / "s",
                                    train=student_train_config(1), code_refresh=CodeRefreshConfig(every=2, trust=0.3))
    assert result.table_bytes == fixed_result.table_bytes == moved.table.nbytes()
    changed = (moved.table.codes[1:] != fixed.table.codes[1:]).float().mean()
    assert 0 < changed < 0.5
    assert moved.table.row_gradients is None  # tracking stops with training
    model, meta = load_checkpoint(tmp_path / "s" / "best")
    assert meta["code_refresh"] == {"every": 2, "trust": 0.3}
    assert torch.equal(model.table.codes, moved.table.codes)
    assert result.test["recall@5"] > 0.4
