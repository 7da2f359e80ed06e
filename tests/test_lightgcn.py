import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pocketrec.backbones.bpr import BPRBatches
from pocketrec.backbones.lightgcn import (
    LightGCN,
    LightGCNConfig,
    bpr_loss,
    normalized_adjacency,
)
from pocketrec.eval.cf_metrics import evaluate_cf
from pocketrec.tables.base import mask_padding_column
from pocketrec.tables.dense import DenseTable


def csr(num_users: int, num_items: int, pairs) -> sp.csr_matrix:
    """Binary ``(num_users + 1, num_items + 1)`` interactions from ``(user, item)`` pairs (ids from 1)."""
    pairs = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    data = np.ones(len(pairs), dtype=np.float32)
    return sp.csr_matrix((data, (pairs[:, 0], pairs[:, 1])), shape=(num_users + 1, num_items + 1))


def fixed_scores(table: torch.Tensor):
    """``score_users`` of a fixed ``(num_users + 1, num_items + 1)`` score table."""
    return lambda users: table[users].clone()


def dcg(ranks) -> float:
    return sum(1 / math.log2(r + 2) for r in ranks)


# --------------------------------------------------------------------------------------------- metrics


def test_cf_metrics_hand_computed():
    # 3 users, 6 items, nothing excluded. User 1 ranks 6 > 5 > ... > 1, truth {5, 2}; user 2 ranks
    # 1 > 2 > ... > 6, truth {1}; user 3 ranks like user 2, truth {1, 2, 3} (more truth items than K=2).
    scores = torch.zeros(4, 7)
    scores[1, 1:] = torch.tensor([1.0, 2, 3, 4, 5, 6])
    scores[2, 1:] = torch.tensor([6.0, 5, 4, 3, 2, 1])
    scores[3] = scores[2]
    truth = csr(3, 6, [(1, 5), (1, 2), (2, 1), (3, 1), (3, 2), (3, 3)])
    m = evaluate_cf(fixed_scores(scores), truth, None, ks=(1, 2, 5))
    # 0-based ranks of the truth items: user 1 -> 1 and 4; user 2 -> 0; user 3 -> 0, 1, 2.
    assert m["users"] == 3
    assert m["recall@1"] == pytest.approx((0 / 2 + 1 / 1 + 1 / 3) / 3)
    assert m["recall@2"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)  # hits / |truth|, not / min(|truth|, K)
    assert m["recall@5"] == pytest.approx((2 / 2 + 1 + 3 / 3) / 3)
    assert m["precision@1"] == pytest.approx((0 + 1 + 1) / 3)
    assert m["precision@2"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 2) / 3)
    assert m["precision@5"] == pytest.approx((2 / 5 + 1 / 5 + 3 / 5) / 3)
    assert m["ndcg@1"] == pytest.approx((0 + 1 + 1) / 3)
    assert m["ndcg@2"] == pytest.approx((dcg([1]) / dcg([0, 1]) + 1 + 1) / 3)
    assert m["ndcg@5"] == pytest.approx((dcg([1, 4]) / dcg([0, 1]) + 1 + 1) / 3)


def test_cf_metrics_exclude_seen_items_and_padding():
    # User 1's top items 6 and 5 are training items: excluded, the truth item 4 moves to rank 0.
    scores = torch.zeros(2, 7)
    scores[1, 1:] = torch.tensor([1.0, 2, 3, 4, 5, 6])
    scores[1, 0] = 100.0  # the padding column is never ranked, whatever it holds
    truth = csr(1, 6, [(1, 4)])
    seen = csr(1, 6, [(1, 6), (1, 5)])
    assert evaluate_cf(fixed_scores(scores), truth, None, ks=(1, 3))["recall@1"] == 0.0
    assert evaluate_cf(fixed_scores(scores), truth, None, ks=(1, 3))["recall@3"] == 1.0
    m = evaluate_cf(fixed_scores(scores), truth, seen, ks=(1, 3))
    assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0 and m["precision@3"] == pytest.approx(1 / 3)


def test_cf_metrics_skip_users_without_truth_and_ties_count_against_truth():
    scores = torch.zeros(4, 5)  # a constant model: every item tied
    truth = csr(3, 4, [(1, 2), (3, 1), (3, 4)])
    m = evaluate_cf(fixed_scores(scores), truth, None, ks=(1, 2, 3))
    assert m["users"] == 2  # user 2 has no truth items
    assert all(m[f"{name}@{k}"] == 0.0 for name in ("recall", "ndcg", "precision") for k in (1, 2, 3))
    # with K covering the whole catalogue, every item is retrieved even pessimistically
    assert evaluate_cf(fixed_scores(scores), truth, None, ks=(4,))["recall@4"] == 1.0
    # item 2 ties with item 3 for 2nd place: pessimistically it is 3rd (rank 2), whichever order topk gives
    scores = torch.tensor([[0.0, 5, 4, 4, 1], [0.0, 5, 4, 4, 1]])
    for item in (2, 3):
        m = evaluate_cf(fixed_scores(scores), csr(1, 4, [(1, item)]), None, ks=(2, 3))
        assert m["recall@2"] == 0.0 and m["recall@3"] == 1.0
        assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))


def test_cf_metrics_chunking_does_not_change_the_result():
    rng = np.random.default_rng(0)
    num_users, num_items = 37, 50
    scores = torch.from_numpy(rng.normal(size=(num_users + 1, num_items + 1)).astype(np.float32))
    scores[:, 5] = scores[:, 6]  # some ties
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(1, num_users + 1, 300),
                                              rng.integers(1, num_items + 1, 300), strict=True)}
    pairs = sorted(pairs)
    truth = csr(num_users, num_items, pairs[::3])
    seen = csr(num_users, num_items, [p for k, p in enumerate(pairs) if k % 3])
    before = scores.clone()
    whole = evaluate_cf(fixed_scores(scores), truth, seen, ks=(5, 10, 20))
    chunked = evaluate_cf(fixed_scores(scores), truth, seen, ks=(5, 10, 20), user_batch=4)
    sizes = []

    def recorded(users):
        sizes.append(len(users))
        return scores[users].clone()

    tiny = evaluate_cf(recorded, truth, seen, ks=(5, 10, 20), max_scores=3 * (num_items + 1))
    assert max(sizes) == 3 and sum(sizes) == whole["users"]
    assert whole["users"] == chunked["users"] == tiny["users"] > 20
    for name, value in whole.items():
        assert chunked[name] == pytest.approx(value) and tiny[name] == pytest.approx(value)
    assert torch.equal(scores, before)  # the caller's scores are never modified


def test_cf_metrics_nan_is_never_a_hit():
    scores = torch.zeros(3, 5)
    scores[1, 1:] = torch.tensor([float("nan"), 1.0, float("inf"), 0.5])
    scores[2, 1:] = float("nan")
    truth = csr(2, 4, [(1, 1), (1, 3), (2, 2)])
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        m = evaluate_cf(fixed_scores(scores), truth, None, ks=(1, 2, 4))
    # user 1: the NaN item 1 and the +inf item 3 are misses even though K=4 covers the whole catalogue
    assert m["recall@4"] == 0.0 and m["recall@1"] == 0.0 and m["ndcg@4"] == 0.0


def test_cf_metrics_errors():
    truth = csr(2, 3, [(1, 1)])
    with pytest.raises(ValueError, match="no user"):
        evaluate_cf(fixed_scores(torch.zeros(3, 4)), csr(2, 3, []), None)
    with pytest.raises(ValueError, match="shape"):
        evaluate_cf(fixed_scores(torch.zeros(3, 5)), truth, None)
    with pytest.raises(ValueError, match="exclude"):
        evaluate_cf(fixed_scores(torch.zeros(3, 4)), truth, csr(3, 3, []))


# --------------------------------------------------------------------------------------------- graph


def test_normalized_adjacency_is_symmetric_and_normalised():
    num_users, num_items = 3, 4
    train = csr(num_users, num_items, [(1, 1), (1, 2), (2, 2), (3, 2), (3, 3), (3, 4), (1, 1)])  # a duplicate
    adj = normalized_adjacency(train).to_dense().double()
    n = num_users + 1 + num_items + 1
    assert adj.shape == (n, n)
    assert torch.allclose(adj, adj.t())
    a = torch.zeros(n, n, dtype=torch.float64)
    dense = torch.from_numpy(train.toarray()).double().clamp(max=1)
    a[:num_users + 1, num_users + 1:] = dense
    a[num_users + 1:, :num_users + 1] = dense.t()
    degree = a.sum(1)
    assert torch.allclose(adj, a / torch.sqrt(torch.outer(degree, degree)).clamp_min(1e-30))
    # D^-1/2 A D^-1/2 maps sqrt(degree) to itself: the rows of D^-1/2 Â D^1/2 = D^-1 A sum to 1 (or 0: padding)
    assert torch.allclose(adj @ degree.sqrt(), degree.sqrt())
    # entry (u, i) = 1 / sqrt(deg u * deg i): user 3 (degree 3) and item 2 (degree 3)
    assert adj[3, num_users + 1 + 2].item() == pytest.approx(1 / 3)
    # padding nodes are isolated, without NaN
    for pad in (0, num_users + 1):
        assert adj[pad].abs().sum() == 0 and adj[:, pad].abs().sum() == 0
    assert torch.isfinite(adj).all()


def test_graph_rejects_padding_entries():
    with pytest.raises(ValueError, match="padding"):
        normalized_adjacency(csr(2, 2, [(1, 0)]))
    with pytest.raises(ValueError, match="padding"):
        normalized_adjacency(csr(2, 2, [(0, 1)]))


def test_propagation_matches_the_dense_formula():
    train = csr(3, 4, [(1, 1), (1, 2), (2, 2), (3, 3), (3, 4)])
    for combine in ("mean", "concat"):
        config = LightGCNConfig(dim=5, layers=2, combine=combine)
        model = LightGCN(3, 4, config, graph=train)
        adj = normalized_adjacency(train).to_dense()
        ego = torch.cat([model.user_embedding.weight, model.table.all_rows()])
        layers = [ego, adj @ ego, adj @ adj @ ego]
        final = torch.stack(layers).mean(0) if combine == "mean" else torch.cat(layers, 1)
        users, items = model.propagate()
        assert users.shape == (4, config.out_dim) and items.shape == (5, config.out_dim)
        assert torch.allclose(torch.cat([users, items]), final, atol=1e-6)
    assert LightGCNConfig(dim=5, layers=2, combine="concat").out_dim == 15


def test_sparse_product_gradient():
    # the symmetric product's custom backward against autograd's dense one
    train = csr(3, 4, [(1, 1), (1, 2), (2, 2), (3, 3), (3, 4)])
    model = LightGCN(3, 4, LightGCNConfig(dim=3, layers=3), graph=train)
    users, items = model.propagate()
    (users.sum() + (items ** 2).sum()).backward()
    grads = [model.user_embedding.weight.grad.clone(), model.table.weight.grad.clone()]
    adj = normalized_adjacency(train).to_dense()
    weights = [model.user_embedding.weight.detach().clone().requires_grad_(),
               model.table.weight.detach().clone().requires_grad_()]
    x = torch.cat(weights)
    final = (x + adj @ x + adj @ adj @ x + adj @ adj @ adj @ x) / 4
    (final[:4].sum() + (final[4:] ** 2).sum()).backward()
    for got, want in zip(grads, [w.grad for w in weights], strict=True):
        assert torch.allclose(got, want, atol=1e-6)


# --------------------------------------------------------------------------------------------- model


def test_config_validation():
    for bad in ({"dim": 0}, {"layers": -1}, {"combine": "sum"}, {"l2": -1.0}, {"node_dropout": 1.0},
                {"init_std": 0.0}):
        with pytest.raises(ValueError):
            LightGCNConfig(**bad)
    with pytest.raises(ValueError, match="width"):
        LightGCN(3, 4, LightGCNConfig(dim=8), table=DenseTable(4, 16))
    with pytest.raises(ValueError, match="shape"):
        LightGCN(3, 4, graph=csr(3, 5, [(1, 1)]))
    with pytest.raises(RuntimeError, match="no graph"):
        LightGCN(3, 4).propagate()


def test_scores_cache_and_device_table():
    train = csr(4, 6, [(1, 1), (1, 2), (2, 2), (2, 3), (3, 4), (4, 5), (4, 6)])
    model = LightGCN(4, 6, LightGCNConfig(dim=4, layers=2, combine="concat"), graph=train)
    users = torch.tensor([1, 2, 4])
    model.eval()
    with torch.no_grad():
        scores = model.score_users(users)
    assert scores.shape == (3, 7) and scores[:, 0].max() == torch.finfo(scores.dtype).min
    user_vectors, item_vectors = model.propagate()
    expected = mask_padding_column(user_vectors[users] @ item_vectors.t())
    assert torch.allclose(scores, expected, atol=1e-6)
    # what a device stores ranks the same
    table = model.propagated_item_table()
    assert table.dim == 12 and table.num_items == 6
    device_scores = table.score(model.propagated_user_vectors()[users])
    assert torch.allclose(device_scores, scores, atol=1e-6)
    # the cache: propagated once, reused, refreshed after a weight changes
    first = model.propagated()[1]
    assert model.propagated()[1] is first
    with torch.no_grad():
        model.user_embedding.weight.add_(1.0)
    assert model.propagated()[1] is not first
    assert not torch.allclose(model.score_users(users), scores)
    model.train()
    assert model._cache is None


def test_node_dropout_only_in_training():
    train = csr(4, 6, [(1, 1), (1, 2), (2, 2), (2, 3), (3, 4), (4, 5), (4, 6)])
    model = LightGCN(4, 6, LightGCNConfig(dim=4, layers=2, node_dropout=0.5), graph=train)
    torch.manual_seed(0)
    a, b = model.propagate()[1], model.propagate()[1]
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.allclose(model.propagate()[1], model.propagate()[1])


def test_bpr_negatives_are_never_positives_and_cover_every_interaction():
    rng = np.random.default_rng(1)
    num_users, num_items = 30, 12
    # dense users (all but one or two items) force many redraws and the complement fallback
    pairs = {(u, i) for u in range(1, num_users + 1) for i in range(1, num_items + 1)
             if rng.random() < (0.95 if u <= 5 else 0.3)}
    pairs |= {(u, 1) for u in range(1, num_users + 1)}
    pairs -= {(u, num_items) for u in range(1, 6)}  # nobody has every item
    train = csr(num_users, num_items, sorted(pairs))
    source = BPRBatches(train, batch_size=16, max_rounds=2)
    dense = train.toarray() > 0
    for seed in (0, 1):
        triples = torch.cat(list(source.batches(seed))).numpy()
        assert len(triples) == train.nnz and source.num_batches() == -(-train.nnz // 16)
        assert sorted(map(tuple, triples[:, :2])) == sorted(pairs)  # every interaction once
        assert dense[triples[:, 0], triples[:, 1]].all()
        assert not dense[triples[:, 0], triples[:, 2]].any()
        assert (triples[:, 2] >= 1).all() and (triples[:, 2] <= num_items).all()
    assert torch.equal(torch.cat(list(source.batches(3))), torch.cat(list(source.batches(3))))
    with pytest.raises(ValueError, match="every item"):
        BPRBatches(csr(2, 3, [(1, 1), (1, 2), (1, 3), (2, 1)]))


def test_bpr_loss_parts():
    train = csr(3, 4, [(1, 1), (1, 2), (2, 2), (3, 3), (3, 4)])
    config = LightGCNConfig(dim=4, layers=1, l2=0.5)
    model = LightGCN(3, 4, config, graph=train)
    batch = torch.tensor([[1, 1, 3], [3, 4, 2]])
    loss, parts = bpr_loss(model)(batch)
    with torch.no_grad():
        users, items = model.propagate()
    margin = (users[[1, 3]] * (items[[1, 4]] - items[[3, 2]])).sum(1)
    assert parts["bpr"] == pytest.approx(float(-torch.log(torch.sigmoid(margin)).mean()), rel=1e-5)
    ego_u, ego_i = model.user_embedding.weight.detach(), model.table.weight.detach()
    l2 = 0.5 * (ego_u[[1, 3]].pow(2).sum() + ego_i[[1, 4]].pow(2).sum() + ego_i[[3, 2]].pow(2).sum()) / 2
    assert parts["l2"] == pytest.approx(0.5 * float(l2), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(parts["bpr"] + parts["l2"], rel=1e-6)


# --------------------------------------------------------------------------------------------- training


def clustered_interactions(num_users=200, num_items=100, clusters=4, per_user=12, seed=0):
    """Users of cluster c interact with items of cluster c (10% noise); 3 of each user's items held out."""
    rng = np.random.default_rng(seed)
    size = num_items // clusters
    train, test = [], []
    for user in range(1, num_users + 1):
        cluster = user % clusters
        own = rng.choice(np.arange(cluster * size + 1, (cluster + 1) * size + 1), per_user, replace=False)
        noise = rng.random(per_user) < 0.1
        own[noise] = rng.choice(np.setdiff1d(np.arange(1, num_items + 1), own), int(noise.sum()), replace=False)
        train += [(user, int(i)) for i in own[3:]]
        test += [(user, int(i)) for i in own[:3]]
    return csr(num_users, num_items, train), csr(num_users, num_items, test)


@pytest.mark.parametrize("combine", ["mean", "concat"])
def test_bpr_training_learns_the_clusters(combine):
    torch.manual_seed(0)
    train, test = clustered_interactions()
    config = LightGCNConfig(dim=16, layers=2, combine=combine, l2=1e-4)
    model = LightGCN(200, 100, config, graph=train)
    random_scores = torch.from_numpy(np.random.default_rng(0).random((201, 101)).astype(np.float32))
    chance = evaluate_cf(fixed_scores(random_scores), test, train, ks=(20,))["recall@20"]
    untrained = evaluate_cf(model.score_users, test, train, ks=(20,))["recall@20"]
    source = BPRBatches(train, batch_size=256)
    loss_fn = bpr_loss(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for epoch in range(40):  # 7 batches an epoch: 280 steps
        for batch in source.batches(epoch):
            loss, _ = loss_fn(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained = evaluate_cf(model.score_users, test, train, ks=(20,))
    print(f"{combine}: recall@20 chance {chance:.3f}  untrained {untrained:.3f}  trained {trained['recall@20']:.3f}")
    assert np.mean(losses[-7:]) < 0.5 * np.mean(losses[:7])
    # in-cluster held-out items are ~15 of ~91 candidates: chance ~0.22, a model that learned the clusters ~0.9
    assert chance < 0.35
    assert trained["recall@20"] > chance + 0.4
    assert trained["recall@20"] > untrained + 0.1
    if combine == "concat":
        assert model.propagated_item_table().dim == 16 * 3
        assert model.propagated_user_vectors().shape == (201, 48)
