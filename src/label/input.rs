//! The solutions to label, read from the layouts `medprm score` reads (question, `related_docs`,
//! `solutions: [{prm_processed_solution | solution}]`) or the Med-PRM training layout (question,
//! options, `steps`, `correct_answer`). Every record is checked before any request is sent.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::infer::ImageInput;
use crate::steps::{py_strip, split_solution, split_tagged};

/// The step tag of the Med-PRM layouts (the published set's steps end with it).
pub const STEP_TAG: &str = " ки";

/// What every solution of one record shares.
pub struct Question {
    pub index: usize,
    pub sample_id: Value,
    pub question_id: Value,
    pub data_source: String,
    pub question: String,
    /// Training layout options text; empty when the options are inside the question.
    pub options: String,
    pub correct_answer: String,
    pub related_docs: Vec<String>,
    pub images: Vec<ImageInput>,
    /// The record's `images` as given (written back to the output).
    pub images_json: Value,
}

/// One solution to label.
pub struct Item {
    pub item_id: String,
    pub question: Arc<Question>,
    /// Untagged text before the first step (kept in the rollout prefix, never labelled).
    pub preamble: Option<String>,
    /// Step texts without the tag.
    pub steps: Vec<String>,
    pub model_answer: Option<String>,
}

impl Item {
    pub fn is_correct(&self) -> bool {
        self.model_answer.as_deref() == Some(self.question.correct_answer.as_str())
    }

    /// The steps as the published set writes them: `"Step k: ... ки"`.
    pub fn tagged_steps(&self) -> Vec<String> {
        self.steps.iter().map(|s| format!("{s}{STEP_TAG}")).collect()
    }
}

fn opt_id(rec: &Value, key: &str, ri: usize) -> Result<Value> {
    match rec.get(key) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(v) if v.is_i64() || v.is_u64() => Ok(v.clone()),
        Some(_) => Err(Error::input(format!("records[{ri}].{key}"), "not an integer")),
    }
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, d)| d.as_str().map(String::from).ok_or_else(|| Error::input(format!("{field}[{i}]"), "not a string")))
            .collect(),
        Some(_) => Err(Error::input(field, "not an array")),
    }
}

/// Reads and checks every record of `path`; the item ids are `<file stem>:<record>:<solution>`.
pub fn read_items(path: &Path) -> Result<Vec<Item>> {
    let records = crate::cli::read_records(path)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("input").to_string();
    let base = path.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for (ri, rec) in records.iter().enumerate() {
        items.extend(record_items(rec, ri, &stem, base)?);
    }
    if items.is_empty() {
        return Err(Error::input("input", format!("{}: no records", path.display())));
    }
    Ok(items)
}

fn record_items(rec: &Value, ri: usize, stem: &str, base: &Path) -> Result<Vec<Item>> {
    let field = |k: &str| format!("records[{ri}].{k}");
    let question = rec
        .get("question")
        .and_then(|q| q.as_str())
        .filter(|q| !py_strip(q).is_empty())
        .ok_or_else(|| Error::input(field("question"), "missing, empty or not a string"))?
        .to_string();
    let correct_answer = match rec.get("correct_answer") {
        Some(Value::String(s)) if !py_strip(s).is_empty() => py_strip(s).to_ascii_uppercase(),
        Some(Value::String(_)) => return Err(Error::input(field("correct_answer"), "empty")),
        None | Some(Value::Null) => return Err(Error::input(field("correct_answer"), "missing (the option letter, e.g. \"B\"): rollouts are graded against it")),
        Some(_) => return Err(Error::input(field("correct_answer"), "not a string")),
    };
    let options = match rec.get("options") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        // {"A": "...", "B": "..."}: written as the training layout writes it.
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| Ok(format!("  {k}. {}", v.as_str().ok_or_else(|| Error::input(field(&format!("options.{k}")), "not a string"))?)))
            .collect::<Result<Vec<_>>>()?
            .join("\n"),
        Some(_) => return Err(Error::input(field("options"), "not a string or an object")),
    };
    let images = crate::cli::read_images(rec, ri, base)?;
    let q = Arc::new(Question {
        index: ri,
        sample_id: opt_id(rec, "sample_id", ri)?,
        question_id: opt_id(rec, "question_id", ri)?,
        data_source: match rec.get("data_source") {
            None | Some(Value::Null) => "unknown".into(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(Error::input(field("data_source"), "not a string")),
        },
        question,
        options,
        correct_answer,
        related_docs: string_list(rec.get("related_docs"), &field("related_docs"))?,
        images_json: match rec.get("images").and_then(|v| v.as_array()) {
            // `{media_type, path}` with the media type resolved as `medprm score` does.
            Some(list) => Value::Array(
                list.iter()
                    .zip(&images)
                    .map(|(given, im)| serde_json::json!({"media_type": im.media_type, "path": given.get("path").cloned().unwrap_or(Value::Null)}))
                    .collect(),
            ),
            None => Value::Null,
        },
        images,
    });
    let item = |si: usize, preamble: Option<String>, steps: Vec<String>, sol: &Value, f: String| -> Result<Item> {
        if steps.is_empty() {
            return Err(Error::input(f, "no steps"));
        }
        let model_answer = crate::cli::record_answer(sol, &steps);
        Ok(Item { item_id: format!("{stem}:{ri}:{si}"), question: q.clone(), preamble, steps, model_answer })
    };
    if let Some(steps) = rec.get("steps") {
        // The training layout: one solution, its steps tagged.
        let steps = string_list(Some(steps), &field("steps"))?;
        let steps: Vec<String> =
            steps.iter().map(|s| py_strip(s.strip_suffix(STEP_TAG.trim()).unwrap_or(s)).to_string()).filter(|s| !s.is_empty()).collect();
        return Ok(vec![item(0, None, steps, &Value::Null, field("steps"))?]);
    }
    let sols = match rec.get("solutions") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(Error::input(field("solutions"), "empty: no solution to label")),
        None => return Err(Error::input(field("solutions"), "missing (an array of {prm_processed_solution | solution}, or give `steps`)")),
        Some(_) => return Err(Error::input(field("solutions"), "not an array")),
    };
    sols.iter()
        .enumerate()
        .map(|(si, sol)| {
            let f = format!("records[{ri}].solutions[{si}]");
            let (preamble, steps) = if let Some(t) = sol.get("prm_processed_solution").and_then(|v| v.as_str()) {
                let (steps, rest) = split_tagged(t, STEP_TAG);
                let mut steps: Vec<String> = steps.into_iter().filter(|s| !s.is_empty()).map(String::from).collect();
                if !py_strip(rest).is_empty() {
                    steps.push(py_strip(rest).to_string());
                }
                (None, steps)
            } else if let Some(t) = sol.get("solution").and_then(|v| v.as_str()) {
                let s = split_solution(t);
                (s.preamble, s.steps)
            } else {
                return Err(Error::input(f, "needs `prm_processed_solution` or `solution` (a string)"));
            };
            item(si, preamble, steps, sol, format!("{f}: steps"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("recs.json");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn reads_both_layouts() {
        let (_d, p) = write(
            r#"[{"question": "Q?", "correct_answer": "b", "solutions": [{"prm_processed_solution": "Step 1: x ки Step 2: The answer is (B). ки"}, {"solution": "Hm. Step 1: y. Step 2: The answer is A."}]},
                {"question": "Q2", "options": "  A. a\n  B. b", "steps": ["Step 1: z ки", "Step 2: The answer is A. ки"], "correct_answer": "A", "sample_id": 7}]"#,
        );
        let items = read_items(&p).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].item_id, "recs:0:0");
        assert_eq!(items[0].steps, vec!["Step 1: x", "Step 2: The answer is (B)."]);
        assert!(items[0].is_correct());
        assert_eq!(items[1].preamble.as_deref(), Some("Hm."));
        assert_eq!(items[1].model_answer.as_deref(), Some("A"));
        assert!(!items[1].is_correct());
        assert_eq!(items[2].item_id, "recs:1:0");
        assert_eq!(items[2].tagged_steps(), vec!["Step 1: z ки", "Step 2: The answer is A. ки"]);
        assert_eq!(items[2].question.sample_id, serde_json::json!(7));
        assert_eq!(items[2].question.data_source, "unknown");
    }

    #[test]
    fn images_go_to_chat_as_data_urls() {
        let img = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/images");
        let png = std::fs::read_dir(&img).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "png")).unwrap();
        let (_d, p) = write(&serde_json::json!([{"question": "Q?", "correct_answer": "A", "images": [{"path": png}], "steps": ["Step 1: x", "Step 2: y"]}]).to_string());
        let items = read_items(&p).unwrap();
        assert_eq!(items[0].question.images_json[0]["media_type"], "image/png");
        let m = crate::label::rollout::chat_messages(&items[0], 0);
        let url = m[0]["content"][1]["image_url"]["url"].as_str().unwrap();
        assert!(url.starts_with("data:image/png;base64,iVBOR"), "{}", &url[..40]);
        assert_eq!(m[1]["content"], "Step 1: x\n");
        let j = crate::label::judge::messages(&items[0], &[]);
        assert_eq!(j[1]["content"][1]["type"], "image_url");
    }

    #[test]
    fn bad_records_name_record_and_field() {
        let cases = [
            (r#"[{"question": "Q", "solutions": [{"solution": "Step 1: a"}]}]"#, "records[0].correct_answer"),
            (r#"[{"question": "Q", "correct_answer": "A", "solutions": []}, {}]"#, "records[0].solutions"),
            (r#"[{"question": "Q", "correct_answer": "A", "solutions": [{"solution": "  "}]}]"#, "records[0].solutions[0]: steps"),
            (r#"[{"question": "Q", "correct_answer": "A", "steps": []}]"#, "records[0].steps"),
            (r#"[{"question": "Q", "correct_answer": "A", "steps": [3]}]"#, "records[0].steps[0]"),
            (r#"[{"question": "", "correct_answer": "A", "steps": ["a"]}]"#, "records[0].question"),
        ];
        for (text, field) in cases {
            let (_d, p) = write(text);
            let e = read_items(&p).err().unwrap().to_string();
            assert!(e.contains(&format!("{field}:")), "{text}: {e}");
        }
    }
}
