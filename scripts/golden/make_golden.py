#!/usr/bin/env python3
"""Reference step scores for medprm's test model, computed with Hugging Face transformers.

Follows the official Med-PRM scoring path (DESIGN.md section 1): Med-PRM step splitting for raw
solutions, the document budget (each document costs its token count + 1, the first one that does
not fit ends the list), the chat template rendered with add_generation_prompt=True, the rendered
text tokenized WITH special tokens (double BOS), tag positions found from the offset mapping, and
p = softmax([logit(" +"), logit(" -")])[0] in float32.

Run by hand (not in CI):

    cargo run --release -- gen-test-model --out /tmp/medprm-test-model
    python scripts/golden/make_golden.py --model /tmp/medprm-test-model \
        --out tests/golden/med-prm.json

Needs: torch, transformers (see requirements.txt beside this file).
"""
import argparse
import json
import re
import os
import sys

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

# The Med-PRM records these goldens read: repo copies (MIT, see tests/data/README.md).
REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data")

SYSTEM_PROMPT = (
    "You are an evaluator assessing the logicality and validity of the reasoning in each step of "
    "the given explanation. In order to support the evaluation, the relevant documents, the "
    "question, and the explanation are provided sequentially. If the reasoning contains errors, "
    "output - after that step. If the reasoning in a step is logical and valid, output + after "
    "that step. "
)
TAG = " ки"
MAX_TOKEN_LEN, DOC_RESERVE = 4096, 1024
STEP_RE = re.compile(r"(?:## )?Step \d+:")


def med_prm_steps(text):
    """Raw solution -> tagged text, the rule that made the test set's prm_processed_solution."""
    flat = text.replace("\n", " ")
    marks = list(STEP_RE.finditer(flat))
    if not marks:
        body = flat.strip()
        return body + TAG if body else ""
    parts = []
    head = flat[: marks[0].start()].strip()
    if head:
        parts.append(head)
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(flat)
        parts.append(flat[m.start():end].strip().replace("## ", "") + TAG)
    return " ".join(parts)


def keep_documents(tok, docs):
    budget, used, kept = MAX_TOKEN_LEN - DOC_RESERVE, 0, []
    for d in docs:
        cost = len(tok(d, add_special_tokens=False)["input_ids"]) + 1
        if used + cost > budget:
            break
        used += cost
        kept.append(d)
    return kept


def score_case(tok, model, plus_id, minus_id, case):
    tagged = case.get("prm_processed_solution")
    if tagged is None:
        tagged = med_prm_steps(case["solution"])
    kept = keep_documents(tok, case["related_docs"])
    user = "".join(f"Document {i + 1}: {d}\n\n" for i, d in enumerate(kept))
    user += f"Question: {case['question']}\n\nExplanation: {tagged}"
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = enc["input_ids"]
    positions = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if text[s:e] == TAG]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    probs = [torch.softmax(torch.stack([logits[p][plus_id], logits[p][minus_id]]), 0)[0].item() for p in positions]
    out = dict(case)
    out.update(
        n_docs_kept=len(kept),
        rendered_prompt=text,
        input_ids=ids,
        tag_positions=positions,
        PRM_score_list=probs,
        PRM_min_score=min(probs) if probs else None,
        PRM_score=probs[-1] if probs else None,
    )
    return out


def sentence_pool():
    return [
        "Sepsis is defined as life-threatening organ dysfunction caused by a dysregulated host response to infection.",
        "In adults with septic shock, a mean arterial pressure target of 65 mm Hg is recommended over higher targets.",
        "KDIGO stages acute kidney injury by the rise of serum creatinine and the fall of urine output.",
        "Beta-blockers reduce mortality in heart failure with reduced ejection fraction when titrated to target doses.",
        "Inhaled corticosteroids are the cornerstone of maintenance therapy in persistent asthma.",
        "Metformin remains first-line pharmacotherapy for type 2 diabetes unless contraindicated by renal function.",
        "Polyhydramnios may follow impaired fetal swallowing, as in duodenal or esophageal atresia.",
        "Posterior urethral valves obstruct fetal urine outflow and are associated with oligohydramnios.",
    ]


def doc_of_tokens(tok, n, seed):
    """A guideline-like document of exactly n tokens (no special tokens)."""
    pool = sentence_pool()
    words, i = [], seed
    while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) < n:
        words.extend(pool[i % len(pool)].split())
        i += 1
    while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) > n:
        words.pop()
    text = " ".join(words)
    # Pad one token at a time with short words when removing a word undershot.
    while len(tok(text, add_special_tokens=False)["input_ids"]) < n:
        text += " a"
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == n, "could not hit the exact length"
    return text


def build_cases(tok, reference):
    card = json.load(open(f"{reference}/medprm_model_card_example.json"))
    samples = json.load(open(f"{reference}/medprm_train_samples48.json"))

    def mc_question(s):
        opts = [l.strip() for l in s["options"].strip().split("\n") if l.strip()]
        opts = [f"({o[0]}) {o[3:].strip()}" if len(o) > 2 and o[1] == "." else o for o in opts]
        return s["question"] + "\n\n" + "\n".join(opts)

    def raw_steps(s):
        return "\n".join(st.replace(" ки", "").strip() for st in s["steps"])

    cases = [
        {"name": "model_card", "question": card["question"], "related_docs": card["related_docs"],
         "prm_processed_solution": card["prm_processed_solution"]},
        {"name": "no_docs_raw", "question": mc_question(samples[0]), "related_docs": [],
         "solution": raw_steps(samples[0])},
    ]
    for k in (1, 2, 3, 4):
        s = samples[k]
        cases.append({"name": f"train_sample_{k}", "question": mc_question(s),
                      "related_docs": card["related_docs"][: k % 3],
                      "prm_processed_solution": " ".join(st.strip() for st in s["steps"])})
    big = [doc_of_tokens(tok, 900, i) for i in range(5)]
    cases.append({"name": "docs_overflow_budget", "question": mc_question(samples[5]),
                  "related_docs": big + ["Short trailing document that would fit but must not be tried."],
                  "solution": raw_steps(samples[5])})
    exact = [doc_of_tokens(tok, 1500, 1), doc_of_tokens(tok, 3072 - 1501 - 1, 2), "x"]
    cases.append({"name": "docs_exact_budget", "question": mc_question(samples[6]),
                  "related_docs": exact, "solution": raw_steps(samples[6])})
    cases.append({"name": "preamble", "question": mc_question(samples[7]), "related_docs": card["related_docs"],
                  "solution": "Let me reason about this vignette carefully before choosing.\n\n" + raw_steps(samples[7])})
    cases.append({"name": "no_step_marker", "question": mc_question(samples[8]), "related_docs": [],
                  "solution": "The findings point to pre-renal azotemia from volume depletion, so the answer is (B)."})
    cases.append({"name": "hash_step_markers", "question": mc_question(samples[9]), "related_docs": card["related_docs"][:1],
                  "solution": "## Step 1: Identify the ## key finding.\n## Step 2: Relate it to the options.\n\n## Step 3: The answer is (C)."})
    long_steps = "\n".join(f"Step {i + 1}: " + sentence_pool()[i % 8] + f" This is consideration number {i + 1} of the differential."
                           for i in range(40))
    cases.append({"name": "long_solution", "question": mc_question(samples[10]),
                  "related_docs": [doc_of_tokens(tok, 1200, 3), doc_of_tokens(tok, 1000, 4)], "solution": long_steps})
    cases.append({"name": "unicode", "question": "Ein 45-jähriger Patient mit Fieber 39 °C, β-Laktam-Allergie und SpO₂ 91 % — was tun? 患者は咳をしている。 مريض 🩺\n\n(A) Cefazolin\n(B) Levofloxacin",
                  "related_docs": ["Пики заболеваемости приходятся на зиму; naïve café résumé — e\u0301 combining.", "\u001f Leading control\u001f"],
                  "solution": "Step 1: β-Laktam-Allergie → Kreuzreaktivität beachten 🙂.\nStep 2: 日本語のステップ。 The answer is (B).\u001f"})
    cases.append({"name": "blank_solution", "question": mc_question(samples[11]), "related_docs": [], "solution": "  \n "})
    # A rank group: candidates for one question.
    group_q = mc_question(samples[12])
    variants = [samples[12]["steps"], samples[12]["steps"][:3], samples[13]["steps"], samples[14]["steps"][::-1]]
    for j, st in enumerate(variants):
        cases.append({"name": f"rank_group_{j}", "question": group_q, "related_docs": card["related_docs"],
                      "prm_processed_solution": " ".join(x.strip() for x in st)})
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", default=REFERENCE_DIR,
                    help="directory holding the Med-PRM records (default: the repo copies in tests/data/)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation="eager").eval()
    cfg = json.load(open(f"{args.model}/config.json"))
    plus_id = tok(" +", add_special_tokens=False)["input_ids"][0]
    minus_id = tok(" -", add_special_tokens=False)["input_ids"][0]
    cases = [score_case(tok, model, plus_id, minus_id, c) for c in build_cases(tok, args.reference)]
    group = [c for c in cases if c["name"].startswith("rank_group_")]
    valid = [(i, c["PRM_min_score"]) for i, c in enumerate(group) if c["PRM_min_score"] is not None]
    best = max(valid, key=lambda x: x[1])[0] if valid else None
    out = {
        "test_model": cfg.get("_medprm_test_model"),
        "generated_by": "scripts/golden/make_golden.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "label_ids": [plus_id, minus_id],
        "cases": cases,
        "rank_groups": [{"cases": [c["name"] for c in group], "best_of_n": best}],
    }
    with open(args.out, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    for c in cases:
        print(f"{c['name']:<22} tokens={len(c['input_ids']):>5} docs={c['n_docs_kept']} steps={len(c['PRM_score_list'])} "
              f"min={c['PRM_min_score']}", file=sys.stderr)


if __name__ == "__main__":
    main()
