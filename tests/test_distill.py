"""The distillation loss and the hot/cold recombination (OD-Rec, docs/methods/odrec.md) on synthetic data."""

import numpy as np
import pytest
import torch

from helpers import synthetic_dataset, tiny_teacher_config
from pocketrec.data.batching import Batch, iterate_batches
from pocketrec.models import EncoderConfig, SessionRecommender
from pocketrec.tables.tt import TTTable
from pocketrec.train.distill import DistillConfig, distillation_loss, prepare_student
from pocketrec.train.recombination import (
    COLD_ONLY,
    EXCLUDED,
    HOT_ONLY,
    MIXED,
    hot_item_mask,
    select_positions,
    split_prefixes,
)
from pocketrec.train.teacher import train_teacher

ENC = EncoderConfig(dim=16, max_len=10, dropout=0.1, attn_dropout=0.1)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def teacher(data):
    cfg = tiny_teacher_config(epochs=2)
    model, _ = train_teacher(data, cfg)
    return model.eval()


def make_student(teacher, config=None):
    torch.manual_seed(0)
    student = SessionRecommender(ENC, TTTable(teacher.num_items, 16, rank=4, num_cores=3, t=2))
    prepare_student(student, teacher, config or DistillConfig())
    return student


def real_batch(data, size=32):
    return next(iter(iterate_batches(data.train, size, ENC.max_len)))


# ------------------------------------------------------------------------------------------ hot items
def test_hot_mask_takes_top_fraction_of_distinct_training_items(data):
    counts = data.item_counts()
    mask = hot_item_mask(counts, 0.2)
    distinct = int((counts[1:] > 0).sum())
    assert mask.shape == (data.num_items + 1,) and mask.dtype == torch.bool
    assert int(mask.sum()) == int(0.2 * distinct)
    assert not mask[0]
    assert counts[mask.numpy()].min() >= counts[1:][~mask[1:].numpy()].max()


def test_hot_mask_ties_unseen_items_and_edges():
    counts = np.array([99, 5, 5, 5, 0, 1, 1, 1, 1, 1, 1])  # index 0 (padding) is ignored
    mask = hot_item_mask(counts, 0.2)  # 9 distinct items -> 1 hot; the tie 1/2/3 goes to the smaller id
    assert mask.tolist() == [False, True] + [False] * 9
    assert hot_item_mask(counts, 0.5).nonzero().flatten().tolist() == [1, 2, 3, 5]
    assert not hot_item_mask(counts, 0.0).any()
    assert hot_item_mask(counts, 1.0).sum() == 9 and not hot_item_mask(counts, 1.0)[4]
    with pytest.raises(ValueError, match="hot_ratio"):
        hot_item_mask(counts, 1.5)


# ----------------------------------------------------------------------------------- recombination
def test_split_partitions_mixed_hot_only_cold_only_prefixes():
    hot = torch.zeros(10, dtype=torch.bool)
    hot[[1, 2]] = True  # items 1, 2 hot; 3..9 cold
    inputs = torch.tensor([[1, 5, 2, 0],   # mixed (hot 1, 2; cold 5)
                           [2, 1, 0, 0],   # hot-only
                           [5, 6, 7, 0],   # cold-only
                           [3, 0, 0, 0],   # one item: excluded
                           [4, 4, 1, 9]])  # cold-only for the prefix of 2, mixed for 3 and 4
    targets = torch.tensor([[5, 2, 8, 0], [1, 3, 0, 0], [6, 7, 8, 0], [4, 0, 0, 0], [4, 1, 9, 2]])
    batch = Batch(inputs, targets)

    rows, cols = select_positions(batch.target_mask, "last")
    assert rows.tolist() == [0, 1, 2, 3, 4] and cols.tolist() == [2, 1, 2, 0, 3]
    split = split_prefixes(inputs, rows, cols, hot)
    assert split.kind.tolist() == [MIXED, HOT_ONLY, COLD_ONLY, EXCLUDED, MIXED]
    assert split.items[0].tolist() == [1, 5, 2, 0]
    assert split.hot[0].tolist() == [True, False, True, False]
    assert split.cold[0].tolist() == [False, True, False, False]
    assert split.hot[4].tolist() == [False, False, True, False]
    assert split.cold[4].tolist() == [True, True, False, True]
    # hot and cold never overlap and cover exactly the prefix's items
    assert not (split.hot & split.cold).any()
    assert torch.equal(split.hot | split.cold, split.items != 0)

    rows, cols = select_positions(batch.target_mask, "all")
    split = split_prefixes(inputs, rows, cols, hot)
    kinds = {(r, c): k for r, c, k in zip(rows.tolist(), cols.tolist(), split.kind.tolist(), strict=True)}
    assert kinds[(0, 0)] == EXCLUDED and kinds[(0, 1)] == MIXED
    assert kinds[(4, 1)] == COLD_ONLY and kinds[(4, 2)] == MIXED
    assert split.items[rows.tolist().index(4) + 1].tolist() == [4, 4, 0, 0]  # prefix (4, 1) is masked after k


# -------------------------------------------------------------------------------------------- terms
def _grads(term, named):
    params = [p for _, p in named]
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return {name for (name, _), g in zip(named, grads, strict=True) if g is not None and g.abs().sum() > 0}


def test_each_term_is_finite_and_reaches_the_right_parameters(data, teacher):
    cfg = DistillConfig(ssl_positions="all")
    student = make_student(teacher, cfg)
    loss_fn = distillation_loss(student, teacher, hot_item_mask(data.item_counts(), 0.2), cfg)
    student.train()
    batch = real_batch(data)
    terms = loss_fn.terms(batch)
    assert set(terms) == {"rec", "kd", "cl", "pred"}
    named = ([(f"student.{n}", p) for n, p in student.named_parameters()]
             + [(f"heads.{n}", p) for n, p in loss_fn.heads.named_parameters()])
    for name, term in terms.items():
        assert torch.isfinite(term), name
        reached = _grads(term, named)
        assert any(n.startswith("student.table.cores") for n in reached), name
        if name in ("rec", "kd"):
            assert any(n.startswith("student.layers") for n in reached), name
            assert not any(n.startswith("heads.") for n in reached), name
        if name == "cl":
            for head in ("student_hot", "student_cold", "teacher_hot", "teacher_cold", "w_a", "w_b"):
                assert any(n.startswith(f"heads.{head}.") for n in reached), head
            assert any(n.startswith("student.layers") for n in reached)  # via hot-only/cold-only swaps
        if name == "pred":
            for head in ("teacher_hot", "teacher_cold", "student_hot", "w_c", "w_d"):
                assert any(n.startswith(f"heads.{head}.") for n in reached), head
    # The teacher is frozen: nothing flows into its encoder or table.
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.zero_grad(set_to_none=True)  # gradients left over from training the teacher
    loss, parts = loss_fn(batch)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert set(parts) == {"rec", "kd", "cl", "pred"} and all(np.isfinite(v) for v in parts.values())
    ids = {id(p) for g in loss_fn.param_groups() for p in g["params"]}
    assert all(id(p) in ids for p in loss_fn.heads.parameters())
    assert all(id(p) in ids for p in student.parameters())
    assert not any(id(p) in ids for p in teacher.parameters())


def test_switching_terms_off_removes_them(data, teacher):
    hot = hot_item_mask(data.item_counts(), 0.2)
    batch = real_batch(data)
    for off in ("rec", "kd", "cl", "pred"):
        cfg = DistillConfig(**{f"use_{off}": False})
        loss, parts = distillation_loss(make_student(teacher, cfg), teacher, hot, cfg)(batch)
        assert off not in parts and len(parts) == 3 and torch.isfinite(loss)
    cfg = DistillConfig(use_cl=False, use_pred=False)
    loss_fn = distillation_loss(make_student(teacher, cfg), teacher, hot, cfg)
    assert set(loss_fn(batch)[1]) == {"rec", "kd"}
    ids = {id(p) for g in loss_fn.param_groups() for p in g["params"]}
    assert not any(id(p) in ids for p in loss_fn.heads.parameters())
    # λ = 1 leaves no CE; weights are applied as documented
    cfg = DistillConfig(kd_weight=1.0)
    loss_fn = distillation_loss(make_student(teacher, cfg), teacher, hot, cfg)
    loss, parts = loss_fn(batch)
    assert "rec" not in parts
    assert loss.item() == pytest.approx(parts["kd"] + 0.2 * parts["cl"] + 0.001 * parts["pred"], rel=1e-4)
    with pytest.raises(ValueError, match="switched off"):
        DistillConfig(use_rec=False, use_kd=False, use_cl=False, use_pred=False)


def test_bidirectional_infonce_and_encoder_init(data, teacher):
    hot = hot_item_mask(data.item_counts(), 0.2)
    batch = real_batch(data)
    one = DistillConfig(use_rec=False, use_kd=False, use_pred=False)
    two = DistillConfig(use_rec=False, use_kd=False, use_pred=False, bidirectional=True)
    a = distillation_loss(make_student(teacher, one), teacher, hot, one)
    b = distillation_loss(make_student(teacher, two), teacher, hot, two)
    b.heads.load_state_dict(a.heads.state_dict())
    a.eval(), b.eval()
    ca, cb = a.terms(batch)["cl"], b.terms(batch)["cl"]
    assert torch.isfinite(cb) and not torch.isclose(ca, cb)
    student = make_student(teacher)
    assert torch.equal(student.layers[0].qkv.weight, teacher.layers[0].qkv.weight)
    fresh = make_student(teacher, DistillConfig(init_student_encoder_from_teacher=False))
    assert not torch.equal(fresh.layers[0].qkv.weight, teacher.layers[0].qkv.weight)


def test_mismatched_student_is_refused(data, teacher):
    small = SessionRecommender(EncoderConfig(dim=8, max_len=10), TTTable(teacher.num_items, 8, rank=2))
    with pytest.raises(ValueError, match="dim=8"):
        distillation_loss(small, teacher, hot_item_mask(data.item_counts()), DistillConfig())
    with pytest.raises(ValueError, match="hot_mask"):
        distillation_loss(make_student(teacher), teacher, torch.zeros(5, dtype=torch.bool), DistillConfig())


def test_encoder_lr_freezes_or_slows_the_students_encoder(data, teacher):
    hot = hot_item_mask(data.item_counts(), 0.2)
    batch = real_batch(data)
    cfg = DistillConfig(encoder_lr=0.0)
    student = make_student(teacher, cfg)
    loss_fn = distillation_loss(student, teacher, hot, cfg)
    encoder_before = student.layers[0].qkv.weight.detach().clone()
    table_before = [p.detach().clone() for p in student.table.parameters()]
    optimizer = torch.optim.Adam(loss_fn.param_groups(), lr=1e-2)
    student.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(batch)[0].backward()
        optimizer.step()
    assert torch.equal(student.layers[0].qkv.weight, encoder_before)
    assert all(not torch.equal(p, q) for p, q in zip(student.table.parameters(), table_before, strict=True))

    cfg = DistillConfig(encoder_lr=1e-4)
    student = make_student(teacher, cfg)
    groups = distillation_loss(student, teacher, hot, cfg).param_groups()
    slow = [g for g in groups if g.get("lr") == 1e-4]
    assert len(slow) == 1
    slow_ids = {id(p) for p in slow[0]["params"]}
    assert id(student.layers[0].qkv.weight) in slow_ids and id(student.positions.weight) in slow_ids
    assert not any(id(p) in slow_ids for p in student.table.parameters())
    assert all(any(id(p) in {id(q) for q in g["params"]} for g in groups) for p in student.parameters())
    with pytest.raises(ValueError, match="encoder_lr"):
        DistillConfig(encoder_lr=-1.0)
