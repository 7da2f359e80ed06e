"""Elastic item table (RULE): exact bytes of only the kept blocks, both scorings, stored precisions, round trips,
and the numpy runtime and ONNX graph scoring as torch does."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pocketrec.device.np_tables import SCORERS, make_scorer
from pocketrec.formats.bitpack import pack_codes
from pocketrec.formats.elastic_arrays import elastic_groups
from pocketrec.tables import TABLE_KINDS, DenseTable, ElasticTable, array_nbytes, table_from_export
from pocketrec.tables.elastic import leading_blocks
from pocketrec.tables.elastic_core import effective_rows, item_groups

N_ITEMS, DIM, BLOCKS, GROUPS = 90, 16, 4, 5
WIDTH = DIM // BLOCKS
DTYPES = ["float32", "float16", "int8"]
SCORINGS = ["shared", "aligned"]
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))


def popularity_groups(num_items: int = N_ITEMS, num_groups: int = GROUPS, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).integers(0, 50, num_items + 1)
    return item_groups(counts, num_groups)


def random_mask(seed: int, num_groups: int = GROUPS, num_blocks: int = BLOCKS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random((num_groups, num_blocks)) < 0.5
    mask[np.arange(num_groups), rng.integers(0, num_blocks, num_groups)] = True  # no empty group
    return mask


def make_table(scoring: str = "shared", dtype: str = "float32", mask: np.ndarray | None = None, seed: int = 0,
               num_groups: int = GROUPS) -> ElasticTable:
    torch.manual_seed(seed)
    rows = torch.randn(N_ITEMS + 1, DIM)
    table = ElasticTable.from_rows(rows, BLOCKS, popularity_groups(num_groups=num_groups), num_groups,
                                   scoring=scoring, dtype=dtype)
    if mask is not None:
        table.set_architecture(mask)
    return table


def masks() -> list[np.ndarray]:
    full = np.ones((GROUPS, BLOCKS), dtype=bool)
    return [full, leading_blocks(GROUPS, BLOCKS, 1), random_mask(1), random_mask(2)]


# ------------------------------------------------------------------------------------------------ bytes


@pytest.mark.parametrize("dtype", DTYPES)
def test_nbytes_is_the_export_and_bytes_for_predicts_it(dtype):
    table = make_table(dtype=dtype)
    sizes = table.group_sizes()
    itemsize = np.dtype(dtype).itemsize
    for mask in masks():
        table.set_architecture(mask)
        arrays, description = table.export()
        assert table.nbytes() == array_nbytes(arrays)
        assert ElasticTable.bytes_for(sizes, mask, WIDTH, dtype) == table.nbytes() == table.architecture_bytes(mask)
        by_hand = (-(-N_ITEMS * 3 // 8) + -(-GROUPS * BLOCKS // 8)  # 3 bits of group per item, 1 bit of mask
                   + int((sizes * mask.sum(1)).sum()) * WIDTH * itemsize
                   + (4 * int(mask.sum()) if dtype == "int8" else 0))  # a float32 scale per kept block
        assert table.nbytes() == by_hand
        assert description == {"kind": "elastic", "num_items": N_ITEMS, "dim": DIM, "num_blocks": BLOCKS,
                               "num_groups": GROUPS, "scoring": "shared", "dtype": dtype}


def test_export_holds_only_the_kept_blocks():
    table = make_table(dtype="float16")
    full = table.nbytes()
    mask = random_mask(3)
    table.set_architecture(mask)
    arrays, _ = table.export()
    groups = table.groups.numpy()
    blocks = table.blocks.detach().numpy()
    for g in range(GROUPS):
        items, kept = np.flatnonzero(groups[1:] == g) + 1, np.flatnonzero(mask[g])
        stored = arrays[f"blocks/{g}"]
        assert stored.shape == (len(items), len(kept) * WIDTH) and stored.dtype == np.float16
        expected = blocks[items][:, kept].reshape(len(items), -1).astype(np.float16)
        np.testing.assert_array_equal(stored, expected)  # increasing ids, kept blocks in order
    dropped = int((table.group_sizes() * (BLOCKS - mask.sum(1))).sum())
    assert full - table.nbytes() == dropped * WIDTH * 2


# ------------------------------------------------------------------------------------------------ scores


def test_shared_score_is_the_rescaled_subset_sum():
    table = make_table("shared", mask=random_mask(4))
    u = torch.randn(2, DIM)
    scores = table.score(u)
    u_bar = u.view(2, BLOCKS, WIDTH).sum(1)
    for item in (1, 17, N_ITEMS):
        kept = np.flatnonzero(table.architecture()[int(table.groups[item])])
        by_hand = sum(u_bar @ table.blocks[item, k] for k in kept) * BLOCKS / len(kept)
        assert torch.allclose(scores[:, item], by_hand, atol=1e-5)
    assert torch.allclose(scores[:, 1:], (u @ table.effective().t())[:, 1:], atol=1e-5)
    assert torch.all(scores[:, 0] == torch.finfo(torch.float32).min)


def test_aligned_score_at_the_full_architecture_is_the_dense_score():
    torch.manual_seed(0)
    rows = torch.randn(N_ITEMS + 1, DIM)
    rows[0] = 0
    dense = DenseTable(N_ITEMS, DIM)
    with torch.no_grad():
        dense.weight.copy_(rows)
    table = ElasticTable.from_rows(rows, BLOCKS, popularity_groups(), GROUPS, scoring="aligned")
    u = torch.randn(3, DIM)
    assert torch.allclose(table.score(u), dense.score(u), atol=1e-5)
    assert torch.allclose(table.all_rows(), rows, atol=0)
    # a sub-architecture is the partial dot product (no rescale)
    mask = random_mask(5)
    table.set_architecture(mask)
    item = 7
    kept = np.flatnonzero(mask[int(table.groups[item])])
    chunks = u.view(3, BLOCKS, WIDTH)
    by_hand = sum((chunks[:, k] * rows[item].view(BLOCKS, WIDTH)[k]).sum(-1) for k in kept)
    assert torch.allclose(table.score(u)[:, item], by_hand, atol=1e-5)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_forward_rows_norms_and_padding(scoring):
    table = make_table(scoring, "int8", mask=random_mask(6))
    ids = torch.tensor([[0, 3, 5], [9, 0, N_ITEMS]])
    rows = table(ids)
    assert rows.shape == (2, 3, DIM)
    assert torch.all(rows[0, 0] == 0) and torch.all(rows[1, 1] == 0)
    eff = table.effective()
    assert torch.allclose(rows.reshape(-1, DIM), eff[ids.reshape(-1)], atol=1e-6)
    assert torch.allclose(table.row_norms()[1:], eff.norm(dim=-1)[1:], atol=1e-5)
    u = torch.randn(2, DIM)
    assert torch.allclose(table.cosine_score(u)[:, 1:], (u @ eff.t() / eff.norm(dim=-1))[:, 1:], atol=1e-5)


def test_int8_error_is_within_half_a_step():
    fine = make_table("aligned", "float32", mask=random_mask(7))
    coarse = make_table("aligned", "int8", mask=random_mask(7))
    scales = coarse.block_scales()[coarse.groups]  # (n + 1, N)
    factor = BLOCKS / torch.from_numpy(random_mask(7).sum(1)).float()[coarse.groups]
    bound = (scales * factor.unsqueeze(1)).repeat_interleave(WIDTH, dim=1) / 2 + 1e-6
    with torch.no_grad():
        error = (coarse.effective() - fine.effective()).abs()
    assert torch.all(error <= bound) and float(error.max()) > 0
    assert float(error.max()) < 0.05 * float(fine.effective().detach().abs().max())


def test_effective_rows_of_the_table_are_elastic_cores():
    table = make_table("aligned", "float16", mask=random_mask(13))
    with torch.no_grad():
        stored = table.blocks.to(torch.float16).float()
        stored[0] = 0
        expected = effective_rows(stored, table.groups, table.mask, "aligned")
    assert torch.equal(table.effective(), expected)


def test_item_groups_are_equal_runs_with_the_first_groups_one_larger():
    counts = np.array([0, 5, 1, 9, 9, 0, 3, 7, 2, 8, 4])  # 10 items
    for grouping in ("popularity", "contiguous"):
        groups = item_groups(counts, 3, grouping)
        assert groups[0] == 0 and np.bincount(groups[1:]).tolist() == [4, 3, 3]
    popular = item_groups(counts, 3)
    assert sorted(np.flatnonzero(popular == 0)[1:].tolist()) == [3, 4, 7, 9]  # the four most popular
    np.testing.assert_array_equal(item_groups(counts, 3, "contiguous")[1:], [0] * 4 + [1] * 3 + [2] * 3)


# ------------------------------------------------------------------------------------------------ architectures


def test_invalid_architectures_and_structures_are_refused():
    table = make_table()
    empty = np.ones((GROUPS, BLOCKS), dtype=bool)
    empty[2] = False
    with pytest.raises(ValueError, match="at least one block"):
        table.set_architecture(empty)
    with pytest.raises(ValueError, match="mask"):
        table.set_architecture(np.ones((GROUPS, BLOCKS + 1), dtype=bool))
    assert table.architecture().all()  # unchanged
    with pytest.raises(ValueError, match="multiple of num_blocks"):
        ElasticTable(N_ITEMS, DIM, 3, popularity_groups(), GROUPS)
    with pytest.raises(ValueError, match="lie in 0..4"):
        ElasticTable(N_ITEMS, DIM, BLOCKS, np.full(N_ITEMS + 1, 5), GROUPS)
    with pytest.raises(ValueError, match="shape"):
        ElasticTable(N_ITEMS, DIM, BLOCKS, np.zeros(N_ITEMS), GROUPS)
    with pytest.raises(ValueError, match="scoring"):
        ElasticTable(N_ITEMS, DIM, BLOCKS, popularity_groups(), GROUPS, scoring="bogus")
    with pytest.raises(ValueError, match="dtype"):
        ElasticTable(N_ITEMS, DIM, BLOCKS, popularity_groups(), GROUPS, dtype="int4")


def test_using_restores_the_architecture_and_a_group_without_items_is_fine():
    groups = popularity_groups()
    groups[groups == 4] = 3  # group 4 has no items; it still needs a block
    table = ElasticTable(N_ITEMS, DIM, BLOCKS, groups, GROUPS)
    before = random_mask(8)
    table.set_architecture(before)
    small = leading_blocks(GROUPS, BLOCKS, 1)
    with table.using(small) as same:
        assert same is table
        np.testing.assert_array_equal(table.architecture(), small)
    np.testing.assert_array_equal(table.architecture(), before)
    with pytest.raises(RuntimeError), table.using(small):
        raise RuntimeError("boom")
    np.testing.assert_array_equal(table.architecture(), before)
    with pytest.raises(ValueError), table.using(np.zeros((GROUPS, BLOCKS), dtype=bool)):
        pass
    np.testing.assert_array_equal(table.architecture(), before)
    arrays, description = table.export()
    assert arrays["blocks/4"].shape == (0, before[4].sum() * WIDTH)
    assert table.nbytes() == array_nbytes(arrays)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_reach_only_the_kept_blocks(dtype):
    mask = random_mask(9)
    table = make_table("shared", dtype, mask=mask)
    u = torch.randn(4, DIM)
    (table.score(u)[:, 1:].sum() + table(torch.tensor([0, 2, 3])).sum()).backward()
    grad = table.blocks.grad
    kept = torch.from_numpy(mask)[table.groups]  # (n + 1, N)
    kept[0] = False  # the padding row never learns
    assert torch.all(grad[~kept] == 0)
    assert torch.all(grad[kept].abs().sum(-1) > 0)


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_export_round_trip_and_numpy_runtime_match_torch(scoring, dtype):
    table = make_table(scoring, dtype, mask=random_mask(10))
    arrays, description = table.export()
    back = table_from_export(arrays, description)
    assert isinstance(back, ElasticTable) and TABLE_KINDS["elastic"] is ElasticTable and "elastic" in SCORERS
    np.testing.assert_array_equal(back.architecture(), table.architecture())
    assert torch.equal(back.groups, table.groups)
    u = torch.randn(3, DIM)
    with torch.no_grad():
        expected, rows = table.score(u), table.effective()
        assert torch.allclose(back.score(u)[:, 1:], expected[:, 1:], atol=1e-5)
        assert torch.allclose(back.effective(), rows, atol=1e-6)
    again, _ = back.export()  # the rebuilt table exports the same arrays
    assert set(again) == set(arrays)
    for name in arrays:
        np.testing.assert_allclose(again[name].astype(np.float64), arrays[name].astype(np.float64), rtol=1e-6)

    scorer = make_scorer(arrays, description)
    np.testing.assert_allclose(scorer.score(u.numpy())[:, 1:], expected.numpy()[:, 1:], atol=1e-5)
    np.testing.assert_allclose(scorer.score(u[0].numpy())[1:], expected[0, 1:].numpy(), atol=1e-5)
    blocks = list(scorer.score_blocks(u[1].numpy()))
    np.testing.assert_allclose(np.concatenate([b for _, b in blocks])[1:], expected[1, 1:].numpy(), atol=1e-5)
    ids = np.array([0, 1, 44, N_ITEMS])
    np.testing.assert_allclose(scorer.rows(ids), rows[ids].numpy(), atol=1e-6)
    np.testing.assert_allclose(scorer.row_norms()[1:], rows.norm(dim=-1)[1:].numpy(), atol=1e-5)


def test_state_dict_restores_groups_and_architecture():
    table = make_table("aligned", "float16", mask=random_mask(11))
    _, description = table.export()
    fresh = ElasticTable.from_description(description)
    assert fresh.architecture().all() and int(fresh.groups.max()) == 0
    fresh.load_state_dict(table.state_dict())
    np.testing.assert_array_equal(fresh.architecture(), table.architecture())
    u = torch.randn(2, DIM)
    assert torch.equal(fresh.score(u), table.score(u))
    assert fresh.nbytes() == table.nbytes()


def test_corrupt_exports_are_refused():
    table = make_table(dtype="int8", mask=random_mask(12))
    arrays, description = table.export()
    missing = {k: v for k, v in arrays.items() if k != "blocks/2"}
    with pytest.raises(ValueError, match="missing"):
        ElasticTable.from_export(missing, description)
    wrong = dict(arrays, scales=arrays["scales"][:2].copy())
    with pytest.raises(ValueError, match="scales"):
        make_scorer(wrong, description)
    wrong = dict(arrays, **{"blocks/0": arrays["blocks/0"].astype(np.float32)})
    with pytest.raises(ValueError, match="blocks/0"):
        elastic_groups(wrong, description)
    wrong = dict(arrays, mask=pack_codes(np.zeros(GROUPS * BLOCKS, dtype=np.uint8), 1))
    with pytest.raises(ValueError, match="at least one block"):
        ElasticTable.from_export(wrong, description)


# ------------------------------------------------------------------------------------------------ budgets


def test_for_budget_keeps_the_most_leading_blocks_that_fit():
    sizes = np.bincount(item_groups(np.zeros(N_ITEMS + 1), GROUPS, "contiguous")[1:], minlength=GROUPS)
    cost = [ElasticTable.bytes_for(sizes, leading_blocks(GROUPS, BLOCKS, k), WIDTH, "float16")
            for k in range(1, BLOCKS + 1)]
    table = ElasticTable.for_budget(N_ITEMS, DIM, cost[2] + 1, num_blocks=BLOCKS, num_groups=GROUPS,
                                    dtype="float16")
    np.testing.assert_array_equal(table.architecture(), leading_blocks(GROUPS, BLOCKS, 3))
    assert table.nbytes() == cost[2] and table.stored_dtype == "float16"
    assert ElasticTable.for_budget(N_ITEMS, DIM, 10**9, num_blocks=BLOCKS, num_groups=GROUPS).architecture().all()
    with pytest.raises(ValueError, match=f"below the smallest elastic table \\({cost[0]:,} B"):
        ElasticTable.for_budget(N_ITEMS, DIM, cost[0] - 1, num_blocks=BLOCKS, num_groups=GROUPS, dtype="float16")
    default = ElasticTable.for_budget(10, 24, 10**9)  # 8 blocks of 3, groups clipped to the 10 items
    assert (default.num_blocks, default.num_groups) == (8, 10)
    given = popularity_groups()
    table = ElasticTable.for_budget(N_ITEMS, DIM, 10**9, num_blocks=BLOCKS, groups=given)
    assert table.num_groups == GROUPS and np.array_equal(table.groups.numpy()[1:], given[1:])


# ------------------------------------------------------------------------------------------------ ONNX


@pytest.mark.skipif(not HAS_ONNX, reason="needs the onnx extra")
@pytest.mark.parametrize("num_groups,scoring,dtype,prefix", [
    (1, "shared", "float16", False), (2, "aligned", "int8", False), (5, "shared", "int8", True),
    (5, "aligned", "float32", False), (16, "aligned", "float16", True)])
def test_onnx_graph_scores_as_the_numpy_runtime(num_groups, scoring, dtype, prefix):
    import onnx
    import onnxruntime as ort

    from pocketrec.device.onnx_export import OnnxGraph, make_onnx_table

    mask = leading_blocks(num_groups, BLOCKS, 2) if prefix else random_mask(14, num_groups)
    table = make_table(scoring, dtype, mask=mask, num_groups=num_groups)
    arrays, description = table.export()
    graph = OnnxGraph()
    builder = make_onnx_table(graph, arrays, description)
    rows, scores = builder.rows("item_ids"), builder.scores("query")
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            graph.nodes, "elastic",
            [onnx.helper.make_tensor_value_info("item_ids", onnx.TensorProto.INT64, [1, 4]),
             onnx.helper.make_tensor_value_info("query", onnx.TensorProto.FLOAT, [1, DIM])],
            [onnx.helper.make_tensor_value_info(rows, onnx.TensorProto.FLOAT, [1, 4, DIM]),
             onnx.helper.make_tensor_value_info(scores, onnx.TensorProto.FLOAT, [1, N_ITEMS])],
            graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 30, 61, N_ITEMS]])
    query = np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32)
    got_rows, got_scores = session.run(None, {"item_ids": ids, "query": query})
    scorer = make_scorer(arrays, description)
    np.testing.assert_allclose(got_scores[0], scorer.score(query[0])[1:], atol=1e-5)
    np.testing.assert_allclose(got_rows[0], scorer.rows(ids[0]), atol=1e-6)
    held = {t.name for t in graph.initializers}
    assert all(f"pocketrec/table/{name}" in held for name in arrays)  # every stored array, as stored
