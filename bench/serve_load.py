"""Load test of `tunewise serve`: N concurrent clients against the embedded model, vs the same requests one at a time.

    .venv/bin/python bench/serve_load.py [--clients 1,4,16] [--requests 32] [--max-tokens 48] [--threads T]
                                         [--url http://HOST:PORT/v1 --key KEY] [--json out.json]
    .venv/bin/python bench/serve_load.py --compare-batching [--requests 32] [--rate 1.0] [--seed 0] [--threads T]

With --compare-batching: the same staggered requests (Poisson arrivals at --rate per second, mixed prompt and
answer lengths, streamed, greedy) against `tunewise serve --batching continuous`, then `--batching static`, each
started fresh; prints completion tokens/s, p50/p95 latency and time to first token per mode, and how many
answers are the same in both.

Without --url it starts `tunewise serve --no-auth` on a free loopback port with the embedded model
(SmolLM2-135M-Instruct, fp32, CPU) in a subprocess, so the clients (asyncio, the official `openai` client) and
the server do not share a Python interpreter. Every level sends the same R requests: the customer messages of
../shared/datasets/banking77/test-small.jsonl (or built-in questions when that folder is absent) after a
support-agent system prompt, greedy, max_tokens fixed. One client is the sequential baseline.

Prints, per level: requests/s, generated tokens/s (completion tokens over wall time), p50/p95 latency, errors,
the throughput ratio against one client, and how many answers equal the sequential ones (batched greedy
decoding should not change an answer; a rare difference is a float rounding tie). Exits 1 when the target is
missed: at the largest level, no failed request and at least 3x the sequential throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77" / "test-small.jsonl"
MODEL = "embedded:smollm2-135m-instruct"
SYSTEM = "You are a support agent at a bank. Answer the customer helpfully in two or three sentences."
FALLBACK = [
    "How long does it take for a refund?",
    "My card was declined at a shop, why?",
    "Can I change my PIN at an ATM?",
    "I was charged twice for one purchase.",
    "How do I top up my account by bank transfer?",
    "Where can I see my exchange rate?",
    "My card has not arrived yet.",
    "Why is there a fee on my cash withdrawal?",
]
TARGET_RATIO = 3.0
POLICY = (
    "Our bank's policy: card payments are usually settled within two working days; refunds go back to the card "
    "they were paid with and can take up to ten working days; transfers between our own accounts are instant; "
    "international transfers may take three to five days and carry a fixed fee plus the exchange margin shown "
    "before you confirm; disputed payments are investigated within fifteen days; cards are blocked at once when "
    "reported lost and a replacement arrives within a week."
)


def questions(n: int) -> list[str]:
    if DATASET.is_file():
        rows = [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]
        found = [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]
    else:
        found = FALLBACK
    return [found[i % len(found)] for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, batching: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "tunewise", "-v", "serve", "--no-auth", "--no-jobs", "--port", str(port),
        "--base", MODEL, "--max-batch-size", str(max(args.clients)), "--queue-size", "256", "--timeout", "900",
    ]  # fmt: skip
    if batching is not None:
        command += ["--batching", batching]
    if args.threads:
        command += ["--threads", str(args.threads)]
    log = open(args.server_log, "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=args.workdir)
    return process, f"http://127.0.0.1:{port}/v1"


async def wait_ready(client, process: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}; see its log")
        try:
            await client.models.list()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer in time") from None
            await asyncio.sleep(0.5)


async def level(client, prompts: list[str], clients: int, max_tokens: int) -> dict:
    """Send every prompt with `clients` concurrent workers (each sends its next request when one returns)."""
    queue: asyncio.Queue = asyncio.Queue()
    for i, prompt in enumerate(prompts):
        queue.put_nowait((i, prompt))
    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []
    answers: dict[int, str] = {}

    async def worker() -> None:
        nonlocal tokens
        while not queue.empty():
            i, prompt = queue.get_nowait()
            started = time.perf_counter()
            try:
                reply = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                    temperature=0,
                    max_tokens=max_tokens,
                )
            except Exception as exc:  # counted, not fatal: the table shows every failure
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)
            tokens += reply.usage.completion_tokens
            answers[i] = reply.choices[0].message.content

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(prompts),
        "ok": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": tokens / wall,
        "completion_tokens": tokens,
        "p50_s": statistics.median(ordered) if ordered else None,
        "p95_s": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] if ordered else None,
        "answers": answers,
    }


def staggered(n: int, rate: float, seed: int) -> list[dict]:
    """n requests: Poisson arrival times at `rate` per second, mixed answer lengths (max_tokens cycling over
    16, 96, 32, 64), every third prompt long (the question after a paragraph of bank policy)."""
    rng = random.Random(seed)
    at = 0.0
    plan = []
    for i, question in enumerate(questions(n)):
        at += rng.expovariate(rate)
        content = (POLICY + "\n\n" + question) if i % 3 == 2 else question
        plan.append({"at": at, "content": content, "max_tokens": (16, 96, 32, 64)[i % 4]})
    return plan


async def arrivals(client, plan: list[dict]) -> dict:
    """Send each request of `plan` at its arrival time, streamed; latency, time to first token, tokens."""
    results: list[dict] = []
    errors: list[str] = []

    async def one(i: int, request: dict, started: float) -> None:
        await asyncio.sleep(max(0.0, started + request["at"] - time.perf_counter()))
        sent = time.perf_counter()
        first = None
        text = []
        usage = None
        try:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": request["content"]},
                ],
                temperature=0,
                max_tokens=request["max_tokens"],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text.append(chunk.choices[0].delta.content)
        except Exception as exc:  # counted, not fatal: the table shows every failure
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        end = time.perf_counter()
        results.append(
            {
                "i": i,
                "latency_s": end - sent,
                "ttft_s": (first or end) - sent,
                "tokens": usage.completion_tokens if usage else 0,
                "text": "".join(text),
            }
        )

    started = time.perf_counter()
    await asyncio.gather(*(one(i, r, started) for i, r in enumerate(plan)))
    wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in results)

    def pct(key: str, q: float) -> float:
        ordered = sorted(r[key] for r in results)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")

    return {
        "ok": len(results),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "p50_s": pct("latency_s", 0.5),
        "p95_s": pct("latency_s", 0.95),
        "ttft_p50_s": pct("ttft_s", 0.5),
        "ttft_p95_s": pct("ttft_s", 0.95),
        "answers": {r["i"]: r["text"] for r in results},
    }


async def compare_batching(args: argparse.Namespace) -> int:
    from openai import AsyncOpenAI

    plan = staggered(args.requests, args.rate, args.seed)
    load = os.getloadavg()
    modes = {}
    for batching in ("continuous", "static"):
        process, url = start_server(args, batching)
        print(f"--batching {batching}: tunewise serve at {url} (log: {args.server_log})", file=sys.stderr)
        client = AsyncOpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=900)
        try:
            await wait_ready(client, process)
            await level(client, questions(2), 1, 8)  # warm-up: first-call allocations
            modes[batching] = await arrivals(client, plan)
        finally:
            await client.close()
            process.terminate()
            process.wait(30)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"{len(plan)} requests, Poisson arrivals at {args.rate:g}/s over {plan[-1]['at']:.1f} s, "
        f"max_tokens 16/96/32/64, every third prompt long"
    )
    print(
        f"{'batching':>10} {'tok/s':>7} {'wall s':>7} {'p50 s':>7} {'p95 s':>7} {'ttft50':>7} {'ttft95':>7} {'errors':>6}"
    )
    for name, r in modes.items():
        print(
            f"{name:>10} {r['tokens_per_s']:>7.1f} {r['wall_s']:>7.1f} {r['p50_s']:>7.2f} {r['p95_s']:>7.2f} "
            f"{r['ttft_p50_s']:>7.2f} {r['ttft_p95_s']:>7.2f} {r['errors']:>6}"
        )
        for e in r["error_examples"]:
            print(f"    error: {e}")
    a, b = modes["continuous"]["answers"], modes["static"]["answers"]
    same = sum(a.get(i) == text for i, text in b.items())
    print(f"same answers in both modes: {same}/{len(plan)}")
    if args.json:
        for r in modes.values():
            r.pop("answers")
        args.json.write_text(json.dumps({"load_average": load, "rate": args.rate, "modes": modes}, indent=2))
    return 0 if all(r["errors"] == 0 for r in modes.values()) else 1


async def run(args: argparse.Namespace) -> int:
    from openai import AsyncOpenAI

    process = None
    url = args.url
    if url is None:
        process, url = start_server(args)
        print(f"started tunewise serve at {url} (log: {args.server_log})", file=sys.stderr)
    client = AsyncOpenAI(base_url=url, api_key=args.key, max_retries=0, timeout=600)
    try:
        await wait_ready(client, process)
        prompts = questions(args.requests)
        await level(client, prompts[:2], 1, args.max_tokens)  # warm-up: first-call allocations
        load = os.getloadavg()
        results = []
        for clients in args.clients:
            print(f"{clients} client(s), {len(prompts)} requests ...", file=sys.stderr)
            results.append(await level(client, prompts, clients, args.max_tokens))
    finally:
        await client.close()
        if process is not None:
            process.terminate()
            process.wait(30)

    base = next((r for r in results if r["clients"] == 1), None)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"{'clients':>7} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} {'errors':>6} {'x seq':>6} {'same':>6}"
    )
    for r in results:
        ratio = r["requests_per_s"] / base["requests_per_s"] if base else float("nan")
        same = sum(base["answers"].get(i) == a for i, a in r["answers"].items()) if base else 0
        r["ratio_vs_sequential"] = ratio
        r["same_answers_as_sequential"] = same
        print(
            f"{r['clients']:>7} {r['requests_per_s']:>7.2f} {r['tokens_per_s']:>7.1f} {r['p50_s']:>7.2f} "
            f"{r['p95_s']:>7.2f} {r['errors']:>6} {ratio:>6.2f} {same:>3}/{r['ok']:<2}"
        )
        for e in r["error_examples"]:
            print(f"    error: {e}")
    top = results[-1]
    passed = top["errors"] == 0 and top["ratio_vs_sequential"] >= TARGET_RATIO
    print(
        f"target ({top['clients']} clients: >= {TARGET_RATIO:g}x sequential, no errors): "
        f"{'met' if passed else 'MISSED'} ({top['ratio_vs_sequential']:.2f}x, {top['errors']} errors)"
    )
    if args.json:
        for r in results:
            r.pop("answers")
        args.json.write_text(json.dumps({"load_average": load, "results": results}, indent=2))
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels (1 first)")
    parser.add_argument("--requests", type=int, default=32, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--key", default="not-needed", help="API key for --url")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--threads", type=int, help="the started server's torch threads (default: one per core)"
    )
    parser.add_argument(
        "--compare-batching",
        action="store_true",
        help="staggered requests against --batching continuous, then static (instead of the client levels)",
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="with --compare-batching: arrivals per second"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="with --compare-batching: the arrival times' seed"
    )
    parser.add_argument("--server-log", default="bench/out/serve_load_server.log")
    parser.add_argument("--workdir", default=None, help="the started server's working directory")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.clients[0] != 1:
        args.clients.insert(0, 1)  # the sequential baseline
    if args.workdir is None:
        import tempfile

        args.workdir = tempfile.mkdtemp(prefix="serve-load-")  # the server's project state goes here
    Path(args.server_log).parent.mkdir(parents=True, exist_ok=True)
    args.server_log = str(Path(args.server_log).resolve())
    if args.compare_batching:
        args.clients = [16]  # the servers' --max-batch-size
        return asyncio.run(compare_batching(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
