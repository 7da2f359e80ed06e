"""Item orders for TT tables: the balanced assignment, the clustered slots, and an ordered TTTable end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pocketrec.tables import TTTable, array_nbytes, table_from_export
from pocketrec.tables.tt_order import balanced_assign, clustered_slots


def test_balanced_assign_respects_capacity_and_is_optimal_on_small_cases() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n, bins = 6, 3
        cost = torch.rand(n, bins, generator=gen)
        capacity = torch.tensor([2, 2, 3])
        assign = balanced_assign(cost, capacity)
        assert (torch.bincount(assign, minlength=bins) <= capacity).all()
        got = float(cost[torch.arange(n), assign].sum())
        best = min(sum(float(cost[i, b]) for i, b in enumerate(choice))
                   for choice in itertools.product(range(bins), repeat=n)
                   if all(choice.count(b) <= int(capacity[b]) for b in range(bins)))
        assert got <= best * 1.5 + 1e-9  # greedy proposals: feasible and near the optimum
        if trial == 0:  # unconstrained case: everyone gets their cheapest bin
            assert torch.equal(balanced_assign(cost, torch.full((bins,), n)), cost.argmin(1))


def test_balanced_assign_with_candidate_bins_and_errors() -> None:
    # two groups of rows, each with its own 3 bins of capacity 1: a per-group permutation
    cost = torch.tensor([[0.2, 0.3, 0.9], [0.1, 0.8, 0.9], [0.1, 0.2, 0.0], [0.3, 0.1, 0.2]])
    bins = torch.tensor([[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    assign = balanced_assign(cost, torch.ones(6, dtype=torch.long), bins)
    assert assign.tolist() == [1, 0, 5, 4]  # rows 0 and 1 both want bin 0; the cheaper row 1 gets it
    with pytest.raises(ValueError, match="capacity"):
        balanced_assign(torch.rand(5, 2), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="no candidate"):
        # three rows whose only candidate is bin 0 (room 1), though bins 1-2 have room
        balanced_assign(torch.rand(3, 1), torch.ones(3, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long))


def clustered_rows(num_items: int, clusters: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows around ``clusters`` well-separated centres, cluster sizes equal (up to one), ids shuffled."""
    gen = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(clusters, dim, generator=gen)
    label = (torch.arange(num_items) % clusters)[torch.randperm(num_items, generator=gen)]
    return centres[label] + 0.1 * torch.randn(num_items, dim, generator=gen), label


def test_clustered_slots_are_a_valid_order_that_groups_alike_items() -> None:
    table = TTTable(300, 16, rank=4, t=2, ordered=True)
    first, per_first = table.item_factors[0], table.item_factors[1]
    rows, label = clustered_rows(300, first, 16)  # one true cluster per first digit, each fits its slots
    slots = clustered_slots(rows, table.item_factors)
    assert slots.shape == (301,) and int(slots[0]) == 0
    assert torch.unique(slots).numel() == 301 and int(slots[1:].min()) >= 1 and int(slots.max()) < first * per_first
    # each first digit holds the items of one true cluster
    digit = slots[1:] // per_first
    for d in digit.unique():
        labels = label[digit == d]
        assert torch.bincount(labels).max().item() >= 0.9 * labels.numel()
    shuffled = label[torch.randperm(300, generator=torch.Generator().manual_seed(0))]  # the check can fail:
    assert any(torch.bincount(shuffled[digit == d]).max().item() < 0.9 * (digit == d).sum() for d in digit.unique())


def test_ordered_table_rows_scores_and_bytes() -> None:
    torch.manual_seed(0)
    plain = TTTable(37, 16, rank=4, t=2, dim_factors=(2, 8), init_std=0.3).double()
    ordered = TTTable(37, 16, rank=4, t=2, dim_factors=(2, 8), init_std=0.3, ordered=True).double()
    ordered.load_state_dict({**plain.state_dict(), "slots": ordered.slots}, strict=True)
    assert torch.equal(ordered(torch.arange(38)), plain(torch.arange(38)))  # identity until set
    slots = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(plain.num_slots - 1)[:37] + 1])
    ordered.set_slots(slots)
    ids = torch.arange(1, 38)
    torch.testing.assert_close(ordered(ids), plain._rows_of(slots[1:]))
    rows = ordered.full_weight()
    torch.testing.assert_close(rows[1:], plain._rows_of(slots[1:]))
    queries = torch.randn(3, 16, dtype=torch.float64)
    scores = ordered.score(queries)
    torch.testing.assert_close(scores[:, 1:], queries @ rows[1:].t())
    assert (scores[:, 0] == torch.finfo(scores.dtype).min).all()
    unit = rows[1:] / rows[1:].norm(dim=1, keepdim=True)
    torch.testing.assert_close(ordered.cosine_score(queries)[:, 1:], queries @ unit.t())
    torch.testing.assert_close(ordered.row_norms()[1:], rows[1:].norm(dim=1))
    # bytes: the cores plus one slot per item in the smallest type holding every TT index (40 here: uint8)
    arrays, description = ordered.export()
    assert ordered.num_slots <= 256 and arrays["slots"].dtype == np.uint8 and arrays["slots"].shape == (37,)
    assert ordered.nbytes() == plain.nbytes() + 37 == array_nbytes(arrays)
    assert ordered.nbytes() == TTTable.bytes_for(37, 16, 4, t=2, dim_factors=(2, 8), ordered=True)
    back = table_from_export(arrays, description).double()
    assert back.ordered and torch.equal(back.slots, slots)
    torch.testing.assert_close(back(ids), ordered(ids))
    # gradients reach the cores through the gathered scores
    ordered.score(queries).sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in ordered.cores)


def test_ordered_table_rejects_bad_orders() -> None:
    table = TTTable(37, 16, rank=4, t=2, ordered=True)
    good = torch.arange(38)
    with pytest.raises(ValueError, match="padding"):
        table.set_slots(torch.cat([torch.ones(1, dtype=torch.long), good[1:] + 1]))
    with pytest.raises(ValueError, match="distinct"):
        table.set_slots(torch.cat([good[:-1], good[1:2]]))
    with pytest.raises(ValueError, match="lie in"):
        table.set_slots(torch.cat([good[:-1], torch.tensor([table.num_slots])]))
    with pytest.raises(ValueError, match="shape"):
        table.set_slots(good[:-1])
    with pytest.raises(ValueError, match="without an item order"):
        TTTable(37, 16, rank=4, t=2).set_slots(good)
    arrays, description = table.export()
    with pytest.raises(ValueError, match="slots"):
        TTTable.from_export({k: v for k, v in arrays.items() if k != "slots"}, description)


def test_slots_take_two_bytes_per_item_beyond_256_slots() -> None:
    table = TTTable(1000, 16, rank=4, t=2, ordered=True)
    arrays, _ = table.export()
    assert arrays["slots"].dtype == np.uint16 and table.nbytes() == TTTable(1000, 16, rank=4, t=2).nbytes() + 2000


def test_for_budget_reserves_the_order_bytes() -> None:
    budget = 20_000
    plain = TTTable.for_budget(1000, 32, budget, t=2)
    ordered = TTTable.for_budget(1000, 32, budget, t=2, ordered=True)
    assert ordered.ordered and ordered.nbytes() <= budget
    assert ordered.rank <= plain.rank
    assert TTTable.bytes_for(1000, 32, ordered.rank + 2, t=2, ordered=True) > budget


def test_clustered_order_fits_clustered_rows_better_than_a_shuffled_one() -> None:
    """The point of the order: on rows with cluster structure in a shuffled id order, a TT fitted with the
    clustered slots reconstructs the rows with a clearly smaller error than one fitted with the ids."""
    rows, _ = clustered_rows(600, 24, 16, seed=1)
    weight = torch.cat([torch.zeros(1, 16), rows])
    kw = {"rank": 8, "t": 2, "dim_factors": (4, 4)}
    torch.manual_seed(0)
    plain = TTTable(600, 16, **kw)
    plain_error = plain.fit_to(weight, steps=300)
    torch.manual_seed(0)
    ordered = TTTable(600, 16, ordered=True, **kw)
    ordered.set_slots(clustered_slots(rows, ordered.item_factors))
    ordered_error = ordered.fit_to(weight, steps=300)
    assert ordered_error < 0.7 * plain_error, (ordered_error, plain_error)


def test_device_scorer_checks_the_order() -> None:
    from pocketrec.device.np_tables import TTScorer

    table = TTTable(37, 16, rank=4, t=2, ordered=True)
    table.set_slots(torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(37) + 2]))
    arrays, description = table.export()
    np.testing.assert_allclose(TTScorer(arrays, description).rows(np.arange(1, 38)),
                               table(torch.arange(1, 38)).detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="not ordered"):
        TTScorer(arrays, {**description, "ordered": False})
    duplicated = {**arrays, "slots": np.concatenate([arrays["slots"][:-1], arrays["slots"][:1]])}
    with pytest.raises(ValueError, match="distinct"):
        TTScorer(duplicated, description)
