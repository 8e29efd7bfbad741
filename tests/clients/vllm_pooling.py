"""A vLLM `/pooling` caller, as vLLM's own pooling client example calls it (examples/online_serving
in vllm-project/vllm): a plain `requests` JSON POST of {"model"?, "input"} to BASE_URL/pooling with
a `User-Agent` header. Usage: vllm_pooling.py BASE_URL, the body as JSON on stdin; prints
{"status", "response"}."""

import json
import sys

import requests


def main() -> None:
    r = requests.post(f"{sys.argv[1]}/pooling", headers={"User-Agent": "Test Client"}, json=json.load(sys.stdin))
    print(json.dumps({"status": r.status_code, "response": r.json()}))


if __name__ == "__main__":
    main()
