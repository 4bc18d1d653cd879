"""Failing fast on Hugging Face Hub ids that cannot be loaded: offline mode, an unreachable Hub, an unknown id.

Without these checks, ``from_pretrained`` / ``load_dataset`` on an id that is neither local nor cached retry
for tens of seconds before failing. :func:`probe` asks the Hub once, with a short timeout and no retries
(``HfApi.model_info`` / ``dataset_info``); :func:`in_cache` looks in the local cache without any network.
"""

from __future__ import annotations

import functools
import os

#: Seconds the one reachability request may take.
PROBE_TIMEOUT_S = 5.0

OK, MISSING, UNREACHABLE, OFFLINE, UNKNOWN = "ok", "missing", "unreachable", "offline", "unknown"


def offline() -> bool:
    """Whether Hub access is switched off (``HF_HUB_OFFLINE=1``, read when huggingface_hub is imported)."""
    import huggingface_hub

    return bool(huggingface_hub.is_offline_mode())


def offline_variable() -> str:
    """The variable that switched the Hub off, as the user set it (for messages)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]}"
    return "HF_HUB_OFFLINE=1"


def in_cache(repo_id: str, filename: str = "config.json", repo_type: str = "model") -> bool:
    """Whether ``filename`` of ``repo_id`` is in the local Hub cache (``try_to_load_from_cache``: no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)
    except Exception:  # an id that is not a valid repo id: not cached
        return False


@functools.lru_cache(maxsize=64)
def probe(repo_id: str, repo_type: str = "model") -> tuple[str, str]:
    """(status, detail) of one short request for ``repo_id``: ``ok``, ``missing`` (no such repo, or private),
    ``unreachable`` (network error or timeout), ``offline``, or ``unknown`` (another HTTP answer, e.g. gated:
    left to ``from_pretrained`` to report). Asked once per process and id."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    if offline():
        return OFFLINE, offline_variable()
    api = HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info(repo_id, timeout=PROBE_TIMEOUT_S)
    except OfflineModeIsEnabled:
        return OFFLINE, offline_variable()
    except RepositoryNotFoundError:
        return MISSING, ""
    except HfHubHTTPError as exc:
        return UNKNOWN, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except ValueError as exc:  # HFValidationError: not a valid repo id
        return MISSING, str(exc).splitlines()[0]
    except Exception as exc:  # connection refused, DNS failure, timeout, proxy error
        return UNREACHABLE, f"{type(exc).__name__}: {exc}"
    return OK, ""
