#!/usr/bin/env bash
# RLHF end to end on the built-in tiny model and synthetic preferences (offline, CPU, a few minutes):
#   1. SFT warm-up, 2. a Bradley-Terry reward model on arithmetic preference pairs,
#   3. PPO against that reward model, 4. DPO on the same pairs for comparison.
set -euo pipefail
OUT=${OUT:-runs/rlhf}

rewardhub sft --out "$OUT/sft" --max-steps 1000
rewardhub train-rm --model builtin:tiny-llama --data arithmetic-preferences --out "$OUT/rm" --max-steps 400
rewardhub train --algo ppo --reward=reward-model --reward-arg path="$OUT/rm/model" \
    --model "$OUT/sft/model" --data arithmetic --out "$OUT/ppo" --max-steps 100 --max-new-tokens 8 --batch-size 16
rewardhub train --algo dpo --model "$OUT/sft/model" --data arithmetic-preferences --out "$OUT/dpo" --max-steps 200
