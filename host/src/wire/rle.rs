//! Bitfield run-length encoding exactly as `bitfield-rle@2.2.1` (used in `Have.bitfield`).
//!
//! A sequence of records: `varint(2n) ‖ n raw bytes` (literal) or `varint(4n + 2b + 1)`
//! (`n` bytes of `0xFF` if `b = 1`, else `0x00`). The encoder drops trailing zero bytes and
//! only turns a run into a run record when that is strictly cheaper than leaving it in the
//! surrounding literal, which is what makes its output byte-identical to JS.

use super::varint::{self, VarintError};

/// Why an RLE bitfield could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RleError {
    /// A record header is not a valid varint.
    #[error("invalid RLE record header: {0}")]
    Varint(VarintError),
    /// A literal record runs past the end of the input ("Invalid RLE bitfield" in JS).
    #[error("RLE literal runs past the end of the input")]
    Truncated,
    /// The decoded bitfield would exceed the caller's limit.
    #[error("decoded RLE bitfield exceeds {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
}

/// Encodes `bitfield` like JS `rle.encode`.
pub fn encode(bitfield: &[u8]) -> Vec<u8> {
    let mut enc = Encoder {
        input: trim_trailing_zeros(bitfield),
        input_offset: 0,
        out: Vec::new(),
    };
    enc.run();
    enc.out
}

fn trim_trailing_zeros(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

struct Encoder<'a> {
    input: &'a [u8],
    input_offset: usize,
    out: Vec<u8>,
}

impl Encoder<'_> {
    fn run(&mut self) {
        // Mirrors the JS loop: `bits` is the byte value of the current run (initially 0x00)
        // and `len` its length; a byte that is neither 0x00 nor 0xFF resets `len` to 0 but
        // keeps `bits`, so a following byte equal to `bits` starts a new run of that value.
        let mut len = 0usize;
        let mut bits = 0u8;
        for (i, &byte) in self.input.iter().enumerate() {
            if byte == bits {
                len += 1;
                continue;
            }
            if len > 0 {
                self.update(i, len, bits);
            }
            if byte == 0 || byte == 0xff {
                bits = byte;
                len = 1;
            } else {
                len = 0;
            }
        }
        if len > 0 {
            self.update(self.input.len(), len, bits);
        }
        self.finish();
    }

    fn head(&mut self, end: usize) {
        let head = self.input.get(self.input_offset..end).unwrap_or_default();
        varint::encode(2 * head.len() as u64, &mut self.out);
        self.out.extend_from_slice(head);
    }

    fn finish(&mut self) {
        if self.input.len() > self.input_offset {
            self.head(self.input.len());
            self.input_offset = self.input.len();
        }
    }

    /// A run of `len` bytes of `bits` ends before position `i`.
    fn update(&mut self, i: usize, len: usize, bits: u8) {
        let head_len = i - len - self.input_offset;
        let head_cost = if head_len > 0 {
            varint::encoded_len(2 * head_len as u64) + head_len
        } else {
            0
        };
        let record = 4 * len as u64 + if bits != 0 { 2 } else { 0 } + 1;
        let enc_cost = head_cost + varint::encoded_len(record);
        let literal = i - self.input_offset;
        let base_cost = varint::encoded_len(2 * literal as u64) + literal;
        if enc_cost >= base_cost {
            return;
        }
        if head_len > 0 {
            self.head(i - len);
        }
        varint::encode(record, &mut self.out);
        self.input_offset = i;
    }
}

/// Decodes an RLE bitfield, zero-padding the result to a multiple of `align` bytes
/// (hypercore uses `align(4)`; pass 1 for none). Fails if the result would exceed `max_len`
/// bytes, so that a tiny record like "2^60 bytes of 0xFF" cannot allocate.
pub fn decode(input: &[u8], align: usize, max_len: usize) -> Result<Vec<u8>, RleError> {
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (next, used) = varint::decode(rest).map_err(RleError::Varint)?;
        rest = rest.get(used..).unwrap_or_default();
        let repeat = next & 1 == 1;
        let len = if repeat { next >> 2 } else { next >> 1 };
        let len = usize::try_from(len).map_err(|_| RleError::TooLarge { max: max_len })?;
        let total = out
            .len()
            .checked_add(len)
            .filter(|&t| t <= max_len)
            .ok_or(RleError::TooLarge { max: max_len })?;
        if repeat {
            let fill = if next & 2 != 0 { 0xff } else { 0 };
            out.resize(total, fill);
        } else {
            let literal = rest.get(..len).ok_or(RleError::Truncated)?;
            out.extend_from_slice(literal);
            rest = rest.get(len..).unwrap_or_default();
        }
    }
    let align = align.max(1);
    let padded = out.len().div_ceil(align).saturating_mul(align);
    if padded > max_len {
        return Err(RleError::TooLarge { max: max_len });
    }
    out.resize(padded, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_examples() {
        assert_eq!(hex::encode(encode(&[0xf8])), "02f8");
        assert_eq!(hex::encode(encode(&[0xc0])), "02c0");
        assert_eq!(hex::encode(encode(&[0xe0, 0, 0, 0])), "02e0");
        assert_eq!(encode(&[]), Vec::<u8>::new());
        assert_eq!(encode(&[0, 0]), Vec::<u8>::new());
    }

    #[test]
    fn runs_only_when_cheaper() {
        // 1 KiB of 0xFF: one run record 4*1024+2+1 = 4099 → varint 8320.
        assert_eq!(hex::encode(encode(&[0xff; 1024])), "8320");
        // Two 0xFF bytes: the run record (1 B) is cheaper than the literal (3 B).
        assert_eq!(hex::encode(encode(&[0xff, 0xff])), "0b");
        // A short run inside a literal stays in the literal.
        assert_eq!(hex::encode(encode(&[0x01, 0xff, 0x01])), "0601ff01");
        // Zero run between literals: 01 then 8 zeros then 01.
        let mut v = vec![1u8];
        v.extend([0u8; 8]);
        v.push(1);
        assert_eq!(hex::encode(encode(&v)), "0201210201");
    }

    #[test]
    fn decode_errors_and_alignment() {
        assert_eq!(
            decode(&hex::decode("02f8").unwrap(), 4, 1024).unwrap(),
            vec![0xf8, 0, 0, 0]
        );
        assert_eq!(decode(&[], 4, 16).unwrap(), Vec::<u8>::new());
        assert_eq!(decode(&[0x04, 0x01], 1, 16), Err(RleError::Truncated));
        assert_eq!(
            decode(&[0x80], 1, 16),
            Err(RleError::Varint(VarintError::Truncated))
        );
        // A run of 2^40 bytes must not allocate.
        let mut huge = Vec::new();
        varint::encode((1u64 << 42) | 3, &mut huge);
        assert_eq!(
            decode(&huge, 1, 1 << 20),
            Err(RleError::TooLarge { max: 1 << 20 })
        );
    }

    proptest! {
        #[test]
        fn round_trip(bits in proptest::collection::vec(prop_oneof![Just(0u8), Just(0xffu8), any::<u8>()], 0..300)) {
            let encoded = encode(&bits);
            let decoded = decode(&encoded, 1, 1 << 20).unwrap();
            prop_assert_eq!(decoded.as_slice(), trim_trailing_zeros(&bits));
        }

        #[test]
        fn decode_never_panics(bytes: Vec<u8>, align in 0usize..9) {
            let _ = decode(&bytes, align, 4096);
        }
    }
}
