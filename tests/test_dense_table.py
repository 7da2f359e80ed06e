import numpy as np
import pytest
import torch

from pocketrec.tables import DenseTable, array_nbytes, table_from_export


def test_nbytes_equals_exported_arrays():
    for dtype in ("float32", "float16"):
        table = DenseTable(1000, 24, dtype=dtype)
        arrays, desc = table.export()
        assert table.nbytes() == array_nbytes(arrays) == 1001 * 24 * np.dtype(dtype).itemsize
        assert arrays["weight"].dtype == np.dtype(dtype)
        assert desc["kind"] == "dense"


def test_export_round_trip_and_padding():
    table = DenseTable(50, 8)
    rebuilt = table_from_export(*table.export())
    ids = torch.tensor([[0, 3, 50]])
    assert torch.equal(rebuilt(ids), table(ids))
    assert torch.all(table(torch.tensor([0])) == 0)


def test_score_masks_padding_and_matches_matmul():
    table = DenseTable(30, 8)
    q = torch.randn(4, 8)
    scores = table.score(q)
    assert scores.shape == (4, 31)
    assert torch.all(scores[:, 0] == torch.finfo(scores.dtype).min)
    assert torch.allclose(scores[:, 1:], q @ table.weight[1:].t())


def test_for_budget_picks_largest_width():
    full = DenseTable.bytes_for(1000, 64)
    table = DenseTable.for_budget(1000, 64, full // 4)
    assert table.dim == 16 and table.nbytes() <= full // 4
    with pytest.raises(ValueError, match="below the smallest"):
        DenseTable.for_budget(1000, 64, 100)
