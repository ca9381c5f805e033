//! A cheap check of a candidate address: dial it and run only the Noise handshake,
//! which fails unless the responder's static key is the seller key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::crypto::NoiseKeyPair;
use crate::protocol::{Session, SessionConfig, SessionError};

/// Most bytes read from a candidate before its handshake must be done (the three XX
/// messages are far smaller; this stops a peer that streams garbage).
const MAX_PROBE_BYTES: usize = 16 * 1024;

/// Longest a finished probe waits for the seller to close after our half-close.
const DRAIN: Duration = Duration::from_secs(1);

/// Why a candidate is not the seller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Dialling or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The handshake failed (wrong key, garbage).
    #[error("handshake: {0}")]
    Handshake(#[from] SessionError),
    /// The peer closed before the handshake finished.
    #[error("closed during the handshake")]
    Closed,
    /// The peer sent too much without finishing the handshake.
    #[error("sent more than {MAX_PROBE_BYTES} bytes without finishing the handshake")]
    TooMuch,
    /// The handshake did not finish in time.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
}

/// Dials `addr` and completes a Noise handshake as `key_pair`, requiring the remote static
/// key to be `seller_key`; then closes. Ok means the candidate is the seller.
pub async fn probe(
    addr: SocketAddr,
    key_pair: &NoiseKeyPair,
    seller_key: [u8; 32],
    timeout: Duration,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, probe_inner(addr, key_pair, seller_key)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

async fn probe_inner(
    addr: SocketAddr,
    key_pair: &NoiseKeyPair,
    seller_key: [u8; 32],
) -> Result<(), ProbeError> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let start = Instant::now();
    let now = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut config = SessionConfig::new(true, key_pair.clone());
    config.expected_remote_key = Some(seller_key);
    let mut session = Session::new(config, now())?;
    let mut buf = vec![0u8; 4096];
    let mut read_total = 0usize;
    loop {
        let out = session.take_outgoing();
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if session.is_handshake_complete() {
            if session.remote_public_key() == Some(seller_key) {
                // Close politely in the background: half-close, then drain until the
                // seller closes too (bounded), so our last handshake message is not lost
                // to a reset caused by unread bytes.
                tokio::spawn(async move {
                    let _ = stream.shutdown().await;
                    let mut sink = [0u8; 1024];
                    let _ = tokio::time::timeout(DRAIN, async {
                        while let Ok(n) = stream.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                });
                return Ok(());
            }
            return Err(ProbeError::Handshake(SessionError::RemoteKeyRejected));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(ProbeError::Closed);
        }
        read_total += n;
        if read_total > MAX_PROBE_BYTES {
            return Err(ProbeError::TooMuch);
        }
        let mut data = buf.get(..n).unwrap_or_default();
        while !data.is_empty() {
            let used = session.receive(data, now())?;
            // Events (none expected before the handshake ends) are dropped so receive
            // can always make progress.
            while session.poll_event().is_some() {}
            if used == 0 {
                break;
            }
            data = data.get(used..).unwrap_or_default();
        }
    }
}
