"""The official OpenAI Python SDK, configured with nothing but a base URL and a key, as a
customer's program would be. The gateway's test CA comes through SSL_CERT_FILE, as a customer's
private CA would.

    openai_client.py chat|stream|stream-usage|embed|models

Prints one JSON object: what the SDK returned, or the error it raised (status and body).
"""

import json
import os
import sys
import time

import openai


def main() -> None:
    action = sys.argv[1]
    client = openai.OpenAI(
        base_url=os.environ["ALCOVE_BASE_URL"],
        api_key=os.environ["ALCOVE_API_KEY"],
        max_retries=0,
        timeout=120,
    )
    messages = [{"role": "user", "content": "Say hello."}]
    try:
        if action == "chat":
            r = client.chat.completions.create(messages=messages, model="chat", max_tokens=8)
            out = {"content": r.choices[0].message.content, "usage": r.usage.model_dump()}
        elif action in ("stream", "stream-usage"):
            started = time.monotonic()
            extra = {"stream_options": {"include_usage": True}} if action == "stream-usage" else {}
            chunks, first, usage, text = 0, None, None, ""
            for c in client.chat.completions.create(
                messages=messages, model="chat", max_tokens=8, stream=True, **extra
            ):
                if first is None:
                    first = time.monotonic() - started
                chunks += 1
                if c.usage is not None:
                    usage = c.usage.model_dump()
                for choice in c.choices:
                    text += choice.delta.content or ""
            out = {"chunks": chunks, "first_chunk_s": first, "usage": usage, "content": text}
        elif action == "embed":
            r = client.embeddings.create(input=["hello", "world"], model="embed")
            out = {"vectors": len(r.data), "dims": len(r.data[0].embedding), "usage": r.usage.model_dump()}
        elif action == "models":
            out = {"models": [m.id for m in client.models.list()]}
        else:
            raise SystemExit(f"unknown action {action}")
    except openai.APIStatusError as e:
        out = {
            "status": e.status_code,
            "body": e.body,
            "retry_after": e.response.headers.get("retry-after"),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
