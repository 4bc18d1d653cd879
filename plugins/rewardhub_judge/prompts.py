"""What the judge is asked: the built-in pointwise and pairwise templates, user templates, and their checks.

Templates are ``str.format`` strings. A user template is a file (or an inline string) that uses the same
placeholders as the built-in one; it is checked when the provider is built, so a typo in a placeholder fails
before any model loads rather than on the first batch. Literal braces in a template are written ``{{``/``}}``.

The whole request goes in one user message: some chat templates reject a system role, and a judge served by
``rewardhub serve`` or vLLM then works the same as a hosted one.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardhub.errors import ConfigError

POINTWISE_FIELDS = ("prompt", "completion", "reference", "rubric", "min_score", "max_score")
PAIRWISE_FIELDS = ("prompt", "a", "b", "reference", "rubric")

DEFAULT_RUBRIC = "Consider helpfulness, correctness, relevance, depth and clarity."

POINTWISE_TEMPLATE = """\
Please act as an impartial judge and evaluate the quality of the response that an AI assistant gave to the \
user prompt below. {rubric}
Rate the response on a scale of {min_score} to {max_score}, where {min_score} is the worst and {max_score} is \
the best.{reference}

[The Start of the User Prompt]
{prompt}
[The End of the User Prompt]

[The Start of the Response]
{completion}
[The End of the Response]

Begin with a short explanation. Then end with a final line of exactly this form, and nothing after it:
SCORE: <number from {min_score} to {max_score}>"""

PAIRWISE_TEMPLATE = """\
Please act as an impartial judge and compare the two responses that AI assistants gave to the user prompt \
below. {rubric} Do not let the order of the responses, their length or the assistants' names influence you.\
{reference}

[The Start of the User Prompt]
{prompt}
[The End of the User Prompt]

[The Start of Response A]
{a}
[The End of Response A]

[The Start of Response B]
{b}
[The End of Response B]

Begin with a short explanation. Then end with a final line of exactly one of these forms, and nothing after it:
WINNER: A
WINNER: B
WINNER: TIE"""

#: How the built-in templates show a reference answer (omitted when the row has none).
REFERENCE_BLOCK = """
A reference answer is given; a response that contradicts it is wrong.

[The Start of the Reference Answer]
{reference}
[The End of the Reference Answer]"""


def load_template(value: str | None, builtin: str, fields: Sequence[str], required: Sequence[str],
                  option: str) -> tuple[str, bool]:
    """The template to use and whether it is the built-in one.

    ``value`` is None (the built-in template), a path to a text file, or an inline template string.

    Raises:
        ConfigError: naming ``option``, for a missing file, an unknown placeholder or a missing required one.
    """
    if value is None or value == "":
        return builtin, True
    path = Path(value).expanduser()
    looks_inline = "{" in value or "\n" in value
    if not looks_inline:
        if not path.is_file():
            raise ConfigError(f"judge: {option}={value!r} is not an existing file (nor an inline template with "
                              f"{{{required[0]}}}); pass --reward-arg {option}=path/to/template.txt")
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"judge: cannot read {option} file {str(path)!r}: {exc}") from exc
    check_template(value, fields, required, option)
    return value, False


def check_template(template: str, fields: Sequence[str], required: Sequence[str], option: str) -> None:
    """Raise a ConfigError listing every unknown or missing placeholder of ``template``."""
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:  # an unmatched brace
        raise ConfigError(f"judge: {option} is not a valid template ({exc}); write literal braces as {{{{ and }}}}"
                          ) from exc
    allowed = ", ".join("{" + f + "}" for f in fields)
    problems = [f"judge: {option} uses unknown placeholder {{{name}}}; allowed: {allowed} (write literal braces "
                "as {{ and }})" for name in sorted(used - set(fields))]
    problems += [f"judge: {option} must contain {{{name}}} (where the judge sees it); allowed: {allowed}"
                 for name in required if name not in used]
    if problems:
        raise ConfigError(problems)


def render(template: str, builtin: bool, values: Mapping[str, Any]) -> str:
    """Fill ``template``; the built-in one shows the reference in its own block, only when there is one."""
    filled = dict(values)
    reference = filled.get("reference") or ""
    if builtin:
        filled["reference"] = REFERENCE_BLOCK.format(reference=reference) if reference else ""
        filled["rubric"] = filled.get("rubric") or DEFAULT_RUBRIC
    return template.format(**filled)


def prompt_text(prompt: str, row: Mapping[str, Any]) -> str:
    """The prompt as the judge should read it: the dataset's own text, without the policy's chat markup.

    The loop's ``Sample.prompt`` is rendered with the policy's chat template (role tokens and all); the row's
    ``prompt`` column is what a person wrote. A conversation is shown as ``Role: content`` turns.
    """
    raw = row.get("prompt") if isinstance(row, Mapping) else None
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, list) and raw and all(isinstance(m, Mapping) for m in raw):
        if len(raw) == 1:
            return str(raw[0].get("content", ""))
        return "\n\n".join(f"{str(m.get('role', 'user')).capitalize()}: {m.get('content', '')}" for m in raw)
    return prompt


def reference_text(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """The first non-empty reference column of ``row`` (e.g. ``reference``, then ``answer``), or ``""``."""
    for column in columns:
        value = row.get(column) if isinstance(row, Mapping) else None
        if value is not None and str(value).strip():
            return str(value)
    return ""
