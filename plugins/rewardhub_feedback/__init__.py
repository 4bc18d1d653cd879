"""The ``human`` reward provider: a human-feedback store (SQLite), its HTTP API and a labelling page.

``rewardhub train --algo dpo --reward=human`` trains DPO on the stored human comparisons;
``rewardhub train --reward=human`` (PPO/GRPO/RLOO) rewards completions with the stored human ratings and
queues unrated ones for annotators. ``rewardhub feedback serve|import|export|stats``, this plugin's command,
manages a store.

Modules, one job each: ``validation`` (what may be stored), ``schema`` (the SQLite file), ``store`` (reads
and writes), ``provider`` (the reward provider), ``server`` and ``page`` (HTTP API and labelling page),
``commands`` (``rewardhub feedback``).
"""

from __future__ import annotations

from rewardhub import hookimpl

from .provider import DEFAULT_DB, HumanFeedbackReward
from .store import FeedbackStore, ImportResult, QueueItem

__all__ = ["DEFAULT_DB", "FeedbackStore", "HumanFeedbackReward", "ImportResult", "QueueItem"]


@hookimpl
def rewardhub_register_rewards(register):
    register("human", HumanFeedbackReward,
             description="human feedback from a SQLite store (rewardhub feedback serve): ratings -> rewards "
             "normalised to [0, 1], unrated completions queued as pending; comparisons -> DPO pairs")


@hookimpl
def rewardhub_register_commands(register):
    from .commands import FEEDBACK_HELP, add_feedback_parser, run_feedback

    register("feedback", add_feedback_parser, run_feedback, description=FEEDBACK_HELP)
