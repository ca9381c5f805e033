//! Body of the `bolt11` fuzz target (`fuzz/` at the repository root) and of its corpus
//! replay test. Not part of the plugin's API.
//!
//! Random text almost never carries a valid bech32 checksum, let alone a signature, so
//! besides raw text the input can describe an invoice's data words: the harness then adds
//! the checksum, or a real signature by a fixed key and the checksum, and the field parser
//! and the buyer's invoice check behind them are reached.

use k256::ecdsa::SigningKey;
use sha2::{Digest, Sha256};

use crate::bolt11::{self, hrp_expand, polymod, Bolt11Error, Network, MAX_LEN};

const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// Human-readable parts worth reaching: every network, amounts with every multiplier.
const HRPS: [&str; 12] = [
    "lnbc",
    "lntb",
    "lnbcrt",
    "lntbs",
    "lnbc2500u",
    "lnbc20m",
    "lnbc9678785340p",
    "lnbc1n",
    "lntb100",
    "lnbcrt1p",
    "lnbc99999999999999999999m",
    "ln",
];

/// `hrp 1 words checksum` as text (the checksum from the decoder's own functions).
fn bech32(hrp: &str, words: &[u8]) -> String {
    let expanded = hrp_expand(hrp.as_bytes());
    let pm = polymod(
        expanded
            .chain(words.iter().copied())
            .chain(std::iter::repeat_n(0, 6)),
    ) ^ 1;
    let mut out = String::with_capacity(hrp.len() + 1 + words.len() + 6);
    out.push_str(hrp);
    out.push('1');
    let checksum = (0..6).map(|i| ((pm >> (5 * (5 - i))) & 31) as u8);
    for w in words.iter().copied().chain(checksum) {
        out.push(char::from(CHARSET[usize::from(w & 31)]));
    }
    out
}

fn bytes_to_words(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(((acc >> bits) & 31) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (5 - bits)) & 31) as u8);
    }
    out
}

/// Signs `hrp` + `words` with a fixed key as BOLT #11 does; returns the 104 words of
/// signature and recovery id.
fn sign(hrp: &str, words: &[u8]) -> Option<Vec<u8>> {
    let key = SigningKey::from_slice(&[0x11; 32]).ok()?;
    let mut hasher = Sha256::new();
    hasher.update(hrp.as_bytes());
    hasher.update(crate::bolt11::words_to_bytes(words, true));
    let digest = hasher.finalize();
    let (sig, recid) = key.sign_prehash_recoverable(&digest).ok()?;
    let mut bytes = sig.to_bytes().to_vec();
    bytes.push(recid.to_byte());
    Some(bytes_to_words(&bytes))
}

fn fixed_payee() -> Option<[u8; 33]> {
    let key = SigningKey::from_slice(&[0x11; 32]).ok()?;
    key.verifying_key()
        .to_encoded_point(true)
        .as_bytes()
        .try_into()
        .ok()
}

/// Decodes `text` and checks what must hold of any answer.
fn decode_checked(text: &str) -> Result<bolt11::Invoice, Bolt11Error> {
    let result = bolt11::decode(text);
    if text.trim().len() > MAX_LEN {
        assert!(result.is_err(), "an invoice over MAX_LEN decoded");
    }
    if let Ok(invoice) = &result {
        let _ = invoice.is_expired(u64::MAX);
        // Either case decodes to the same invoice.
        let trimmed = text.trim();
        let flipped = if trimmed.bytes().any(|b| b.is_ascii_lowercase()) {
            trimmed.to_ascii_uppercase()
        } else {
            trimmed.to_ascii_lowercase()
        };
        assert_eq!(
            bolt11::decode(&flipped).as_ref(),
            Ok(invoice),
            "case changed the decoded invoice"
        );
        // The buyer's check of a seller's invoice reads it without panicking.
        let memo = invoice.description.clone().unwrap_or_default();
        let asked = invoice
            .amount_msat
            .map(|m| i64::try_from(m / 1000).unwrap_or(i64::MAX));
        let _ = crate::check_invoice(text, &memo, asked, Network::Bitcoin, u64::MAX, 0);
    }
    result
}

/// Target `bolt11`. First byte: mode (low 2 bits) and human-readable part (the rest).
/// Mode 0: the rest is invoice text. Mode 1: the rest are data words, checksummed by the
/// harness. Modes 2 and 3: the rest are timestamp and tagged fields, signed by a fixed key
/// and checksummed, so a well-formed invoice decodes and its payee is that key.
pub fn bolt11(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let hrp = HRPS[usize::from(head >> 2) % HRPS.len()];
    match head & 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = decode_checked(text);
            }
        }
        1 => {
            let words: Vec<u8> = rest.iter().map(|b| b & 31).collect();
            let _ = decode_checked(&bech32(hrp, &words));
        }
        _ => {
            let words: Vec<u8> = rest.iter().map(|b| b & 31).collect();
            let Some(sig) = sign(hrp, &words) else {
                return;
            };
            let mut all = words.clone();
            all.extend_from_slice(&sig);
            let text = bech32(hrp, &all);
            match decode_checked(&text) {
                Ok(invoice) => {
                    let has_n = has_field(&words, b'n');
                    if !has_n {
                        assert_eq!(
                            Some(invoice.payee),
                            fixed_payee(),
                            "recovered a wrong payee"
                        );
                    }
                }
                Err(Bolt11Error::BadSignature) => {
                    // Only a payee field naming another key may refuse our signature.
                    assert!(has_field(&words, b'n'), "a correct signature was refused");
                }
                Err(_) => {}
            }
        }
    }
}

/// Whether the data words (timestamp, then tagged fields) hold a field `tag` that the
/// decoder would take as the payee key.
fn has_field(words: &[u8], tag: u8) -> bool {
    let Some(mut fields) = words.get(7..) else {
        return false;
    };
    while let [t, hi, lo, rest @ ..] = fields {
        let len = usize::from(*hi) * 32 + usize::from(*lo);
        if CHARSET.get(usize::from(*t)) == Some(&tag) && len == 53 {
            return true;
        }
        fields = rest.get(len..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    /// Every file of `fuzz/corpus/bolt11` runs through the target (as `cargo fuzz run`
    /// would replay it), so a fixed crash stays fixed.
    #[test]
    fn corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/bolt11");
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            super::bolt11(&data);
            count += 1;
        }
        assert!(count > 0, "corpus {} is empty", dir.display());
    }
}
