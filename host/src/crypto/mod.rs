//! Cryptographic primitives as `hypercore-crypto@2`, `noise-protocol@3` and `derive-key@1`
//! compute them: BLAKE2b-256 (plain and keyed), Ed25519 feed keys, X25519 Noise keys,
//! discovery keys, channel capabilities and the Dazaar key derivation.

use std::fmt;

use ed25519_dalek::{Signer, Verifier};

/// Length of a public key (Ed25519 or X25519), a hash, a discovery key.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// BLAKE2b with a 32-byte output over the concatenation of `parts`
/// (libsodium `crypto_generichash` with no key).
pub fn blake2b256(parts: &[&[u8]]) -> [u8; 32] {
    let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
    for part in parts {
        state.update(part);
    }
    to_array(state.finalize().as_bytes())
}

/// Keyed BLAKE2b-256 (the BLAKE2b key parameter, not HMAC) over the concatenation of `parts`.
pub fn blake2b256_keyed(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut state = blake2b_simd::Params::new()
        .hash_length(32)
        .key(key)
        .to_state();
    for part in parts {
        state.update(part);
    }
    to_array(state.finalize().as_bytes())
}

fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

/// `discoveryKey(key)`: BLAKE2b-256 keyed with the public key over ASCII `"hypercore"`.
/// It names a feed on the wire and in discovery without revealing the key.
pub fn discovery_key(public_key: &[u8; 32]) -> [u8; 32] {
    blake2b256_keyed(public_key, &[b"hypercore"])
}

/// `capability(key, split)`: proves on Open that the sender knows the feed key.
/// Keyed with `rx` over `"hypercore capability" ‖ tx ‖ key`.
pub fn capability(key: &[u8; 32], rx: &[u8; 32], tx: &[u8; 32]) -> [u8; 32] {
    blake2b256_keyed(rx, &[b"hypercore capability", tx, key])
}

/// `remoteCapability(key, split)`: the capability the remote must have sent
/// (the same construction with `rx` and `tx` swapped).
pub fn remote_capability(key: &[u8; 32], rx: &[u8; 32], tx: &[u8; 32]) -> [u8; 32] {
    capability(key, tx, rx)
}

/// The `derive-key@1` construction Dazaar uses: BLAKE2b-256 keyed with `master_key` over
/// `"<len(namespace)>\n<namespace>" ‖ name`.
pub fn derive(namespace: &str, master_key: &[u8; 32], name: &[u8]) -> [u8; 32] {
    let prefix = format!("{}\n{}", namespace.len(), namespace);
    blake2b256_keyed(master_key, &[prefix.as_bytes(), name])
}

/// Dazaar's derivation: `derive("dazaar", master_key, name)`.
pub fn dazaar_derive(master_key: &[u8; 32], name: &str) -> [u8; 32] {
    derive("dazaar", master_key, name.as_bytes())
}

/// Why a signature or key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The bytes are not a valid Ed25519 public key.
    #[error("invalid Ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A secret key whose public half does not match the stored public key.
    #[error("secret key does not match the public key")]
    KeyMismatch,
}

/// An Ed25519 key pair as `hypercore-crypto` keeps it: the public key and the 64-byte
/// libsodium secret key (`seed ‖ publicKey`).
#[derive(Clone)]
pub struct Ed25519KeyPair {
    signing: ed25519_dalek::SigningKey,
}

impl Ed25519KeyPair {
    /// `keyPair(seed)`: libsodium `crypto_sign_seed_keypair`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// A fresh random key pair.
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self::from_seed(&seed)
    }

    /// From a 64-byte libsodium secret key (`seed ‖ publicKey`); the public half must match.
    pub fn from_secret_key(secret: &[u8; 64]) -> Result<Self, CryptoError> {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&secret[..32]);
        let pair = Self::from_seed(&seed);
        if pair.public_key()[..] != secret[32..] {
            return Err(CryptoError::KeyMismatch);
        }
        Ok(pair)
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The 32-byte seed.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The 64-byte libsodium secret key `seed ‖ publicKey`.
    pub fn secret_key(&self) -> [u8; 64] {
        self.signing.to_keypair_bytes()
    }

    /// Detached Ed25519 signature (`crypto_sign_detached`).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for Ed25519KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret half.
        f.debug_struct("Ed25519KeyPair")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

/// Verifies a detached Ed25519 signature (`crypto_sign_verify_detached`).
pub fn verify(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), CryptoError> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .map_err(|_| CryptoError::InvalidPublicKey)?;
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify(message, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// A Noise static key pair (X25519) as `Protocol.keyPair(seed)` makes it
/// (libsodium `crypto_kx_seed_keypair`): secret = BLAKE2b-256(seed), public = X25519(secret).
#[derive(Clone)]
pub struct NoiseKeyPair {
    secret: [u8; 32],
    public: [u8; 32],
}

impl NoiseKeyPair {
    /// `Protocol.keyPair(seed)`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_secret(blake2b256(&[seed]))
    }

    /// From a 32-byte X25519 secret (stored unclamped; X25519 clamps on use).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret));
        Self {
            secret,
            public: public.to_bytes(),
        }
    }

    /// A fresh random key pair.
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self::from_seed(&seed)
    }

    /// The 32-byte public key (a Dazaar buyer or seller key).
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The 32-byte secret key.
    pub fn secret_key(&self) -> [u8; 32] {
        self.secret
    }
}

impl fmt::Debug for NoiseKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseKeyPair")
            .field("public_key", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// The buyer's Noise identity for all purchases: `keyPair(derive(master, "buys/key-pair"))`.
pub fn buyer_key_pair(master_key: &[u8; 32]) -> NoiseKeyPair {
    NoiseKeyPair::from_seed(&dazaar_derive(master_key, "buys/key-pair"))
}

/// The seller's Noise identity for one product:
/// `keyPair(derive(master, "sales/<feedKeyHex>/key-pair"))`.
pub fn seller_key_pair(master_key: &[u8; 32], feed_key: &[u8; 32]) -> NoiseKeyPair {
    let name = format!("sales/{}/key-pair", hex::encode(feed_key));
    NoiseKeyPair::from_seed(&dazaar_derive(master_key, &name))
}

/// The rekeyed (one-time) feed key pair of one buyer:
/// `crypto.keyPair(derive(master, "sales/<feedKeyHex>/feeds/<buyerKeyHex>"))`.
pub fn rekeyed_feed_key_pair(
    master_key: &[u8; 32],
    feed_key: &[u8; 32],
    buyer_key: &[u8; 32],
) -> Ed25519KeyPair {
    let name = format!(
        "sales/{}/feeds/{}",
        hex::encode(feed_key),
        hex::encode(buyer_key)
    );
    Ed25519KeyPair::from_seed(&dazaar_derive(master_key, &name))
}

/// `market.deriveHypercoreKeyPair(id)`: `crypto.keyPair(derive(master, "hypercore-seed/<id>"))`.
pub fn hypercore_key_pair(master_key: &[u8; 32], id: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed(&dazaar_derive(master_key, &format!("hypercore-seed/{id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h32(s: &str) -> [u8; 32] {
        let v = hex::decode(s).expect("hex");
        v.try_into().expect("32 bytes")
    }

    #[test]
    fn spec_examples() {
        let pair = Ed25519KeyPair::from_seed(&[1; 32]);
        assert_eq!(
            hex::encode(pair.public_key()),
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        assert_eq!(
            hex::encode(discovery_key(&pair.public_key())),
            "c1feb82a2b3ba065ffed9f6addcf19ac250793bcab748986a1b4272c62da20e6"
        );
        let noise = NoiseKeyPair::from_seed(&[1; 32]);
        assert_eq!(
            hex::encode(noise.secret_key()),
            "f40ceaf86e5776923332b8d8fd3bef849cadb19c6996bc272af1f648d9566a4c"
        );
        assert_eq!(
            hex::encode(noise.public_key()),
            "ab2fca32898322c208fb2dab5048bd43c355c6430f588897cb574961cfa9806f"
        );
        assert_eq!(
            hex::encode(dazaar_derive(&[2; 32], "buys/key-pair")),
            "4f4fd85139860d6cc4226f27eb982fb2fb6be616b61d59d379127d2c70364b38"
        );
        let feed = h32("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c");
        let buyer = buyer_key_pair(&[3; 32]);
        assert_eq!(
            hex::encode(buyer.public_key()),
            "66cc688b3673664acac8a9bfe637a2694cc0a02fb628ce81c6a2a319e2866e30"
        );
        let seller = seller_key_pair(&[2; 32], &feed);
        assert_eq!(
            hex::encode(seller.public_key()),
            "7b17de1567ebb3da2b1f313215b18c6c30f398503f3945e0cd15a648ed4de649"
        );
        let rekeyed = rekeyed_feed_key_pair(&[2; 32], &feed, &buyer.public_key());
        assert_eq!(
            hex::encode(rekeyed.public_key()),
            "8e3f8856111c6ea963e4679a58c1e227f6b7942980ed93a2d2f67e97e371356e"
        );
    }

    #[test]
    fn secret_key_round_trip_and_mismatch() {
        let pair = Ed25519KeyPair::from_seed(&[7; 32]);
        let again = Ed25519KeyPair::from_secret_key(&pair.secret_key()).expect("matching halves");
        assert_eq!(again.public_key(), pair.public_key());
        let mut bad = pair.secret_key();
        bad[40] ^= 1;
        assert_eq!(
            Ed25519KeyPair::from_secret_key(&bad).err(),
            Some(CryptoError::KeyMismatch)
        );
        assert!(!format!("{pair:?}").contains(&hex::encode(pair.seed())));
    }

    #[test]
    fn verify_rejects_tampering() {
        let pair = Ed25519KeyPair::from_seed(&[9; 32]);
        let sig = pair.sign(b"message");
        verify(&pair.public_key(), b"message", &sig).expect("valid");
        assert_eq!(
            verify(&pair.public_key(), b"messagE", &sig),
            Err(CryptoError::BadSignature)
        );
    }
}
