"""Cost of the human-feedback store: writes, reads, and the HTTP API, on this machine.

What is measured (one run, wall clock):

- ``add_comparison`` one at a time (one durable transaction each, as the API does per label) and
  ``add_comparisons`` in bulk (one transaction, as ``rewardhub feedback import`` does), in pairs/s;
- ``pairs()`` (DPO's read: group, majority vote, decode) against the peer way to get the same pairs into
  memory, ``datasets`` loading the exported JSONL (what a TRL user does), as a ratio;
- ``ratings_for`` on a 256-sample batch (the ``human`` provider's read per PPO step), in ms;
- ``POST /api/ratings`` through ``rewardhub feedback serve`` (a separate process, access log on, as users run
  it) from 1 and 4 client threads, in requests/s.

Run: ``python bench/bench_feedback.py [--pairs 20000] [--seconds 3] [--dir DIR]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.request import Request, urlopen

from rewardhub_feedback import FeedbackStore


def synthetic_pairs(n: int, offset: int = 0) -> list[dict[str, str]]:
    """Arithmetic-shaped pairs, all distinct: ``a+b=`` with the right and an off-by-one answer."""
    rows = []
    for i in range(offset, offset + n):
        a, b = divmod(i, 1000)
        rows.append({"prompt": f"Compute {a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)})
    return rows


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def bench_store(tmp: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    store = FeedbackStore(tmp / "bench.db")
    single = synthetic_pairs(2000, offset=n)
    _, dt = timed(lambda: [store.add_comparison(r["prompt"], r["chosen"], r["rejected"], "a") for r in single])
    out["add_comparison_single_pairs_per_s"] = len(single) / dt
    result, dt = timed(lambda: store.add_comparisons(synthetic_pairs(n), annotator="a"))
    out["add_comparisons_bulk_pairs_per_s"] = result.added / dt
    pairs, dt = timed(store.pairs)
    out["pairs_read_pairs_per_s"] = len(pairs) / dt
    out["pairs_read_s"] = dt
    store.export_jsonl(tmp / "pairs.jsonl")

    import datasets

    datasets.disable_progress_bars()
    peer, peer_dt = timed(lambda: datasets.load_dataset("json", data_files=str(tmp / "pairs.jsonl"), split="train",
                                                        cache_dir=str(tmp / "hf-cache")).to_list())
    assert len(peer) == len(pairs)
    out["peer_datasets_json_load_s"] = peer_dt
    out["pairs_read_vs_datasets_json_speedup"] = peer_dt / out["pairs_read_s"]

    _, dt = timed(lambda: FeedbackStore(tmp / "imported.db").import_jsonl(tmp / "pairs.jsonl", "a"))
    out["import_jsonl_rows_per_s"] = len(pairs) / dt

    for i, r in enumerate(single[:256]):
        store.add_rating(r["prompt"], r["chosen"], 1 + i % 5, "a")
    keys = [(r["prompt"], r["chosen"]) for r in single[:128]] + [(r["prompt"], "unrated") for r in single[:128]]
    reps = 20
    _, dt = timed(lambda: [store.ratings_for(keys) for _ in range(reps)])
    out["ratings_for_256_samples_ms"] = 1000 * dt / reps
    out["stored_comparisons"] = float(store.stats()["comparisons"])
    store.close()
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_ratings(url: str, seconds: float, worker: int) -> int:
    n, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        body = json.dumps({"prompt": f"p{worker}-{n}", "completion": "c", "score": 1 + n % 5,
                           "annotator": f"w{worker}"}).encode()
        req = Request(f"{url}/api/ratings", body, {"Content-Type": "application/json"})
        with urlopen(req, timeout=10) as resp:
            assert resp.status == 201
        n += 1
    return n


def bench_http(tmp: Path, seconds: float) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "rewardhub.cli.main", "feedback", "serve", "--db",
                               str(tmp / "http.db"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urlopen(f"{url}/api/stats", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        out = {}
        for clients in (1, 4):
            counts = [0] * clients

            def client(w: int, counts: list[int] = counts) -> None:
                counts[w] = post_ratings(url, seconds, w)

            threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[f"http_post_ratings_{clients}_clients_req_per_s"] = sum(counts) / (time.perf_counter() - t0)
        return out
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20000, help="comparisons in the bulk import (default 20000)")
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each HTTP measurement")
    p.add_argument("--dir", default=None, help="where the stores go (default: the system temp directory); "
                   "fsync costs depend on the file system")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        result = {**bench_store(tmp, args.pairs), **bench_http(tmp, args.seconds)}
    print(json.dumps({k: round(v, 3) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
