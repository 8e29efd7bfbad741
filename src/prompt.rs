//! Prompt building: profile + question + documents + solution → rendered text → token ids and the
//! positions of the step tags.
//!
//! * Documents are kept whole, in order, while their cost (token count without special tokens,
//!   plus one) fits the profile's budget; the first document that does not fit ends the list.
//! * Caller text (question, documents, step bodies) is *neutralised*: any text the tokenizer would
//!   turn into an added token (the step tag, `<|eot_id|>`, ...) gets a WORD JOINER (U+2060) after
//!   its first visible character, so it can never create a scored position or a control token.
//!   The reference scores such text as tags; we deliberately do not.
//! * Tag positions come from the rendered text: every occurrence of the step tag (ours only, after
//!   neutralisation) is mapped to the last token covering its last byte. For a tag that is one
//!   added token this is that token; a tag spread over several tokens is scored at its last one.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::profile::{HeadKind, Profile, PromptFormat, TemplateSource};
use crate::steps::{has_marker, py_strip, split_solution, split_tagged};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::PrmTokenizer;

/// A solution as a caller gives it.
#[derive(Debug, Clone)]
pub enum Solution {
    /// Explicit steps, tagged as given (a `Step N: ` prefix is added where the profile asks).
    Steps(Vec<String>),
    /// Raw text, cut into steps with the Med-PRM rule.
    Raw(String),
    /// Already tagged text (`prm_processed_solution`): its tags are the scored positions.
    Tagged(String),
}

impl Solution {
    /// The caller's text of the solution (steps joined by newlines; borrowed otherwise).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Solution::Steps(s) => s.join("\n").into(),
            Solution::Raw(t) | Solution::Tagged(t) => t.as_str().into(),
        }
    }
}

/// A prompt its caller built (vLLM `/pooling`): text to tokenize as it is, or token ids.
#[derive(Debug, Clone)]
pub enum RawInput {
    Text(String),
    Ids(Vec<u32>),
}

/// An image ready for the vision tower: its normalised tiles (tiles × 3 × S × S, CHW) and the
/// number of image tokens it becomes in the prompt.
pub struct PreparedImage {
    /// Content hash of the caller's bytes: one vision pass per distinct image in a batch.
    pub hash: u64,
    pub tiles: usize,
    pub tokens: usize,
    pub pixels: Vec<f32>,
}

impl std::fmt::Debug for PreparedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedImage").field("hash", &self.hash).field("tiles", &self.tiles).field("tokens", &self.tokens).finish()
    }
}

/// Question and documents shared by every candidate of a request.
pub struct Context {
    question: String,
    /// The question's images, in the order their tokens appear.
    pub images: Vec<Arc<PreparedImage>>,
    /// Kept documents, neutralised, in order.
    pub documents: Vec<String>,
    /// How many of the supplied documents the budget kept.
    pub n_docs_kept: usize,
    /// Tokens used by the kept documents (each counted with its +1).
    pub document_tokens: usize,
}

/// A prompt ready for the model.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// Token positions whose label logits are the step scores, one per step.
    pub tag_rows: Vec<usize>,
    /// The text of each scored step (without the tag).
    pub steps: Vec<String>,
    /// Byte offset in `text` where the candidate-specific part starts (after the profile's
    /// `shared_prefix_marker`), when the profile has one.
    pub shared_text_end: Option<usize>,
    /// Leading tokens that lie entirely before `shared_text_end` (0 without a marker).
    pub shared_tokens: usize,
    /// The images whose tokens the prompt holds, in order.
    pub images: Vec<Arc<PreparedImage>>,
}

/// The scored row of each step tag: the last token whose span holds the tag's last byte
/// (`tag_ends`: the byte offsets where the tags end, ascending).
fn tag_rows(enc: &crate::tokenizer::Encoded, tag_ends: &[usize]) -> Result<Vec<usize>> {
    let mut rows: Vec<usize> = Vec::with_capacity(tag_ends.len());
    let mut tok = 0usize;
    for &end in tag_ends {
        let last_byte = end - 1;
        let mut found = None;
        while tok < enc.offsets.len() {
            let (s, e) = enc.offsets[tok];
            if s > last_byte && e > s {
                break;
            }
            if s <= last_byte && last_byte < e {
                found = Some(tok);
            }
            tok += 1;
        }
        let row = found.ok_or_else(|| Error::Tokenizer(format!("no token covers the step tag ending at byte {end}")))?;
        if rows.last().is_some_and(|&r| r >= row) {
            return Err(Error::Tokenizer("two step tags share one token".into()));
        }
        rows.push(row);
        tok = row + 1;
    }
    Ok(rows)
}

/// A text longer than this many bytes per allowed token is first tokenized only that far: an
/// over-limit input is refused without tokenizing all of it.
const PROBE_BYTES_PER_TOKEN: usize = 8;

/// Fewest tokens a shared prefix must have to be worth running separately.
pub const MIN_SHARED_PREFIX: usize = 32;

/// The token prefix every prompt shares and that ends at or before each prompt's shared part:
/// the longest common token prefix (never assuming that tokenizing the parts equals tokenizing
/// the whole), capped so that each prompt keeps at least one token and all its tag rows after it.
/// 0 when there is nothing worth sharing (fewer than two prompts or a prefix shorter than
/// [`MIN_SHARED_PREFIX`]).
pub fn shared_prefix_len(prompts: &[&Prompt]) -> usize {
    if prompts.len() < 2 {
        return 0;
    }
    let first = &prompts[0].ids;
    let mut cap = first.len();
    for p in prompts {
        cap = cap.min(p.shared_tokens).min(p.ids.len() - 1);
        if let Some(&r) = p.tag_rows.first() {
            cap = cap.min(r);
        }
    }
    let mut n = 0;
    while n < cap && prompts.iter().all(|p| p.ids[n] == first[n]) {
        n += 1;
    }
    if n >= MIN_SHARED_PREFIX {
        n
    } else {
        0
    }
}

/// The rules a caller-built prompt (vLLM `/pooling`) must follow under the loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPromptRules {
    /// The profile has a step tag (without one no caller-built prompt can be scored).
    pub has_step_tag: bool,
    /// The step tag is one token, so prompts may come as token ids.
    pub ids_allowed: bool,
    /// Token ids must be below this.
    pub vocab_size: usize,
}

pub struct PromptBuilder {
    pub profile: Profile,
    pub tokenizer: Arc<PrmTokenizer>,
    template: Option<ChatTemplate>,
    /// (text, replacement) pairs applied to caller text, longest first.
    neutral: Vec<(String, String)>,
    /// Indices into `neutral` by the first byte of the text.
    neutral_by_byte: Vec<Vec<usize>>,
    /// The positive and negative label ids (`label_tokens` head).
    label_ids: Option<[u32; 2]>,
    /// The step tag's id when the tag is one token (raw prompts are scored at it).
    tag_id: Option<u32>,
}

fn neutralised(s: &str) -> String {
    let lead = s.len() - s.trim_start().len();
    let mut chars = s[lead..].char_indices();
    let cut = chars.nth(1).map(|(i, _)| lead + i).unwrap_or(s.len());
    format!("{}\u{2060}{}", &s[..cut], &s[cut..])
}

/// Replaces `{key}` placeholders of `format` in one pass (values are never re-scanned).
fn fill(format: &str, vals: &[(&str, &str)]) -> String {
    fill_tracked(format, vals).0
}

/// [`fill`], also returning where each placeholder's value starts in the output.
fn fill_tracked<'k>(format: &str, vals: &[(&'k str, &str)]) -> (String, Vec<(&'k str, usize)>) {
    let mut out = String::with_capacity(format.len() + vals.iter().map(|v| v.1.len()).sum::<usize>());
    let mut at = Vec::new();
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| vals.iter().find(|(k, _)| *k == &after[..close]).map(|v| (close, v))) {
            Some((close, (k, v))) => {
                at.push((*k, out.len()));
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, at)
}

impl PromptBuilder {
    pub fn new(profile: Profile, tokenizer: Arc<PrmTokenizer>) -> Result<Self> {
        let perr = |reason: String| Error::Profile { profile: profile.name.clone(), reason };
        let label = |t: &str| {
            tokenizer.label_token(t).ok_or_else(|| perr(format!("label `{t}` is neither a vocabulary entry nor a single token of this tokenizer")))
        };
        let label_ids = match profile.head {
            HeadKind::LabelTokens => {
                let ids = [label(&profile.positive_label)?, label(&profile.negative_label)?];
                if ids[0] == ids[1] {
                    return Err(perr("positive and negative labels are the same token".into()));
                }
                Some(ids)
            }
            HeadKind::Classifier | HeadKind::ScoreMlp => None,
        };
        if !profile.step_tag.is_empty() && tokenizer.count(&profile.step_tag)? == 0 {
            return Err(perr(format!("step tag `{}` encodes to no token", profile.step_tag)));
        }
        let template = match profile.template {
            TemplateSource::None => None,
            TemplateSource::Model => {
                let builtin = profile.chat_template.as_deref().and_then(crate::profile::builtin_template);
                let src = builtin.or(tokenizer.chat_template.as_deref()).ok_or_else(|| {
                    perr("the profile renders the model's chat template, but the model has none (tokenizer_config.json `chat_template` or GGUF `tokenizer.chat_template`)".into())
                })?;
                Some(ChatTemplate::new(src, tokenizer.bos_token.as_deref(), tokenizer.eos_token.as_deref())?)
            }
        };
        let mut texts: Vec<String> = tokenizer.added_texts.clone();
        if !profile.step_tag.is_empty() {
            texts.push(profile.step_tag.clone());
        }
        texts.sort_by_key(|s| std::cmp::Reverse(s.len()));
        texts.dedup();
        let neutral = texts.into_iter().filter(|t| !t.trim().is_empty()).map(|t| {
            let n = neutralised(&t);
            (t, n)
        }).collect();
        let neutral: Vec<(String, String)> = neutral;
        let mut neutral_by_byte = vec![Vec::new(); 256];
        for (i, (t, _)) in neutral.iter().enumerate() {
            neutral_by_byte[t.as_bytes()[0] as usize].push(i);
        }
        let tag_id = if profile.step_tag.is_empty() { None } else { tokenizer.single_token(&profile.step_tag) };
        Ok(PromptBuilder { profile, tokenizer, template, neutral, neutral_by_byte, label_ids, tag_id })
    }

    /// Token ids of the positive and negative labels (`label_tokens` head only).
    pub fn label_ids(&self) -> Option<[u32; 2]> {
        self.label_ids
    }

    /// Makes caller text unable to produce added tokens or step tags.
    pub fn neutralise(&self, text: &str) -> String {
        self.neutralise_except(text, &[])
    }

    /// Neutralises every added-token or step-tag text in `text` except the byte ranges in
    /// `ours` (our own step tags; sorted, disjoint). One left-to-right pass, so text that only
    /// forms a tag together with what precedes it (`"Question: "` + `"ки..."`) is caught too.
    fn neutralise_except(&self, text: &str, ours: &[std::ops::Range<usize>]) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len() + 8);
        let (mut i, mut next) = (0usize, 0usize);
        while i < text.len() {
            if let Some(r) = ours.get(next) {
                if r.start == i {
                    out.push_str(&text[r.clone()]);
                    i = r.end;
                    next += 1;
                    continue;
                }
            }
            let limit = ours.get(next).map_or(text.len(), |r| r.start);
            let hit = self.neutral_by_byte[bytes[i] as usize]
                .iter()
                .map(|&k| &self.neutral[k])
                .find(|(from, _)| i + from.len() <= limit && text[i..].starts_with(from.as_str()));
            match hit {
                Some((from, to)) => {
                    out.push_str(to);
                    i += from.len();
                }
                None => {
                    let c = text[i..].chars().next().expect("char boundary");
                    out.push(c);
                    i += c.len_utf8();
                }
            }
        }
        out
    }

    /// Applies the document budget and prepares what every candidate shares.
    pub fn context(&self, question: &str, documents: &[String]) -> Result<Context> {
        self.context_with_images(question, documents, vec![])
    }

    /// [`PromptBuilder::context`] for a question with images: the profile's placeholders (or,
    /// without any, its prefixes) become each image's tokens, in order.
    pub fn context_with_images(&self, question: &str, documents: &[String], images: Vec<Arc<PreparedImage>>) -> Result<Context> {
        let mut ctx = self.context_text(question, documents)?;
        if images.is_empty() {
            return Ok(ctx);
        }
        let Some(im) = &self.profile.image else {
            return Err(Error::input("images", format!("profile `{}` scores text only; it takes no images", self.profile.name)));
        };
        let placed = question.matches(im.placeholder.as_str()).count();
        let question = match placed {
            0 if images.len() == 1 => format!("{}{question}", im.single_prefix),
            0 => {
                let prefixes: String = (1..=images.len()).map(|n| im.multi_prefix.replace("{n}", &n.to_string())).collect();
                format!("{prefixes}{question}")
            }
            n if n == images.len() => question.to_string(),
            n => {
                return Err(Error::input(
                    "question",
                    format!("holds {n} `{}` placeholders for {} images", im.placeholder, images.len()),
                ))
            }
        };
        // Caller text is neutralised piece by piece; only our expansions hold image tokens.
        let mut text = String::new();
        for (i, piece) in question.split(im.placeholder.as_str()).enumerate() {
            if i > 0 {
                let img = &images[i - 1];
                text.push_str(&im.start);
                text.push_str(&im.context.repeat(img.tokens));
                text.push_str(&im.end);
            }
            text.push_str(&self.neutralise(piece));
        }
        ctx.question = text;
        ctx.images = images;
        Ok(ctx)
    }

    fn context_text(&self, question: &str, documents: &[String]) -> Result<Context> {
        if py_strip(question).is_empty() {
            return Err(Error::input("question", "must not be empty"));
        }
        let budget = self.profile.document_budget();
        let mut kept = Vec::new();
        let mut used = 0usize;
        if self.profile.uses_documents {
            for doc in documents {
                let doc = self.neutralise(doc);
                let cost = self.tokenizer.count(&doc)? + 1;
                if used + cost > budget {
                    break;
                }
                used += cost;
                kept.push(doc);
            }
        }
        Ok(Context {
            question: self.neutralise(question),
            images: vec![],
            n_docs_kept: kept.len(),
            documents: kept,
            document_tokens: used,
        })
    }

    /// The steps of a solution (caller text, not yet neutralised) and the untagged text before
    /// them: explicit steps stripped (a `Step N: ` prefix added where the profile asks), raw
    /// text cut by the profile's split rule (`split_on`, else the Med-PRM rule).
    fn steps_of(&self, solution: &Solution) -> Result<(Option<String>, Vec<String>)> {
        match solution {
            Solution::Tagged(_) => Err(Error::input(
                "solution",
                format!("profile `{}`: a tagged solution needs a step-tag format", self.profile.name),
            )),
            Solution::Raw(text) => match &self.profile.split_on {
                None => {
                    let split = split_solution(text);
                    Ok((split.preamble, split.steps))
                }
                Some(on) => {
                    let restore = self.profile.split_restore.as_deref().unwrap_or("");
                    let steps = text
                        .split(on.as_str())
                        .filter(|piece| self.profile.keep_empty_steps || !py_strip(piece).is_empty())
                        .map(|piece| if piece.starts_with(restore) { piece.to_string() } else { format!("{restore}{piece}") })
                        .collect();
                    Ok((None, steps))
                }
            },
            Solution::Steps(steps) => {
                let mut out = Vec::with_capacity(steps.len());
                for (i, s) in steps.iter().enumerate() {
                    let s = py_strip(s);
                    if s.is_empty() {
                        return Err(Error::input(format!("steps[{i}]"), "must not be empty"));
                    }
                    out.push(match &self.profile.step_prefix {
                        Some(p) if !has_marker(s) => format!("{}{s}", p.replace("{n}", &(i + 1).to_string())),
                        _ => s.to_string(),
                    });
                }
                Ok((None, out))
            }
        }
    }

    /// The tagged solution text (caller text not yet neutralised), the byte offsets where our
    /// tags end in it, and the text of each scored step.
    fn solution_text(&self, solution: &Solution) -> Result<(String, Vec<usize>, Vec<String>)> {
        let tag = self.profile.step_tag.as_str();
        let sep = self.profile.step_separator.as_str();
        if let Solution::Tagged(text) = solution {
            // Its tags are the scored positions, by definition.
            let ends = text.match_indices(tag).map(|(i, m)| i + m.len()).collect();
            let (steps, _) = split_tagged(text, tag);
            return Ok((text.clone(), ends, steps.into_iter().map(String::from).collect()));
        }
        let (preamble, steps) = self.steps_of(solution)?;
        let mut text = String::new();
        let mut ends = Vec::with_capacity(steps.len());
        if let Some(p) = preamble {
            text.push_str(&p);
        }
        for s in &steps {
            if !text.is_empty() {
                text.push_str(sep);
            }
            text.push_str(s);
            text.push_str(tag);
            ends.push(text.len());
        }
        Ok((text, ends, steps))
    }

    /// Renders the prompt text for one solution whose tags end at `tag_ends`: `tagged` puts it
    /// in the user message, `separator` in an assistant message after the question.
    fn render(&self, ctx: &Context, solution_text: &str, tag_ends: &[usize]) -> Result<String> {
        let tag_len = self.profile.step_tag.len();
        let ours = |at: usize| -> Vec<std::ops::Range<usize>> {
            tag_ends.iter().map(|&e| at + e - tag_len..at + e).collect()
        };
        if self.profile.format == PromptFormat::Separator {
            let user = fill(&self.profile.user_format, &[("question", &ctx.question)]);
            let assistant = self.neutralise_except(solution_text, &ours(0));
            let mut messages = self.system();
            messages.push(Message::new("user", user));
            messages.push(Message::new("assistant", assistant));
            return self.template()?.render(&messages, false);
        }
        let docs: String = ctx
            .documents
            .iter()
            .enumerate()
            .map(|(i, d)| fill(&self.profile.document_format, &[("n", &(i + 1).to_string()), ("text", d)]))
            .collect();
        let (user, at) = fill_tracked(
            &self.profile.user_format,
            &[("documents", &docs), ("question", &ctx.question), ("solution", solution_text)],
        );
        let sol_at = at.iter().find(|(k, _)| *k == "solution").map(|a| a.1).expect("user_format has {solution}");
        let user = self.neutralise_except(&user, &ours(sol_at));
        match &self.template {
            None => Ok(user),
            Some(t) => {
                let mut messages = self.system();
                messages.push(Message::new("user", user));
                t.render(&messages, true)
            }
        }
    }

    /// The profile's system message, when it has one.
    fn system(&self) -> Vec<Message> {
        self.profile.system_prompt.iter().map(|s| Message::new("system", s.clone())).collect()
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().ok_or_else(|| Error::Template(format!("profile `{}` needs a chat template", self.profile.name)))
    }

    /// Token ids of a text, with or without the tokenizer's special tokens as the profile says.
    fn encode(&self, text: &str) -> Result<crate::tokenizer::Encoded> {
        if self.profile.add_special_tokens {
            self.tokenizer.encode(text)
        } else {
            self.tokenizer.encode_plain(text)
        }
    }

    /// `per_step_segments` (MedS³): the rendered question with its generation prompt, then every
    /// step plus `step_suffix` tokenized on its own and appended; each step scored at its last
    /// token. The rendered question is the shared prefix.
    fn segments_prompt(&self, ctx: &Context, solution: &Solution) -> Result<Prompt> {
        let (_, steps) = self.steps_of(solution)?;
        let mut messages = self.system();
        messages.push(Message::new("user", fill(&self.profile.user_format, &[("question", &ctx.question)])));
        let mut text = self.template()?.render(&messages, true)?;
        let mut ids = self.encode(&text)?.ids;
        let (shared_text_end, shared_tokens) = (text.len(), ids.len());
        let mut tag_rows = Vec::with_capacity(steps.len());
        for step in &steps {
            let segment = format!("{}{}", self.neutralise(step), self.profile.step_suffix);
            let seg = self.encode(&segment)?.ids;
            if seg.is_empty() {
                return Err(Error::Tokenizer(format!("step `{step}` encodes to no token")));
            }
            ids.extend(seg);
            tag_rows.push(ids.len() - 1);
            text.push_str(&segment);
        }
        Ok(Prompt { text, ids, tag_rows, steps, shared_text_end: Some(shared_text_end), shared_tokens, images: ctx.images.clone() })
    }

    /// `multi_turn` (RLHFlow): every step a user turn (the first one `user_format` with the
    /// question), every assistant turn the positive label; each step scored at the last token
    /// before its assistant answer, i.e. where the chat template's generation prompt for that
    /// turn ends.
    fn multi_turn_prompt(&self, ctx: &Context, solution: &Solution) -> Result<Prompt> {
        let (_, steps) = self.steps_of(solution)?;
        let t = self.template()?;
        let mut messages = self.system();
        let mut ends = Vec::with_capacity(steps.len());
        for (k, step) in steps.iter().enumerate() {
            let step = self.neutralise(step);
            let user = if k == 0 {
                fill(&self.profile.user_format, &[("question", &ctx.question), ("solution", &step)])
            } else {
                step
            };
            messages.push(Message::new("user", user));
            ends.push(t.render(&messages, true)?.len());
            messages.push(Message::new("assistant", self.profile.positive_label.clone()));
        }
        let text = t.render(&messages, false)?;
        for (k, &end) in ends.iter().enumerate() {
            let answer = &text[end.min(text.len())..];
            if !answer.starts_with(self.profile.positive_label.as_str()) {
                return Err(Error::Template(format!(
                    "turn {k}: the chat template's generation prompt is not where the conversation's assistant turn starts"
                )));
            }
        }
        let enc = self.encode(&text)?;
        let tag_rows = tag_rows(&enc, &ends)?;
        for (&row, &end) in tag_rows.iter().zip(&ends) {
            if enc.offsets[row].1 != end {
                return Err(Error::Tokenizer("a scored token runs into the assistant answer".into()));
            }
        }
        // Candidates share the conversation up to the end of the question in the first turn
        // (after the profile's marker, the first user turn's opening).
        let first_turn = ends.first().copied().unwrap_or(text.len());
        let shared_text_end = self.profile.shared_prefix_marker.as_deref().and_then(|m| {
            let start = text[..first_turn].rfind(m)? + m.len();
            let question = py_strip(&ctx.question);
            match text[start..first_turn].find(question) {
                Some(at) if !question.is_empty() => Some(start + at + question.len()),
                _ => Some(start),
            }
        });
        let shared_tokens = shared_text_end
            .map(|end| enc.offsets.iter().take_while(|&&(_, e)| e <= end).count())
            .unwrap_or(0);
        Ok(Prompt { text, ids: enc.ids, tag_rows, steps, shared_text_end, shared_tokens, images: ctx.images.clone() })
    }

    /// Renders and tokenizes one candidate.
    pub fn prompt(&self, ctx: &Context, solution: &Solution) -> Result<Prompt> {
        match self.profile.format {
            PromptFormat::Tagged | PromptFormat::Separator => {}
            PromptFormat::PerStepSegments => return self.segments_prompt(ctx, solution),
            PromptFormat::MultiTurn => return self.multi_turn_prompt(ctx, solution),
        }
        let (sol_text, sol_tag_ends, steps) = self.solution_text(solution)?;
        let text = self.render(ctx, &sol_text, &sol_tag_ends)?;
        let enc = self.encode(&text)?;
        let tag = self.profile.step_tag.as_str();
        let tag_ends: Vec<usize> = text.match_indices(tag).map(|(i, m)| i + m.len()).collect();
        if tag_ends.len() != steps.len() {
            return Err(Error::Template(format!(
                "the rendered prompt holds {} step tags for {} steps (does the chat template alter the message?)",
                tag_ends.len(),
                steps.len()
            )));
        }
        let tag_rows = tag_rows(&enc, &tag_ends)?;
        // The shared part ends with the last marker before the first step tag. (Any common token
        // prefix gives identical keys and values; the marker only bounds what we try to share.)
        let shared_text_end = self.profile.shared_prefix_marker.as_deref().and_then(|m| {
            let first_tag = tag_ends.first().map_or(text.len(), |e| e - tag.len());
            text[..first_tag].rfind(m).map(|i| i + m.len())
        });
        let shared_tokens = shared_text_end
            .map(|end| enc.offsets.iter().take_while(|&&(_, e)| e <= end).count())
            .unwrap_or(0);
        Ok(Prompt { text, ids: enc.ids, tag_rows, steps, shared_text_end, shared_tokens, images: ctx.images.clone() })
    }
}

impl PromptBuilder {
    /// Tokens of `text` when a bounded prefix of it already holds more than `limit` (a lower
    /// bound: the prompt around it only adds); `None` when the text is too short to tell cheaply,
    /// and the built prompt decides.
    pub fn tokens_over(&self, text: &str, limit: usize) -> Result<Option<usize>> {
        let probe = limit.saturating_add(2).saturating_mul(PROBE_BYTES_PER_TOKEN);
        if text.len() <= probe {
            return Ok(None);
        }
        let mut end = probe;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let n = self.tokenizer.count(&text[..end])?;
        // Cutting the text can merge at most one token across the cut.
        Ok((n > limit + 1).then_some(n - 1))
    }

    /// What [`PromptBuilder::raw_prompt`] accepts, for the OpenAPI document of `/pooling`.
    pub fn raw_prompt_rules(&self) -> RawPromptRules {
        RawPromptRules {
            has_step_tag: !self.profile.step_tag.is_empty(),
            ids_allowed: self.tag_id.is_some(),
            vocab_size: self.tokenizer.vocab_size(),
        }
    }

    /// A prompt its caller built: text tokenized as it is (with the tokenizer's special tokens,
    /// as `add_special_tokens` does; every occurrence of the step tag is scored at its last
    /// token, as for our own prompts) or token ids taken as they are (every position holding the
    /// step-tag token, which must then be one token). Nothing is neutralised: the caller owns the
    /// whole prompt.
    pub fn raw_prompt(&self, input: &RawInput) -> Result<Prompt> {
        let tag = self.profile.step_tag.as_str();
        if tag.is_empty() {
            return Err(Error::input(
                "input",
                format!(
                    "profile `{}` (format `{}`) has no step tag to score a caller-built prompt at; send question and steps",
                    self.profile.name,
                    self.profile.format.name()
                ),
            ));
        }
        let (text, ids, tag_rows) = match input {
            RawInput::Text(t) => {
                let enc = self.tokenizer.encode(t)?;
                let ends: Vec<usize> = t.match_indices(tag).map(|(i, m)| i + m.len()).collect();
                let rows = tag_rows(&enc, &ends).map_err(|e| Error::input("input", e.to_string()))?;
                (t.clone(), enc.ids, rows)
            }
            RawInput::Ids(ids) => {
                let id = self.tag_id.ok_or_else(|| {
                    Error::input(
                        "input",
                        format!("profile `{}`: the step tag `{tag}` is not one token of this tokenizer; send text, not ids", self.profile.name),
                    )
                })?;
                let vocab = self.tokenizer.vocab_size();
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(Error::input("input", format!("token id {bad} is outside the vocabulary ({vocab} tokens)")));
                }
                let rows = ids.iter().enumerate().filter(|(_, &t)| t == id).map(|(i, _)| i).collect();
                (String::new(), ids.clone(), rows)
            }
        };
        if ids.is_empty() {
            return Err(Error::input("input", "must not be empty"));
        }
        Ok(Prompt { text, ids, steps: vec![String::new(); tag_rows.len()], tag_rows, shared_text_end: None, shared_tokens: 0, images: vec![] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_single_pass() {
        let s = fill("{documents}Q: {question} E: {solution}", &[("documents", ""), ("question", "{solution}"), ("solution", "x")]);
        assert_eq!(s, "Q: {solution} E: x");
        assert_eq!(fill("{n} {x}", &[("n", "1")]), "1 {x}");
    }

    #[test]
    fn neutralised_inserts_joiner_after_first_visible_char() {
        assert_eq!(neutralised(" ки"), " к\u{2060}и");
        assert_eq!(neutralised("<|eot_id|>"), "<\u{2060}|eot_id|>");
    }
}
