//! `dazaar feed serve` and `dazaar feed clone`: the tokio runtime and the wiring of
//! [`dazaar::net`] to a feed. `feed.rs` opens the feed and makes the progress bar and
//! hands them in, so this module uses nothing of it (the two used to import each other).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dazaar::crypto::NoiseKeyPair;
use dazaar::net::{self, ChannelSpec, Command, ConnectionOptions, NetConfig, NetEvent, SharedFeed};
use dazaar::protocol::replicate::{ReplicationEvent, ReplicatorConfig};
use dazaar::storage::{Feed, FsStore};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::common::{parse_key, print_json, runtime_with_workers, termination};

/// How often `serve` looks for blocks appended by another process.
const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// The connection settings of `dazaar feed serve`.
pub struct ServeLimits {
    /// Idle timeout (ms).
    pub timeout_ms: u64,
    /// Handshake deadline (ms).
    pub handshake_timeout_ms: u64,
    /// Per-IP connection cap (0: none).
    pub max_connections_per_ip: usize,
}

/// `dazaar feed serve DIR --listen ADDR`: serves `feed` (opened read-only by the caller:
/// another process, `dazaar feed append`, may be writing it).
pub fn serve(
    feed: Feed<FsStore>,
    listen: SocketAddr,
    json: bool,
    limits: ServeLimits,
) -> Result<ExitCode> {
    let timeout_ms = limits.timeout_ms;
    let key = feed.key();
    let shared = SharedFeed::new(feed);
    let rt = runtime_with_workers(2)?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr().context("listening")?;
        if json {
            // Field order as documented (serde_json's map would sort the keys).
            print_json(format!(
                r#"{{"event":"listening","addr":{},"key":"{}"}}"#,
                json!(addr.to_string()),
                hex::encode(key)
            ));
        } else {
            eprintln!("serving {} on {addr}", hex::encode(key));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let refresher = net::spawn_refresh(shared.clone(), REFRESH_INTERVAL, stop_rx.clone());
        let defaults = NetConfig::default();
        let config = NetConfig {
            idle_timeout_ms: timeout_ms,
            keep_alive_ms: timeout_ms.div_ceil(2),
            handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
            max_connections_per_ip: limits.max_connections_per_ip,
            max_connections: net::process_connection_limit(defaults.max_connections),
            ..defaults
        };
        let options = net::ServeOptions {
            key_pair: NoiseKeyPair::generate(),
            initiator: false,
            serve: vec![ChannelSpec {
                feed: shared,
                config: ReplicatorConfig::uploader(),
            }],
            net: config,
        };
        let server = tokio::spawn(net::serve(listener, options, stop_rx));
        termination().await;
        tracing::debug!("signal: stopping");
        let _ = stop_tx.send(true);
        let _ = refresher.await;
        tracing::debug!("refresher stopped");
        match server.await {
            Ok(result) => result.context("serving")?,
            Err(e) => bail!("server task failed: {e}"),
        }
        tracing::debug!("server stopped");
        Ok(ExitCode::SUCCESS)
    });
    // Idle blocking-pool threads (feed refreshes) would otherwise hold the exit up.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// `dazaar feed clone KEY --connect ADDR --out DIR`, showing its progress on `progress`.
pub fn clone(
    key: &str,
    connect: &str,
    out: &Path,
    live: bool,
    json: bool,
    timeout_ms: u64,
    progress: indicatif::ProgressBar,
) -> Result<ExitCode> {
    let key = parse_key(key, "the feed key")?;
    let feed = if out.join("key").is_file() {
        let store =
            FsStore::open(out, false).with_context(|| format!("opening {}", out.display()))?;
        Feed::open(store, Some(key)).with_context(|| format!("opening {}", out.display()))?
    } else {
        let store =
            FsStore::open(out, true).with_context(|| format!("creating {}", out.display()))?;
        Feed::create_reader(store, key).with_context(|| format!("creating {}", out.display()))?
    };
    let shared = SharedFeed::new(feed);
    let rt = runtime_with_workers(2)?;
    let result = rt.block_on(clone_async(
        key,
        connect,
        shared.clone(),
        live,
        json,
        timeout_ms,
        progress,
    ));
    rt.shutdown_timeout(Duration::from_millis(100));
    // Make what was downloaded durable even when the connection failed.
    shared.lock().sync().context("syncing the feed")?;
    result
}

async fn clone_async(
    key: [u8; 32],
    connect: &str,
    shared: Arc<SharedFeed<FsStore>>,
    live: bool,
    json: bool,
    timeout_ms: u64,
    progress: indicatif::ProgressBar,
) -> Result<ExitCode> {
    let addr = tokio::net::lookup_host(connect)
        .await
        .with_context(|| format!("resolving {connect}"))?
        .next()
        .with_context(|| format!("{connect}: no address"))?;
    let stream = net::dial(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let config = NetConfig {
        idle_timeout_ms: timeout_ms,
        keep_alive_ms: timeout_ms.div_ceil(2),
        ..NetConfig::default()
    };
    let (event_tx, mut event_rx) = mpsc::channel(1024);
    let (command_tx, command_rx) = mpsc::channel(16);
    let replicator = ReplicatorConfig {
        request_timeout_ms: timeout_ms,
        ..ReplicatorConfig::downloader()
    };
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: shared.clone(),
            config: replicator,
        }],
        events: Some(event_tx),
        commands: Some(command_rx),
        ..ConnectionOptions::default()
    };
    let session = config.session_config(true, NoiseKeyPair::generate());
    let span = tracing::info_span!("connection", peer = %addr, feed = %hex::encode(key));
    let connection = tokio::spawn(
        async move { net::run_connection(stream, session, &config, options).await }
            .instrument(span),
    );
    let dk = dazaar::crypto::discovery_key(&key);
    let mut done = false;
    let mut last_printed: Option<u64> = None;
    let mut refused = false;
    let mut stopping = false;
    while let Some(event) = event_rx.recv().await {
        match event {
            NetEvent::ChannelClosed { discovery_key } if discovery_key == dk => {
                refused = !done;
                if !stopping {
                    stopping = true;
                    let _ = command_tx.send(Command::Shutdown).await;
                }
            }
            NetEvent::Replication { event, .. } => match event {
                ReplicationEvent::RemoteLength { length } => progress.set_length(length),
                ReplicationEvent::Downloaded { .. } => progress.inc(1),
                ReplicationEvent::Synced { .. } => {
                    let (length, byte_length) = {
                        let feed = shared.lock();
                        (feed.length(), feed.byte_length())
                    };
                    if last_printed != Some(length) {
                        let event = if done { "length" } else { "done" };
                        if json {
                            print_json(format!(
                                r#"{{"event":"{event}","length":{length},"byteLength":{byte_length}}}"#
                            ));
                        } else if !done || live {
                            progress.suspend(|| {
                                eprintln!("{event}: {length} blocks, {byte_length} bytes")
                            });
                        }
                        last_printed = Some(length);
                    }
                    done = true;
                    if !live && !stopping {
                        stopping = true;
                        let _ = command_tx.send(Command::Shutdown).await;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    progress.finish_and_clear();
    let result = connection
        .await
        .map_err(|e| anyhow!("connection task failed: {e}"))?;
    if refused {
        bail!(
            "the peer at {addr} does not serve feed {}",
            hex::encode(key)
        );
    }
    match result {
        Ok(()) if done => Ok(ExitCode::SUCCESS),
        Ok(()) => bail!("the peer at {addr} closed the connection before the feed was complete"),
        Err(e) if done && !live => {
            tracing::debug!(error = %e, "connection ended after sync");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e).with_context(|| format!("replicating from {addr}")),
    }
}
