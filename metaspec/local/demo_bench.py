"""The demo's short benchmark: the same greedy prompts from `builtin://eval` under every routing policy.

The router takes its policy from its config (a request cannot override it), so the benchmark runs
client-side against one server per policy: the pipeline's own server for its policy, and a server
started from the same config with only `routing.policy` changed for each other one. All of them run at
once and take turns prompt by prompt, so drift in the machine's load hits every policy alike (one
request decodes at a time). Greedy decoding makes every policy's output identical to target-only
decoding (`never`); the benchmark checks that, and measures what changes: tokens/s, acceptance and
speculation rate, and the draft's first-token confidence on easy and hard prompts (the seed's routing
hypothesis).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaspec.api import SpecServe
from metaspec.api.serving import THRESHOLD_POLICIES

POLICIES = ("never", "always", "first-token", "per-token")
PROMPTS_PER_DIFFICULTY = 3
#: Whole answers: the demo's greedy answers end on their own within 128 tokens (the local teacher's
#: `maxTokens`). A cut at 32 timed mostly each request's fixed cost (prefill, HTTP) and the start of its
#: answer, where prompt lookup has seen the least of it.
MAX_TOKENS = 128
WARM_UP = "Say hello."


def demo_prompts(per_difficulty: int = PROMPTS_PER_DIFFICULTY) -> list[dict[str, Any]]:
    """The first `per_difficulty` easy and hard records of `builtin://eval`, spread over domains."""
    from metaspec.builtin import records

    picked: list[dict[str, Any]] = []
    for difficulty in ("easy", "hard"):
        pool = [r for r in records("eval") if r.difficulty == difficulty]
        by_domain: dict[str, list[Any]] = {}
        for record in pool:
            by_domain.setdefault(record.domain, []).append(record)
        rounds = [r for group in zip(*by_domain.values(), strict=False) for r in group] or pool
        picked += [r.model_dump(include={"id", "input", "domain", "difficulty"}) for r in rounds[:per_difficulty]]
    return picked


def chat(url: str, model: str, prompt: str, max_tokens: int) -> tuple[dict[str, Any], float]:
    """One greedy chat completion; the response body and the wall time in seconds."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.loads(response.read())
    return reply, time.perf_counter() - start


def bench_policies(urls: dict[str, str], model: str, prompts: list[dict[str, Any]], max_tokens: int) -> dict:
    """Every prompt once per policy (`urls`: policy -> its server), the policies taking turns, after one
    warm-up request each (not a measured prompt: prompt lookup's history would know it); per policy,
    the per-request records and their totals."""
    for url in urls.values():
        chat(url, model, WARM_UP, 4)
    requests: dict[str, list[dict[str, Any]]] = {policy: [] for policy in urls}
    for prompt in prompts:
        for policy, url in urls.items():
            reply, seconds = chat(url, model, prompt["input"], max_tokens)
            info = reply.get("metaspec") or {}
            requests[policy].append(
                {
                    **{k: prompt[k] for k in ("id", "domain", "difficulty")},
                    "seconds": seconds,
                    "completionTokens": reply["usage"]["completion_tokens"],
                    "route": info.get("route"),
                    "proposedTokens": info.get("proposed_tokens", 0),
                    "acceptedTokens": info.get("accepted_tokens", 0),
                    "lookupProposedTokens": info.get("lookup_proposed_tokens", 0),
                    "lookupAcceptedTokens": info.get("lookup_accepted_tokens", 0),
                    "firstTokenConfidence": info.get("first_token_confidence"),
                    "text": reply["choices"][0]["message"]["content"],
                }
            )
    return {policy: {"requests": r, **summarize(r)} for policy, r in requests.items()}


def summarize(requests: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(r["completionTokens"] for r in requests)
    seconds = sum(r["seconds"] for r in requests)
    proposed = sum(r["proposedTokens"] for r in requests)
    accepted = sum(r["acceptedTokens"] for r in requests)
    looked_up = sum(r["lookupProposedTokens"] for r in requests)
    looked_up_accepted = sum(r["lookupAcceptedTokens"] for r in requests)
    return {
        "completionTokens": tokens,
        "seconds": seconds,
        "tokensPerSecond": tokens / seconds if seconds else None,
        "acceptanceRate": accepted / proposed if proposed else None,
        # with a draft behind prompt lookup, each proposer's own (lookup's None without `promptLookup`)
        "lookupAcceptanceRate": looked_up_accepted / looked_up if looked_up else None,
        "draftAcceptanceRate": (accepted - looked_up_accepted) / (proposed - looked_up)
        if proposed > looked_up
        else None,
        "speculationRate": sum(r["route"] == "speculative" for r in requests) / len(requests) if requests else None,
    }


def run(
    resource: SpecServe,
    url: str,
    config: Path,
    env: dict[str, str],
    server_args: Sequence[str] = (),
    per_difficulty: int = PROMPTS_PER_DIFFICULTY,
    max_tokens: int = MAX_TOKENS,
) -> dict[str, Any]:
    """Benchmark every policy; `url` serves `resource` (started from `config`) with its own policy."""
    from metaspec.local.serving import start_server

    model = resource.spec.served_model_name or resource.metadata.name
    prompts = demo_prompts(per_difficulty)
    results: dict[str, Any] = {
        "model": model,
        "specServe": resource.metadata.name,
        "policy": resource.spec.routing.policy,
        "maxTokens": max_tokens,
        "prompts": len(prompts),
        "confidenceThreshold": resource.spec.routing.confidence_threshold,
        "maxSpeculativeTokens": resource.spec.routing.max_speculative_tokens,
        "policies": {},
    }
    own = resource.spec.routing.policy
    policies = [p for p in POLICIES if resource.spec.prompt_lookup is None or p not in THRESHOLD_POLICIES]
    urls, children = {}, []
    try:
        for policy in dict.fromkeys([*policies, own]):  # its own policy, whatever it is
            if policy == own:
                urls[policy] = url
                continue
            variant = _with_policy(config, policy)
            child, urls[policy] = start_server(variant, config.parent / f"bench-{policy}.log", env, server_args)
            children.append(child)
        results["policies"] = bench_policies(urls, model, prompts, max_tokens)
    finally:
        for child in children:
            child.stop(10)
    reference = [r["text"] for r in results["policies"]["never"]["requests"]]
    for stats in results["policies"].values():
        stats["identicalToTargetOnly"] = [r["text"] for r in stats["requests"]] == reference
    return results


def _with_policy(config: Path, policy: str) -> Path:
    body = json.loads(config.read_text())
    body["spec"].setdefault("routing", {})["policy"] = policy
    path = config.with_name(f"config-{policy}.json")
    path.write_text(json.dumps(body, indent=1))
    return path


def verdict(results: dict[str, Any]) -> str:
    """One sentence: the SpecServe's own policy against target-only decoding (`never`), and whether
    its output was the same."""
    policy = results.get("policy")
    own, base = results["policies"].get(policy), results["policies"].get("never")
    if not own or not base or not own["tokensPerSecond"] or not base["tokensPerSecond"]:
        return "The SpecServe's own policy was not measured against target-only decoding."
    ratio = own["tokensPerSecond"] / base["tokensPerSecond"]
    faster = "faster" if round(ratio, 2) > 1 else "NOT faster"  # as printed: 1.00x is not faster
    same = "identical to" if own.get("identicalToTargetOnly") else "DIFFERENT from"
    return (
        f"{results.get('specServe', 'The SpecServe')} with its own policy ({policy}, k = "
        f"{results['maxSpeculativeTokens']}) decodes at {ratio:.2f}x the tokens/s of target-only decoding: "
        f"{faster}; output {same} target-only."
    )


def table(results: dict[str, Any]) -> str:
    """The benchmark as a plain-text table, then the verdict on the SpecServe's own policy."""
    base = results["policies"].get("never", {}).get("tokensPerSecond")
    lines = [
        f"demo benchmark: {results['prompts']} prompts from builtin://eval, greedy, max {results['maxTokens']} tokens",
        f"{'policy':<12} {'tok/s':>7} {'vs never':>9} {'acceptance':>11} {'speculated':>11} {'same output':>12}",
    ]
    for policy, s in results["policies"].items():
        speedup = f"{s['tokensPerSecond'] / base:.2f}x" if base and s["tokensPerSecond"] else "-"
        acceptance = f"{s['acceptanceRate']:.1%}" if s["acceptanceRate"] is not None else "-"
        speculated = f"{s['speculationRate']:.0%}" if s["speculationRate"] is not None else "-"
        lines.append(
            f"{policy:<12} {s['tokensPerSecond'] or 0:>7.1f} {speedup:>9} {acceptance:>11} {speculated:>11} "
            f"{'yes' if s.get('identicalToTargetOnly') else 'NO':>12}"
        )
    return "\n".join([*lines, verdict(results)])
