#!/usr/bin/env python3
"""Reference step values for medprm's other PRM formats, computed with Hugging Face transformers on
medprm's seeded test checkpoints, each following its authors' published scoring recipe step by step:

* meds3 (MedS3, pixas/MedSSS, Evol_Instruct/solver/sc_vm_solver.py, obtain_prm_value_for_single_pair
  and prm_select / utils.compute_weighted_values): LlamaForTokenClassification(num_labels=2);
  prompt = chat template over [user: question] with add_generation_prompt=True, tokenized without
  special tokens; the response split on "\\n\\nStep", every piece not starting with "Step" given
  that prefix back; each piece + "\\n\\n" tokenized on its own (no special tokens) and appended;
  value = softmax(logits)[..., 1] at the last token of each piece. Selection prm-min-vote-sum and
  prm-vote-sum over the values without the first one (min) or the last value (vote).
* qwen (Qwen/Qwen2.5-Math-PRM-7B model card, Qwen2ForProcessRewardModel): a Qwen2Model and
  score = Sequential(Linear(h, h), ReLU, Linear(h, 2)); messages system / user (query) / assistant
  ("<extra_0>".join(steps) + "<extra_0>"), apply_chat_template(tokenize=False,
  add_generation_prompt=False), tokenizer.encode; value = softmax(logits)[..., 1] at every
  <extra_0>.
* rlhflow (RLHFlow Llama3.1-8B-PRM model card): conversation of user turns (first: question + " " +
  step 1; then each step) each answered "+" by the assistant; for step k the conversation up to
  its answer is templated and tokenized (apply_chat_template tokenizes without special tokens),
  and p = softmax(logits[-3][[+, -]])[0] (the token before the "+"); + and - are
  tokenizer.encode("+")[-1] and tokenizer.encode("-")[-1]; a solution scores the mean of its steps.

Run by hand (not in CI):

    cargo run --release -- gen-test-model --kind meds3 --out /tmp/meds3
    python scripts/golden/make_golden_prm.py --kind meds3 --model /tmp/meds3 \\
        --out tests/golden/meds3.json
    (qwen: --kind qwen-prm for gen-test-model; rlhflow: the med-prm test model)

Needs: torch, transformers, safetensors, peft (see requirements.txt beside this file).
"""
import argparse
import json
import sys
from collections import Counter, defaultdict
import os
from itertools import chain

import numpy as np

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM, LlamaForTokenClassification, Qwen2Model

# The Med-PRM records these goldens read: repo copies (MIT, see tests/data/README.md).
REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data")

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def mc_question(s):
    opts = [l.strip() for l in s["options"].strip().split("\n") if l.strip()]
    opts = [f"({o[0]}) {o[3:].strip()}" if len(o) > 2 and o[1] == "." else o for o in opts]
    return s["question"] + "\n\n" + "\n".join(opts)


def plain_steps(s):
    """The sample's steps without the Med-PRM tag and without their "Step N:" marker."""
    out = []
    for st in s["steps"]:
        st = st.replace(" ки", "").strip()
        if st.startswith("Step ") and ":" in st[:9]:
            st = st.split(":", 1)[1].strip()
        out.append(st)
    return out


def meds3_response(steps, answer):
    body = ["Step 0: Let's break down this problem step by step."]
    body += [f"Step {i + 1}: {t}" for i, t in enumerate(steps)]
    body.append(f"Step {len(steps) + 1}: The answer is {answer}.")
    return "\n\n".join(body)


# ---------------------------------------------------------------- MedS3
def meds3_values(tok, model, question, response):
    """obtain_prm_value_for_single_pair, the token-classification branch, step by step."""
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
    prompt_text = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    completions = ["Step" + c if not c.startswith("Step") else c for c in response.split("\n\nStep")]
    completion_ids = [tok(c + "\n\n", add_special_tokens=False)["input_ids"] for c in completions]
    response_id = list(chain(*completion_ids))
    pre_response_id = tok(prompt_text, add_special_tokens=False)["input_ids"]
    input_ids = pre_response_id + response_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(input_ids).unsqueeze(0)).logits
    value = torch.softmax(logits, dim=-1)[..., 1]
    index = []
    for i, c in enumerate(completion_ids):
        index.append(len(c) + len(pre_response_id) - 1 if i == 0 else index[-1] + len(c))
    return {
        "rendered_prompt": prompt_text,
        "steps": completions,
        "input_ids": input_ids,
        "step_positions": index,
        "step_values": value[0, index].tolist(),
    }


def meds3_select(answers, values, rule):
    """compute_weighted_values + prm_select for one question: the chosen candidate's index."""
    method = rule.split("prm-")[1]
    op = method.split("-")[0]
    mapping = {"min": lambda x: np.min(x[1:]), "mean": lambda x: np.mean(x[1:])}
    value_op = (lambda x: x[-1]) if op == "vote" else mapping[op]
    answer_dict = defaultdict(float)
    for a, v in zip(answers, [value_op(x) for x in values]):
        answer_dict[a] += v
    max_answer = max(answer_dict, key=answer_dict.get)
    # prm_select's per-candidate value
    per = [x[-1] for x in values] if op == "vote" else [np.min(x[1:]) if len(x) > 1 else 0 for x in values]
    best = answer_dict[max_answer]
    ties = [a for a, v in answer_dict.items() if v == best]
    n = len(answers)
    if len(ties) > 1:
        return max(((j, per[j]) for j in range(n) if answers[j] == max_answer), key=lambda t: t[1])[0]
    chosen, best_value = None, float("-inf")
    for j in range(n):
        if answers[j] in ties and per[j] > best_value:
            chosen, best_value = j, per[j]
    return chosen


def meds3_cases(samples):
    cases = []
    q = mc_question(samples[20])
    group = [
        (plain_steps(samples[20]), "A"), (plain_steps(samples[21])[:3], "B"), (plain_steps(samples[22]), "A"),
        (plain_steps(samples[20])[::-1], "C"), (plain_steps(samples[23])[:2], "B"),
    ]
    for j, (st, a) in enumerate(group):
        cases.append({"name": f"rank_group_{j}", "question": q, "answer": a, "solution": meds3_response(st, a)})
    cases.append({"name": "preamble_without_step", "question": mc_question(samples[24]), "answer": "D",
                  "solution": "Let me think about the vignette first.\n\n" + meds3_response(plain_steps(samples[24]), "D")})
    cases.append({"name": "unicode", "question": "Ein 45-jähriger Patient mit Fieber 39 °C und β-Laktam-Allergie — was tun? 患者は咳をしている。\n\n(A) Cefazolin\n(B) Levofloxacin",
                  "answer": "B", "solution": meds3_response(["β-Laktam-Allergie → Kreuzreaktivität beachten 🙂.", "日本語のステップ。"], "B")})
    cases.append({"name": "inner_newlines", "question": mc_question(samples[25]), "answer": "A",
                  "solution": "Step 0: Let's break down this problem step by step.\n\nStep 1: First line.\nSecond line of the same step.\n\nA paragraph without a marker.\n\nStep 2: The answer is A."})
    cases.append({"name": "only_root", "question": mc_question(samples[26]), "answer": "C",
                  "solution": "Step 0: Let's break down this problem step by step."})
    return cases, [{"cases": [f"rank_group_{j}" for j in range(len(group))]}]


# ---------------------------------------------------------------- Qwen2.5-Math-PRM
class Qwen2ProcessRewardModel(torch.nn.Module):
    """The layout of Qwen2ForProcessRewardModel (remote code of Qwen2.5-Math-PRM-7B): the Qwen2
    backbone as `model`, and `score` = Linear(h, h) -> ReLU -> Linear(h, num_labels)."""

    def __init__(self, config):
        super().__init__()
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, config.num_labels))

    def forward(self, input_ids):
        hidden = self.model(input_ids=input_ids).last_hidden_state
        return self.score(hidden)


def qwen_values(tok, model, question, steps):
    messages = [
        {"role": "system", "content": QWEN_SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = tok.encode(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids)
    sep = tok.encode("<extra_0>")[0]
    mask = input_ids == sep
    probs = torch.softmax(logits, dim=-1) * mask.unsqueeze(-1)
    sample = probs[0]
    positive = sample[sample != 0].view(-1, 2)[:, 1]
    return {
        "rendered_prompt": text,
        "input_ids": input_ids[0].tolist(),
        "step_positions": mask[0].nonzero().flatten().tolist(),
        "step_values": positive.tolist(),
    }


def qwen_cases(samples):
    cases = [{"name": "model_card_like", "question": "Sue lives in a fun neighborhood. One weekend, the neighbors decided to play a prank on Sue. On Friday morning, the neighbors placed 18 pink plastic flamingos out on Sue's front yard. On Saturday morning, the neighbors took back one third of the flamingos, painted them white, and put these newly painted white flamingos back out on Sue's front yard. Then, on Sunday morning, they added another 18 pink plastic flamingos to the collection. At noon on Sunday, how many more pink plastic flamingos were out than white plastic flamingos?",
              "steps": ["To find out how many more pink plastic flamingos were out than white plastic flamingos at noon on Sunday, we can break down the problem into steps.",
                        "On Saturday, they take back one third of the flamingos. Since there were 18 flamingos, (1/3 \\times 18 = 6) flamingos are taken back. So, they have (18 - 6 = 12) flamingos left.",
                        "On Sunday, the neighbors add another 18 pink plastic flamingos to Sue's front yard. By the end of Sunday morning, Sue has (12 + 18 = 30) pink flamingos and 6 white flamingos.",
                        "To find the difference, subtract the number of white flamingos from the number of pink flamingos: (30 - 6 = 24). Therefore, at noon on Sunday, there were 24 more pink plastic flamingos out than white plastic flamingos. The answer is (\\boxed{24})."]}]
    q = mc_question(samples[30])
    for j, k in enumerate((30, 31, 32)):
        cases.append({"name": f"rank_group_{j}", "question": q, "steps": plain_steps(samples[k])})
    cases.append({"name": "unicode", "question": "Ein Patient mit SpO₂ 91 % — was tun? 患者は咳をしている。 مريض",
                  "steps": ["β-Laktam-Allergie → Kreuzreaktivität beachten 🙂.", "日本語のステップ。\nZweite Zeile."]})
    cases.append({"name": "one_step", "question": mc_question(samples[33]), "steps": ["The answer is (A)."]})
    return cases, [{"cases": [f"rank_group_{j}" for j in range(3)]}]


# ---------------------------------------------------------------- RLHFlow multi-turn
def rlhflow_values(tok, model, plus_id, minus_id, question, steps):
    values, positions, full = [], [], None
    conversation = []
    for k in range(len(steps)):
        text = question + " " + steps[0] if k == 0 else steps[k]
        conversation.append({"content": text, "role": "user"})
        conversation.append({"content": "+", "role": "assistant"})
        rendered = tok.apply_chat_template(conversation, tokenize=False)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[:, -3, [plus_id, minus_id]]
        values.append(logits.softmax(dim=-1)[:, 0].item())
        positions.append(len(ids) - 3)
        full = (rendered, ids)
    return {"rendered_prompt": full[0], "input_ids": full[1], "step_positions": positions, "step_values": values}


def rlhflow_cases(samples):
    cases = []
    q = mc_question(samples[40])
    for j, k in enumerate((40, 41, 42)):
        cases.append({"name": f"rank_group_{j}", "question": q, "steps": plain_steps(samples[k])})
    cases.append({"name": "unicode", "question": "Ein Patient mit SpO₂ 91 % — was tun? 患者は咳をしている。",
                  "steps": ["β-Laktam-Allergie → Kreuzreaktivität beachten 🙂.", "日本語のステップ。"]})
    cases.append({"name": "one_step", "question": mc_question(samples[43]), "steps": ["The answer is (A)."]})
    return cases, [{"cases": [f"rank_group_{j}" for j in range(3)]}]


def checked(model_and_info):
    model, info = model_and_info
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    assert not bad, f"the checkpoint does not match the architecture: {bad}"
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", required=True, choices=["meds3", "qwen", "rlhflow"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", default=REFERENCE_DIR,
                    help="directory holding the Med-PRM records (default: the repo copies in tests/data/)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    samples = json.load(open(f"{args.reference}/medprm_train_samples48.json"))
    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = json.load(open(f"{args.model}/config.json"))
    out = {"test_model": cfg.get("_medprm_test_model"), "generated_by": "scripts/golden/make_golden_prm.py",
           "kind": args.kind, "torch": torch.__version__, "transformers": transformers.__version__}
    if args.kind == "meds3":
        model = checked(LlamaForTokenClassification.from_pretrained(
            args.model, num_labels=2, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True))
        cases, groups = meds3_cases(samples)
        for c in cases:
            c.update(meds3_values(tok, model, c["question"], c["solution"]))
        for g in groups:
            member = [next(c for c in cases if c["name"] == n) for n in g["cases"]]
            answers = [c["answer"] for c in member]
            values = [c["step_values"] for c in member]
            g["min_vote_sum"] = meds3_select(answers, values, "prm-min-vote-sum")
            g["vote_sum"] = meds3_select(answers, values, "prm-vote-sum")
        # The adapter path: PEFT merges the test model's LoRA adapter (TOKEN_CLS, score saved whole).
        from peft import PeftModel
        base = checked(LlamaForTokenClassification.from_pretrained(
            args.model, num_labels=2, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True))
        merged = PeftModel.from_pretrained(base, f"{args.model}/adapter").merge_and_unload().eval()
        out["adapter_cases"] = []
        for c in cases[:2] + cases[-3:-1]:
            r = meds3_values(tok, merged, c["question"], c["solution"])
            out["adapter_cases"].append({"name": c["name"], "question": c["question"], "solution": c["solution"],
                                         "input_ids": r["input_ids"], "step_positions": r["step_positions"],
                                         "step_values": r["step_values"]})
    elif args.kind == "qwen":
        config = AutoConfig.from_pretrained(args.model)
        config._attn_implementation = "eager"
        model = Qwen2ProcessRewardModel(config)
        state = load_file(f"{args.model}/model.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not missing and not unexpected, (missing, unexpected)
        model = model.float().eval()
        cases, groups = qwen_cases(samples)
        for c in cases:
            c.update(qwen_values(tok, model, c["question"], c["steps"]))
    else:
        model = checked(LlamaForCausalLM.from_pretrained(
            args.model, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True))
        plus_id = tok.encode("+")[-1]
        minus_id = tok.encode("-")[-1]
        out["label_ids"] = [plus_id, minus_id]
        cases, groups = rlhflow_cases(samples)
        for c in cases:
            c.update(rlhflow_values(tok, model, plus_id, minus_id, c["question"], c["steps"]))
    if args.kind != "meds3":
        # Best-of-N: Qwen's min over steps; RLHFlow's prm_evaluate takes the mean of the step
        # scores, then scores_list.index(max(scores_list)) (the first best).
        agg = {"qwen": min, "rlhflow": lambda v: sum(v) / len(v)}[args.kind]
        for g in groups:
            member = [next(c for c in cases if c["name"] == n) for n in g["cases"]]
            scores = [agg(c["step_values"]) for c in member]
            g["best_of_n"] = scores.index(max(scores))
    out["cases"] = cases
    out["rank_groups"] = groups
    with open(args.out, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    for c in cases:
        print(f"{c['name']:<22} tokens={len(c['input_ids']):>5} steps={len(c['step_values'])} "
              f"values={[round(v, 4) for v in c['step_values']]}", file=sys.stderr)
    print(json.dumps(groups), file=sys.stderr)


if __name__ == "__main__":
    main()
