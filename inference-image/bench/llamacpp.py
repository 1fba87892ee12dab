"""llama.cpp's side of the generation benchmark (run by compare.sh).

Feeds llama.cpp (through llama-cpp-python) exactly the prompt token ids candle got, then decodes
greedily, token by token, as `alcove-inference bench` does; prints one JSON line with the same
fields.
"""
import argparse
import json
import statistics
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--prompt-ids", required=True)
p.add_argument("--gen-tokens", type=int, default=128)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--threads", type=int, required=True)
a = p.parse_args()

ids = json.load(open(a.prompt_ids))
t = time.perf_counter()
# n_batch = n_ctx: llama-cpp-python keeps logits in an n_batch-row array indexed by position, so
# it must cover the prompt and every generated token (llama.cpp still computes in micro-batches
# of 512).
llm = Llama(model_path=a.model, n_ctx=2048, n_batch=2048, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
load_seconds = time.perf_counter() - t



def next_token():
    # llm.scores stays zero unless every position's logits are kept (logits_all, which would make
    # llama.cpp compute the output layer for every prompt token): read the last position's logits
    # from the context's own buffer.
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


ttft, decode = [], []
# One untimed run first, as on the candle side.
for run in range(a.runs + 1):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    token = next_token()
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(a.gen_tokens - 1):
        llm.eval([token])
        token = next_token()
    rest = time.perf_counter() - t1
    if run > 0:
        ttft.append(first * 1000)
        decode.append((a.gen_tokens - 1) / rest)

ttft_ms = statistics.median(ttft)
print(json.dumps({
    "engine": "llama.cpp",
    # The SIMD features this build of llama.cpp uses, e.g. "AVX2 = 1 | AVX512 = 0 | ...".
    "system_info": " | ".join(
        f for f in llama_cpp.llama_print_system_info().decode().split("|")
        if f.strip().endswith("= 1") or "AVX512 =" in f
    ).strip(),
    "model": a.model,
    "threads": a.threads,
    "prompt_tokens": len(ids),
    "gen_tokens": a.gen_tokens,
    "runs": a.runs,
    "load_seconds": load_seconds,
    "ttft_ms": ttft_ms,
    "decode_tokens_per_s": statistics.median(decode),
    "prefill_tokens_per_s": len(ids) / (ttft_ms / 1000),
}))
