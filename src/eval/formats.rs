//! The four input layouts `medprm eval` reads, detected from the first record or named with
//! `--format`, parsed into Best-of-N questions or labelled step items. Every error names the
//! file, the record and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Detect from the first record.
    Auto,
    /// Med-PRM test layout: question, N solutions, `correct_answer`, `data_source` → Best-of-N.
    MedprmTest,
    /// Med-PRM training layout (also `medprm label`'s output): tagged `steps` with
    /// `prm_hard_label` (or `--label-field`) → step level.
    MedprmTrain,
    /// ProcessBench: `problem`, `steps`, `label` = index of the first wrong step or −1.
    Processbench,
    /// VisualProcessBench: `image`, `question`, `response.steps`, `response.process_correctness`.
    Visualprocessbench,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::MedprmTest => "medprm-test",
            Format::MedprmTrain => "medprm-train",
            Format::Processbench => "processbench",
            Format::Visualprocessbench => "visualprocessbench",
        }
    }

    /// The layout a record has, from the fields only that layout has.
    pub fn detect(rec: &Value) -> Option<Format> {
        let has = |k: &str| rec.get(k).is_some();
        if has("solutions") {
            Some(Format::MedprmTest)
        } else if has("steps") && (has("num_steps") || has("prm_hard_label") || has("full_solution") || has("hybrid_label")) {
            Some(Format::MedprmTrain)
        } else if has("problem") && has("steps") && has("label") {
            Some(Format::Processbench)
        } else if has("response") && has("question") {
            Some(Format::Visualprocessbench)
        } else {
            None
        }
    }
}

/// How errors name a place in the input: `FILE: records[3].solutions[1].answer`.
pub fn at(file: &Path, field: impl std::fmt::Display) -> String {
    format!("{}: {field}", file.display())
}

/// One candidate of a Best-of-N question.
#[derive(Debug, Clone)]
pub struct BonCandidate {
    pub text: SolutionText,
    /// `Some(Some(a))`: the record gives the answer; `Some(None)`: it says there is none (`null`);
    /// `None`: taken from the scored steps, as `medprm score` does.
    pub answer: Option<Option<String>>,
    /// The record's `score` (1.0 = correct), which `medprm score` prefers to comparing answers.
    pub score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SolutionText {
    /// `prm_processed_solution`: tagged with ` ки`.
    Tagged(String),
    /// `solution`: cut into steps by the profile's rule.
    Raw(String),
}

/// A Best-of-N question (Med-PRM test layout).
#[derive(Debug, Clone)]
pub struct BonQuestion {
    pub file: PathBuf,
    pub index: usize,
    pub data_source: String,
    pub question: String,
    pub documents: Vec<String>,
    pub correct_answer: String,
    pub candidates: Vec<BonCandidate>,
    pub images: Vec<ImageRef>,
}

/// A solution with labelled steps (training layout, ProcessBench, VisualProcessBench).
#[derive(Debug, Clone)]
pub struct StepItem {
    pub file: PathBuf,
    pub index: usize,
    pub data_source: String,
    pub question: String,
    /// Step texts without their tag.
    pub steps: Vec<String>,
    /// Per step: `Some(true)` correct, `Some(false)` wrong, `None` unlabelled (ProcessBench steps
    /// after the first error, VisualProcessBench's neutral 0, a null label).
    pub labels: Vec<Option<bool>>,
    pub images: Vec<ImageRef>,
}

impl StepItem {
    /// Index of the first wrong step (`None`: the solution has no wrong step).
    pub fn first_error(&self) -> Option<usize> {
        self.labels.iter().position(|l| *l == Some(false))
    }
}

/// What one input file holds.
#[derive(Debug)]
pub enum Parsed {
    Bon(Vec<BonQuestion>),
    Steps(Vec<StepItem>),
}

/// Reads a JSON array, one object or JSONL (the reader of `medprm score`), errors naming the file.
pub fn read(path: &Path, format: Format, label_field: &str) -> Result<(Format, Parsed)> {
    let records = crate::cli::read_records(path).map_err(|e| match e {
        Error::Input { field, reason } => Error::input(at(path, field), reason),
        other => other,
    })?;
    let format = match format {
        Format::Auto => match records.first() {
            None => return Err(Error::input(at(path, "records"), "the file holds no record")),
            Some(r) => Format::detect(r).ok_or_else(|| {
                Error::input(
                    at(path, "records[0]"),
                    "unknown format: expected `solutions` (medprm-test), `steps` with `prm_hard_label` (medprm-train), \
                     `problem`+`steps`+`label` (processbench) or `question`+`response` (visualprocessbench); name one with --format",
                )
            })?,
        },
        f => f,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let parsed = match format {
        Format::MedprmTest => Parsed::Bon(records.iter().enumerate().map(|(i, r)| test_record(path, base, i, r)).collect::<Result<_>>()?),
        Format::MedprmTrain => Parsed::Steps(records.iter().enumerate().map(|(i, r)| train_record(path, base, i, r, label_field)).collect::<Result<_>>()?),
        Format::Processbench => Parsed::Steps(records.iter().enumerate().map(|(i, r)| processbench_record(path, i, r)).collect::<Result<_>>()?),
        Format::Visualprocessbench => Parsed::Steps(records.iter().enumerate().map(|(i, r)| vpb_record(path, base, i, r)).collect::<Result<_>>()?),
        Format::Auto => unreachable!("resolved above"),
    };
    Ok((format, parsed))
}

fn string(path: &Path, rec: &Value, i: usize, key: &str) -> Result<String> {
    match rec.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(Error::input(at(path, format!("records[{i}].{key}")), "missing")),
        Some(_) => Err(Error::input(at(path, format!("records[{i}].{key}")), "not a string")),
    }
}

fn data_source(rec: &Value) -> String {
    rec.get("data_source").and_then(|d| d.as_str()).unwrap_or("unknown").to_string()
}

fn strings(path: &Path, v: &Value, field: &str) -> Result<Vec<String>> {
    let arr = v.as_array().ok_or_else(|| Error::input(at(path, field), "not an array of strings"))?;
    arr.iter()
        .enumerate()
        .map(|(j, s)| s.as_str().map(String::from).ok_or_else(|| Error::input(at(path, format!("{field}[{j}]")), "not a string")))
        .collect()
}

/// An image of a record: a file (relative to the input file's directory) or inline base64 data
/// (`medprm label`'s `{media_type, data}`).
#[derive(Debug, Clone)]
pub enum ImageRef {
    Path { path: PathBuf, media_type: Option<String> },
    Data { data: String, media_type: String },
}

/// `images`: `[{"path": .., "media_type"?}]` or `[{"data": .., "media_type": ..}]` (Med-PRM
/// layouts) or `["a.png"]` (VisualProcessBench), paths relative to the input file's directory.
fn images(path: &Path, base: &Path, v: Option<&Value>, field: &str) -> Result<Vec<ImageRef>> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(vec![]) };
    let list = match v {
        Value::Array(a) => a.clone(),
        Value::String(_) => vec![v.clone()],
        _ => return Err(Error::input(at(path, field), "not an array")),
    };
    list.iter()
        .enumerate()
        .map(|(j, im)| {
            let media_type = im.get("media_type").and_then(|m| m.as_str()).map(String::from);
            if let Some(p) = im.as_str().or_else(|| im.get("path").and_then(|p| p.as_str())) {
                return Ok(ImageRef::Path { path: base.join(p), media_type });
            }
            match (im.get("data").and_then(|d| d.as_str()), media_type) {
                (Some(d), Some(m)) => Ok(ImageRef::Data { data: d.to_string(), media_type: m }),
                _ => Err(Error::input(at(path, format!("{field}[{j}]")), "needs a path (a string or {\"path\": ...}) or {\"data\": base64, \"media_type\": ...}")),
            }
        })
        .collect()
}

fn test_record(path: &Path, base: &Path, i: usize, rec: &Value) -> Result<BonQuestion> {
    let question = string(path, rec, i, "question")?;
    let correct_answer = string(path, rec, i, "correct_answer")?.trim().to_string();
    let documents = match rec.get("related_docs") {
        None | Some(Value::Null) => vec![],
        Some(v) => strings(path, v, &format!("records[{i}].related_docs"))?,
    };
    let sols = match rec.get("solutions") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(Error::input(at(path, format!("records[{i}].solutions")), "empty")),
        None => return Err(Error::input(at(path, format!("records[{i}].solutions")), "missing")),
        Some(_) => return Err(Error::input(at(path, format!("records[{i}].solutions")), "not an array")),
    };
    let candidates = sols
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let field = format!("records[{i}].solutions[{j}]");
            let text = match (s.get("prm_processed_solution").and_then(|v| v.as_str()), s.get("solution").and_then(|v| v.as_str())) {
                (Some(t), _) => SolutionText::Tagged(t.to_string()),
                (None, Some(t)) => SolutionText::Raw(t.to_string()),
                _ => return Err(Error::input(at(path, field), "needs `prm_processed_solution` or `solution` (a string)")),
            };
            let answer = match s.get("answer") {
                None => None,
                Some(Value::Null) => Some(None),
                Some(Value::String(a)) => Some(Some(a.trim().to_string())),
                Some(other) => Some(Some(other.to_string())),
            };
            let score = match s.get("score") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| Error::input(at(path, format!("{field}.score")), "not a number"))?),
            };
            Ok(BonCandidate { text, answer, score })
        })
        .collect::<Result<_>>()?;
    Ok(BonQuestion {
        file: path.to_path_buf(),
        index: i,
        data_source: data_source(rec),
        question,
        documents,
        correct_answer,
        candidates,
        images: images(path, base, rec.get("images"), &format!("records[{i}].images"))?,
    })
}

/// A training-layout step without its ` ки` tag.
fn untag(step: &str) -> String {
    let s = step.trim_end();
    s.strip_suffix("ки").map(|s| s.trim_end()).unwrap_or(s).to_string()
}

fn train_record(path: &Path, base: &Path, i: usize, rec: &Value, label_field: &str) -> Result<StepItem> {
    let stem = string(path, rec, i, "question")?;
    let options = rec.get("options").and_then(|o| o.as_str()).unwrap_or("");
    let steps: Vec<String> = match rec.get("steps") {
        Some(v) => strings(path, v, &format!("records[{i}].steps"))?.iter().map(|s| untag(s)).collect(),
        None => return Err(Error::input(at(path, format!("records[{i}].steps")), "missing")),
    };
    if steps.is_empty() {
        return Err(Error::input(at(path, format!("records[{i}].steps")), "empty"));
    }
    let field = format!("records[{i}].{label_field}");
    let labels = match rec.get(label_field) {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(j, l)| match l {
                Value::Null => Ok(None),
                Value::Bool(b) => Ok(Some(*b)),
                Value::Number(n) if n.as_f64() == Some(1.0) => Ok(Some(true)),
                Value::Number(n) if n.as_f64() == Some(0.0) => Ok(Some(false)),
                _ => Err(Error::input(at(path, format!("{field}[{j}]")), format!("{l} is not a step label (0, 1 or null)"))),
            })
            .collect::<Result<Vec<_>>>()?,
        None => return Err(Error::input(at(path, &field), "missing (choose the label column with --label-field)")),
        Some(_) => return Err(Error::input(at(path, &field), "not an array")),
    };
    if labels.len() != steps.len() {
        return Err(Error::input(at(path, &field), format!("{} labels for {} steps", labels.len(), steps.len())));
    }
    Ok(StepItem {
        file: path.to_path_buf(),
        index: i,
        data_source: data_source(rec),
        question: question_with_options(&stem, options),
        steps,
        labels,
        images: images(path, base, rec.get("images"), &format!("records[{i}].images"))?,
    })
}

/// The training layout's options (`"  A. x\n  B. y"`) in the test layout's question form
/// (`"<stem>\n\n(A) x\n(B) y"`), the form the scoring contract's prompt holds.
pub fn question_with_options(stem: &str, options: &str) -> String {
    let opts: Vec<String> = options
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(". ") {
            Some((k, v)) if k.len() == 1 && k.chars().all(|c| c.is_ascii_uppercase()) => format!("({k}) {v}"),
            _ => l.to_string(),
        })
        .collect();
    if opts.is_empty() {
        stem.to_string()
    } else {
        format!("{stem}\n\n{}", opts.join("\n"))
    }
}

fn processbench_record(path: &Path, i: usize, rec: &Value) -> Result<StepItem> {
    let question = string(path, rec, i, "problem")?;
    let steps = match rec.get("steps") {
        Some(v) => strings(path, v, &format!("records[{i}].steps"))?,
        None => return Err(Error::input(at(path, format!("records[{i}].steps")), "missing")),
    };
    if steps.is_empty() {
        return Err(Error::input(at(path, format!("records[{i}].steps")), "empty"));
    }
    let field = at(path, format!("records[{i}].label"));
    let label = rec.get("label").ok_or_else(|| Error::input(&field, "missing"))?.as_i64().ok_or_else(|| Error::input(&field, "not an integer"))?;
    let labels = if label == -1 {
        vec![Some(true); steps.len()]
    } else if label >= 0 && (label as usize) < steps.len() {
        // Only the steps up to the first error are labelled.
        (0..steps.len()).map(|j| if j < label as usize { Some(true) } else if j == label as usize { Some(false) } else { None }).collect()
    } else {
        return Err(Error::input(&field, format!("{label} is neither -1 nor a step index (0..{})", steps.len())));
    };
    let source = rec.get("data_source").or_else(|| rec.get("generator")).and_then(|d| d.as_str()).unwrap_or("unknown").to_string();
    Ok(StepItem { file: path.to_path_buf(), index: i, data_source: source, question, steps, labels, images: vec![] })
}

fn vpb_record(path: &Path, base: &Path, i: usize, rec: &Value) -> Result<StepItem> {
    let question = string(path, rec, i, "question")?;
    let field = format!("records[{i}].response");
    // The published file stores `response` as an object; a JSON string of one is read too.
    let response = match rec.get("response") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| Error::input(at(path, &field), format!("not a JSON object: {e}")))?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => return Err(Error::input(at(path, &field), "missing or not an object")),
    };
    let steps = match response.get("steps") {
        Some(v) => strings(path, v, &format!("{field}.steps"))?,
        None => return Err(Error::input(at(path, format!("{field}.steps")), "missing")),
    };
    let lf = format!("{field}.process_correctness");
    let labels = match response.get("process_correctness") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(j, l)| match l.as_i64() {
                Some(1) => Ok(Some(true)),
                Some(-1) => Ok(Some(false)),
                Some(0) => Ok(None),
                _ => Err(Error::input(at(path, format!("{lf}[{j}]")), format!("{l} is not 1, -1 or 0"))),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(Error::input(at(path, &lf), "missing or not an array")),
    };
    if steps.is_empty() {
        return Err(Error::input(at(path, format!("{field}.steps")), "empty"));
    }
    if labels.len() != steps.len() {
        return Err(Error::input(at(path, &lf), format!("{} labels for {} steps", labels.len(), steps.len())));
    }
    Ok(StepItem {
        file: path.to_path_buf(),
        index: i,
        data_source: data_source(rec),
        question,
        steps,
        labels,
        images: images(path, base, rec.get("image"), &format!("records[{i}].image"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(v: &Value) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("in.json");
        std::fs::write(&p, v.to_string()).unwrap();
        (d, p)
    }

    fn err(v: Value, f: Format) -> String {
        let (_d, p) = write(&v);
        read(&p, f, "prm_hard_label").unwrap_err().to_string()
    }

    #[test]
    fn detects_each_layout() {
        assert_eq!(Format::detect(&json!({"question": "q", "solutions": []})), Some(Format::MedprmTest));
        assert_eq!(Format::detect(&json!({"question": "q", "steps": [], "prm_hard_label": []})), Some(Format::MedprmTrain));
        assert_eq!(Format::detect(&json!({"problem": "q", "steps": [], "label": -1})), Some(Format::Processbench));
        assert_eq!(Format::detect(&json!({"question": "q", "response": {}})), Some(Format::Visualprocessbench));
        assert_eq!(Format::detect(&json!({"question": "q"})), None);
    }

    #[test]
    fn bad_input_names_file_record_and_field() {
        let e = err(json!([{"question": "q", "solutions": [{"solution": "Step 1: x"}]}]), Format::Auto);
        assert!(e.contains("in.json: records[0].correct_answer: missing"), "{e}");
        let e = err(json!([{"question": "q", "steps": ["a ки", "b ки"], "prm_hard_label": [1]}]), Format::Auto);
        assert!(e.contains("records[0].prm_hard_label: 1 labels for 2 steps"), "{e}");
        let e = err(json!([{"what": 1}]), Format::Auto);
        assert!(e.contains("records[0]") && e.contains("unknown format"), "{e}");
        let e = err(json!([{"problem": "p", "steps": ["a"], "label": 3}]), Format::Auto);
        assert!(e.contains("records[0].label: 3 is neither -1 nor a step index"), "{e}");
        let e = err(json!([{"question": "q", "response": {"steps": ["a", "b"], "process_correctness": [1]}}]), Format::Auto);
        assert!(e.contains("records[0].response.process_correctness: 1 labels for 2 steps"), "{e}");
        // A named format is taken at its word.
        let e = err(json!([{"question": "q", "solutions": []}]), Format::Processbench);
        assert!(e.contains("records[0].problem: missing"), "{e}");
    }

    #[test]
    fn labels_of_each_layout() {
        let (_d, p) = write(&json!([{"problem": "p", "steps": ["a", "b", "c", "d"], "label": 1}]));
        let Parsed::Steps(s) = read(&p, Format::Auto, "prm_hard_label").unwrap().1 else { panic!() };
        assert_eq!(s[0].labels, vec![Some(true), Some(false), None, None]);
        assert_eq!(s[0].first_error(), Some(1));
        let (_d, p) = write(&json!([{"question": "Q?", "options": "  A. x\n  B. y", "steps": ["Step 1: a ки", "Step 2: b ки"], "prm_hard_label": [1, 0]}]));
        let Parsed::Steps(s) = read(&p, Format::Auto, "prm_hard_label").unwrap().1 else { panic!() };
        assert_eq!(s[0].steps, vec!["Step 1: a", "Step 2: b"]);
        assert_eq!(s[0].question, "Q?\n\n(A) x\n(B) y");
        assert_eq!(s[0].first_error(), Some(1));
        // `medprm label`'s layout: null labels (uncertain) and inline images.
        let (_d, p) = write(&json!([{"question": "Q?", "options": "", "steps": ["a ки", "b ки"], "hybrid_label": [1, null],
                                     "images": [{"media_type": "image/png", "data": "iVBO"}]}]));
        let Parsed::Steps(s) = read(&p, Format::Auto, "hybrid_label").unwrap().1 else { panic!() };
        assert_eq!(s[0].labels, vec![Some(true), None]);
        assert!(matches!(&s[0].images[0], ImageRef::Data { media_type, .. } if media_type == "image/png"));
        let e = err(json!([{"question": "Q?", "steps": ["a"], "prm_hard_label": [1], "images": [{"data": "x"}]}]), Format::Auto);
        assert!(e.contains("records[0].images[0]: needs a path"), "{e}");
    }
}
