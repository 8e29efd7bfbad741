//! The labelled record: the published Med-PRM training set's fields in its order, then medprm's
//! (the label/review contract, section 1).

use serde_json::{json, Map, Value};

use super::evidence::Evidence;
use super::hybrid::Hybrid;
use super::input::Item;
use super::rollout::StepMc;

/// One judge's verdicts on a solution.
#[derive(Debug, Clone)]
pub struct JudgeResult {
    pub name: String,
    pub url: String,
    pub model: String,
    pub verdicts: Vec<Option<u8>>,
    pub raw: String,
    /// Why the steps without a verdict have none.
    pub error: Option<String>,
}

pub struct Labelled<'a> {
    pub item: &'a Item,
    pub mc: &'a [StepMc],
    pub judges: &'a [JudgeResult],
    pub hybrid: &'a [Hybrid],
    pub evidence: &'a [Evidence],
    pub policy: (&'a str, &'a str),
    pub mode: &'a str,
    /// Adaptive mode: the first error the bisection found.
    pub first_error: Option<usize>,
}

fn opt(v: Option<u8>) -> Value {
    v.map_or(Value::Null, |x| json!(x))
}

pub fn record(l: &Labelled) -> Value {
    let item = l.item;
    let q = &item.question;
    let steps = item.tagged_steps();
    let mut o = Map::new();
    o.insert("sample_id".into(), q.sample_id.clone());
    o.insert("question_id".into(), q.question_id.clone());
    o.insert("data_source".into(), json!(q.data_source));
    o.insert("question".into(), json!(q.question));
    o.insert("options".into(), json!(q.options));
    o.insert("correct_answer".into(), json!(q.correct_answer));
    o.insert("model_answer".into(), json!(item.model_answer));
    o.insert("is_correct".into(), json!(item.is_correct()));
    o.insert("num_steps".into(), json!(steps.len()));
    o.insert("steps".into(), json!(steps));
    o.insert("prm_hard_label".into(), json!(l.mc.iter().map(|m| m.hard).collect::<Vec<_>>()));
    o.insert("prm_soft_label".into(), json!(l.mc.iter().map(|m| m.soft).collect::<Vec<_>>()));
    for j in l.judges {
        o.insert(format!("prm_{}_label", j.name), json!(j.verdicts.iter().map(|v| opt(*v)).collect::<Vec<_>>()));
    }
    o.insert("orm_label".into(), json!(u8::from(item.is_correct())));
    o.insert("full_solution".into(), json!(steps.join(" ")));
    for k in ["review_step_accuracy", "review_step_separation", "review_reward_alignment", "review_comments"] {
        o.insert(k.into(), json!(""));
    }
    o.insert("item_id".into(), json!(item.item_id));
    if !q.images_json.is_null() {
        o.insert("images".into(), q.images_json.clone());
    }
    o.insert("hybrid_label".into(), json!(l.hybrid.iter().map(|h| opt(h.label)).collect::<Vec<_>>()));
    o.insert("hybrid_confidence".into(), json!(l.hybrid.iter().map(|h| h.confidence).collect::<Vec<_>>()));
    o.insert(
        "label_source".into(),
        json!(l.hybrid.iter().map(|h| if h.uncertain() { "uncertain" } else { "hybrid" }).collect::<Vec<_>>()),
    );
    o.insert("evidence".into(), json!(l.evidence));
    let evidence_ids: Vec<&str> = l.evidence.iter().map(|e| e.id.as_str()).collect();
    let prov_steps: Vec<Value> = (0..steps.len())
        .map(|i| {
            let m = &l.mc[i];
            let judges: Map<String, Value> = l
                .judges
                .iter()
                .map(|j| {
                    let error = match (j.verdicts[i], &j.error) {
                        (None, Some(e)) => json!(e),
                        (None, None) => json!("no verdict"),
                        _ => Value::Null,
                    };
                    (j.name.clone(), json!({"verdict": opt(j.verdicts[i]), "raw": j.raw, "error": error}))
                })
                .collect();
            let h = &l.hybrid[i];
            json!({
                "index": i, "rollouts": m.rollouts, "correct": m.correct, "answers": m.answers, "mc_source": m.source,
                "judges": judges, "evidence_ids": evidence_ids,
                "hybrid": {"label": opt(h.label), "confidence": h.confidence, "uncertain": h.uncertain()},
            })
        })
        .collect();
    let mut prov = json!({
        "policy": {"url": l.policy.0, "model": l.policy.1},
        "judges": l.judges.iter().map(|j| json!({"name": j.name, "url": j.url, "model": j.model})).collect::<Vec<_>>(),
        "mode": l.mode,
        "steps": prov_steps,
    });
    if let Some(f) = l.first_error {
        prov["first_error"] = json!(f);
    }
    o.insert("provenance".into(), prov);
    Value::Object(o)
}
