"""Operator fault trials against the API emulator: SIGKILLs at seeded writes, API errors, cut watches.

Each trial applies the whole pipeline (examples/pipeline.yaml) to a fresh namespace, plays the Job and
Deployment controllers, and hurts the real `metaspec operator` process (see `metaspec_testing.chaos`):

- `kill`: SIGKILL at 3 seeded writes of the operator (the write landed or was lost), then a restart;
- `errors`: 15% of the operator's requests fail (409/429/500/503, some after being applied), 10% are
  slow, every watch stream is cut every second;
- `errors-no-watch-cuts`: 35% errors and no watch cuts, so that only the resync heals lost events.

A trial survives when it converges (every resource Succeeded/Ready, observedGeneration current) with
exactly one child per resource generation and no reported fact missing from the statuses.

    .venv/bin/python bench/reliability_operator.py --trials 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import yaml

from metaspec_testing import chaos
from metaspec_testing.emulator import Cluster

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "reliability-operator.json"


def run_class(name: str, cluster: Cluster, docs: list[dict], seeds: range) -> dict:
    trials = []
    for seed in seeds:
        ns = f"{name}-{seed}"
        if name == "kill":
            trial = chaos.kill_trial(cluster, docs, ns, seed)
        elif name == "errors":
            trial = chaos.error_trial(cluster, docs, ns, seed)
        else:
            trial = chaos.error_trial(cluster, docs, ns, seed, drop_every=1e9, error_rate=0.35)
        trials.append(trial)
        print(f"  {ns:<28} survived={trial.survived} {trial.seconds:5.1f}s restarts={trial.restarts}", flush=True)
    return {
        "trials": len(trials),
        "survived": sum(t.survived for t in trials),
        "data_lost": sum(t.data_lost for t in trials),
        "faults_injected": sum(sum(t.faults.values()) for t in trials),
        "seconds_max": max(t.seconds for t in trials),
        "seconds_mean": sum(t.seconds for t in trials) / len(trials),
        "failures": [{"namespace": t.namespace, "violations": t.violations} for t in trials if not t.survived],
        "per_trial": [
            {"namespace": t.namespace, "survived": t.survived, "seconds": round(t.seconds, 2), "faults": t.faults}
            for t in trials
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="kill trials (seeds seed..seed+trials-1)")
    parser.add_argument("--error-trials", type=int, default=5, help="trials of each API-error class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    docs = list(yaml.safe_load_all((REPO / "examples" / "pipeline.yaml").read_text()))
    classes = {
        "kill": range(args.seed, args.seed + args.trials),
        "errors": range(args.seed, args.seed + args.error_trials),
        "errors-no-watch-cuts": range(args.seed, args.seed + args.error_trials),
    }
    results = {}
    cluster = Cluster().start()
    try:
        for name, seeds in classes.items():
            print(f"{name}:", flush=True)
            results[name] = run_class(name, cluster, docs, seeds)
    finally:
        cluster.close()
    print(f"\n{'class':<22} {'trials':>6} {'survived':>8} {'data lost':>9} {'faults':>7} {'mean s':>7} {'max s':>6}")
    for name, r in results.items():
        print(
            f"{name:<22} {r['trials']:>6} {r['survived']:>8} {r['data_lost']:>9} {r['faults_injected']:>7} "
            f"{r['seconds_mean']:>7.1f} {r['seconds_max']:>6.1f}"
        )
    machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()}
    out = {"seed": args.seed, "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine, "classes": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
