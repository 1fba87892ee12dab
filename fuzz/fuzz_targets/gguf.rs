//! A GGUF file from anywhere (a tenant's model URI): it loads and answers a prompt, or fails with
//! an error. A panic, an abort or an allocation past libFuzzer's limit is a finding.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use alcove_inference::model::{ChatModel, PrefixCache};
use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("alcove-fuzz-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("model.gguf")
    })
}

fuzz_target!(|bytes: &[u8]| {
    let path = scratch();
    std::fs::write(path, bytes).unwrap();
    if let Ok(mut model) = ChatModel::load_gguf(path, "fuzz".into(), &Device::Cpu) {
        let mut cache = PrefixCache::new(0);
        if let Ok((mut seq, _)) = model.begin(&[1, 2, 3], &mut cache) {
            let _ = model.step(&mut [(&mut seq, &[1, 2, 3][..], true)]);
        }
    }
});
