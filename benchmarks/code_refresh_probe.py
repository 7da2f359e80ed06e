"""Does a code refresh help a trained EODRec student? One proximal step on the codes, measured on held-out batches.

Loads a trained codebook student and its teacher, sums each item row's distillation-loss gradient over
``--accumulate`` training batches (no optimiser step), refreshes the codes at each ``--trust``
(:meth:`CodebookTable.refresh_codes`, step length = trust x the mean row norm, as
:mod:`pocketrec.train.code_refresh` sets it), and prints the loss (0.2 CE + 0.8 KL, dropout off) on
``--held`` other training batches before and after, plus how many codes changed. ``--held 0`` measures on
the accumulated batches themselves (in-sample: a first-order step must lower that loss)::

    python benchmarks/code_refresh_probe.py --dataset diginetica --student runs/bench/eodrec-d256-diginetica/best \\
        --teacher runs/bench-d256/teacher-d256-lr5e4-diginetica/best --accumulate 120 --held 20 --trust 0.01,0.03
"""

from __future__ import annotations

import argparse
import itertools

import torch

from common import print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="diginetica")
    parser.add_argument("--student", required=True, help="a codebook student's checkpoint folder")
    parser.add_argument("--teacher", required=True, help="its teacher's checkpoint folder")
    parser.add_argument("--accumulate", type=int, default=120, help="training batches whose gradients are summed")
    parser.add_argument("--held", type=int, default=20, help="other batches the loss is measured on (0: the same)")
    parser.add_argument("--trust", default="0.01,0.03,0.1", help="comma-separated step lengths / mean row norm")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()

    from pocketrec.data.batching import iterate_batches
    from pocketrec.data.registry import load_dataset
    from pocketrec.train.checkpoint import load_checkpoint
    from pocketrec.train.code_refresh import CodeRefreshConfig, CodeRefresher
    from pocketrec.train.distill import DistillConfig, distillation_loss
    from pocketrec.train.recombination import hot_item_mask

    student, teacher = load_checkpoint(args.student)[0], load_checkpoint(args.teacher)[0]
    data = load_dataset(args.dataset)
    # The CE and KL terms only: the recombination heads are not in the checkpoint.
    loss_fn = distillation_loss(student, teacher, hot_item_mask(data.item_counts(), 0.2),
                                DistillConfig(use_cl=False, use_pred=False))
    student.eval()
    batches = iterate_batches(data.train, 128, student.config.max_len, shuffle=True, seed=args.seed)
    accumulated = list(itertools.islice(batches, args.accumulate))
    held = list(itertools.islice(batches, args.held)) if args.held else accumulated

    def held_loss() -> float:
        with torch.no_grad():
            return sum(float(loss_fn(b)[0]) for b in held) / len(held)

    table, rows = student.table, []
    before = held_loss()
    for trust in (float(t) for t in args.trust.split(",")):
        codes = table.codes.clone()
        refresher = CodeRefresher(table, CodeRefreshConfig(every=len(accumulated), trust=trust))
        for batch in accumulated:
            loss_fn(batch)[0].backward()
        student.zero_grad(set_to_none=True)
        refresher(len(accumulated))
        stats = refresher.history[-1] if refresher.history else {"codes_changed": 0.0, "items_changed": 0.0}
        rows.append({"trust": trust, "codes changed %": 100 * stats["codes_changed"],
                     "items changed %": 100 * stats["items_changed"], "loss before": before,
                     "loss after": held_loss()})
        refresher.close()
        table.set_codes(codes)
    print(f"{args.dataset}: {args.accumulate} batches accumulated, loss on "
          f"{'the same batches' if not args.held else f'{args.held} held-out batches'}")
    print_table([{k: f"{v:.5f}" if "loss" in k else v for k, v in r.items()} for r in rows],
                ["trust", "codes changed %", "items changed %", "loss before", "loss after"])


if __name__ == "__main__":
    main()
