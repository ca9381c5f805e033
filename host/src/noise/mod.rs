//! The Noise XX handshake of `simple-hypercore-protocol@2` (via `snow`) and the XSalsa20
//! transport cipher that replaces Noise transport messages in protocol v8.
//!
//! - `Noise_XX_25519_ChaChaPoly_BLAKE2b`, empty prologue; every handshake message carries
//!   the sender's `NoisePayload { nonce }` and is framed as `varint(len) ‖ message`.
//! - After the handshake each direction is one continuous XSalsa20 keystream: send with
//!   (own `split.tx`, own nonce), receive with (`split.rx`, remote nonce). There is no MAC:
//!   integrity rests on the frames parsing and on the capabilities and signatures above.

use std::fmt;

mod xsalsa;

use xsalsa::XSalsa20Stream;

use crate::crypto::NoiseKeyPair;
use crate::wire::{varint, NoisePayload};

/// The Noise protocol name hypercore-protocol@8 uses.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2b";
/// Length of the XSalsa20 nonce carried in the handshake payload.
pub const NONCE_LEN: usize = 24;
/// Largest Noise message (and so handshake frame body) allowed.
pub const MAX_HANDSHAKE_MESSAGE_LEN: usize = 65535;
/// Length varints of handshake messages fit in 3 bytes (65535 < 2^21).
const MAX_HANDSHAKE_LENGTH_VARINT: usize = 3;

/// Why the handshake failed. None of the variants carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// snow rejected a message or could not be set up (bad MAC, wrong length, …).
    #[error("Noise handshake error: {0}")]
    Snow(#[from] snow::Error),
    /// A handshake frame's length prefix is malformed.
    #[error("invalid handshake frame length: {0}")]
    Length(varint::VarintError),
    /// A handshake frame is empty or longer than 65535 bytes.
    #[error("handshake message of {0} bytes is out of range")]
    MessageSize(u64),
    /// The remote's handshake message had no payload.
    #[error("Remote did not include a handshake payload")]
    MissingPayload,
    /// The remote's payload is not a NoisePayload with a 24-byte nonce.
    #[error("Could not parse remote payload")]
    BadPayload,
    /// The remote static key did not fit the expected one (the `authenticate` callback said no).
    #[error("remote static key rejected")]
    Rejected,
    /// `receive` was called after the handshake finished or failed.
    #[error("handshake is already finished or failed")]
    Finished,
    /// `finish` was called before the handshake completed.
    #[error("handshake is not complete")]
    Incomplete,
}

/// Deterministic parameters, for reproducing recorded sessions in tests. Real sessions use
/// [`Handshake::new`], which draws both at random.
#[derive(Clone)]
pub struct HandshakeParams {
    /// Our 24-byte XSalsa20 nonce (sent in the payload).
    pub nonce: [u8; NONCE_LEN],
    /// A fixed ephemeral X25519 secret (otherwise snow draws one).
    pub ephemeral_secret: Option<[u8; 32]>,
}

impl fmt::Debug for HandshakeParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeParams")
            .field("nonce", &hex::encode(self.nonce))
            .finish_non_exhaustive()
    }
}

/// The split transport keys (`split.tx[0..32]`, `split.rx[0..32]` in JS).
#[derive(Clone, PartialEq, Eq)]
pub struct Split {
    /// Key for what we send (initiator: k1; responder: k2).
    pub tx: [u8; 32],
    /// Key for what we receive.
    pub rx: [u8; 32],
}

impl fmt::Debug for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Split { .. }")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Finished,
    Failed,
}

/// A handshake in progress. Bytes in via [`Handshake::receive`], bytes out via
/// [`Handshake::take_outgoing`]; it consumes exactly the bytes of its own messages, so
/// whatever follows the last one is transport data for the caller.
pub struct Handshake {
    state: snow::HandshakeState,
    initiator: bool,
    local_nonce: [u8; NONCE_LEN],
    payload: Vec<u8>,
    remote_nonce: Option<[u8; NONCE_LEN]>,
    remote_static: Option<[u8; 32]>,
    length_buf: Vec<u8>,
    message_len: Option<usize>,
    message_buf: Vec<u8>,
    outgoing: Vec<u8>,
    phase: Phase,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.initiator)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Starts a handshake with a random nonce and ephemeral key. An initiator's first
    /// message is ready in [`Handshake::take_outgoing`] right away.
    pub fn new(initiator: bool, key_pair: &NoiseKeyPair) -> Result<Self, NoiseError> {
        let params = HandshakeParams {
            nonce: rand::random(),
            ephemeral_secret: None,
        };
        Self::with_params(initiator, key_pair, params)
    }

    /// Starts a handshake with the given nonce and (optionally) a fixed ephemeral key.
    pub fn with_params(
        initiator: bool,
        key_pair: &NoiseKeyPair,
        params: HandshakeParams,
    ) -> Result<Self, NoiseError> {
        let noise_params: snow::params::NoiseParams =
            NOISE_PARAMS.parse().map_err(NoiseError::Snow)?;
        let secret = key_pair.secret_key();
        let mut builder = snow::Builder::new(noise_params).local_private_key(&secret);
        if let Some(ephemeral) = params.ephemeral_secret.as_ref() {
            builder = builder.fixed_ephemeral_key_for_testing_only(ephemeral);
        }
        let state = if initiator {
            builder.build_initiator()?
        } else {
            builder.build_responder()?
        };
        let payload = NoisePayload {
            nonce: params.nonce.to_vec(),
        }
        .to_bytes();
        let mut handshake = Self {
            state,
            initiator,
            local_nonce: params.nonce,
            payload,
            remote_nonce: None,
            remote_static: None,
            length_buf: Vec::with_capacity(MAX_HANDSHAKE_LENGTH_VARINT),
            message_len: None,
            message_buf: Vec::new(),
            outgoing: Vec::new(),
            phase: Phase::Running,
        };
        if initiator {
            handshake.write_message()?;
        }
        Ok(handshake)
    }

    /// Whether we are the Noise initiator.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Our payload nonce.
    pub fn local_nonce(&self) -> [u8; NONCE_LEN] {
        self.local_nonce
    }

    /// The remote static key, once a message carrying it has been read.
    pub fn remote_static_key(&self) -> Option<[u8; 32]> {
        self.remote_static
    }

    /// Whether the handshake completed (the last message was written or read).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Handshake bytes to send (framed), draining the internal buffer.
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Feeds received bytes. Returns how many were consumed: all of them while the handshake
    /// is running, and exactly up to the end of the last handshake message once it finishes
    /// (the rest is transport data). `authenticate` sees the remote static key as soon as it
    /// arrives and may reject it; the initiator then never sends message 3 and the responder
    /// never accepts transport data.
    pub fn receive(
        &mut self,
        input: &[u8],
        authenticate: &mut dyn FnMut(&[u8; 32]) -> bool,
    ) -> Result<usize, NoiseError> {
        if self.phase != Phase::Running {
            return Err(NoiseError::Finished);
        }
        let result = self.receive_inner(input, authenticate);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn receive_inner(
        &mut self,
        input: &[u8],
        authenticate: &mut dyn FnMut(&[u8; 32]) -> bool,
    ) -> Result<usize, NoiseError> {
        let mut rest = input;
        while !rest.is_empty() && self.phase == Phase::Running {
            match self.message_len {
                None => {
                    let Some((&byte, tail)) = rest.split_first() else {
                        break;
                    };
                    rest = tail;
                    self.length_buf.push(byte);
                    if byte & 0x80 != 0 {
                        if self.length_buf.len() >= MAX_HANDSHAKE_LENGTH_VARINT {
                            return Err(NoiseError::Length(varint::VarintError::TooLong {
                                max: MAX_HANDSHAKE_LENGTH_VARINT,
                            }));
                        }
                        continue;
                    }
                    let (len, _) = varint::decode(&self.length_buf).map_err(NoiseError::Length)?;
                    self.length_buf.clear();
                    if len == 0 || len > MAX_HANDSHAKE_MESSAGE_LEN as u64 {
                        return Err(NoiseError::MessageSize(len));
                    }
                    self.message_len = Some(len as usize);
                    self.message_buf.clear();
                }
                Some(len) => {
                    let take = len.saturating_sub(self.message_buf.len()).min(rest.len());
                    let (now, tail) = rest.split_at(take);
                    self.message_buf.extend_from_slice(now);
                    rest = tail;
                    if self.message_buf.len() == len {
                        self.message_len = None;
                        let message = std::mem::take(&mut self.message_buf);
                        self.read_message(&message, authenticate)?;
                    }
                }
            }
        }
        Ok(input.len() - rest.len())
    }

    fn read_message(
        &mut self,
        message: &[u8],
        authenticate: &mut dyn FnMut(&[u8; 32]) -> bool,
    ) -> Result<(), NoiseError> {
        let had_static = self.state.get_remote_static().is_some();
        let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE_LEN];
        let n = self.state.read_message(message, &mut payload)?;
        let payload = payload.get(..n).unwrap_or_default();
        if payload.is_empty() {
            return Err(NoiseError::MissingPayload);
        }
        let decoded = NoisePayload::decode_checked(payload).map_err(|_| NoiseError::BadPayload)?;
        let nonce: [u8; NONCE_LEN] = decoded
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| NoiseError::BadPayload)?;
        // The last payload received wins (the responder sees the same nonce twice).
        self.remote_nonce = Some(nonce);
        if !had_static {
            if let Some(key) = self.state.get_remote_static() {
                let key: [u8; 32] = key.try_into().map_err(|_| NoiseError::Rejected)?;
                self.remote_static = Some(key);
                if !authenticate(&key) {
                    return Err(NoiseError::Rejected);
                }
            }
        }
        if self.state.is_handshake_finished() {
            self.phase = Phase::Finished;
        } else {
            self.write_message()?;
        }
        Ok(())
    }

    fn write_message(&mut self) -> Result<(), NoiseError> {
        let mut message = vec![0u8; MAX_HANDSHAKE_MESSAGE_LEN];
        let n = self.state.write_message(&self.payload, &mut message)?;
        let message = message.get(..n).unwrap_or_default();
        varint::encode(n as u64, &mut self.outgoing);
        self.outgoing.extend_from_slice(message);
        if self.state.is_handshake_finished() {
            self.phase = Phase::Finished;
        }
        Ok(())
    }

    /// Completes a finished handshake: transport keys and cipher.
    pub fn finish(mut self) -> Result<Transport, NoiseError> {
        if self.phase != Phase::Finished {
            return Err(NoiseError::Incomplete);
        }
        let (Some(remote_nonce), Some(remote_static_key)) = (self.remote_nonce, self.remote_static)
        else {
            return Err(NoiseError::Incomplete);
        };
        let handshake_hash = self.state.get_handshake_hash().to_vec();
        // snow returns (k1, k2) whatever the role; the initiator sends with k1.
        let (k1, k2) = self.state.dangerously_get_raw_split();
        let split = if self.initiator {
            Split { tx: k1, rx: k2 }
        } else {
            Split { tx: k2, rx: k1 }
        };
        let cipher = TransportCipher::new(&split, &self.local_nonce, &remote_nonce);
        Ok(Transport {
            split,
            remote_static_key,
            handshake_hash,
            local_nonce: self.local_nonce,
            remote_nonce,
            cipher,
        })
    }
}

/// Everything a finished handshake yields.
pub struct Transport {
    /// Transport keys (also used for channel capabilities).
    pub split: Split,
    /// The remote's static Noise public key (a Dazaar buyer or seller key).
    pub remote_static_key: [u8; 32],
    /// Noise `h` after the handshake (64 bytes; unused by protocol v8 messages).
    pub handshake_hash: Vec<u8>,
    /// Our payload nonce.
    pub local_nonce: [u8; NONCE_LEN],
    /// The remote's payload nonce.
    pub remote_nonce: [u8; NONCE_LEN],
    /// The stream cipher for both directions.
    pub cipher: TransportCipher,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("remote_static_key", &hex::encode(self.remote_static_key))
            .finish_non_exhaustive()
    }
}

/// The two XSalsa20 keystreams of a connection (`lib/xor.js`).
pub struct TransportCipher {
    tx: XSalsa20Stream,
    rx: XSalsa20Stream,
}

impl fmt::Debug for TransportCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransportCipher { .. }")
    }
}

impl TransportCipher {
    /// Send stream = XSalsa20(tx, local nonce); receive stream = XSalsa20(rx, remote nonce).
    pub fn new(
        split: &Split,
        local_nonce: &[u8; NONCE_LEN],
        remote_nonce: &[u8; NONCE_LEN],
    ) -> Self {
        Self {
            tx: XSalsa20Stream::new(&split.tx, local_nonce),
            rx: XSalsa20Stream::new(&split.rx, remote_nonce),
        }
    }

    /// Encrypts outgoing bytes in place, advancing the send stream.
    pub fn encrypt(&mut self, data: &mut [u8]) {
        self.tx.apply(data);
    }

    /// Decrypts incoming bytes in place, advancing the receive stream.
    pub fn decrypt(&mut self, data: &mut [u8]) {
        self.rx.apply(data);
    }

    /// Moves the receive stream back by `count` bytes, for a caller that decrypted more than
    /// it ended up consuming.
    pub fn unread(&mut self, count: usize) {
        let position = self.rx.position();
        self.rx.seek(position.saturating_sub(count as u64));
    }
}

#[cfg(test)]
mod tests;
