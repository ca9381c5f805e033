//! Stripe webhooks: the `Stripe-Signature` check and a small HTTP listener, so payments
//! arrive without waiting for the next poll.
//!
//! Stripe signs `"{t}.{body}"` with HMAC-SHA256 under the endpoint's signing secret and
//! sends `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`. An event counts
//! when one `v1` matches and `t` is within the tolerance of our clock (replay guard).

use std::io::Read;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The largest event body accepted (bytes).
pub const MAX_EVENT: usize = 512 * 1024;

/// Why a webhook delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `t=` or no `v1=` in the header.
    #[error("malformed Stripe-Signature header")]
    Malformed,
    /// The timestamp is outside the tolerance.
    #[error("timestamp outside the tolerance")]
    Stale,
    /// No `v1` signature matches.
    #[error("no matching signature")]
    Mismatch,
}

/// Checks a `Stripe-Signature` header for `body` at `now_s` (Unix seconds).
pub fn verify_signature(
    secret: &Secret,
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let mut t: Option<u64> = None;
    let mut sigs: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" => t = Some(v.parse().map_err(|_| SignatureError::Malformed)?),
            "v1" => {
                if let Ok(bytes) = hex::decode(v) {
                    sigs.push(bytes);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_s.abs_diff(t) > tolerance_s {
        return Err(SignatureError::Stale);
    }
    for sig in &sigs {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            return Err(SignatureError::Mismatch);
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // Constant-time comparison.
        if mac.verify_slice(sig).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// `t=..,v1=..` for `body` at `t` (for tests and the benchmark's fake deliveries).
pub fn sign(secret: &Secret, body: &[u8], t: u64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A running webhook listener; stops when dropped.
pub struct Listener {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: String,
}

impl Listener {
    /// Listens on `addr`; every verified event body is handed to `on_event`.
    pub fn start(
        addr: &str,
        secret: Secret,
        tolerance: Duration,
        on_event: impl Fn(&[u8]) + Send + 'static,
    ) -> Result<Listener, String> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| format!("cannot listen for webhooks on {addr}: {e}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .map_or_else(|| addr.to_owned(), |a| a.to_string());
        let server = Arc::new(server);
        let srv = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("stripe-webhook".into())
            .spawn(move || {
                for request in srv.incoming_requests() {
                    handle(request, &secret, tolerance, &on_event);
                }
            })
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        tracing::info!(addr = %bound, "listening for Stripe webhooks");
        Ok(Listener {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, text: &str) {
    let _ = request.respond(tiny_http::Response::from_string(text).with_status_code(status));
}

fn handle(
    mut request: tiny_http::Request,
    secret: &Secret,
    tolerance: Duration,
    on_event: &impl Fn(&[u8]),
) {
    if *request.method() != tiny_http::Method::Post {
        return respond(request, 405, "POST only");
    }
    if request.body_length().is_some_and(|n| n > MAX_EVENT) {
        return respond(request, 413, "too large");
    }
    let mut body = Vec::new();
    if request
        .as_reader()
        .take(MAX_EVENT as u64 + 1)
        .read_to_end(&mut body)
        .is_err()
        || body.len() > MAX_EVENT
    {
        return respond(request, 400, "unreadable body");
    }
    let header = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Stripe-Signature"))
        .map(|h| h.value.as_str().to_owned());
    let Some(header) = header else {
        tracing::debug!("webhook without Stripe-Signature refused");
        return respond(request, 400, "no signature");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match verify_signature(secret, &header, &body, now, tolerance.as_secs()) {
        Ok(()) => {
            on_event(&body);
            respond(request, 200, "ok")
        }
        Err(e) => {
            tracing::debug!(error = %e, "webhook refused");
            respond(request, 400, "bad signature")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let s = Secret::new("whsec_test".into());
        let body = br#"{"type":"x"}"#;
        let h = sign(&s, body, 1000);
        assert_eq!(verify_signature(&s, &h, body, 1000, 300), Ok(()));
        assert_eq!(verify_signature(&s, &h, body, 1300, 300), Ok(()));
        assert_eq!(
            verify_signature(&s, &h, body, 1301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(&s, &h, b"{}", 1000, 300),
            Err(SignatureError::Mismatch)
        );
        let other = Secret::new("whsec_other".into());
        assert_eq!(
            verify_signature(&other, &h, body, 1000, 300),
            Err(SignatureError::Mismatch)
        );
        // Several v1 (secret rotation): one match is enough; v0 is ignored.
        let two = format!("{},v1=00,v0=ff", h.replace("v1=", "v1=00,v1="));
        assert_eq!(verify_signature(&s, &two, body, 1000, 300), Ok(()));
        assert_eq!(
            verify_signature(&s, "v1=00", body, 1000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(&s, "t=1000", body, 1000, 300),
            Err(SignatureError::Malformed)
        );
    }
}
