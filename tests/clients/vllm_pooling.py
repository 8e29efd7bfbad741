"""vLLM's `/pooling` call as its example client makes it (examples/online_serving/
openai_pooling_client.py in vllm-project/vllm: `requests.post(api_url, headers={"User-Agent":
"Test Client"}, json=prompt)`). Usage: vllm_pooling.py BASE_URL, the body as JSON on stdin;
prints {"status", "response"}."""

import json
import sys

import requests


def post_http_request(prompt: dict, api_url: str) -> requests.Response:
    headers = {"User-Agent": "Test Client"}
    return requests.post(api_url, headers=headers, json=prompt)


def main() -> None:
    api_url = f"{sys.argv[1]}/pooling"
    resp = post_http_request(prompt=json.load(sys.stdin), api_url=api_url)
    print(json.dumps({"status": resp.status_code, "response": resp.json()}))


if __name__ == "__main__":
    main()
