import math

import pytest
import torch

from pocketrec.eval.metrics import metrics_from_ranks, target_ranks
from pocketrec.tables.base import mask_padding_column


def test_ranks_hand_computed():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.3],
                           [0.0, 0.2, 0.2, 0.2, 0.7]])
    mask_padding_column(scores)
    # row 0: target 3 (0.5) has one item above -> rank 0-based 1
    # row 1: target 2 ties with items 1 and 3 and is below item 4 -> ties count against it: rank 3
    ranks = target_ranks(scores, torch.tensor([3, 2]))
    assert ranks.tolist() == [1, 3]


def test_padding_never_outranks_a_real_item():
    scores = mask_padding_column(torch.full((1, 4), -1e30))
    assert target_ranks(scores, torch.tensor([1])).item() == 2  # ties with 2 and 3, never with padding


def test_metrics_hand_computed():
    ranks = torch.tensor([0, 1, 4, 9, 25])
    m = metrics_from_ranks(ranks, ks=(5, 10, 20))
    assert m["recall@5"] == pytest.approx(3 / 5)
    assert m["recall@10"] == pytest.approx(4 / 5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 5)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 5)
    expected_ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 5
    assert m["ndcg@10"] == pytest.approx(expected_ndcg10)


def test_no_examples_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        metrics_from_ranks(torch.tensor([], dtype=torch.long))
