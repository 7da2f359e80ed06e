"""Data-parallel training on ``torch.distributed``: one code path, a single process being world size 1.

Every training loop of pocketrec goes through :func:`pocketrec.train.trainer.fit`; when a process group is
up (``torchrun``, ``pocketrec train --nproc N``, or :func:`init` from a test), ``fit`` wraps the optimised
parameters in :class:`~torch.nn.parallel.DistributedDataParallel` and feeds each rank its slice of every
batch. Nothing here runs without a process group: a single process keeps today's arithmetic exactly.

The rules (``docs/distributed.md``):

* **Same global batch at any world size.** Every rank draws the *same* global batch from the seed (the
  order, BPR's negatives) and keeps the rows ``[n r / W, n (r + 1) / W)`` of it (:func:`shard_batch`), so
  the ranks of a step see disjoint parts and together the whole batch. A rank whose slice is empty (a last
  batch smaller than the world) computes on a padding row with weight 0.
* **Exact gradients.** A loss that is a mean over the local slice is rescaled by :func:`shard_weights`
  (``n_r W / N``, ``N`` all-reduced), so DDP's average over ranks is the gradient of the *global* mean,
  whatever the slices' sizes. Losses whose terms couple the rows of a batch (InfoNCE's in-batch negatives)
  gather the other ranks' rows with :func:`gather_rows` and compute every rank's terms, each rank's
  gradient reaching only its own rows: summed by DDP, every term's gradient is counted once.
* **Exact evaluation.** Evaluation units (batches of sessions, chunks of users) go round-robin to the
  ranks; each rank returns per-unit sums and :func:`gather_ordered` puts them back in unit order, so the
  sums are added in the single-process order: the metrics are equal bit for bit.
* **Rank 0 writes**, everything else reads what rank 0 broadcasts (:func:`on_main`).
* **No hangs.** The process group has a timeout (:data:`DEFAULT_TIMEOUT_S`, ``POCKETREC_DIST_TIMEOUT``), and
  a watchdog thread ends a process whose training (:func:`watching`) made no progress (:func:`heartbeat`)
  for twice as long, whatever a collective does.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: Seconds a collective waits for its peers before failing (``POCKETREC_DIST_TIMEOUT`` overrides).
DEFAULT_TIMEOUT_S = 600.0
#: The watchdog ends a process after this many timeouts without a :func:`heartbeat`.
WATCHDOG_FACTOR = 2.0


def timeout_seconds() -> float:
    return float(os.environ.get("POCKETREC_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


# ------------------------------------------------------------------------------------------ process group


def is_distributed() -> bool:
    """Whether a process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, the one that writes checkpoints and prints (true in a single process)."""
    return rank() == 0


def launched() -> bool:
    """Whether this process is a worker of a launcher (``torchrun`` set ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_backend() -> str:
    """``POCKETREC_DIST_BACKEND``, else gloo: pocketrec's trainer keeps models on the CPU, and NCCL reduces
    GPU tensors only (set it to nccl for models placed on GPUs)."""
    return os.environ.get("POCKETREC_DIST_BACKEND", "gloo")


def init(rank: int | None = None, world_size: int | None = None, init_method: str | None = None,
         timeout_s: float | None = None, backend: str | None = None) -> bool:
    """Start the process group: from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) when no argument is given, or explicitly (e.g. a test's ``file://`` store). Returns
    whether a group of more than one process is up; a world of 1 starts nothing. Starts the watchdog."""
    if dist.is_initialized():
        return is_distributed()
    world = int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    timeout = timeout_s if timeout_s is not None else timeout_seconds()
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank or 0)))
    kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout)}
    if init_method is not None:
        kwargs.update(init_method=init_method, rank=int(rank or 0), world_size=world)
    dist.init_process_group(backend, **kwargs)
    _watchdog.start(timeout * WATCHDOG_FACTOR)
    return True


def shutdown() -> None:
    """Stop the watchdog and destroy the process group (if any)."""
    _watchdog.stop()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """Where collectives' tensors live: this rank's GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ------------------------------------------------------------------------------------------ the watchdog


class _Watchdog:
    """Ends the process when, while training (:func:`watching`), no :func:`heartbeat` came for ``limit``
    seconds: a peer died or hung in a way that a collective's timeout did not catch. Its message goes to
    stderr, the exit code is 3. Outside training (loading data, learning codes) it does not fire."""

    def __init__(self) -> None:
        self.limit = 0.0
        self.armed = 0
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, limit: float) -> None:
        self.limit = float(limit)
        self.last = time.monotonic()
        self._stop.clear()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="pocketrec-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.limit / 10)):
            idle = time.monotonic() - self.last
            if self.armed and idle > self.limit:
                sys.stderr.write(f"pocketrec: rank {rank()}: no training progress for {idle:.0f} s (limit "
                                 f"{self.limit:.0f} s): a peer died or hangs; stopping\n")
                sys.stderr.flush()
                os._exit(3)


_watchdog = _Watchdog()


def heartbeat() -> None:
    """Tell the watchdog that training moves (a step, an evaluation unit)."""
    _watchdog.last = time.monotonic()


@contextmanager
def watching() -> Iterator[None]:
    """Arm the watchdog (if a process group is up) for the duration: :func:`~pocketrec.train.trainer.fit`
    trains under it, beating once a step and once an evaluation unit."""
    heartbeat()
    _watchdog.armed += 1
    try:
        yield
    finally:
        _watchdog.armed -= 1


# ------------------------------------------------------------------------------------------ sharding


@dataclass
class _StepState:
    #: this rank's slice of the current batch is a padding row (weight 0)
    padding: bool = False


_step = _StepState()


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of an ``n``-row global batch that rank ``rank_`` of ``world`` keeps."""
    return n * rank_ // world, n * (rank_ + 1) // world


def shard_batch(batch: Any, rank_: int, world: int) -> tuple[Any, bool]:
    """This rank's slice of a global batch and whether it is padding (an empty slice: the batch's first
    row stands in, weighted 0). Knows ``(B, ...)`` tensors (BPR triples) and session
    :class:`~pocketrec.data.batching.Batch` es (trailing all-padding columns of the slice dropped); other
    batch types provide ``shard(start, stop)``."""
    from pocketrec.data.batching import Batch

    n = _rows(batch)
    start, stop = shard_bounds(n, rank_, world)
    padding = stop <= start
    if padding:
        start, stop = 0, 1
    if isinstance(batch, Tensor):
        return batch[start:stop], padding
    if isinstance(batch, Batch):
        inputs, targets = batch.inputs[start:stop], batch.targets[start:stop]
        used = ((inputs != 0) | (targets != 0)).any(0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        return Batch(inputs[:, :width], targets[:, :width]), padding
    if hasattr(batch, "shard"):
        return batch.shard(start, stop), padding
    raise TypeError(f"cannot shard a batch of type {type(batch).__name__}: give it a shard(start, stop) method")


def _rows(batch: Any) -> int:
    from pocketrec.data.batching import Batch

    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Batch):
        return int(batch.inputs.shape[0])
    return len(batch)


def shard_batches(batches: Iterable[Any]) -> Iterator[Any]:
    """This rank's slice of every global batch of an epoch (see :func:`shard_batch`)."""
    r, w = rank(), world_size()
    try:
        for batch in batches:
            local, _step.padding = shard_batch(batch, r, w)
            yield local
    finally:
        _step.padding = False


def shard_weights(*counts: int) -> tuple[float, ...]:
    """For each local count ``n_r`` (examples a local mean is taken over), ``n_r W / N`` with ``N`` the
    all-ranks total: the factor on the local mean that makes DDP's average the global mean's gradient.
    All 1.0 in a single process (nothing is communicated); 0 on a padding slice."""
    if not is_distributed():
        return tuple(1.0 for _ in counts)
    local = [0.0 if _step.padding else float(c) for c in counts]
    totals = torch.tensor(local, dtype=torch.float64, device=device())
    dist.all_reduce(totals)
    w = world_size()
    return tuple(c * w / t if t > 0 else 0.0 for c, t in zip(local, totals.tolist(), strict=True))


def global_mean(mean: Tensor, count: int) -> Tensor:
    """``mean`` (over ``count`` local examples) weighted so that DDP's average is the global mean; ``mean``
    itself in a single process."""
    if not is_distributed():
        return mean
    return mean * shard_weights(count)[0]


def _all_sizes(local: int) -> list[int]:
    sizes = torch.tensor([local], dtype=torch.int64, device=device())
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    return [int(s) for s in all_sizes]


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """``(every rank's rows of x in rank order, the offset of this rank's rows among them)``, with this
    rank's rows the differentiable ``x`` itself and the others' constants (forward collectives only: no
    communication in the backward, whose order DDP alone owns). A padding slice contributes no row. In a
    single process: ``(x, 0)``. See :func:`pocketrec.train.losses.info_nce` for a loss that gets every
    rank's gradient through it."""
    if not is_distributed():
        return x, 0
    if _step.padding:
        x = x[:0]
    counts = _all_sizes(x.shape[0])
    padded = x.detach().new_zeros((max(max(counts), 1), *x.shape[1:]))
    padded[:x.shape[0]] = x.detach()
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    me = rank()
    rows = [x if r == me else part[:count] for r, (part, count) in enumerate(zip(parts, counts, strict=True))]
    return torch.cat(rows), sum(counts[:me])


def padding_step() -> bool:
    """Whether this rank's slice of the current batch is a padding row (weight 0)."""
    return _step.padding


# ------------------------------------------------------------------------------------------ reductions


def mean_over_ranks(loss: float, parts: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The global values of a step's (weighted) loss and parts: their sum over ranks over ``W``."""
    if not is_distributed():
        return loss, parts
    keys = sorted(parts)
    values = torch.tensor([loss, *(parts[k] for k in keys)], dtype=torch.float64, device=device())
    dist.all_reduce(values)
    values = (values / world_size()).tolist()
    return values[0], dict(zip(keys, values[1:], strict=True))


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """In place: the mean over ranks (a no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor.div_(world_size())
    return tensor


def gather_ordered(records: list[tuple[int, Any]]) -> list[Any]:
    """Every rank's ``(unit index, value)`` records, as one list of values in unit order (on every rank)."""
    if is_distributed():
        gathered: list[Any] = [None] * world_size()
        dist.all_gather_object(gathered, records)
        records = [rec for part in gathered for rec in part]
    return [value for _, value in sorted(records, key=lambda rec: rec[0])]


def is_mine(unit: int) -> bool:
    """Whether this rank computes evaluation unit ``unit`` (round-robin over the ranks; all in a single
    process)."""
    return unit % world_size() == rank()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only, its result (or its exception, re-raised) on every rank."""
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] | None = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - sent to the other ranks, re-raised below
            outcome = ("error", err)
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


# ------------------------------------------------------------------------------------------ DDP


class _Parameters(nn.Module):
    """The optimised parameters as one module, ``forward`` = the loss: what DDP wraps. The loss function
    reads the parameters through its own model; DDP reduces their gradients."""

    def __init__(self, params: list[nn.Parameter], loss_fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)
        self.__dict__["loss_fn"] = loss_fn  # not a submodule: its parameters are in ``params``

    def forward(self, batch: Any) -> Any:
        return self.loss_fn(batch)


def data_parallel(loss_fn: Callable[[Any], Any], params: list[nn.Parameter]) -> Callable[[Any], Any]:
    """``loss_fn`` as a step function whose backward all-reduces (averages) the gradients of ``params``
    over the ranks: a :class:`~torch.nn.parallel.DistributedDataParallel` over them. Broadcasts rank 0's
    values of ``params`` first. ``loss_fn`` itself in a single process."""
    if not is_distributed():
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel

    seen: set[int] = set()
    unique = [p for p in params if p.requires_grad and not (id(p) in seen or seen.add(id(p)))]
    module = _Parameters(unique, loss_fn)
    ids = None if device().type == "cpu" else [device()]
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def local_config(config: Any) -> Any:
    """A dataclass config with ``progress`` off on every rank but 0."""
    if is_main() or not hasattr(config, "progress"):
        return config
    return replace(config, progress=False)


# ------------------------------------------------------------------------------------------ launching


class LaunchError(RuntimeError):
    """A worker of a launched job failed; the message is the failing rank's error."""


def launch_local(nproc: int, argv: list[str], timeout_s: float | None = None) -> None:
    """Run ``python -m pocketrec *argv`` in ``nproc`` workers on this machine through torch's launcher
    (``torchrun --standalone --nproc-per-node nproc``, no restarts): a failed or killed worker stops the
    others, and :class:`LaunchError` carries the first failure's error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if timeout_s is not None:
        os.environ["POCKETREC_DIST_TIMEOUT"] = str(float(timeout_s))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                                         "-m", "pocketrec", *argv])
    try:
        run(args)
    except ChildFailedError as err:
        raise LaunchError(describe_failure(err)) from None


#: Errors of a rank that lost its peer: a consequence of another rank's failure, not its cause.
PEER_LOST = ("connection reset by peer", "connection closed by peer", "timed out", "no training progress",
             "broken pipe")


def describe_failure(err: Any) -> str:
    """The failing worker of a ``ChildFailedError``, ``rank R failed: its error`` (or the signal that killed
    it). A rank that failed because its peer went away (a collective's connection reset or timeout, or the
    launcher's SIGTERM to the survivors) is named only when no other cause is known."""
    import signal

    def what(failure: Any) -> str:
        if failure.error_file == "<N/A>":  # nothing recorded: killed, or exited (its error is in its output)
            code = failure.exitcode
            return (f"killed by {failure.signal_name()}" if code < 0
                    else f"exit code {code} (its error is in its output above)")
        message = failure.message
        return str(message.get("message", message) if isinstance(message, dict) else message).strip()

    def consequence(failure: Any) -> bool:
        text = what(failure).lower()
        return any(mark in text for mark in PEER_LOST) or failure.exitcode == -signal.SIGTERM

    failures = sorted(err.failures.items(), key=lambda item: (consequence(item[1]), item[1].timestamp, item[0]))
    (first, failure), rest = failures[0], failures[1:]
    also = "".join(f"; then rank {r}: {what(f).splitlines()[0][:160]}" for r, f in rest)
    return f"rank {first} failed: {what(failure)}{also}"
