"""RULE's architecture search under a byte budget: regularised (aging) evolution, and random search.

RULE (Chen et al., KDD 2021) searches the architecture of each budget with the regularised evolution of
Real et al. (AAAI 2019), scoring candidates with an accuracy estimator fitted on labelled architectures
(:mod:`pocketrec.search.estimator`) instead of evaluating each one. The loop is the paper's:

1. the population is ``P`` feasible architectures (pocketrec adds optional seeds, e.g. the uniform and the
   popularity allocations of :class:`~pocketrec.search.architectures.ArchitectureSpace`, to the random
   ones), scored in one batched call;
2. ``C`` times: sample ``S`` members uniformly, take the best-estimated as parent, make a child, score it,
   append it and drop the *oldest* member (not the worst: that is the regularisation).

The child is ``repair(mutate(parent), fill=True)``: one bit flipped, then blocks removed at random until
the budget holds and added at random while they fit, so children use the budget (pocketrec's operators,
documented on the space; the paper specifies none and no crossover is used). Estimates are cached by
architecture, so a child met before costs no estimator call.

The estimator is only an estimate: the ``top`` distinct best-estimated architectures ever scored are then
re-evaluated with ``verify`` (the real validation metric, when the caller gives one) and the best verified
wins. :func:`random_search` is the baseline with the same number of estimator calls. Both only ever return
architectures costing at most the budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pocketrec.search.architectures import ArchitectureSpace

Estimate = Callable[[np.ndarray], np.ndarray]
Verify = Callable[[np.ndarray], float]


@dataclass(eq=False)
class Candidate:
    """One of the best-estimated architectures re-examined at the end of a search."""

    mask: np.ndarray
    estimated: float
    verified: float | None
    cost: int


@dataclass(eq=False)
class SearchResult:
    """The architecture a search chose and what it took.

    ``estimated``/``verified``: the chosen mask's estimator score and true score (``None`` without
    ``verify``); ``cost``: its bytes (at most ``budget``); ``estimator_calls``: architectures scored by the
    estimator (a batched call of ``K`` counts ``K``; cached repeats count nothing); ``verify_calls``: calls
    of ``verify``; ``history[i]``: the best estimate seen after the initial population (``i = 0``) and after
    each cycle (random search: after each sample); ``candidates``: the re-examined top architectures, best
    estimate first.
    """

    mask: np.ndarray
    estimated: float
    verified: float | None
    cost: int
    budget: int
    estimator_calls: int
    verify_calls: int
    seconds: float
    history: list[float] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


class _Scorer:
    """Calls the estimator on architectures not seen before and remembers every score."""

    def __init__(self, estimate: Estimate) -> None:
        self.estimate = estimate
        self.scores: dict[bytes, tuple[float, np.ndarray]] = {}
        self.calls = 0

    def __call__(self, masks: list[np.ndarray]) -> np.ndarray:
        keys = [np.packbits(m).tobytes() for m in masks]
        new: dict[bytes, np.ndarray] = {}
        for key, mask in zip(keys, masks, strict=True):
            if key not in self.scores and key not in new:
                new[key] = mask
        if new:
            values = np.asarray(self.estimate(np.stack(list(new.values()))), dtype=np.float64).ravel()
            if len(values) != len(new):
                raise ValueError(f"estimate returned {len(values)} scores for {len(new)} architectures")
            if not np.all(np.isfinite(values)):
                raise ValueError("estimate returned a non-finite score")
            self.calls += len(new)
            for (key, mask), value in zip(new.items(), values, strict=True):
                self.scores[key] = (float(value), mask.copy())
        return np.array([self.scores[key][0] for key in keys])

    def best(self, top: int) -> list[tuple[float, np.ndarray]]:
        """The ``top`` distinct best-estimated architectures, best first (ties: first scored first)."""
        ranked = sorted(self.scores.values(), key=lambda item: -item[0])  # stable: insertion order on ties
        return ranked[:top]


def _finish(space: ArchitectureSpace, scorer: _Scorer, budget: int, verify: Verify | None, top: int,
            history: list[float], start: float) -> SearchResult:
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    candidates = [Candidate(mask=mask, estimated=est, verified=None, cost=space.cost(mask))
                  for est, mask in scorer.best(top)]
    for cand in candidates:
        assert cand.cost <= budget, "a search produced an architecture over its budget"
    verify_calls = 0
    chosen = candidates[0]
    if verify is not None:
        for cand in candidates:
            cand.verified = float(verify(cand.mask.copy()))
            verify_calls += 1
        # best verified; on a tie the better estimate (earlier in the list) wins
        chosen = candidates[max(range(len(candidates)), key=lambda i: (candidates[i].verified, -i))]
    return SearchResult(mask=chosen.mask.copy(), estimated=chosen.estimated, verified=chosen.verified,
                        cost=chosen.cost, budget=budget, estimator_calls=scorer.calls, verify_calls=verify_calls,
                        seconds=time.perf_counter() - start, history=history, candidates=candidates)


def aging_evolution(space: ArchitectureSpace, estimate: Estimate, budget: int, *, population: int = 20,
                    cycles: int = 50, sample: int = 5, rng: np.random.Generator, verify: Verify | None = None,
                    top: int = 3, init: list[np.ndarray] | None = None) -> SearchResult:
    """Regularised evolution (module docstring) of architectures within ``budget`` bytes.

    ``estimate(masks (K, G, N)) -> (K,)`` scores architectures (higher is better), e.g. a fitted
    estimator's ``predict``; ``verify(mask) -> float`` (optional) is the true metric used to choose among
    the ``top`` best-estimated at the end. ``init``: seed architectures placed in the initial population
    (each must fit the budget; at most ``population`` of them), the rest drawn with ``space.random``.
    ``sample`` is clipped to the population. Deterministic given ``rng`` (and deterministic callables).
    ``ValueError`` for a budget below the smallest architecture, a seed over budget or bad sizes.
    """
    start = time.perf_counter()
    if population < 1 or cycles < 0 or sample < 1:
        raise ValueError(f"need population >= 1, cycles >= 0 and sample >= 1; got {population}, {cycles}, {sample}")
    budget = int(budget)
    seeds = [space.check(m).copy() for m in (init or [])]
    if len(seeds) > population:
        raise ValueError(f"{len(seeds)} seed architectures do not fit a population of {population}")
    for i, seed in enumerate(seeds):
        if space.cost(seed) > budget:
            raise ValueError(f"seed architecture {i} costs {space.cost(seed):,} B, over the budget of {budget:,} B")
    members = seeds + [space.random(rng, budget) for _ in range(population - len(seeds))]
    scorer = _Scorer(estimate)
    scores = scorer(members)
    pop: deque[tuple[np.ndarray, float]] = deque(zip(members, scores.tolist(), strict=True))
    best = float(scores.max())
    history = [best]
    sample = min(sample, population)
    for _ in range(cycles):
        picked = rng.choice(population, size=sample, replace=False)
        parent = max((pop[i] for i in picked), key=lambda item: item[1])[0]
        child = space.repair(space.mutate(parent, rng), rng, budget, fill=True)
        score = float(scorer([child])[0])
        pop.append((child, score))
        pop.popleft()
        best = max(best, score)
        history.append(best)
    return _finish(space, scorer, budget, verify, top, history, start)


def random_search(space: ArchitectureSpace, estimate: Estimate, budget: int, *, calls: int,
                  rng: np.random.Generator, verify: Verify | None = None, top: int = 3, fill: bool = True
                  ) -> SearchResult:
    """The baseline: ``calls`` random feasible architectures (``space.random``), with ``fill`` grown to the
    budget as the evolution's children are (a fair comparison: both then spend the whole budget), scored
    in one batched call; then the same ``top``/``verify`` choice as :func:`aging_evolution`. Repeats are
    scored once, so ``estimator_calls`` may come out below ``calls``."""
    start = time.perf_counter()
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    budget = int(budget)
    masks = [space.random(rng, budget) for _ in range(calls)]
    if fill:
        masks = [space.repair(m, rng, budget, fill=True) for m in masks]
    scorer = _Scorer(estimate)
    scores = scorer(masks)
    history = np.maximum.accumulate(scores).tolist()
    return _finish(space, scorer, budget, verify, top, history, start)
