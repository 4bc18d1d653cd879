"""rewardhub: post-training where the method is chosen by the reward source.

The public API: the commands as functions (``sft``, ``train``, ``train_rm``, ``evaluate``, returning a
``Result``), the plugin markers, the reward contract, the ``Task`` record and the ``@verifier`` decorator.
"""

from rewardhub.api import Result, evaluate, sft, train, train_rm
from rewardhub.hookspecs import Task, hookimpl
from rewardhub.plugins import verifier
from rewardhub.rewards import PreferencePair, Reward, RewardProvider, Sample, Status

__version__ = "0.1.0"
__all__ = ["PreferencePair", "Result", "Reward", "RewardProvider", "Sample", "Status", "Task", "evaluate", "hookimpl",
           "sft", "train", "train_rm", "verifier"]
