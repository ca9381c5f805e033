//! Antelope K1 (secp256k1) keys and signatures in their text forms.
//!
//! - Private keys: legacy WIF (`5...`: base58 of `0x80 ‖ key ‖ sha256(sha256(0x80 ‖
//!   key))[..4]`) or `PVT_K1_` + base58(`key ‖ ripemd160(key ‖ "K1")[..4]`).
//! - Public keys: legacy `EOS` + base58(`compressed ‖ ripemd160(compressed)[..4]`) or
//!   `PUB_K1_` + base58(`compressed ‖ ripemd160(compressed ‖ "K1")[..4]`).
//! - Signatures: `SIG_K1_` + base58(`header ‖ r ‖ s ‖ ripemd160(header ‖ r ‖ s ‖
//!   "K1")[..4]`), header = 27 + 4 (compressed) + recovery id.
//!
//! Signing is RFC 6979 deterministic with the extra data `[n]` for the n-th try
//! (n = 1, 2, …) until the signature is *canonical* in Antelope's sense (neither r nor s
//! needs a DER padding byte, and neither has a leading zero byte that DER would strip);
//! this is what eosjs does, so a transaction signs to the same bytes here and there.
//!
//! A private key never appears in a `Debug` output or an error: [`PrivateKey`] prints as
//! `PrivateKey(<redacted>)`, its bytes are zeroed when dropped, and parse errors say
//! what is wrong with the text, never the text.

use k256::ecdsa::hazmat::SignPrimitive;
use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use ripemd::Ripemd160;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Why a key or signature text was refused. Never carries the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not `5…` WIF, `PVT_K1_…`, `EOS…`, `PUB_K1_…` or `SIG_K1_…` as expected.
    #[error("not a recognised {0} format")]
    Format(&'static str),
    /// Not base58.
    #[error("the {0} is not valid base58")]
    Base58(&'static str),
    /// Decoded to the wrong length or version byte.
    #[error("the {0} has the wrong length or version byte")]
    Length(&'static str),
    /// The checksum does not match.
    #[error("the {0}'s checksum does not match")]
    Checksum(&'static str),
    /// The bytes are not a valid secp256k1 key.
    #[error("the {0} is not a valid secp256k1 key")]
    Curve(&'static str),
    /// Signing failed (no canonical signature within the tries allowed).
    #[error("could not make a canonical signature")]
    Sign,
}

fn ripemd(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Ripemd160::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Decodes base58 into a buffer that is zeroed when dropped.
fn b58(text: &str, what: &'static str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    bs58::decode(text)
        .into_vec()
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Base58(what))
}

/// A secp256k1 private key. `Debug` is redacted; the bytes are zeroed on drop.
#[derive(Clone)]
pub struct PrivateKey {
    key: SigningKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// Parses legacy WIF (`5…`) or `PVT_K1_…`. Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<PrivateKey, KeyError> {
        const WHAT: &str = "private key";
        let text = text.trim();
        let secret: Zeroizing<[u8; 32]> = if let Some(rest) = text.strip_prefix("PVT_K1_") {
            let raw = b58(rest, WHAT)?;
            let (key, sum) = match raw.len() {
                36 => raw.split_at(32),
                _ => return Err(KeyError::Length(WHAT)),
            };
            if ripemd(&[key, b"K1"])[..4] != *sum {
                return Err(KeyError::Checksum(WHAT));
            }
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(key);
            k
        } else if text.starts_with("PVT_") {
            return Err(KeyError::Format(
                "K1 private key (only K1 keys are supported)",
            ));
        } else {
            let raw = b58(text, WHAT)?;
            // 0x80 ‖ key ‖ checksum; some tools append 0x01 (compressed) before it.
            let body_len = match raw.len() {
                37 => 33,
                38 if raw.get(33) == Some(&0x01) => 34,
                _ => return Err(KeyError::Length(WHAT)),
            };
            let (body, sum) = raw.split_at(body_len);
            if body.first() != Some(&0x80) {
                return Err(KeyError::Length(WHAT));
            }
            let mut first = sha256(body);
            let check = sha256(&first);
            first.zeroize();
            if check[..4] != *sum {
                return Err(KeyError::Checksum(WHAT));
            }
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(body.get(1..33).ok_or(KeyError::Length(WHAT))?);
            k
        };
        let key =
            SigningKey::from_bytes(secret.as_ref().into()).map_err(|_| KeyError::Curve(WHAT))?;
        Ok(PrivateKey { key })
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.key.verifying_key())
    }

    /// Signs a 32-byte digest: Antelope-canonical, deterministic (as eosjs signs).
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<EosSignature, KeyError> {
        let scalar = self.key.as_nonzero_scalar();
        for tries in 1u8..=255 {
            let (sig, recid) = scalar
                .as_ref()
                .try_sign_prehashed_rfc6979::<Sha256>(digest.into(), &[tries])
                .map_err(|_| KeyError::Sign)?;
            let recid = recid.ok_or(KeyError::Sign)?;
            let s = EosSignature::from_parts(&sig, recid);
            if s.is_canonical() {
                return Ok(s);
            }
        }
        Err(KeyError::Sign)
    }
}

/// A secp256k1 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

impl PublicKey {
    /// Parses `EOS…` (legacy) or `PUB_K1_…`.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        const WHAT: &str = "public key";
        let text = text.trim();
        let (rest, suffix): (&str, &[u8]) = if let Some(r) = text.strip_prefix("PUB_K1_") {
            (r, b"K1")
        } else if let Some(r) = text.strip_prefix("EOS") {
            (r, b"")
        } else {
            return Err(KeyError::Format(WHAT));
        };
        let raw = b58(rest, WHAT)?;
        if raw.len() != 37 {
            return Err(KeyError::Length(WHAT));
        }
        let (key, sum) = raw.split_at(33);
        if ripemd(&[key, suffix])[..4] != *sum {
            return Err(KeyError::Checksum(WHAT));
        }
        VerifyingKey::from_sec1_bytes(key)
            .map(PublicKey)
            .map_err(|_| KeyError::Curve(WHAT))
    }

    fn compressed(&self) -> [u8; 33] {
        let point = self.0.to_encoded_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// `EOS…`, as wallets and `get_account` print it.
    pub fn to_legacy_string(&self) -> String {
        let mut raw = self.compressed().to_vec();
        let sum = ripemd(&[&raw]);
        raw.extend_from_slice(&sum[..4]);
        format!("EOS{}", bs58::encode(raw).into_string())
    }

    /// `PUB_K1_…`.
    pub fn to_k1_string(&self) -> String {
        let mut raw = self.compressed().to_vec();
        let sum = ripemd(&[&raw, b"K1"]);
        raw.extend_from_slice(&sum[..4]);
        format!("PUB_K1_{}", bs58::encode(raw).into_string())
    }
}

/// A recoverable K1 signature: `header ‖ r ‖ s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EosSignature(pub [u8; 65]);

impl EosSignature {
    fn from_parts(sig: &Signature, recid: RecoveryId) -> EosSignature {
        let mut out = [0u8; 65];
        out[0] = 27 + 4 + recid.to_byte();
        out[1..].copy_from_slice(&sig.to_bytes());
        EosSignature(out)
    }

    /// Antelope's canonical rule (as eosjs and `fc` check it).
    pub fn is_canonical(&self) -> bool {
        let d = &self.0;
        d[1] & 0x80 == 0
            && !(d[1] == 0 && d[2] & 0x80 == 0)
            && d[33] & 0x80 == 0
            && !(d[33] == 0 && d[34] & 0x80 == 0)
    }

    /// Parses `SIG_K1_…`.
    pub fn parse(text: &str) -> Result<EosSignature, KeyError> {
        const WHAT: &str = "signature";
        let rest = text
            .trim()
            .strip_prefix("SIG_K1_")
            .ok_or(KeyError::Format(WHAT))?;
        let raw = b58(rest, WHAT)?;
        if raw.len() != 69 {
            return Err(KeyError::Length(WHAT));
        }
        let (sig, sum) = raw.split_at(65);
        if ripemd(&[sig, b"K1"])[..4] != *sum {
            return Err(KeyError::Checksum(WHAT));
        }
        let mut out = [0u8; 65];
        out.copy_from_slice(sig);
        Ok(EosSignature(out))
    }

    /// The public key that made this signature over `digest`.
    pub fn recover(&self, digest: &[u8; 32]) -> Result<PublicKey, KeyError> {
        const WHAT: &str = "signature";
        let recid = self
            .0
            .first()
            .and_then(|h| h.checked_sub(27 + 4))
            .and_then(RecoveryId::from_byte)
            .ok_or(KeyError::Length(WHAT))?;
        let sig = Signature::from_slice(&self.0[1..]).map_err(|_| KeyError::Curve(WHAT))?;
        VerifyingKey::recover_from_prehash(digest, &sig, recid)
            .map(PublicKey)
            .map_err(|_| KeyError::Curve(WHAT))
    }
}

impl std::fmt::Display for EosSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = self.0.to_vec();
        let sum = ripemd(&[&raw, b"K1"]);
        raw.extend_from_slice(&sum[..4]);
        write!(f, "SIG_K1_{}", bs58::encode(raw).into_string())
    }
}

/// The digest a transaction's signatures sign: sha256(chain_id ‖ packed_trx ‖
/// sha256-of-context-free-data, or 32 zero bytes when there is none).
pub fn signing_digest(chain_id: &[u8; 32], packed_trx: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(chain_id);
    h.update(packed_trx);
    h.update([0u8; 32]);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The EOSIO development key pair (published in the EOSIO tutorials and
    /// `nodeos --help`); the `PVT_K1_`/`PUB_K1_` forms are as eosjs 22.1.0 prints them.
    const WIF: &str = "5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3";
    const PVT_K1: &str = "PVT_K1_2bfGi9rYsXQSXXTvJbDAPhHLQUojjaNLomdm3cEJ1XTzMqUt3V";
    const PUB: &str = "EOS6MRyAjQq8ud7hVNYcfnVPJqcVpscN5So8BhtHuGYqET5GDW5CV";
    const PUB_K1: &str = "PUB_K1_6MRyAjQq8ud7hVNYcfnVPJqcVpscN5So8BhtHuGYqET5BoDq63";

    #[test]
    fn both_private_key_forms_are_the_same_key() {
        let a = PrivateKey::parse(WIF).unwrap();
        let b = PrivateKey::parse(PVT_K1).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.public_key().to_legacy_string(), PUB);
        assert_eq!(a.public_key().to_k1_string(), PUB_K1);
        assert_eq!(PublicKey::parse(PUB).unwrap(), a.public_key());
        assert_eq!(PublicKey::parse(PUB_K1).unwrap(), a.public_key());
        assert_eq!(format!("{a:?}"), "PrivateKey(<redacted>)");
    }

    /// Changes one base58 digit in the middle (keeps it base58, breaks the checksum).
    fn tamper(text: &str, at: usize) -> String {
        let mut c: Vec<char> = text.chars().collect();
        c[at] = if c[at] == '2' { '3' } else { '2' };
        c.into_iter().collect()
    }

    #[test]
    fn bad_checksums_and_formats_are_refused_without_echoing_the_key() {
        for (bad, want) in [
            (tamper(WIF, 20), KeyError::Checksum("private key")),
            (tamper(PVT_K1, 30), KeyError::Checksum("private key")),
            (WIF[..40].to_owned(), KeyError::Length("private key")),
            (format!("{WIF}0"), KeyError::Base58("private key")),
            (
                "PVT_R1_abc".to_owned(),
                KeyError::Format("K1 private key (only K1 keys are supported)"),
            ),
        ] {
            let e = PrivateKey::parse(&bad).unwrap_err();
            assert_eq!(e, want, "{bad}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(&bad[..bad.len().min(10)]), "{shown}");
            assert!(!shown.contains(&WIF[10..30]) && !shown.contains(&PVT_K1[10..30]));
        }
        assert_eq!(
            PublicKey::parse(&tamper(PUB, 20)).unwrap_err(),
            KeyError::Checksum("public key")
        );
        assert_eq!(
            PublicKey::parse(&tamper(PUB_K1, 20)).unwrap_err(),
            KeyError::Checksum("public key")
        );
        // A legacy key checked as if it were PUB_K1 (the checksums differ by "K1").
        assert!(PublicKey::parse(&format!("PUB_K1_{}", &PUB[3..])).is_err());
    }

    #[test]
    fn signatures_are_canonical_recoverable_and_match_eosjs() {
        let key = PrivateKey::parse(WIF).unwrap();
        // Digest and signature from eosjs 22.1.0 (`Api.transact(.., {sign: true})` of
        // the transfer in `tx::tests`, chain id aca376f2…).
        let digest: [u8; 32] =
            hex::decode("c1294c78bd4481ddd84a28a4f658cfa66618a5198e1b0aeba6e220c48bce9947")
                .unwrap()
                .try_into()
                .unwrap();
        let sig = key.sign_digest(&digest).unwrap();
        assert!(sig.is_canonical());
        assert_eq!(
            sig.to_string(),
            "SIG_K1_K7sTN2jBVjG3p3SGTymEapHBxVEmSMpuw3JRvABfsPmhFkhuUBKG8LYTnnHP1BaXvw4dHyPh3qswySnbBmjcKUo18hnNWc"
        );
        let parsed = EosSignature::parse(&sig.to_string()).unwrap();
        assert_eq!(parsed, sig);
        assert_eq!(sig.recover(&digest).unwrap(), key.public_key());
        // Many digests: every signature is canonical and recovers to the key.
        for i in 0u8..64 {
            let d = sha256(&[i]);
            let s = key.sign_digest(&d).unwrap();
            assert!(s.is_canonical());
            assert_eq!(s.recover(&d).unwrap(), key.public_key());
            assert_ne!(s.recover(&digest).ok(), Some(key.public_key()));
        }
        assert!(EosSignature::parse(&tamper(&sig.to_string(), 40)).is_err());
    }
}
