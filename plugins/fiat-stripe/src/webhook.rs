//! Stripe webhooks: the `Stripe-Signature` check and a small HTTP listener, so payments
//! arrive without waiting for the next poll.
//!
//! Stripe signs `"{t}.{body}"` with HMAC-SHA256 under the endpoint's signing secret and
//! sends `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`. An event counts
//! when one `v1` matches and `t` is within the tolerance of our clock (replay guard).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The largest event body accepted (bytes); Stripe's events are a few KiB.
pub const MAX_EVENT: usize = 256 * 1024;

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

/// Bounds of the webhook listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time for a client to send its request head.
    pub header_timeout: Duration,
    /// Time for a client to send the body once the head is in.
    pub body_timeout: Duration,
    /// The largest body read (bytes).
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_body: MAX_EVENT,
        }
    }
}

/// What every connection's handler needs.
struct Handler<F> {
    secret: Secret,
    tolerance: Duration,
    on_event: F,
    limits: Limits,
}

/// A running webhook listener: an HTTP/1 server (hyper) on a one-thread tokio runtime
/// of its own. Every connection is a task, not a thread; their number, the time each
/// may take and the body size are bounded, so a client that announces a body and never
/// sends it, or a thousand idle sockets, cannot stop other deliveries. Stops when
/// dropped.
pub struct Listener {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    addr: String,
}

impl Listener {
    /// Listens on `addr`; every verified event body is handed to `on_event` (called on
    /// the listener's thread: keep it short).
    pub fn start(
        addr: &str,
        secret: Secret,
        tolerance: Duration,
        limits: Limits,
        on_event: impl Fn(&[u8]) + Send + Sync + 'static,
    ) -> Result<Listener, String> {
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen for webhooks on {addr}: {e}"))?;
        let bound = std_listener
            .local_addr()
            .map_or_else(|_| addr.to_owned(), |a| a.to_string());
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot listen for webhooks on {addr}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the webhook runtime: {e}"))?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| format!("cannot listen for webhooks on {addr}: {e}"))?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = Arc::new(Handler {
            secret,
            tolerance,
            on_event,
            limits,
        });
        let thread = std::thread::Builder::new()
            .name("stripe-webhook".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = accept_loop(listener, handler) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels the connections still open.
            })
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        tracing::info!(addr = %bound, "listening for Stripe webhooks");
        Ok(Listener {
            stop: Some(stop),
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections, at most `max_connections` at once.
async fn accept_loop<F>(listener: tokio::net::TcpListener, handler: Arc<Handler<F>>)
where
    F: Fn(&[u8]) + Send + Sync + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(
        handler.limits.max_connections.max(1),
    ));
    // A connection may not outlive its head and body deadlines by more than this.
    let lifetime =
        handler.limits.header_timeout + handler.limits.body_timeout + Duration::from_secs(1);
    let mut last_error_log: Option<std::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (or another transient error): retrying at
                // once would spin; wait, and log at most once a minute.
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "webhook listener: accept failed");
                    last_error_log = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Full: this one is closed unanswered (Stripe retries failed deliveries).
            tracing::debug!("webhook listener full; connection closed");
            drop(stream);
            continue;
        };
        let handler = Arc::clone(&handler);
        let header_timeout = handler.limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, std::convert::Infallible>(handle(&handler, req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                // One delivery per connection: an idle keep-alive would hold a slot.
                .keep_alive(false)
                .max_buf_size(16 * 1024);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if tokio::time::timeout(lifetime, conn).await.is_err() {
                tracing::debug!("webhook connection closed at its deadline");
            }
        });
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn respond(status: u16, text: &'static str) -> hyper::Response<Body> {
    let mut resp =
        hyper::Response::new(Body::new(hyper::body::Bytes::from_static(text.as_bytes())));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    resp
}

async fn handle<F>(
    handler: &Handler<F>,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body>
where
    F: Fn(&[u8]),
{
    use http_body_util::BodyExt;

    if request.method() != hyper::Method::POST {
        return respond(405, "POST only");
    }
    let max = handler.limits.max_body;
    let announced = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return respond(413, "too large");
    }
    let header = request
        .headers()
        .get("Stripe-Signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limited = http_body_util::Limited::new(request.into_body(), max);
    let body = match tokio::time::timeout(handler.limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return respond(413, "too large");
            }
            return respond(400, "unreadable body");
        }
        Err(_) => {
            tracing::debug!("webhook body not sent in time");
            return respond(408, "body timeout");
        }
    };
    let Some(header) = header else {
        tracing::debug!("webhook without Stripe-Signature refused");
        return respond(400, "no signature");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match verify_signature(
        &handler.secret,
        &header,
        &body,
        now,
        handler.tolerance.as_secs(),
    ) {
        Ok(()) => {
            (handler.on_event)(&body);
            respond(200, "ok")
        }
        Err(e) => {
            tracing::debug!(error = %e, "webhook refused");
            respond(400, "bad signature")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SECRET: &str = "whsec_unit";

    fn listener(limits: Limits) -> (Listener, Arc<AtomicUsize>) {
        let events = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&events);
        let l = Listener::start(
            "127.0.0.1:0",
            Secret::new(SECRET.into()),
            Duration::from_secs(300),
            limits,
            move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        (l, events)
    }

    /// Sends `head` (and `body`), returns the status line's code, or 0 when the
    /// connection closed without an answer.
    fn exchange(addr: &str, head: &str, body: &[u8]) -> u16 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn post(addr: &str, body: &[u8], sig: &str) -> u16 {
        let head = format!(
            "POST /s HTTP/1.1\r\nHost: x\r\nStripe-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        exchange(addr, &head, body)
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn listener_answers_and_bounds_what_it_reads() {
        let limits = Limits {
            max_body: 1024,
            body_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (l, events) = listener(limits);
        let body = br#"{"type":"x"}"#;
        let sig = sign(&Secret::new(SECRET.into()), body, now());
        assert_eq!(post(l.addr(), body, &sig), 200);
        assert_eq!(events.load(Ordering::SeqCst), 1);
        assert_eq!(post(l.addr(), body, "t=1,v1=00"), 400);
        assert_eq!(
            exchange(l.addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""),
            405
        );
        // Announced too large: refused before reading.
        let big = "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n";
        assert_eq!(exchange(l.addr(), big, b""), 413);
        // Sent too large without a length (chunked): cut at the limit.
        let chunked = "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut body = Vec::new();
        for _ in 0..3 {
            body.extend_from_slice(b"200\r\n");
            body.extend_from_slice(&[b'a'; 0x200]);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(exchange(l.addr(), chunked, &body), 413);
        // Announced and never sent: answered at the body deadline, not held.
        let stalled = "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(exchange(l.addr(), stalled, b""), 408);
        assert_eq!(events.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn connections_over_the_cap_are_closed_and_slots_come_back() {
        let (l, events) = listener(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(l.addr()).unwrap())
            .collect();
        let body = br#"{"type":"x"}"#;
        let sig = sign(&Secret::new(SECRET.into()), body, now());
        // Both slots are taken (accepted in order): the third is closed unanswered.
        let mut answered = 0;
        for _ in 0..50 {
            if post(l.addr(), body, &sig) == 200 {
                answered += 1;
            }
        }
        assert_eq!(answered, 0);
        drop(held);
        // The slots are released once the held connections end.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while post(l.addr(), body, &sig) != 200 {
            assert!(std::time::Instant::now() < deadline, "no slot came back");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(events.load(Ordering::SeqCst), 1);
    }

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
