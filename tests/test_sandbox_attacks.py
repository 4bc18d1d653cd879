"""Hostile solutions against the code verifier: each attack class must earn no pass, with an honest control.

Everything runs for real in the bubblewrap sandbox (no mocks of the sandbox; only "bwrap is not installed" is
simulated, by hiding it from ``shutil.which``). The attacks are the classes a security review found or that the
design must hold against: reading the harness's frames or memory, patching builtins or the stdlib, objects that
compare equal to anything, leftovers in /tmp and /dev/shm, ptrace, signals, forged output, hangs, processes that
outlive their sample, and running without isolation.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
import warnings

import pytest

from rewardhub import Sample, Status
from rewardhub_verifier.sandbox import CodeSandbox, SandboxUnavailable

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(20, 22) == 42"]
WRONG_ADD = "def add(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def sb():
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    with CodeSandbox(workers=2, timeout_s=2.0, memory_mb=256, disk_mb=16) as box:
        assert "sample-ns" in box.isolation, box.isolation
        yield box


@pytest.fixture(scope="module")
def sb1():
    """One worker: consecutive samples are guaranteed to share it."""
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    with CodeSandbox(workers=1, timeout_s=2.0, memory_mb=256, disk_mb=16) as box:
        yield box


def _descendants(root: int) -> dict[int, str]:
    """pid -> comm of every process under ``root``."""
    parent, comm = {}, {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm[int(name)] = stat[stat.index("(") + 1: stat.rindex(")")]
        parent[int(name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, todo = {}, [root]
    while todo:
        here = todo.pop()
        for pid, ppid in parent.items():
            if ppid == here and pid not in found:
                found[pid] = comm[pid]
                todo.append(pid)
    return found


def _no_pass(r, total=None):
    assert r.passed == 0 and r.status is not Status.OK, r
    if total is not None:
        assert r.total == total


def test_honest_controls_pass(sb):
    assert sb.run(ADD, ADD_TESTS).status == Status.OK
    assert sb.run(WRONG_ADD, ADD_TESTS).passed == 0
    assert sb.run(ADD.replace("a + b", "a + b if a > 0 else 7"), ADD_TESTS).passed == 2  # partial credit


# ------------------------------------------------------------------------ the verdict is out of reach


def test_frame_and_memory_inspection_finds_no_tests(sb):
    # Walk every frame and every object of its own process for the test's text or its expected value (built
    # at run time, so that the solution's own source does not contain them), and answer with what it finds.
    code = WRONG_ADD + (
        "import gc, sys\n"
        "def _scan():\n"
        "    head, tail = 'assert ', 'mul('\n"
        "    lo, hi = 987, 654\n"
        "    found = []\n"
        "    f = sys._getframe().f_back\n"
        "    while f is not None:\n"
        "        for v in f.f_locals.values():\n"
        "            if (head + tail) in repr(v) or str(lo) + str(hi) in repr(v):\n"
        "                found.append(v)\n"
        "        f = f.f_back\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, (dict, list, tuple)) and o is not found:\n"
        "            text = repr(o)[:100000]\n"
        "            if (head + tail) in text or (str(lo) + str(hi)) in text:\n"
        "                found.append(text)\n"
        "    return found\n"
        "LEAK = len(_scan())\n"
        "def mul(a, b):\n"
        "    hits = _scan()\n"
        "    return 1 if not hits else int(str(987) + str(654))\n"
    )
    tests = ["assert mul(1, 1) == 987654", "assert LEAK == 0"]
    r = sb.run(code, tests)
    assert r.passed == 1, r  # only LEAK == 0: no test text or expected value is in the solution's memory
    assert "assert mul(1, 1) == 987654" in r.detail
    honest = "def mul(a, b):\n    return a * b * 987654\n"
    assert sb.run(honest, tests[:1]).status == Status.OK


def test_patched_builtins_and_stdlib_stay_in_the_solution(sb):
    code = WRONG_ADD + (
        "import builtins, math, operator, sys\n"
        "builtins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.len = lambda x: 3\n"
        "math.isclose = lambda *a, **k: True\n"
        "operator.eq = lambda a, b: True\n"
        "sys.modules['math'] = type(sys)('math')\n"
        "def area(r):\n"
        "    return 3.0 * r * r\n"
    )
    tests = ["import math\nassert math.isclose(area(1.0), math.pi)", "assert len([]) == 3",
             "assert add(1, 2) == 3", "import operator\nassert operator.eq(area(2), 12.566370614359172)"]
    _no_pass(sb.run(code, tests), 4)
    honest = "import math\ndef area(r):\n    return math.pi * r * r\n"
    assert sb.run(honest, [tests[0], tests[3]]).status == Status.OK


def test_solution_names_cannot_shadow_the_tests_builtins(sb):
    code = WRONG_ADD + (
        "def sorted(x):\n    return [1, 2, 3]\n"
        "def len(x):\n    return 3\n"
        "def isinstance(a, b):\n    return True\n"
        "AssertionError = None\n"
        "abs = 0\n"
        "def perm(xs):\n    return xs\n"
    )
    tests = ["assert sorted(perm([3, 1, 2])) == [1, 2, 3]", "assert sorted(perm([9])) == [1, 2, 3]",
             "assert len(perm([])) == 3", "assert isinstance(perm(1), str)", "assert abs(-1) == 1"]
    r = sb.run(code, tests)
    assert r.passed == 2 and r.total == 5, r  # only the two that are true with the real builtins
    assert sb.run("def sorted(x):\n    return list(x)[::-1]\n", ["assert sorted([1, 2]) == [2, 1]"],
                  entry_point="sorted").status == Status.OK  # the function under test may take a builtin's name


@pytest.mark.parametrize("ret", [
    "AlwaysEqual()",
    "EqInt(5)",
    "EqStr('x')",
    "EqList([1])",
    "EqDict(a=1)",
    "FloatNaNTrick(0.0)",
])
def test_objects_that_claim_equality_do_not_cross(sb, ret):
    code = (
        "class AlwaysEqual:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "    def __bool__(self):\n        return True\n"
        "class EqInt(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "class EqStr(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "class EqList(list):\n    def __eq__(self, other):\n        return True\n"
        "class EqDict(dict):\n    def __eq__(self, other):\n        return True\n"
        "class FloatNaNTrick(float):\n    def __eq__(self, other):\n        return True\n"
        f"def solve(x):\n    return {ret}\n"
    )
    tests = ["assert solve(1) == 42", "assert solve(2) == 'answer'", "assert solve(3) == [1, 2, 3]",
             "assert solve(4) == {'k': 9}"]
    r = sb.run(code, tests)
    _no_pass(r, 4)
    assert "cannot cross the sandbox boundary" in r.detail, r.detail
    assert sb.run("def solve(x):\n    return [42, 'answer', [1, 2, 3], {'k': 9}][x - 1]\n", tests).status == Status.OK


def test_huge_cyclic_and_deep_return_values_fail_cleanly(sb):
    code = (
        "def cyclic():\n    a = []\n    a.append(a)\n    return a\n"
        "def deep():\n    a = []\n    for _ in range(100000):\n        a = [a]\n    return a\n"
        "def huge():\n    return 'x' * (40 * 2**20)\n"
        "def gen():\n    return (i for i in range(3))\n"
        "def fine():\n    return 7\n"
    )
    tests = ["assert fine() == 7", "assert cyclic() == [[]]", "assert deep() is not None",
             "assert list(gen()) == [0, 1, 2]", "assert len(huge()) > 0", "assert fine() == 7"]
    t0 = time.monotonic()
    r = sb.run(code, tests)
    assert time.monotonic() - t0 < 2.0, r  # refused fast, not by the timeout
    # fine() before the oversized answer; after it the channel is closed for this sample
    assert r.passed == 1 and r.status == Status.WRONG, r
    assert "cyclic" in r.detail and "generator cannot cross" in r.detail and "too large" in r.detail, r.detail


def test_values_that_should_cross_do(sb):
    code = ("def echo(x):\n    return x\n"
            "def big():\n    return 7 ** 9000\n"
            "def special():\n    return [float('inf'), -0.0, 1e308, complex(1, -2), b'\\x00\\xff', bytearray(b'a'),"
            " frozenset({1, (2, 3)}), {(1, 2): {3}}, None, True]\n")
    tests = [
        "assert echo((1, [2, {3: 'x'}], {4}, frozenset())) == (1, [2, {3: 'x'}], {4}, frozenset())",
        "assert type(echo((1,))) is tuple and type(echo([1])) is list and type(echo(True)) is bool",
        "assert big() == 7 ** 9000",
        "import math\nv = echo(float('nan'))\nassert math.isnan(v)",
        "assert special() == [float('inf'), -0.0, 1e308, complex(1, -2), b'\\x00\\xff', bytearray(b'a'),"
        " frozenset({1, (2, 3)}), {(1, 2): {3}}, None, True]",
        "import math\nassert math.copysign(1, special()[1]) == -1",
    ]
    r = sb.run(code, tests)
    assert r.status == Status.OK, r.detail


def test_exceptions_cross_as_their_builtin_type_or_by_name(sb):
    code = ("class Custom(Exception):\n    pass\n"
            "def bad(x):\n    if x == 0:\n        raise ValueError('zero')\n"
            "    if x == 1:\n        raise KeyError('k')\n    raise Custom('mine')\n")
    tests = [
        "try:\n    bad(0)\nexcept ValueError as e:\n    assert str(e) == 'zero'\nelse:\n    raise AssertionError",
        "try:\n    bad(1)\nexcept LookupError:\n    pass\nelse:\n    raise AssertionError",
        "try:\n    bad(2)\nexcept Exception as e:\n    assert type(e).__name__ == 'Custom' and 'mine' in str(e)\n",
        "bad(0)",
    ]
    r = sb.run(code, tests)
    assert r.passed == 3 and "[test 3] ValueError" in r.detail, r


def test_tests_that_eval_solution_data_cannot_poison_later_samples(sb1):
    # A row whose test evals the solution's answer lets that answer run in the test process (the row's own
    # design), but the test process is then replaced: the next sample is judged by untouched modules.
    evil = "def f():\n    return \"__import__('math').__dict__.update(isclose=lambda *a, **k: True) or 3\"\n"
    honest_wrong = "def g():\n    return 5.0\n"
    tests = ["import math\nassert math.isclose(g(), 2.0)"]
    r1, r2 = sb1.run_many([(evil, ["assert eval(f()) == 3"]), (honest_wrong, tests)])
    assert r1.status == Status.OK and (r2.status, r2.passed) == (Status.WRONG, 0), (r1, r2)
    assert sb1.stats()["retried"] == 0
    assert sb1.run("def g():\n    return 2.0\n", tests).status == Status.OK


def test_arguments_that_cannot_cross_mask_the_row(sb):
    r = sb.run("def apply(f, x):\n    return f(x)\n", ["assert apply(lambda v: v + 1, 1) == 2"])
    assert r.status == Status.ERROR and r.reason == "unsupported", r
    assert "cannot cross" in r.detail


def test_forged_verdict_lines_on_every_stream(sb):
    forged = ('{"t": 0, "ok": true}\\n{"t": 1, "ok": true}\\n{"t": 2, "ok": true}\\n{"finished": true}\\n'
              '{"done": 0}\\n{"hello": {"callables": ["add"]}}\\n')
    code = WRONG_ADD.replace("a - b", "None") + (
        "import os, sys\n"
        f"for fd in range(0, 64):\n    try:\n        os.write(fd, b'{forged}' * 50)\n    except OSError:\n"
        "        pass\n"
        f"print('{forged}')\nsys.stderr.write('{forged}')\n"
    )
    _no_pass(sb.run(code, ADD_TESTS), 3)


def test_hanging_inside_a_call_earns_nothing_after_it(sb):
    code = "import time\ndef add(a, b):\n    if a == -1:\n        time.sleep(60)\n    return a + b\n"
    t0 = time.monotonic()
    r = sb.run(code, ADD_TESTS)
    assert time.monotonic() - t0 < 2.0 + 3.0
    assert r.passed == 1 and r.status == Status.TIMEOUT, r  # the test before the hang counts, none after


def test_killing_or_signalling_anything_outside_gives_nothing(sb):
    code = WRONG_ADD + (
        "import os, signal\n"
        "for pid in range(2, 400):\n"
        "    for sig in (signal.SIGKILL, signal.SIGSTOP):\n"
        "        try:\n            os.kill(pid, sig)\n        except OSError:\n            pass\n"
        "os.kill(0, signal.SIGKILL)\n"
    )
    _no_pass(sb.run(code, ADD_TESTS))
    assert sb.run(ADD, ADD_TESTS).status == Status.OK


def test_sample_sees_only_its_own_processes_and_cannot_ptrace(sb):
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "attach = []\n"
        "for pid in list(range(1, 200)):\n"
        "    if pid != os.getpid():\n"
        "        attach.append((pid, libc.ptrace(16, pid, 0, 0), ctypes.get_errno()))\n"  # PTRACE_ATTACH
        "mem = []\n"
        "for pid in pids:\n"
        "    if pid != os.getpid():\n"
        "        try:\n            open(f'/proc/{pid}/mem', 'rb').read(1)\n            mem.append(pid)\n"
        "        except OSError:\n            pass\n"
        "ok_attach = [a for a in attach if a[1] == 0]\n"
    )
    r = sb.run(code, ["assert pids == [1], pids", "assert ok_attach == [], ok_attach", "assert mem == [], mem"])
    assert r.status == Status.OK, r.detail


def test_worker_and_test_process_are_not_dumpable(sb):
    # /proc/<pid>/* of a non-dumpable process belongs to root, so the sandbox uid (65534) cannot open its mem,
    # fd or environ, nor ptrace it; the solution's own process (not protected) is the control.
    procs = _descendants(sb.supervisor_pid)
    python = {pid: name for pid, name in procs.items() if name.startswith("python")}
    assert len(python) >= 3, procs  # per worker: the worker, its zygote and its test process
    for pid in python:
        assert os.stat(f"/proc/{pid}/mem").st_uid == 0, (pid, python[pid])
    code = ADD + "import os\nme = os.stat('/proc/self/mem').st_uid\n"
    r = sb.run(code, ["assert me != 0"])
    assert r.status == Status.OK, r.detail


def test_ptrace_of_the_worker_fails_for_real_in_unsafe_local():
    # Without a pid namespace the sample can name its zygote and worker: a real PTRACE_ATTACH must fail.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        box = CodeSandbox(workers=1, timeout_s=2.0, backend="unsafe-local")
    with box:
        # Its zygote (parent), the worker (the zygote's parent) and the worker's other children (the test
        # process): all uid 65534 like the sample, all in its pid namespace here.
        code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "def ppid(p):\n    return int(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1])\n"
                "zygote = os.getppid()\nworker = ppid(zygote)\n"
                "kids = [int(p) for p in os.listdir('/proc') if p.isdigit() and ppid(p) == worker]\n"
                "targets = [zygote, worker, *kids]\n"
                "me = os.getpid()\n"
                "res = {}\n"
                "for pid in set(targets) - {me}:\n"
                "    res[pid] = libc.ptrace(16, pid, 0, 0)\n"
                "attached = [p for p, rc in res.items() if rc == 0]\n"
                "tried = len(res)\n")
        r = box.run(code, ["assert tried >= 3 and attached == [], (tried, attached)"])
        assert r.status == Status.OK, r.detail


# ------------------------------------------------------------------------- samples cannot reach each other


def test_tmp_and_dev_shm_are_fresh_per_sample(sb1):
    writer = ("import os\nfor d in ('/tmp', '/dev/shm', os.getcwd()):\n"
              "    open(os.path.join(d, 'left_by_earlier'), 'w').write('secret')\n"
              "seen = True\n")
    reader = ("import os\nseen = [os.listdir(d) for d in ('/tmp', '/dev/shm', os.getcwd())]\n")
    r1, r2 = sb1.run_many([(writer, ["assert seen"]), (reader, ["assert seen == [[], [], []], seen"])])
    assert r1.status == Status.OK and r2.status == Status.OK, (r1, r2)


def test_filling_dev_shm_hurts_only_that_sample(sb1):
    bomb = ("import os\nn = 0\ntry:\n    with open('/dev/shm/fill', 'wb') as f:\n"
            "        for _ in range(480):\n            f.write(b'x' * 2**20)\n            n += 1\n"
            "except OSError as e:\n    err = str(e)\nelse:\n    err = ''\n")
    results = sb1.run_many([(bomb, ["assert n >= 480, (n, err)"])] + [(ADD, ADD_TESTS)] * 3)
    assert results[0].passed == 0  # the per-sample tmpfs is capped (disk_mb), so the write fails
    assert all(r.status == Status.OK for r in results[1:]), results[1:]


def test_a_process_left_behind_cannot_reach_the_next_sample(sb1):
    lingerer = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(0.5)\n"
                "    for d in ('/tmp', '/dev/shm'):\n        open(d + '/late', 'w').write('x')\n    os._exit(0)\n"
                "done = True\n")
    reader = ("import os, time\ntime.sleep(1.0)\nseen = os.listdir('/tmp') + os.listdir('/dev/shm')\n"
              "procs = [p for p in os.listdir('/proc') if p.isdigit()]\n")
    r1, r2 = sb1.run_many([(lingerer, ["assert done"]), (reader, ["assert seen == [] and procs == ['1'], "
                                                                  "(seen, procs)"])])
    assert r1.status == Status.OK and r2.status == Status.OK, (r1, r2)


def test_sysv_ipc_does_not_persist_between_samples(sb1):
    maker = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "shmid = libc.shmget(0x5eed, 4096, 0o1666)\n")  # IPC_CREAT | 0666
    finder = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "shmid = libc.shmget(0x5eed, 4096, 0o666)\n")
    r1, r2 = sb1.run_many([(maker, ["assert shmid >= 0"]), (finder, ["assert shmid == -1, shmid"])])
    assert r1.status == Status.OK and r2.status == Status.OK, (r1, r2)


def test_host_unix_sockets_are_unreachable(sb, tmp_path):
    name = f"rewardhub_test_{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as abstract, socket.socket(socket.AF_UNIX) as path_sock:
        abstract.bind("\0" + name)
        abstract.listen()
        path = f"/tmp/{name}.sock"
        path_sock.bind(path)
        path_sock.listen()
        try:
            code = ("import socket\ndef reach(addr):\n    try:\n        s = socket.socket(socket.AF_UNIX)\n"
                    "        s.connect(addr)\n        return True\n    except OSError:\n        return False\n")
            r = sb.run(code, [f"assert reach('\\0{name}')", f"assert reach({path!r})"])
            _no_pass(r, 2)
        finally:
            os.unlink(path)


# ---------------------------------------------------------------- environment failures are not the policy's


def test_worker_killed_mid_batch_is_retried_on_a_fresh_worker():
    with CodeSandbox(workers=2, timeout_s=3.0) as box:
        slow = "import time\ntime.sleep(0.4)\n" + ADD
        workers = box.stats()["worker_pids"]
        import threading

        def kill_one():
            time.sleep(0.2)
            os.kill(workers[0], signal.SIGKILL)  # the environment, not any sample, loses a worker

        killer = threading.Thread(target=kill_one)
        killer.start()
        results = box.run_many([(slow, ADD_TESTS)] * 6)
        killer.join()
        assert [r.status for r in results] == [Status.OK] * 6, results
        stats = box.stats()
        assert stats["retried"] >= 1 and stats["restarts"] >= 1, stats


def test_test_process_crash_is_retried_then_counted(sb1):
    # A row whose test code kills its own test process: the sample is retried once, then counted (not masked),
    # and the pool keeps serving.
    r = sb1.run(ADD, ["import os\nos._exit(3)"])
    assert r.status in (Status.WRONG, Status.TIMEOUT) and r.passed == 0, r
    assert sb1.run(ADD, ADD_TESTS).status == Status.OK


# ------------------------------------------------------------------------------------------ fail closed


def test_no_bubblewrap_refuses_with_how_to_install(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name, *a, **k))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as info:
        CodeSandbox(workers=1)
    assert "sandbox=unsafe-local" in str(info.value)
    from rewardhub_verifier.provider import VerifierReward

    provider = VerifierReward(code_timeout_s=2)
    with pytest.raises(SandboxUnavailable, match="refuses to run code"):
        provider([Sample("q", ADD, {"tests": ADD_TESTS})])
    provider.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        unsafe = VerifierReward(code_timeout_s=2, sandbox="unsafe-local")
        rewards = unsafe([Sample("q", ADD, {"tests": ADD_TESTS})])
    assert rewards[0].status is Status.OK and unsafe.isolation.startswith("unsafe-local: ")
    unsafe.close()


def test_bubblewrap_without_sample_namespaces_refuses(monkeypatch):
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    real = CodeSandbox._make_plan

    def without_cap(self, name, interp, drop):
        plan = real(self, name, interp, drop)
        argv = plan.sup_cfg["worker_argv"]
        i = argv.index("--cap-add")
        del argv[i:i + 2]  # as where user namespaces give no capability: the worker cannot make namespaces
        return plan

    monkeypatch.setattr(CodeSandbox, "_make_plan", without_cap)
    with pytest.raises(SandboxUnavailable, match="per-sample namespaces"):
        CodeSandbox(workers=1)
