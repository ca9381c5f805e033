//! `dazaar feed ...`: create, append to, inspect, read and import feeds.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use dazaar::crypto::Ed25519KeyPair;
use dazaar::storage::{open_feed_dir, Access, Durability, Feed, FsStore, NodeSet};
use serde_json::json;

/// Feed commands.
#[derive(Debug, Subcommand)]
pub enum FeedCmd {
    /// Create a new feed in DIR and print its public key.
    Create {
        /// Directory of the new feed.
        dir: PathBuf,
        /// Print `{"key":..., "discoveryKey":...}`.
        #[arg(long)]
        json: bool,
    },
    /// Append FILE (or stdin) to the feed: one block per line, or fixed-size blocks.
    ///
    /// Reading a stream, it commits as it goes (at least once a second while input
    /// flows), so `tail -f source | dazaar feed append DIR` feeds live readers.
    Append {
        /// Directory of the feed (must hold its secret key).
        dir: PathBuf,
        /// File to read; stdin when absent or `-`.
        file: Option<PathBuf>,
        /// Cut blocks of N bytes instead of lines (the last may be shorter).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=8 * 1024 * 1024))]
        block_size: Option<u64>,
        /// Print `{"length":..., "appended":...}` when done.
        #[arg(long)]
        json: bool,
    },
    /// Show the feed's key, length, tree hash and signature.
    Info {
        /// Directory of the feed.
        dir: PathBuf,
        /// Print `{"key","discoveryKey","length","byteLength","held","treeHash","signature"}`
        /// (`held`: the blocks held locally, fewer than `length` in a sparse or partly
        /// paid copy).
        #[arg(long)]
        json: bool,
    },
    /// Write blocks to stdout, raw (or one per line with --lines).
    Cat {
        /// Directory of the feed.
        dir: PathBuf,
        /// First block.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// One past the last block (default: the feed's length).
        #[arg(long)]
        end: Option<u64>,
        /// Follow each block with a newline.
        #[arg(long)]
        lines: bool,
    },
    /// Import a feed directory written by JS hypercore@9 (random-access-file), verifying
    /// every block against the signed tree.
    Import {
        /// The JS feed directory (files key, secret_key, tree, data, bitfield, signatures).
        js_dir: PathBuf,
        /// The new feed directory.
        dir: PathBuf,
        /// Print the imported feed's info as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the feed in DIR to anyone who knows its key, until SIGINT/SIGTERM, including
    /// blocks appended later by another process.
    Serve {
        /// Directory of the feed.
        dir: PathBuf,
        /// Address to listen on (IP:PORT; port 0 picks one).
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// First stdout line: `{"event":"listening","addr":"IP:PORT","key":"<hex>"}`.
        #[arg(long)]
        json: bool,
        /// Idle timeout of a connection in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = dazaar::protocol::DEFAULT_IDLE_TIMEOUT_MS)]
        timeout_ms: u64,
        /// A connection whose handshake has not finished in this many milliseconds is
        /// dropped.
        #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        handshake_timeout_ms: u64,
        /// Most connections at once from one IP address (0: no cap).
        #[arg(long, value_name = "N", default_value_t = dazaar::net::DEFAULT_MAX_CONNECTIONS_PER_IP)]
        max_connections_per_ip: usize,
    },
    /// Download the feed KEY from a peer into DIR (resuming), exiting once it holds
    /// everything the peer has; with --live keep following.
    Clone {
        /// The feed's public key (hex).
        key: String,
        /// The peer's address (HOST:PORT).
        #[arg(long, value_name = "ADDR")]
        connect: String,
        /// Directory of the local copy (created, or resumed).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Keep following the feed after the first sync.
        #[arg(long)]
        live: bool,
        /// Print `{"event":"done","length":N,"byteLength":B}` (and, with --live, a
        /// `{"event":"length",...}` line per growth).
        #[arg(long)]
        json: bool,
        /// Idle timeout in milliseconds (also the request timeout).
        #[arg(long, value_name = "MS", default_value_t = dazaar::protocol::DEFAULT_IDLE_TIMEOUT_MS)]
        timeout_ms: u64,
    },
}

/// Runs a feed command.
pub fn run(cmd: FeedCmd) -> Result<ExitCode> {
    match cmd {
        FeedCmd::Create { dir, json } => create(&dir, json),
        FeedCmd::Append {
            dir,
            file,
            block_size,
            json,
        } => append(&dir, file.as_deref(), block_size, json),
        FeedCmd::Info { dir, json } => info(&dir, json),
        FeedCmd::Cat {
            dir,
            start,
            end,
            lines,
        } => cat(&dir, start, end, lines),
        FeedCmd::Import { js_dir, dir, json } => import(&js_dir, &dir, json),
        FeedCmd::Serve {
            dir,
            listen,
            json,
            timeout_ms,
            handshake_timeout_ms,
            max_connections_per_ip,
        } => super::net::serve(
            // Read-only: another process (`dazaar feed append`) may be writing the feed.
            open_feed(&dir)?,
            listen,
            json,
            super::net::ServeLimits {
                timeout_ms,
                handshake_timeout_ms,
                max_connections_per_ip,
            },
        ),
        FeedCmd::Clone {
            key,
            connect,
            out,
            live,
            json,
            timeout_ms,
        } => super::net::clone(
            &key,
            &connect,
            &out,
            live,
            json,
            timeout_ms,
            progress_bar(0),
        ),
    }
}

/// Opens the feed in `dir` to read it, with a clear error when it is missing or not a
/// feed. Read-only: a writer's feed opened for writing is repaired after a crash (what
/// lies past its verified length is dropped), which must never happen while another
/// process is appending; so only `append` opens for writing.
pub fn open_feed(dir: &Path) -> Result<Feed<FsStore>> {
    open_feed_with(dir, Access::ReadOnly)
}

fn open_feed_with(dir: &Path, access: Access) -> Result<Feed<FsStore>> {
    Ok(open_feed_dir(dir, access)?)
}

fn create(dir: &Path, json: bool) -> Result<ExitCode> {
    if dir.join("key").exists() {
        bail!("{}: a feed already exists here", dir.display());
    }
    let store =
        FsStore::open(dir, true).with_context(|| format!("creating feed {}", dir.display()))?;
    let feed = Feed::create(store, Ed25519KeyPair::generate())
        .with_context(|| format!("creating feed {}", dir.display()))?;
    if json {
        println!(
            "{}",
            json!({"key": hex::encode(feed.key()), "discoveryKey": hex::encode(feed.discovery_key())})
        );
    } else {
        println!("{}", hex::encode(feed.key()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Most blocks in one append batch (one signature each).
const MAX_BATCH_BLOCKS: usize = 4096;
/// Most bytes in one append batch.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

fn append(
    dir: &Path,
    file: Option<&Path>,
    block_size: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    let mut feed = open_feed_with(dir, Access::ReadWrite)?;
    if !feed.is_writable() {
        bail!(
            "{}: this feed has no secret key, so it cannot be appended to",
            dir.display()
        );
    }
    feed.set_durability(Durability::Power);
    let input: Box<dyn Read + Send> = match file {
        Some(p) if p != Path::new("-") => Box::new(
            std::fs::File::open(p).with_context(|| format!("{}: cannot open", p.display()))?,
        ),
        _ => Box::new(std::io::stdin()),
    };
    // A reader thread cuts blocks; this thread commits them in batches, at the latest
    // COMMIT_INTERVAL after the first pending block, so a slow stream is still live.
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(1024);
    let reader = std::thread::spawn(move || read_blocks(input, block_size, tx));
    let start_length = feed.length();
    // Group commit: wait for a block, take whatever else is already read (up to the batch
    // limits), commit that as one batch (one signature, one fsync), repeat. A slow stream
    // is committed block by block as it arrives; a fast one in large batches.
    'outer: while let Ok(first) = rx.recv() {
        let mut batch = vec![first.context("reading input")?];
        let mut batch_bytes = batch[0].len();
        while batch.len() < MAX_BATCH_BLOCKS && batch_bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    let block = m.context("reading input")?;
                    batch_bytes += block.len();
                    batch.push(block);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    feed.append_batch(&batch).context("appending")?;
                    break 'outer;
                }
            }
        }
        feed.append_batch(&batch).context("appending")?;
        tracing::debug!(length = feed.length(), "committed batch of {}", batch.len());
    }
    feed.sync().context("syncing")?;
    match reader.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e).context("reading input"),
        Err(_) => bail!("the input reader failed"),
    }
    if json {
        println!(
            "{}",
            json!({"length": feed.length(), "appended": feed.length() - start_length})
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Cuts the input into blocks (lines without their newline, or fixed-size chunks).
fn read_blocks(
    input: Box<dyn Read + Send>,
    block_size: Option<u64>,
    tx: mpsc::SyncSender<std::io::Result<Vec<u8>>>,
) -> std::io::Result<()> {
    let mut input = BufReader::with_capacity(1 << 16, input);
    match block_size {
        Some(size) => loop {
            let mut block = Vec::with_capacity(size as usize);
            (&mut input).take(size).read_to_end(&mut block)?;
            if block.is_empty() {
                return Ok(());
            }
            let short = (block.len() as u64) < size;
            if tx.send(Ok(block)).is_err() || short {
                return Ok(());
            }
        },
        None => loop {
            let mut line = Vec::new();
            // A line longer than a block may be is cut off there and reported.
            let n = (&mut input)
                .take(dazaar::storage::feed::MAX_BLOCK_SIZE as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(());
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            } else if line.len() > dazaar::storage::feed::MAX_BLOCK_SIZE {
                let err = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a line is longer than the 8 MiB block limit",
                );
                let _ = tx.send(Err(err));
                return Ok(());
            }
            if tx.send(Ok(line)).is_err() {
                return Ok(());
            }
        },
    }
}

fn info_json(feed: &Feed<FsStore>) -> Result<serde_json::Value> {
    let signature = feed.signature()?.map(hex::encode);
    Ok(json!({
        "key": hex::encode(feed.key()),
        "discoveryKey": hex::encode(feed.discovery_key()),
        "length": feed.length(),
        "byteLength": feed.byte_length(),
        "held": feed.held(),
        "treeHash": hex::encode(feed.tree_hash()),
        "signature": signature,
    }))
}

fn info(dir: &Path, json: bool) -> Result<ExitCode> {
    let feed = open_feed(dir)?;
    let info = info_json(&feed)?;
    if json {
        println!("{info}");
    } else {
        println!("key:           {}", hex::encode(feed.key()));
        println!("discovery key: {}", hex::encode(feed.discovery_key()));
        println!("length:        {}", feed.length());
        println!("byte length:   {}", feed.byte_length());
        println!("held blocks:   {}", feed.held());
        println!("writable:      {}", feed.is_writable());
        println!("tree hash:     {}", hex::encode(feed.tree_hash()));
        println!(
            "signature:     {}",
            info["signature"].as_str().unwrap_or("(none)")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cat(dir: &Path, start: u64, end: Option<u64>, lines: bool) -> Result<ExitCode> {
    let feed = open_feed(dir)?;
    let end = end.unwrap_or(feed.length());
    if end > feed.length() {
        bail!("--end {end} is past the feed's length {}", feed.length());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for i in start..end {
        let block = feed
            .get(i)
            .with_context(|| format!("reading block {i}"))?
            .with_context(|| format!("block {i} is not held (sparse feed)"))?;
        let written =
            out.write_all(&block)
                .and_then(|_| if lines { out.write_all(b"\n") } else { Ok(()) });
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e).context("writing to stdout");
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn import(js_dir: &Path, dir: &Path, json: bool) -> Result<ExitCode> {
    if !js_dir.is_dir() {
        bail!("{}: no such feed directory", js_dir.display());
    }
    if !js_dir.join("key").is_file() {
        bail!("{}: not a hypercore feed (no key file)", js_dir.display());
    }
    if dir.join("key").exists() {
        bail!("{}: a feed already exists here", dir.display());
    }
    let source_store =
        FsStore::open_read_only(js_dir).with_context(|| format!("reading {}", js_dir.display()))?;
    let source =
        Feed::open(source_store, None).with_context(|| format!("reading {}", js_dir.display()))?;
    let length = source.length();
    let held = source.held();
    let progress = progress_bar(held);

    let store = FsStore::open(dir, true).with_context(|| format!("creating {}", dir.display()))?;
    let secret = source.store().read_secret_key_checked()?;
    let mut dest = match secret {
        Some(pair) => Feed::create(store, pair)?,
        None => Feed::create_reader(store, source.key())?,
    };
    if dest.is_writable() && held == length {
        // A writer's feed: re-append in batches (every block's hash is checked by `get`),
        // then require the same signed tree.
        let mut batch = Vec::new();
        for i in 0..length {
            let block = source
                .get(i)
                .with_context(|| format!("block {i} of {}", js_dir.display()))?;
            batch.push(block.with_context(|| format!("block {i} is missing"))?);
            if batch.len() >= MAX_BATCH_BLOCKS || i + 1 == length {
                dest.append_batch(&batch)?;
                progress.inc(batch.len() as u64);
                batch.clear();
            }
        }
        if dest.tree_hash() != source.tree_hash() {
            bail!(
                "imported tree does not match the signed tree of {}",
                js_dir.display()
            );
        }
    } else {
        // A replica (or a sparse writer): move every held block with its proof, so each
        // is verified against the signed roots before it is stored.
        let mut remote = NodeSet::new();
        for i in 0..length {
            if !source.has(i) {
                continue;
            }
            let value = source
                .get(i)
                .with_context(|| format!("block {i} of {}", js_dir.display()))?
                .with_context(|| format!("block {i} is missing"))?;
            let proof = source.proof(i, dest.digest(i), &mut remote, false)?;
            let sig = if proof.verified_by > 0 {
                source.signature_at(proof.verified_by / 2)?
            } else {
                None
            };
            dest.put(i, Some(&value), &proof.nodes, sig.as_ref())
                .with_context(|| format!("block {i} of {} does not verify", js_dir.display()))?;
            progress.inc(1);
        }
    }
    dest.sync()?;
    progress.finish_and_clear();
    if json {
        println!("{}", info_json(&dest)?);
    } else {
        eprintln!(
            "imported {} blocks ({} bytes) into {}",
            held,
            dest.byte_length(),
            dir.display()
        );
        println!("{}", hex::encode(dest.key()));
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} blocks {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Reading a feed's secret key as a key pair, checked against its public half.
trait SecretKeyExt {
    fn read_secret_key_checked(&self) -> Result<Option<Ed25519KeyPair>>;
}

impl SecretKeyExt for FsStore {
    fn read_secret_key_checked(&self) -> Result<Option<Ed25519KeyPair>> {
        use dazaar::storage::Store;
        match self.read_secret_key()? {
            Some(secret) => Ok(Some(
                Ed25519KeyPair::from_secret_key(&secret)
                    .map_err(|_| anyhow::anyhow!("secret_key does not belong to key"))?,
            )),
            None => Ok(None),
        }
    }
}
