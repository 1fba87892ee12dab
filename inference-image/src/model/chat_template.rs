//! The model's own chat template (Jinja, as Hugging Face ships it), rendered with minijinja.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    has_template: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(
        source: Option<String>,
        bos_token: String,
        eos_token: String,
    ) -> anyhow::Result<Self> {
        let mut env = minijinja::Environment::new();
        // Hugging Face templates call Python string methods (`.strip()`, `.startswith()`…).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let has_template = source.is_some();
        if let Some(source) = source {
            env.add_template_owned("chat", source)
                .map_err(|e| anyhow::anyhow!("the model's chat template does not parse: {e}"))?;
        }
        Ok(Self { env, has_template, bos_token, eos_token })
    }

    pub fn bos_token(&self) -> Option<&str> {
        Some(self.bos_token.as_str()).filter(|t| !t.is_empty())
    }

    /// The prompt text for `messages`, ending where the assistant's reply begins. An error here
    /// is the template refusing the conversation (e.g. roles that must alternate): the client's
    /// problem, worded by the template.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        if !self.has_template {
            // No template: a plain transcript the model can continue.
            let mut out = String::new();
            for m in messages {
                out.push_str(&format!("{}: {}\n", m.role, m.content));
            }
            out.push_str("assistant:");
            return Ok(out);
        }
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| match e.kind() {
                minijinja::ErrorKind::InvalidOperation => {
                    e.detail().unwrap_or("refused").to_string()
                }
                _ => e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn renders_a_hugging_face_template_with_python_methods() {
        let source = "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}";
        let t = ChatTemplate::new(Some(source.into()), "<s>".into(), "</s>".into()).unwrap();
        let out = t.render(&[msg("system", " be brief "), msg("user", "hi")]).unwrap();
        assert_eq!(out, "<s>[SYSTEM] be brief\n[USER] hi\n[ASSISTANT]");
    }

    #[test]
    fn a_template_refusal_is_reported_in_its_own_words() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok";
        let t = ChatTemplate::new(Some(source.into()), String::new(), String::new()).unwrap();
        assert_eq!(
            t.render(&[msg("assistant", "x")]).unwrap_err(),
            "Conversation must start with a user message"
        );
        assert_eq!(t.render(&[msg("user", "x")]).unwrap(), "ok");
    }

    #[test]
    fn without_a_template_the_transcript_is_plain() {
        let t = ChatTemplate::new(None, String::new(), String::new()).unwrap();
        assert_eq!(t.render(&[msg("user", "hi")]).unwrap(), "user: hi\nassistant:");
    }

    #[test]
    fn a_broken_template_fails_at_load() {
        assert!(ChatTemplate::new(Some("{% for %}".into()), String::new(), String::new()).is_err());
    }
}
