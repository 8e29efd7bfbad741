"""The HTTP call OpenRLHF makes to a remote reward model, made the same way with `requests`
because the `openrlhf` package needs a CUDA stack. Current releases (openrlhf/utils/agent.py,
`_post_request`, aiohttp) and older ones (openrlhf/utils/remote_rm_utils.py,
`request_api_wrapper`) in OpenRLHF/OpenRLHF agree on the wire: a JSON POST of {"query", "prompts",
"labels"} (the oldest: {"query"} only) with `Content-Type: application/json`, a 180 s timeout, up to
5 attempts one second apart on any error or non-2xx status; the client then reads `scores`
(falling back to `rewards`; the oldest read `rewards`) and builds a torch tensor from it.

Usage: openrlhf_reward.py URL, the body as JSON on stdin; prints {"tensor": the list the client
would build its tensor from, "response": the whole JSON answer}."""

import json
import sys
import time

import requests

ATTEMPTS = 5
TIMEOUT_S = 180


def fetch_scores(url: str, body: dict, key: str):
    last = None
    for _ in range(ATTEMPTS):
        try:
            r = requests.post(url=url, json=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)
            r.raise_for_status()
            answer = r.json()
            if key not in answer:
                raise KeyError(f"{key} missing from {answer}")
            return answer[key], answer
        except Exception as e:  # the client retries whatever went wrong
            last = e
        time.sleep(1)
    raise RuntimeError(f"no answer after {ATTEMPTS} attempts: {last}")


def main() -> None:
    url = sys.argv[1]
    body = json.load(sys.stdin)
    key = "scores" if "prompts" in body else "rewards"
    tensor, answer = fetch_scores(url, body, key)
    print(json.dumps({"tensor": tensor, "response": answer}))


if __name__ == "__main__":
    main()
