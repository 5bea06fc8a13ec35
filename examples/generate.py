"""Generate with nano-vLLM. Without --model it builds (once) a tiny random Qwen3-style checkpoint and uses that."""
import argparse
import time

import torch

from nanovllm import LLM, SamplingParams
from nanovllm.utils.random_checkpoint import cached_random_checkpoint

PROMPTS = ["Once upon a time", "What is the capital of France?", "The quick brown fox",
           "A paged key-value cache splits each sequence into blocks"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="checkpoint folder (default: a tiny random Qwen3-style checkpoint)")
    parser.add_argument("--batch_size", type=positive_int, default=4, help="number of prompts")
    parser.add_argument("--seq_len", type=positive_int, default=None,
                        help="prompt length in tokens (random token ids); default: the built-in text prompts")
    parser.add_argument("--max_tokens", type=positive_int, default=32, help="tokens to generate per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    args = parser.parse_args(argv)

    # A bad value ends in one usage line, not a traceback; a bad temperature before a checkpoint is built.
    try:
        params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    except ValueError as e:
        parser.error(str(e))
    model = args.model
    if model is None:
        model = cached_random_checkpoint("tiny-qwen3", torch.float32)
        print(f"No --model given: using a tiny Qwen3-style checkpoint with RANDOM weights ({model}).\n"
              "Its output is gibberish by design; pass --model PATH for a real one.")
    try:
        # A context just long enough keeps the KV cache small (on CPU it holds max_num_seqs full-length sequences).
        llm = LLM(model, device=args.device, max_num_seqs=args.batch_size,
                  max_model_len=(args.seq_len or 256) + args.max_tokens)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    if args.seq_len is None:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch_size)]
    else:
        vocab = llm.config.hf_config.vocab_size
        prompts = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0))
        prompts = prompts.tolist()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    for prompt, out in zip(prompts, outputs):
        shown = prompt if isinstance(prompt, str) else f"<{len(prompt)} random token ids>"
        print(f"\nPrompt: {shown!r}\nCompletion ({out['finish_reason']}): {out['text']!r}")
    num_tokens = sum(len(o["token_ids"]) for o in outputs)
    print(f"\n{num_tokens} tokens in {elapsed:.2f} s ({num_tokens / elapsed:.1f} tok/s) on {llm.config.device}")


if __name__ == "__main__":
    main()
