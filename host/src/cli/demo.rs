//! `dazaar demo`: the README's main job, a real sale on localhost, narrated.
//!
//! In one process: a seller with a sample feed sells it through the ledger payment
//! plugin (loaded from its shared library, like any plugin); a buyer asks to buy before
//! paying and is refused; a ledger entry pays for a few seconds; the buyer downloads its
//! own rekeyed copy, receives live appends, and is cut off when its time runs out. Ends
//! by itself with exit 0, or non-zero if any step fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dazaar::crypto::Ed25519KeyPair;
use dazaar::market::shop::{self, SellLimits};
use dazaar::market::{self, BuyOptions, BuyerEvent, Identity, Product, ProductOptions};
use dazaar::net::{NetConfig, SharedFeed};
use dazaar::payments::{PaymentSpec, PaymentTerms, PluginRegistry};
use dazaar::storage::{Feed, FsStore};
use tokio::sync::{mpsc, watch};

/// Where the demo looks for `libdazaar_ledger.so`: `DAZAAR_PLUGIN_DIR`, next to the
/// `dazaar` binary (a cargo build puts it there), then `./plugins`.
fn ledger_dir() -> Result<PathBuf> {
    let name = dazaar::payments::plugin_file_name("ledger");
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("DAZAAR_PLUGIN_DIR") {
        candidates.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(d);
    }
    candidates.push(PathBuf::from("plugins"));
    for c in &candidates {
        if c.join(&name).is_file() {
            return Ok(c.clone());
        }
    }
    bail!("the ledger plugin ({name}) was not found next to dazaar or in ./plugins: build the workspace first (cargo build --release --workspace)")
}

fn step(start: Instant, text: impl AsRef<str>) {
    println!(
        "[{:>5.1}s] {}",
        start.elapsed().as_secs_f64(),
        text.as_ref()
    );
}

/// Runs the demo.
pub fn run() -> Result<ExitCode> {
    let rt = super::common::runtime()?;
    let result = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), demo()).await });
    match result {
        Ok(Ok(())) => {
            println!("demo finished: ok");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("the demo did not finish within a minute"),
    }
}

async fn demo() -> Result<()> {
    let t0 = Instant::now();
    let tmp = std::env::temp_dir().join(format!("dazaar-demo-{}", std::process::id()));
    let _cleanup = Cleanup(tmp.clone());
    std::fs::create_dir_all(&tmp)?;
    println!("dazaar demo: a sale on localhost, in {}", tmp.display());

    // The seller's feed: a sample of ticks.
    let mut feed = Feed::create(
        FsStore::open(tmp.join("seller/feed"), true)?,
        Ed25519KeyPair::generate(),
    )?;
    let ticks: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("BTC/USD {} @ {}", 40_000 + (i * 37) % 997, i).into_bytes())
        .collect();
    feed.append_batch(&ticks)?;
    let feed = SharedFeed::new(feed);
    step(
        t0,
        format!(
            "seller: feed of {} ticks, key {}",
            ticks.len(),
            hex::encode(feed.lock().key())
        ),
    );

    // The ledger payment plugin, loaded from its shared library.
    let plugin_dir = ledger_dir()?;
    let mut registry = PluginRegistry::new();
    let ledger_file = tmp.join("seller/ledger.jsonl");
    let config = format!(
        "file = {:?}\nreload_ms = 0\n",
        ledger_file.display().to_string()
    );
    // Price: 1 credit per second, in the plugin's first method.
    let price = PaymentTerms::new("", "credits", "1", "seconds", "1");
    let revalidate = Duration::from_millis(250);
    let gate = shop::gate_for(
        &mut registry,
        &plugin_dir,
        Some(&PaymentSpec {
            plugin: "ledger",
            method: None,
            price: &price,
            config: &config,
            state: None,
        }),
        revalidate,
        &SellLimits::default(),
    )
    .context("loading the ledger plugin")?;
    let ledger = registry
        .get("ledger")
        .context("the ledger plugin is not in the registry")?;
    step(
        t0,
        format!(
            "seller: payment plugin `{}` {} from {}",
            ledger.name(),
            ledger.version(),
            plugin_dir.display()
        ),
    );

    let seller_id = Identity::from_master_key(rand::random());
    let product = Product::new(
        &seller_id,
        feed.clone(),
        Arc::new(gate),
        ProductOptions {
            terms: None,
            revalidate,
            deny: false,
            state: dazaar::state::StatePlace::default_in(&tmp.join("seller")),
            handshake_timeout: market::seller::HANDSHAKE_TIMEOUT,
            unpaid_grace: market::seller::UNPAID_GRACE,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(market::seller::serve(
        listener,
        product.clone(),
        NetConfig::default(),
        stop_rx,
        None,
    ));
    step(
        t0,
        format!(
            "seller: listening on {addr}, seller key {}",
            hex::encode(product.seller_key())
        ),
    );

    let buyer = Identity::from_master_key(rand::random());
    let buyer_key = buyer.buyer_key_pair().public_key();
    let out = tmp.join("buyer/feed");
    let opts = |live: bool| BuyOptions {
        seller_key: product.seller_key(),
        addr,
        out: out.clone(),
        live,
        accept_terms: false,
        data_dir: tmp.join("buyer"),
        net: NetConfig::default(),
        answer_timeout: Duration::from_secs(10),
        send: Vec::new(),
        report_blocks: false,
        range: None,
        tail: false,
    };
    let (_keep, never) = watch::channel(false);

    // 1. Before paying: refused.
    match market::buy(&buyer, opts(false), None, never.clone()).await {
        Err(market::BuyError::Rejected(reason)) => step(
            t0,
            format!(
                "buyer {}: refused before paying: {reason}",
                &hex::encode(buyer_key)[..16]
            ),
        ),
        Ok(_) => bail!("an unpaid buyer was served"),
        Err(e) => return Err(e.into()),
    }
    ensure!(!out.join("key").exists(), "an unpaid buyer received a feed");

    // 2. Pay for 4 seconds (a ledger entry, as `dazaar ledger add` writes it).
    let line = format!(
        "{{\"buyer\":\"{}\",\"amount\":4,\"time\":{}}}\n",
        hex::encode(buyer_key),
        dazaar::payments::now_ms()
    );
    std::fs::write(&ledger_file, line)?;
    step(t0, "buyer: paid 4 credits (4 seconds of data)");

    // 3. Buy live: download, then follow appends until the time runs out.
    let (tx, mut rx) = mpsc::channel(8192);
    let (stop_buyer, buyer_shutdown) = watch::channel(false);
    let buyer_task = {
        let opts = opts(true);
        tokio::spawn(async move { market::buy(&buyer, opts, Some(tx), buyer_shutdown).await })
    };
    let appender = {
        let feed = feed.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = feed.append_batch(&[format!("BTC/USD live tick {i}").into_bytes()]);
                i += 1;
            }
        })
    };
    let mut got_feed = None;
    let mut synced_once = false;
    let mut live_seen = 0u64;
    let mut invalid = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .context("the buyer went quiet")?
    {
        match ev {
            BuyerEvent::Feed { key } => {
                step(
                    t0,
                    format!("buyer: got its own rekeyed feed {}", hex::encode(key)),
                );
                got_feed = Some(key);
            }
            BuyerEvent::Valid(info) if !synced_once => {
                step(t0, format!("buyer: seller says valid: {info}"))
            }
            BuyerEvent::Synced { length, .. } => {
                if !synced_once {
                    step(
                        t0,
                        format!(
                            "buyer: downloaded all {length} blocks, verified against its feed key"
                        ),
                    );
                    synced_once = true;
                } else if length > ticks.len() as u64 {
                    live_seen = length - ticks.len() as u64;
                }
            }
            BuyerEvent::Invalid(reason) => {
                invalid = Some(reason);
                break;
            }
            _ => {}
        }
    }
    let reason = invalid.context("the buyer was never cut off")?;
    step(
        t0,
        format!("buyer: received {live_seen} live ticks, then was cut off: {reason}"),
    );
    ensure!(
        got_feed.is_some() && synced_once,
        "the buyer did not get its data"
    );
    ensure!(
        got_feed != Some(product.feed_key),
        "the buyer got the seller's own feed key, not a rekeyed one"
    );
    ensure!(live_seen > 0, "no live append reached the buyer");

    // 4. After the lapse, appends no longer reach the buyer.
    let held_at_lapse = {
        let f = Feed::open(FsStore::open_read_only(&out)?, None)?;
        f.downloaded(0, f.length())
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let held_later = {
        let f = Feed::open(FsStore::open_read_only(&out)?, None)?;
        f.downloaded(0, f.length())
    };
    let seller_len = feed.length();
    step(
        t0,
        format!("seller: feed now {seller_len} blocks; the lapsed buyer still holds {held_later}"),
    );
    ensure!(
        held_later <= held_at_lapse + 1,
        "blocks kept flowing after the payment lapsed"
    );
    ensure!(
        seller_len > held_later,
        "the seller's later appends should not have reached the lapsed buyer"
    );

    appender.abort();
    let _ = stop_buyer.send(true);
    let _ = buyer_task.await;
    let _ = stop.send(true);
    Ok(())
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
