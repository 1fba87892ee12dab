//! A request body on the OpenAI routes: parsed and checked as the handlers do, into a request or
//! a 400 in OpenAI's shape.
#![no_main]

use alcove_inference::api::ApiError;
use alcove_inference::api::types::{self, ChatRequest, CompletionRequest, EmbeddingRequest};
use libfuzzer_sys::fuzz_target;

fn check(body: &[u8]) -> Result<(), ApiError> {
    let chat: ChatRequest = types::parse(body)?;
    types::check_messages(chat.messages)?;
    types::check_sampling(types::parse(body)?)?;
    let _: CompletionRequest = types::parse(body)?;
    let _: EmbeddingRequest = types::parse(body)?;
    Ok(())
}

fuzz_target!(|body: &[u8]| {
    if let Err(e) = check(body) {
        assert_eq!(e.status.as_u16(), 400, "{e:?}");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }
});
