"""Row-wise int8 / int4 table: exact bytes, bounded error, round trips, packing."""

import numpy as np
import pytest
import torch

from pocketrec.formats.bitpack import pack_int4, unpack_int4
from pocketrec.tables import QuantizedTable, array_nbytes, table_from_export


@pytest.mark.parametrize("bits", [8, 4])
def test_quantisation_error_is_bounded_and_bytes_exact(bits):
    rows = torch.randn(101, 13, generator=torch.Generator().manual_seed(0))
    rows[0] = 0
    table = QuantizedTable.from_rows(rows, bits)
    ids = torch.arange(101)
    step = rows.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
    assert torch.all((table(ids) - rows).abs() <= step / 2 + 1e-6)
    assert torch.all(table(torch.tensor([0])) == 0)
    arrays, description = table.export()
    assert table.nbytes() == array_nbytes(arrays) == 101 * (-(-13 * bits // 8) + 4)
    again = table_from_export(arrays, description)
    assert torch.equal(again.values, table.values) and torch.equal(again.scales, table.scales)
    q = torch.randn(3, 13)
    expected = q @ table(ids).t()
    assert torch.allclose(table.score(q)[:, 1:], expected[:, 1:], atol=1e-5)
    assert torch.all(table.score(q)[:, 0] == torch.finfo(torch.float32).min)


def test_int4_packing_round_trips_odd_widths():
    values = np.random.default_rng(0).integers(-7, 8, size=(9, 5)).astype(np.int8)
    packed = pack_int4(values)
    assert packed.shape == (9, 3) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_int4(packed, 5), values)


def test_budget_picks_the_bits_that_fit():
    assert QuantizedTable.for_budget(1000, 64, 70_000).bits == 8
    assert QuantizedTable.for_budget(1000, 64, 40_000).bits == 4
    with pytest.raises(ValueError, match="below the smallest quantized table"):
        QuantizedTable.for_budget(1000, 64, 10_000)
