//! The HTML pages: minijinja templates (templates/review/, embedded) with HTML autoescaping, and
//! the views the item page shows.

use minijinja::{AutoEscape, Environment};
use serde_json::{json, Value as Json};

use super::item::{self, Cells, FINAL};
use super::store::{AuditRow, REVIEW_FIELDS};

/// The template environment; every template autoescapes HTML whatever its name.
pub fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    for (name, src) in [
        ("base.html", include_str!("../../templates/review/base.html")),
        ("login.html", include_str!("../../templates/review/login.html")),
        ("queue.html", include_str!("../../templates/review/queue.html")),
        ("item.html", include_str!("../../templates/review/item.html")),
        ("stats.html", include_str!("../../templates/review/stats.html")),
    ] {
        env.add_template(name, src).expect("review templates parse");
    }
    env
}

fn verdict(v: Option<u8>) -> &'static str {
    match v {
        Some(1) => "+",
        Some(0) => "−",
        _ => "none",
    }
}

fn show_label(v: &str) -> &'static str {
    match v {
        "1" => "expert: + correct",
        "0" => "expert: − incorrect",
        _ => "expert: —",
    }
}

/// Media types an image `path` may have: browser rasters, and DICOM (sent as PNG).
pub const IMAGE_PATH_TYPES: [&str; 5] = ["image/png", "image/jpeg", "image/gif", "image/webp", "application/dicom"];

/// Image sources of the record: `data` as a data: URL of an allowed raster type, `path` through
/// the image route. Anything else is left out.
fn images(rec: &Json, item_id: &str) -> Vec<String> {
    let allowed = ["image/png", "image/jpeg", "image/gif", "image/webp"];
    let mut out = Vec::new();
    for (k, im) in rec["images"].as_array().into_iter().flatten().enumerate() {
        let mt = im["media_type"].as_str().unwrap_or("");
        if im["data"].is_string() && allowed.contains(&mt) {
            let d = im["data"].as_str().unwrap_or_default();
            if d.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
                out.push(format!("data:{mt};base64,{d}"));
            }
        } else if im["path"].is_string() && IMAGE_PATH_TYPES.contains(&mt) {
            out.push(format!("/item/image?id={}&k={k}", urlencode(item_id)));
        }
    }
    out
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// What the item template needs. `slot` is the slot being edited; `others` labels shown beside
/// (the final label when editing one's own slot, the reviewers' when adjudicating).
pub struct ItemPage<'a> {
    pub item_id: &'a str,
    pub data_source: &'a str,
    pub rec: &'a Json,
    pub cells: &'a Cells,
    pub slot: i64,
    pub slot_name: &'a str,
    pub per_item: usize,
    pub status: &'a str,
    pub users: &'a std::collections::BTreeMap<i64, String>,
    pub history: &'a [AuditRow],
    pub next_url: String,
    pub adjudicate_url: String,
}

pub fn item_context(p: &ItemPage) -> Json {
    let rec = p.rec;
    let uncertain = item::uncertain(rec);
    let judges = item::judges(rec);
    let ev_ids: Vec<String> = rec["evidence"].as_array().into_iter().flatten().map(|e| e["id"].as_str().unwrap_or("").to_string()).collect();
    let steps: Vec<Json> = item::steps(rec)
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let key = item::step_key(i);
            let cur = p.cells.get(p.slot, &key);
            let value = cur.map(|v| v.value.clone()).unwrap_or_default();
            let prov = &rec["provenance"]["steps"].as_array().and_then(|a| a.iter().find(|s| s["index"].as_u64() == Some(i as u64)).cloned());
            let step_ev: Vec<Json> = prov
                .as_ref()
                .and_then(|s| s["evidence_ids"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|e| e.as_str())
                .filter_map(|e| ev_ids.iter().position(|x| x == e).map(|k| json!({"anchor": k + 1, "label": format!("evidence {e}")})))
                .collect();
            let mut others = Vec::new();
            if p.slot != FINAL {
                if let Some(l) = p.cells.label(FINAL, i) {
                    others.push(format!("final: {}", verdict(Some(l))));
                }
            } else if p.per_item > 1 {
                for s in p.cells.reviewer_slots() {
                    if let Some(l) = p.cells.label(s, i) {
                        others.push(format!("{}: {}", p.users.get(&s).cloned().unwrap_or_else(|| format!("user {s}")), verdict(Some(l))));
                    }
                }
            }
            json!({
                "index": i, "key": key, "text": text, "uncertain": uncertain.contains(&i),
                "mc": rec["prm_soft_label"].get(i).and_then(Json::as_f64).map_or("none".to_string(), |v| format!("{v:.3}")),
                "hard": item::label_at(rec, "prm_hard_label", i),
                "judges": judges.iter().map(|j| json!({"name": j, "verdict": verdict(item::label_at(rec, &format!("prm_{j}_label"), i))})).collect::<Vec<_>>(),
                "hybrid": item::label_at(rec, "hybrid_label", i).map_or("uncertain", |l| verdict(Some(l))),
                "confidence": rec["hybrid_confidence"].get(i).and_then(Json::as_f64).map(|v| format!("{v:.2}")),
                "evidence": step_ev,
                "others": others,
                "version": cur.map_or(0, |v| v.version), "value": value, "shown": show_label(&value),
            })
        })
        .collect();
    let fields: Vec<Json> = REVIEW_FIELDS
        .iter()
        .map(|f| {
            let cur = p.cells.get(p.slot, f);
            let label = f.trim_start_matches("review_").replace('_', " ");
            json!({"key": f, "label": label, "value": cur.map(|v| v.value.clone()).unwrap_or_default(), "version": cur.map_or(0, |v| v.version)})
        })
        .collect();
    let evidence: Vec<Json> = rec["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(k, e)| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            let src = s("source");
            let link = (src.starts_with("https://") || src.starts_with("http://")).then(|| src.clone());
            json!({"id": s("id"), "anchor": k + 1, "title": s("title"), "section": s("section"), "source": src, "link": link, "text": s("text")})
        })
        .collect();
    let history: Vec<Json> = p
        .history
        .iter()
        .map(|h| {
            let key = h.key.clone().unwrap_or_default();
            let what = match key.strip_prefix("step:").and_then(|s| s.parse::<usize>().ok()) {
                Some(i) => format!("step {}{}: {} → {}", i + 1, slot_label(h.slot, p.users), h.old_value.as_deref().map_or("—", label_word), h.new_value.as_deref().map_or("—", label_word)),
                None => format!("{key}{} → {:?}", slot_label(h.slot, p.users), h.new_value.clone().unwrap_or_default()),
            };
            json!({"at": h.at, "user": h.user, "what": what})
        })
        .collect();
    json!({
        "item_id": p.item_id, "data_source": p.data_source, "slot": p.slot_name, "per_item": p.per_item, "status": p.status,
        "question": rec["question"].as_str().unwrap_or(""), "options": rec["options"].as_str().unwrap_or(""),
        "correct_answer": rec["correct_answer"].as_str().unwrap_or("?"), "model_answer": rec["model_answer"].as_str().unwrap_or("none"),
        "images": images(rec, p.item_id), "steps": steps, "fields": fields, "evidence": evidence, "history": history,
        "next_url": p.next_url, "adjudicate_url": p.adjudicate_url,
    })
}

fn label_word(v: &str) -> &'static str {
    match v {
        "1" => "+",
        "0" => "−",
        _ => "cleared",
    }
}

fn slot_label(slot: Option<i64>, users: &std::collections::BTreeMap<i64, String>) -> String {
    match slot {
        Some(FINAL) | None => String::new(),
        Some(s) => format!(" ({}'s own)", users.get(&s).cloned().unwrap_or_else(|| format!("user {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_text_is_escaped() {
        let rec = super::super::store::tests::record("x", "<script>window.pwned=1</script><img src=x onerror=alert(1)>");
        let cells = Cells::default();
        let users = Default::default();
        let ctx = item_context(&ItemPage {
            item_id: "x\"><b>",
            data_source: "med_qa",
            rec: &rec,
            cells: &cells,
            slot: FINAL,
            slot_name: "final",
            per_item: 1,
            status: "todo",
            users: &users,
            history: &[],
            next_url: String::new(),
            adjudicate_url: String::new(),
        });
        let mut ctx = ctx;
        ctx["user"] = json!("a");
        ctx["csrf"] = json!("t");
        let html = env().get_template("item.html").unwrap().render(minijinja::value::Serde(&ctx)).unwrap();
        assert!(!html.contains("<script>window"), "unescaped question");
        assert!(!html.contains("<img src=x"), "unescaped question");
        assert!(html.contains("&lt;script&gt;window.pwned=1&lt;&#x2f;script&gt;"), "{html}");
        assert!(!html.contains("x\"><b>"));
        assert!(html.contains("class=\"step uncertain\" id=\"step-1\""));
    }
}
