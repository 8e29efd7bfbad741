//! Chat templates rendered with minijinja the way Hugging Face's `apply_chat_template` renders
//! them with jinja2: `trim_blocks` and `lstrip_blocks` on, `raise_exception` available, Python
//! string methods (`.strip()`, ...), and a `trim` filter with Python's `str.strip()` whitespace set.

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::steps::py_strip;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| Error::Template(e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("trim", |s: String| py_strip(&s).to_string());
        env.add_template_owned(NAME, source.to_string()).map_err(|e| Error::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template(NAME).map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| Error::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_like_python_and_strips_blocks() {
        let t = ChatTemplate::new(
            "{{ bos_token }}\n{% for m in messages %}\n  [{{ m.role }}]{{ m.content | trim }}\n{% endfor %}\n{% if add_generation_prompt %}>{% endif %}",
            Some("<s>"),
            None,
        )
        .unwrap();
        let out = t.render(&[Message::new("user", " hi \u{1f}")], true).unwrap();
        // Checked against jinja2 (trim_blocks + lstrip_blocks): indentation before a variable stays.
        assert_eq!(out, "<s>\n  [user]hi\n>");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no') }}", None, None).unwrap();
        assert!(t.render(&[], false).unwrap_err().to_string().contains("no"));
    }
}
