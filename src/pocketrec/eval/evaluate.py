"""Full-catalogue evaluation of a recommender on a split, chunked to bound memory."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from pocketrec.data.batching import iterate_batches
from pocketrec.data.dataset import SequenceSplit
from pocketrec.eval.metrics import DEFAULT_KS, count_nonfinite_rows, metric_sums, target_ranks

#: Upper bound on the number of scores held at once (queries x catalogue); 2**25 floats = 128 MiB.
MAX_SCORES = 2**25


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: SequenceSplit, ks: Iterable[int] = DEFAULT_KS,
             batch_size: int = 256, max_scores: int = MAX_SCORES, progress: bool = False,
             desc: str = "eval") -> dict[str, float]:
    """Recall/MRR/NDCG@K over every example of ``split``, ranking the whole catalogue.

    ``model`` needs ``prefix_queries(inputs)``, ``item_scores(queries)``, ``num_items`` and
    ``config.max_len`` (a :class:`~pocketrec.models.SessionRecommender`). Each encoder pass covers
    whole sessions; the scored queries are then processed in chunks of at most
    ``max_scores // (num_items + 1)`` so that a 1M-item catalogue still fits in memory.
    """
    ks = tuple(ks)
    was_training = model.training
    model.eval()
    chunk = max(1, max_scores // (model.num_items + 1))
    totals: dict[str, float] = {}
    count = nonfinite = 0
    batches = iterate_batches(split, batch_size, model.config.max_len)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        mask = batch.target_mask
        queries = model.prefix_queries(batch.inputs)[mask]
        targets = batch.targets[mask]
        for start in range(0, len(targets), chunk):
            scores = model.item_scores(queries[start:start + chunk])
            nonfinite += count_nonfinite_rows(scores[:, 1:])  # column 0 is padding (may be -inf by design)
            sums = metric_sums(target_ranks(scores, targets[start:start + chunk]), ks)
            for name, value in sums.items():
                totals[name] = totals.get(name, 0.0) + value
        count += len(targets)
    model.train(was_training)
    if count == 0:
        raise ValueError("the split has no examples to evaluate")
    if nonfinite:
        warnings.warn(f"{nonfinite:,} of {count:,} examples had NaN or infinite scores (a target with such a "
                      "score counts as a miss): the model's weights are not finite", RuntimeWarning, stacklevel=2)
    return {name: value / count for name, value in totals.items()} | {"examples": float(count)}
