"""OpenRLHF's remote reward call, reproduced with `requests` (the `openrlhf` package needs a CUDA
stack): `request_api_wrapper` and `remote_rm_fn` of openrlhf/utils/remote_rm_utils.py in
OpenRLHF/OpenRLHF — same body keys, headers, timeout and retry loop; `torch.tensor(scores)` is
replaced by the list it would be built from. Usage: openrlhf_reward.py URL, with {"query",
"prompts"?, "labels"?} on stdin; prints {"tensor": what the client reads, "response": the body}."""

import json
import logging
import sys
import time

import requests

logger = logging.getLogger(__name__)


def request_api_wrapper(url, data, score_key="rewards", try_max_times=5):
    """Synchronous request API wrapper"""
    headers = {
        "Content-Type": "application/json",
    }
    for _ in range(try_max_times):
        try:
            response = requests.post(url=url, json=data, headers=headers, timeout=180)
            response.raise_for_status()  # Raise an HTTPError for bad responses
            response = response.json()
            assert score_key in response, f"{score_key} not in {response}"
            return response.get(score_key)
        except requests.RequestException as e:
            logger.info(f"Request error, please check: {e}")
        except Exception as e:
            logger.info(f"Unexpected error, please check: {e}")
        time.sleep(1)

    raise Exception(f"Request error for {try_max_times} times, returning None. Please check the API server.")


def remote_rm_fn(api_url, queries, prompts, labels, score_key="rewards"):
    scores = request_api_wrapper(api_url, {"query": queries, "prompts": prompts, "labels": labels}, score_key)
    return scores  # OpenRLHF: torch.tensor(scores)


def main() -> None:
    url = sys.argv[1]
    body = json.load(sys.stdin)
    if "prompts" in body:
        tensor = remote_rm_fn(url, body["query"], body["prompts"], body.get("labels"), score_key="scores")
    else:  # older clients send only `query`
        tensor = request_api_wrapper(url, {"query": body["query"]})
    response = requests.post(url=url, json=body, headers={"Content-Type": "application/json"}, timeout=180).json()
    print(json.dumps({"tensor": tensor, "response": response}))


if __name__ == "__main__":
    main()
