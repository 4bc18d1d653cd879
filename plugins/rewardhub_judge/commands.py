"""``rewardhub serve``, the judge plugin's command: put a local causal LM behind an OpenAI-compatible API (a
judge for ``--reward=judge``). Registered through ``rewardhub_register_commands`` in :mod:`rewardhub_judge`.
"""

from __future__ import annotations

import sys

from rewardhub.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SERVE_HELP = "serve a local model over an OpenAI-compatible API (a judge for --reward=judge)"


def add_serve_parser(sub):
    p = sub.add_parser(
        "serve", help=SERVE_HELP,
        description="Serve a local transformers causal LM (a directory written by save_pretrained, a hub id in the "
        "local cache, or builtin:tiny-llama) at /v1/chat/completions and /v1/models, so `--reward=judge "
        "--reward-arg base_url=http://HOST:PORT/v1` runs RLAIF with no network. Non-streaming, n=1, one generation "
        "at a time; messages are rendered with the tokenizer's chat template. For throughput use vLLM or SGLang, "
        "which serve the same API.")
    p.add_argument("--model", required=True, help="path or id of the model to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--served-name", default=None,
                   help="model name clients send and /v1/models lists (default: the --model value)")
    p.add_argument("--api-key", default=None,
                   help="require this bearer token (set it when listening beyond this machine)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: auto, float32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's choice)")
    return p


def run_serve(args) -> int:
    from rewardhub.http_server import bind_socket, make_server
    from rewardhub_judge.server import create_app, load_local_model

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc}; pick another --port (0 for any free "
                          "one) or stop what uses it") from exc
    try:
        local = load_local_model(args.model, args.served_name, dtype=args.dtype, device=args.device)
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        if args.host not in LOOPBACK and not args.api_key:
            print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use "
                  "the model", file=sys.stderr)
        print(f"serving {local.name!r} at http://{host}:{port}/v1 (use --reward-arg base_url=http://{host}:{port}/v1;"
              " Ctrl-C stops)", flush=True)
        make_server(create_app(local, api_key=args.api_key), log_level="info").run(sockets=[sock])
    finally:
        sock.close()
    return 0
