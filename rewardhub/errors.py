"""User-facing errors. Each message says what is wrong and how to fix it; the CLI prints it without a traceback."""


class RewardhubError(Exception):
    """Base class: an error caused by input the user can fix (flags, config, data, plugins)."""


class ConfigError(RewardhubError):
    """A flag, YAML config or provider option is invalid. Collects every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, header: str = "invalid configuration"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header}:\n{lines}" if len(self.problems) > 1 else f"{header}: {self.problems[0]}")


class PluginConflictError(RewardhubError):
    """Two plugins registered the same name."""


class PluginError(RewardhubError):
    """A plugin broke the contract, e.g. a command it registered cannot be built."""


class UnknownNameError(RewardhubError):
    """A reward, verifier or task name is not registered."""


class DataError(RewardhubError):
    """A dataset cannot be loaded or a row lacks what the algorithm needs."""


class ModelLoadError(RewardhubError):
    """A model or tokenizer cannot be loaded from the given path or id."""


class RewardProviderError(RewardhubError):
    """A reward provider broke its contract (wrong result count or type) or failed as a whole."""


class RunDirectoryError(RewardhubError):
    """An ``--out`` directory holds another run, or one started with other settings, or is in use or unwritable."""


class TrainingError(RewardhubError):
    """A run cannot learn anything as configured, e.g. online DPO formed no preference pair (every sample tied)."""


class GenerationServerError(RewardhubError):
    """The inference server that samples rollouts (``--generation-server``) is unreachable, refuses a request,
    or answers without what RL needs (token ids, log-probs, a weight-update endpoint)."""
