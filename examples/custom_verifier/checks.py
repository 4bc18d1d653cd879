"""Custom verifiers in plain Python: register with `--verifier examples/custom_verifier/checks.py`.

A row picks its checker with a `verifier` column (or every row with `--reward-arg checker=NAME`).
"""

import json

from rewardhub import verifier


@verifier("valid_json")
def valid_json(completion: str, row: dict) -> bool:
    """True when the completion parses as JSON and has every key listed in the row's `keys`."""
    try:
        value = json.loads(completion)
    except ValueError:
        return False
    return isinstance(value, dict) and all(k in value for k in row.get("keys", []))


@verifier("ends_politely")
def ends_politely(completion: str, row: dict) -> float:
    """1.0 for a reply that ends with 'thank you.', else 0.0."""
    return 1.0 if completion.rstrip().lower().endswith("thank you.") else 0.0
