"""Checking feedback before it is stored: every rule lives here so the store, the HTTP API, the labelling page
and the JSONL import reject the same input with the same message.

A stored label is expensive (a person spent time on it), so bad input is refused *before* a transaction
starts, with a :class:`~rewardhub.errors.DataError` that names the row or field and says what to fix; nothing
already stored is touched.

Texts are plain strings, or (comparisons only) TRL's conversational form: a list of ``{"role", "content"}``
messages. A comparison whose prompt, chosen or rejected is a message list is stored in the ``chat`` format:
each of the three fields as canonical JSON, so equal conversations compare equal in SQL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rewardhub.data import extract_prompt
from rewardhub.errors import DataError

#: Columns of a raw export row that the import maps back to their own store columns (the rest is metadata).
RECORD_KEYS = ("annotator", "created_at", "source", "metadata")
MAX_NAME = 200


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "...'"


def check_unicode(value: str, field: str, where: str) -> str:
    """Refuse a string SQLite cannot store as UTF-8: a lone surrogate (JSON's ``"\\ud800"`` decodes to one)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{where}: `{field}` holds a lone surrogate ({value[exc.start]!r} at character "
                        f"{exc.start}), which is not valid Unicode text; send the text as UTF-8, with any "
                        "character outside the BMP as a complete surrogate pair") from None
    return value


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, Mapping) for m in value)


def check_messages(value: list, field: str, where: str) -> list[dict[str, str]]:
    """A conversational field: non-empty list of ``{"role": str, "content": str}``; returns plain dicts."""
    out = []
    for i, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role.strip() or not isinstance(content, str):
            raise DataError(f"{where}: `{field}` message {i} needs a non-empty string `role` and a string "
                            f"`content`, got {_short(dict(m))}")
        out.append({"role": check_unicode(role, f"{field}[{i}].role", where),
                    "content": check_unicode(content, f"{field}[{i}].content", where)})
    return out


def check_text(value: Any, field: str, where: str, *, allow_empty: bool = False, allow_chat: bool = False):
    """A prompt or completion: a string with visible content (or, with ``allow_chat``, a message list)."""
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(f"{where}: `{field}` is empty; give the text that was shown to the annotator")
        return check_unicode(value, field, where)
    if allow_chat and is_messages(value):
        return check_messages(value, field, where)
    kind = "a string or a list of {role, content} messages" if allow_chat else "a string"
    raise DataError(f"{where}: `{field}` must be {kind}, got {type(value).__name__} {_short(value)}")


def check_name(value: Any, field: str, where: str) -> str:
    """An annotator or source tag: a short string ("" = anonymous / unspecified)."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_NAME or "\n" in value:
        raise DataError(f"{where}: `{field}` must be a one-line string of at most {MAX_NAME} characters, "
                        f"got {_short(value)}")
    return check_unicode(value, field, where).strip()


def check_metadata(value: Any, where: str) -> str | None:
    """Optional metadata: a JSON object, stored as canonical JSON text."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: `metadata` must be a JSON object, got {type(value).__name__}")
    try:
        text = json.dumps(dict(value), sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: `metadata` is not JSON-serialisable ({exc})") from None
    return check_unicode(text, "metadata", where)


def check_score(value: Any, scale: tuple[float, float], where: str) -> float:
    """A rating on the store's scale ``[min, max]`` (inclusive); numeric strings (form posts) are accepted."""
    lo, hi = scale
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise DataError(f"{where}: `score` {value!r} is not a number; rate on the scale {lo:g}..{hi:g}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: `score` must be a number on the scale {lo:g}..{hi:g}, got {_short(value)}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise DataError(f"{where}: `score` {value!r} is outside this store's rating scale {lo:g}..{hi:g}; "
                        "rate within the scale (it is fixed when the store is created)")
    return float(value)


def check_scale(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise DataError(f"the rating scale needs finite min_score < max_score, got {lo!r}..{hi!r}")
    return float(lo), float(hi)


def encode_pair(prompt: Any, chosen: Any, rejected: Any, where: str) -> tuple[str, str, str, str]:
    """Validate one comparison and return ``(format, prompt, chosen, rejected)`` as stored.

    Raises DataError for an empty field, a wrong type, or chosen == rejected (a tie or a self-pair carries
    no preference: DPO would learn nothing from it and reject it anyway).
    """
    p = check_text(prompt, "prompt", where, allow_chat=True)
    c = check_text(chosen, "chosen", where, allow_chat=True)
    r = check_text(rejected, "rejected", where, allow_chat=True)
    if c == r:
        raise DataError(f"{where}: chosen and rejected are the same text ({_short(c)}); a tie or self-pair "
                        "carries no preference. Store only pairs where one reply was preferred")
    if isinstance(p, str) and isinstance(c, str) and isinstance(r, str):
        return "text", p, c, r
    if not isinstance(p, list):
        raise DataError(f"{where}: chosen/rejected are message lists but the prompt is a string; give the "
                        "prompt as a message list too (TRL's conversational format)")
    return "chat", *(json.dumps(v, sort_keys=True, ensure_ascii=False) for v in (p, c, r))


def decode_field(fmt: str, value: str):
    """Inverse of :func:`encode_pair` for one field."""
    return json.loads(value) if fmt == "chat" else value


def comparison_from_row(row: Any, where: str, annotator: str, source: str) -> dict[str, Any]:
    """A preference row (TRL format, or a raw export row) -> the store's column values, validated.

    Known columns: prompt, chosen, rejected; from a raw export also annotator, created_at, source, metadata.
    Any other column (``answer``, ``margin``, ...) is kept in metadata so an export gives it back.
    """
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected a JSON object with prompt/chosen/rejected, got {type(row).__name__}")
    if "prompt" in row and row["prompt"] is not None:
        prompt, chosen, rejected = row["prompt"], row.get("chosen"), row.get("rejected")
    else:
        # TRL's implicit prompt: the text (or leading messages) chosen and rejected share, as the core extracts it
        prompt, chosen, rejected = extract_prompt(row.get("chosen"), row.get("rejected"), where)
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise DataError(f"{where}: `{key}` is missing; the row has {sorted(row)}")
    fmt, p, c, r = encode_pair(prompt, chosen, rejected, where)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", *RECORD_KEYS)}
    meta = row.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        raise DataError(f"{where}: `metadata` must be a JSON object, got {type(meta).__name__}")
    merged = {**extra, **(meta or {})} or None
    created = row.get("created_at")
    if created is not None and (isinstance(created, bool) or not isinstance(created, (int, float))):
        raise DataError(f"{where}: `created_at` must be a unix time in seconds, got {_short(created)}")
    own_annotator, own_source = row.get("annotator"), row.get("source")
    return {"format": fmt, "prompt": p, "chosen": c, "rejected": r,
            "annotator": check_name(annotator if own_annotator is None else own_annotator, "annotator", where),
            "source": check_name(source if own_source is None else own_source, "source", where),
            "metadata": check_metadata(merged, where), "created_at": created}


# -- a raw export's records (``rewardhub feedback export --raw``) -------------------------------------------

OUTCOMES = ("preferred", "tie", "both_bad")
_COMMON = {"record", "id", "annotator", "created_at", "source", "metadata"}
RAW_FIELDS = {
    "store": {"record", "schema_version", "min_score", "max_score"},
    "comparison": _COMMON | {"outcome", "prompt", "chosen", "rejected", "completion_a", "completion_b"},
    "rating": _COMMON | {"prompt", "completion", "score"},
    "queue": _COMMON | {"kind", "prompt", "completions", "status", "labels", "required"},
}


def _int(row: Mapping, key: str, where: str, low: int, default: Any = ...) -> Any:
    value = row.get(key, default)
    if value is ... or isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DataError(f"{where}: `{key}` must be an integer >= {low}, got {_short(value)}")
    return value


def _common(row: Mapping, where: str) -> dict[str, Any]:
    row_id = row.get("id")
    if row_id is not None:
        _int(row, "id", where, 1)
    created = row.get("created_at")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        raise DataError(f"{where}: `created_at` must be a unix time in seconds, got {_short(created)}")
    meta = row.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        raise DataError(f"{where}: `metadata` must be a JSON object, got {type(meta).__name__}")
    return {"id": row_id, "created_at": float(created),
            "annotator": check_name(row.get("annotator"), "annotator", where),
            "source": check_name(row.get("source"), "source", where), "metadata": check_metadata(meta, where)}


def raw_record(row: Mapping, where: str, scale: tuple[float, float]) -> tuple[str, dict[str, Any]]:
    """One row of a raw export -> (record kind, the store's column values), validated like a live write."""
    kind = row.get("record")
    if kind not in RAW_FIELDS:
        raise DataError(f"{where}: `record` must be one of {', '.join(RAW_FIELDS)} (a raw export's rows), got "
                        f"{_short(kind)}")
    unknown = sorted(set(row) - RAW_FIELDS[kind])
    if unknown:
        raise DataError(f"{where}: a raw {kind} record has no field(s) {', '.join(unknown)}; expected "
                        f"{', '.join(sorted(RAW_FIELDS[kind]))}")
    if kind == "store":
        lo, hi = row.get("min_score"), row.get("max_score")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            raise DataError(f"{where}: the store header needs numeric min_score and max_score")
        return kind, {"min_score": float(lo), "max_score": float(hi)}
    out = _common(row, where)
    if kind == "comparison":
        outcome = row.get("outcome", "preferred")
        if outcome not in OUTCOMES:
            raise DataError(f"{where}: `outcome` must be one of {', '.join(OUTCOMES)}, got {_short(outcome)}")
        first, second = ("chosen", "rejected") if outcome == "preferred" else ("completion_a", "completion_b")
        if row.get(first) is None or row.get(second) is None:
            raise DataError(f"{where}: a comparison with outcome {outcome} needs `{first}` and `{second}`")
        fmt, p, a, b = encode_pair(row.get("prompt"), row[first], row[second], where)
        return kind, {**out, "format": fmt, "prompt": p, "chosen": a, "rejected": b, "outcome": outcome}
    prompt = check_text(row.get("prompt"), "prompt", where)
    if kind == "rating":
        return kind, {**out, "prompt": prompt, "score": check_score(row.get("score"), scale, where),
                      "completion": check_text(row.get("completion"), "completion", where, allow_empty=True)}
    completions = row.get("completions")
    q_kind = row.get("kind")
    want = {"rating": 1, "comparison": 2}.get(q_kind)
    if want is None or not isinstance(completions, list) or len(completions) != want:
        raise DataError(f"{where}: a queue record needs `kind` rating (one completion) or comparison (two), "
                        f"with `completions` to match; got kind {_short(q_kind)}, completions {_short(completions)}")
    texts = [check_text(c, f"completions[{i}]", where, allow_empty=want == 1) for i, c in enumerate(completions)]
    if want == 2 and texts[0] == texts[1]:
        raise DataError(f"{where}: the two completions are identical; there is nothing to compare")
    status = row.get("status")
    if status not in ("open", "done"):
        raise DataError(f"{where}: `status` must be open or done, got {_short(status)}")
    return kind, {**out, "kind": q_kind, "prompt": prompt, "completion_a": texts[0],
                  "completion_b": texts[1] if want == 2 else "", "status": status,
                  "labels": _int(row, "labels", where, 0), "required": _int(row, "required", where, 1)}
