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
    /// With --live: end when the connection drops instead of reconnecting (by default a
    /// live buyer reconnects with jittered backoff, 0.5 s doubling to 30 s, and resumes).
    #[arg(long)]
    pub no_reconnect: bool,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// How the seller is found without --connect.
    #[command(flatten)]
    pub discovery: super::discovery::DiscoveryArgs,
}

/// `dazaar buy`'s exit codes (clap's usage errors exit with 2).
pub mod exit {
    /// The seller refused: not paid, or no longer valid.
    pub const INVALID: u8 = 3;
    /// The seller was not found or could not be reached.
    pub const UNREACHABLE: u8 = 4;
    /// The seller's terms of use were not accepted (or changed since).
    pub const TERMS: u8 = 5;
}

/// The exit code for a failed purchase: see [`exit`]; 1 for anything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    let Some(e) = err
        .chain()
        .find_map(|c| c.downcast_ref::<market::BuyError>())
    else {
        return 1;
    };
    match e {
        market::BuyError::Rejected(_) => exit::INVALID,
        market::BuyError::Net(_) | market::BuyError::Timeout(_) | market::BuyError::NotFound(_) => {
            exit::UNREACHABLE
        }
        market::BuyError::Terms(_) => exit::TERMS,
        _ => 1,
    }
}

/// Runs `dazaar buy`: exit 0 when done, else the error on stderr and [`exit_code`].
pub fn buy(common: &Common, args: BuyArgs) -> Result<ExitCode> {
    match run(common, args) {
        Ok(code) => Ok(code),
        Err(err) => {
            let text = format!("{err:#}");
            eprintln!("dazaar: {}", escape(&text, Lines::Keep));
            Ok(ExitCode::from(exit_code(&err)))
        }
    }
}

fn run(common: &Common, args: BuyArgs) -> Result<ExitCode> {
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
        let kp = identity.buyer_key_pair();
        let data_dir = opts.data_dir.clone();
        let connect = args.connect;
        let find_shutdown = shutdown.clone();
        // The seller's address: --connect, or discovery (again at each reconnection).
        let find = move || {
            let (kp, discovery, data_dir, shutdown) = (
                kp.clone(),
                discovery.clone(),
                data_dir.clone(),
                find_shutdown.clone(),
            );
            async move {
                match connect {
                    Some(addr) => Ok(addr),
                    None => super::discovery::find(
                        &kp, seller_key, &discovery, &data_dir, shutdown, json,
                    )
                    .await
                    .map_err(|e| market::BuyError::NotFound(format!("{e:#}"))),
                }
            }
        };
        opts.addr = find().await?;
        let (tx, mut rx) = mpsc::channel::<BuyerEvent>(4096);
        let reconnect = (!args.no_reconnect).then(market::Reconnect::default);
        let buying = tokio::spawn(async move {
            match reconnect {
                Some(r) => {
                    market::buy_reconnecting(&identity, opts, Some(tx), shutdown, r, find).await
                }
                None => market::buy(&identity, opts, Some(tx), shutdown).await,
            }
        });
        // Set between a disconnection and the next handshake.
        let mut away = false;
        let bar = super::feed::progress_bar(0);
        while let Some(ev) = rx.recv().await {
            match &ev {
                BuyerEvent::Connected if away => {
                    away = false;
                    if json {
                        print_json(json!({"event": "reconnected"}));
                    } else {
                        bar.suspend(|| println!("reconnected"));
                    }
                }
                BuyerEvent::Disconnected { error } => {
                    away = true;
                    if json {
                        print_json(json!({"event": "disconnected", "error": error}));
                    } else {
                        bar.suspend(|| println!("disconnected: {}", escape(error, Lines::Escape)));
                    }
                }
                BuyerEvent::Reconnecting { attempt, after } if json => {
                    print_json(json!({
                        "event": "reconnecting",
                        "attempt": attempt,
                        "afterMs": u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    }));
                }
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
