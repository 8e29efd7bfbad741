#!/usr/bin/env python3
"""Best-of-N with medprm: send N candidate solutions of one question to POST /v1/rank and print
the selected candidate and every candidate's solution and step scores.

    pip install -r proto-docs/examples/requirements.txt
    python3 proto-docs/examples/best_of_n.py                                # built-in example, $MEDPRM_URL
    MEDPRM_URL=http://127.0.0.1:8081 python3 proto-docs/examples/best_of_n.py    # after `make serve PORT=8081`
    python3 proto-docs/examples/best_of_n.py --url https://prm.example.com --api-key KEY --input question.json

--input is a JSON file {"question": str, "documents": [str], "candidates": [str | {"steps": [...]}
| {"solution": str}]}: a plain string is a solution text cut into steps at "Step N:" markers.
The URL defaults to $MEDPRM_URL (else http://127.0.0.1:8080, where `make serve` listens) and the
API key to $MEDPRM_API_KEY. 429 (overloaded) and 503 (not ready) are retried after
the server's Retry-After.
"""

import argparse
import json
import os
import sys
import time

import requests

EXAMPLE = {
    "question": (
        "A 58-year-old man with type 2 diabetes has an eGFR of 48 mL/min/1.73 m2 and a urine "
        "albumin-to-creatinine ratio of 350 mg/g despite a maximally dosed ACE inhibitor. Which drug "
        "class added next best lowers his risk of kidney failure?\n\n"
        "(A) SGLT2 inhibitor\n(B) Sulfonylurea\n(C) Thiazolidinedione\n(D) Alpha-blocker"
    ),
    "documents": [
        "KDIGO 2022 diabetes in CKD: an SGLT2 inhibitor is recommended for patients with type 2 "
        "diabetes, CKD and an eGFR of at least 20 mL/min/1.73 m2."
    ],
    "candidates": [
        "Step 1: Severe albuminuria persists on an ACE inhibitor. Step 2: Sulfonylureas lower "
        "glucose and protect the kidney best. Step 3: The answer is (B).",
        "Step 1: The patient has diabetic kidney disease with eGFR 48 and albuminuria despite an ACE "
        "inhibitor. Step 2: An SGLT2 inhibitor is recommended down to an eGFR of 20 and reduces "
        "kidney failure. Step 3: The answer is (A).",
        {"steps": ["Alpha-blockers lower blood pressure.", "The answer is (D)."]},
    ],
}


def as_candidate(c):
    return {"solution": c} if isinstance(c, str) else c


def rank(url, api_key, body, timeout, retries=5):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for attempt in range(retries + 1):
        r = requests.post(url.rstrip("/") + "/v1/rank", json=body, headers=headers, timeout=timeout)
        if r.status_code in (429, 503) and attempt < retries:
            wait = float(r.headers.get("Retry-After", "1"))
            print(f"{r.status_code} {r.json().get('error_type')}: retrying in {wait:g}s", file=sys.stderr)
            time.sleep(wait)
            continue
        return r
    return r


def fmt(x):
    return "  n/a " if x is None else f"{x:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("MEDPRM_URL", "http://127.0.0.1:8080"),
                    help="medprm base URL (default $MEDPRM_URL, else http://127.0.0.1:8080)")
    ap.add_argument("--api-key", default=os.environ.get("MEDPRM_API_KEY"), help="bearer key (default $MEDPRM_API_KEY)")
    ap.add_argument("--input", help="JSON file with question, documents, candidates (default: built-in example)")
    ap.add_argument("--selection", default="best_of_n", choices=["best_of_n", "weighted_vote", "majority_vote"])
    ap.add_argument("--aggregation", choices=["min", "last", "mean", "prod"], help="default: the profile's (min)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    ap.add_argument("--json", action="store_true", help="print the raw response")
    args = ap.parse_args()

    task = EXAMPLE
    if args.input:
        with open(args.input, encoding="utf-8") as f:
            task = json.load(f)
    body = {
        "question": task["question"],
        "candidates": [as_candidate(c) for c in task["candidates"]],
        "selection": args.selection,
    }
    if task.get("documents"):
        body["documents"] = task["documents"]
    if args.aggregation:
        body["aggregation"] = args.aggregation

    try:
        r = rank(args.url, args.api_key, body, args.timeout)
    except requests.RequestException as e:
        sys.exit(f"cannot reach {args.url}: {e}")
    try:
        out = r.json()
    except ValueError:
        sys.exit(f"HTTP {r.status_code}: {r.text[:200]}")
    if r.status_code != 200:
        sys.exit(f"HTTP {r.status_code} {out.get('error_type')}: {out.get('error')}")
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return

    n = out["usage"]["candidates"]
    print(f"{n} candidates, selection={out['selection']}, aggregation={out['aggregation']}, "
          f"documents kept {out['documents']['kept']}/{out['documents']['supplied']}, "
          f"{out['usage']['prompt_tokens']} prompt tokens, "
          f"server time {r.headers.get('x-total-time', '?')} ms "
          f"(queue {r.headers.get('x-queue-time', '?')}, inference {r.headers.get('x-inference-time', '?')})")
    sel = out["selected"]
    if sel is None:
        print("selected: none (no candidate has a scored step)")
    else:
        print(f"selected: candidate {sel['index']}  answer={sel['answer']}  score={fmt(sel['score'])}")
    print()
    print(" rank  cand  answer  score    min     last    mean   steps (p+ per step)")
    for rank_pos, c in enumerate(out["candidates"], 1):
        a = c["aggregates"]
        steps = " ".join(fmt(s["score"]).strip() for s in c["steps"])
        mark = "*" if sel and c["index"] == sel["index"] else " "
        print(f"{mark}{rank_pos:>4}  {c['index']:>4}  {str(c['answer']):>6}  {fmt(c['score'])}  "
              f"{fmt(a['min'])}  {fmt(a['last'])}  {fmt(a['mean'])}  {steps}")


if __name__ == "__main__":
    main()
