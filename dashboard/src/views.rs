//! The pages, as pure functions from what they show to HTML (maud: checked at compile time,
//! every interpolation escaped). No I/O here; the server fills the view models.
//!
//! Accessibility: every input has a `<label>`, errors are tied to their field with
//! `aria-describedby` and announced (`role="alert"`), live regions are `aria-live="polite"`,
//! and the layout is one column that reads on a phone.

use maud::{DOCTYPE, Markup, html};

/// What every page carries.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The signed-in user, if any.
    pub user: Option<&'a str>,
    /// The session's CSRF token, for forms and htmx requests.
    pub csrf: Option<&'a str>,
}

pub fn page(f: &Frame, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (f.title) " · Alcove" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/htmx.min.js" defer {}
                script src="/assets/dashboard.js" defer {}
            }
            // htmx sends the CSRF token with every request it makes.
            body hx-headers=[f.csrf.map(|c| format!(r#"{{"x-csrf-token": "{c}"}}"#))] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Alcove" }
                    @if let (Some(user), Some(csrf)) = (f.user, f.csrf) {
                        nav aria-label="Account" {
                            span.who { (user) }
                            form method="post" action="/signout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// A text input with its label and, when the last submission was refused, its error.
pub fn field(
    name: &str,
    label: &str,
    value: &str,
    error: Option<&str>,
    attrs: FieldAttrs,
) -> Markup {
    let err_id = format!("{name}-error");
    let hint_id = format!("{name}-hint");
    let described = match (error.is_some(), attrs.hint.is_some()) {
        (true, true) => Some(format!("{err_id} {hint_id}")),
        (true, false) => Some(err_id.clone()),
        (false, true) => Some(hint_id.clone()),
        (false, false) => None,
    };
    html! {
        div.field.invalid[error.is_some()] {
            label for=(name) { (label) }
            @if let Some(h) = attrs.hint { p.hint id=(hint_id) { (h) } }
            @if attrs.multiline {
                textarea id=(name) name=(name) rows="4"
                    aria-invalid=[error.map(|_| "true")] aria-describedby=[described.as_deref()] { (value) }
            } @else {
                input id=(name) name=(name) type=(attrs.kind) value=(value)
                    required[attrs.required] autocomplete=[attrs.autocomplete]
                    inputmode=[attrs.inputmode] min=[attrs.min] max=[attrs.max]
                    aria-invalid=[error.map(|_| "true")] aria-describedby=[described.as_deref()];
            }
            @if let Some(e) = error { p.error id=(err_id) role="alert" { (e) } }
        }
    }
}

#[derive(Default, Clone, Copy)]
pub struct FieldAttrs<'a> {
    pub kind: &'a str,
    pub required: bool,
    pub multiline: bool,
    pub autocomplete: Option<&'a str>,
    pub inputmode: Option<&'a str>,
    pub hint: Option<&'a str>,
    pub min: Option<&'a str>,
    pub max: Option<&'a str>,
}

impl<'a> FieldAttrs<'a> {
    pub fn text() -> FieldAttrs<'a> {
        FieldAttrs { kind: "text", ..Default::default() }
    }
}

fn csrf_input(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

fn notice(text: Option<&str>) -> Markup {
    html! { @if let Some(t) = text { p.notice role="status" { (t) } } }
}

// ----- sign-in -----

pub fn sign_in(email: &str, error: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        p { "We email you a 6-digit code. No password." }
        form method="post" action="/signin" novalidate {
            (field("email", "Email address", email, error, FieldAttrs {
                kind: "email", required: true, autocomplete: Some("email"), ..FieldAttrs::text()
            }))
            button type="submit" { "Email me a code" }
        }
    }
}

pub fn enter_code(email: &str, error: Option<&str>, note: Option<&str>) -> Markup {
    html! {
        h1 { "Enter your code" }
        (notice(note))
        p { "If " strong { (email) } " has an Alcove account, a code is on its way. It works once, for 10 minutes." }
        form method="post" action="/signin/code" novalidate {
            input type="hidden" name="email" value=(email);
            (field("code", "6-digit code", "", error, FieldAttrs {
                required: true, autocomplete: Some("one-time-code"), inputmode: Some("numeric"),
                ..FieldAttrs::text()
            }))
            button type="submit" { "Sign in" }
        }
        form method="post" action="/signin" {
            input type="hidden" name="email" value=(email);
            button.link type="submit" { "Send a new code" }
        }
    }
}

// ----- overview -----

pub struct TenantRow {
    pub name: String,
    pub display_name: String,
    pub tier: String,
    pub region: String,
    pub phase: String,
    pub credit: String,
    pub instances: i32,
    pub gpus: i32,
}

pub fn overview(tenants: &[TenantRow]) -> Markup {
    html! {
        h1 { "Your tenants" }
        @if tenants.is_empty() {
            p { "No tenant names you as an owner yet. Ask your platform team to add your address to a tenant's owners." }
        }
        ul.cards {
            @for t in tenants {
                li.card {
                    h2 { a href={"/t/" (t.name)} { (t.display_name) } }
                    dl.facts {
                        dt { "Tier" } dd { (t.tier) }
                        dt { "Region" } dd { (t.region) }
                        dt { "Phase" } dd { (t.phase) }
                        dt { "Credit" } dd { (t.credit) }
                        dt { "Instances" } dd { (t.instances) }
                        dt { "GPUs in use" } dd { (t.gpus) }
                    }
                    a.button href={"/t/" (t.name)} { "Instances of " (t.display_name) }
                }
            }
        }
    }
}

// ----- instances -----

pub struct InstanceRow {
    pub name: String,
    pub model: String,
    pub gpus: i32,
    pub state: String,
    pub phase: String,
    pub message: String,
}

/// The live part of the instances page: polled every few seconds.
pub fn instance_rows(tenant: &str, rows: &[InstanceRow]) -> Markup {
    html! {
        tbody #rows hx-get={"/t/" (tenant) "/rows"} hx-trigger="every 3s" hx-swap="outerHTML" aria-live="polite" {
            @for r in rows {
                tr {
                    th scope="row" { a href={"/t/" (tenant) "/i/" (r.name)} { (r.name) } }
                    td { (r.model) }
                    td { (r.gpus) }
                    td { (r.state) }
                    td { span.phase data-phase=(r.phase) { (r.phase) } @if !r.message.is_empty() { br; small { (r.message) } } }
                }
            }
            @if rows.is_empty() { tr { td colspan="5" { "No instances yet." } } }
        }
    }
}

pub fn instances(
    tenant: &str,
    display_name: &str,
    rows: &[InstanceRow],
    note: Option<&str>,
) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " (display_name) }
        h1 { "Instances" }
        (notice(note))
        p { a.button href={"/t/" (tenant) "/new"} { "New instance" } }
        div.scroll {
            table {
                caption.visually-hidden { "Instances of " (display_name) }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Model" } th scope="col" { "GPUs" } th scope="col" { "State" } th scope="col" { "Phase" } } }
                (instance_rows(tenant, rows))
            }
        }
    }
}

/// What the create form was given, kept when it is refused so nothing typed is lost.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct NewInstance {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub gpu_count: String,
    #[serde(default)]
    pub gpu_product: String,
    #[serde(default)]
    pub system_prompt: String,
    #[serde(default)]
    pub knowledge_base: String,
    #[serde(default)]
    pub max_tokens: String,
    #[serde(default)]
    pub context_length: String,
}

/// Errors per field, and one for the whole form (the API server's own words).
#[derive(Debug, Default, PartialEq)]
pub struct FormErrors {
    pub fields: Vec<(&'static str, String)>,
    pub form: Option<String>,
}

impl FormErrors {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.iter().find(|(f, _)| *f == field).map(|(_, e)| e.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.form.is_none()
    }
}

pub struct CreateChoices<'a> {
    pub models: &'a [String],
    pub gpu_products: &'a [String],
    pub knowledge_bases: &'a [String],
}

pub fn new_instance(
    tenant: &str,
    csrf: &str,
    v: &NewInstance,
    errors: &FormErrors,
    choices: &CreateChoices,
) -> Markup {
    let select = |name: &str,
                  label: &str,
                  options: &[String],
                  selected: &str,
                  none: Option<&str>| {
        let err = errors.get(name);
        html! {
            div.field.invalid[err.is_some()] {
                label for=(name) { (label) }
                select id=(name) name=(name) aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| format!("{name}-error"))] {
                    @if let Some(n) = none { option value="" selected[selected.is_empty()] { (n) } }
                    @for o in options { option value=(o) selected[o == selected] { (o) } }
                }
                @if let Some(e) = err { p.error id={(name) "-error"} role="alert" { (e) } }
            }
        }
    };
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (tenant)} { (tenant) } " / new instance" }
        h1 { "New instance" }
        @if let Some(e) = &errors.form { p.error.banner role="alert" { (e) } }
        form method="post" action={"/t/" (tenant) "/new"} novalidate {
            (csrf_input(csrf))
            (field("name", "Name", &v.name, errors.get("name"), FieldAttrs {
                required: true, hint: Some("Lower-case letters, digits and dashes; it names the instance's API and key."),
                ..FieldAttrs::text()
            }))
            (select("model", "Model", choices.models, &v.model, None))
            (field("gpu_count", "GPUs", &v.gpu_count, errors.get("gpu_count"), FieldAttrs {
                kind: "number", inputmode: Some("numeric"), min: Some("0"), max: Some("8"), ..FieldAttrs::text()
            }))
            (select("gpu_product", "GPU product", choices.gpu_products, &v.gpu_product, Some("Any your tenant may use")))
            (field("system_prompt", "System prompt", &v.system_prompt, errors.get("system_prompt"), FieldAttrs {
                multiline: true, hint: Some("Put before every chat. Kept in your namespace, never logged."), ..FieldAttrs::text()
            }))
            (select("knowledge_base", "Knowledge base", choices.knowledge_bases, &v.knowledge_base, Some("None")))
            (field("max_tokens", "Most tokens per answer", &v.max_tokens, errors.get("max_tokens"), FieldAttrs {
                kind: "number", inputmode: Some("numeric"), min: Some("1"), ..FieldAttrs::text()
            }))
            (field("context_length", "Context length (tokens)", &v.context_length, errors.get("context_length"), FieldAttrs {
                kind: "number", inputmode: Some("numeric"), min: Some("1"), ..FieldAttrs::text()
            }))
            button type="submit" { "Create instance" }
        }
    }
}

pub struct Activity {
    /// RFC 3339, or empty.
    pub when: String,
    pub what: String,
    pub detail: String,
    pub warning: bool,
}

pub struct InstanceDetail {
    pub tenant: String,
    pub name: String,
    pub model: String,
    pub gpus: String,
    pub state: String,
    pub phase: String,
    pub message: String,
    pub endpoint: String,
    pub served_name: String,
    pub gpu_time: String,
    pub has_key: bool,
    pub activity: Vec<Activity>,
}

pub fn instance_detail(d: &InstanceDetail, csrf: &str, note: Option<&str>) -> Markup {
    let base = format!("/t/{}/i/{}", d.tenant, d.name);
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (d.tenant)} { (d.tenant) } " / " (d.name) }
        h1 { (d.name) }
        (notice(note))
        div #status hx-get={(base) "/status"} hx-trigger="every 3s" hx-swap="outerHTML" aria-live="polite" {
            (instance_status(d))
        }
        section aria-labelledby="use-h" {
            h2 #use-h { "Use it" }
            dl.facts {
                dt { "Endpoint (base URL)" } dd { code #endpoint { (d.endpoint) } }
                dt { "Model name" } dd { code { (d.served_name) } }
            }
            div #key {
                @if d.has_key {
                    form method="post" action={(base) "/key"} hx-post={(base) "/key"} hx-target="#key" {
                        (csrf_input(csrf))
                        button type="submit" { "Show API key" }
                    }
                } @else { p { "The API key is being made." } }
            }
            p { a.button href={(base) "/chat"} { "Open the chat playground" } }
        }
        section aria-labelledby="act-h" {
            h2 #act-h { "Actions" }
            div.actions {
                @if d.state == "Suspended" {
                    form method="post" action={(base) "/state"} {
                        (csrf_input(csrf)) input type="hidden" name="state" value="Running";
                        button type="submit" { "Resume" }
                    }
                } @else {
                    form method="post" action={(base) "/state"} {
                        (csrf_input(csrf)) input type="hidden" name="state" value="Suspended";
                        button type="submit" { "Suspend (stops GPU billing, keeps data and key)" }
                    }
                }
                form method="post" action={(base) "/rotate"} {
                    (csrf_input(csrf))
                    button type="submit" { "Rotate API key" }
                }
                a.button.danger href={(base) "/destroy"} { "Destroy…" }
            }
        }
        section aria-labelledby="log-h" {
            h2 #log-h { "Activity" }
            ol.activity {
                @for a in &d.activity {
                    li.warning[a.warning] {
                        @if !a.when.is_empty() { time datetime=(a.when) { (a.when) } " — " }
                        strong { (a.what) } @if !a.detail.is_empty() { ": " (a.detail) }
                    }
                }
                @if d.activity.is_empty() { li { "Nothing yet." } }
            }
        }
    }
}

/// The live status block of an instance page.
pub fn instance_status(d: &InstanceDetail) -> Markup {
    html! {
        dl.facts #status-facts {
            dt { "Phase" } dd { span.phase data-phase=(d.phase) { (d.phase) } }
            @if !d.message.is_empty() { dt { "Why" } dd { (d.message) } }
            dt { "State" } dd { (d.state) }
            dt { "Model" } dd { (d.model) }
            dt { "GPUs" } dd { (d.gpus) }
            dt { "GPU time used" } dd { (d.gpu_time) }
        }
    }
}

pub fn api_key(key: &str) -> Markup {
    html! {
        div.field {
            label for="api-key" { "API key" }
            input #api-key type="text" readonly value=(key) autocomplete="off" spellcheck="false";
            button type="button" data-copy="api-key" { "Copy" }
            p.hint { "Send it as " code { "Authorization: Bearer <key>" } ". Anyone with it can use this instance." }
        }
    }
}

pub fn confirm_destroy(
    tenant: &str,
    name: &str,
    csrf: &str,
    email: &str,
    code_sent: bool,
    error: Option<&str>,
) -> Markup {
    let base = format!("/t/{tenant}/i/{name}");
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (tenant)} { (tenant) } " / " a href=(base) { (name) } " / destroy" }
        h1 { "Destroy " (name) "?" }
        p { "The pod stops at once and GPU billing stops with it. The API key stops working. "
            "Its conversation history is kept only as long as your tenant's retention policy says, then erased. "
            "This cannot be undone." }
        @if code_sent {
            p { "We emailed a confirmation code to " strong { (email) } "." }
            form method="post" action={(base) "/destroy"} novalidate {
                (csrf_input(csrf))
                (field("code", "Confirmation code", "", error, FieldAttrs {
                    required: true, autocomplete: Some("one-time-code"), inputmode: Some("numeric"), ..FieldAttrs::text()
                }))
                button.danger type="submit" { "Destroy " (name) }
            }
        } @else {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action={(base) "/destroy/code"} {
                (csrf_input(csrf))
                button type="submit" { "Email me a confirmation code" }
            }
        }
        p { a href=(base) { "Keep it" } }
    }
}

pub fn destroyed(tenant: &str, name: &str, pod_gone: bool, billing: &str) -> Markup {
    html! {
        h1 { (name) " is destroyed" }
        ul #destroyed aria-live="polite" {
            li { @if pod_gone { "Its pod is gone." } @else { "Its pod is stopping." } }
            li { (billing) }
        }
        p { a.button href={"/t/" (tenant)} { "Back to instances" } }
    }
}

pub fn message(title: &str, words: &str) -> Markup {
    html! {
        h1 { (title) }
        p { (words) }
        p { a href="/" { "Go to your tenants" } }
    }
}

/// The stylesheet (served as /assets/style.css): one column, large targets, visible focus.
pub const STYLE: &str = include_str!("../assets/style.css");
/// htmx 2.0.4, vendored (see assets/README.md).
pub const HTMX: &str = include_str!("../assets/htmx.min.js");
/// Our own few lines: copy buttons and the chat playground's stream.
pub const SCRIPT: &str = include_str!("../assets/dashboard.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_field_shows_its_error_beside_it_and_keeps_the_input() {
        let errors =
            FormErrors { fields: vec![("name", "Use lower-case letters.".into())], form: None };
        let v = NewInstance {
            name: "Bad Name".into(),
            system_prompt: "Be <kind>".into(),
            ..Default::default()
        };
        let choices =
            CreateChoices { models: &["default".into()], gpu_products: &[], knowledge_bases: &[] };
        let html = new_instance("acme", "tok", &v, &errors, &choices).into_string();
        assert!(
            html.contains(r#"id="name-error" role="alert">Use lower-case letters.</p>"#),
            "{html}"
        );
        assert!(html.contains(r#"aria-describedby="name-error name-hint""#), "{html}");
        assert!(html.contains(r#"value="Bad Name""#));
        assert!(html.contains("Be &lt;kind&gt;</textarea>"), "typed text is kept, escaped: {html}");
        assert!(html.contains(r#"name="csrf" value="tok""#));
    }

    #[test]
    fn the_page_frame_carries_the_csrf_token_for_htmx_and_loads_nothing_remote() {
        let f = Frame { title: "T", user: Some("ada@example.com"), csrf: Some("abc") };
        let html = page(&f, html! { "x" }).into_string();
        assert!(
            html.contains(r#"hx-headers="{&quot;x-csrf-token&quot;: &quot;abc&quot;}""#),
            "{html}"
        );
        assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
        assert!(html.contains(r#"<meta name="viewport""#));
    }
}
