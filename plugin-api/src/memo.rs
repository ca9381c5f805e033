//! The memo that binds a payment to one buyer of one product.
//!
//! Every JS payment provider writes the same text into the invoice description or
//! transfer memo: `dazaar: <sellerKeyHex> <buyerKeyHex>` (lowercase hex, single spaces).

/// A 32-byte public key.
pub type Key = [u8; 32];

/// The memo binding a payment to `buyer` for the product sold under `seller`.
pub fn payment_memo(seller: &Key, buyer: &Key) -> String {
    format!("dazaar: {} {}", hex::encode(seller), hex::encode(buyer))
}

/// Reads a memo back into (seller, buyer), if it has exactly the expected shape.
pub fn parse_payment_memo(memo: &str) -> Option<(Key, Key)> {
    let rest = memo.strip_prefix("dazaar: ")?;
    let (seller, buyer) = rest.split_once(' ')?;
    Some((parse_key(seller)?, parse_key(buyer)?))
}

/// Parses 64 lowercase or uppercase hex characters into a key.
pub fn parse_key(text: &str) -> Option<Key> {
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_shape() {
        let seller = [0xab; 32];
        let buyer = [0x01; 32];
        let memo = payment_memo(&seller, &buyer);
        assert_eq!(
            memo,
            format!("dazaar: {} {}", "ab".repeat(32), "01".repeat(32))
        );
        assert_eq!(parse_payment_memo(&memo), Some((seller, buyer)));
        assert_eq!(parse_payment_memo("dazaar:  x"), None);
        assert_eq!(parse_payment_memo(&memo[..memo.len() - 1]), None);
    }
}
