"""The ``judge`` reward plugin: RLAIF, rewards from an LLM judge over an OpenAI-compatible API.

``--reward=judge --reward-arg base_url=http://host:port/v1`` scores each completion with a judge model
(see :mod:`rewardhub_judge.provider`); ``rewardhub serve --model PATH`` (this plugin's command,
:mod:`rewardhub_judge.commands`, serving :mod:`rewardhub_judge.server`) puts any local transformers model
behind such an API, so RLAIF runs fully offline.
"""

from __future__ import annotations

from rewardhub import hookimpl


@hookimpl
def rewardhub_register_rewards(register):
    from rewardhub_judge.provider import JudgeReward

    register("judge", JudgeReward,
             description="LLM judge over an OpenAI-compatible API (RLAIF): SCORE 1-10 normalised to [0, 1]; "
             "pairwise compare in both orders")


@hookimpl
def rewardhub_register_commands(register):
    from rewardhub_judge.commands import SERVE_HELP, add_serve_parser, run_serve

    register("serve", add_serve_parser, run_serve, description=SERVE_HELP)
