#!/usr/bin/env bash
# DPO on human preferences from a feedback store (offline, CPU, about a minute on 2 cores):
#   1. fill a store: import pairs from the built-in arithmetic-preferences task (stand-ins for people's
#      judgements), plus two labels posted the way the labelling page does, through the HTTP API,
#   2. show what the store holds,
#   3. train DPO on the stored pairs with --reward=human, on the built-in tiny model, and report held-out
#      preference accuracy before and after.
# In real use, step 1 is people labelling on `rewardhub feedback serve --db F` (http://127.0.0.1:8765/).
set -euo pipefail
OUT=${OUT:-runs/human-dpo}
DB="$OUT/feedback.db"
STEPS=${STEPS:-1000}
PAIRS=${PAIRS:-3000}
PORT=${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$OUT" && rm -rf "$OUT/dpo"   # the store is kept: importing and posting again change nothing

rewardhub feedback import arithmetic-preferences --data-arg size="$PAIRS" --data-arg errors=digit \
    --db "$DB" --annotator import-demo

# Two labels through the API, as an annotation tool would send them.
rewardhub feedback serve --db "$DB" --port "$PORT" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
python - "$PORT" "$DB" <<'EOF'
import json, sys, time, urllib.request

url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(200):  # wait for the server to listen
    try:
        stats = json.load(urllib.request.urlopen(f"{url}/api/stats", timeout=1))
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"the feedback server did not start on {url}")
if stats["path"] != sys.argv[2]:
    sys.exit(f"another feedback server ({stats['path']}) answers on {url}; set PORT to a free port")

def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))

post("/api/comparisons", {"prompt": "12+30=", "chosen": "42", "rejected": "43", "annotator": "alice"})
post("/api/ratings", {"prompt": "12+30=", "completion": "42", "score": 5, "annotator": "alice"})
print("posted 1 comparison and 1 rating through the HTTP API")
EOF
kill "$SERVER" && wait "$SERVER" 2>/dev/null || true

rewardhub feedback stats --db "$DB"

# DPO on the store's pairs (a reward that stores preferences is the pair source; --pairs dataset would not), with the
# RPO term (plain DPO lowers the chosen replies' likelihood along with the rejected ones' on these
# one-digit-apart pairs); held-out pairs from the task's test split measure the effect.
rewardhub train --algo dpo --reward=human --reward-arg db="$DB" \
    --eval-data arithmetic-preferences:test --data-arg errors=digit --eval-size 200 \
    --out "$OUT/dpo" --max-steps "$STEPS" --batch-size 32 --lr 1e-2 --rpo-alpha 1 --warmup-ratio 0 \
    --eval-every 0 --save-every 0 --log-every 100

python - "$OUT/dpo/metrics.jsonl" <<'EOF'
import json, sys

evals = [r for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "eval"]
first, last = evals[0], evals[-1]
print(f"held-out pairs where the policy prefers the chosen reply: {first['logps/accuracy']:.3f} -> "
      f"{last['logps/accuracy']:.3f}; held-out DPO loss {first['loss']:.3f} -> {last['loss']:.3f}")
EOF
