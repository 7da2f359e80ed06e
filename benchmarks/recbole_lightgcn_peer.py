"""The RecBole 1.2.1 LightGCN peer for ``lightgcn_peer.py``: accuracy, best epoch, epoch time and peak RSS.

Runs inside ``.venv-recbole`` (``make recbole-venv``) and must not import pocketrec. It reads a split that
``lightgcn_peer.py`` exported from pocketrec's :class:`InteractionDataset` as RecBole atomic files::

    DATA_DIR/NAME/NAME.{train,valid,test}.inter
    user_id:token  item_id:token

and loads them with ``benchmark_filename: [train, valid, test]`` (predefined splits, no ``eval_args.split``;
RecBole's token vocabularies are built over the three files together). Full-sort evaluation: RecBole
1.2.1's ``FullSortEvalDataLoader`` masks, for each evaluated user, ``used_ids[phase] - positives`` where
``used_ids`` accumulates the splits in order (``Sampler.get_used_ids``): the user's *train* items when
ranking for valid, *train + valid* when ranking for test (the splits are disjoint), and the padding item 0
(``full_sort_predict`` scores it, the trainer sets it to -inf). A user without positives in a split is not
evaluated there.

Trains LightGCN with RecBole's own ``Trainer.fit`` (BPR, one uniform negative per training pair sampled
outside the user's training items, Adam), validates every ``--eval-step`` epochs on ``ndcg@20`` with early
stopping, reloads the best checkpoint and tests it. Times every ``Trainer._train_epoch`` call (training
only: the epoch's batches including negative sampling, no evaluation) and every ``_valid_epoch`` call, and
prints one line::

    PEER {"epoch_seconds": ..., "peak_rss_mib": ..., "best_epoch": ..., "test": {"recall@20": ...}, ...}

RecBole's early stopping (``utils.early_stopping``) stops once ``cur_step > stopping_step``, i.e. after
``stopping_step + 1`` evaluations without improvement (``>=`` counts as improvement); pocketrec's
``train.patience=P`` stops after ``P``. ``lightgcn_peer.py`` passes ``--stopping-step P-1``.

``--require-pow`` (the default here) makes RecBole's ``EmbLoss`` the squared-norm L2 of LightGCN's paper and
of pocketrec (``reg_weight * 0.5 * (|e_u|^2 + |e_i|^2 + |e_j|^2) / batch`` on the ego embeddings); RecBole's
shipped default ``require_pow: False`` uses the *unsquared* Frobenius norms of the three batch matrices
instead (``--no-require-pow``). As in ``recbole_peer.py``, the autograd anomaly mode that importing
RecBole switches on is turned off before training unless ``--anomaly``. ``--time-limit`` (or a SIGUSR1)
stops before the next epoch and tests the best checkpoint so far (``stopped_by_time_limit`` in the row).

    .venv-recbole/bin/python benchmarks/recbole_lightgcn_peer.py --data-dir DIR --name ml-100k
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

KS = (10, 20, 50)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident memory (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def count_rows(path: Path) -> int:
    with open(path) as f:
        return sum(1 for _ in f) - 1


def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    data_root = Path(args.data_dir).resolve()
    files = {s: data_root / args.name / f"{args.name}.{s}.inter" for s in ("train", "valid", "test")}
    for path in files.values():
        if not path.is_file():
            sys.exit(f"{path} not found (lightgcn_peer.py writes it)")
    num_items = int(args.num_items) if args.num_items else None
    config_dict = {
        "data_path": str(data_root), "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "RATING_FIELD": None, "TIME_FIELD": None,
        "load_col": {"inter": ["user_id", "item_id"]}, "benchmark_filename": ["train", "valid", "test"],
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                                  "candidate_num": 0},
        "embedding_size": args.dim, "n_layers": args.layers, "reg_weight": args.reg_weight,
        "require_pow": args.require_pow, "learning_rate": args.lr, "train_batch_size": args.batch,
        # RecBole's full-sort eval batch counts scores: eval_batch_size // item_num users per batch.
        "eval_batch_size": args.eval_users * (num_items + 1) if num_items else 4096 * 64,
        "epochs": args.epochs, "eval_step": args.eval_step, "stopping_step": args.stopping_step,
        "metrics": ["Recall", "NDCG"], "topk": list(KS), "valid_metric": "NDCG@20", "valid_metric_bigger": True,
        "device": "cpu", "use_gpu": False, "gpu_id": "", "show_progress": False, "worker": 0,
        "state": "INFO", "seed": args.seed, "reproducibility": True,
    }
    os.chdir(work)  # RecBole writes ./log/ and ./log_tensorboard/ relative to the working directory
    sys.argv = sys.argv[:1]  # RecBole's Config also reads --key=value options from the command line
    config = Config(model="LightGCN", dataset=args.name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)  # after RecBole's own setup, in case anything reset it

    started = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    load_s = time.perf_counter() - started
    stages = {"after_load": {"rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}}

    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    anomaly_as_shipped = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(args.anomaly)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_seconds: list[float] = []
    valid_seconds: list[float] = []
    valid_history: list[float] = []
    saved_epochs: list[int] = []
    train_epoch, valid_epoch, save_checkpoint = trainer._train_epoch, trainer._valid_epoch, trainer._save_checkpoint

    class OutOfTime(Exception):
        pass

    stop_requested = []
    signal.signal(signal.SIGUSR1, lambda *_: stop_requested.append(True))

    def timed_train_epoch(*a, **kw):
        if stop_requested or args.time_limit and time.perf_counter() - fit_started > args.time_limit:
            raise OutOfTime  # before an epoch starts: the best checkpoint so far is saved
        t0 = time.perf_counter()
        loss = train_epoch(*a, **kw)
        epoch_seconds.append(time.perf_counter() - t0)
        if len(epoch_seconds) == 1:
            stages["after_train_epoch_1"] = {"rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}
        return loss

    def timed_valid_epoch(*a, **kw):
        t0 = time.perf_counter()
        score, result = valid_epoch(*a, **kw)
        valid_seconds.append(time.perf_counter() - t0)
        valid_history.append(float(score))
        return score, result

    def tracked_save_checkpoint(epoch, *a, **kw):
        saved_epochs.append(int(epoch))  # called at every improvement of the valid metric (and only then)
        return save_checkpoint(epoch, *a, **kw)

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, timed_valid_epoch
    trainer._save_checkpoint = tracked_save_checkpoint
    fit_started = time.perf_counter()
    out_of_time = False
    try:
        _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    except OutOfTime:
        out_of_time, best_valid = True, trainer.best_valid_result
    fit_s = time.perf_counter() - fit_started
    stages["after_fit"] = {"rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}
    t0 = time.perf_counter()
    # What ``trainer.evaluate(load_best_model=True)`` does, but RecBole 1.2.1 calls ``torch.load`` with the
    # default ``weights_only=True`` of torch >= 2.6, which refuses its own checkpoint (it pickles the config).
    checkpoint = torch.load(trainer.saved_model_file, map_location=trainer.device, weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    test_s = time.perf_counter() - t0
    inter = train_data.dataset.inter_feat
    return {
        "epoch_seconds": sum(epoch_seconds) / len(epoch_seconds), "epoch_seconds_list": epoch_seconds,
        "valid_seconds": sum(valid_seconds) / max(len(valid_seconds), 1),
        "epochs_trained": len(epoch_seconds), "stopped_by_time_limit": out_of_time,
        "best_epoch": saved_epochs[-1] + 1 if saved_epochs else None,
        "peak_rss_mib": peak_rss_mib(), "fit_seconds": fit_s, "test_eval_seconds": test_s,
        "load_seconds": load_s, "memory_stages": stages, "loadavg_end": list(os.getloadavg()),
        "valid": {k.lower(): float(v) for k, v in (best_valid or {}).items()},
        "test": {k.lower(): float(v) for k, v in (test_result or {}).items()},
        "valid_ndcg@20_history": valid_history,
        "batch": args.batch, "layers": args.layers, "dim": args.dim, "lr": args.lr, "reg_weight": args.reg_weight,
        "require_pow": bool(config["require_pow"]), "stopping_step": args.stopping_step,
        "eval_batch_size": config["eval_batch_size"], "threads": torch.get_num_threads(),
        "detect_anomaly": torch.is_anomaly_enabled(), "detect_anomaly_as_shipped": anomaly_as_shipped,
        "users": dataset.user_num - 1, "items": dataset.item_num - 1,
        "interactions": {"train": len(inter), "valid": len(valid_data.dataset.inter_feat),
                         "test": len(test_data.dataset.inter_feat)},
        "file_rows": {s: count_rows(p) for s, p in files.items()},
        "batches_per_epoch": len(train_data),
        "recbole": __import__("recbole").__version__, "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the folder holding NAME/NAME.{train,valid,test}.inter")
    parser.add_argument("--name", required=True)
    parser.add_argument("--num-items", type=int, default=0, help="catalogue size, to size eval batches")
    parser.add_argument("--eval-users", type=int, default=256, help="users per full-sort evaluation batch")
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--eval-step", type=int, default=1)
    parser.add_argument("--stopping-step", type=int, default=9)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg-weight", type=float, default=1e-4)
    parser.add_argument("--require-pow", action=argparse.BooleanOptionalAction, default=True,
                        help="squared L2 as in LightGCN's paper (default); --no-require-pow: RecBole's default")
    parser.add_argument("--time-limit", type=float, default=0,
                        help="seconds of training + validation after which no new epoch starts (0: none); the "
                             "best checkpoint so far is tested, and the row says stopped_by_time_limit; "
                             "SIGUSR1 does the same at once")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--anomaly", action="store_true",
                        help="keep the autograd anomaly mode that importing RecBole 1.2.1 switches on")
    args = parser.parse_args()
    if "pocketrec" in sys.modules:
        sys.exit("recbole_lightgcn_peer.py must not import pocketrec")
    with tempfile.TemporaryDirectory(prefix="recbole-lightgcn-") as tmp:
        row = run(args, Path(tmp))
        os.chdir("/")
    print("PEER " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
