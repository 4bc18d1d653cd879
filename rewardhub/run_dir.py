"""A run directory belongs to one run: its settings on record, one process at a time, nothing mixed or lost.

``OUT/run.json`` records the kind of run (``sft``, ``ppo``, ``dpo``, ``reward-model``, ...), its resolved
config and the versions of the libraries that started it. A rerun into the same ``--out`` resumes only a run
of the same kind started with the same settings; anything else stops *before any model loads*, naming the
fields that differ and the ways out: a new ``--out``, ``--overwrite`` (delete that run, start over) or
``--force-resume`` (continue it with the new values, recorded in ``run.json``). Settings that only decide how
a run is watched (:data:`WATCH_FIELDS`: logging, evaluation and checkpoint frequency, tracker, threads, time
budget) may change on a rerun.

``OUT/.lock`` is an operating-system file lock (``filelock``), released when its process ends however it
ends, so a second process cannot train into a directory in use and a crashed run never leaves a stale lock.
In a distributed run the main process takes it; every process checks the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from rewardhub.errors import RunDirectoryError
from rewardhub.out_dir import check_out_dir

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
#: settings a rerun may change without refusal: they decide how a run is watched, not what it trains
WATCH_FIELDS = frozenset({
    "out", "resume", "overwrite", "force_resume", "log_every", "eval_every", "save_every", "keep_checkpoints",
    "report_to", "threads", "max_time", "completions_every",
})
#: what a run writes into its directory; ``--overwrite`` deletes these and nothing else
RUN_OUTPUTS = (RUN_FILE, "metrics.jsonl", "checkpoints", "completions", "model", "sft-warmup")
#: libraries whose versions are recorded (a resumed run under other versions is warned about)
RECORDED_VERSIONS = ("rewardhub", "torch", "transformers", "accelerate", "peft")

_held: dict[Path, int] = {}  # directories this process has claimed (nested claims of one run are fine)


@contextlib.contextmanager
def claim(cfg: Any) -> Iterator[Path]:
    """Hold ``cfg.out`` for this run: lock it, check (or write) its ``run.json``; refuse a mismatched rerun.

    Nested claims of the same directory in one process (a command's stages) check once, at the outermost.

    Raises:
        RunDirectoryError: the directory is in use, holds another kind of run, or a run started with other
            settings (unless ``cfg.overwrite`` or ``cfg.force_resume`` says what to do).
        ConfigError: ``cfg.out`` is a file or cannot be written.
    """
    out = Path(cfg.out)
    key = out.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield out
        finally:
            _held[key] -= 1
        return
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    main = int(os.environ.get("RANK", "0")) == 0
    lock = _lock(out) if main else None
    _held[key] = 1
    try:
        settle(out, cfg, write=main)
        yield out
    finally:
        _held.pop(key, None)
        if lock is not None:
            lock.release()


def settle(out: Path, cfg: Any, write: bool = True) -> dict[str, Any]:
    """Decide what this run does with ``out`` (start, resume, start over) and record it; the record written.

    Raises :class:`~rewardhub.errors.RunDirectoryError` when the directory holds a run this one must not touch.
    """
    now = record_of(cfg)
    saved, unreadable = read_record(out)
    leftovers = outputs_in(out)
    if cfg.overwrite:
        if write and (saved or unreadable or leftovers):
            held = describe(out, saved)
            _delete_run(out)
            print(f"--overwrite: deleted the previous run in {out} ({held})", flush=True)
        return _write(out, now, write)
    if not leftovers:  # a new run, or one that stopped before it trained or logged anything
        return _write(out, now, write)
    held = describe(out, saved)
    if not cfg.resume:
        raise RunDirectoryError(f"--out {out} holds a run ({held}); --no-resume would overwrite it.\n"
                                f"Ways out: a new --out, or --overwrite to delete that run and start over.")
    if saved is None:
        what = f"run.json cannot be read ({unreadable})" if unreadable else "no run.json records its settings"
        if not cfg.force_resume:
            raise RunDirectoryError(
                f"--out {out} holds {', '.join(leftovers) or 'files'} of a run, but {what}, so whether this command "
                f"may continue it cannot be checked.\nWays out: a new --out; --overwrite to delete that run and start "
                f"over; --force-resume to continue it unchecked.")
        log.warning("--force-resume: continuing the run in %s unchecked (%s)", out, what)
        return _write(out, {**now, "changes": [{"time": now["started"], "unchecked": what}]}, write)
    if saved.get("kind") != now["kind"]:
        raise RunDirectoryError(
            f"--out {out} holds a {saved.get('kind')} run ({held}); this is a {now['kind']} run, which cannot "
            f"continue it.\nWays out: a new --out (e.g. --out runs/{now['kind']}), or --overwrite to delete that run "
            f"and start over.")
    changed = differences(saved.get("config", {}), now["config"])
    if changed and not cfg.force_resume:
        lines = "\n".join(f"  {name}: {_show(then)} then, {_show(value)} now" for name, then, value in changed)
        raise RunDirectoryError(
            f"--out {out} holds a {now['kind']} run started with other settings ({held}):\n{lines}\n"
            f"Ways out: a new --out to start a separate run; --overwrite to delete that run and start over; "
            f"--force-resume to continue it with the new values.")
    record = {**now, "started": saved.get("started", now["started"]), "changes": list(saved.get("changes", []))}
    if changed:
        names = ", ".join(name for name, _, _ in changed)
        log.warning("--force-resume: continuing the run in %s with changed settings: %s", out, names)
        record["changes"].append({"time": now["started"], "fields": {n: [a, b] for n, a, b in changed}})
    for lib, then in saved.get("versions", {}).items():
        if then != now["versions"].get(lib):
            log.warning("the run in %s was started with %s %s; resuming it under %s", out, lib, then,
                        now["versions"].get(lib))
    return _write(out, record, write)


def record_of(cfg: Any) -> dict[str, Any]:
    """What ``run.json`` holds for ``cfg``: kind, config (JSON values), versions, when, which process."""
    return {
        "kind": cfg.run_kind,
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "versions": library_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def library_versions() -> dict[str, str]:
    found = {}
    for lib in RECORDED_VERSIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[lib] = metadata.version(lib)
    return found


def differences(then: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, new value)`` for every setting both configs have, watch-only fields left out."""
    return [(k, then[k], now[k]) for k in now if k in then and k not in WATCH_FIELDS and then[k] != now[k]]


def read_record(out: Path) -> tuple[dict[str, Any] | None, str]:
    """(the saved record or None, why it could not be read or "")."""
    path = out / RUN_FILE
    if not path.exists():
        return None, ""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None, "it holds no config"
    return record, ""


def outputs_in(out: Path) -> list[str]:
    """What of a run's results ``out`` holds: checkpoints, metrics rows, completions, a model.

    ``run.json`` alone (a run that stopped before its model loaded) and ``sft-warmup`` alone (the warm-up stage
    of the run about to start) are nothing to lose.
    """
    found = []
    for name in ("checkpoints", "completions", "model"):
        path = out / name
        if path.is_dir() and any(path.iterdir()):
            found.append(name)
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    return found


def latest_step(out: Path) -> int | None:
    from rewardhub.engine import CHECKPOINT_PREFIX, checkpoint_dirs

    newest = checkpoint_dirs(out)[:1]
    return int(newest[0].name[len(CHECKPOINT_PREFIX):]) if newest else None


def describe(out: Path, record: dict[str, Any] | None) -> str:
    """``started 2026-12-01T15:20:03+0000, last checkpoint step 40 of 100`` (what is known of it)."""
    parts = []
    if record and record.get("started"):
        parts.append(f"started {record['started']}")
    step = latest_step(out)
    total = (record or {}).get("config", {}).get("max_steps")
    if step is None:
        parts.append("no checkpoint yet")
    else:
        parts.append(f"last checkpoint step {step}" + (f" of {total}" if total else ""))
    if (out / "model" / "config.json").exists():
        parts.append(f"model in {out / 'model'}")
    return ", ".join(parts)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _write(out: Path, record: dict[str, Any], write: bool) -> dict[str, Any]:
    if write:
        tmp = out / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out / RUN_FILE)
    return record


def _delete_run(out: Path) -> None:
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _lock(out: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        saved, _ = read_record(out)
        who = f" (pid {saved.get('pid')} on {saved.get('host')}, since {saved.get('started')})" if saved else ""
        raise RunDirectoryError(f"--out {out} is in use by another rewardhub process{who}. Wait for it to finish, "
                                "or pass another --out") from None
    return lock
