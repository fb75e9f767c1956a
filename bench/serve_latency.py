#!/usr/bin/env python3
"""Latency of `ttt serve` sessions (issue 22's GPU measurement), Python's standard library only.

  bench/serve_latency.py BASE_URL --vocab N [--contexts 8192,32768,131072] [--tokens 64]
                         [--concurrent 4]

For each context T: a session reads T random token ids (POST /v1/sessions: the document read
with test-time training; its time is the prefill), then a streamed greedy completion of
--tokens tokens on it (a copy of the session): time to the first token, and the time per
token after it (the span from the first to the last token over their count: several tokens
may arrive in one read). Then --concurrent sessions of T tokens each get their
completions at the same time (the server's --slots decide how many compute at once). One JSON
line per row on stdout."""
import argparse
import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse


def post(base, path, body, stream=False):
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}: {response.read()[:300]!r}")
    return conn, response


def create_session(base, ids):
    start = time.perf_counter()
    conn, response = post(base, "/v1/sessions", {"prompt": ids})
    reply = json.loads(response.read())
    conn.close()
    return reply["id"], time.perf_counter() - start


def stream_completion(base, session, first_id, tokens):
    """Seconds to the first token and per token after it, and the token count."""
    body = {"session": session, "prompt": [first_id], "max_tokens": tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    conn, response = post(base, "/v1/completions", body)
    arrivals = []
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: "):])
        count = len(chunk["choices"][0].get("tokens", [])) if chunk.get("choices") else 0
        now = time.perf_counter()
        arrivals.extend([now] * count)
    conn.close()
    if not arrivals:
        raise RuntimeError("the stream carried no tokens")
    per_token = (arrivals[-1] - arrivals[0]) / max(1, len(arrivals) - 1)
    return arrivals[0] - start, per_token, len(arrivals)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--vocab", type=int, required=True, help="token ids are drawn below this")
    parser.add_argument("--contexts", default="8192,32768,131072")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    rng = random.Random(1)
    for context in (int(c) for c in args.contexts.split(",")):
        ids = [rng.randrange(args.vocab) for _ in range(context)]
        session, read_s = create_session(args.base, ids)
        stream_completion(args.base, session, ids[-1], 4)  # warm-up: graphs of this cache length
        first, per_token, count = stream_completion(args.base, session, ids[-1], args.tokens)
        print(json.dumps({"label": args.label, "context": context, "clients": 1, "read_s": round(read_s, 3),
                          "read_tokens_per_s": round(context / read_s), "first_token_ms": round(first * 1e3, 1),
                          "token_ms": round(per_token * 1e3, 2), "tokens": count}), flush=True)
        if args.concurrent > 1:
            sessions = [session] + [create_session(args.base, ids)[0] for _ in range(args.concurrent - 1)]
            results = [None] * len(sessions)

            def ask(i):
                results[i] = stream_completion(args.base, sessions[i], ids[-1], args.tokens)

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(sessions))]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            print(json.dumps({"label": args.label, "context": context, "clients": len(sessions),
                              "first_token_ms_median": round(statistics.median(r[0] for r in results) * 1e3, 1),
                              "token_ms_median": round(statistics.median(r[1] for r in results) * 1e3, 2),
                              "tokens_per_s_all": round(sum(r[2] for r in results) / wall, 1)}), flush=True)
        for s in set([session] + (sessions if args.concurrent > 1 else [])):
            url = urllib.parse.urlparse(args.base)
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            conn.request("DELETE", f"/v1/sessions/{s}")
            conn.getresponse().read()
            conn.close()


if __name__ == "__main__":
    main()
