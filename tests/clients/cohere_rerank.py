"""Drives medprm's /v2/rerank with the real `cohere` SDK (ClientV2), as a Best-of-N pipeline
built on Cohere rerank would. Usage: cohere_rerank.py BASE_URL API_KEY MODE

MODE `ok`: reads {"query", "documents", "top_n"} as JSON on stdin and prints the SDK's parsed
results as JSON. MODE `422` / `429`: sends the request and prints the name of the typed SDK error
it raised (retries off, so a 429 surfaces at once)."""

import json
import sys

import cohere
from cohere.core.api_error import ApiError


def main() -> None:
    base_url, api_key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    req = json.load(sys.stdin)
    co = cohere.ClientV2(api_key=api_key, base_url=base_url, timeout=120)
    try:
        resp = co.rerank(
            model="medprm", query=req["query"], documents=req["documents"], top_n=req.get("top_n"),
            request_options={"max_retries": 0},
        )
    except ApiError as e:
        print(json.dumps({"error": type(e).__name__, "status": e.status_code,
                          "retry_after": (e.headers or {}).get("retry-after"), "body": e.body}))
        return
    if mode != "ok":
        raise SystemExit(f"expected an error for mode {mode}, got {resp}")
    print(json.dumps({"id": resp.id, "results": [{"index": r.index, "relevance_score": r.relevance_score}
                                                 for r in resp.results]}))


if __name__ == "__main__":
    main()
