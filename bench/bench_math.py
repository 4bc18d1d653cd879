"""Benchmark the math answer checker (not a test).

Measures checks/s of ``check_answer`` in-process and of ``MathCheckPool`` (2 workers, timeouts in force,
with and without the in-process fast path) over a few hundred generated, labelled cases (GSM8K-style
integers, fractions, LaTeX radicals and pi, symbolic expressions, tuples / sets / intervals, multiple choice,
wrong answers and missing answers), and compares with the ``math-verify`` package when it is installed
(``pip install math-verify``): agreement rate, disagreements, accuracy against the labels, speed ratio.

Run:  python bench/bench_math.py [--n 600] [--workers 2] [--timeout 2.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from rewardhub.rewards import Status
from rewardhub_verifier.math_answer import check_answer, quick_check
from rewardhub_verifier.math_pool import MathCheckPool

Case = tuple[str, str, bool | None, str]  # completion, gold, expected (None: no answer), category


def _wrap(rng: random.Random, answer: str) -> str:
    """A short reasoning text that ends in ``answer`` in one of the common formats."""
    style = rng.randrange(4)
    lead = f"First we compute {rng.randint(2, 99)} + {rng.randint(2, 99)}, then simplify. "
    if style == 0:
        return lead + f"So the final answer is $\\boxed{{{answer}}}$."
    if style == 1:
        return lead + f"Therefore the answer is ${answer}$."
    if style == 2:
        return lead + f"\\[ \\boxed{{{answer}}} \\]"
    return lead + f"Final answer: ${answer}$"


def make_cases(n: int, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []

    def gsm() -> Case:
        v = rng.randint(1, 250_000)
        right = rng.random() < 0.6
        shown = v if right else v + rng.choice([-1, 1, 10, -10, 100])
        text = f"{shown:,}" if rng.random() < 0.4 and shown >= 1000 else str(shown)
        if rng.random() < 0.5:
            comp = f"She earns ${rng.randint(2, 9)} per hour.\n#### {text}"
        else:
            comp = f"So she has {text} apples in total."
        return comp, str(v), right, "gsm8k-int"

    def fraction() -> Case:
        a, b = rng.randint(1, 30), rng.randint(2, 31)
        right = rng.random() < 0.6
        k = rng.randint(2, 5)
        gold = f"\\frac{{{a}}}{{{b}}}"
        if right:
            pred = rng.choice([f"\\frac{{{a * k}}}{{{b * k}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}"])
            if b in (2, 4, 5, 8, 10, 16, 20, 25):
                pred = rng.choice([pred, str(a / b)])
        else:
            pred = f"\\frac{{{a + 1}}}{{{b}}}"
        return _wrap(rng, pred), gold, right, "fraction"

    def radical() -> Case:
        a = rng.randint(1, 999)
        right = rng.random() < 0.6
        forms = [
            (f"\\frac{{{a}\\sqrt{{2}}}}{{2}}", f"\\frac{{{a}}}{{\\sqrt{{2}}}}"),
            (f"{a}\\sqrt{{{3 * 4}}}", f"{2 * a}\\sqrt{{3}}"),
            (f"\\frac{{{a}\\pi}}{{4}}", f"\\frac{{{a}}}{{4}}\\pi"),
            (f"{a}\\pi", f"\\pi \\cdot {a}"),
            (f"\\sqrt{{{a * a}}}", f"{a}"),
        ]
        gold, pred = rng.choice(forms)
        if not right:
            pred = f"{pred} + 1"
        return _wrap(rng, pred), gold, right, "latex-radical/pi"

    def symbolic() -> Case:
        a = rng.randint(1, 999)
        right = rng.random() < 0.6
        gold = f"(x+{a})^2"
        pred = f"x^2+{2 * a}x+{a * a}" if right else f"x^2+{a}x+{a * a}"
        if rng.random() < 0.5:
            gold, pred = f"x^2-{a * a}", f"(x-{a})(x+{a})" if right else f"(x-{a})^2"
        return _wrap(rng, pred), gold, right, "symbolic"

    def structured() -> Case:
        a, b = rng.randint(-999, 9), rng.randint(10, 999)
        kind = rng.randrange(3)
        right = rng.random() < 0.6
        if kind == 0:
            gold = f"({a}, {b})"
            pred = f"\\left({a},{b}\\right)" if right else f"({b}, {a})"
            cat = "tuple"
        elif kind == 1:
            gold = f"\\{{{a}, {b}\\}}"
            pred = f"\\{{{b}, {a}\\}}" if right else f"\\{{{a}, {b + 1}\\}}"
            cat = "set"
        else:
            gold = f"[{a}, {b})"
            pred = f"[{a},{b})" if right else f"({a}, {b})"
            cat = "interval"
        if rng.random() < 0.3:
            gold, pred = "(-\\infty, 3]", ("(-\\infty,3]" if right else "(-\\infty, 3)")
        return _wrap(rng, pred), gold, right, cat

    def choice() -> Case:
        letter = rng.choice("ABCDE")
        right = rng.random() < 0.6
        pred = letter if right else rng.choice([x for x in "ABCDE" if x != letter])
        comp = rng.choice([f"The answer is ({pred}).", f"\\boxed{{{pred}}}", f"Answer: {pred}"])
        return comp, letter, right, "multiple-choice"

    def decimal() -> Case:
        v = round(rng.uniform(0, 100), 2)
        right = rng.random() < 0.6
        pred = f"{v:.2f}" if right else f"{v + 0.5:.2f}"
        return _wrap(rng, f"\\${pred}" if rng.random() < 0.3 else pred), str(v), right, "decimal"

    def missing() -> Case:
        return "I am not sure how to solve this problem.", str(rng.randint(1, 99)), None, "no-answer"

    makers = [
        (gsm, 30),
        (fraction, 15),
        (radical, 15),
        (symbolic, 8),
        (structured, 12),
        (choice, 8),
        (decimal, 8),
        (missing, 4),
    ]
    total = sum(w for _, w in makers)
    for maker, weight in makers:
        for _ in range(max(1, round(n * weight / total))):
            cases.append(maker())
    rng.shuffle(cases)
    return cases


def ours_label(status: Status) -> bool | None:
    return None if status is Status.NO_ANSWER else status is Status.OK


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3, help="timed batches per checker (after one warm-up)")
    ap.add_argument("--show", type=int, default=15, help="disagreements to list")
    args = ap.parse_args()

    cases = make_cases(args.n, args.seed)
    items = [(c, g) for c, g, _, _ in cases]
    labels = [e for _, _, e, _ in cases]
    cats = sorted({c for *_, c in cases})
    print(f"{len(cases)} cases, {os.cpu_count()} CPUs; categories: {', '.join(cats)}")
    rows: list[tuple[str, float, float, str]] = []

    # Timing uses fresh case sets of the same mix (other seeds), so no cache sees an item twice; the first
    # set warms the processes up and is not counted.
    reps = [[(c, g) for c, g, _, _ in make_cases(args.n, args.seed + 1000 + r)] for r in range(args.reps + 1)]

    def rate_over_sets(fn, sets: list[list[tuple[str, str]]] = reps) -> tuple[float, float]:
        """(median seconds per set, items/s over all timed sets); sets[0] is a warm-up."""
        fn(sets[0])
        times = []
        for batch in sets[1:]:
            t0 = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - t0)
        return statistics.median(times), sum(len(b) for b in sets[1:]) / sum(times)

    # 1. in-process, serial (one core, no timeout protection)
    ours = [check_answer(c, g) for c, g in items]
    dt, rate = rate_over_sets(lambda b: [check_answer(c, g) for c, g in b])
    rows.append(("check_answer, in-process, 1 core, no timeout", dt, rate, ""))

    # 2. the pool, timeouts in force, kept warm across batches (as in training)
    for fast in (True, False):
        t0 = time.perf_counter()
        with MathCheckPool(workers=args.workers, timeout_s=args.timeout, fast_path=fast) as pool:
            startup = time.perf_counter() - t0
            verdicts = pool.check_many(items)
            dt, rate = rate_over_sets(pool.check_many)
            stats = pool.stats.as_dict()
        agree = sum(v.status == o.status for v, o in zip(verdicts, ours))
        name = f"MathCheckPool({args.workers} workers, {args.timeout:g}s){' + fast path' if fast else ''}"
        note = (f"start {startup:.2f}s, answered in-process {stats['fast_path']}/{stats['checks']}, "
                f"timeouts {stats['timeouts']}, same verdicts as in-process {agree}/{len(items)}")  # fmt: skip
        rows.append((name, dt, rate, note))

    # 2b. only the items the fast path cannot decide (sympy in the workers)
    # (fresh seeds: the sets above were already seen by this process's caches)
    more = [[(c, g) for c, g, _, _ in make_cases(args.n, args.seed + 2000 + r)] for r in range(args.reps + 1)]
    hard = [[it for it in b if quick_check(*it) is None] for b in more]
    with MathCheckPool(workers=args.workers, timeout_s=args.timeout) as pool:
        dt, rate = rate_over_sets(pool.check_many, hard)
    n_hard = statistics.mean(len(b) for b in hard)
    rows.append(("  same, only the items that need sympy", dt, rate, f"{n_hard:.0f} items per set"))
    dt, rate = rate_over_sets(lambda b: [check_answer(c, g) for c, g in b], hard)
    rows.append(("  check_answer in-process, only those", dt, rate, "1 core, no timeout, after the pool run"))

    acc_ours = sum(ours_label(v.status) == e for v, e in zip(ours, labels)) / len(labels)

    # 3. math-verify, if installed
    mv_rows: list[str] = []
    try:
        from math_verify import LatexExtractionConfig, StringExtractionConfig, parse, verify
    except ImportError:
        mv = None
        mv_rows.append("math-verify not installed (pip install math-verify): comparison skipped")
    else:
        mv = []

        string_cfg = [StringExtractionConfig(strings=tuple("ABCDE")), LatexExtractionConfig()]

        def mv_check(c: str, g: str) -> bool | None:
            if len(g) == 1 and g.isalpha():  # multiple choice: math-verify's string extractor
                gold_p, pred_p = parse(g, string_cfg), parse(c, string_cfg)
            else:
                gold_p, pred_p = parse(f"${g}$"), parse(c)
            return None if not pred_p else bool(verify(gold_p, pred_p))

        mv = [mv_check(c, g) for c, g in items]
        dt_mv, rate_mv = rate_over_sets(lambda b: [mv_check(c, g) for c, g in b])
        rows.append(("math-verify parse+verify, in-process, 1 core", dt_mv, rate_mv, "signal.alarm timeouts"))

    # report
    print()
    print(f"{'checker':<52} {'time (s)':>9} {'checks/s':>10}  notes")
    print("-" * 120)
    for name, dt, rate, note in rows:
        print(f"{name:<52} {dt:>9.3f} {rate:>10.0f}  {note}")
    print()
    print(f"accuracy vs labels: ours {acc_ours:.1%}", end="")
    if mv is not None:
        acc_mv = sum((m if m is not None else None) == e for m, e in zip(mv, labels)) / len(labels)
        print(f", math-verify {acc_mv:.1%}")
        ours_b = [ours_label(v.status) for v in ours]
        # compare correct / not-correct (math-verify does not separate "wrong" from "no answer" reliably)
        agree = [bool(a) == bool(b) for a, b in zip(ours_b, mv)]
        print(f"agreement with math-verify (correct vs not): {sum(agree)}/{len(agree)} = "
              f"{sum(agree) / len(agree):.1%}")  # fmt: skip
        speed_in = rows[0][2] / rows[-1][2]
        speed_pool = max(r[2] for r in rows[1:3]) / rows[-1][2]
        print(f"speed ratio vs math-verify: in-process {speed_in:.1f}x, pool {speed_pool:.1f}x")
        per_cat = {}
        for (_, _, _, cat), a in zip(cases, agree):
            per_cat.setdefault(cat, []).append(a)
        print("agreement by category: " + ", ".join(
            f"{c} {statistics.mean(v):.0%}" for c, v in sorted(per_cat.items())))  # fmt: skip
        dis = [i for i, a in enumerate(agree) if not a]
        if dis:
            print(f"\n{len(dis)} disagreements (first {args.show}):")
            print(f"  {'category':<18} {'label':<6} {'ours':<6} {'m-v':<6} gold | extracted (ours) | completion")
            for i in dis[: args.show]:
                c, g, e, cat = cases[i]
                tail = c if len(c) < 60 else "..." + c[-57:]
                print(f"  {cat:<18} {e!s:<6} {ours_label(ours[i].status)!s:<6} {mv[i]!s:<6} {g} | "
                      f"{ours[i].extracted} | {tail!r}")  # fmt: skip
    else:
        print()
    for line in mv_rows:
        print(line)


if __name__ == "__main__":
    main()
