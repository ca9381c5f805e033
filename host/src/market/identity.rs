//! A peer's identity: the master key of a data directory, and every key derived from it
//! exactly as JS dazaar derives them (so one master key gives the same buyer, seller and
//! per-buyer feed keys in both implementations).
//!
//! The master key lives in `<data_dir>/master-key`, written atomically with mode 0600, as
//! JSON: either `{"version":1,"key":"<hex>"}` or, encrypted at rest with a passphrase,
//! `{"version":1,"kdf":"argon2id","m":..,"t":..,"p":..,"salt":"..","cipher":
//! "xchacha20poly1305","nonce":"..","ciphertext":".."}` (key = argon2id(passphrase,
//! salt), AEAD over the 32-byte master key with the header fields as associated data).

use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, Ed25519KeyPair, NoiseKeyPair};
use crate::fs_atomic::write_file_atomic;

/// File name of the master key inside a data directory.
pub const MASTER_KEY_FILE: &str = "master-key";

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file is not one we wrote.
    #[error("{path}: not a dazaar master key file ({reason})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is encrypted and no passphrase was given.
    #[error("{0}: the master key is encrypted; give its passphrase")]
    PassphraseRequired(PathBuf),
    /// The passphrase does not open the key.
    #[error("{0}: wrong passphrase")]
    WrongPassphrase(PathBuf),
    /// A master key exists already (on import).
    #[error("{0}: a master key exists already")]
    Exists(PathBuf),
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Parallelism.
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended option).
    fn default() -> Self {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        }
    }

    /// Bounds on what a key file may ask for, so a crafted file cannot make us
    /// allocate gigabytes or spin for minutes.
    fn check(&self) -> Result<(), String> {
        if self.m_kib < 8
            || self.m_kib > 1024 * 1024
            || self.t == 0
            || self.t > 16
            || self.p == 0
            || self.p > 8
        {
            return Err(format!(
                "argon2id parameters out of range (m={} t={} p={})",
                self.m_kib, self.t, self.p
            ));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cipher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ciphertext: Option<String>,
}

/// The identity of one data directory: its master key.
#[derive(Clone)]
pub struct Identity {
    master: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field(
                "buyer_key",
                &hex::encode(self.buyer_key_pair().public_key()),
            )
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity from a known master key (tests, or a key imported from JS dazaar).
    pub fn from_master_key(master: [u8; 32]) -> Self {
        Identity {
            master: Zeroizing::new(master),
        }
    }

    /// Loads `<data_dir>/master-key`, or creates a new random one (encrypted when a
    /// passphrase is given).
    pub fn load_or_create(
        data_dir: &Path,
        passphrase: Option<&str>,
        params: KdfParams,
    ) -> Result<Self, IdentityError> {
        let path = data_dir.join(MASTER_KEY_FILE);
        if path.exists() {
            return Self::load(&path, passphrase);
        }
        let master: [u8; 32] = rand::random();
        Self::store(data_dir, master, passphrase, params, false)
    }

    /// Stores a given master key in `data_dir` (refusing to overwrite one) — for moving a
    /// JS dazaar identity over (its `master-key` DB entry, hex).
    pub fn import(
        data_dir: &Path,
        master: [u8; 32],
        passphrase: Option<&str>,
        params: KdfParams,
    ) -> Result<Self, IdentityError> {
        Self::store(data_dir, master, passphrase, params, true)
    }

    fn store(
        data_dir: &Path,
        master: [u8; 32],
        passphrase: Option<&str>,
        params: KdfParams,
        refuse_existing: bool,
    ) -> Result<Self, IdentityError> {
        let path = data_dir.join(MASTER_KEY_FILE);
        if refuse_existing && path.exists() {
            return Err(IdentityError::Exists(path));
        }
        std::fs::create_dir_all(data_dir).map_err(|source| IdentityError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let file = match passphrase {
            None => KeyFile {
                version: 1,
                key: Some(hex::encode(master)),
                kdf: None,
                m: None,
                t: None,
                p: None,
                salt: None,
                cipher: None,
                nonce: None,
                ciphertext: None,
            },
            Some(pass) => {
                params.check().map_err(|reason| IdentityError::Malformed {
                    path: path.clone(),
                    reason,
                })?;
                let salt: [u8; 16] = rand::random();
                let nonce: [u8; 24] = rand::random();
                let key =
                    derive_key(pass, &salt, params).map_err(|reason| IdentityError::Malformed {
                        path: path.clone(),
                        reason,
                    })?;
                let aad = associated_data(params, &salt, &nonce);
                let ciphertext = XChaCha20Poly1305::new((&*key).into())
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &master,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| IdentityError::Malformed {
                        path: path.clone(),
                        reason: "encryption failed".into(),
                    })?;
                KeyFile {
                    version: 1,
                    key: None,
                    kdf: Some("argon2id".into()),
                    m: Some(params.m_kib),
                    t: Some(params.t),
                    p: Some(params.p),
                    salt: Some(hex::encode(salt)),
                    cipher: Some("xchacha20poly1305".into()),
                    nonce: Some(hex::encode(nonce)),
                    ciphertext: Some(hex::encode(ciphertext)),
                }
            }
        };
        let text = serde_json::to_vec(&file).map_err(|e| IdentityError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_file_atomic(&path, &text).map_err(|source| IdentityError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self::from_master_key(master))
    }

    /// Loads a master key file.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self, IdentityError> {
        let malformed = |reason: &str| IdentityError::Malformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let text = std::fs::read(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if text.len() > 4096 {
            return Err(malformed("too large"));
        }
        let file: KeyFile = serde_json::from_slice(&text).map_err(|e| malformed(&e.to_string()))?;
        if file.version != 1 {
            return Err(malformed("unknown version"));
        }
        let hex32 = |s: &Option<String>, what: &str| -> Result<Vec<u8>, IdentityError> {
            s.as_deref()
                .and_then(|s| hex::decode(s).ok())
                .ok_or_else(|| malformed(&format!("bad or missing {what}")))
        };
        if file.key.is_some() {
            let key: [u8; 32] = hex32(&file.key, "key")?
                .try_into()
                .map_err(|_| malformed("key is not 32 bytes"))?;
            return Ok(Self::from_master_key(key));
        }
        if file.kdf.as_deref() != Some("argon2id")
            || file.cipher.as_deref() != Some("xchacha20poly1305")
        {
            return Err(malformed("unknown kdf or cipher"));
        }
        let params = KdfParams {
            m_kib: file.m.ok_or_else(|| malformed("missing m"))?,
            t: file.t.ok_or_else(|| malformed("missing t"))?,
            p: file.p.ok_or_else(|| malformed("missing p"))?,
        };
        params.check().map_err(|r| malformed(&r))?;
        let salt = hex32(&file.salt, "salt")?;
        let nonce: [u8; 24] = hex32(&file.nonce, "nonce")?
            .try_into()
            .map_err(|_| malformed("nonce is not 24 bytes"))?;
        let ciphertext = hex32(&file.ciphertext, "ciphertext")?;
        let pass =
            passphrase.ok_or_else(|| IdentityError::PassphraseRequired(path.to_path_buf()))?;
        let key = derive_key(pass, &salt, params).map_err(|r| malformed(&r))?;
        let aad = associated_data(params, &salt, &nonce);
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new((&*key).into())
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| IdentityError::WrongPassphrase(path.to_path_buf()))?,
        );
        let master: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| malformed("decrypted key is not 32 bytes"))?;
        Ok(Self::from_master_key(master))
    }

    /// The buyer's Noise key pair (one for all purchases).
    pub fn buyer_key_pair(&self) -> NoiseKeyPair {
        crypto::buyer_key_pair(&self.master)
    }

    /// The seller's Noise key pair for the product whose feed key is `feed_key`.
    pub fn seller_key_pair(&self, feed_key: &[u8; 32]) -> NoiseKeyPair {
        crypto::seller_key_pair(&self.master, feed_key)
    }

    /// The rekeyed feed key pair of one buyer of one product (re-derived on demand; never
    /// stored).
    pub fn rekeyed_key_pair(&self, feed_key: &[u8; 32], buyer_key: &[u8; 32]) -> Ed25519KeyPair {
        crypto::rekeyed_feed_key_pair(&self.master, feed_key, buyer_key)
    }

    /// A feed key pair derived for a named feed (`deriveHypercoreKeyPair`).
    pub fn feed_key_pair(&self, id: &str) -> Ed25519KeyPair {
        crypto::hypercore_key_pair(&self.master, id)
    }
}

fn associated_data(params: KdfParams, salt: &[u8], nonce: &[u8]) -> Vec<u8> {
    format!(
        "dazaar-master-key v1 argon2id m={} t={} p={} salt={} nonce={}",
        params.m_kib,
        params.t,
        params.p,
        hex::encode(salt),
        hex::encode(nonce)
    )
    .into_bytes()
}

fn derive_key(
    passphrase: &str,
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, String> {
    let argon_params = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| e.to_string())?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut *out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_key_round_trip_and_js_derivations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity::import(dir.path(), [3; 32], None, KdfParams::default()).expect("import");
        assert_eq!(
            hex::encode(id.buyer_key_pair().public_key()),
            "66cc688b3673664acac8a9bfe637a2694cc0a02fb628ce81c6a2a319e2866e30"
        );
        let again = Identity::load_or_create(dir.path(), None, KdfParams::default()).expect("load");
        assert_eq!(
            again.buyer_key_pair().public_key(),
            id.buyer_key_pair().public_key()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            Identity::import(dir.path(), [4; 32], None, KdfParams::default()),
            Err(IdentityError::Exists(_))
        ));
        assert!(!format!("{id:?}").contains(&hex::encode([3u8; 32])));
    }

    #[test]
    fn encrypted_key_needs_the_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let params = KdfParams::insecure_for_tests();
        let id =
            Identity::load_or_create(dir.path(), Some("correct horse"), params).expect("create");
        let text = std::fs::read_to_string(dir.path().join(MASTER_KEY_FILE)).expect("read");
        assert!(text.contains("argon2id") && !text.contains("\"key\""));
        let path = dir.path().join(MASTER_KEY_FILE);
        assert!(matches!(
            Identity::load(&path, None),
            Err(IdentityError::PassphraseRequired(_))
        ));
        assert!(matches!(
            Identity::load(&path, Some("wrong")),
            Err(IdentityError::WrongPassphrase(_))
        ));
        let back = Identity::load(&path, Some("correct horse")).expect("open");
        assert_eq!(
            back.buyer_key_pair().public_key(),
            id.buyer_key_pair().public_key()
        );
        // Tampering with the stored parameters breaks the AEAD, not the program.
        let tampered = text.replace("\"t\":1", "\"t\":2");
        std::fs::write(&path, tampered).expect("write");
        assert!(matches!(
            Identity::load(&path, Some("correct horse")),
            Err(IdentityError::WrongPassphrase(_))
        ));
        // Absurd parameters are refused before any work.
        let absurd = text.replace("\"m\":64", "\"m\":4000000000");
        std::fs::write(&path, absurd).expect("write");
        assert!(matches!(
            Identity::load(&path, Some("correct horse")),
            Err(IdentityError::Malformed { .. })
        ));
        std::fs::write(&path, b"garbage").expect("write");
        assert!(matches!(
            Identity::load(&path, None),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
