"""The code sandbox's fast paths keep the isolation and the results of the plain ones.

What the zygote makes once for every solution process (the environment, ``sys.stdin``/``stdout``/``stderr``) must
reach each one fresh and identical; the channel's JSON through json's C parts must give exactly what ``json``
gives. Everything runs for real.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from rewardhub.rewards import Status
from rewardhub_verifier import _sandbox_codec as codec
from rewardhub_verifier._sandbox_untrusted import SOLUTION_ENV
from rewardhub_verifier.sandbox import CodeSandbox


@pytest.fixture(scope="module")
def sb1():
    """One worker: consecutive samples come from the same zygote."""
    with CodeSandbox(workers=1, timeout_s=5.0, memory_mb=256) as sb:
        yield sb


# ------------------------------------------------------------------------------------------ the channel's JSON


def _random_value(rng: random.Random, depth: int = 0):
    kinds = 9 if depth < 4 else 6
    kind = rng.randrange(kinds)
    if kind == 0:
        return rng.randrange(-(10**20), 10**20)
    if kind == 1:
        return rng.random() * 10 ** rng.randrange(-300, 300)
    if kind == 2:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return rng.choice([math.nan, math.inf, -math.inf, -0.0])
    if kind == 5:
        return rng.randrange(-5, 5)
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {str(rng.random()): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return ["l", [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]]


def test_channel_json_is_exactly_jsons():
    rng = random.Random(1234)
    for _ in range(3000):
        value = _random_value(rng)
        text = codec.dumps(value)
        assert text == json.dumps(value, separators=(",", ":"))
        assert repr(codec.loads(text)) == repr(json.loads(text))
        assert repr(codec.loads((text + "\n").encode())) == repr(json.loads((text + "\n").encode()))
    for value in ({1: 2, None: 3, 1.5: 4, False: 5}, "é\ud800", 1.0, -math.inf):
        assert codec.dumps(value) == json.dumps(value, separators=(",", ":"))
    for value in (object(), {(1,): 2}, 10**5000, {1j: 1}):
        with pytest.raises((TypeError, ValueError)):
            json.dumps(value)
        with pytest.raises((TypeError, ValueError)):
            codec.dumps(value)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="Circular"):
        codec.dumps(cyclic)


@pytest.mark.parametrize("line", [
    "", " ", "[1,]", '{"a":1} x', "[1] 2", "-", "0x10", "01", "\ufeff[1]", "[" * 5000 + "]" * 5000,
    '{"a":1}', ' [1, 2.5e3, -0, "x\\u00e9\\ud800", null, NaN, Infinity, -Infinity] \n', '"\\ud83d\\ude00"',
    "1e400", "123456789012345678901234567890", '{"a":1,"a":2}',
])
@pytest.mark.parametrize("encoding", ["str", "utf-8", "utf-16", "utf-8-sig"])
def test_channel_json_accepts_and_refuses_what_json_does(line, encoding):
    data = line if encoding == "str" else line.encode(encoding, "surrogatepass")
    try:
        expected = ("ok", repr(json.loads(data)))
    except (ValueError, RecursionError):
        expected = ("refused",)
    try:
        got = ("ok", repr(codec.loads(data)))
    except codec.CrossingError:
        got = ("refused",)
    assert got == expected


# ------------------------------------------------------------------------------- made once, fresh per sample


def test_environment_is_exactly_the_solutions(sb1):
    # The zygote starts with LD_BIND_NOW (and PATH, LANG); a solution sees only its own environment.
    expected = dict(SOLUTION_ENV)
    code = "import os\nenv = dict(os.environ)\n"
    for _ in range(2):
        r = sb1.run(code, [f"assert env == {expected!r}, env"])
        assert r.status == Status.OK, r.detail


def test_standard_streams_are_fresh_and_work_per_sample(sb1):
    # What one sample leaves in its stdout/stderr buffers (written, never flushed: os._exit) or reads from its
    # stdin must not show up in the next one's.
    leaker = ("import os, sys\nsys.stdout.write('LEAK-OUT')\nsys.stderr.write('LEAK-ERR')\n"
              "sys.stdin.read()\nos._exit(0)\n")
    reader = ("import sys\nfirst = input()\nrest = sys.stdin.read()\nprint(first, len(rest.split()))\n"
              "print('err', file=sys.stderr)\n"
              "print(sys.stdin.seekable(), sys.stdout.seekable(), sys.stdout.line_buffering, "
              "sys.stderr.line_buffering, sys.stdout.encoding)\n")
    items = []
    for i in range(6):
        items.append((leaker, [{"input": "x " * 5000, "output": ""}]))
        items.append((reader, [{"input": f"hello{i}\n" + "w\n" * 3000,
                                "output": f"hello{i} 3000\nFalse False False True UTF-8\n"}]))
    results = sb1.run_many(items)
    for i in range(0, len(results), 2):
        assert results[i].status == Status.OK and results[i].stdout == ""  # buffered, never flushed
        r = results[i + 1]
        assert r.status == Status.OK, r.detail
        assert "LEAK" not in r.stdout and "LEAK" not in r.detail


def test_output_written_by_the_solution_arrives_whole_in_call_mode(sb1):
    code = ("import sys\nprint('before')\nsys.stdout.write('x' * 100000)\n"
            "def f():\n    print('inside f')\n    return 1\n")
    r = sb1.run(code, ["assert f() == 1", "assert f() == 1"])
    assert r.status == Status.OK, r.detail
    assert r.stdout.startswith("before\n" + "x" * 100)


def test_streams_record_what_the_solutions_own_fds_are(sb1):
    # Call mode: stdin is /dev/null (seekable, like open(0) on it would say); stdout and stderr are pipes.
    code = ("import sys\n"
            "state = (sys.stdin.seekable(), sys.stdin.read(), sys.stdout.seekable(), sys.stderr.seekable())\n")
    r = sb1.run(code, ["assert state == (True, '', False, False), state"])
    assert r.status == Status.OK, r.detail


def test_preloaded_modules_are_fresh_per_sample(sb1):
    # The zygote imports common stdlib modules once; what one sample does to them stays in its own process.
    from rewardhub_verifier._sandbox_zygote import PRELOADED_MODULES

    assert "typing" in PRELOADED_MODULES and "math" in PRELOADED_MODULES
    spoiler = ("import math, typing, sys\nmath.pi = 3\ntyping.List = None\nsys.modules.pop('heapq', None)\n"
               "import heapq\nheapq.heappush = None\n")
    checker = ("import math, heapq, sys\nfrom typing import List\n"
               "def f(xs: List[int]) -> int:\n    h = []\n    for x in xs:\n        heapq.heappush(h, x)\n"
               "    return heapq.heappop(h)\npi = math.pi\nloaded = 'typing' in sys.modules\n")
    items = []
    for _ in range(4):
        items.append((spoiler, ["assert math.pi == 3"]))
        items.append((checker, ["assert f([3, 1, 2]) == 1", "assert pi == 3.141592653589793", "assert loaded"]))
    results = sb1.run_many(items)
    for r in results[1::2]:
        assert r.status == Status.OK, r.detail


def test_keyword_arguments_cross_and_their_absence_too(sb1):
    code = "def f(a, b=2, *, c=3, **kw):\n    return [a, b, c, sorted(kw.items())]\n"
    tests = ["assert f(1) == [1, 2, 3, []]", "assert f(1, c=5) == [1, 2, 5, []]",
             "assert f(1, b=[1], z={'k': (1, 2)}) == [1, [1], 3, [('z', {'k': (1, 2)})]]",
             "assert f(**{'a': 0}) == [0, 2, 3, []]"]
    r = sb1.run(code, tests)
    assert r.status == Status.OK, r.detail
