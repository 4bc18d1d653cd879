"""Tokens/s of rewardhub's TorchBackend vs Hugging Face ``model.generate`` (sampling, same parameters).

Setup (CPU, one thread): random Llama (hidden 256, 4 layers, 4 heads, vocab 100), batch 16 of distinct
prompts with lengths 8..23 (left padding), 16 new tokens, temperature 1.0, top_k 50, top_p 0.9. Warm-up
runs are excluded; the reported time is the median over repeats. Tokens counted are generated tokens up to
and including the first EOS (the same definition for both).

    python bench/bench_generation.py [--repeats 20] [--threads 1] [--grpo]

``--grpo`` uses 4 distinct prompts x 4 samples each (the GRPO/RLOO layout, where the shared prefill helps).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

from rewardhub.generation import SamplingParams, TorchBackend, _left_pad

PAD, EOS, BOS = 0, 1, 2


def _count_hf_tokens(new: torch.Tensor) -> int:
    """Generated tokens up to and including the first EOS, per row, summed."""
    is_eos = new == EOS
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return int((~after).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--grpo", action="store_true", help="4 distinct prompts x (batch/4) samples each")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    rng = torch.Generator().manual_seed(1)
    n_distinct = 4 if args.grpo else args.batch
    distinct = [
        [BOS, *torch.randint(3, 100, (7 + i % 16,), generator=rng).tolist()] for i in range(n_distinct)
    ]
    prompts = [distinct[i % n_distinct] for i in range(args.batch)]
    if args.grpo:
        prompts = sorted(prompts, key=distinct.index)
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, top_k=50, top_p=0.9)
    ids, mask, _ = _left_pad(prompts, PAD, torch.device("cpu"))
    backend = TorchBackend()

    def run_ours(seed: int) -> int:
        g = torch.Generator().manual_seed(seed)
        r = backend.generate(model, prompts, params, eos_token_id=EOS, pad_token_id=PAD, generator=g)
        return int(r.completion_mask.sum())

    def run_hf(seed: int) -> int:
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                do_sample=True,
                temperature=params.temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                max_new_tokens=params.max_new_tokens,
                pad_token_id=PAD,
                eos_token_id=EOS,
            )
        return _count_hf_tokens(out[:, ids.shape[1] :])

    runners = {"hf_generate": run_hf, "torch_backend": run_ours}
    for fn in runners.values():
        for i in range(args.warmup):
            fn(10_000 + i)
    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, list[int]] = {name: [] for name in runners}
    for i in range(args.repeats):  # interleaved, so machine-load drift hits both alike
        for name, fn in runners.items():
            t0 = time.perf_counter()
            tokens[name].append(fn(i))
            times[name].append(time.perf_counter() - t0)
    results = {}
    for name in runners:
        med = statistics.median(times[name])
        mean_tokens = statistics.mean(tokens[name])
        results[name] = mean_tokens / med
        print(
            f"{name:14s} median {med * 1e3:7.2f} ms/batch  {mean_tokens:6.1f} tokens/batch  "
            f"{results[name]:8.0f} tokens/s"
        )
    print(f"speedup (torch_backend / hf_generate): {results['torch_backend'] / results['hf_generate']:.2f}x")


if __name__ == "__main__":
    main()
