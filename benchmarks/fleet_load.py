"""The fleet service under a bounded load on loopback: requests per second, latency of cached and new files, the
cache hit rate, the server's peak memory, and every file verified.

1. Starts ``pocketrec serve rule=RULE peel=PEEL`` as its own process on 127.0.0.1 (a free port, a fresh cache,
   files signed with a fresh key), as a deployment would run it.
2. New budgets alone: ``--new`` budgets nobody asked for yet, one request at a time per model (RULE: the table
   alone, its architecture search; PEEL: a user group, its blocks by alpha): latency of a first build, no
   contention; then each of those files asked 5 more times (cache hits, one client).
3. The load: ``--clients`` threads, each with its own connection, ``--requests`` requests in all, drawn (``--seed``)
   from ``--budgets`` budgets log-spaced between the smallest file both models serve and ``--top`` of the dense
   table, half for the RULE table, half for one of PEEL's user groups. Every file goes through pocketrec's own
   client (:func:`pocketrec.device.client.fetch`): SHA-256, checksum and signature verified, written atomically.
   Latency is the HTTP request's, split by what the server did: ``hit`` (on disk), ``miss`` (built for this
   request, queueing included) and ``shared`` (waited for a build another request started).
4. Deltas: PEEL files grown from the smallest budget to the largest (:func:`pocketrec.device.client.grow`), their
   bytes against downloading the larger file.

The load stops by itself after ``--requests`` (or ``--max-seconds``). Prints Markdown tables and writes
``benchmarks/results/fleet.json``::

    python benchmarks/fleet_load.py     # the RULE and PEEL runs of benchmarks/rule.py and peel.py on ml-100k
    python benchmarks/fleet_load.py --rule RUN --peel RUN --dataset NAME
    python benchmarks/fleet_load.py --quick --rule RUN --peel RUN   # a small load; writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import command_line, print_table, write_rows

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, folder: Path, key_file: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "pocketrec", "serve", f"rule={args.rule}", f"peel={args.peel}",
               "--port", str(port), "--cache-dir", str(folder / "cache"), "--sign-key", str(key_file),
               "--build-threads", str(args.build_threads)]
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited ({server.returncode}):\n{(folder / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    sys.exit("the server did not answer /healthz within 300 s")


def server_peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (``VmHWM``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ms = np.asarray(values) * 1000
    return {"n": len(values), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max())}


def server_metric(url: str, name: str, **labels: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def budgets_of(models: dict[str, Any], count: int, top: float) -> list[int]:
    low = max(m["budgets"]["min_table_bytes"] for m in models.values()) * 1.02
    high = min(m["dense_table_bytes"] for m in models.values()) * top
    return sorted({int(b) for b in np.geomspace(low, high, count)})


def new_budgets(url: str, models: dict[str, Any], budgets: list[int], count: int, key: bytes,
                folder: Path) -> dict[str, dict[str, float]]:
    """First builds, one at a time: budgets between the load's levels (no file of the load is built here)."""
    import httpx

    from pocketrec.device.client import fetch

    between = [(a + b) // 2 for a, b in zip(budgets, budgets[1:], strict=False)][:count]
    out = {}
    with httpx.Client() as client:
        for name in ("rule", "peel"):
            times, hits = [], []
            for i, budget in enumerate(between):
                target = {"group": i % models["peel"]["user_groups"]} if name == "peel" else {}
                got = fetch(url, name, budget, folder / f"new-{name}.safetensors", key=key, client=client, **target)
                assert got.cache == "miss", got.cache
                times.append(got.http_seconds)
                for _ in range(5):  # the same file again: from the cache, nothing else running
                    again = fetch(url, name, budget, folder / f"new-{name}.safetensors", key=key, client=client,
                                  **target)
                    hits.append(again.http_seconds)
            out[name] = percentiles(times)
            out[f"{name} cached"] = percentiles(hits)
    return out


def load(url: str, args, models: dict[str, Any], budgets: list[int], key: bytes, folder: Path) -> dict[str, Any]:
    import httpx

    from pocketrec.device.client import FetchError, fetch

    rng = np.random.default_rng(args.seed)
    groups = int(models["peel"]["user_groups"])
    plan = []
    for _ in range(args.requests):
        name = "peel" if rng.random() < 0.5 else "rule"
        budget, group = int(rng.choice(budgets)), int(rng.integers(groups))
        plan.append((name, budget, group if name == "peel" else -1))
    lock, cursor = threading.Lock(), [0]
    results: list[tuple[str, str, float]] = []
    errors: list[str] = []
    stop_at = time.monotonic() + args.max_seconds

    def worker(index: int) -> None:
        out = folder / f"client-{index}.safetensors"
        with httpx.Client() as client:
            while time.monotonic() < stop_at:
                with lock:
                    if cursor[0] >= len(plan):
                        return
                    name, budget, group = plan[cursor[0]]
                    cursor[0] += 1
                try:
                    got = fetch(url, name, budget, out, group=group if name == "peel" else None, key=key,
                                client=client)
                except FetchError as err:
                    with lock:
                        errors.append(str(err))
                    continue
                with lock:
                    results.append((name, got.cache, got.http_seconds))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    by = {outcome: percentiles([s for _, o, s in results if o == outcome]) for outcome in ("hit", "miss", "shared")}
    return {"requests": len(results) + len(errors), "answered": len(results), "errors": len(errors),
            "first_errors": errors[:3], "seconds": wall, "rps": (len(results) + len(errors)) / wall,
            "all": percentiles([s for *_, s in results]), **by,
            "hit_rate": by["hit"]["n"] / max(1, len(results)), "distinct_files": len(set(plan))}


def deltas(url: str, models: dict[str, Any], budgets: list[int], key: bytes, folder: Path) -> dict[str, Any]:
    import httpx

    from pocketrec.device.client import fetch, grow

    sizes, fulls, times = [], [], []
    with httpx.Client() as client:
        for group in range(int(models["peel"]["user_groups"])):
            small = fetch(url, "peel", budgets[0], folder / "small.safetensors", group=group, key=key, client=client)
            grown = grow(url, small.path, budgets[-1], folder / "grown.safetensors", key=key, client=client)
            sizes.append(grown.received)
            fulls.append(grown.nbytes)
            times.append(grown.http_seconds)
    return {"groups": len(sizes), "delta_bytes": int(np.mean(sizes)), "file_bytes": int(np.mean(fulls)),
            "ratio": float(np.mean(np.asarray(sizes) / np.asarray(fulls))), "latency": percentiles(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rule", default="runs/rule-bench/ml-100k/rule", help="a RULE run (benchmarks/rule.py's)")
    parser.add_argument("--peel", default="runs/peel-bench/ml-100k/peel", help="a PEEL run (benchmarks/peel.py's)")
    parser.add_argument("--dataset", default="ml-100k", help="the runs' dataset (for the result rows)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--budgets", type=int, default=20)
    parser.add_argument("--top", type=float, default=0.25, help="largest budget, a fraction of the dense table")
    parser.add_argument("--new", type=int, default=10, help="first builds timed alone, per model")
    parser.add_argument("--build-threads", type=int, default=2, help="the server's build threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--quick", action="store_true", help="4 clients, 200 requests, 5 budgets; writes nothing")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.budgets, args.new = 4, 200, 5, 2
    for run in (args.rule, args.peel):
        if not (Path(run) / "best" / "checkpoint.json").exists():
            sys.exit(f"{run} is not a finished run: python benchmarks/peel.py trains the RULE and PEEL runs "
                     f"of ml-100k (or give --rule / --peel)")
    import httpx

    with tempfile.TemporaryDirectory(prefix="fleet-load-") as tmp:
        folder = Path(tmp)
        key = os.urandom(32).hex().encode()
        (folder / "key").write_bytes(key)
        server, url = start_server(args, folder, folder / "key")
        try:
            models = {m["name"]: m for m in httpx.get(url + "/v1/models").json()["models"]}
            budgets = budgets_of(models, args.budgets, args.top)
            print(f"server {url} (pid {server.pid}); {len(budgets)} budgets {budgets[0]:,}-{budgets[-1]:,} B of "
                  f"table; PEEL {models['peel']['user_groups']} user groups", flush=True)
            alone = new_budgets(url, models, budgets, args.new, key, folder)
            loaded = load(url, args, models, budgets, key, folder)
            grown = deltas(url, models, budgets, key, folder)
            builds = server_metric(url, "pocketrec_builds_total")
            failures = server_metric(url, "pocketrec_build_failures_total")
            peak = server_peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    report(args, alone, loaded, grown, builds, failures, peak, models)


def report(args, alone, loaded, grown, builds, failures, peak, models) -> None:
    print(f"\n## New budgets, one request at a time ({args.new} per model), ms\n")
    rows = [{"model": name, "requests": stats["n"], "p50": stats["p50"], "max": stats["max"]}
            for name, stats in alone.items()]
    print_table(rows, ["model", "requests", "p50", "max"])
    print(f"\n## Load: {args.clients} clients, {loaded['requests']:,} requests, {args.budgets} budgets x "
          f"(RULE + {models['peel']['user_groups']} PEEL groups) = {loaded['distinct_files']} distinct files\n")
    rows = [{"requests": loaded[o]["n"], "served from": o, "p50 ms": loaded[o].get("p50", float("nan")),
             "p99 ms": loaded[o].get("p99", float("nan")), "max ms": loaded[o].get("max", float("nan"))}
            for o in ("hit", "miss", "shared", "all")]
    print_table(rows, ["served from", "requests", "p50 ms", "p99 ms", "max ms"])
    print(f"\n{loaded['rps']:,.0f} requests/s over {loaded['seconds']:.1f} s; cache hit rate "
          f"{100 * loaded['hit_rate']:.1f}%; {int(builds)} builds ({int(failures)} failed); {loaded['errors']} "
          f"errors or files that failed verification; server peak memory {peak:,.0f} MiB")
    if loaded["first_errors"]:
        print("first errors: " + " | ".join(loaded["first_errors"]))
    print(f"deltas: PEEL {grown['groups']} groups grown from the smallest to the largest "
          f"budget: {grown['delta_bytes']:,} B on average against a {grown['file_bytes']:,} B file "
          f"({100 * grown['ratio']:.0f}%), p50 {grown['latency']['p50']:.1f} ms")
    summary = {"alone": alone, "load": loaded, "deltas": grown, "builds": builds, "build_failures": failures,
               "server_peak_rss_mib": peak}
    print("FLEET " + json.dumps(summary))
    if args.quick:
        return
    base = {"dataset": args.dataset, "command": command_line("fleet_load.py"), "clients": args.clients,
            "budgets": args.budgets}
    rows = [{**base, "method": "fleet-load", "setting": "cached", "requests": loaded["requests"],
             "rps": loaded["rps"], "latency_ms_p50": loaded["hit"]["p50"], "latency_ms_p99": loaded["hit"]["p99"],
             "uncached_ms_p50": loaded["miss"].get("p50"), "uncached_ms_p99": loaded["miss"].get("p99"),
             "hit_rate": loaded["hit_rate"], "errors": loaded["errors"], "builds": builds,
             "server_peak_rss_mib": peak, "delta_bytes": grown["delta_bytes"], "delta_file_bytes": grown["file_bytes"]}]
    rows += [{**base, "method": f"fleet-{name.replace(' ', '-')}", "setting": "one client, nothing else running",
              "latency_ms_p50": s["p50"], "latency_ms_max": s["max"], "requests": s["n"]} for name, s in alone.items()]
    print(f"wrote {write_rows('fleet', rows)}")


if __name__ == "__main__":
    main()
