//! A BOLT #11 invoice *encoder* for tests: real bech32, real secp256k1 signatures (RFC 6979,
//! low S, recoverable), as LND makes them. The LND plugin's decoder
//! (`dazaar_lnd::bolt11`) reads them back; the plugin's unit tests include this file
//! too (`#[path]`), so it depends only on `k256` and `sha2`.

use k256::ecdsa::SigningKey;
use sha2::{Digest, Sha256};

const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// What the invoice describes the payment with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Describe {
    /// A `d` field.
    Text(String),
    /// An `h` field (the SHA-256 of a longer description).
    Hash([u8; 32]),
}

/// An invoice to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceSpec {
    /// The currency prefix after `ln`: `bc`, `tb`, `bcrt`, `tbs`, `sb`.
    pub prefix: String,
    /// `None`: an "any amount" invoice.
    pub amount_msat: Option<u64>,
    pub description: Describe,
    pub payment_hash: [u8; 32],
    pub payment_secret: Option<[u8; 32]>,
    /// Seconds since 1970 (35 bits).
    pub timestamp: u64,
    /// `None`: no `x` field (readers default to 3600).
    pub expiry: Option<u64>,
    /// A payee key to write in an `n` field (normally [`public_key`] of the signer).
    pub payee_field: Option<[u8; 33]>,
    /// Feature bits as raw 5-bit words for a `9` field (empty: none).
    pub features: Vec<u8>,
}

impl InvoiceSpec {
    /// A regtest invoice like the ones LND makes: amount, memo, hash, secret, expiry.
    pub fn regtest(amount_msat: u64, memo: &str, payment_hash: [u8; 32], timestamp: u64) -> Self {
        InvoiceSpec {
            prefix: "bcrt".into(),
            amount_msat: Some(amount_msat),
            description: Describe::Text(memo.into()),
            payment_hash,
            payment_secret: Some([0x11; 32]),
            timestamp,
            expiry: Some(86_400),
            payee_field: None,
            features: Vec::new(),
        }
    }
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

fn words_to_bytes_padded(words: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &w in words {
        acc = (acc << 5) | u32::from(w);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8);
    }
    out
}

/// A number as the fewest big-endian 5-bit words (at least one).
fn u64_to_words(mut n: u64, min: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while n > 0 || out.len() < min {
        out.push((n & 31) as u8);
        n >>= 5;
    }
    out.reverse();
    out
}

fn push_field(data: &mut Vec<u8>, tag: char, words: &[u8]) {
    let tag = CHARSET
        .iter()
        .position(|&c| c == tag as u8)
        .expect("a bech32 tag") as u8;
    assert!(words.len() < 1024, "field too long");
    data.push(tag);
    data.push((words.len() / 32) as u8);
    data.push((words.len() % 32) as u8);
    data.extend_from_slice(words);
}

fn polymod(values: &[u8]) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk: u32 = 1;
    for &v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

/// The amount part of the human-readable part, largest multiplier first.
fn amount_text(msat: u64) -> String {
    let msat = u128::from(msat);
    for (unit, per) in [
        ("", 100_000_000_000u128),
        ("m", 100_000_000),
        ("u", 100_000),
        ("n", 100),
    ] {
        if msat % per == 0 {
            return format!("{}{unit}", msat / per);
        }
    }
    format!("{}p", msat * 10)
}

/// Encodes and signs the invoice. Fields are written in the order of the BOLT #11
/// examples: `s`, `p`, `d`/`h`, `x`, `n`, `9`.
pub fn encode(spec: &InvoiceSpec, key: &SigningKey) -> String {
    let hrp = format!(
        "ln{}{}",
        spec.prefix,
        spec.amount_msat.map(amount_text).unwrap_or_default()
    );
    let mut data = u64_to_words(spec.timestamp, 7);
    assert_eq!(data.len(), 7, "timestamp over 35 bits");
    if let Some(secret) = &spec.payment_secret {
        push_field(&mut data, 's', &bytes_to_words(secret));
    }
    push_field(&mut data, 'p', &bytes_to_words(&spec.payment_hash));
    match &spec.description {
        Describe::Text(t) => push_field(&mut data, 'd', &bytes_to_words(t.as_bytes())),
        Describe::Hash(h) => push_field(&mut data, 'h', &bytes_to_words(h)),
    }
    if let Some(x) = spec.expiry {
        push_field(&mut data, 'x', &u64_to_words(x, 1));
    }
    if let Some(payee) = &spec.payee_field {
        push_field(&mut data, 'n', &bytes_to_words(payee));
    }
    if !spec.features.is_empty() {
        push_field(&mut data, '9', &spec.features);
    }
    let mut hasher = Sha256::new();
    hasher.update(hrp.as_bytes());
    hasher.update(words_to_bytes_padded(&data));
    let (sig, recid) = key
        .sign_prehash_recoverable(&hasher.finalize())
        .expect("signing a 32-byte digest");
    let mut sig_bytes = sig.to_bytes().to_vec();
    sig_bytes.push(recid.to_byte());
    data.extend(bytes_to_words(&sig_bytes));

    let mut check: Vec<u8> = hrp.bytes().map(|c| c >> 5).collect();
    check.push(0);
    check.extend(hrp.bytes().map(|c| c & 31));
    check.extend_from_slice(&data);
    check.extend_from_slice(&[0; 6]);
    let pm = polymod(&check) ^ 1;
    data.extend((0..6).map(|i| ((pm >> (5 * (5 - i))) & 31) as u8));
    let mut out = hrp;
    out.push('1');
    out.extend(data.iter().map(|&w| CHARSET[usize::from(w)] as char));
    out
}

/// The compressed public key of `key`.
pub fn public_key(key: &SigningKey) -> [u8; 33] {
    let point = key.verifying_key().to_encoded_point(true);
    point.as_bytes().try_into().expect("33 bytes")
}

/// The signing key of the BOLT #11 examples (`e126f68f…b734`).
pub fn spec_key() -> SigningKey {
    let bytes: [u8; 32] = [
        0xe1, 0x26, 0xf6, 0x8f, 0x7e, 0xaf, 0xcc, 0x8b, 0x74, 0xf5, 0x4d, 0x26, 0x9f, 0xe2, 0x06,
        0xbe, 0x71, 0x50, 0x00, 0xf9, 0x4d, 0xac, 0x06, 0x7d, 0x1c, 0x04, 0xa8, 0xca, 0x3b, 0x2d,
        0xb7, 0x34,
    ];
    SigningKey::from_slice(&bytes).expect("a valid secp256k1 key")
}
