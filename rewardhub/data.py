"""Loading rows: files, directories, hub ids and registered tasks, in TRL's dataset formats unchanged.

Formats (columns):

- ``prompt``: prompt-only (RL); ``prompt`` + ``completion``: SFT; ``prompt`` + ``chosen`` + ``rejected``:
  preferences; ``messages``: conversational, rendered with the tokenizer's chat template; ``text``: plain LM;
  ``prompt`` + ``completion`` + a boolean ``label``: unpaired preferences (KTO), recognised so that DPO can
  refuse it by name (no recipe trains on it).
- ``chosen`` + ``rejected`` without ``prompt``: preferences with an *implicit prompt*, the text (or the leading
  messages) both replies share. :func:`with_explicit_prompts` turns such rows into prompt/chosen/rejected rows,
  as TRL's ``maybe_extract_prompt`` does; every reader of preference data (DPO, reward-model training and its
  eval/calibration data, ``feedback import``) applies it.
- A prompt or completion may be a string (standard) or a list of ``{"role", "content"}`` messages
  (conversational).

A row that lacks a needed column fails with the row index and the columns it has.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardhub.data_files import check_utf8, column_type_problem, find_lone_surrogate, is_blank_file, read_jsonl
from rewardhub.errors import DataError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FORMATS = {
    "preference": ("prompt", "chosen", "rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "prompt": ("prompt",),
    "text": ("text",),
}
#: what each format is called in messages
FORMAT_NAMES = {
    "preference": "the preference format",
    "implicit_preference": "the preference format with an implicit prompt",
    "unpaired_preference": "the unpaired (KTO) format",
    "prompt_completion": "the prompt-completion (SFT) format",
    "messages": "the conversational (messages) format",
    "prompt": "the prompt-only format",
    "text": "the plain-text (language modelling) format",
}


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``"arithmetic:test"`` -> ("arithmetic", "test"); a path or hub id without a split -> (spec, None)."""
    if os.path.exists(spec):
        return spec, None
    name, sep, split = spec.rpartition(":")
    if sep and name and split and "/" not in split:
        return name, split
    return spec, None


def load_rows(spec: str, split: str | None = None, task_args: Mapping[str, Any] | None = None,
              column_map: Mapping[str, str] | None = None, registry=None):
    """Load a dataset from a task name, a file, a directory or a hub id, and apply ``column_map``.

    Args:
        spec: ``arithmetic`` / ``arithmetic:test`` (a registered task), ``data.jsonl`` (jsonl, json, parquet,
            csv), a directory (``save_to_disk`` output or data files), or a hub dataset id (``org/name``).
        split: the split to load when ``spec`` names none (default: ``train``).
        task_args: options for a task's builder (``--data-arg``); an error for non-task data.
        column_map: ``{"question": "prompt"}`` renames source columns to the names rewardhub expects.

    Returns:
        A ``datasets.Dataset``.
    """

    from rewardhub.options import bind_options
    from rewardhub.plugins import build_registry

    name, spec_split = parse_data_spec(spec)
    split = spec_split or split or "train"
    registry = registry or build_registry()
    if name in registry.entries["task"]:
        task = registry.get("task", name).obj
        if split not in task.splits:
            raise DataError(f"task {name!r} has splits {', '.join(task.splits)}; got {split!r}")
        options = bind_options(task.build, dict(task_args or {}), f"task {name!r}")
        options.pop("split", None)
        ds = task.build(split=split, **options)
    else:
        if task_args:
            raise DataError(f"--data-arg is only for registered tasks; {spec!r} is not one "
                            f"(tasks: {', '.join(registry.names('task')) or 'none'})")
        ds = _load_source(name, split)
    return rename_columns(ds, column_map or {})


def _load_source(spec: str, split: str):
    import datasets

    datasets.disable_progress_bars()  # "Generating train split: ..." on every load is noise in a run's output
    path = Path(spec)
    try:
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{spec}: unsupported file type {path.suffix!r}; use one of "
                                f"{', '.join(FILE_BUILDERS)}")
            return _load_file(path, builder)
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
                loaded = datasets.load_from_disk(str(path))
                return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
            return datasets.load_dataset(str(path), split=split)
        if spec.startswith((".", "/", "~")) or spec.endswith(tuple(FILE_BUILDERS)):
            raise DataError(f"data file or directory {spec!r} does not exist")
        _check_hub_dataset(spec)
        return datasets.load_dataset(spec, split=split)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot load data {spec!r} (split {split!r}): {type(exc).__name__}: {exc}. Give a registered task "
            "(see `rewardhub plugins`), a .jsonl/.json/.parquet/.csv file, a directory, or a reachable hub id."
        ) from exc


def _load_file(path: Path, builder: str):
    """One data file through ``datasets``; an empty file, a bad line or bytes that are not UTF-8 are named."""
    import datasets

    try:
        empty = path.stat().st_size == 0 if builder == "parquet" else is_blank_file(path)
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    if empty:
        raise DataError(f"data file {path} is empty; it needs one row per line (.jsonl), a list of rows (.json), "
                        "a header and rows (.csv) or a table (.parquet)")
    if builder != "parquet":
        check_utf8(path)  # Arrow's JSON reader keeps bad bytes and fails only when a row is read
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        explain_file_error(path)  # raises a DataError naming the line when it finds the problem
        if "corresponds to no data" in str(exc):
            raise DataError(f"data file {path} has no rows") from None
        raise DataError(f"cannot load data file {path}: {type(exc).__name__}: {exc}") from exc
    if len(ds) == 0:
        raise DataError(f"data file {path} has no rows")
    return ds


def explain_file_error(path: str | Path) -> None:
    """Find why a data file did not load and raise a DataError that names the line; return when none is found.

    Checks, in order: bytes that are not UTF-8 (with the offset), JSON that does not parse or strings with a
    lone surrogate (with the line), and a column whose JSON type changes between rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return
    check_utf8(path)
    if suffix == ".csv":
        return
    if suffix == ".json" and path.read_text(encoding="utf-8-sig").lstrip().startswith("["):
        _explain_json_document(path)
        return
    lines = read_jsonl(path)
    lines.raise_problems()
    problem = column_type_problem(lines)
    if problem:
        raise DataError(problem)


def _explain_json_document(path: Path) -> None:
    import json

    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name} line {exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    for i, row in enumerate(rows):
        where = find_lone_surrogate(row)
        if where:
            raise DataError(f"{path.name} row {i}: {where} holds a lone surrogate (an unpaired \\ud800-\\udfff "
                            "escape), which is not valid Unicode; fix or remove that row")


def _check_hub_dataset(spec: str) -> None:
    """Fail in seconds, not after retries, when a hub dataset id cannot be fetched (offline / unreachable)."""
    from rewardhub import hub

    status, detail = hub.probe(spec, "dataset")
    todo = (f"Pass a local .jsonl/.json/.parquet/.csv file or directory, or download the dataset first where the "
            f"network is reachable (`hf download {spec} --repo-type dataset --local-dir DIR`, then --data DIR)")
    if status == hub.OFFLINE:
        import datasets

        if not _dataset_cached(spec, datasets):
            raise DataError(f"cannot load data {spec!r}: it is not a local file or directory and was not found in "
                            f"the local Hugging Face cache, and {detail} is set (no downloads). {todo}.")
    elif status == hub.UNREACHABLE:
        raise DataError(f"cannot load data {spec!r}: it is not a local file or directory, and the Hub cannot be "
                        f"reached ({detail}). {todo}; if it is in your cache already, set HF_HUB_OFFLINE=1.")
    elif status == hub.MISSING:
        raise DataError(f"cannot load data {spec!r}: it is not a registered task, a local file or directory, and "
                        "the Hub has no such dataset (check the spelling; see `rewardhub plugins` for tasks; a "
                        "private dataset needs `hf auth login`)")


def _dataset_cached(spec: str, datasets) -> bool:
    """Whether ``datasets`` has something cached for ``spec`` (its own cache or the hub's)."""
    from rewardhub import hub

    if hub.in_cache(spec, "README.md", "dataset"):
        return True
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    return any(cache.glob(spec.replace("/", "___") + "*")) if cache.is_dir() else False


def rename_columns(ds, column_map: Mapping[str, str]):
    missing = [src for src in column_map if src not in ds.column_names]
    if missing:
        raise DataError(f"--column-map names columns {missing} that the data lacks; columns: {ds.column_names}")
    clashes = [dst for src, dst in column_map.items() if dst in ds.column_names and dst not in column_map]
    if clashes:
        raise DataError(f"--column-map would overwrite existing columns {clashes}; drop or rename them first")
    return ds.rename_columns(dict(column_map)) if column_map else ds


def detect_format(columns: Sequence[str], rows=None) -> str:
    """The TRL format named by a dataset's columns (first match in :data:`FORMATS` order).

    With ``rows`` (the dataset), ``prompt`` + ``completion`` + ``label`` is the unpaired (KTO) format only when
    the labels are boolean-ish (True/False, 1/0, "true"/"false"); another ``label`` is just an extra column.
    """
    fmt = find_format(columns, rows)
    if fmt is not None:
        return fmt
    raise DataError(
        f"cannot tell the data format from columns {list(columns)}; expected one of: "
        + "; ".join(f"{fmt} ({' + '.join(cols)})" for fmt, cols in FORMATS.items())
        + ". Rename columns with --column-map src=dst."
    )


def find_format(columns: Sequence[str], rows=None) -> str | None:
    """:func:`detect_format`, or None when no format matches."""
    for fmt, needed in FORMATS.items():
        if all(c in columns for c in needed):
            if fmt == "unpaired_preference" and rows is not None and not _boolean_labels(rows):
                continue
            return fmt
    return None


def describe_format(fmt: str) -> str:
    """``the unpaired (KTO) format (prompt, completion, label)``: a format's name and its columns."""
    return f"{FORMAT_NAMES[fmt]} ({', '.join(FORMATS[fmt])})"


def _boolean_labels(rows, sample: int = 100) -> bool:
    """Whether the first ``sample`` labels are all boolean-ish: True/False, 1/0, "true"/"false"."""
    def boolean(v: Any) -> bool:
        if isinstance(v, bool):
            return True
        if isinstance(v, (int, float)):
            return v in (0, 1)
        return isinstance(v, str) and v.strip().lower() in ("true", "false", "0", "1")

    return all(boolean(v) for v in rows.select_columns(["label"])[:sample]["label"])


def require_columns(ds, needed: Sequence[str], purpose: str, non_empty: bool = False) -> None:
    """Fail with the first row that lacks a needed column (or, with ``non_empty``, has it empty).

    The message names the row index and the columns that row does have.
    """
    absent = [c for c in needed if c not in ds.column_names]
    if absent:
        raise DataError(f"{purpose} needs columns {list(needed)}; the data has {ds.column_names} "
                        f"(missing {absent}). Rename with --column-map src=dst.")
    for i, row in enumerate(ds.select_columns(list(needed))):
        empty = [c for c in needed
                 if row[c] is None or (non_empty and isinstance(row[c], (str, list)) and len(row[c]) == 0)]
        if empty:
            present = [k for k, v in ds[i].items() if v is not None]
            raise DataError(f"row {i} lacks {empty} needed for {purpose}; that row has columns {present}")


#: what the user is told when implicit prompts were extracted
IMPLICIT_PROMPT_NOTE = "chosen/rejected with an implicit prompt: extracted as the longest common prefix"


def has_implicit_prompt(columns: Sequence[str]) -> bool:
    """Whether data with these columns is preference data whose prompt is implicit (chosen/rejected, no prompt)."""
    return "chosen" in columns and "rejected" in columns and "prompt" not in columns


def extract_prompt(chosen: Any, rejected: Any, where: str = "row") -> tuple[Any, Any, Any]:
    """``(prompt, chosen, rejected)`` of a preference row whose prompt is implicit in both replies.

    Conversational (message lists): the prompt is the longest run of leading messages the two share, leaving
    each reply at least one message; this is TRL's ``extract_prompt``. Standard (strings): the longest common
    prefix, cut back to the last whitespace where both replies go on, the whitespace going with the replies
    (``"The sky is blue."`` / ``"The sky is green."`` -> ``"The sky is"``, ``" blue."``, ``" green."``, as in
    TRL's docs). TRL cuts strings character by character, so that ``"... is blue"`` / ``"... is black"``
    would give the prompt ``"... is b"``; cutting at a word boundary keeps words whole.

    Raises:
        DataError: naming ``where``, when a reply is missing, the two are of different kinds, or they share
            no leading message (conversational) or no leading words (standard) to take as the prompt.
    """
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise DataError(f"{where}: `{key}` is missing; a preference row needs chosen and rejected")
    if is_conversational(chosen) and is_conversational(rejected):
        n, last = 0, min(len(chosen), len(rejected)) - 1
        while n < last and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise DataError(f"{where}: no `prompt`, and the chosen and rejected conversations share no leading "
                            "message to take as the prompt (the implicit prompt is the messages both start "
                            "with); add a `prompt` column")
        return list(chosen[:n]), list(chosen[n:]), list(rejected[n:])
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise DataError(f"{where}: no `prompt`, and chosen/rejected are not both strings or both message lists "
                        f"(got {type(chosen).__name__} and {type(rejected).__name__}); the prompt cannot be "
                        "extracted")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = next((k for k in range(min(n, len(chosen) - 1, len(rejected) - 1), 0, -1)
                if chosen[k].isspace() and rejected[k].isspace()), 0)
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    if cut == 0:
        raise DataError(f"{where}: no `prompt`, and chosen and rejected share no leading words to take as the "
                        f"prompt (chosen {_clip(chosen)}, rejected {_clip(rejected)}; the implicit prompt is "
                        "their longest common prefix, cut at a word boundary); add a `prompt` column")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _clip(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def with_explicit_prompts(ds):
    """``ds`` with every implicit prompt made explicit (:func:`extract_prompt`); other data passes unchanged.

    A row needs it when the data has chosen/rejected and no ``prompt`` column, or its ``prompt`` is empty
    (null), as TRL's ``maybe_extract_prompt`` does per row. Other columns (``margin``, ...) are kept. ``None``
    (no data) passes through.

    Raises:
        DataError: naming the first row whose prompt cannot be extracted.
    """
    if ds is None or "chosen" not in ds.column_names or "rejected" not in ds.column_names:
        return ds
    if "prompt" in ds.column_names and all(p is not None for p in ds["prompt"]):
        return ds

    import datasets

    columns = ds.to_dict()
    prompts = columns.get("prompt") or [None] * len(ds)
    triples = [(p, c, r) if p is not None else extract_prompt(c, r, f"row {i}")
               for i, (p, c, r) in enumerate(zip(prompts, columns["chosen"], columns["rejected"]))]
    explicit = dict(zip(("prompt", "chosen", "rejected"), map(list, zip(*triples)))) if triples else {}
    try:  # prompt first, as in TRL's format; the other columns as they were
        return datasets.Dataset.from_dict({**explicit, **{k: v for k, v in columns.items() if k not in explicit}})
    except Exception as exc:  # e.g. prompts that are strings in some rows and message lists in others
        raise DataError(f"cannot extract the implicit prompts: {type(exc).__name__}: {exc}") from exc


def is_conversational(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m for m in value)


def render_prompt(prompt: Any, tokenizer) -> str:
    """A prompt as the policy sees it: a string as is, messages through the chat template."""
    if is_conversational(prompt):
        return _chat(tokenizer, prompt, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise DataError(f"prompt must be a string or a list of messages, got {type(prompt).__name__}")
    return prompt


def prompt_and_completion(row: Mapping[str, Any], tokenizer, index: int | None = None) -> tuple[str, str]:
    """(prompt text, completion text) of an SFT row in any supported format; loss goes on the completion."""
    where = f"row {index}" if index is not None else "row"
    if "messages" in row and row["messages"] is not None:
        messages = row["messages"]
        if not is_conversational(messages) or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: `messages` must be a list of role/content dicts ending with an assistant turn")
        return _split_chat(tokenizer, messages[:-1], messages, where)
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if is_conversational(prompt) or is_conversational(completion):
            if not (is_conversational(prompt) and is_conversational(completion)):
                raise DataError(f"{where}: prompt and completion must both be strings or both be message lists")
            return _split_chat(tokenizer, prompt, list(prompt) + list(completion), where)
        return str(prompt), str(completion)
    if "text" in row:
        return "", str(row["text"])
    raise DataError(f"{where} has columns {sorted(row)}; SFT needs prompt+completion, messages, or text")


def _split_chat(tokenizer, prompt_messages, all_messages, where: str) -> tuple[str, str]:
    prompt = _chat(tokenizer, prompt_messages, add_generation_prompt=True) if prompt_messages else ""
    full = _chat(tokenizer, all_messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise DataError(f"{where}: the chat template does not render the prompt as a prefix of the conversation; "
                        "rewardhub cannot tell where the completion starts with this template")
    return prompt, full[len(prompt):]


def _chat(tokenizer, messages, add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("conversational data needs a tokenizer with a chat template; this tokenizer has none")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
