//! The API keys file: each key as the SHA-256 of its secret, with a name and scopes.
//!
//! ```toml
//! [[keys]]
//! name = "deploy-bot"
//! sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! scopes = ["write", "jobs"]
//! ```
//!
//! The file never holds a key itself: `printf %s "$KEY" | sha256sum` gives
//! the line for a key. A plain SHA-256 (not a password hash) is right here
//! because an API key is a long random secret, not something a person
//! chose: nothing is gained by slowing a guess, and the hash is taken once
//! per key per core (verified keys are cached, [`super::cache`]).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuthSetupError;

/// One key's holder, as the file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub name: String,
    pub scopes: Vec<String>,
}

/// Every key of the file, by the SHA-256 of its secret.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    by_digest: HashMap<[u8; 32], KeyHolder>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    scopes: Vec<String>,
}

impl KeySet {
    /// Reads and checks a keys file.
    pub fn load(path: &Path) -> Result<Self, AuthSetupError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| AuthSetupError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut by_digest = HashMap::new();
        for entry in file.keys {
            if entry.name.is_empty() || entry.name.len() > 128 {
                return Err(format!(
                    "key name `{}` must be 1 to 128 characters",
                    entry.name
                ));
            }
            let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                format!(
                    "key `{}`: sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)",
                    entry.name
                )
            })?;
            let holder = KeyHolder {
                name: entry.name,
                scopes: entry.scopes,
            };
            if let Some(earlier) = by_digest.insert(digest, holder) {
                return Err(format!(
                    "key `{}` has the same secret as key `{}`",
                    by_digest[&digest].name, earlier.name
                ));
            }
        }
        Ok(Self { by_digest })
    }

    /// The holder of `secret`, if it is one of the file's keys.
    pub fn find(&self, secret: &[u8]) -> Option<&KeyHolder> {
        let digest: [u8; 32] = Sha256::digest(secret).into();
        self.by_digest.get(&digest)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The `sha256` line of the keys file for `secret`.
pub fn digest_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_secret_only() {
        let text = format!(
            "[[keys]]\nname = \"ci\"\nsha256 = \"{}\"\nscopes = [\"write\"]\n",
            digest_hex("s3cret-key")
        );
        let keys = KeySet::parse(&text).unwrap();
        assert_eq!(keys.find(b"s3cret-key").unwrap().name, "ci");
        assert_eq!(keys.find(b"s3cret-key").unwrap().scopes, ["write"]);
        assert!(keys.find(b"s3cret-kez").is_none());
        assert!(keys.find(digest_hex("s3cret-key").as_bytes()).is_none());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let short = KeySet::parse("[[keys]]\nname = \"a\"\nsha256 = \"abc\"\n").unwrap_err();
        assert!(short.contains("64 hex digits"), "{short}");
        let twice = format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{0}\"\n[[keys]]\nname = \"b\"\nsha256 = \"{0}\"\n",
            digest_hex("k")
        );
        assert!(KeySet::parse(&twice).unwrap_err().contains("same secret"));
        assert!(KeySet::parse("[[keys]]\nname = \"a\"\nsha = \"x\"\n").is_err());
    }
}
