//! Forms → API objects, with an error in words per field. The API server validates again (schema
//! and CEL); what it refuses is shown in its own words. Pure: no I/O.

use alcove_crds::instance::ModelFormat;
use serde_json::{Value, json};

use crate::args::CatalogueModel;
use crate::views::{FormErrors, NewInstance};

const MAX_SYSTEM_PROMPT: usize = 32 * 1024;
const MAX_GPUS: i64 = 8;

/// A Kubernetes object name (an RFC 1123 label): what is wrong with it, in words.
pub fn name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("Give it a name.".into());
    }
    if name.len() > 63 {
        return Some("Use at most 63 characters.".into());
    }
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok_ends = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok_chars || !ok_ends {
        return Some(
            "Use lower-case letters, digits and dashes, starting with a letter and not ending with a dash (e.g. support-bot)."
                .into(),
        );
    }
    None
}

fn number(
    errors: &mut FormErrors,
    field: &'static str,
    input: &str,
    min: i64,
    max: i64,
) -> Option<i64> {
    let input = input.trim();
    if input.is_empty() {
        return None;
    }
    match input.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        Ok(_) => {
            errors.fields.push((field, format!("Enter a whole number from {min} to {max}.")));
            None
        }
        Err(_) => {
            errors.fields.push((field, "Enter a whole number, like 512.".into()));
            None
        }
    }
}

/// The InferenceInstance a filled-in create form describes, or the errors to show beside its
/// fields. `gpu_products` and `knowledge_bases` are what the form offered.
pub fn instance_from(
    v: &NewInstance,
    namespace: &str,
    catalogue: &[CatalogueModel],
    gpu_products: &[String],
    knowledge_bases: &[String],
) -> Result<Value, FormErrors> {
    let mut errors = FormErrors::default();
    let name = v.name.trim();
    if let Some(e) = name_error(name) {
        errors.fields.push(("name", e));
    }
    let model = catalogue.iter().find(|m| m.name == v.model);
    if model.is_none() {
        errors.fields.push(("model", "Pick a model from the list.".into()));
    }
    let gpus = number(&mut errors, "gpu_count", &v.gpu_count, 0, MAX_GPUS);
    let product = v.gpu_product.trim();
    if !product.is_empty() && !gpu_products.iter().any(|p| p == product) {
        errors.fields.push(("gpu_product", "Pick a GPU product your tenant can use.".into()));
    }
    let kb = v.knowledge_base.trim();
    if !kb.is_empty() && !knowledge_bases.iter().any(|k| k == kb) {
        errors.fields.push(("knowledge_base", "Pick one of your knowledge bases.".into()));
    }
    if v.system_prompt.len() > MAX_SYSTEM_PROMPT {
        errors.fields.push((
            "system_prompt",
            format!("Keep the system prompt under {} KiB.", MAX_SYSTEM_PROMPT / 1024),
        ));
    }
    let max_tokens = number(&mut errors, "max_tokens", &v.max_tokens, 1, 1 << 20);
    let context = number(&mut errors, "context_length", &v.context_length, 1, 1 << 20);
    if let (Some(m), Some(c)) = (max_tokens, context)
        && m > c
    {
        errors
            .fields
            .push(("max_tokens", "An answer cannot be longer than the context length.".into()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let model = model.expect("checked above");
    let mut model_spec = json!({
        "format": match model.format { ModelFormat::Safetensors => "safetensors", ModelFormat::Gguf => "gguf" },
        "source": {"platform": model.name},
    });
    if let Some(p) = &model.path {
        model_spec["path"] = p.clone().into();
    }
    let mut spec = json!({"model": model_spec, "gpu": {"count": gpus.unwrap_or(1)}});
    if !product.is_empty() {
        spec["gpu"]["product"] = product.into();
    }
    if !v.system_prompt.trim().is_empty() {
        // Browsers send a textarea's line breaks as CRLF; the prompt file keeps plain ones.
        spec["systemPrompt"] = v.system_prompt.replace("\r\n", "\n").into();
    }
    if !kb.is_empty() {
        spec["knowledgeBases"] = json!([{"name": kb}]);
    }
    let mut limits = serde_json::Map::new();
    if let Some(m) = max_tokens {
        limits.insert("maxTokens".into(), m.into());
    }
    if let Some(c) = context {
        limits.insert("contextLength".into(), c.into());
    }
    if !limits.is_empty() {
        spec["limits"] = limits.into();
    }
    Ok(json!({
        "apiVersion": alcove_crds::API_VERSION,
        "kind": "InferenceInstance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
}

const MAX_BUSINESS: usize = 120;
const MAX_USE: usize = 600;

/// The default system prompt three onboarding answers make, from a fixed template (no model is
/// asked, nothing leaves the server), or the errors beside their fields. Line breaks in the
/// answers are folded, so an answer cannot add lines of its own to the instructions.
pub fn system_prompt_from(v: &NewInstance) -> Result<String, FormErrors> {
    let fold = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (business, purpose) = (fold(&v.business), fold(&v.intended_use));
    let mut errors = FormErrors::default();
    if business.is_empty() {
        errors.fields.push(("business", "Give your business's name.".into()));
    } else if business.chars().count() > MAX_BUSINESS {
        errors.fields.push(("business", format!("Use at most {MAX_BUSINESS} characters.")));
    }
    if purpose.is_empty() {
        errors.fields.push(("intended_use", "Say in a few words what it is for.".into()));
    } else if purpose.chars().count() > MAX_USE {
        errors.fields.push(("intended_use", format!("Use at most {MAX_USE} characters.")));
    }
    let style = match v.style.as_str() {
        "friendly" => "Be friendly and warm, and speak plainly.",
        "formal" => "Be formal and polite, and address people respectfully.",
        "concise" => "Be brief: answer in as few words as the question needs.",
        "detailed" => "Be thorough: explain your answers step by step.",
        _ => {
            errors.fields.push(("style", "Pick a style from the list.".into()));
            ""
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let purpose = purpose.trim_end_matches(['.', '!', '?']);
    // "Startup Inc." ends its own sentence.
    let stop = if business.ends_with('.') { "" } else { "." };
    Ok(format!(
        "You are the assistant of {business}{stop}\n\
         People come to you for: {purpose}.\n\
         {style}\n\
         Answer in the language you are asked in. If you do not know an answer, say so and \
         suggest asking {business} directly, rather than guessing.\n"
    ))
}

/// Largest document accepted, in bytes.
pub const MAX_DOCUMENT: usize = 256 * 1024;
/// What all of a knowledge base's uploads may hold together (a ConfigMap holds at most 1 MiB).
pub const MAX_UPLOADS: usize = 900 * 1024;

/// An uploaded file as a document: its key (the file name, as a ConfigMap key may spell it) and
/// its text. Text and Markdown are kept as they are; HTML becomes its text.
pub fn document(file_name: &str, bytes: &[u8]) -> Result<(String, String), String> {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    let ext = base.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if !["txt", "md", "markdown", "html", "htm"].contains(&ext.as_str()) {
        return Err("Upload a text (.txt), Markdown (.md) or HTML (.html) file.".into());
    }
    if bytes.is_empty() {
        return Err("That file is empty.".into());
    }
    if bytes.len() > MAX_DOCUMENT {
        return Err(format!("That file is larger than {} KiB.", MAX_DOCUMENT / 1024));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err("That file is not UTF-8 text.".into());
    };
    let text = if ext.starts_with("htm") { html_to_text(text) } else { text.to_string() };
    if text.trim().is_empty() {
        return Err("That file has no text in it.".into());
    }
    let mut key: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '-' })
        .collect();
    key = key.trim_start_matches('.').chars().take(200).collect();
    if key.is_empty() {
        key = format!("document.{ext}");
    }
    Ok((key, text))
}

/// The text of an HTML document: scripts and styles dropped, tags removed, block ends as line
/// breaks, the common entities decoded.
pub fn html_to_text(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut i = 0;
    while i < html.len() {
        let rest = &lower[i..];
        if rest.starts_with("<script") || rest.starts_with("<style") {
            let close = if rest.starts_with("<script") { "</script" } else { "</style" };
            i += rest.find(close).map_or(rest.len(), |at| at + close.len());
            i += lower[i..].find('>').map_or(lower.len() - i, |at| at + 1);
            continue;
        }
        if rest.starts_with('<') {
            let end = rest.find('>').map_or(rest.len(), |at| at + 1);
            let tag = &rest[1..end.saturating_sub(1)];
            let name = tag
                .trim_start_matches('/')
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or_default();
            if [
                "p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
                "article",
            ]
            .contains(&name)
            {
                out.push('\n');
            }
            i += end;
            continue;
        }
        let ch = html[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let lines: Vec<&str> = decoded.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Vec<CatalogueModel> {
        vec!["default=safetensors".parse().unwrap(), "small=gguf:model.gguf".parse().unwrap()]
    }

    #[test]
    fn the_onboarding_answers_write_the_system_prompt() {
        let v = NewInstance {
            business: "  Acme\nBakery ".into(),
            intended_use: "answering questions about\r\nour bread and opening hours.".into(),
            style: "concise".into(),
            ..Default::default()
        };
        assert_eq!(
            system_prompt_from(&v).unwrap(),
            "You are the assistant of Acme Bakery.\n\
             People come to you for: answering questions about our bread and opening hours.\n\
             Be brief: answer in as few words as the question needs.\n\
             Answer in the language you are asked in. If you do not know an answer, say so and \
             suggest asking Acme Bakery directly, rather than guessing.\n"
        );
        for (style, words) in crate::views::STYLES {
            let v = NewInstance { style: style.to_string(), ..v.clone() };
            assert!(system_prompt_from(&v).is_ok(), "{words}");
        }
        let empty = system_prompt_from(&NewInstance::default()).unwrap_err();
        assert_eq!(empty.get("business"), Some("Give your business's name."));
        assert_eq!(empty.get("intended_use"), Some("Say in a few words what it is for."));
        assert_eq!(empty.get("style"), Some("Pick a style from the list."));
        let dotted = NewInstance { business: "Startup Inc.".into(), ..v.clone() };
        assert!(
            system_prompt_from(&dotted)
                .unwrap()
                .starts_with("You are the assistant of Startup Inc.\n")
        );
        let long = NewInstance { business: "x".repeat(121), ..v.clone() };
        assert_eq!(
            system_prompt_from(&long).unwrap_err().get("business"),
            Some("Use at most 120 characters.")
        );
    }

    #[test]
    fn a_good_form_becomes_an_instance() {
        let v = NewInstance {
            name: " support-bot ".into(),
            model: "small".into(),
            gpu_count: "2".into(),
            gpu_product: "H100".into(),
            system_prompt: "Be brief.\r\nBe kind.".into(),
            knowledge_base: "handbook".into(),
            max_tokens: "256".into(),
            context_length: "2048".into(),
            ..Default::default()
        };
        let o =
            instance_from(&v, "tenant-acme", &catalogue(), &["H100".into()], &["handbook".into()])
                .unwrap();
        assert_eq!(o["metadata"], json!({"name": "support-bot", "namespace": "tenant-acme"}));
        assert_eq!(
            o["spec"],
            json!({
                "model": {"format": "gguf", "source": {"platform": "small"}, "path": "model.gguf"},
                "gpu": {"count": 2, "product": "H100"},
                "systemPrompt": "Be brief.\nBe kind.",
                "knowledgeBases": [{"name": "handbook"}],
                "limits": {"maxTokens": 256, "contextLength": 2048},
            })
        );
        let minimal =
            NewInstance { name: "a".into(), model: "default".into(), ..Default::default() };
        let o = instance_from(&minimal, "tenant-acme", &catalogue(), &[], &[]).unwrap();
        assert_eq!(o["spec"]["gpu"], json!({"count": 1}));
        assert!(o["spec"].get("limits").is_none(), "unset limits take the server's defaults");
    }

    #[test]
    fn documents_are_checked_and_html_becomes_text() {
        let (key, text) = document("C:\\docs\\Leave policy.md", b"# Leave\n25 days.").unwrap();
        assert_eq!((key.as_str(), text.as_str()), ("Leave-policy.md", "# Leave\n25 days."));
        let html = b"<html><head><style>p{}</style><script>x()</script></head><body><h1>Leave</h1><p>25 days &amp; more</p></body></html>";
        assert_eq!(document("a.html", html).unwrap().1, "Leave\n25 days & more");
        assert!(document("a.pdf", b"%PDF").unwrap_err().contains(".txt"));
        assert!(document("a.txt", b"").unwrap_err().contains("empty"));
        assert!(document("a.txt", &[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert!(document("a.txt", &vec![b'a'; MAX_DOCUMENT + 1]).unwrap_err().contains("KiB"));
        assert!(document("a.html", b"<p> </p>").unwrap_err().contains("no text"));
        assert_eq!(document("..hidden.txt", b"x").unwrap().0, "hidden.txt");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// File names as a hostile client may send them: traversal in either slash, dots,
        /// control characters, percent-encoding, any Unicode, very long; with an extension
        /// the form takes.
        fn file_names() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("../".to_string()),
                Just("..\\".to_string()),
                Just("/".to_string()),
                Just(".".to_string()),
                Just("%2e%2e%2f".to_string()),
                Just("\r\nX-Injected: yes".to_string()),
                Just("\0".to_string()),
                "[a-zA-Z0-9 ._-]{1,8}",
                "\\PC{1,4}",
                "[a-z]{240,260}",
            ];
            let ext = prop_oneof![Just(".md"), Just(".TXT"), Just(".html"), Just(".markdown")];
            (proptest::collection::vec(piece, 0..6), ext)
                .prop_map(|(pieces, ext)| format!("{}{ext}", pieces.concat()))
        }

        proptest! {
            /// Whatever name a file is uploaded under, its key is a ConfigMap key that names a
            /// file inside the knowledge base's uploads folder (as the index job writes it):
            /// letters, digits, `-`, `_` and `.` only, no leading dot, at most 200 characters.
            #[test]
            fn upload_names_become_keys_that_stay_inside(name in file_names()) {
                let (key, _) = document(&name, b"text").unwrap();
                prop_assert!(!key.is_empty() && key.len() <= 200, "{:?} -> {:?}", name, key);
                prop_assert!(!key.starts_with('.'), "{:?} -> {:?}", name, key);
                prop_assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                    "{:?} -> {:?}", name, key
                );
                let dir = std::path::Path::new("/kb/uploads");
                let path = dir.join(&key);
                prop_assert_eq!(path.parent(), Some(dir));
                prop_assert_eq!(path.components().count(), dir.components().count() + 1);
            }
        }
    }

    #[test]
    fn each_bad_field_gets_its_own_error() {
        let v = NewInstance {
            name: "Support Bot".into(),
            model: "gpt-5".into(),
            gpu_count: "many".into(),
            gpu_product: "B200".into(),
            knowledge_base: "someone-elses".into(),
            max_tokens: "4096".into(),
            context_length: "1024".into(),
            ..Default::default()
        };
        let e = instance_from(&v, "tenant-acme", &catalogue(), &["H100".into()], &[]).unwrap_err();
        let fields: Vec<_> = e.fields.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            ["name", "model", "gpu_count", "gpu_product", "knowledge_base", "max_tokens"]
        );
        assert!(e.get("gpu_count").unwrap().contains("whole number"));
        assert!(e.get("max_tokens").unwrap().contains("context length"));
        assert_eq!(name_error("-x"), name_error("x-"));
        assert!(name_error(&"a".repeat(64)).unwrap().contains("63"));
        assert_eq!(name_error("ok-1"), None);
    }
}
