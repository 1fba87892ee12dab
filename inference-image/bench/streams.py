"""The client of the concurrency benchmark (run by streams.sh): N concurrent streaming
`/v1/completions` requests against one OpenAI-compatible server, greedy, each with its own prompt
(so no engine reuses another stream's prompt). Prints one JSON line: aggregate generated tokens
per second over the wall clock of the whole run, and time to first token percentiles.

With --requests R it instead sends R short requests, N at a time, and samples the server's
resident memory (--pid) every --every requests: the memory-growth check.

Standard library only, so it runs with any python3.
"""
import argparse
import http.client
import json
import statistics
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--key", default="")
p.add_argument("--streams", type=int, required=True)
p.add_argument("--prompt-file", required=True)
p.add_argument("--gen-tokens", type=int, default=128)
p.add_argument("--extra", default="{}", help="JSON merged into each request body")
p.add_argument("--requests", type=int, default=0)
p.add_argument("--every", type=int, default=100)
p.add_argument("--pid", type=int, default=0)
a = p.parse_args()

base_prompt = open(a.prompt_file).read()
extra = json.loads(a.extra)


def complete(index, max_tokens):
    """One streamed completion: (seconds to first text, completion tokens, seconds to the end)."""
    body = {
        "model": "model",
        "prompt": f"Story {index}. " + base_prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    headers = {"content-type": "application/json"}
    if a.key:
        headers["authorization"] = f"Bearer {a.key}"
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    r = conn.getresponse()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {r.read()[:300]!r}")
    first, chunks, usage = None, 0, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            if choice.get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
    end = time.perf_counter() - t0
    conn.close()
    tokens = usage["completion_tokens"] if usage else chunks
    return first if first is not None else end, tokens, end


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


if a.requests:
    # The memory check: R requests, N at a time, RSS sampled between batches of --every.
    samples = [(0, rss_kib(a.pid))]
    done = 0
    while done < a.requests:
        batch = min(a.every, a.requests - done)
        lock = threading.Lock()
        queue = list(range(done, done + batch))

        def worker():
            while True:
                with lock:
                    if not queue:
                        return
                    i = queue.pop()
                complete(i, a.gen_tokens)

        threads = [threading.Thread(target=worker) for _ in range(a.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done += batch
        samples.append((done, rss_kib(a.pid)))
    print(json.dumps({"rss_kib": samples}))
else:
    complete(10_000, 4)  # warm-up: weights paged in, threads started
    results = [None] * a.streams

    def run(i):
        results[i] = complete(i, a.gen_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] * 1000 for r in results)
    tokens = sum(r[1] for r in results)
    print(json.dumps({
        "streams": a.streams,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": statistics.median(ttft),
        "ttft_p99_ms": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))],
    }))
