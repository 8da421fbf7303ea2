"""How the operator scales: N TrainingRuns to N Jobs against the API emulator, on this machine.

For each N, two ways, each with a fresh emulated API server and operator:

- `live`: the operator runs while N TrainingRuns are created one after another (a client loop);
- `backlog`: N TrainingRuns exist before the operator starts (a restart, or `kubectl apply` of a big
  directory); the operator's own throughput, with no client competing for the CPU.

Measured: time until every Job exists and every status is `Running`, and the distribution of reconcile
latencies (one handler pass: dependency check, ConfigMap, Job, status write, API round trips included).
The emulator runs in the same process as the operator, so both share one CPU (the GIL): the numbers
are an upper bound on the operator's cost.

    .venv/bin/python bench/operator.py [--n 100 300 1000]

Goal: 1000 CRs to Jobs in ≤ 60 s on a 2-core machine, p95 reconcile ≤ 250 ms.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import time
from pathlib import Path

import yaml

from metaspec.operator import metrics
from metaspec_testing.emulator import Cluster

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "operator.json"


def training_runs(n: int) -> list[dict]:
    template = yaml.safe_load((REPO / "examples" / "training-run.yaml").read_text())
    docs = []
    for i in range(n):
        doc = copy.deepcopy(template)
        doc["metadata"] = {"name": f"run-{i:05d}"}
        doc["spec"]["output"]["uri"] = f"s3://artifacts/bench/run-{i:05d}"
        docs.append(doc)
    return docs


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure(n: int, mode: str, timeout: float) -> dict:
    cluster = Cluster().start()
    try:
        docs = training_runs(n)
        if mode == "backlog":
            for doc in docs:
                cluster.apply(doc, "bench")
        metrics.SAMPLES.clear()
        start = time.perf_counter()
        cluster.start_operator()
        if mode == "live":
            for doc in docs:
                cluster.apply(doc, "bench")
        created = time.perf_counter() - start

        def done() -> bool:
            jobs = len(cluster.list("Job", "bench"))
            running = sum(
                (r.get("status") or {}).get("phase") == "Running" for r in cluster.list("TrainingRun", "bench")
            )
            return jobs == n and running == n

        cluster.wait_for(done, timeout=timeout, message=f"{n} Jobs and Running statuses")
        total = time.perf_counter() - start
        samples = list(metrics.SAMPLES.get("TrainingRun", []))
        return {
            "n": n,
            "mode": mode,
            "create_seconds": round(created, 2) if mode == "live" else None,
            "all_running_seconds": round(total, 2),
            "crs_per_second": round(n / total, 1),
            "reconciles": len(samples),
            "reconcile_p50_ms": round(1000 * percentile(samples, 50), 1),
            "reconcile_p95_ms": round(1000 * percentile(samples, 95), 1),
            "reconcile_max_ms": round(1000 * max(samples), 1),
        }
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 300, 1000], help="numbers of TrainingRuns")
    parser.add_argument("--mode", nargs="+", choices=["backlog", "live"], default=["backlog", "live"])
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait per N")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # kopf logs every handler at INFO; the table is the output
    rows = [measure(n, mode, args.timeout) for mode in args.mode for n in args.n]
    header = ("mode", "N", "create s", "all Running s", "CRs/s", "reconciles", "p50 ms", "p95 ms", "max ms")
    print(" | ".join(f"{h:>13}" for h in header))
    for r in rows:
        values = (r["mode"], r["n"], r["create_seconds"] or "-", r["all_running_seconds"], r["crs_per_second"])
        values += (r["reconciles"],)
        values += (r["reconcile_p50_ms"], r["reconcile_p95_ms"], r["reconcile_max_ms"])
        print(" | ".join(f"{v:>13}" for v in values))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    machine = f"{os.cpu_count()} CPU cores, 1-minute load average {load:.1f} at the end (shared machine)"
    RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(machine)
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
