//! Prompt text through the chat template and the tokenizer of a GGUF test model (the byte-level
//! BPE rebuilt from GGUF metadata): rendered, encoded (control tokens spelled in the text kept as
//! text), and decoded back to itself.
#![no_main]

use std::sync::OnceLock;

use alcove_inference::model::{ChatModel, Message};
use alcove_inference::testmodel::{self, Format, Options, Quant, Size};
use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fn model() -> &'static ChatModel {
    static MODEL: OnceLock<ChatModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("alcove-fuzz-model-{}", std::process::id()));
        let opts = Options {
            out: out.clone(),
            format: Format::Gguf,
            size: Size::Tiny,
            embedding: false,
            quant: Quant::Q8_0,
            seed: 1,
        };
        testmodel::make(&opts).unwrap();
        ChatModel::load_gguf(&out.join("model.gguf"), "fuzz".into(), &Device::Cpu).unwrap()
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let vocab = &model().vocab;
    let ids = vocab.encode_rendered(text).unwrap();
    assert_eq!(vocab.tokenizer.decode(&ids, false).unwrap(), text);
    let messages = [Message { role: "user".into(), content: text.into() }];
    if let Ok(rendered) = vocab.template.render(&messages) {
        let ids = vocab.encode_chat(&rendered, &messages).unwrap();
        assert_eq!(vocab.tokenizer.decode(&ids, false).unwrap(), rendered);
    }
});
