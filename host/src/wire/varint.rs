//! Unsigned LEB128 varints as the JS `varint@5` package writes them (protocol v8 lengths,
//! frame headers, extension ids, bitfield RLE records).

/// The longest varint a `u64` needs (10 × 7 bits ≥ 64 bits).
pub const MAX_VARINT_LEN: usize = 10;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarintError {
    /// The input ended before the last byte of the varint (one without the 0x80 bit).
    #[error("varint is truncated")]
    Truncated,
    /// The varint uses more bytes than the caller allows.
    #[error("varint is longer than {max} bytes")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The value does not fit in 64 bits.
    #[error("varint overflows u64")]
    Overflow,
}

/// Number of bytes `encode(value)` writes.
pub fn encoded_len(value: u64) -> usize {
    // One byte per started group of 7 significant bits; zero still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `value` as a varint to `out`.
pub fn encode(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint from the start of `input`; returns the value and the number of bytes used.
pub fn decode(input: &[u8]) -> Result<(u64, usize), VarintError> {
    decode_with_max(input, MAX_VARINT_LEN)
}

/// Like [`decode`], but fails with [`VarintError::TooLong`] if the varint needs more than
/// `max_len` bytes (checked before the input runs out, so a stream of 0x80 bytes is rejected
/// as soon as it is too long rather than waited on).
pub fn decode_with_max(input: &[u8], max_len: usize) -> Result<(u64, usize), VarintError> {
    let max_len = max_len.min(MAX_VARINT_LEN);
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().enumerate() {
        if i >= max_len {
            return Err(VarintError::TooLong { max: max_len });
        }
        let low = u64::from(byte & 0x7f);
        let shift = 7 * i as u32;
        // The 10th byte may only carry the single remaining bit of a u64.
        if i == MAX_VARINT_LEN - 1 && low > 1 {
            return Err(VarintError::Overflow);
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if input.len() >= max_len {
        return Err(VarintError::TooLong { max: max_len });
    }
    Err(VarintError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let cases: &[(u64, &str)] = &[
            (0, "00"),
            (1, "01"),
            (127, "7f"),
            (128, "8001"),
            (300, "ac02"),
            (1_048_576, "808040"),
            (u64::MAX, "ffffffffffffffffff01"),
        ];
        for &(value, hex_str) in cases {
            let mut out = Vec::new();
            encode(value, &mut out);
            assert_eq!(hex::encode(&out), hex_str);
            assert_eq!(encoded_len(value), out.len());
            assert_eq!(decode(&out), Ok((value, out.len())));
        }
    }

    #[test]
    fn errors() {
        assert_eq!(decode(&[]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(
            decode(&[0xff; 10]),
            Err(VarintError::Overflow),
            "10th byte with more than one bit"
        );
        assert_eq!(decode(&[0x80; 11]), Err(VarintError::TooLong { max: 10 }));
        assert_eq!(
            decode_with_max(&[0x80, 0x80, 0x80], 2),
            Err(VarintError::TooLong { max: 2 })
        );
        assert_eq!(
            decode_with_max(&[0x80, 0x80], 2),
            Err(VarintError::TooLong { max: 2 })
        );
        assert_eq!(decode_with_max(&[0x80, 0x01], 2), Ok((128, 2)));
    }

    proptest! {
        #[test]
        fn round_trip(value: u64) {
            let mut out = Vec::new();
            encode(value, &mut out);
            prop_assert_eq!(decode(&out), Ok((value, out.len())));
        }

        #[test]
        fn never_panics(bytes: Vec<u8>, max in 0usize..12) {
            let _ = decode_with_max(&bytes, max);
        }
    }
}
