//! InferenceInstance → Pod, Service, API-key Secret, history PVC, system-prompt ConfigMap.
//! Pure functions, no I/O.

/// The Secret holding an instance's API key (key `api-key`).
pub fn api_key_secret_name(instance: &str) -> String {
    format!("{instance}-api-key")
}
