"""``rewardhub serve``, the judge plugin's command: put a local causal LM behind an OpenAI-compatible API (a
judge for ``--reward=judge``). Registered through ``rewardhub_register_commands`` in :mod:`rewardhub_judge`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar, Literal

from rewardhub.config import add_flags, choice_problems, load_config, setting
from rewardhub.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SERVE_HELP = "serve a local model over an OpenAI-compatible API (a judge for --reward=judge)"


@dataclass
class ServeConfig:
    """``rewardhub serve``'s options."""

    model: str = setting("", "path or id of the model to serve")
    host: str = setting("127.0.0.1", "address to listen on (127.0.0.1: this machine only)")
    port: int = setting(8000, "port (0 picks a free one)")
    served_name: str | None = setting(None, "model name clients send and /v1/models lists (none: --model)")
    api_key: str | None = setting(None, "require this bearer token (set it when listening beyond this machine)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting("auto", "weights dtype (auto: float32 on CPU)")
    device: str | None = setting(None, "cpu, cuda, cuda:1, ... (none: cuda if available, else cpu)")
    threads: int = setting(0, "torch CPU threads (0: torch's choice)")
    weight_updates: bool = setting(True, "accept LoRA adapters and weights from a trainer (/v1/load_lora_adapter, "
                                   "/v1/update_weights, /update_weights_from_disk); they read server-side paths")

    required: ClassVar[tuple[str, ...]] = ("model",)

    def validate(self) -> None:
        problems = choice_problems(self)
        if not self.model:
            problems.append("--model is required")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be between 0 and 65535, got {self.port}")
        if self.threads < 0:
            problems.append(f"--threads must be >= 0, got {self.threads}")
        if problems:
            raise ConfigError(problems)


def add_serve_parser(sub):
    p = sub.add_parser(
        "serve", help=SERVE_HELP,
        description="Serve a local transformers causal LM (a directory written by save_pretrained, a hub id in the "
        "local cache, or builtin:tiny-llama) at /v1/chat/completions and /v1/models, so `--reward=judge "
        "--reward-arg base_url=http://HOST:PORT/v1` runs RLAIF with no network. Non-streaming, n=1, one generation "
        "at a time; messages are rendered with the tokenizer's chat template. It also serves token-id "
        "/v1/completions with log-probs and takes LoRA adapters and weights from a trainer, so `rewardhub train "
        "--generation-server http://HOST:PORT/v1` samples rollouts here. For throughput use vLLM or SGLang, "
        "which serve the same API.")
    add_flags(p, ServeConfig)
    return p


def run_serve(args) -> int:
    from rewardhub.http_server import bind_socket, make_server
    from rewardhub_judge.server import create_app, load_local_model

    args = load_config(ServeConfig, args)
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
        app = create_app(local, api_key=args.api_key, weight_updates=args.weight_updates)
        make_server(app, log_level="info").run(sockets=[sock])
    finally:
        sock.close()
    return 0
