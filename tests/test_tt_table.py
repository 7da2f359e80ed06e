"""TTTable: per-item STT rows against an explicit Kronecker reference, scoring, bytes, export, budgets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pocketrec.tables import TABLE_KINDS, TTTable, array_nbytes, table_from_export
from pocketrec.tables.tt import factorize

# (num_items, dim_factors, rank, t): K = 2 and 3 with t = 1, 2 and 4. Every later J_k / t >= 2, so a
# wrong interleave order (q, s) cannot pass unnoticed.
CONFIGS = [
    (37, (4, 4), 4, 1),
    (37, (2, 8), 4, 2),
    (37, (2, 16), 8, 4),
    (50, (2, 3, 4), 4, 1),
    (50, (2, 4, 4), 4, 2),
    (50, (2, 8, 8), 8, 4),
]
Config = tuple[int, tuple[int, ...], int, int]


def make(num_items: int, dims: tuple[int, ...], rank: int, t: int, seed: int = 0, **kw) -> TTTable:
    torch.manual_seed(seed)
    return TTTable(num_items, math.prod(dims), rank=rank, t=t, dim_factors=dims, init_std=0.1, **kw).double()


def reference_row(table: TTTable, item: int) -> torch.Tensor:
    """Row of ``item`` straight from the definition: M_k[:, r] = vec(M_{k-1} · (G_k[:, i_k, :, r] ⊗ I_t))."""
    digits = []
    rest = item
    for n in reversed(table.item_factors):
        digits.append(rest % n)
        rest //= n
    digits.reverse()
    cores = [c.detach() for c in table.cores]
    state = cores[0][0, digits[0]]  # (J_1, R_1)
    eye = torch.eye(table.t, dtype=state.dtype)
    for core, i in zip(cores[1:], digits[1:], strict=True):
        cols = [state @ torch.kron(core[:, i, :, r], eye) for r in range(core.shape[3])]  # (A, J_k) each
        state = torch.stack(cols, dim=-1).reshape(-1, core.shape[3])  # row index a * J_k + j_k
    assert state.shape == (table.dim, 1)
    return state[:, 0]


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_matches_kronecker_reference(config: Config) -> None:
    table = make(*config)
    ids = torch.arange(1, table.num_items + 1)
    rows = table(ids)
    expected = torch.stack([reference_row(table, int(i)) for i in ids])
    torch.testing.assert_close(rows, expected, rtol=1e-10, atol=1e-12)
    assert rows.abs().max() > 0


def test_two_core_explicit_formula() -> None:
    """docs/methods/odrec.md: e[j1·J2 + k·t + s] = Σ_p G1[i1, j1, p·t + s] · G2[p, i2, k], i1 = id // I2."""
    table = make(37, (4, 4), 6, 2, item_factors=[5, 9])
    g1 = table.cores[0].detach()[0]  # (I1, J1, R)
    g2 = table.cores[1].detach()[..., 0]  # (R/t, I2, J2/t)
    (_, i2_n), (_, j2_n), t, r = table.item_factors, table.dim_factors, table.t, table.rank
    for item in (1, 8, 9, 23, 37):
        i1, i2 = item // i2_n, item % i2_n
        e = torch.zeros(table.dim, dtype=g1.dtype)
        for j1, k, s in itertools.product(range(4), range(j2_n // t), range(t)):
            e[j1 * j2_n + k * t + s] = sum(g1[i1, j1, p * t + s] * g2[p, i2, k] for p in range(r // t))
        torch.testing.assert_close(table(torch.tensor([item]))[0], e)


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_equals_full_weight_rows(config: Config) -> None:
    table = make(*config)
    full = table.full_weight(chunk_size=7)
    assert full.shape == (table.num_rows, table.dim)
    torch.testing.assert_close(full, table.full_weight())
    ids = torch.randint(0, table.num_items + 1, (3, 11))
    ids[0, 0] = 0
    out = table(ids)
    assert out.shape == (3, 11, table.dim)
    expected = full[ids] * (ids != 0).unsqueeze(-1)
    torch.testing.assert_close(out, expected)
    assert torch.all(out[0, 0] == 0)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("grad", [True, False])
def test_score_equals_dense_product(config: Config, grad: bool) -> None:
    table = make(*config)
    table.chunk_size = 8  # several chunks, the last one cut at num_rows (filler rows dropped)
    assert math.prod(table.item_factors) > table.num_rows or table.strides[0] < table.num_rows
    queries = torch.randn(5, table.dim, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        scores = table.score(queries)
    assert scores.shape == (5, table.num_items + 1)
    expected = queries @ table.full_weight().detach().t()
    torch.testing.assert_close(scores[:, 1:], expected[:, 1:])
    assert torch.all(scores[:, 0] == torch.finfo(torch.float64).min)
    assert scores.requires_grad == grad


@pytest.mark.parametrize("config", CONFIGS)
def test_gradient_reaches_every_core_through_score(config: Config) -> None:
    table = make(*config)
    table.chunk_size = 8
    queries = torch.randn(6, table.dim, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, table.num_items + 1, (6,))
    torch.nn.functional.cross_entropy(table.score(queries), targets).backward()
    chunked = [c.grad.clone() for c in table.cores]
    q_grad = queries.grad.clone()
    assert all(g.abs().sum() > 0 for g in chunked)
    # Same loss through an unchunked per-item rebuild: gradients must agree.
    table.zero_grad()
    queries.grad = None
    rows = table(torch.arange(table.num_rows))
    logits = queries @ rows.t()
    logits = torch.cat([torch.full_like(logits[:, :1], torch.finfo(logits.dtype).min), logits[:, 1:]], 1)
    torch.nn.functional.cross_entropy(logits, targets).backward()
    for got, want in zip(chunked, [c.grad for c in table.cores], strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(q_grad, queries.grad)


def test_padding_id_gets_zero_vector_and_no_gradient() -> None:
    table = make(37, (2, 8), 4, 2)
    out = table(torch.tensor([0, 0]))
    assert torch.all(out == 0)
    out.sum().backward()
    assert all(c.grad is None or torch.all(c.grad == 0) for c in table.cores)


@pytest.mark.parametrize(("items", "dims", "t", "params"), [
    ([169, 241], [16, 8], 2, 191_160),
    ([169, 241], [16, 8], 1, 277_920),
    ([13, 13, 241], [8, 4, 4], 2, 67_500),
])
def test_nbytes_matches_methods_formula_and_export(items: list[int], dims: list[int], t: int,
                                                    params: int) -> None:
    table = TTTable(40_727, 128, rank=60, t=t, item_factors=items, dim_factors=dims)
    formula = items[0] * dims[0] * 60 + sum(
        i * j * 60 * (60 if k < len(items) - 1 else 1) // t**2
        for k, (i, j) in enumerate(zip(items, dims, strict=True)) if k > 0)
    assert formula == params
    assert table.nbytes() == 4 * params
    arrays, _ = table.export()
    assert array_nbytes(arrays) == table.nbytes()
    assert TTTable.bytes_for(40_727, 128, 60, t=t, item_factors=items, dim_factors=dims) == 4 * params
    assert TTTable.param_count(40_727, 128, 60, t=t, item_factors=items, dim_factors=dims) == params
    half = TTTable(40_727, 128, rank=60, t=t, item_factors=items, dim_factors=dims, dtype="float16")
    assert half.nbytes() == 2 * params == array_nbytes(half.export()[0])


@pytest.mark.parametrize("config", CONFIGS)
def test_export_round_trip(config: Config) -> None:
    table = make(*config).float()
    arrays, description = table.export()
    assert sorted(arrays) == [f"core_{k}" for k in range(table.num_cores)]
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert description == {"kind": "tt", "num_items": table.num_items, "dim": table.dim,
                           "item_factors": table.item_factors, "dim_factors": table.dim_factors,
                           "rank": table.rank, "t": table.t, "dtype": "float32", "ordered": False}
    assert TABLE_KINDS["tt"] is TTTable
    back = table_from_export(arrays, description)
    assert isinstance(back, TTTable) and back.nbytes() == table.nbytes()
    for a, b in zip(table.cores, back.cores, strict=True):
        assert torch.equal(a, b)
    ids = torch.arange(table.num_rows)
    assert torch.equal(back(ids), table(ids))
    empty = TTTable.from_description(description)
    assert [c.shape for c in empty.cores] == [c.shape for c in table.cores]


def test_float16_export_round_trip() -> None:
    table = TTTable(50, 16, rank=4, num_cores=3, t=2, dtype="float16")
    arrays, description = table.export()
    assert all(a.dtype == np.float16 for a in arrays.values())
    back = TTTable.from_export(arrays, description)
    assert back.stored_dtype == "float16" and back.nbytes() == table.nbytes()
    for a, b in zip(table.cores, back.cores, strict=True):
        assert torch.equal(a.detach().half().float(), b.detach())


def test_float16_table_builds_rows_from_the_exported_cores() -> None:
    # Training, validation and test must see what the device loads: fp16-rounded cores.
    torch.manual_seed(3)
    table = TTTable(50, 16, rank=4, num_cores=3, t=2, dtype="float16", init_std=0.3)
    assert not all(torch.equal(c.detach().half().float(), c.detach()) for c in table.cores)
    device = table_from_export(*table.export())
    ids = torch.arange(1, 51)
    assert torch.equal(table(ids), device(ids))
    torch.testing.assert_close(table.full_weight(), device.full_weight())
    queries = torch.randn(3, 16)
    torch.testing.assert_close(table.score(queries), device.score(queries))
    table.score(queries).sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in table.cores)  # straight through


def test_from_export_rejects_bad_arrays() -> None:
    table = TTTable(37, 16, rank=4, t=2)
    arrays, description = table.export()
    with pytest.raises(ValueError, match="shape"):
        TTTable.from_export({**arrays, "core_1": arrays["core_1"][:, :1]}, description)
    with pytest.raises(ValueError, match="missing"):
        TTTable.from_export({"core_0": arrays["core_0"]}, description)


def test_factorize_is_balanced_and_deterministic() -> None:
    rows = 40_728  # Tmall: 40,727 items + padding
    items2, dims2 = factorize(rows, 128, 2, 2)
    assert (items2, dims2) == ([194, 210], [16, 8])
    # smallest possible sum of two factors covering the rows
    assert sum(items2) == min(a + -(-rows // a) for a in range(1, rows + 1))
    items3, dims3 = factorize(rows, 128, 3, 2)
    assert dims3 == [8, 4, 4] and math.prod(items3) >= rows
    assert factorize(rows, 64, 2, 2)[1] == [8, 8] and factorize(rows, 64, 3, 2)[1] == [4, 4, 4]
    assert factorize(rows, 128, 3, 2) == (items3, dims3)
    # three factors: brute force on a small row count
    small = 1000
    best = min(sum(f) for f in itertools.combinations_with_replacement(range(1, 40), 3)
               if math.prod(f) >= small)
    got, _ = factorize(small, 8, 3, 1)
    assert sum(got) == best and math.prod(got) >= small
    # with a rank, the smallest factor goes to the core with the most parameters per slice (the middle)
    ranked, _ = factorize(rows, 128, 3, 2, rank=60)
    assert sorted(ranked) == sorted(items3) and ranked[1] == min(ranked) and ranked[2] == max(ranked)
    assert factorize(rows, 128, 3, 4)[1] == [8, 4, 4]
    with pytest.raises(ValueError, match="divisible"):
        factorize(rows, 24, 3, 4)  # J_2 and J_3 divisible by 4 needs 16 | dim


@pytest.mark.parametrize("num_cores", [2, 3])
def test_for_budget_picks_largest_rank(num_cores: int) -> None:
    num_items, dim, t = 1000, 32, 2
    for budget in (5_000, 20_000, 80_000):
        table = TTTable.for_budget(num_items, dim, budget, num_cores=num_cores, t=t)
        assert table.rank % t == 0 and table.num_cores == num_cores
        assert table.nbytes() <= budget
        assert table.nbytes() == TTTable.bytes_for(num_items, dim, table.rank, num_cores, t)
        assert TTTable.bytes_for(num_items, dim, table.rank + t, num_cores, t) > budget
    exact = TTTable.bytes_for(num_items, dim, 12, num_cores, t)
    assert TTTable.for_budget(num_items, dim, exact, num_cores=num_cores, t=t).rank == 12
    assert TTTable.for_budget(num_items, dim, 10**9, num_cores=num_cores, t=t, max_rank=13).rank == 12
    half = TTTable.for_budget(num_items, dim, exact, num_cores=num_cores, t=t, dtype="float16")
    assert half.nbytes() <= exact and half.rank > 12
    smallest = TTTable.bytes_for(num_items, dim, t, num_cores, t)
    with pytest.raises(ValueError, match=f"{smallest:,} B"):
        TTTable.for_budget(num_items, dim, smallest - 1, num_cores=num_cores, t=t)


def test_for_budget_with_explicit_factors() -> None:
    """The code's default Tmall student (191,160 params, 747 KB in OD-Rec's code) is what that budget buys."""
    kw = {"t": 2, "item_factors": [169, 241], "dim_factors": [16, 8]}
    table = TTTable.for_budget(40_727, 128, 764_640, **kw)
    assert (table.item_factors, table.rank, table.nbytes()) == ([169, 241], 60, 764_640)
    assert TTTable.for_budget(40_727, 128, 764_639, **kw).rank == 58


@pytest.mark.parametrize("kwargs", [
    {"dim": 15, "rank": 4, "t": 2},  # odd dim, t=2
    {"dim": 16, "rank": 5, "t": 2},  # rank not divisible by t
    {"dim": 16, "rank": 4, "t": 0},
    {"dim": 16, "rank": 0, "t": 1},
    {"dim": 16, "rank": 4, "t": 2, "num_cores": 1},
    {"dim": 16, "rank": 4, "t": 2, "item_factors": [3, 3]},  # 9 < 11 rows
    {"dim": 16, "rank": 4, "t": 2, "dim_factors": [4, 3]},  # product != dim
    {"dim": 16, "rank": 8, "t": 4, "dim_factors": [8, 2]},  # J_2 not divisible by t
    {"dim": 16, "rank": 4, "t": 2, "item_factors": [4, 4, 4], "dim_factors": [4, 4]},
    {"dim": 16, "rank": 4, "t": 2, "num_cores": 3, "dim_factors": [4, 4]},
    {"dim": 16, "rank": 4, "t": 2, "dtype": "int8"},
    {"dim": 16, "rank": 4, "t": 2, "chunk_size": 0},
])
def test_invalid_configs_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TTTable(10, **kwargs)


def test_bad_ids_raise() -> None:
    table = TTTable(10, 16, rank=4, t=2)
    with pytest.raises(IndexError, match="0..10"):
        table(torch.tensor([11]))
    with pytest.raises(IndexError):
        table(torch.tensor([-1]))
    with pytest.raises(TypeError):
        table(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="queries"):
        table.score(torch.zeros(2, 8))


@pytest.mark.parametrize("num_cores", [2, 3])
def test_init_gives_dense_like_row_scale(num_cores: int) -> None:
    torch.manual_seed(0)
    for init_std in (0.02, 0.1):
        table = TTTable(3000, 64, rank=16, num_cores=num_cores, t=2, init_std=init_std)
        std = float(table.full_weight().detach().std())
        assert 0.6 * init_std < std < 1.6 * init_std


def test_fit_to_warm_starts_from_a_dense_table() -> None:
    teacher = make(60, (2, 4), 4, 2, seed=1).float()
    target = teacher.full_weight().detach()
    torch.manual_seed(2)
    student = TTTable(60, 8, rank=4, t=2, dim_factors=[2, 4], init_std=0.1)
    with torch.no_grad():
        before = float((student.full_weight()[1:] - target[1:]).pow(2).sum() / target[1:].pow(2).sum())
    after = student.fit_to(target, steps=200, lr=0.03, seed=0)
    assert after < 0.3 * before and after < 0.5
    with pytest.raises(ValueError, match="weight"):
        student.fit_to(target[1:], steps=1)
