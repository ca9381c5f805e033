//! Seller metrics and health over HTTP (`dazaar sell --metrics ADDR`, `[metrics] listen`).
//!
//! ```text
//! metrics::counter!(names::VALIDATIONS, ...)   where the seller counts or logs things:
//!                                              market::seller, payments::{gate, registry},
//!                                              net::accept_loop (a no-op until install)
//! monitor::install() -> PrometheusHandle       the process's recorder, once
//! monitor::serve(listener, handle, health, HttpLimits::default(), shutdown)
//!     GET /metrics  Prometheus text format (rendered by the exporter, not by hand)
//!     GET /healthz  200 "ok", or 503 with one line per problem (Health::problems)
//! ```
//!
//! Why the `metrics` facade with `metrics-exporter-prometheus` rather than
//! `prometheus-client`: the facade works like `tracing` (the library records, the binary
//! decides where records go), so no registry is threaded through the layers and a
//! library user or test that installs nothing pays nothing; the exporter renders the
//! Prometheus text format. Its own HTTP listener (hyper) is not used: [`serve`] is a
//! small server with a bound on connections, request size and time, which also answers
//! `/healthz`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The metric names (and their label keys) the seller records.
pub mod names {
    /// Gauge, by `product` (seller key, hex): buyers past the handshake, connected now.
    pub const BUYERS_CONNECTED: &str = "dazaar_buyers_connected";
    /// Gauge, by `product`: connected buyers that are valid now.
    pub const BUYERS_VALID: &str = "dazaar_buyers_valid";
    /// Counter, by `product`: bytes written to buyers' connections (encrypted frames).
    pub const BYTES_UPLOADED: &str = "dazaar_bytes_uploaded_total";
    /// Counter, by `plugin` and `result` (`valid`, `invalid`, `error`): payment checks a
    /// plugin answered (or failed to).
    pub const VALIDATIONS: &str = "dazaar_validations_total";
    /// Histogram, by `plugin` and `call` (`validate`, `user_message`, ...): how long the
    /// plugin took to answer, on its call thread.
    pub const PLUGIN_CALL_SECONDS: &str = "dazaar_plugin_call_seconds";
    /// Counter, by `plugin` and `call`: calls the caller gave up on after the timeout.
    pub const PLUGIN_TIMEOUTS: &str = "dazaar_plugin_timeouts_total";
    /// Counter, by `product`: connections that ended before the Noise handshake finished
    /// (a timeout, a bad handshake, a peer that went away).
    pub const HANDSHAKES_FAILED: &str = "dazaar_handshakes_failed_total";
    /// Counter, by `limit` (`max_connections_per_ip`): connections closed at once
    /// because a limit was reached.
    pub const CONNECTIONS_REFUSED: &str = "dazaar_connections_refused_total";
    /// Counter: fresh payment checks of strangers not admitted (`payment_checks_per_ip`
    /// or the global rate): the buyer was told "busy" and no plugin was called.
    pub const PAYMENT_CHECKS_REFUSED: &str = "dazaar_payment_checks_refused_total";

    /// Gauge, by `product`: 1 while the product's last DHT announcement succeeded, 0
    /// after a failed one (absent: not announced on the DHT).
    pub const DHT_ANNOUNCED: &str = "dazaar_dht_announced";

    /// Label: the product (its seller key, hex).
    pub const PRODUCT: &str = "product";
    /// Label: the payment plugin's name.
    pub const PLUGIN: &str = "plugin";
    /// Label: the plugin function called.
    pub const CALL: &str = "call";
    /// Label: a validation's outcome.
    pub const RESULT: &str = "result";
    /// Label: the limit reached.
    pub const LIMIT: &str = "limit";
}

/// Bucket bounds of [`names::PLUGIN_CALL_SECONDS`]: 1 ms to the default 5 s timeout and
/// beyond (a call that finishes after its caller gave up is still measured).
const PLUGIN_CALL_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The Prometheus recorder could not be built or installed (another recorder is).
    #[error("metrics recorder: {0}")]
    Recorder(String),
}

/// Installs the process's metrics recorder (once; later calls return the same handle)
/// and describes the seller's metrics. Until this runs, every record is a no-op.
pub fn install() -> Result<PrometheusHandle, MonitorError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::PLUGIN_CALL_SECONDS.to_owned()),
            &PLUGIN_CALL_BUCKETS,
        )
        .map_err(|e| MonitorError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| MonitorError::Recorder(e.to_string()))?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        names::BUYERS_CONNECTED,
        "Buyers past the handshake, connected now"
    );
    describe_gauge!(names::BUYERS_VALID, "Connected buyers that are valid now");
    describe_counter!(
        names::BYTES_UPLOADED,
        Unit::Bytes,
        "Bytes written to buyers' connections"
    );
    describe_counter!(
        names::VALIDATIONS,
        "Payment checks answered by a plugin, by result (valid, invalid, error)"
    );
    describe_histogram!(
        names::PLUGIN_CALL_SECONDS,
        Unit::Seconds,
        "Time a payment plugin took to answer a call"
    );
    describe_counter!(
        names::PLUGIN_TIMEOUTS,
        "Plugin calls given up after the timeout"
    );
    describe_counter!(
        names::HANDSHAKES_FAILED,
        "Connections that ended before the handshake finished"
    );
    describe_counter!(
        names::CONNECTIONS_REFUSED,
        "Connections closed at once because a limit was reached"
    );
    describe_gauge!(
        names::DHT_ANNOUNCED,
        "1 while the product's last DHT announcement succeeded, else 0"
    );
    describe_counter!(
        names::PAYMENT_CHECKS_REFUSED,
        "Fresh payment checks of strangers not admitted by the rate limits"
    );
}

/// What `/healthz` reports.
pub trait Health: Send + Sync {
    /// What is down now, one short line each (no secrets: the endpoint may be scraped by
    /// anyone who reaches it); empty when everything is up.
    fn problems(&self) -> Vec<String>;
}

/// Bounds of the metrics HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; a further one is closed at once.
    pub max_connections: usize,
    /// The longest request head read (bytes); a longer one gets 431.
    pub max_request: usize,
    /// How long one connection may take, from accept to the last byte written.
    pub timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 16,
            max_request: 8 * 1024,
            timeout: Duration::from_secs(5),
        }
    }
}

/// How often the recorder's upkeep runs (drains histogram buffers).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Serves `/metrics` (from `metrics`) and `/healthz` (from `health`) on `listener` until
/// `shutdown` turns true: HTTP/1.x `GET` or `HEAD`, one request per connection, within
/// `limits`.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Arc<dyn Health>,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = upkeep.tick() => {
                metrics.run_upkeep();
                continue;
            }
            _ = shutdown.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // At the limit: closed at once (a scraper retries).
            continue;
        };
        let metrics = metrics.clone();
        let health = Arc::clone(&health);
        tasks.spawn(async move {
            let _permit = permit;
            let answered = tokio::time::timeout(
                limits.timeout,
                answer(stream, &metrics, health.as_ref(), limits.max_request),
            )
            .await;
            if let Ok(Err(e)) = answered {
                tracing::debug!(error = %e, "metrics: request failed");
            }
        });
    }
    tasks.shutdown().await;
}

/// One request's response: status line text, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Reads one request head (at most `max` bytes) from `stream` and answers it.
async fn answer(
    mut stream: TcpStream,
    metrics: &PrometheusHandle,
    health: &dyn Health,
    max: usize,
) -> std::io::Result<()> {
    let head = read_head(&mut stream, max).await?;
    let (response, head_only) = match head {
        None => (
            Response::text("431 Request Header Fields Too Large", ""),
            false,
        ),
        Some(head) => route(&head, metrics, health),
    };
    let header = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head_only {
        stream.write_all(response.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// The request head up to its blank line, or `None` when it is longer than `max` bytes.
async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512.min(max));
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = find(&head, b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > max {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The response to a request head, and whether only its head is sent (`HEAD`).
fn route(head: &[u8], metrics: &PrometheusHandle, health: &dyn Health) -> (Response, bool) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let head_only = method == b"HEAD";
    if method != b"GET" && !head_only {
        return (Response::text("405 Method Not Allowed", ""), false);
    }
    let path = target
        .unwrap_or_default()
        .split(|b| *b == b'?')
        .next()
        .unwrap_or_default();
    let response = match path {
        b"/metrics" => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
        },
        b"/healthz" => {
            let problems = health.problems();
            if problems.is_empty() {
                Response::text("200 OK", "ok\n")
            } else {
                let mut body = problems.join("\n");
                body.push('\n');
                Response::text("503 Service Unavailable", body)
            }
        }
        _ => Response::text("404 Not Found", ""),
    };
    (response, head_only)
}

/// A stream that adds the bytes written through it to a counter (a seller's
/// [`names::BYTES_UPLOADED`]).
#[derive(Debug)]
pub struct CountWrites<T> {
    inner: T,
    counter: metrics::Counter,
}

impl<T> CountWrites<T> {
    /// `inner`, counted in `counter`.
    pub fn new(inner: T, counter: metrics::Counter) -> Self {
        CountWrites { inner, counter }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.counter.increment(*n as u64);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Down(Vec<String>);
    impl Health for Down {
        fn problems(&self) -> Vec<String> {
            self.0.clone()
        }
    }

    fn handle() -> PrometheusHandle {
        // Not installed: a test process shares one global recorder slot.
        PrometheusBuilder::new().build_recorder().handle()
    }

    #[test]
    fn routes() {
        let h = handle();
        let up = Down(vec![]);
        let (r, _) = route(b"GET /healthz HTTP/1.1\r\nHost: x", &h, &up);
        assert_eq!((r.status, r.body.as_str()), ("200 OK", "ok\n"));
        let down = Down(vec!["plugin lnd: timed out".into()]);
        let (r, _) = route(b"GET /healthz?x=1 HTTP/1.1", &h, &down);
        assert_eq!(r.status, "503 Service Unavailable");
        assert_eq!(r.body, "plugin lnd: timed out\n");
        let (r, head_only) = route(b"HEAD /metrics HTTP/1.0", &h, &up);
        assert!(head_only && r.status == "200 OK");
        assert_eq!(
            route(b"GET /other HTTP/1.1", &h, &up).0.status,
            "404 Not Found"
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1", &h, &up).0.status,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"", &h, &up).0.status, "405 Method Not Allowed");
    }

    #[tokio::test]
    async fn a_head_longer_than_the_limit_is_refused() {
        let mut long: &[u8] = &[b'a'; 100];
        assert_eq!(read_head(&mut long, 64).await.unwrap(), None);
        let mut ok: &[u8] = b"GET / HTTP/1.1\r\n\r\nrest";
        assert_eq!(
            read_head(&mut ok, 64).await.unwrap().as_deref(),
            Some(&b"GET / HTTP/1.1"[..])
        );
        let mut cut: &[u8] = b"GET / HT";
        assert!(read_head(&mut cut, 64).await.is_err());
    }
}
