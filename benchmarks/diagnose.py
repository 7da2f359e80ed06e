"""Where do compressed students lose Recall@20? Test Recall@20 by the target's training frequency.

For each checkpoint (teacher first, then students), ranks every test target over the whole catalogue and
prints Recall@20 (%) per bucket of how often the target item occurs as an input in the training prefixes
(:meth:`Dataset.item_counts`), plus the overall Recall@20 and MRR@20::

    python benchmarks/diagnose.py --dataset tmall runs/bench-norm/teacher-tmall/best \\
        runs/bench-tmall/eodrec-30x/best runs/bench-tmall/odrec-30x/best runs/bench-tmall/kmeans-30x/best
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import print_table

BUCKETS = (0, 1, 5, 20, 100)  # lower edges: [0, 1), [1, 5), [5, 20), [20, 100), [100, inf)


@torch.no_grad()
def test_ranks(model, split, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank and target id of every test example, ranking the whole catalogue a chunk at a time."""
    from pocketrec.data.batching import iterate_batches
    from pocketrec.eval.metrics import target_ranks

    model.eval()
    ranks, targets = [], []
    for batch in iterate_batches(split, 256, model.config.max_len):
        queries = model.prefix_queries(batch.inputs)[batch.target_mask]
        wanted = batch.targets[batch.target_mask]
        for start in range(0, len(wanted), chunk):
            ranks.append(target_ranks(model.item_scores(queries[start:start + chunk]), wanted[start:start + chunk]))
        targets.append(wanted)
    return torch.cat(ranks).numpy(), torch.cat(targets).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (e.g. runs/.../best)")
    parser.add_argument("--dataset", default="tmall")
    args = parser.parse_args()

    from pocketrec.data.registry import load_dataset
    from pocketrec.eval.metrics import metrics_from_ranks
    from pocketrec.train.checkpoint import load_checkpoint

    data = load_dataset(args.dataset)
    counts = data.item_counts()
    ranks = {}
    for path in args.checkpoints:
        ranks[path], targets = test_ranks(load_checkpoint(path)[0], data.test)
    freq = counts[targets]
    edges = [*BUCKETS, None]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (freq >= lo) & (freq < hi) if hi is not None else freq >= lo
        row = {"target count in train": f"[{lo}, {hi if hi is not None else 'inf'})", "share %": 100 * sel.mean()}
        row |= {path: 100 * float((r[sel] < 20).mean()) for path, r in ranks.items()}
        rows.append(row)
    for metric in ("recall@20", "mrr@20"):
        rows.append({"target count in train": f"all: {metric}", "share %": 100.0}
                    | {path: 100 * metrics_from_ranks(r)[metric] for path, r in ranks.items()})
    print(f"{args.dataset}: test Recall@20 % by the target's training frequency")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
