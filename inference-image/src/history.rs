//! Conversation history, kept on the instance's volume so follow-up questions work, encrypted at
//! rest and deletable at any time.
//!
//! One file per conversation: `<keyed hash of the id>.conv` = magic, 12-byte random nonce,
//! AES-256-GCM ciphertext of the JSON turns (which hold the id), with the file's name as
//! associated data (a file renamed to another id's name fails to decrypt). File names are keyed
//! hashes so the volume does not list conversation ids either; the instance lists its
//! conversations by decrypting each file. (Files of the first format, `ALCVH1`, bound the id
//! itself and are read by id; they are listed once a new turn rewrites them.) Deleting a conversation unlinks its file; the tenant key is
//! deleted last at retention, which crypto-shreds any copy that escaped (a snapshot, say).

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::model::Message;

const MAGIC: &[u8; 6] = b"ALCVH2";
/// The first format: associated data is the id, so a file can be read only by its id.
const MAGIC_V1: &[u8; 6] = b"ALCVH1";
const NONCE: usize = 12;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub messages: Vec<Message>,
    /// Unix seconds of the last change.
    pub updated_at: u64,
}

pub struct History {
    dir: PathBuf,
    cipher: Aes256Gcm,
    name_key: [u8; 32],
}

/// Conversation ids are the client's: letters, digits, `-`, `_`, `.`, 1 to 128 of them.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Reads a 256-bit key: 32 raw bytes (a mounted Secret) or their hex or base64 text.
pub fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    use base64::Engine as _;
    let bytes =
        std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(key);
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    };
    match decoded.and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok()) {
        Some(key) => Ok(key),
        None => bail!("key file {}: expected 32 bytes (raw, hex or base64)", path.display()),
    }
}

impl History {
    pub fn open(dir: &Path, key: [u8; 32]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::remove_stale_temporaries(dir);
        // Names use a key derived from, but not equal to, the encryption key.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("any key length");
        mac.update(b"alcove conversation file names");
        let name_key: [u8; 32] = mac.finalize().into_bytes().into();
        Ok(Self { dir: dir.to_path_buf(), cipher: Aes256Gcm::new(&key.into()), name_key })
    }

    /// The file name's stem for an id: a keyed hash, 40 hex digits.
    fn stem(&self, id: &str) -> String {
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.name_key).expect("any key length");
        mac.update(id.as_bytes());
        crate::hex(&mac.finalize().into_bytes()[..20])
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}.conv", self.stem(id)))
    }

    /// Decrypts a file's bytes: `stem` binds the current format, `id` (when known) the first.
    fn open_file(
        &self,
        bytes: &[u8],
        stem: &str,
        id: Option<&str>,
    ) -> anyhow::Result<Conversation> {
        if bytes.len() < MAGIC.len() + NONCE {
            bail!("conversation file is not in Alcove's format");
        }
        let aad = match (&bytes[..MAGIC.len()], id) {
            (m, _) if m == MAGIC => stem.as_bytes(),
            (m, Some(id)) if m == MAGIC_V1 => id.as_bytes(),
            (m, None) if m == MAGIC_V1 => bail!("a first-format conversation is read by its id"),
            _ => bail!("conversation file is not in Alcove's format"),
        };
        let (nonce, ciphertext) = bytes[MAGIC.len()..].split_at(NONCE);
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| anyhow::anyhow!("conversation cannot be decrypted with this key"))?;
        serde_json::from_slice(&plaintext).context("decrypted conversation is not valid")
    }

    pub fn load(&self, id: &str) -> anyhow::Result<Option<Conversation>> {
        let bytes = match std::fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading conversation"),
        };
        let c = self.open_file(&bytes, &self.stem(id), Some(id))?;
        if c.id != id {
            bail!("conversation file holds another conversation");
        }
        Ok(Some(c))
    }

    /// Every conversation this key can read, most recently changed first; files it cannot read
    /// (another key's, the first format) are counted, not listed.
    pub fn list(&self) -> anyhow::Result<(Vec<Conversation>, usize)> {
        let mut found = Vec::new();
        let mut unreadable = 0;
        for entry in std::fs::read_dir(&self.dir).context("listing conversations")? {
            let path = entry?.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".conv"))
                .map(str::to_string)
            else {
                continue;
            };
            let Ok(bytes) = std::fs::read(&path) else { continue };
            match self.open_file(&bytes, &stem, None) {
                // Bound to its name: a file copied under another name does not decrypt.
                Ok(c) if self.stem(&c.id) == stem => found.push(c),
                _ => unreadable += 1,
            }
        }
        found.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then_with(|| a.id.cmp(&b.id)));
        Ok((found, unreadable))
    }

    pub fn save(&self, conversation: &Conversation) -> anyhow::Result<()> {
        let plaintext = serde_json::to_vec(conversation)?;
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let stem = self.stem(&conversation.id);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad: stem.as_bytes() })
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut bytes = Vec::with_capacity(MAGIC.len() + NONCE + ciphertext.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        crate::write_atomically(&self.path(&conversation.id), &bytes)
            .context("writing conversation")
    }

    /// Removes the conversation's file; `false` if there was none.
    pub fn delete(&self, id: &str) -> anyhow::Result<bool> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {
                std::fs::File::open(&self.dir)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).context("deleting conversation"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(id: &str, text: &str) -> Conversation {
        Conversation {
            id: id.into(),
            messages: vec![Message { role: "user".into(), content: text.into() }],
            updated_at: 1,
        }
    }

    #[test]
    fn round_trip_encrypted_and_deletable() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), [7; 32]).unwrap();
        h.save(&conv("c-1", "the secret plan is tulips")).unwrap();
        assert_eq!(h.load("c-1").unwrap().unwrap(), conv("c-1", "the secret plan is tulips"));
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().to_string_lossy().to_string();
        assert!(!name.contains("c-1"), "the id is not in the file name: {name}");
        let raw = std::fs::read(files[0].path()).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"tulips"), "plaintext on disk");
        assert!(h.delete("c-1").unwrap());
        assert!(h.load("c-1").unwrap().is_none());
        assert!(!h.delete("c-1").unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn another_key_or_id_cannot_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), [7; 32]).unwrap();
        h.save(&conv("a", "x")).unwrap();
        let other = History::open(dir.path(), [8; 32]).unwrap();
        assert!(other.load("a").unwrap().is_none(), "names differ by key");
        // Move a's file to where b's would be: the id is bound to the ciphertext.
        let a_path = h.path("a");
        std::fs::rename(&a_path, h.path("b")).unwrap();
        assert!(h.load("b").is_err());
    }

    #[test]
    fn conversations_are_listed_newest_first_by_their_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), [7; 32]).unwrap();
        let mut older = conv("older", "first");
        older.updated_at = 10;
        let mut newer = conv("newer", "second");
        newer.updated_at = 20;
        h.save(&older).unwrap();
        h.save(&newer).unwrap();
        let (list, unreadable) = h.list().unwrap();
        assert_eq!(list, vec![newer.clone(), older.clone()]);
        assert_eq!(unreadable, 0);
        // Another key lists nothing; a file copied under another name is not listed.
        let (none, skipped) = History::open(dir.path(), [8; 32]).unwrap().list().unwrap();
        assert!(none.is_empty() && skipped == 2);
        std::fs::copy(h.path("older"), dir.path().join(format!("{}.conv", "0".repeat(40))))
            .unwrap();
        assert_eq!(h.list().unwrap(), (vec![newer, older], 1));
        h.delete("newer").unwrap();
        assert_eq!(h.list().unwrap().0.len(), 1);
    }

    #[test]
    fn first_format_files_are_still_read_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), [7; 32]).unwrap();
        let c = conv("old-1", "kept from before");
        let plaintext = serde_json::to_vec(&c).unwrap();
        let nonce = [1u8; NONCE];
        let ciphertext = h
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad: b"old-1" })
            .unwrap();
        std::fs::write(h.path("old-1"), [MAGIC_V1.as_slice(), &nonce, &ciphertext].concat())
            .unwrap();
        assert_eq!(h.load("old-1").unwrap().unwrap(), c);
        assert_eq!(h.list().unwrap(), (vec![], 1), "not listable until rewritten");
        h.save(&c).unwrap();
        assert_eq!(h.list().unwrap(), (vec![c], 0));
    }

    #[test]
    fn keys_are_read_raw_hex_or_base64() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [9u8; 32]).unwrap();
        assert_eq!(read_key(&p).unwrap(), [9; 32]);
        std::fs::write(&p, format!("{}\n", "09".repeat(32))).unwrap();
        assert_eq!(read_key(&p).unwrap(), [9; 32]);
        std::fs::write(&p, "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=").unwrap();
        assert_eq!(read_key(&p).unwrap(), [9; 32]);
        std::fs::write(&p, "short").unwrap();
        assert!(read_key(&p).unwrap_err().to_string().contains("32 bytes"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("chat-2026_11.a"));
        assert!(!valid_id(""));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(&"a".repeat(129)));
    }
}
