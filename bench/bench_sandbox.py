"""Throughput of the code sandbox: fully isolated executions per second.

    python bench/bench_sandbox.py                 # 2 workers, pinned to 2 cores when the machine has more
    python bench/bench_sandbox.py --n 3000 --workers 2 --json

Scenarios (each sample is a fresh solution process from a warm worker's zygote, in its own pid, mount and IPC
namespaces with a fresh /tmp, /dev/shm and /proc, no capabilities, every limit in force; the asserts run in the
worker's separate test process and call the solution over the data-only channel):
  trivial  one function + one passing assert
  typical  a 10-line solution + 5 asserts (list of asserts, partial credit counted)
  stdio    a program + one stdin/stdout pair (compared by the worker)
  program  a program-of-thought solution() (answer returned to the host)
  mix      88% passing, 6% failing asserts, 4% exceptions, 2% early os._exit, plus a few infinite loops
           that each hold a worker for the whole --mix-timeout
The load average is printed before and after: other processes on the machine share the same cores. As root, the
CPU time of the whole sandbox (every process) is also measured with a cgroup-v1 cpuacct group, so that a
per-sample cost and the rate it allows on idle cores can be given even on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

from rewardhub_verifier.sandbox import CodeSandbox

TRIVIAL = ("def f():\n    return 1\n", ["assert f() == 1"])
TYPICAL = (
    "```python\n"
    "def two_sum(nums, target):\n"
    "    seen = {}\n"
    "    for i, x in enumerate(nums):\n"
    "        if target - x in seen:\n"
    "            return [seen[target - x], i]\n"
    "        seen[x] = i\n"
    "    return []\n"
    "```",
    [
        "assert two_sum([2, 7, 11, 15], 9) == [0, 1]",
        "assert two_sum([3, 2, 4], 6) == [1, 2]",
        "assert two_sum([3, 3], 6) == [0, 1]",
        "assert two_sum([1, 2], 7) == []",
        "assert two_sum(list(range(1000)), 1997) == [998, 999]",
    ],
)
STDIO = ("n = int(input())\nprint(sum(range(n)))\n", [{"input": "100\n", "output": "4950\n"}])
PROGRAM = "def solution():\n    eggs = 16 - 3 - 4\n    return eggs * 2\n"
FAILING = ("def f():\n    return 2\n", ["assert f() == 1", "assert f() > 0"])
RAISING = ("def f():\n    return undefined_name\n", ["assert f() == 1"])
EXITING = ("import os\nos._exit(0)\n", ["assert False"])
LOOPING = ("while True:\n    pass\n", ["assert True"])


def mix(n: int, loops: int) -> list[tuple[str, list[str]]]:
    items = []
    for i in range(n - loops):
        r = i % 50
        items.append(FAILING if r < 3 else RAISING if r < 5 else EXITING if r < 6 else TYPICAL)
    step = max(len(items) // max(loops, 1), 1)
    for k in range(loops):
        items.insert(min(k * step, len(items)), LOOPING)
    return items


class CpuMeter:
    """CPU time of this process and all its descendants (cgroup-v1 cpuacct; None where not writable)."""

    def __init__(self) -> None:
        self.path = f"/sys/fs/cgroup/cpuacct/rewardhub_bench_{os.getpid()}"
        try:
            os.mkdir(self.path)
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            self.path = None

    def ms(self) -> float | None:
        if self.path is None:
            return None
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read()) / 1e6

    def close(self) -> None:
        if self.path is not None:
            with open("/sys/fs/cgroup/cpuacct/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
            os.rmdir(self.path)


METER: CpuMeter | None = None


def timed(sb: CodeSandbox, items, program: bool = False) -> tuple[float, Counter, float | None]:
    c0 = METER.ms() if METER else None
    t0 = time.perf_counter()
    results = sb.run_programs(items) if program else sb.run_many(items)
    dt = time.perf_counter() - t0
    cpu = (METER.ms() - c0) / len(items) if METER and c0 is not None else None
    return dt, Counter(f"{r.status.value}/{r.reason}" for r in results), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="samples per scenario")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2, help="pin the whole sandbox to this many cores (0: no pin)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-sample timeout for trivial/typical")
    ap.add_argument("--mix-timeout", type=float, default=1.0, help="per-sample timeout in the mix")
    ap.add_argument("--mix-loops", type=int, default=6, help="infinite loops in the mix")
    ap.add_argument("--repeat", type=int, default=3, help="runs per scenario; the best and median are shown")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with every number")
    args = ap.parse_args()

    global METER
    METER = CpuMeter()
    if args.cores and len(os.sched_getaffinity(0)) > args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])  # inherited by the sandbox
    cores = len(os.sched_getaffinity(0))
    load0 = os.getloadavg()
    report: dict = {"cores": cores, "workers": args.workers, "n": args.n, "loadavg_before": load0}
    print(f"cores={cores} workers={args.workers} n={args.n} python={sys.version.split()[0]} "
          f"loadavg(before)={load0[0]:.2f},{load0[1]:.2f},{load0[2]:.2f}")

    with CodeSandbox(workers=args.workers, timeout_s=args.timeout) as sb:
        print(f"isolation: {sb.isolation}")
        report["isolation"] = sb.isolation
        sb.run_many([TRIVIAL] * 200)  # warm-up
        for name, sample in (("trivial", TRIVIAL), ("typical", TYPICAL), ("stdio", STDIO), ("program", PROGRAM)):
            rates, cpus = [], []
            for _ in range(args.repeat):
                dt, counts, cpu = timed(sb, [sample] * args.n, program=name == "program")
                rates.append(args.n / dt)
                if cpu is not None:
                    cpus.append(cpu)
            rates.sort()
            cpu_ms = round(sorted(cpus)[len(cpus) // 2], 2) if cpus else None
            idle_rate = round(1000 * cores / cpu_ms) if cpu_ms else None
            report[name] = {"best_per_s": round(rates[-1], 1), "median_per_s": round(rates[len(rates) // 2], 1),
                            "cpu_ms_per_sample": cpu_ms, "per_s_if_cores_idle": idle_rate, "outcomes": dict(counts)}
            cpu_text = f"  cpu {cpu_ms:.2f} ms/sample (= {idle_rate}/s on {cores} idle cores)" if cpu_ms else ""
            print(f"{name:8s} best {rates[-1]:7.1f}/s  median {rates[len(rates) // 2]:7.1f}/s{cpu_text}  "
                  f"(timeout {args.timeout:g}s)  {dict(counts)}  load {os.getloadavg()[0]:.2f}")

    with CodeSandbox(workers=args.workers, timeout_s=args.mix_timeout) as sb:
        sb.run_many([TRIVIAL] * 100)
        items = mix(args.n, args.mix_loops)
        dt, counts, _cpu = timed(sb, items)
        floor = args.mix_loops * args.mix_timeout / args.workers
        report["mix"] = {"per_s": round(args.n / dt, 1), "seconds": round(dt, 2), "outcomes": dict(counts),
                         "timeout_s": args.mix_timeout, "loop_seconds_floor": floor}
        print(f"mix      {args.n / dt:7.1f}/s  ({dt:.2f}s; {args.mix_loops} loops x {args.mix_timeout:g}s "
              f"timeout hold workers >= {floor:.1f}s)  {dict(counts)}")
    load1 = os.getloadavg()
    METER.close()
    report["loadavg_after"] = load1
    print(f"loadavg(after)={load1[0]:.2f},{load1[1]:.2f},{load1[2]:.2f}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
