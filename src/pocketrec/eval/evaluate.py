"""Full-catalogue evaluation of a recommender on a split, chunked to bound memory."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from pocketrec.data.batching import iterate_batches
from pocketrec.data.dataset import SequenceSplit
from pocketrec.eval.metrics import DEFAULT_KS, count_nonfinite_rows, metric_sums, target_ranks
from pocketrec.train import distributed

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

    Under ``torch.distributed`` every rank must call it: the batches are shared out round-robin and the
    result, on every rank, equals a single process's exactly.
    """
    ks = tuple(ks)
    was_training = model.training
    model.eval()
    chunk = max(1, max_scores // (model.num_items + 1))
    # Under torch.distributed, each rank scores every W-th batch; the per-chunk sums come back in batch
    # order and are added in the order of a single process, so the metrics are the same bit for bit.
    records: list[tuple[int, tuple[list[dict[str, float]], int, int]]] = []
    batches = iterate_batches(split, batch_size, model.config.max_len)
    for index, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
        if not distributed.is_mine(index):
            continue
        mask = batch.target_mask
        queries = model.prefix_queries(batch.inputs)[mask]
        targets = batch.targets[mask]
        sums, nonfinite = [], 0
        for start in range(0, len(targets), chunk):
            scores = model.item_scores(queries[start:start + chunk])
            nonfinite += count_nonfinite_rows(scores[:, 1:])  # column 0 is padding (may be -inf by design)
            sums.append(metric_sums(target_ranks(scores, targets[start:start + chunk]), ks))
        records.append((index, (sums, len(targets), nonfinite)))
        distributed.heartbeat()
    model.train(was_training)
    totals: dict[str, float] = {}
    count = nonfinite = 0
    for sums, examples, bad in distributed.gather_ordered(records):
        for chunk_sums in sums:
            for name, value in chunk_sums.items():
                totals[name] = totals.get(name, 0.0) + value
        count += examples
        nonfinite += bad
    if count == 0:
        raise ValueError("the split has no examples to evaluate")
    if nonfinite:
        warnings.warn(f"{nonfinite:,} of {count:,} examples had NaN or infinite scores (a target with such a "
                      "score counts as a miss): the model's weights are not finite", RuntimeWarning, stacklevel=2)
    return {name: value / count for name, value in totals.items()} | {"examples": float(count)}
