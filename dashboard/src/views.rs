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

pub fn sign_in(email: &str, error: Option<&str>, signup: bool) -> Markup {
    html! {
        h1 { "Sign in" }
        p { "We email you a 6-digit code. No password." }
        form method="post" action="/signin" novalidate {
            (field("email", "Email address", email, error, FieldAttrs {
                kind: "email", required: true, autocomplete: Some("email"), ..FieldAttrs::text()
            }))
            button type="submit" { "Email me a code" }
        }
        @if signup { p { "New here? " a #signup href="/signup" { "Create an account" } } }
    }
}

/// What the sign-up form was given (kept when refused).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct SignupForm {
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub code: String,
}

/// "Create an account": the address and the account's name, then the code mailed to it.
pub fn signup(v: &SignupForm, errors: &FormErrors, code_sent: bool, note: Option<&str>) -> Markup {
    html! {
        h1 { "Create an account" }
        (notice(note))
        @if let Some(e) = &errors.form { p.error.banner role="alert" { (e) } }
        @if code_sent {
            p { "We emailed a code to " strong { (v.email) } ". It works once, for 10 minutes." }
            form method="post" action="/signup/code" novalidate {
                input type="hidden" name="email" value=(v.email);
                input type="hidden" name="display_name" value=(v.display_name);
                (field("code", "6-digit code", "", errors.get("code"), FieldAttrs {
                    required: true, autocomplete: Some("one-time-code"), inputmode: Some("numeric"),
                    ..FieldAttrs::text()
                }))
                button type="submit" { "Create my account" }
            }
        } @else {
            p { "Your own private AI, billed by use. We email you a 6-digit code to prove the address is yours; no password." }
            form method="post" action="/signup" novalidate {
                (field("email", "Email address", &v.email, errors.get("email"), FieldAttrs {
                    kind: "email", required: true, autocomplete: Some("email"), ..FieldAttrs::text()
                }))
                (field("display_name", "Account name", &v.display_name, errors.get("display_name"), FieldAttrs {
                    required: true, autocomplete: Some("organization"), hint: Some("Your business or team, as your pages and mail will show it."), ..FieldAttrs::text()
                }))
                button type="submit" { "Email me a code" }
            }
            p { "Have an account? " a href="/signin" { "Sign in" } }
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
    /// Set once the tenant is deleted, with when the rest is erased (once the operator said).
    pub deleted: Option<Option<String>>,
}

pub fn overview(tenants: &[TenantRow]) -> Markup {
    html! {
        h1 { "Your tenants" }
        @if tenants.is_empty() {
            p { "No tenant names you as an owner yet. Ask your platform team to add your address to a tenant's owners." }
        }
        ul.cards {
            @for t in tenants {
                @if let Some(at) = &t.deleted {
                    li.card {
                        h2 { (t.display_name) }
                        p.error role="status" { "Deleted. " (erasure_when(at.as_deref())) }
                        a.button href={"/t/" (t.name) "/data"} { "Your data" }
                    }
                } @else {
                li.card {
                    h2 { a href={"/t/" (t.name)} { (t.display_name) } }
                    dl.facts {
                        dt { "Tier" } dd { (t.tier) }
                        dt { "Region" } dd { (t.region) }
                        dt { "Phase" } dd { (t.phase) }
                        dt { "Credit" } dd { a href={"/t/" (t.name) "/billing"} { (t.credit) } }
                        dt { "Instances" } dd { (t.instances) }
                        dt { "GPUs in use" } dd { (t.gpus) }
                    }
                    a.button href={"/t/" (t.name)} { "Instances of " (t.display_name) }
                }
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

/// The tenant's sensitive data categories still waiting for consent, in words.
pub fn consent_banner(missing: &[&str]) -> Markup {
    html! {
        @if !missing.is_empty() {
            p.error.banner #consent role="status" {
                "Your account declares " (missing.join(", ")) " data. Such data needs your explicit written consent first: until your platform team records it, no instance runs and no knowledge base is indexed."
            }
        }
    }
}

pub fn instances(
    tenant: &str,
    display_name: &str,
    rows: &[InstanceRow],
    note: Option<&str>,
    consent_missing: &[&str],
) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " (display_name) }
        h1 { "Instances" }
        (notice(note))
        (consent_banner(consent_missing))
        p.actions { a.button href={"/t/" (tenant) "/new"} { "New instance" } a.button href={"/t/" (tenant) "/kb"} { "Knowledge bases" } a.button href={"/t/" (tenant) "/billing"} { "Credit and billing" } a.button href={"/t/" (tenant) "/usage"} { "Usage" } a.button href={"/t/" (tenant) "/data"} { "Your data" } }
        div.scroll {
            table {
                caption.visually-hidden { "Instances of " (display_name) }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Model" } th scope="col" { "GPUs" } th scope="col" { "State" } th scope="col" { "Phase" } } }
                (instance_rows(tenant, rows))
            }
        }
    }
}

// ----- knowledge bases -----

pub struct KbRow {
    pub name: String,
    pub phase: String,
    pub documents: i32,
    pub chunks: i32,
    pub indexed_at: String,
}

pub fn knowledge_bases(
    tenant: &str,
    rows: &[KbRow],
    csrf: &str,
    name: &str,
    errors: &FormErrors,
    consent_missing: &[&str],
) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (tenant)} { (tenant) } " / knowledge bases" }
        h1 { "Knowledge bases" }
        (consent_banner(consent_missing))
        p { "Documents your instances answer from. They stay in your tenant's volume." }
        div.scroll {
            table {
                caption.visually-hidden { "Knowledge bases" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Phase" } th scope="col" { "Documents" } th scope="col" { "Chunks" } th scope="col" { "Indexed" } } }
                tbody {
                    @for r in rows {
                        tr {
                            th scope="row" { a href={"/t/" (tenant) "/kb/" (r.name)} { (r.name) } }
                            td { span.phase data-phase=(r.phase) { (r.phase) } }
                            td { (r.documents) } td { (r.chunks) } td { (r.indexed_at) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="5" { "None yet." } } }
                }
            }
        }
        h2 { "New knowledge base" }
        @if let Some(e) = &errors.form { p.error.banner role="alert" { (e) } }
        form method="post" action={"/t/" (tenant) "/kb"} enctype="multipart/form-data" novalidate {
            (csrf_input(csrf))
            (field("name", "Name", name, errors.get("name"), FieldAttrs {
                required: true, hint: Some("Lower-case letters, digits and dashes, e.g. handbook."), ..FieldAttrs::text()
            }))
            (file_field("First document", errors.get("file")))
            button type="submit" { "Create and index" }
        }
    }
}

fn file_field(label: &str, error: Option<&str>) -> Markup {
    html! {
        div.field.invalid[error.is_some()] {
            label for="file" { (label) }
            p.hint id="file-hint" { "Text, Markdown or HTML, up to 256 KiB." }
            input #file type="file" name="file" accept=".txt,.md,.markdown,.html,.htm,text/plain,text/markdown,text/html"
                aria-invalid=[error.map(|_| "true")] aria-describedby={"file-hint" @if error.is_some() { " file-error" }};
            @if let Some(e) = error { p.error id="file-error" role="alert" { (e) } }
        }
    }
}

pub struct KbDetail {
    pub tenant: String,
    pub name: String,
    pub phase: String,
    pub message: String,
    pub documents: i32,
    pub chunks: i32,
    pub indexed_at: String,
    /// Documents uploaded here (keys of the uploads ConfigMap).
    pub uploads: Vec<String>,
    /// Other sources of its spec (GitOps), by name.
    pub other_sources: Vec<String>,
}

/// The live status of a knowledge base (polled).
pub fn kb_status(d: &KbDetail) -> Markup {
    html! {
        div #kb-status hx-get={"/t/" (d.tenant) "/kb/" (d.name) "/status"} hx-trigger="every 3s" hx-swap="outerHTML" aria-live="polite" {
            dl.facts {
                dt { "Phase" } dd { span.phase data-phase=(d.phase) { (d.phase) } }
                @if !d.message.is_empty() { dt { "Why" } dd { (d.message) } }
                dt { "Documents" } dd #kb-documents { (d.documents) }
                dt { "Chunks" } dd { (d.chunks) }
                dt { "Indexed" } dd { (d.indexed_at) }
            }
        }
    }
}

pub fn knowledge_base(d: &KbDetail, csrf: &str, error: Option<&str>, note: Option<&str>) -> Markup {
    let base = format!("/t/{}/kb/{}", d.tenant, d.name);
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (d.tenant) "/kb"} { "knowledge bases" } " / " (d.name) }
        h1 { (d.name) }
        (notice(note))
        (kb_status(d))
        h2 { "Documents" }
        ul.documents {
            @for doc in &d.uploads {
                li {
                    (doc) " "
                    // htmx asks first (a plain form, without scripts, removes at once).
                    form.inline method="post" action={(base) "/remove"} hx-post={(base) "/remove"}
                        hx-confirm={"Remove " (doc) "? The knowledge base is indexed again without it."} {
                        (csrf_input(csrf))
                        input type="hidden" name="document" value=(doc);
                        button.link type="submit" aria-label={"Remove " (doc)} { "Remove" }
                    }
                }
            }
            @for s in &d.other_sources { li { (s) " " small { "(from the tenant's configuration)" } } }
            @if d.uploads.is_empty() && d.other_sources.is_empty() { li { "None." } }
        }
        h2 { "Upload a document" }
        form method="post" action={(base) "/upload"} enctype="multipart/form-data" novalidate {
            (csrf_input(csrf))
            (file_field("Document", error))
            button type="submit" { "Upload and index" }
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
    /// The onboarding answers the system prompt can be written from.
    #[serde(default)]
    pub business: String,
    #[serde(default)]
    pub intended_use: String,
    #[serde(default)]
    pub style: String,
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
            (prompt_writer(tenant, v, errors))
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

/// The communication styles the onboarding offers: value and words.
pub const STYLES: &[(&str, &str)] = &[
    ("friendly", "Friendly and warm"),
    ("formal", "Formal and polite"),
    ("concise", "Short and to the point"),
    ("detailed", "Thorough, with explanations"),
];

/// The system prompt field, after three onboarding questions that can write it from a template
/// (`POST /t/{tenant}/new/prompt` swaps this block; the prompt stays editable).
pub fn prompt_writer(tenant: &str, v: &NewInstance, errors: &FormErrors) -> Markup {
    let style_error = errors.get("style");
    html! {
        div #prompt-writer {
            fieldset #onboarding {
                legend { "Not sure what to write? Answer three questions" }
                p.hint { "The system prompt below is then written from a fixed template, on our server: no other AI reads your answers. Edit it as you like." }
                (field("business", "Business name", &v.business, errors.get("business"), FieldAttrs::text()))
                (field("intended_use", "What is it for?", &v.intended_use, errors.get("intended_use"), FieldAttrs {
                    multiline: true, hint: Some("For example: answering customers' questions about orders and returns."), ..FieldAttrs::text()
                }))
                div.field.invalid[style_error.is_some()] {
                    label for="style" { "Communication style" }
                    select #style name="style" aria-invalid=[style_error.map(|_| "true")] aria-describedby=[style_error.map(|_| "style-error")] {
                        @for (value, words) in STYLES {
                            option value=(value) selected[v.style == *value] { (words) }
                        }
                    }
                    @if let Some(e) = style_error { p.error #style-error role="alert" { (e) } }
                }
                button type="button" hx-post={"/t/" (tenant) "/new/prompt"} hx-include="closest form" hx-target="#prompt-writer" hx-swap="outerHTML" {
                    "Write the system prompt"
                }
            }
            (field("system_prompt", "System prompt", &v.system_prompt, errors.get("system_prompt"), FieldAttrs {
                multiline: true, hint: Some("Put before every chat. Kept in your namespace, never logged."), ..FieldAttrs::text()
            }))
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
    /// The knowledge base attached (empty: none), and those of the tenant.
    pub knowledge_base: String,
    pub knowledge_bases: Vec<String>,
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
            (key_block(&base, d.has_key, csrf))
            p { a.button href={(base) "/chat"} { "Open the chat playground" } }
            form method="post" action={(base) "/kb"} {
                (csrf_input(csrf))
                div.field {
                    label for="knowledge_base" { "Knowledge base it answers from" }
                    select #knowledge_base name="knowledge_base" {
                        option value="" selected[d.knowledge_base.is_empty()] { "None" }
                        @for k in &d.knowledge_bases { option value=(k) selected[*k == d.knowledge_base] { (k) } }
                    }
                }
                button type="submit" { "Attach" }
            }
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

/// Where the key is shown: a button once the key exists; until then a note that asks again
/// every few seconds.
pub fn key_block(base: &str, has_key: bool, csrf: &str) -> Markup {
    html! {
        @if has_key {
            div #key {
                form method="post" action={(base) "/key"} hx-post={(base) "/key"} hx-target="#key" {
                    (csrf_input(csrf))
                    button type="submit" { "Show API key" }
                }
            }
        } @else {
            div #key hx-get={(base) "/keyblock"} hx-trigger="every 3s" hx-swap="outerHTML" aria-live="polite" {
                p { "The API key is being made." }
            }
        }
    }
}

/// The live status block of an instance page.
pub fn instance_status(d: &InstanceDetail) -> Markup {
    html! {
        dl.facts #status-facts {
            dt { "Phase" } dd { span.phase data-phase=(d.phase) { (d.phase) } }
            @if !d.message.is_empty() && d.phase != "Ready" { dt { "Why" } dd { (d.message) } }
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

/// An action that cannot be undone: what it does, then a fresh code mailed to the user, then the
/// action itself with that code.
pub struct Confirm<'a> {
    /// The page to go back to ("Keep it").
    pub back: &'a str,
    /// Where the code-checked form posts; the code is asked for at `{action}/code`.
    pub action: &'a str,
    pub title: &'a str,
    pub explanation: &'a str,
    pub button: &'a str,
    /// What it does, step by step (shown before the code is asked for).
    pub facts: &'a [(String, String)],
}

pub fn confirm_with_code(
    c: &Confirm,
    csrf: &str,
    email: &str,
    code_sent: bool,
    error: Option<&str>,
) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href=(c.back) { "back" } }
        h1 { (c.title) }
        p { (c.explanation) " This cannot be undone." }
        @if !c.facts.is_empty() {
            dl.facts #what-happens { @for (k, v) in c.facts { dt { (k) } dd { (v) } } }
        }
        @if code_sent {
            p { "We emailed a confirmation code to " strong { (email) } "." }
            form method="post" action=(c.action) novalidate {
                (csrf_input(csrf))
                (field("code", "Confirmation code", "", error, FieldAttrs {
                    required: true, autocomplete: Some("one-time-code"), inputmode: Some("numeric"), ..FieldAttrs::text()
                }))
                button.danger type="submit" { (c.button) }
            }
        } @else {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action={(c.action) "/code"} {
                (csrf_input(csrf))
                button type="submit" { "Email me a confirmation code" }
            }
        }
        p { a href=(c.back) { "Keep it" } }
    }
}

/// What destroying an instance does, in words.
pub const DESTROY_EXPLAINED: &str = "The pod stops at once and GPU billing stops with it. The API key stops working. Its conversation history is kept only as long as your tenant's retention policy says, then erased.";

/// What deleting the account does, in words (the facts follow).
pub const DELETE_ACCOUNT_EXPLAINED: &str =
    "Your account and all its data are deleted: what happens when is below.";

/// After the account was deleted.
pub fn account_deleted(tenant: &str, email: &str, erase_by: &str) -> Markup {
    html! {
        h1 { "Your account is deleted" }
        p role="status" { "Its instances are stopping now and billing has stopped. Everything else is erased by " strong { (erase_by) } " (later if a legal hold is on). We emailed " strong { (email) } " what happens when, and will email the erasure receipts when it is done." }
        p { a href={"/t/" (tenant) "/data"} { "Follow it on Your data" } }
    }
}

/// An instant as the pages and mails write it: `2027-01-01 18:44 UTC`.
pub fn utc_minute(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// When a deleted account's remaining data goes, in words.
pub fn erasure_when(at: Option<&str>) -> String {
    match at {
        Some(at) => format!("Everything left is erased at {at}."),
        None => "Everything left is erased at the end of its account-data window.".into(),
    }
}

/// A page of an account that is deleted (410): where to follow the erasure until it is done.
pub fn account_gone(tenant: &str, erase_after: Option<&str>) -> Markup {
    html! {
        h1 { "This account is deleted" }
        p { (erasure_when(erase_after)) " Its instances are stopped and billing has stopped. Until the erasure, Your data shows what is left and lets you download it." }
        p { a href={"/t/" (tenant) "/data"} { "Your data" } }
    }
}

/// What deleting a conversation does, in words.
pub const DELETE_CONVERSATION_EXPLAINED: &str = "The conversation is removed from the instance's encrypted store: its questions and answers are gone.";

// ----- chat -----

pub struct ConversationRow {
    pub id: String,
    pub title: String,
    /// RFC 3339.
    pub when: String,
    pub turns: u64,
}

/// The instance's conversations (refreshed after each answer).
pub fn conversation_list(base: &str, rows: &[ConversationRow], current: &str) -> Markup {
    html! {
        nav #conversations aria-label="Conversations" hx-get={(base) "/conversations"} hx-trigger="refresh" hx-swap="outerHTML" {
            h2 { "Conversations" }
            p { a href={(base) "/chat"} { "Start a new conversation" } }
            ul {
                @for r in rows {
                    li {
                        a href={(base) "/chat?c=" (r.id)} aria-current=[(r.id == current).then_some("page")] {
                            @if r.title.is_empty() { (r.id) } @else { (r.title) }
                        }
                        " " small { time datetime=(r.when) { (r.when) } " · " (r.turns) " messages" }
                        " " a.delete href={(base) "/c/" (r.id) "/delete"} aria-label={"Delete conversation " (r.title)} { "Delete…" }
                    }
                }
                @if rows.is_empty() { li { "None yet." } }
            }
        }
    }
}

pub struct ChatView<'a> {
    pub tenant: &'a str,
    pub name: &'a str,
    pub conversation: &'a str,
    pub conversations: &'a [ConversationRow],
    /// (role, text) of the current conversation so far.
    pub messages: &'a [(String, String)],
    /// Why the instance cannot chat now, in words.
    pub unavailable: Option<&'a str>,
}

pub fn chat(v: &ChatView, csrf: &str, error: Option<&str>, note: Option<&str>) -> Markup {
    let base = format!("/t/{}/i/{}", v.tenant, v.name);
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (v.tenant)} { (v.tenant) } " / " a href=(base) { (v.name) } " / chat" }
        h1 { "Chat with " (v.name) }
        (notice(note))
        @if let Some(u) = v.unavailable { p #unavailable .error.banner role="alert" { (u) } }
        div #log .chat-log aria-live="polite" aria-label="Conversation" {
            @for (role, text) in v.messages {
                p class=(role) { strong { (if role == "user" { "You" } else { "Assistant" }) ": " } span { (text) } }
            }
        }
        form #chat method="post" action={(base) "/chat"} data-stream="" data-list={(base) "/conversations"} novalidate {
            (csrf_input(csrf))
            input type="hidden" name="conversation" value=(v.conversation);
            (field("message", "Message", "", error, FieldAttrs { multiline: true, required: true, ..FieldAttrs::text() }))
            button type="submit" { "Send" }
        }
        (conversation_list(&base, v.conversations, v.conversation))
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

// ----- billing -----

/// Where the tenant's credit stands, as its status says.
pub struct Balance {
    /// The balance in the reader's format, or why there is none.
    pub balance: String,
    pub state: Credit,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Credit {
    /// No billing account: nothing is charged.
    NotCharged,
    Healthy,
    /// Under the tenant's low-balance threshold (formatted).
    Low {
        threshold: String,
    },
    /// Exhausted: instances stop at this time (UTC) unless credit arrives.
    Exhausted {
        suspend_at: Option<String>,
    },
}

/// The balance and its banner. After a payment the top-up script fetches it again from
/// `data-refresh` until the credit shows (its own fetch, not htmx: Stripe.js stand-ins may
/// replace globals htmx relies on).
pub fn balance_block(tenant: &str, b: &Balance) -> Markup {
    html! {
        section #balance data-refresh={"/t/" (tenant) "/billing/balance"} aria-live="polite" {
            p.balance { "Balance: " strong #balance-amount { (b.balance) } }
            @match &b.state {
                Credit::Low { threshold } => p.error.banner role="status" {
                    "Your credit is low (under " (threshold) "). Top up to keep your instances running."
                },
                Credit::Exhausted { suspend_at } => p.error.banner role="alert" {
                    "Your credit is used up. "
                    @if let Some(at) = suspend_at { "Running instances are suspended at " (at) " unless you top up." }
                    @else { "Running instances are suspended until you top up." }
                },
                Credit::NotCharged => p { "This tenant has no billing account: nothing is charged." },
                Credit::Healthy => {},
            }
        }
    }
}

/// The top-up form's facts.
pub struct TopUpForm<'a> {
    pub publishable_key: &'a str,
    pub js_url: &'a str,
    pub currency: String,
    /// A fresh one-time number per page: the same submission is one payment.
    pub nonce: String,
    pub range: (String, String),
}

pub struct HistoryRow {
    pub date: String,
    pub what: String,
    /// Signed: `+25.00 USD` for credit, `-0.12 USD` for a charge.
    pub amount: String,
    pub receipt: Option<String>,
}

pub struct BillingView<'a> {
    pub tenant: &'a str,
    pub display_name: &'a str,
    pub balance: Balance,
    /// Why no top-up is offered, or the form.
    pub top_up: Result<TopUpForm<'a>, &'a str>,
    /// The history, or why it could not be read.
    pub history: Result<Vec<HistoryRow>, String>,
}

pub fn billing(v: &BillingView, csrf: &str) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (v.tenant)} { (v.display_name) } " / Billing" }
        h1 { "Credit and billing" }
        (balance_block(v.tenant, &v.balance))
        section aria-labelledby="top-up-title" {
            h2 #top-up-title { "Top up" }
            @match &v.top_up {
                Err(why) => p { (why) },
                Ok(f) => {
                    p.hint { "Your card goes straight to Stripe, our payment processor: Alcove never sees your full card number. The credit is added when Stripe confirms the payment, usually within seconds." }
                    // Stripe.js before our script, which mounts its card field.
                    script src=(f.js_url) {}
                    form #top-up method="post" action={"/t/" (v.tenant) "/billing/pay"} data-stripe-key=(f.publishable_key) novalidate {
                        (csrf_input(csrf))
                        input type="hidden" name="nonce" value=(f.nonce);
                        (field("amount", &format!("Amount ({})", f.currency), "", None, FieldAttrs {
                            inputmode: Some("decimal"),
                            autocomplete: Some("off"),
                            required: true,
                            hint: Some(&format!("Between {} and {}.", f.range.0, f.range.1)),
                            ..FieldAttrs::text()
                        }))
                        div.field {
                            label #card-label { "Card" }
                            div #card-element role="group" aria-labelledby="card-label" {}
                            noscript { p.error { "Paying by card needs JavaScript: Stripe's card field runs in the page." } }
                        }
                        p #pay-status role="status" aria-live="polite" {}
                        button type="submit" { "Pay and add credit" }
                    }
                }
            }
        }
        section aria-labelledby="history-title" {
            h2 #history-title { "History" }
            @match &v.history {
                Err(why) => p { (why) },
                Ok(rows) if rows.is_empty() => p { "No top-ups or charges yet." },
                Ok(rows) => div.scroll {
                    table #history {
                        caption.visually-hidden { "Top-ups and charges, newest first" }
                        thead { tr { th scope="col" { "Date (UTC)" } th scope="col" { "What" } th scope="col" { "Amount" } th scope="col" { "Receipt" } } }
                        tbody {
                            @for r in rows {
                                tr {
                                    td { (r.date) }
                                    td { (r.what) }
                                    td.amount { (r.amount) }
                                    td { @if let Some(href) = &r.receipt { a href=(href) download { "Receipt" } } }
                                }
                            }
                        }
                    }
                },
            }
            p.hint { "Charges are summed per day, instance and kind from the usage records Alcove sends to Stripe; the latest 100 top-ups and 100 records are shown." }
        }
    }
}

/// A top-up's receipt: a document of its own, to keep or print.
pub struct ReceiptView<'a> {
    pub tenant: &'a str,
    pub display_name: &'a str,
    pub intent: &'a str,
    pub paid_at: String,
    pub amount: String,
}

pub fn receipt(r: &ReceiptView) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Receipt " (r.intent) } }
            body {
                h1 { "Receipt" }
                dl {
                    dt { "Paid to" } dd { "Alcove (prepaid credit)" }
                    dt { "Tenant" } dd { (r.display_name) " (" (r.tenant) ")" }
                    dt { "Date (UTC)" } dd { (r.paid_at) }
                    dt { "Amount" } dd #receipt-amount { (r.amount) }
                    dt { "Payment" } dd { (r.intent) }
                    dt { "Method" } dd { "Card, through Stripe" }
                }
                p { "This amount was added to the tenant's prepaid credit." }
            }
        }
    }
}

// ----- usage -----

/// One day's bar: its parts, stacked bottom up (tokens: prompt, completion; GPU: seconds).
pub struct DayBar {
    pub day: String,
    pub parts: Vec<i64>,
}

/// A day chart's parts: CSS class and what a value counts, in words.
pub type Parts<'a> = &'a [(&'a str, fn(i64) -> String)];

/// Values per day as stacked bars, drawn on the server: no chart library, nothing loaded.
/// `title` says what it shows; each bar's parts say their values on hover and to readers.
pub fn day_chart(id: &str, title: &str, parts: Parts, days: &[DayBar]) -> Markup {
    const W: i64 = 600;
    const H: i64 = 160;
    let total = |d: &DayBar| d.parts.iter().sum::<i64>();
    let max = days.iter().map(total).max().unwrap_or(0).max(1);
    let slot = W / days.len().max(1) as i64;
    let bar = (slot - 2).max(1);
    let mut rects = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let mut top = H;
        for ((class, words), v) in parts.iter().zip(&d.parts) {
            let h = v * (H - 20) / max;
            top -= h;
            if *v > 0 {
                rects.push((i as i64 * slot, top, h, *class, format!("{}: {}", d.day, words(*v))));
            }
        }
    }
    html! {
        svg id=(id) viewBox={"0 0 " (W) " " (H)} role="img" aria-labelledby={(id) "-title"} preserveAspectRatio="none" {
            title id={(id) "-title"} { (title) }
            @for (x, y, h, class, label) in &rects {
                rect class=(class) x=(x) y=(y) width=(bar) height=(h) { title { (label) } }
            }
        }
    }
}

fn prompt_words(n: i64) -> String {
    format!("{n} prompt tokens")
}

fn completion_words(n: i64) -> String {
    format!("{n} completion tokens")
}

/// GPU seconds in words: `2 h 5 min`, `3 min 20 s`, `40 s`.
pub fn gpu_words(seconds: i64) -> String {
    let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

pub struct UsageRow {
    pub day: String,
    pub instance: String,
    pub requests: i64,
    pub prompt: i64,
    pub completion: i64,
}

pub struct LogRow {
    pub at: String,
    pub instance: String,
    pub model: String,
    pub endpoint: String,
    pub status: i64,
    pub prompt: i64,
    pub completion: i64,
    pub latency_ms: i64,
}

pub struct UsageView<'a> {
    pub tenant: &'a str,
    pub display_name: &'a str,
    /// Why there is no usage to show (the store is not connected), or the facts.
    pub unavailable: Option<&'a str>,
    pub bars: Vec<DayBar>,
    /// GPU seconds per day, from the billing records (when billing is connected), and their
    /// total in words.
    pub gpu: Option<(Vec<DayBar>, String)>,
    pub days: Vec<UsageRow>,
    pub instances: Vec<String>,
    /// The request log's filter: one instance, or all.
    pub instance: &'a str,
    pub log: Vec<LogRow>,
    /// The link to the next (older) page, if there is one.
    pub older: Option<String>,
}

pub fn usage(v: &UsageView) -> Markup {
    let base = format!("/t/{}/usage", v.tenant);
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (v.tenant)} { (v.display_name) } " / Usage" }
        h1 { "Usage" }
        @if !v.instance.is_empty() { p role="status" { "Showing " strong { (v.instance) } " only. " a href=(base) { "Show all instances" } } }
        @if let Some((bars, total)) = &v.gpu {
            section aria-labelledby="gpu-title" {
                h2 #gpu-title { "GPU time per day (UTC), last 30 days" }
                (day_chart("gpu-chart", &format!("GPU time per day: {total} in 30 days"), &[("gpu", gpu_words)], bars))
                p.hint { (total) " in these 30 days, as billed; each day and instance is on the billing page." }
            }
        }
        @if let Some(why) = v.unavailable { p { (why) } } @else {
            section aria-labelledby="tokens-title" {
                h2 #tokens-title { "Tokens per day (UTC), last 30 days" }
                (day_chart("token-chart", "Tokens per day, last 30 days", &[("prompt", prompt_words), ("completion", completion_words)], &v.bars))
                p.hint { span.key-prompt { "■" } " prompt  " span.key-completion { "■" } " completion." }
                div.scroll { table #usage-days {
                    caption.visually-hidden { "Requests and tokens per day and instance" }
                    thead { tr { th scope="col" { "Day" } th scope="col" { "Instance" } th scope="col" { "Requests" } th scope="col" { "Prompt tokens" } th scope="col" { "Completion tokens" } } }
                    tbody {
                        @for r in &v.days { tr { td { (r.day) } td { (r.instance) } td { (r.requests) } td { (r.prompt) } td { (r.completion) } } }
                        @if v.days.is_empty() { tr { td colspan="5" { "No requests in these 30 days." } } }
                    }
                } }
            }
            section aria-labelledby="log-title" {
                h2 #log-title { "Request log (last 90 days)" }
                p { "One line per request through the gateway: when, which instance, status, tokens and time taken. Prompts and answers are not stored, so they are not here." }
                form.actions method="get" action=(base) {
                    div.field {
                        label for="instance" { "Instance" }
                        select #instance name="instance" {
                            option value="" selected[v.instance.is_empty()] { "All instances" }
                            @for i in &v.instances { option value=(i) selected[v.instance == i] { (i) } }
                        }
                    }
                    button type="submit" { "Show" }
                    a.button href={(base) ".csv" @if !v.instance.is_empty() { "?instance=" (v.instance) }} download { "Download CSV" }
                }
                div.scroll { table #log {
                    caption.visually-hidden { "Requests, newest first" }
                    thead { tr { th scope="col" { "Time (UTC)" } th scope="col" { "Instance" } th scope="col" { "Model" } th scope="col" { "Endpoint" } th scope="col" { "Status" } th scope="col" { "Prompt" } th scope="col" { "Completion" } th scope="col" { "ms" } } }
                    tbody {
                        @for r in &v.log { tr { td { (r.at) } td { (r.instance) } td { (r.model) } td { (r.endpoint) } td { (r.status) } td { (r.prompt) } td { (r.completion) } td { (r.latency_ms) } } }
                        @if v.log.is_empty() { tr { td colspan="8" { "No requests." } } }
                    }
                } }
                @if let Some(href) = &v.older { p { a href=(href) { "Older requests" } } }
            }
        }
    }
}

// ----- your data -----

/// What the data page shows: the tenant's account, where its data lives, the key that encrypts
/// it, how long each kind is kept, and what was erased.
pub struct DataView<'a> {
    pub tenant: &'a str,
    pub display_name: &'a str,
    /// Account facts: label and value.
    pub account: Vec<(&'static str, String)>,
    /// The encryption key, in words, or why there is none yet.
    pub key: String,
    pub volumes: &'a [alcove_crds::report::Volume],
    /// Data class, its window, and where the window comes from.
    pub windows: Vec<(&'static str, String, &'static str)>,
    pub erasures: &'a [alcove_crds::tenant::ErasureRecord],
    /// Set once the tenant is deleted: when everything left is erased.
    pub erase_after: Option<String>,
}

/// What the details form was given (kept when refused).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AccountForm {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub contact_email: String,
    #[serde(default)]
    pub code: String,
}

/// "Correct your details": the display name and where notices go. `code_sent_to` once a new
/// contact address was sent its code.
pub fn account_details(
    tenant: &str,
    csrf: &str,
    v: &AccountForm,
    errors: &FormErrors,
    code_sent_to: Option<&str>,
    saved: bool,
) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (tenant) "/data"} { "Your data" } " / details" }
        h1 { "Correct your details" }
        @if saved { p.notice role="status" { "Saved." } }
        @if let Some(e) = &errors.form { p.error.banner role="alert" { (e) } }
        form method="post" action={"/t/" (tenant) "/account"} novalidate {
            (csrf_input(csrf))
            (field("display_name", "Account name", &v.display_name, errors.get("display_name"), FieldAttrs {
                required: true, hint: Some("Shown on your pages, your receipts and our mail."), ..FieldAttrs::text()
            }))
            (field("contact_email", "Contact email", &v.contact_email, errors.get("contact_email"), FieldAttrs {
                kind: "email", autocomplete: Some("email"),
                hint: Some("Where we send notices about credit, deletion and erasure. Leave it empty to send them to every owner. A new address gets a code to prove it is yours."),
                ..FieldAttrs::text()
            }))
            @if let Some(to) = code_sent_to {
                p role="status" { "We emailed a confirmation code to " strong { (to) } "." }
                (field("code", "Confirmation code", "", errors.get("code"), FieldAttrs {
                    required: true, autocomplete: Some("one-time-code"), inputmode: Some("numeric"), ..FieldAttrs::text()
                }))
            }
            button type="submit" { "Save" }
        }
        p { "Owners, tier and region are your platform team's to change: ask them." }
    }
}

pub fn data(v: &DataView) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Tenants" } " / " a href={"/t/" (v.tenant)} { (v.display_name) } " / Your data" }
        h1 { "The data we hold about you" }
        p { "Everything below is read from the cluster now. Prompts, answers and documents are yours; this page lists where they are and how long they are kept, never their content." }
        @if let Some(at) = &v.erase_after { p.error.banner role="status" { "This account is deleted. Everything left is erased at " (at) "." } }
        section aria-labelledby="account-title" {
            h2 #account-title { "Account" }
            dl.facts #account { @for (k, val) in &v.account { dt { (k) } dd { (val) } } }
            @if v.erase_after.is_none() { p { a #rectify href={"/t/" (v.tenant) "/account"} { "Correct your details…" } } }
        }
        section aria-labelledby="export-title" {
            h2 #export-title { "Export your data" }
            p { "One archive of everything above and its content: your account and instance settings, your knowledge bases' documents as you gave them, your conversations (decrypted for you), the request log and the billing history. It is a standard .tar file; its manifest.json lists every file with its checksum." }
            p { a.button #export href={"/t/" (v.tenant) "/export.tar"} download { "Download your data" } }
        }
        section aria-labelledby="delete-title" {
            h2 #delete-title { "Delete your account" }
            @if v.erase_after.is_some() { p { "Deleted: see the date above." } } @else {
                p { "Deletes this account and all its data: instances stop at once, everything else is erased after your account-data window. The next page says what is erased when, and what is kept and why, before anything happens." }
                p { a.button.danger #delete-account href={"/t/" (v.tenant) "/delete"} { "Delete your account…" } }
            }
        }
        section aria-labelledby="key-title" {
            h2 #key-title { "Encryption key" }
            p #key { (v.key) }
        }
        section aria-labelledby="volumes-title" {
            h2 #volumes-title { "Volumes" }
            @if v.volumes.is_empty() { p { "No volumes." } } @else {
                div.scroll { table #volumes {
                    caption.visually-hidden { "Volumes, their data class, size, place and retention" }
                    thead { tr { th scope="col" { "Volume" } th scope="col" { "Data class" } th scope="col" { "Size" } th scope="col" { "Where" } th scope="col" { "Kept" } } }
                    tbody { @for vol in v.volumes { tr {
                        th scope="row" { (vol.name) }
                        td { (vol.data_class) }
                        td { (vol.size) }
                        td { (vol.bound_to) @if !vol.nodes.is_empty() { br; small { "mounted on " (vol.nodes.join(", ")) } } }
                        td { (vol.timer.words()) }
                    } } }
                } }
            }
        }
        section aria-labelledby="windows-title" {
            h2 #windows-title { "How long each kind of data is kept" }
            div.scroll { table #windows {
                caption.visually-hidden { "Retention windows per data class" }
                thead { tr { th scope="col" { "Data" } th scope="col" { "Kept for" } th scope="col" { "Set by" } } }
                tbody { @for (class, window, source) in &v.windows { tr { th scope="row" { (class) } td { (window) } td { (source) } } } }
            } }
            p.hint { "Windows count from the moment the data is released: an instance destroyed, a knowledge base deleted, a job finished, the account deleted." }
        }
        section aria-labelledby="erasures-title" {
            h2 #erasures-title { "Erasure receipts" }
            @if v.erasures.is_empty() { p { "Nothing has been erased yet." } } @else {
                div.scroll { table #erasures {
                    caption.visually-hidden { "What was erased, when, and by which rule" }
                    thead { tr { th scope="col" { "What" } th scope="col" { "Erased at" } th scope="col" { "Deadline" } th scope="col" { "Rule" } } }
                    tbody { @for r in v.erasures { tr { td { (r.what) } td { (r.erased_at) } td { (r.deadline) } td { (r.rule) } } } }
                } }
            }
        }
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
    fn day_charts_stack_their_parts_to_scale_and_skip_empty_ones() {
        let days = [
            DayBar { day: "2026-12-01".into(), parts: vec![70, 0] },
            DayBar { day: "2026-12-02".into(), parts: vec![35, 105] },
        ];
        let words: fn(i64) -> String = |n| format!("{n} tokens");
        let svg = day_chart("c", "Tokens", &[("a", words), ("b", words)], &days).into_string();
        // The largest day (140) fills 140 of the 160 units; 70 is half of it, from the bottom.
        assert!(svg.contains(r#"<rect class="a" x="0" y="90" width="298" height="70"><title>2026-12-01: 70 tokens</title></rect>"#), "{svg}");
        assert!(
            svg.contains(r#"<rect class="a" x="300" y="125" width="298" height="35">"#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"<rect class="b" x="300" y="20" width="298" height="105">"#),
            "{svg}"
        );
        assert_eq!(svg.matches("<rect").count(), 3, "no bar for a zero: {svg}");
        assert!(
            svg.contains(r#"aria-labelledby="c-title""#)
                && svg.contains("<title id=\"c-title\">Tokens</title>")
        );
        assert_eq!(gpu_words(7_500), "2 h 5 min");
        assert_eq!(gpu_words(120), "2 min 0 s");
        assert_eq!(gpu_words(40), "40 s");
    }

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
    fn missing_consent_is_said_on_the_tenant_pages() {
        let html =
            instances("acme", "Acme", &[], None, &["medical", "criminal-record"]).into_string();
        assert!(html.contains("declares medical, criminal-record data"), "{html}");
        assert!(!instances("acme", "Acme", &[], None, &[]).into_string().contains("consent"));
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
