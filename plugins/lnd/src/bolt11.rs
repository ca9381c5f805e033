//! A BOLT #11 Lightning invoice decoder: bech32 (without BIP-173's 90-character limit),
//! the human-readable part (`ln` + network + optional amount), the timestamp, the
//! tagged fields this plugin needs, and the secp256k1 signature, checked by recovering
//! the payee's public key (or against the `n` field when there is one).
//!
//! Every malformed input is a [`Bolt11Error`]; the input length is bounded by
//! [`MAX_LEN`]; no input makes it panic. What it does *not* judge: feature bits (`9`),
//! fallback addresses (`f`), route hints (`r`) and metadata (`m`) are read past, not
//! interpreted, and a missing payment secret (`s`) is not refused (the paying wallet
//! does that).

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// Longest invoice accepted, in characters (the most a QR code holds, alphanumeric).
pub const MAX_LEN: usize = 7089;
/// Expiry when the invoice has no `x` field, in seconds.
pub const DEFAULT_EXPIRY: u64 = 3600;
/// `min_final_cltv_expiry_delta` when the invoice has no `c` field.
pub const DEFAULT_MIN_FINAL_CLTV: u64 = 18;

const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
/// 5-bit words of the 65-byte signature (64-byte R‖S + recovery id).
const SIG_WORDS: usize = 104;
/// 5-bit words of the timestamp.
const TIMESTAMP_WORDS: usize = 7;
/// Millisatoshis in one bitcoin.
const MSAT_PER_BTC: u128 = 100_000_000_000;

/// Why an invoice was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bolt11Error {
    #[error("the invoice is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("the invoice has a character outside printable ASCII")]
    InvalidCharacter,
    #[error("the invoice mixes upper and lower case")]
    MixedCase,
    #[error("the invoice has no bech32 separator '1'")]
    NoSeparator,
    #[error("the invoice's data part has a character outside the bech32 alphabet")]
    InvalidDataCharacter,
    #[error("the invoice's bech32 checksum is wrong")]
    BadChecksum,
    #[error("the invoice does not start with 'ln'")]
    NotLightning,
    #[error("the invoice's network prefix is unknown")]
    UnknownNetwork,
    #[error("the invoice's amount is malformed")]
    InvalidAmount,
    #[error("the invoice's amount multiplier is not m, u, n or p")]
    InvalidMultiplier,
    #[error("the invoice's amount is not a whole number of millisatoshis")]
    SubMillisatoshi,
    #[error("the invoice's amount is too large")]
    AmountTooLarge,
    #[error("the invoice is too short to hold a timestamp and a signature")]
    TooShort,
    #[error("a tagged field runs past the end of the invoice")]
    TruncatedField,
    #[error("the invoice's description is not UTF-8")]
    InvalidDescription,
    #[error("the invoice has neither a description nor a description hash")]
    NoDescription,
    #[error("the invoice has both a description and a description hash")]
    BothDescriptions,
    #[error("the invoice has no payment hash")]
    NoPaymentHash,
    #[error("a number in the invoice (expiry or cltv) is too large")]
    NumberTooLarge,
    #[error("the invoice's payee key (n) is not a valid public key")]
    InvalidPayeeKey,
    #[error("the invoice's signature is malformed")]
    InvalidSignature,
    #[error("the invoice's signature recovery id is not 0..3")]
    InvalidRecoveryId,
    #[error("the invoice's signature does not verify")]
    BadSignature,
}

/// The chain an invoice is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `lnbc`
    Bitcoin,
    /// `lntb`
    Testnet,
    /// `lnbcrt`
    Regtest,
    /// `lntbs`
    Signet,
    /// `lnsb`
    Simnet,
}

impl Network {
    /// The BIP-173 currency prefix after `ln`.
    pub fn prefix(self) -> &'static str {
        match self {
            Network::Bitcoin => "bc",
            Network::Testnet => "tb",
            Network::Regtest => "bcrt",
            Network::Signet => "tbs",
            Network::Simnet => "sb",
        }
    }

    /// From LND's network names (`mainnet`, `testnet`, `regtest`, `signet`, `simnet`).
    pub fn from_name(name: &str) -> Option<Network> {
        Some(match name {
            "mainnet" => Network::Bitcoin,
            "testnet" => Network::Testnet,
            "regtest" => Network::Regtest,
            "signet" => Network::Signet,
            "simnet" => Network::Simnet,
            _ => return None,
        })
    }
}

/// A decoded invoice whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub network: Network,
    /// The amount in millisatoshis; `None` for an "any amount" invoice.
    pub amount_msat: Option<u64>,
    /// Creation time, seconds since 1970.
    pub timestamp: u64,
    /// Seconds after `timestamp` the invoice stays payable.
    pub expiry: u64,
    pub description: Option<String>,
    pub description_hash: Option<[u8; 32]>,
    pub payment_hash: [u8; 32],
    pub payment_secret: Option<[u8; 32]>,
    pub min_final_cltv_expiry: u64,
    /// The payee node's compressed public key (from `n`, or recovered from the signature).
    pub payee: [u8; 33],
}

impl Invoice {
    /// When the invoice stops being payable, seconds since 1970.
    pub fn expires_at(&self) -> u64 {
        self.timestamp.saturating_add(self.expiry)
    }

    /// Whether the invoice has expired at `now` (seconds since 1970).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at() <= now
    }
}

/// The bech32 checksum function (BIP-173).
pub(crate) fn polymod(values: impl Iterator<Item = u8>) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk: u32 = 1;
    for v in values {
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

/// The human-readable part as the checksum reads it (BIP-173).
pub(crate) fn hrp_expand(hrp: &[u8]) -> impl Iterator<Item = u8> + '_ {
    hrp.iter()
        .map(|c| c >> 5)
        .chain(std::iter::once(0))
        .chain(hrp.iter().map(|c| c & 31))
}

/// Bech32 (BIP-173 checksum, no length limit but [`MAX_LEN`]): the lowercase
/// human-readable part and the data words without the checksum.
fn bech32_decode(s: &str) -> Result<(String, Vec<u8>), Bolt11Error> {
    if s.len() > MAX_LEN {
        return Err(Bolt11Error::TooLong);
    }
    if !s.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(Bolt11Error::InvalidCharacter);
    }
    let has_lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = s.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper {
        return Err(Bolt11Error::MixedCase);
    }
    let s = s.to_ascii_lowercase();
    let sep = s.rfind('1').ok_or(Bolt11Error::NoSeparator)?;
    let (hrp, data) = (&s[..sep], &s[sep + 1..]);
    if hrp.is_empty() {
        return Err(Bolt11Error::NoSeparator);
    }
    if data.len() < 6 {
        return Err(Bolt11Error::TooShort);
    }
    let words = data
        .bytes()
        .map(|c| {
            CHARSET
                .iter()
                .position(|&x| x == c)
                .map(|p| p as u8)
                .ok_or(Bolt11Error::InvalidDataCharacter)
        })
        .collect::<Result<Vec<u8>, _>>()?;
    if polymod(hrp_expand(hrp.as_bytes()).chain(words.iter().copied())) != 1 {
        return Err(Bolt11Error::BadChecksum);
    }
    let n = words.len() - 6;
    Ok((hrp.to_owned(), words[..n].to_vec()))
}

/// 5-bit words to bytes; trailing bits that do not fill a byte are dropped when `pad`
/// is false and zero-padded into a last byte when it is true.
pub(crate) fn words_to_bytes(words: &[u8], pad: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 5 / 8 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &w in words {
        acc = (acc << 5) | u32::from(w & 31);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if pad && bits > 0 {
        out.push((acc << (8 - bits)) as u8);
    }
    out
}

/// Big-endian number from 5-bit words; `None` past 64 bits.
fn words_to_u64(words: &[u8]) -> Option<u64> {
    words.iter().try_fold(0u64, |acc, &w| {
        if acc >> 59 != 0 {
            None
        } else {
            Some((acc << 5) | u64::from(w))
        }
    })
}

/// `ln` + network + amount.
fn parse_hrp(hrp: &str) -> Result<(Network, Option<u64>), Bolt11Error> {
    let rest = hrp.strip_prefix("ln").ok_or(Bolt11Error::NotLightning)?;
    // Longest prefix first: `bcrt` before `bc`, `tbs` before `tb`.
    let network = [
        Network::Regtest,
        Network::Signet,
        Network::Bitcoin,
        Network::Testnet,
        Network::Simnet,
    ]
    .into_iter()
    .find(|n| {
        rest.strip_prefix(n.prefix())
            .is_some_and(|a| a.is_empty() || a.starts_with(|c: char| c.is_ascii_digit()))
    })
    .ok_or(Bolt11Error::UnknownNetwork)?;
    let amount = &rest[network.prefix().len()..];
    if amount.is_empty() {
        return Ok((network, None));
    }
    let (digits, multiplier) = match amount.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&amount[..i], Some(c)),
        _ => (amount, None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return Err(Bolt11Error::InvalidAmount);
    }
    if digits.len() > 20 {
        return Err(Bolt11Error::AmountTooLarge);
    }
    let n: u128 = digits.parse().map_err(|_| Bolt11Error::InvalidAmount)?;
    let msat = match multiplier {
        None => n.checked_mul(MSAT_PER_BTC),
        Some('m') => n.checked_mul(MSAT_PER_BTC / 1_000),
        Some('u') => n.checked_mul(MSAT_PER_BTC / 1_000_000),
        Some('n') => n.checked_mul(MSAT_PER_BTC / 1_000_000_000),
        Some('p') => {
            // 10 pico-bitcoin is one millisatoshi: a last digit other than 0 is less.
            // (`is_multiple_of` is newer than the workspace's rust-version.)
            let msat = n / 10;
            if msat * 10 != n {
                return Err(Bolt11Error::SubMillisatoshi);
            }
            Some(msat)
        }
        Some(_) => return Err(Bolt11Error::InvalidMultiplier),
    };
    let msat = msat
        .and_then(|m| u64::try_from(m).ok())
        .ok_or(Bolt11Error::AmountTooLarge)?;
    if msat == 0 {
        return Err(Bolt11Error::InvalidAmount);
    }
    Ok((network, Some(msat)))
}

fn array32(words: &[u8]) -> [u8; 32] {
    let bytes = words_to_bytes(words, false);
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b;
    }
    out
}

/// Decodes and checks a BOLT #11 invoice (either case).
pub fn decode(invoice: &str) -> Result<Invoice, Bolt11Error> {
    let (hrp, words) = bech32_decode(invoice.trim())?;
    let (network, amount_msat) = parse_hrp(&hrp)?;
    if words.len() < TIMESTAMP_WORDS + SIG_WORDS {
        return Err(Bolt11Error::TooShort);
    }
    let (signed, sig_words) = words.split_at(words.len() - SIG_WORDS);
    let timestamp = words_to_u64(&signed[..TIMESTAMP_WORDS]).ok_or(Bolt11Error::TooShort)?;

    let mut description = None;
    let mut description_hash = None;
    let mut payment_hash = None;
    let mut payment_secret = None;
    let mut payee_field = None;
    let mut expiry = None;
    let mut cltv = None;
    let mut fields = &signed[TIMESTAMP_WORDS..];
    while !fields.is_empty() {
        let [tag, hi, lo, rest @ ..] = fields else {
            return Err(Bolt11Error::TruncatedField);
        };
        let len = usize::from(*hi) * 32 + usize::from(*lo);
        if rest.len() < len {
            return Err(Bolt11Error::TruncatedField);
        }
        let (data, next) = rest.split_at(len);
        fields = next;
        // The first well-formed field of a kind is the preferred one; fields of a fixed
        // size with another length are skipped, as the spec's examples do.
        match CHARSET.get(usize::from(*tag)).copied().map(char::from) {
            Some('p') if len == 52 && payment_hash.is_none() => payment_hash = Some(array32(data)),
            Some('s') if len == 52 && payment_secret.is_none() => {
                payment_secret = Some(array32(data))
            }
            Some('h') if len == 52 && description_hash.is_none() => {
                description_hash = Some(array32(data))
            }
            Some('n') if len == 53 && payee_field.is_none() => {
                let bytes = words_to_bytes(data, false);
                let key = VerifyingKey::from_sec1_bytes(&bytes)
                    .map_err(|_| Bolt11Error::InvalidPayeeKey)?;
                payee_field = Some(key);
            }
            Some('d') if description.is_none() => {
                let text = String::from_utf8(words_to_bytes(data, false))
                    .map_err(|_| Bolt11Error::InvalidDescription)?;
                description = Some(text);
            }
            Some('x') if expiry.is_none() => {
                expiry = Some(words_to_u64(data).ok_or(Bolt11Error::NumberTooLarge)?)
            }
            Some('c') if cltv.is_none() => {
                cltv = Some(words_to_u64(data).ok_or(Bolt11Error::NumberTooLarge)?)
            }
            // f (fallback), r (route hints), 9 (features), m (metadata), repeats and
            // unknown tags: read past.
            _ => {}
        }
    }
    match (&description, &description_hash) {
        (None, None) => return Err(Bolt11Error::NoDescription),
        (Some(_), Some(_)) => return Err(Bolt11Error::BothDescriptions),
        _ => {}
    }
    let payment_hash = payment_hash.ok_or(Bolt11Error::NoPaymentHash)?;

    // The signature: over sha256(hrp ‖ data words packed to bytes, zero-padded).
    let sig_bytes = words_to_bytes(sig_words, false);
    let (rs, recid) = match sig_bytes.split_at_checked(64) {
        Some((rs, [recid])) => (rs, *recid),
        _ => return Err(Bolt11Error::InvalidSignature),
    };
    let mut hasher = Sha256::new();
    hasher.update(hrp.as_bytes());
    hasher.update(words_to_bytes(signed, true));
    let digest = hasher.finalize();
    let signature = Signature::from_slice(rs).map_err(|_| Bolt11Error::InvalidSignature)?;
    let payee = match payee_field {
        // With `n`: verify against it; a high-S signature is refused.
        Some(key) => {
            key.verify_prehash_low_s(&digest, &signature)?;
            key
        }
        // Without: recover, accepting high S (normalised, with the parity flipped).
        None => {
            let recid = RecoveryId::from_byte(recid).ok_or(Bolt11Error::InvalidRecoveryId)?;
            let (signature, recid) = match signature.normalize_s() {
                Some(low) => (
                    low,
                    RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced()),
                ),
                None => (signature, recid),
            };
            VerifyingKey::recover_from_prehash(&digest, &signature, recid)
                .map_err(|_| Bolt11Error::BadSignature)?
        }
    };
    let point = payee.to_encoded_point(true);
    let payee: [u8; 33] = point
        .as_bytes()
        .try_into()
        .map_err(|_| Bolt11Error::InvalidPayeeKey)?;
    Ok(Invoice {
        network,
        amount_msat,
        timestamp,
        expiry: expiry.unwrap_or(DEFAULT_EXPIRY),
        description,
        description_hash,
        payment_hash,
        payment_secret,
        min_final_cltv_expiry: cltv.unwrap_or(DEFAULT_MIN_FINAL_CLTV),
        payee,
    })
}

trait VerifyLowS {
    fn verify_prehash_low_s(&self, digest: &[u8], sig: &Signature) -> Result<(), Bolt11Error>;
}

impl VerifyLowS for VerifyingKey {
    fn verify_prehash_low_s(&self, digest: &[u8], sig: &Signature) -> Result<(), Bolt11Error> {
        use k256::ecdsa::signature::hazmat::PrehashVerifier;
        if sig.normalize_s().is_some() {
            return Err(Bolt11Error::BadSignature);
        }
        self.verify_prehash(digest, sig)
            .map_err(|_| Bolt11Error::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_encoder::{encode, public_key, spec_key, Describe, InvoiceSpec};
    use proptest::prelude::*;

    /// The examples of BOLT #11 (lightning/bolts `11-payment-encoding.md`).
    const DONATION: &str = "lnbc1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaq9qrsgq357wnc5r2ueh7ck6q93dj32dlqnls087fxdwk8qakdyafkq3yap9us6v52vjjsrvywa6rt52cm9r9zqt8r2t7mlcwspyetp5h2tztugp9lfyql";
    const COFFEE: &str = "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy8j9vdx85fkpmdla2087ne0xh8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vgpfna3rh";
    const NONSENSE: &str = "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpu9qrsgqhtjpauu9ur7fw2thcl4y9vfvh4m9wlfyz2gem29g5ghe2aak2pm3ps8fdhtceqsaagty2vph7utlgj48u0ged6a337aewvraedendscp573dxr";
    const HASHED_20M: &str = "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqs9qrsgq7ea976txfraylvgzuxs8kgcw23ezlrszfnh8r6qtfpr6cxga50aj6txm9rxrydzd06dfeawfk6swupvz4erwnyutnjq7x39ymw6j38gp7ynn44";
    const TESTNET_FALLBACK: &str = "lntb20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqfpp3x9et2e20v6pu37c5d9vax37wxq72un989qrsgqdj545axuxtnfemtpwkc45hx9d2ft7x04mt8q7y6t0k2dge9e7h8kpy9p34ytyslj3yu569aalz2xdk8xkd7ltxqld94u8h2esmsmacgpghe9k8";
    const ROUTES: &str = "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqsfpp3qjmp7lwpagxun9pygexvgpjdc4jdj85fr9yq20q82gphp2nflc7jtzrcazrra7wwgzxqc8u7754cdlpfrmccae92qgzqvzq2ps8pqqqqqqpqqqqq9qqqvpeuqafqxu92d8lr6fvg0r5gv0heeeqgcrqlnm6jhphu9y00rrhy4grqszsvpcgpy9qqqqqqgqqqqq7qqzq9qrsgqdfjcdk6w3ak5pca9hwfwfh63zrrz06wwfya0ydlzpgzxkn5xagsqz7x9j4jwe7yj7vaf2k9lqsdk45kts2fd0fkr28am0u4w95tt2nsq76cqw0";
    const PICO: &str = "lnbc9678785340p1pwmna7lpp5gc3xfm08u9qy06djf8dfflhugl6p7lgza6dsjxq454gxhj9t7a0sd8dgfkx7cmtwd68yetpd5s9xar0wfjn5gpc8qhrsdfq24f5ggrxdaezqsnvda3kkum5wfjkzmfqf3jkgem9wgsyuctwdus9xgrcyqcjcgpzgfskx6eqf9hzqnteypzxz7fzypfhg6trddjhygrcyqezcgpzfysywmm5ypxxjemgw3hxjmn8yptk7untd9hxwg3q2d6xjcmtv4ezq7pqxgsxzmnyyqcjqmt0wfjjq6t5v4khxsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygsxqyjw5qcqp2rzjq0gxwkzc8w6323m55m4jyxcjwmy7stt9hwkwe2qxmy8zpsgg7jcuwz87fcqqeuqqqyqqqqlgqqqqn3qq9q9qrsgqrvgkpnmps664wgkp43l22qsgdw4ve24aca4nymnxddlnp8vh9v2sdxlu5ywdxefsfvm0fq3sesf08uf6q9a2ke0hc9j6z6wlxg5z5kqpu2v9wz";
    const BEANS_UPPER: &str = "LNBC25M1PVJLUEZPP5QQQSYQCYQ5RQWZQFQQQSYQCYQ5RQWZQFQQQSYQCYQ5RQWZQFQYPQDQ5VDHKVEN9V5SXYETPDEESSP5ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYGS9Q5SQQQQQQQQQQQQQQQQSGQ2A25DXL5HRNTDTN6ZVYDT7D66HYZSYHQS4WDYNAVYS42XGL6SGX9C4G7ME86A27T07MDTFRY458RTJR0V92CNMSWPSJSCGT2VCSE3SGPZ3UAPA";
    const BEANS_IGNORED_FIELDS: &str = "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyetpdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q5sqqqqqqqqqqqqqqqqsgq2qrqqqfppnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqppnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqpp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqhpnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqhp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqspnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnp5qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnpkqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqz599y53s3ujmcfjp5xrdap68qxymkqphwsexhmhr8wdz5usdzkzrse33chw6dlp3jhuhge9ley7j2ayx36kawe7kmgg8sv5ugdyusdcqzn8z9x";

    // Invalid examples.
    const BAD_CHECKSUM: &str = "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrnt";
    const NO_SEPARATOR: &str = "pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrny";
    const MIXED_CASE: &str = "LNBC2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrny";
    const NOT_RECOVERABLE: &str = "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqwgt7mcn5yqw3yx0w94pswkpq6j9uh6xfqqqtsk4tnarugeektd4hg5975x9am52rz4qskukxdmjemg92vvqz8nvmsye63r5ykel43pgz7zq0g2";
    const TOO_SHORT: &str = "lnbc1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6na6hlh";
    const BAD_MULTIPLIER: &str = "lnbc2500x1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqrrzc4cvfue4zp3hggxp47ag7xnrlr8vgcmkjxk3j5jqethnumgkpqp23z9jclu3v0a7e0aruz366e9wqdykw6dxhdzcjjhldxq0w6wgqcnu43j";
    const SUB_MSAT: &str = "lnbc2500000001p1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgq0lzc236j96a95uv0m3umg28gclm5lqxtqqwk32uuk4k6673k6n5kfvx3d2h8s295fad45fdhmusm8sjudfhlf6dcsxmfvkeywmjdkxcp99202x";
    const HIGH_S_WITH_N: &str = "lnbc25m1p70xwfzpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaqnp4q0n326hr8v9zprg8gsvezcch06gfaqqhde2aj730yg0durunfhv66sp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygsp5cfzp9ugllvk03rltd6hvndxj26ux6gcxc5azyxk060rj9tzghct5zvjlps76gx8wpq5yuu79688k8gnm2c0al6v608s96l0xzrrlqqwnzxmu";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn payee() -> Vec<u8> {
        h("03e7156ae33b0a208d0744199163177e909e80176e55d97a2f221ede0f934dd9ad")
    }

    fn spec_hash() -> Vec<u8> {
        h("0001020304050607080900010203040506070809000102030405060708090102")
    }

    #[test]
    fn spec_valid_examples() {
        let d = decode(DONATION).unwrap();
        assert_eq!(d.network, Network::Bitcoin);
        assert_eq!(d.amount_msat, None);
        assert_eq!(d.timestamp, 1_496_314_658);
        assert_eq!(d.expiry, 3600);
        assert_eq!(
            d.description.as_deref(),
            Some("Please consider supporting this project")
        );
        assert_eq!(d.description_hash, None);
        assert_eq!(d.payment_hash.to_vec(), spec_hash());
        assert_eq!(d.payment_secret, Some([0x11; 32]));
        assert_eq!(d.payee.to_vec(), payee());
        assert_eq!(d.min_final_cltv_expiry, 18);

        let c = decode(COFFEE).unwrap();
        assert_eq!(c.amount_msat, Some(250_000_000)); // 2500u = 250,000 sat
        assert_eq!(c.description.as_deref(), Some("1 cup coffee"));
        assert_eq!(c.expiry, 60);
        assert_eq!(c.payee.to_vec(), payee());

        let n = decode(NONSENSE).unwrap();
        assert_eq!(n.description.as_deref(), Some("ナンセンス 1杯"));
        assert_eq!(n.amount_msat, Some(250_000_000));
        assert_eq!(n.payee.to_vec(), payee());

        let hashed = decode(HASHED_20M).unwrap();
        assert_eq!(hashed.amount_msat, Some(2_000_000_000)); // 20m = 2,000,000 sat
        assert_eq!(hashed.description, None);
        let long = "One piece of chocolate cake, one icecream cone, one pickle, one slice of swiss cheese, one slice of salami, one lollypop, one piece of cherry pie, one sausage, one cupcake, and one slice of watermelon";
        assert_eq!(
            hashed.description_hash,
            Some(Sha256::digest(long.as_bytes()).into())
        );
        assert_eq!(hashed.payee.to_vec(), payee());

        let t = decode(TESTNET_FALLBACK).unwrap();
        assert_eq!(t.network, Network::Testnet);
        assert_eq!(t.payee.to_vec(), payee());
        let r = decode(ROUTES).unwrap(); // recovery id 0, `r` and `f` read past
        assert_eq!(r.payee.to_vec(), payee());
        assert_eq!(r.payment_hash.to_vec(), spec_hash());

        let p = decode(PICO).unwrap();
        assert_eq!(p.amount_msat, Some(967_878_534));
        assert_eq!(p.timestamp, 1_572_468_703);
        assert_eq!(p.expiry, 604_800);
        assert_eq!(p.min_final_cltv_expiry, 10);
        assert_eq!(p.payee.to_vec(), payee());

        // Upper case, and fields of the wrong length that must be ignored.
        let upper = decode(BEANS_UPPER).unwrap();
        assert_eq!(upper.amount_msat, Some(2_500_000_000));
        assert_eq!(upper.description.as_deref(), Some("coffee beans"));
        let ignored = decode(BEANS_IGNORED_FIELDS).unwrap();
        assert_eq!(ignored.payment_hash.to_vec(), spec_hash());
        assert_eq!(ignored.description.as_deref(), Some("coffee beans"));
        assert_eq!(ignored.description_hash, None);
        assert_eq!(ignored.payment_secret, Some([0x11; 32]));
        assert_eq!(ignored.payee.to_vec(), payee());
    }

    #[test]
    fn spec_invalid_examples() {
        assert_eq!(decode(BAD_CHECKSUM), Err(Bolt11Error::BadChecksum));
        assert_eq!(decode(NO_SEPARATOR), Err(Bolt11Error::NoSeparator));
        assert_eq!(decode(MIXED_CASE), Err(Bolt11Error::MixedCase));
        assert_eq!(decode(TOO_SHORT), Err(Bolt11Error::TooShort));
        assert_eq!(decode(BAD_MULTIPLIER), Err(Bolt11Error::InvalidMultiplier));
        assert_eq!(decode(SUB_MSAT), Err(Bolt11Error::SubMillisatoshi));
        assert!(decode(NOT_RECOVERABLE).is_err());
        assert_eq!(decode(HIGH_S_WITH_N), Err(Bolt11Error::BadSignature));
    }

    #[test]
    fn amounts() {
        let n = |s: &str| parse_hrp(s).map(|(_, a)| a);
        assert_eq!(n("lnbc"), Ok(None));
        assert_eq!(n("lnbc1"), Ok(Some(100_000_000_000)));
        assert_eq!(n("lnbc20m"), Ok(Some(2_000_000_000)));
        assert_eq!(n("lnbc2500u"), Ok(Some(250_000_000)));
        assert_eq!(n("lnbc10n"), Ok(Some(1_000)));
        assert_eq!(n("lnbc10p"), Ok(Some(1)));
        assert_eq!(n("lnbc11p"), Err(Bolt11Error::SubMillisatoshi));
        assert_eq!(n("lnbc0m"), Err(Bolt11Error::InvalidAmount));
        assert_eq!(n("lnbc01m"), Err(Bolt11Error::InvalidAmount));
        assert_eq!(n("lnbcm"), Err(Bolt11Error::UnknownNetwork));
        assert_eq!(n("lnbc1x"), Err(Bolt11Error::InvalidMultiplier));
        assert_eq!(
            n("lnbc99999999999999999999"),
            Err(Bolt11Error::AmountTooLarge)
        );
        assert_eq!(
            n("lnbc999999999999999999999m"),
            Err(Bolt11Error::AmountTooLarge)
        );
        assert_eq!(n("lnxx1m"), Err(Bolt11Error::UnknownNetwork));
        assert_eq!(n("bc1m"), Err(Bolt11Error::NotLightning));
        for (hrp, net) in [
            ("lnbc", Network::Bitcoin),
            ("lntb", Network::Testnet),
            ("lnbcrt5u", Network::Regtest),
            ("lntbs", Network::Signet),
            ("lnsb1n", Network::Simnet),
        ] {
            assert_eq!(parse_hrp(hrp).map(|(n, _)| n), Ok(net), "{hrp}");
        }
    }

    #[test]
    fn the_test_encoder_reproduces_the_spec_examples() {
        // k256 signs deterministically (RFC 6979), as the spec's examples were signed.
        let key = spec_key();
        let hash: [u8; 32] = spec_hash().try_into().unwrap();
        let base = InvoiceSpec {
            prefix: "bc".into(),
            amount_msat: None,
            description: Describe::Text("Please consider supporting this project".into()),
            payment_hash: hash,
            payment_secret: Some([0x11; 32]),
            timestamp: 1_496_314_658,
            expiry: None,
            payee_field: None,
            features: vec![16, 8, 0], // "sgq": bits 8 and 14
        };
        assert_eq!(encode(&base, &key), DONATION);
        let coffee = InvoiceSpec {
            amount_msat: Some(250_000_000),
            description: Describe::Text("1 cup coffee".into()),
            expiry: Some(60),
            ..base.clone()
        };
        assert_eq!(encode(&coffee, &key), COFFEE);
        let long = "One piece of chocolate cake, one icecream cone, one pickle, one slice of swiss cheese, one slice of salami, one lollypop, one piece of cherry pie, one sausage, one cupcake, and one slice of watermelon";
        let hashed = InvoiceSpec {
            amount_msat: Some(2_000_000_000),
            description: Describe::Hash(Sha256::digest(long.as_bytes()).into()),
            ..base
        };
        assert_eq!(encode(&hashed, &key), HASHED_20M);
    }

    #[test]
    fn encoded_invoices_round_trip_and_n_is_checked() {
        let key = spec_key();
        let mut spec = InvoiceSpec::regtest(123_000, "dazaar: aa bb", [7; 32], 1_700_000_000);
        spec.payee_field = Some(public_key(&key));
        let text = encode(&spec, &key);
        assert!(text.starts_with("lnbcrt1230n1"), "{text}");
        let inv = decode(&text).unwrap();
        assert_eq!(inv.network, Network::Regtest);
        assert_eq!(inv.amount_msat, Some(123_000));
        assert_eq!(inv.description.as_deref(), Some("dazaar: aa bb"));
        assert_eq!(inv.payment_hash, [7; 32]);
        assert_eq!(inv.payee.to_vec(), payee());
        assert_eq!(inv.expiry, 86_400);
        assert_eq!(inv.expires_at(), 1_700_086_400);
        assert!(!inv.is_expired(1_700_086_399));
        assert!(inv.is_expired(1_700_086_400));
        // An `n` naming another node than the signer: refused.
        let other = k256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap();
        assert_eq!(
            decode(&encode(&spec, &other)),
            Err(Bolt11Error::BadSignature)
        );
        // An `n` that is not a curve point: refused.
        spec.payee_field = Some([2; 33]);
        let bad = decode(&encode(&spec, &key));
        assert!(bad.is_err(), "{bad:?}");
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let text = encode(
            &InvoiceSpec::regtest(5_000, "x", [1; 32], 1_700_000_000),
            &spec_key(),
        );
        for i in 0..text.len() {
            for c in ['q', 'p', 'z', '0', '1'] {
                let mut s = text.clone().into_bytes();
                if s[i] == c as u8 {
                    continue;
                }
                s[i] = c as u8;
                let s = String::from_utf8(s).unwrap();
                assert!(decode(&s).is_err(), "position {i} -> {c}: {s}");
            }
        }
    }

    #[test]
    fn hostile_inputs() {
        assert_eq!(decode(&"q".repeat(MAX_LEN + 1)), Err(Bolt11Error::TooLong));
        assert_eq!(decode("lnbc1\u{e9}"), Err(Bolt11Error::InvalidCharacter));
        assert_eq!(decode(""), Err(Bolt11Error::NoSeparator));
        assert_eq!(decode("1qqqqqq"), Err(Bolt11Error::NoSeparator));
        assert_eq!(
            decode("lnbc1bqqqqqq"),
            Err(Bolt11Error::InvalidDataCharacter)
        );
        assert_eq!(decode("lnbc1qqqqq"), Err(Bolt11Error::TooShort));
        // A valid checksum around too little data, and around a field running past the end.
        let key = spec_key();
        let mut spec = InvoiceSpec::regtest(1_000, "m", [2; 32], 1);
        spec.description = Describe::Text("é".repeat(300));
        assert!(decode(&encode(&spec, &key)).is_ok());
        spec.description = Describe::Text(String::new());
        assert_eq!(
            decode(&encode(&spec, &key)).unwrap().description.as_deref(),
            Some("")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decode_never_panics(s in "\\PC{0,400}") {
            let _ = decode(&s);
        }

        #[test]
        fn decode_never_panics_on_bech32ish(s in "ln(bc|tb|bcrt|tbs|sb)[0-9]{0,12}[munpx]?1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{0,700}") {
            let _ = decode(&s);
        }

        #[test]
        fn mutated_invoices_never_panic(i in 0usize..400, c in 0u8..32, cut in 0usize..400) {
            let text = encode(&InvoiceSpec::regtest(21_000, "dazaar: mutate", [9; 32], 1_700_000_000), &spec_key());
            let mut b = text.clone().into_bytes();
            let i = i % b.len();
            b[i] = CHARSET[usize::from(c)];
            let s = String::from_utf8(b).unwrap();
            let r = decode(&s);
            if s != text {
                prop_assert!(r.is_err());
            }
            let _ = decode(&text[..cut.min(text.len())]);
        }
    }
}
