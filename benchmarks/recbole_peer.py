"""The RecBole 1.2.1 SASRec peer for ``teacher_speed.py``: epoch time and peak RSS on a session dataset.

Runs inside ``.venv-recbole`` (``make recbole-venv``) and must not import pocketrec. It converts the
SR-GNN-style session files (one session per line, space-separated item ids) to RecBole atomic files on
predefined splits, the way RecBole's own session benchmarks (``tmall-session`` etc.) are laid out::

    DATA_DIR/tmall/tmall.{train,valid,test}.inter
    session_id:token  item_id_list:token_seq  item_id:token

Each session ``s`` gives the examples ``(s[:i], s[i])`` for ``i = 1 .. len(s)-1`` (prefix cut to the
last ``MAX_ITEM_LIST_LENGTH`` items). Valid is the last 10% of the training sessions in file order,
test is the test file. RecBole reads these with ``benchmark_filename: [train, valid, test]``,
``alias_of_item_id: [item_id_list]`` (so both fields share one id space) and no data augmentation.

RecBole 1.2.1 switches autograd anomaly mode on for every model (``sine.py`` calls
``torch.autograd.set_detect_anomaly(True)`` at import); this script turns it off again before training
unless ``--anomaly`` asks for the stock behaviour. The row records both.

Then it trains SASRec (CE loss over the whole catalogue) for ``--epochs`` epochs with RecBole's own
``Trainer.fit``, times every ``Trainer._train_epoch`` call (training only), evaluates the valid split
once after the last epoch and the test split once (so that the process holds what a real run holds),
and prints one line::

    PEER {"epoch_seconds": ..., "peak_rss_mib": ..., "batch": ..., "layers": ..., "dim": ...}

    .venv-recbole/bin/python benchmarks/recbole_peer.py --epochs 1 --batch 2048 --layers 2 --dim 64
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("POCKETREC_SHARED", "/work/shared")) / "data"
MAX_LEN = 50
HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token\n"


def read_sessions(path: Path, limit: int | None) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    sessions = []
    with opener(path, "rt") as f:
        for line in f:
            items = line.split()
            if len(items) >= 2:
                sessions.append(items)
            if limit is not None and len(sessions) >= limit:
                break
    return sessions


def write_inter(path: Path, sessions: list[list[str]], prefix: str) -> int:
    """Prefix-expanded examples of ``sessions``; returns how many rows were written."""
    rows = 0
    with open(path, "w") as f:
        f.write(HEADER)
        for n, s in enumerate(sessions):
            for i in range(1, len(s)):
                f.write(f"{prefix}{n}\t{' '.join(s[max(0, i - MAX_LEN):i])}\t{s[i]}\n")
                rows += 1
    return rows


def convert(train_file: Path, test_file: Path, out: Path, name: str, valid_fraction: float,
            max_sessions: int | None) -> dict[str, int]:
    train = read_sessions(train_file, max_sessions)
    test = read_sessions(test_file, max_sessions)
    n_fit = int(round(len(train) * (1.0 - valid_fraction)))  # as pocketrec's session_split rounds
    fit, valid = train[:n_fit], train[n_fit:]
    out.mkdir(parents=True, exist_ok=True)
    return {"train": write_inter(out / f"{name}.train.inter", fit, "s"),
            "valid": write_inter(out / f"{name}.valid.inter", valid, "v"),
            "test": write_inter(out / f"{name}.test.inter", test, "t"),
            "train_sessions": len(fit), "valid_sessions": len(valid), "test_sessions": len(test)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident memory (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    data_root = Path(args.data_dir) if args.data_dir else work / "data"
    started = time.perf_counter()
    counts = convert(Path(args.train_file), Path(args.test_file), data_root / args.name, args.name,
                     args.valid_fraction, args.max_sessions)
    convert_s = time.perf_counter() - started
    config_dict = {
        "data_path": str(data_root), "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "session_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": None,
        "load_col": {"inter": ["session_id", "item_id_list", "item_id"]},
        "alias_of_item_id": ["item_id_list"], "benchmark_filename": ["train", "valid", "test"],
        "MAX_ITEM_LIST_LENGTH": MAX_LEN, "LIST_SUFFIX": "_list", "ITEM_LIST_LENGTH_FIELD": "item_length",
        "train_neg_sample_args": None, "loss_type": "CE",
        "hidden_size": args.dim, "inner_size": args.inner or 4 * args.dim, "n_layers": args.layers,
        "n_heads": args.heads, "train_batch_size": args.batch, "eval_batch_size": args.eval_batch,
        "epochs": args.epochs, "eval_step": args.epochs if args.eval else 0, "stopping_step": 10 ** 6,
        "learning_rate": 1e-3, "topk": [20], "metrics": ["Recall", "MRR"], "valid_metric": "MRR@20",
        "device": "cpu", "use_gpu": False, "gpu_id": "", "show_progress": False, "worker": 0,
        "state": "INFO", "seed": args.seed, "reproducibility": True,
    }
    os.chdir(work)  # RecBole writes ./log/ and ./log_tensorboard/ relative to the working directory
    sys.argv = sys.argv[:1]  # RecBole's Config also reads --key=value options from the command line
    config = Config(model="SASRec", dataset=args.name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)  # after RecBole's own setup, in case anything reset it

    started = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    load_s = time.perf_counter() - started
    stages = {"after_load": {"rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}}

    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    # Importing recbole.model imports every model, and recbole/model/sequential_recommender/sine.py calls
    # torch.autograd.set_detect_anomaly(True) at import time: stock RecBole 1.2.1 trains every model in
    # autograd anomaly mode (a NaN check on every backward output, and a traceback kept per graph node).
    anomaly_as_shipped = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(args.anomaly)  # off by default: SASRec at its best, not in debug mode
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_seconds: list[float] = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*a, **kw):
        t0 = time.perf_counter()
        loss = train_epoch(*a, **kw)
        epoch_seconds.append(time.perf_counter() - t0)
        stages[f"after_train_epoch_{len(epoch_seconds)}"] = {"rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}
        return loss

    trainer._train_epoch = timed_train_epoch
    _, valid_result = trainer.fit(train_data, valid_data if args.eval else None, saved=True,
                                  show_progress=False)
    stages["after_fit"] = {"rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}
    test_result, eval_s = None, 0.0
    if args.eval:
        t0 = time.perf_counter()
        test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        eval_s = time.perf_counter() - t0
    return {
        "epoch_seconds": sum(epoch_seconds) / len(epoch_seconds), "epochs": epoch_seconds,
        "peak_rss_mib": peak_rss_mib(), "batch": args.batch, "layers": args.layers, "dim": args.dim,
        "heads": args.heads, "detect_anomaly": torch.is_anomaly_enabled(),
        "detect_anomaly_as_shipped": anomaly_as_shipped, "inner": config["inner_size"],
        "threads": torch.get_num_threads(),
        "train_examples": len(train_data.dataset), "batches_per_epoch": len(train_data),
        "num_items": dataset.item_num, "examples": counts, "convert_seconds": convert_s,
        "load_seconds": load_s, "test_eval_seconds": eval_s, "memory_stages": stages,
        "valid": {k: float(v) for k, v in (valid_result or {}).items()},
        "test": {k: float(v) for k, v in (test_result or {}).items()},
        "recbole": __import__("recbole").__version__, "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="where the atomic files go (default: a temporary folder)")
    parser.add_argument("--name", default="tmall", help="dataset name, used for the atomic file names")
    parser.add_argument("--train-file", default=str(DATA / "tmall" / "train_sessions.txt.gz"))
    parser.add_argument("--test-file", default=str(DATA / "tmall" / "test_sessions.txt.gz"))
    parser.add_argument("--max-sessions", type=int, help="only the first N training (and test) sessions")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--eval-batch", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--inner", type=int, default=0, help="FFN width (default 4 * dim)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--anomaly", action="store_true",
                        help="keep the autograd anomaly mode that importing RecBole 1.2.1 switches on (stock "
                             "behaviour; slower, more memory); by default it is turned off before training")
    parser.add_argument("--no-eval", dest="eval", action="store_false",
                        help="skip the valid/test evaluation after training")
    args = parser.parse_args()
    if "pocketrec" in sys.modules:
        sys.exit("recbole_peer.py must not import pocketrec")
    with tempfile.TemporaryDirectory(prefix="recbole-peer-") as tmp:
        row = run(args, Path(tmp))
        os.chdir("/")
    print("PEER " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
