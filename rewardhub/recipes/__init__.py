"""The training recipes, one file each, all driven by :func:`rewardhub.loop.run`: SFT, RL (PPO/GRPO/RLOO),
DPO, reward-model training, and the SFT warm-up before RL."""
