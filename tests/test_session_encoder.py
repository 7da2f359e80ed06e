import numpy as np
import pytest
import torch

from pocketrec.data.batching import iterate_batches, windows
from pocketrec.data.dataset import SequenceSplit
from pocketrec.models import EncoderConfig, SessionRecommender
from pocketrec.tables import DenseTable


@pytest.mark.parametrize("readout", ["attention", "hybrid", "item", "last"])
def test_whole_session_pass_equals_prefix_expansion(readout):
    """One pass over a session gives the same query for every prefix as encoding that prefix alone."""
    torch.manual_seed(0)
    model = SessionRecommender(EncoderConfig(dim=16, max_len=10, readout=readout, layers=2, heads=2),
                               DenseTable(99, 16)).eval()
    rng = np.random.default_rng(1)
    split = SequenceSplit.all_prefixes([rng.integers(1, 100, size=int(rng.integers(2, 11))) for _ in range(12)])
    batch = next(iterate_batches(split, 12, 10))
    queries = model.prefix_queries(batch.inputs)
    for row in range(12):
        for t in range(int((batch.inputs[row] != 0).sum())):
            alone = model.encode(batch.inputs[row:row + 1, :t + 1])
            assert torch.allclose(alone[0], queries[row, t], atol=1e-5)


def test_scores_cover_catalogue_and_never_rank_padding():
    model = SessionRecommender(EncoderConfig(dim=8), DenseTable(40, 8)).eval()
    scores = model.score(torch.tensor([[1, 2, 3], [4, 0, 0]]))
    assert scores.shape == (2, 41)
    assert torch.all(scores.argmax(1) > 0)
    assert torch.all(scores[:, 0] < scores[:, 1:].min())


def test_mismatched_dimensions_are_refused():
    with pytest.raises(ValueError, match="dim=16"):
        SessionRecommender(EncoderConfig(dim=8), DenseTable(10, 16))


def test_too_long_input_is_refused():
    model = SessionRecommender(EncoderConfig(dim=8, max_len=4), DenseTable(10, 8))
    with pytest.raises(ValueError, match="max_len=4"):
        model.encode(torch.ones(1, 5, dtype=torch.long))


def test_windows_give_every_target_exactly_once():
    seq = np.arange(1, 24)
    split = SequenceSplit(sequences=[seq], first_target=np.array([3]))
    wins = windows(split, max_len=5)
    targets = []
    for tokens, first in wins:
        assert len(tokens) <= 6
        targets += list(tokens[first:])
    assert sorted(targets) == list(range(4, 24))
    # the last window's last target sees exactly max_len items of context
    assert list(wins[0][0]) == list(range(18, 24))
