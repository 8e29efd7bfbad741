"""Goldens for `medprm eval`'s step-level metrics (src/eval/metrics_step.rs), computed here by
independent implementations: scikit-learn's roc_auc_score and f1_score, ProcessBench's F1 formula
(harmonic mean of the accuracy on erroneous and on correct samples), ECE written out with numpy.

Run by hand in the pinned venv (scripts/golden/requirements-eval.txt):
  ~/.cache/medprm/venv-eval-golden/bin/python scripts/golden/make_golden_eval.py --make-fixture
  ~/.cache/medprm/venv-eval-golden/bin/python scripts/golden/make_golden_eval.py
--make-fixture (re)writes tests/data/eval/step-scores.json from the Med-PRM training samples'
hard labels with seeded scores; the plain run writes tests/golden/eval-metrics.json from it.
"""
import argparse
import json
import random
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/data/eval/step-scores.json"
GOLDEN = ROOT / "tests/golden/eval-metrics.json"
TRAIN = ROOT.parent / "shared/reference/medprm_train_samples100.json"
THRESHOLD = 0.5
BINS = 10


def make_fixture(train_path):
    recs = json.load(open(train_path))[:40]
    rng = random.Random(20260311)
    items = []
    for i, r in enumerate(recs):
        labels = list(r["prm_hard_label"])
        if i % 4 == 3 and 0 in labels:
            # ProcessBench-style: steps after the first error are unlabelled.
            k = labels.index(0)
            labels = labels[: k + 1] + [None] * (len(labels) - k - 1)
        scores = []
        for l in labels:
            mu = 0.62 if l == 1 else (0.38 if l == 0 else 0.5)
            # Two decimals: tied scores exercise the tie handling of the AUROC.
            scores.append(round(min(1.0, max(0.0, rng.gauss(mu, 0.22))), 2))
        items.append({"data_source": r["data_source"], "sample_id": r["sample_id"], "labels": labels, "scores": scores})
    FIXTURE.write_text(json.dumps({"source": "tests/data/eval/README.md", "threshold": THRESHOLD, "items": items}, indent=1) + "\n")


def processbench(items, t):
    err, cor = [], []
    for it in items:
        labels, scores = it["labels"], it["scores"]
        gold = labels.index(0) if 0 in labels else -1
        pred = next((j for j, s in enumerate(scores) if s < t), -1)
        (err if gold != -1 else cor).append(pred == gold)
    a = float(np.mean(err)) if err else None
    b = float(np.mean(cor)) if cor else None
    f1 = None if a is None or b is None else (0.0 if a + b == 0 else 2 * a * b / (a + b))
    return a, b, f1


def steps(items):
    y, s = [], []
    for it in items:
        for l, v in zip(it["labels"], it["scores"]):
            if l is not None:
                y.append(int(l))
                s.append(float(v))
    return np.array(y), np.array(s)


def at(items, t):
    a, b, pb = processbench(items, t)
    y, s = steps(items)
    pred = (s >= t).astype(int)
    pos = f1_score(y, pred, pos_label=1, zero_division=0)
    neg = f1_score(y, pred, pos_label=0, zero_division=0)
    macro = f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)
    return {
        "threshold": t,
        "erroneous_accuracy": a,
        "correct_accuracy": b,
        "processbench_f1": pb,
        "positive_f1": float(pos),
        "negative_f1": float(neg),
        "macro_f1": float(macro),
        "step_accuracy": float(np.mean(pred == y)),
    }


def ece(y, s):
    idx = np.clip(np.floor(s * BINS).astype(int), 0, BINS - 1)
    total = 0.0
    for b in range(BINS):
        m = idx == b
        if m.any():
            total += m.sum() / len(s) * abs(y[m].mean() - s[m].mean())
    return float(total)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-fixture", action="store_true")
    ap.add_argument("--train", default=str(TRAIN))
    args = ap.parse_args()
    if args.make_fixture:
        make_fixture(args.train)
    fx = json.loads(FIXTURE.read_text())
    items, t = fx["items"], fx["threshold"]
    y, s = steps(items)
    sweep = [at(items, k / 100) for k in range(101)]
    best = None
    for a in sweep:
        if a["processbench_f1"] is not None and (best is None or a["processbench_f1"] > best["processbench_f1"]):
            best = a
    per_source = {}
    for src in sorted({it["data_source"] for it in items}):
        sub = [it for it in items if it["data_source"] == src]
        ys, ss = steps(sub)
        per_source[src] = {
            "at_threshold": at(sub, t),
            "auroc": float(roc_auc_score(ys, ss)) if len(set(ys.tolist())) == 2 else None,
        }
    out = {
        "generated_by": "scripts/golden/make_golden_eval.py (scikit-learn roc_auc_score/f1_score, ProcessBench F1)",
        "fixture": "tests/data/eval/step-scores.json",
        "at_threshold": at(items, t),
        "auroc": float(roc_auc_score(y, s)),
        "ece": ece(y, s),
        "best_threshold_on_this_data": best,
        "per_source": per_source,
    }
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {GOLDEN}: auroc {out['auroc']:.6f}, processbench_f1 {out['at_threshold']['processbench_f1']}")


if __name__ == "__main__":
    main()
