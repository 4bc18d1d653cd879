"""Reading data files with errors that name the file and the line: one helper for every JSONL reader.

:func:`read_jsonl` is what ``rewardhub.data`` uses to explain why a file did not load (and what ``score``
reads JSONL with, to score the good rows of a file that has bad ones); the feedback plugin's ``import``
reads with it too. Messages look like ``x.jsonl line 7: not valid JSON: Expecting ',' delimiter (column 12)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardhub.errors import DataError

#: Bytes read at a time when looking for the first non-blank byte of a file.
_CHUNK = 1 << 16


@dataclass
class JsonlLines:
    """The lines of a JSONL file: ``rows`` as (line number, value) and ``problems`` as (line number, message)."""

    path: Path
    rows: list[tuple[int, Any]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)

    def messages(self) -> list[str]:
        return [f"{self.path.name} line {n}: {problem}" for n, problem in self.problems]

    def raise_problems(self, limit: int = 10) -> None:
        """DataError listing the first ``limit`` bad lines (does nothing when there are none)."""
        if not self.problems:
            return
        shown = self.messages()[:limit]
        more = f"\n  (and {len(self.problems) - limit} more)" if len(self.problems) > limit else ""
        if len(shown) == 1:
            raise DataError(f"{shown[0]}; fix or remove that line")
        raise DataError(f"{self.path} has {len(self.problems)} bad lines; fix or remove them:\n  - "
                        + "\n  - ".join(shown) + more)


def is_blank_file(path: str | Path) -> bool:
    """Whether ``path`` holds nothing but whitespace (0 bytes included); reads only up to the first non-blank byte."""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            if chunk.strip():
                return False
    return True


def check_utf8(path: str | Path) -> None:
    """DataError naming the byte offset, line and column of the first byte that is not UTF-8 (streams the file)."""
    path = Path(path)
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(not_utf8_message(path, exc, offset, n)) from None
            offset += len(raw)


def not_utf8_message(path: Path, exc: UnicodeDecodeError, line_offset: int = 0, line: int | None = None) -> str:
    """``x.csv is not UTF-8: byte 0xe9 at offset 3 (line 1, column 4) ...; re-encode it ...``."""
    bad = exc.object[exc.start:exc.start + 1].hex()
    where = f"offset {line_offset + exc.start}"
    if line is not None:
        where += f" (line {line}, column {exc.start + 1})"
    return (f"{path} is not UTF-8: byte 0x{bad} at {where} cannot be decoded ({exc.reason}). Re-encode the file as "
            f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}` (latin1 is a guess; use "
            "the encoding the file was written in)")


def read_jsonl(path: str | Path) -> JsonlLines:
    """Parse every non-blank line of a JSONL file; a line that is not JSON becomes a problem, not an exception.

    A string holding a lone surrogate (``"\\ud800"``: valid JSON, but not Unicode, so Arrow and UTF-8 writers
    refuse it) is a problem of its line too. Raises DataError (with the offset) for a file that is not UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        exc = UnicodeDecodeError(exc.encoding, data[start:], exc.start - start, exc.end - start, exc.reason)
        raise DataError(not_utf8_message(path, exc, start, line)) from None
    out = JsonlLines(path)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            out.problems.append((n, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        surrogate = find_lone_surrogate(value)
        if surrogate is not None:
            out.problems.append((n, f"{surrogate} holds a lone surrogate (an unpaired \\ud800-\\udfff escape), "
                                    "which is not valid Unicode"))
            continue
        out.rows.append((n, value))
    return out


def find_lone_surrogate(value: Any, where: str = "a string") -> str | None:
    """Where in a parsed JSON value a string holds a lone surrogate (``"`prompt`"``), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = find_lone_surrogate(k, "a key") or find_lone_surrogate(v, f"`{k}`")
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = find_lone_surrogate(v, where)
            if found:
                return found
    return None


def column_type_problem(lines: JsonlLines) -> str | None:
    """``x.jsonl line 5: `completion` is a number, but line 1 has a string ...`` for the first row whose
    column changes JSON type (Arrow needs one type per column), or None."""
    first: dict[str, tuple[str, int]] = {}
    for n, row in lines.rows:
        if not isinstance(row, dict):
            return f"{lines.path.name} line {n}: a row must be a JSON object, got {_json_type(row)}"
        for key, value in row.items():
            kind = _json_type(value)
            if kind == "null":
                continue
            seen = first.setdefault(key, (kind, n))
            if seen[0] != kind and {seen[0], kind} != {"an integer", "a float"}:
                return (f"{lines.path.name} line {n}: `{key}` is {kind}, but line {seen[1]} has {seen[0]}; every row "
                        "must give a column the same type")
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
