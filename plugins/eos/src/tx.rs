//! Antelope transaction serialization, for the one transaction the buyer side makes: an
//! `eosio.token::transfer`.
//!
//! Layout (all integers little-endian; `varuint32` is LEB128):
//! ```text
//! transaction   = expiration u32 (seconds since the epoch)
//!                 ref_block_num u16 ‖ ref_block_prefix u32
//!                 max_net_usage_words varuint32 ‖ max_cpu_usage_ms u8 ‖ delay_sec varuint32
//!                 context_free_actions: varuint32 count ‖ action*
//!                 actions:              varuint32 count ‖ action*
//!                 transaction_extensions: varuint32 count (0 here)
//! action        = account name(u64) ‖ name name(u64)
//!                 authorization: varuint32 count ‖ (actor u64 ‖ permission u64)*
//!                 data: varuint32 length ‖ bytes
//! transfer data = from u64 ‖ to u64 ‖ quantity asset ‖ memo (varuint32 length ‖ UTF-8)
//! asset         = amount i64 ‖ symbol u64 (precision byte ‖ up to 7 code bytes, 0-padded)
//! ```
//! The transaction id is sha256 of these bytes.

use sha2::{Digest, Sha256};

use crate::chain::Asset;

/// Why a value cannot be serialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// Not an Antelope name.
    #[error("{0:?} is not an account or action name")]
    Name(String),
    /// A symbol code that is not 1–7 uppercase letters, or a precision above 18.
    #[error("{0:?} is not a token symbol")]
    Symbol(String),
    /// Longer than a varuint32 length allows.
    #[error("the memo is too long")]
    TooLong,
}

/// Encodes an Antelope name (`a-z`, `1-5`, `.`, up to 12 characters, or 13 when the
/// last is within `a-j`/`1-5`/`.`) into its u64.
pub fn name_to_u64(name: &str) -> Result<u64, TxError> {
    let bad = || TxError::Name(name.chars().take(20).collect());
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 13 {
        return Err(bad());
    }
    let mut value = 0u64;
    for (i, &c) in bytes.iter().enumerate() {
        let sym = match c {
            b'a'..=b'z' => u64::from(c - b'a') + 6,
            b'1'..=b'5' => u64::from(c - b'1') + 1,
            b'.' => 0,
            _ => return Err(bad()),
        };
        if i < 12 {
            value |= (sym & 0x1f) << (64 - 5 * (i + 1));
        } else {
            if sym > 0x0f {
                return Err(bad());
            }
            value |= sym;
        }
    }
    Ok(value)
}

/// A byte writer for the types above.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// `u8`.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// `u16` LE.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// `u32` LE.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// `u64` LE.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// `i64` LE.
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// LEB128 `varuint32`.
    pub fn varuint32(&mut self, mut v: u32) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), TxError> {
        self.varuint32(u32::try_from(b.len()).map_err(|_| TxError::TooLong)?);
        self.0.extend_from_slice(b);
        Ok(())
    }
    /// A name.
    pub fn name(&mut self, n: &str) -> Result<(), TxError> {
        self.u64(name_to_u64(n)?);
        Ok(())
    }
    /// An asset.
    pub fn asset(&mut self, a: &Asset) -> Result<(), TxError> {
        let code = a.symbol.as_bytes();
        if code.is_empty()
            || code.len() > 7
            || !code.iter().all(u8::is_ascii_uppercase)
            || a.precision > 18
        {
            return Err(TxError::Symbol(a.symbol.chars().take(10).collect()));
        }
        self.i64(a.units);
        let mut sym = [0u8; 8];
        sym[0] = a.precision as u8;
        sym[1..=code.len()].copy_from_slice(code);
        self.0.extend_from_slice(&sym);
        Ok(())
    }
}

/// `actor@permission`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The account.
    pub actor: String,
    /// Its permission (`active`).
    pub permission: String,
}

/// An action with its data already serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The contract.
    pub account: String,
    /// The action name.
    pub name: String,
    /// Who authorizes it.
    pub authorization: Vec<Authorization>,
    /// The serialized action data.
    pub data: Vec<u8>,
}

impl Action {
    /// A `transfer` of `contract`, authorized by `from@permission`.
    pub fn transfer(
        contract: &str,
        permission: &str,
        from: &str,
        to: &str,
        quantity: &Asset,
        memo: &str,
    ) -> Result<Action, TxError> {
        let mut w = Writer::default();
        w.name(from)?;
        w.name(to)?;
        w.asset(quantity)?;
        w.bytes(memo.as_bytes())?;
        Ok(Action {
            account: contract.to_owned(),
            name: "transfer".to_owned(),
            authorization: vec![Authorization {
                actor: from.to_owned(),
                permission: permission.to_owned(),
            }],
            data: w.0,
        })
    }

    fn write(&self, w: &mut Writer) -> Result<(), TxError> {
        w.name(&self.account)?;
        w.name(&self.name)?;
        w.varuint32(u32::try_from(self.authorization.len()).map_err(|_| TxError::TooLong)?);
        for a in &self.authorization {
            w.name(&a.actor)?;
            w.name(&a.permission)?;
        }
        w.bytes(&self.data)
    }
}

/// A transaction (no context-free actions, no extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Seconds since the epoch after which the chain refuses it.
    pub expiration: u32,
    /// Low 16 bits of the reference block's number.
    pub ref_block_num: u16,
    /// Bytes 8..12 of the reference block's id, as a u32 LE.
    pub ref_block_prefix: u32,
    /// 0 = no limit beyond the chain's.
    pub max_net_usage_words: u32,
    /// 0 = no limit beyond the chain's.
    pub max_cpu_usage_ms: u8,
    /// Delay before it runs.
    pub delay_sec: u32,
    /// The actions.
    pub actions: Vec<Action>,
}

impl Transaction {
    /// The serialized bytes (`packed_trx`).
    pub fn pack(&self) -> Result<Vec<u8>, TxError> {
        let mut w = Writer::default();
        w.u32(self.expiration);
        w.u16(self.ref_block_num);
        w.u32(self.ref_block_prefix);
        w.varuint32(self.max_net_usage_words);
        w.u8(self.max_cpu_usage_ms);
        w.varuint32(self.delay_sec);
        w.varuint32(0); // context_free_actions
        w.varuint32(u32::try_from(self.actions.len()).map_err(|_| TxError::TooLong)?);
        for a in &self.actions {
            a.write(&mut w)?;
        }
        w.varuint32(0); // transaction_extensions
        Ok(w.0)
    }
}

/// The transaction id of packed bytes: sha256, hex.
pub fn transaction_id(packed: &[u8]) -> String {
    hex::encode(Sha256::digest(packed))
}

/// `ref_block_num` and `ref_block_prefix` from a block's number and id (hex).
pub fn ref_block(block_num: u64, block_id: &str) -> Option<(u16, u32)> {
    let id = hex::decode(block_id).ok()?;
    if id.len() != 32 {
        return None;
    }
    let prefix = u32::from_le_bytes(id.get(8..12)?.try_into().ok()?);
    Some(((block_num & 0xffff) as u16, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{signing_digest, PrivateKey};

    #[test]
    fn names() {
        // eosio.token and transfer, as every nodeos ABI dump shows them.
        assert_eq!(name_to_u64("eosio.token").unwrap(), 0x5530_ea03_3482_a600);
        assert_eq!(name_to_u64("transfer").unwrap(), 0xcdcd_3c2d_5700_0000);
        assert_eq!(name_to_u64("eosio").unwrap(), 0x5530_ea00_0000_0000);
        assert_eq!(name_to_u64("active").unwrap(), 0x3232_eda8_0000_0000);
        for bad in ["", "Alice", "bad6", "toolongaccountz", "a b"] {
            assert!(name_to_u64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn varuints() {
        for (v, want) in [
            (0u32, &[0x00][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut w = Writer::default();
            w.varuint32(v);
            assert_eq!(w.0, want, "{v}");
        }
    }

    /// A transfer packed and signed by eosjs 22.1.0 (`Api.transact` with the
    /// `eosio.token` transfer ABI, `broadcast: false`), byte for byte.
    #[test]
    fn transfer_matches_eosjs() {
        let quantity = Asset::parse("1.2500 EOS").unwrap();
        let action = Action::transfer(
            "eosio.token",
            "active",
            "alice",
            "dazaarseller",
            &quantity,
            "dazaar: 5e5e b0b0",
        )
        .unwrap();
        let trx = Transaction {
            expiration: 1_795_701_660, // 2026-11-26T14:01:00
            ref_block_num: 0x1234,
            ref_block_prefix: 0x89ab_cdef,
            max_net_usage_words: 0,
            max_cpu_usage_ms: 0,
            delay_sec: 0,
            actions: vec![action],
        };
        let packed = trx.pack().unwrap();
        let want = concat!(
            "9c3b086b",         // expiration
            "3412",             // ref_block_num
            "efcdab89",         // ref_block_prefix
            "00",               // max_net_usage_words
            "00",               // max_cpu_usage_ms
            "00",               // delay_sec
            "00",               // context_free_actions
            "01",               // one action
            "00a6823403ea3055", //   account eosio.token
            "000000572d3ccdcd", //   name transfer
            "01",               //   one authorization
            "0000000000855c34", //     actor alice
            "00000000a8ed3232", //     permission active
            "32",               //   data: 50 bytes
            "0000000000855c34", //     from alice
            "70558c0a5f63be49", //     to dazaarseller
            "d430000000000000", //     12500 units
            "04454f5300000000", //     precision 4, EOS
            "11",               //     memo: 17 bytes
            "64617a6161723a2035653565206230623000"  // "dazaar: 5e5e b0b0", then
                                // transaction_extensions: 0
        );
        assert_eq!(hex::encode(&packed), want);
        assert_eq!(
            transaction_id(&packed),
            "03ba68410c9857194b7fadb479cb9743814c6872ef1cb5652262504ccc4f8997"
        );
        let chain: [u8; 32] =
            hex::decode("aca376f206b8fc25a6ed44dbdc66547c36c6c33e3a119ffbeaef943642f0e906")
                .unwrap()
                .try_into()
                .unwrap();
        let digest = signing_digest(&chain, &packed);
        assert_eq!(
            hex::encode(digest),
            "c1294c78bd4481ddd84a28a4f658cfa66618a5198e1b0aeba6e220c48bce9947"
        );
        let key = PrivateKey::parse("5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3").unwrap();
        assert_eq!(
            key.sign_digest(&digest).unwrap().to_string(),
            "SIG_K1_K7sTN2jBVjG3p3SGTymEapHBxVEmSMpuw3JRvABfsPmhFkhuUBKG8LYTnnHP1BaXvw4dHyPh3qswySnbBmjcKUo18hnNWc"
        );
    }

    #[test]
    fn ref_blocks() {
        let id = "0000f3a1c6d1a2b3e4f50617deadbeef00000000000000000000000000000000";
        assert_eq!(ref_block(0x1_f3a1, id), Some((0xf3a1, 0x1706_f5e4)));
        assert_eq!(ref_block(1, "00"), None);
    }
}
