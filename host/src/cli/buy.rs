//! `dazaar buy`: finds the seller, runs [`dazaar::market::buy`] and renders its events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use dazaar::market::{self, BuyOptions, BuyerEvent};
use dazaar::net::NetConfig;
use serde_json::json;
use tokio::sync::mpsc;

use super::common::{parse_key, print_json, runtime, signals, Common};
use super::terminal::{escape, Lines};

/// `dazaar buy`.
#[derive(Debug, Args)]
pub struct BuyArgs {
    /// The seller key (hex; the card's `id`).
    pub seller_key: String,
    /// The seller's address: dial it directly, with no discovery at all (default: find
    /// the seller by its key on the DHT, mDNS and static peers).
    #[arg(long)]
    pub connect: Option<SocketAddr>,
    /// Where the feed goes.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep following new blocks (and keep waiting while not valid).
    #[arg(long)]
    pub live: bool,
    /// Accept the seller's terms of use (recorded in the data dir).
    #[arg(long)]
    pub accept_terms: bool,
    /// Download only from this block on (a sparse range).
    #[arg(long)]
    pub start: Option<u64>,
    /// Download only up to (not including) this block (a sparse range).
    #[arg(long)]
    pub end: Option<u64>,
    /// Download only blocks appended from now on (a live tail; implies --live).
    #[arg(long, conflicts_with_all = ["start", "end"])]
    pub tail: bool,
    /// Give up when the seller has not answered in this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// How the seller is found without --connect.
    #[command(flatten)]
    pub discovery: super::discovery::DiscoveryArgs,
}

/// Runs `dazaar buy`.
pub fn buy(common: &Common, args: BuyArgs) -> Result<ExitCode> {
    let settings = common.settings()?;
    let data_dir = common.data_dir(settings.as_ref());
    let identity = common.identity(settings.as_ref())?;
    let seller_key = parse_key(&args.seller_key, "the seller key")?;
    let discovery = args.discovery.options(settings.as_ref())?;
    let mut opts = BuyOptions {
        seller_key,
        // Without --connect, replaced by the address discovery finds.
        addr: args
            .connect
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        out: args.out.clone(),
        live: args.live || args.tail,
        accept_terms: args.accept_terms,
        data_dir,
        net: NetConfig::default(),
        answer_timeout: Duration::from_secs(args.timeout.max(1)),
        send: Vec::new(),
        report_blocks: false,
        range: match (args.start, args.end) {
            (None, None) => None,
            (start, end) => Some((start.unwrap_or(0), end)),
        },
        tail: args.tail,
    };
    let json = args.json;
    let result = runtime()?.block_on(async move {
        let shutdown = signals();
        if args.connect.is_none() {
            let kp = identity.buyer_key_pair();
            opts.addr = super::discovery::find(
                &kp,
                seller_key,
                &discovery,
                &opts.data_dir,
                shutdown.clone(),
                json,
            )
            .await?;
        }
        let (tx, mut rx) = mpsc::channel::<BuyerEvent>(4096);
        let buying =
            tokio::spawn(async move { market::buy(&identity, opts, Some(tx), shutdown).await });
        let bar = super::feed::progress_bar(0);
        while let Some(ev) = rx.recv().await {
            match &ev {
                BuyerEvent::Feed { key } => {
                    if json {
                        print_json(json!({"event": "feed", "key": hex::encode(key)}));
                    } else {
                        bar.suspend(|| println!("feed {}", hex::encode(key)));
                    }
                }
                BuyerEvent::Valid(info) if json => {
                    print_json(json!({"event": "valid", "info": info}));
                }
                BuyerEvent::Invalid(error) => {
                    if json {
                        print_json(json!({"event": "invalid", "error": error}));
                    } else {
                        bar.suspend(|| println!("not valid: {}", escape(error, Lines::Escape)));
                    }
                }
                BuyerEvent::Terms(terms) if !json => {
                    bar.suspend(|| {
                        println!("terms of use (accepted):\n{}", escape(terms, Lines::Keep))
                    });
                }
                BuyerEvent::UserMessage { name, message } if json => {
                    print_json(json!({"event": "user-message", "name": name, "message": message}));
                }
                BuyerEvent::Progress { length, downloaded } => {
                    bar.set_length(*length);
                    bar.set_position(*downloaded);
                }
                BuyerEvent::Synced {
                    length,
                    byte_length,
                } if json && (args.live || args.tail) => {
                    print_json(
                        json!({"event": "synced", "length": length, "byteLength": byte_length}),
                    );
                }
                _ => {}
            }
        }
        bar.finish_and_clear();
        match buying.await {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::anyhow!("buyer task failed: {e}")),
        }
    });
    match result {
        Ok(out) => {
            if json {
                print_json(
                    json!({"event": "done", "length": out.length, "byteLength": out.byte_length}),
                );
            } else {
                println!(
                    "holding {} blocks ({} bytes) of feed {} in {}",
                    out.length,
                    out.byte_length,
                    hex::encode(out.feed_key),
                    args.out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}
