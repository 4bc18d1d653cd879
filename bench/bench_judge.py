"""Throughput of the ``judge`` reward: judged samples per second against a judge with a fixed latency.

    python bench/bench_judge.py                        # 64 samples, 0.1 s latency, concurrency 1, 8, 32
    python bench/bench_judge.py --latency 0 --n 512    # the client's own overhead per request
    python bench/bench_judge.py --json

The judge is a stand-in endpoint in a separate process (``--serve``): it waits ``--latency`` seconds, as a
remote model would, and answers ``SCORE: 5``. A real judge's latency depends on its hardware and reply length,
so what this measures is how well the reward hides latency (the ideal is ``concurrency / latency`` requests/s)
and what each request costs on our side. The "floor" line times plain sequential requests with the standard
library's ``http.client``, which shows what the stand-in server and the OS add on a loaded machine. Caching
is off, so every sample is a request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def serve(latency: float) -> None:
    """The stand-in judge: prints its URL, then serves until killed."""
    import asyncio

    from fastapi import FastAPI

    from rewardhub_judge.server import ServerThread

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "bench", "object": "model", "created": 0, "owned_by": "bench"}]}

    @app.post("/v1/chat/completions")
    async def chat():
        await asyncio.sleep(latency)
        return {"id": "b", "object": "chat.completion", "created": 0, "model": "bench",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine.\nSCORE: 5"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}}

    with ServerThread(app) as thread:
        print(thread.url, flush=True)
        while True:
            time.sleep(3600)


def measure(url: str, n: int, concurrency: int, latency: float) -> dict[str, float]:
    from rewardhub.rewards import Sample
    from rewardhub_judge.provider import JudgeReward

    judge = JudgeReward(base_url=url, model="bench", concurrency=concurrency, cache=False)
    try:
        judge([Sample("warm-up", "x")])  # the connection pool is opened outside the timing
        samples = [Sample("What is 2+2?", f"4 (sample {i})") for i in range(n)]
        start = time.perf_counter()
        rewards = judge(samples)
        elapsed = time.perf_counter() - start
    finally:
        judge.close()
    assert all(r.usable for r in rewards), rewards[0]
    share = round(n / elapsed / (concurrency / latency), 3) if latency else None  # ideal: concurrency / latency
    return {"concurrency": concurrency, "n": n, "latency_s": latency, "seconds": round(elapsed, 3),
            "requests_per_s": round(n / elapsed, 1), "share_of_ideal": share}


def floor_ms(url: str, n: int = 20) -> float:
    """Milliseconds per sequential request with the standard library's keep-alive client: the server's floor."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "x"}]})
    path = f"{parts.path}/chat/completions"
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        conn.getresponse().read()
        start = time.perf_counter()
        for _ in range(n):
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            conn.getresponse().read()
        return (time.perf_counter() - start) / n * 1000
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="samples per measurement")
    parser.add_argument("--latency", type=float, default=0.1, help="the stand-in judge's seconds per request")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--latency", str(args.latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        floor = floor_ms(url)
        results = [measure(url, args.n, int(c), args.latency) for c in args.concurrency.split(",")]
    finally:
        server.terminate()
        server.wait(timeout=10)
    if args.json:
        print(json.dumps({"load_avg": os.getloadavg(), "stdlib_sequential_ms": round(floor, 1), "results": results},
                         indent=2))
        return
    print(f"judge throughput, {args.n} samples, stand-in latency {args.latency:g}s, load avg {os.getloadavg()[0]:.2f}")
    print(f"  floor: {floor:.1f} ms per sequential request with http.client (the stand-in and the OS, no judge code)")
    for r in results:
        share = f", {r['share_of_ideal']:.0%} of ideal" if r["share_of_ideal"] is not None else ""
        print(f"  concurrency {r['concurrency']:>3}: {r['seconds']:6.2f}s  {r['requests_per_s']:7.1f} requests/s"
              f"{share}")


if __name__ == "__main__":
    main()
