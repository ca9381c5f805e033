//! `dazaar sell`, `buy`, `card`, `revoke`, `burn`, `id`: the market from the command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dazaar::config::Settings;
use dazaar::market::{
    self, BuyOptions, BuyerEvent, Identity, KdfParams, Product, ProductOptions, SellerEvent,
};
use dazaar::net::{NetConfig, SharedFeed};
use dazaar::payments::{
    CallLimits, GateLimits, PaymentEntry, PaymentGate, PaymentTerms, PluginRegistry,
};
use dazaar::storage::FsStore;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::terminal::{escape, Lines};

/// Options shared by the market commands: where identity and state live.
#[derive(Debug, Clone, Default)]
pub struct Common {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--config`.
    pub config: Option<PathBuf>,
}

impl Common {
    /// The configuration: `--config`, else `./dazaar.toml` when it exists.
    pub fn settings(&self) -> Result<Option<Settings>> {
        let path = match &self.config {
            Some(p) => p.clone(),
            None if Path::new("dazaar.toml").is_file() => PathBuf::from("dazaar.toml"),
            None => return Ok(None),
        };
        Ok(Some(dazaar::config::load(&path)?))
    }

    /// The data dir: `--data-dir`, else the config's, else `~/.local/share/dazaar`.
    pub fn data_dir(&self, settings: Option<&Settings>) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        if let Some(s) = settings {
            return s.data_dir.clone();
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/share/dazaar")
    }

    /// Loads (or creates) the identity of the data dir. An encrypted master key takes its
    /// passphrase from the variable the config names (`passphrase_env`), else
    /// `DAZAAR_PASSPHRASE`, else from a prompt on the terminal.
    pub fn identity(&self, settings: Option<&Settings>) -> Result<Identity> {
        let dir = self.data_dir(settings);
        let var = settings
            .and_then(|s| s.passphrase_env.clone())
            .unwrap_or_else(|| "DAZAAR_PASSPHRASE".into());
        let passphrase = std::env::var(&var).ok();
        match Identity::load_or_create(&dir, passphrase.as_deref(), KdfParams::default()) {
            Err(market::IdentityError::PassphraseRequired(_)) if passphrase.is_none() => {
                let pass = rpassword::prompt_password("dazaar master key passphrase: ").context(
                    "reading the master key passphrase (set the variable named by passphrase_env, or DAZAAR_PASSPHRASE, to pass it without a terminal)",
                )?;
                Ok(Identity::load_or_create(
                    &dir,
                    Some(&pass),
                    KdfParams::default(),
                )?)
            }
            other => Ok(other?),
        }
    }
}

/// `dazaar sell`.
#[derive(Debug, Args)]
pub struct SellArgs {
    /// The feed to sell (else every `[[sell]]` of the config).
    pub feed_dir: Option<PathBuf>,
    /// Where to listen (default: the config's `listen`, else 127.0.0.1:0).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// `free`, or the name of a payment plugin in the plugin dir.
    #[arg(long, default_value = "free")]
    pub payment: String,
    /// The plugin's own settings (TOML), e.g. `file = "ledger.jsonl"`.
    #[arg(long, default_value = "")]
    pub plugin_config: String,
    /// Where payment plugins are (default: the config's, else ./plugins).
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    /// Price: amount per interval.
    #[arg(long, default_value = "1")]
    pub amount: String,
    /// Price: currency.
    #[arg(long, default_value = "credits")]
    pub currency: String,
    /// Price: the interval's unit (seconds, minutes, hours).
    #[arg(long, default_value = "seconds")]
    pub unit: String,
    /// Price: the interval.
    #[arg(long, default_value = "1")]
    pub interval: String,
    /// Card method (default: the plugin's first).
    #[arg(long)]
    pub method: Option<String>,
    /// A file with terms of use buyers must accept.
    #[arg(long)]
    pub terms: Option<PathBuf>,
    /// Revalidate buyers this often (ms).
    #[arg(long, default_value_t = 1000)]
    pub revalidate_ms: u64,
    /// Refuse every buyer.
    #[arg(long)]
    pub deny: bool,
    /// Disconnect a buyer that is not valid for this many seconds (default: the config's
    /// `limits.unpaid_grace_secs`, else 60).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub unpaid_grace_secs: Option<u64>,
    /// Most connections at once (default: the config's `limits.max_connections`, else
    /// 4096); never more than the file descriptor limit allows.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,
    /// Most connections at once from one IP address, 0 for no cap (default: the config's
    /// `limits.max_connections_per_ip`, else 32).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub max_connections_per_ip: Option<u64>,
    /// Fresh payment checks of unknown buyer keys per second from one IP address, 0 for no
    /// limit (default: the config's `limits.payment_checks_per_ip`, else 4). For the
    /// products of a config's `[[sell]]` tables, set `limits.payment_checks_per_ip`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub payment_checks_per_ip: Option<u32>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// How the seller is announced (DHT, mDNS).
    #[command(flatten)]
    pub discovery: super::discovery::AnnounceArgs,
}

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

/// `dazaar card ...`.
#[derive(Debug, Subcommand)]
pub enum CardCmd {
    /// Check a card file.
    Validate {
        /// The card (JSON).
        file: PathBuf,
        /// Print the parsed card as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `dazaar card`.
#[derive(Debug, Args)]
pub struct CardArgs {
    /// Check a card instead of writing one.
    #[command(subcommand)]
    pub cmd: Option<CardCmd>,
    /// Write the card of this feed (free unless the config sells it) instead of the config's.
    #[arg(long)]
    pub feed: Option<PathBuf>,
    /// Product name for `--feed`.
    #[arg(long)]
    pub name: Option<String>,
    /// Write each card to DIR/<sellerKey>.json instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `dazaar revoke` / `dazaar burn`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The buyer's key (hex).
    pub buyer_key: String,
    /// The feed sold.
    #[arg(long)]
    pub feed: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dazaar id`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Also show the seller key for this feed.
    #[arg(long)]
    pub feed: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Import a master key (hex, e.g. from JS dazaar) into an empty data dir.
    #[arg(long)]
    pub import_master_key: Option<String>,
    /// With --import-master-key: encrypt it with the passphrase in DAZAAR_PASSPHRASE.
    #[arg(long)]
    pub encrypt: bool,
}

fn parse_key(hex_key: &str, what: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hex_key.trim()).with_context(|| format!("{what} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what} is not 32 bytes (64 hex digits)"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn print_json(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A shutdown signal that turns true on SIGINT or SIGTERM.
fn signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        let _ = tx.send(true);
    });
    rx
}

fn open_sold_feed(dir: &Path) -> Result<Arc<SharedFeed<FsStore>>> {
    // The seller only reads: appends come from `dazaar feed append` (or a writer's own
    // process) and are picked up by refresh.
    Ok(SharedFeed::new(super::feed::open_feed(dir)?))
}

fn limits() -> CallLimits {
    CallLimits {
        timeout: Duration::from_secs(5),
        workers: 2,
        queue: 256,
    }
}

/// Runs `dazaar sell`.
pub fn sell(common: &Common, args: SellArgs) -> Result<ExitCode> {
    let settings = common.settings()?;
    let data_dir = common.data_dir(settings.as_ref());
    let identity = common.identity(settings.as_ref())?;
    let mut products: Vec<Arc<Product>> = Vec::new();
    let terms = match &args.terms {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the terms", p.display()))?,
        ),
        None => None,
    };
    let revalidate = Duration::from_millis(args.revalidate_ms.max(10));
    let conn_limits = settings
        .as_ref()
        .map(|s| s.limits.clone())
        .unwrap_or_default();
    let unpaid_grace = args
        .unpaid_grace_secs
        .map(Duration::from_secs)
        .or(conn_limits.unpaid_grace)
        .unwrap_or(market::seller::UNPAID_GRACE);
    let net_config = seller_net_config(&args, &conn_limits);
    let mut registry = PluginRegistry::new();
    if let Some(feed_dir) = &args.feed_dir {
        let feed = open_sold_feed(feed_dir)?;
        let gate = if args.payment == "free" {
            PaymentGate::new(Vec::new(), revalidate)
        } else {
            let plugin_dir = args
                .plugin_dir
                .clone()
                .or_else(|| settings.as_ref().map(|s| s.plugin_dir.clone()))
                .unwrap_or_else(|| PathBuf::from("plugins"));
            let plugin = registry.load_named(&plugin_dir, &args.payment)?;
            let method = args
                .method
                .clone()
                .or_else(|| plugin.methods().next().map(str::to_owned))
                .unwrap_or_else(|| args.payment.clone());
            let terms = PaymentTerms::new(
                &method,
                &args.currency,
                &args.amount,
                &args.unit,
                &args.interval,
            );
            dazaar_plugin_api::Rate::from_card(&terms.amount, &terms.unit, &terms.interval)
                .map_err(|e| anyhow::anyhow!("the price: {e}"))?;
            let verifier = plugin.open(&args.plugin_config, limits())?;
            let mut gate_limits = GateLimits::default();
            if let Some(n) = args
                .payment_checks_per_ip
                .or(conn_limits.payment_checks_per_ip)
            {
                gate_limits = gate_limits.with_checks_per_ip(n);
            }
            PaymentGate::with_limits(
                vec![PaymentEntry {
                    terms: Arc::new(terms),
                    verifier,
                }],
                revalidate,
                gate_limits,
            )
        };
        products.push(Product::new(
            &identity,
            feed,
            Arc::new(gate),
            ProductOptions {
                terms: terms.clone(),
                revalidate,
                deny: args.deny,
                data_dir: data_dir.clone(),
                handshake_timeout: market::seller::HANDSHAKE_TIMEOUT,
                unpaid_grace,
            },
        ));
    } else {
        let Some(settings) = &settings else {
            bail!("nothing to sell: give a feed directory or a config with [[sell]] tables");
        };
        if settings.sell.is_empty() {
            bail!("{}: no [[sell]] table", settings.file.display());
        }
        for sell in &settings.sell {
            let feed = open_sold_feed(&sell.feed)?;
            let gate = settings.payment_gate(sell, &mut registry, limits())?;
            products.push(Product::new(
                &identity,
                feed,
                Arc::new(gate),
                ProductOptions {
                    terms: sell.terms.clone().or_else(|| terms.clone()),
                    revalidate: sell.revalidate,
                    deny: args.deny,
                    data_dir: data_dir.clone(),
                    handshake_timeout: market::seller::HANDSHAKE_TIMEOUT,
                    unpaid_grace,
                },
            ));
        }
    }
    let listen = args
        .listen
        .or_else(|| settings.as_ref().map(|s| s.listen))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let json = args.json;
    let discovery = args.discovery.options(settings.as_ref())?;
    runtime()?.block_on(async move {
        let shutdown = signals();
        let (ev_tx, mut ev_rx) = mpsc::channel::<SellerEvent>(1024);
        let mut servers = Vec::new();
        let mut advertisers = Vec::new();
        for (i, product) in products.iter().enumerate() {
            // One listener per product: the Noise static key is the product's seller key.
            let addr = if i == 0 { listen } else { SocketAddr::new(listen.ip(), 0) };
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
            let local = listener.local_addr()?;
            let seller_key = hex::encode(product.seller_key());
            let feed_key = hex::encode(product.feed_key);
            if json {
                print_json(json!({"event": "listening", "addr": local.to_string(), "sellerKey": seller_key, "feedKey": feed_key, "maxConnections": net_config.max_connections, "maxConnectionsPerIp": net_config.max_connections_per_ip}));
            } else {
                println!("selling feed {feed_key}\n  seller key {seller_key}\n  listening on {local}");
            }
            advertisers.push(super::discovery::advertise(product.seller_key(), local, &discovery, shutdown.clone(), json)?);
            dazaar::net::spawn_refresh(product.feed.clone(), Duration::from_millis(20), shutdown.clone());
            servers.push(tokio::spawn(market::seller::serve(
                listener,
                product.clone(),
                net_config.clone(),
                shutdown.clone(),
                Some(ev_tx.clone()),
            )));
        }
        drop(ev_tx);
        let mut stop = shutdown.clone();
        loop {
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(ev) => report_seller_event(&ev, json),
                    None => break,
                },
                _ = stop.changed() => break,
            }
        }
        drop(advertisers);
        for s in servers {
            let _ = s.await;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The seller's connection settings: the flags, else the config's `[limits]`, else the
/// defaults; the connection limit never above what RLIMIT_NOFILE allows (its soft limit
/// is raised to the hard one first).
fn seller_net_config(args: &SellArgs, limits: &dazaar::config::LimitSettings) -> NetConfig {
    let configured = args
        .max_connections
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .or(limits.max_connections)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let per_ip = args
        .max_connections_per_ip
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .or(limits.max_connections_per_ip)
        .unwrap_or(dazaar::net::DEFAULT_MAX_CONNECTIONS_PER_IP);
    NetConfig {
        max_connections: dazaar::net::process_connection_limit(configured),
        max_connections_per_ip: per_ip,
        // Many buyers at once: bound what each may have queued for writing.
        write_high_water: 256 * 1024,
        ..NetConfig::default()
    }
}

/// The seller's default connection limit.
const DEFAULT_MAX_CONNECTIONS: usize = 4096;

fn report_seller_event(ev: &SellerEvent, json: bool) {
    let (v, text) = match ev {
        SellerEvent::BuyerConnected { buyer } => (
            json!({"event": "buyer-connected", "buyer": hex::encode(buyer)}),
            format!("buyer {} connected", &hex::encode(buyer)[..16]),
        ),
        SellerEvent::BuyerValid {
            buyer,
            feed_key,
            info,
        } => (
            json!({"event": "buyer-valid", "buyer": hex::encode(buyer), "feedKey": hex::encode(feed_key), "info": info}),
            format!("buyer {} valid: {info}", &hex::encode(buyer)[..16]),
        ),
        SellerEvent::BuyerInvalid { buyer, reason } => (
            json!({"event": "buyer-invalid", "buyer": hex::encode(buyer), "error": reason}),
            format!("buyer {} invalid: {reason}", &hex::encode(buyer)[..16]),
        ),
        SellerEvent::BuyerDisconnected { buyer, error } => (
            json!({"event": "buyer-disconnected", "buyer": buyer.map(hex::encode), "error": error}),
            format!(
                "buyer {} disconnected{}",
                buyer
                    .map(|b| hex::encode(b)[..16].to_string())
                    .unwrap_or_else(|| "(before the handshake)".into()),
                error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        ),
        _ => return,
    };
    if json {
        print_json(v);
    } else {
        println!("{}", escape(&text, Lines::Escape));
    }
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

/// Runs `dazaar card`.
pub fn card(common: &Common, args: CardArgs) -> Result<ExitCode> {
    if let Some(CardCmd::Validate { file, json }) = args.cmd {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{}: cannot read", file.display()))?;
        let card = dazaar::card::parse(&text).with_context(|| format!("{}", file.display()))?;
        if json {
            print_json(card.json.clone());
        } else {
            let methods: Vec<String> = card
                .payment
                .iter()
                .map(|p| format!("{} {}", p.method, p.currency))
                .collect();
            let methods = if methods.is_empty() {
                "free".to_string()
            } else {
                methods.join(", ")
            };
            println!(
                "valid card: seller {}, {}",
                hex::encode(card.seller_key),
                escape(&methods, Lines::Escape)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let settings = common.settings()?;
    let data_dir = common.data_dir(settings.as_ref());
    let identity = common.identity(settings.as_ref())?;
    let mut cards = Vec::new();
    let burnt_of = |seller: &[u8; 32], feed_key: &[u8; 32]| -> Result<Vec<serde_json::Value>> {
        let map = market::revocation::load(&data_dir)?;
        Ok(map
            .get(&hex::encode(seller))
            .map(|m| {
                m.iter()
                    .filter(|(_, r)| r.burnt)
                    .filter_map(|(buyer, _)| {
                        let b = parse_key(buyer, "buyer").ok()?;
                        let pair = identity.rekeyed_key_pair(feed_key, &b);
                        Some(json!({"buyer": buyer, "feedKey": hex::encode(pair.public_key()), "secretKey": hex::encode(pair.secret_key())}))
                    })
                    .collect()
            })
            .unwrap_or_default())
    };
    let mut add = |name: &str,
                   card_settings: &dazaar::config::CardSettings,
                   feed_dir: &Path,
                   terms: Vec<PaymentTerms>|
     -> Result<()> {
        let feed = super::feed::open_feed(feed_dir)?;
        let seller = identity.seller_key_pair(&feed.key()).public_key();
        let mut card = dazaar::card::build(name, card_settings, &seller, &terms);
        let burnt = burnt_of(&seller, &feed.key())?;
        if !burnt.is_empty() {
            card["burnt"] = serde_json::Value::Array(burnt);
        }
        cards.push((seller, card));
        Ok(())
    };
    if let Some(feed) = &args.feed {
        let name = args.name.clone().unwrap_or_else(|| {
            feed.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        add(&name, &Default::default(), feed, Vec::new())?;
    } else {
        let Some(settings) = &settings else {
            bail!("no card to write: give --feed DIR or a config with [[sell]] tables");
        };
        for sell in &settings.sell {
            let terms = sell
                .payment
                .iter()
                .map(|p| {
                    let mut t = p.terms.clone();
                    if t.method.is_empty() {
                        t.method = p.plugin.as_str().into();
                    }
                    t
                })
                .collect();
            add(&sell.name, &sell.card, &sell.feed, terms)?;
        }
    }
    for (seller, card) in cards {
        match &args.out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{}.json", hex::encode(seller)));
                std::fs::write(&path, serde_json::to_vec_pretty(&card)?)?;
                eprintln!("wrote {}", path.display());
            }
            None => print_json(card),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `dazaar revoke` (and `burn` with `burn`).
pub fn revoke(common: &Common, args: RevokeArgs, burn: bool) -> Result<ExitCode> {
    let settings = common.settings()?;
    let data_dir = common.data_dir(settings.as_ref());
    let identity = common.identity(settings.as_ref())?;
    let buyer = parse_key(&args.buyer_key, "the buyer key")?;
    let feed = super::feed::open_feed(&args.feed)?;
    let seller = identity.seller_key_pair(&feed.key()).public_key();
    market::revocation::revoke(&data_dir, &seller, &buyer, burn)?;
    let pair = identity.rekeyed_key_pair(&feed.key(), &buyer);
    if args.json {
        let mut v = json!({"revoked": hex::encode(buyer), "sellerKey": hex::encode(seller), "feedKey": hex::encode(pair.public_key())});
        if burn {
            v["secretKey"] = hex::encode(pair.secret_key()).into();
        }
        print_json(v);
    } else if burn {
        println!(
            "burnt buyer {}: its feed key {} is published with its secret key in the card (dazaar card)",
            hex::encode(buyer),
            hex::encode(pair.public_key())
        );
    } else {
        println!(
            "revoked buyer {} (effective at its next revalidation)",
            hex::encode(buyer)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `dazaar id`.
pub fn id(common: &Common, args: IdArgs) -> Result<ExitCode> {
    let settings = common.settings()?;
    let data_dir = common.data_dir(settings.as_ref());
    let identity = if let Some(hex_key) = &args.import_master_key {
        let master = parse_key(hex_key, "the master key")?;
        let pass = if args.encrypt {
            Some(std::env::var("DAZAAR_PASSPHRASE").context("--encrypt needs DAZAAR_PASSPHRASE")?)
        } else {
            None
        };
        Identity::import(&data_dir, master, pass.as_deref(), KdfParams::default())?
    } else {
        common.identity(settings.as_ref())?
    };
    let buyer = hex::encode(identity.buyer_key_pair().public_key());
    let seller = match &args.feed {
        Some(f) => {
            let feed = super::feed::open_feed(f)?;
            Some(hex::encode(
                identity.seller_key_pair(&feed.key()).public_key(),
            ))
        }
        None => None,
    };
    if args.json {
        print_json(
            json!({"buyerKey": buyer, "sellerKey": seller, "dataDir": data_dir.display().to_string()}),
        );
    } else {
        println!("buyer key:  {buyer}");
        if let Some(s) = seller {
            println!("seller key: {s}");
        }
        println!("data dir:   {}", data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `dazaar pay`.
#[derive(Debug, Args)]
pub struct PayArgs {
    /// The seller key (hex).
    pub seller_key: String,
    /// The seller's address (for plugins that ask the seller, e.g. for an invoice).
    #[arg(long)]
    pub connect: Option<SocketAddr>,
    /// The payment plugin to pay with.
    #[arg(long)]
    pub plugin: String,
    /// How much, in the card entry's currency (default: the entry's amount).
    #[arg(long)]
    pub amount: Option<String>,
    /// The seller's Dazaar card (its payment entries); without it, an entry of the
    /// plugin's first method.
    #[arg(long)]
    pub card: Option<PathBuf>,
    /// The plugin's own settings (TOML); default: its `[[buy.payment]]` table.
    #[arg(long)]
    pub plugin_config: Option<String>,
    /// Where payment plugins are.
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Draw a QR code of the invoice or payment page even when stdout is not a terminal.
    #[arg(long, conflicts_with_all = ["no_qr", "json"])]
    pub qr: bool,
    /// Never draw a QR code (by default one is drawn when stdout is a terminal).
    #[arg(long)]
    pub no_qr: bool,
    /// How long the plugin may take to answer (a payment it makes itself, e.g. over
    /// Lightning, can take a while), in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// Runs `dazaar pay`: asks the buyer-side plugin how to pay (and, when it says so, the
/// seller's plugin for an invoice over `dazaar/user-message`), then pays or prints what
/// to pay.
pub fn pay(common: &Common, args: PayArgs) -> Result<ExitCode> {
    use dazaar::payments::{BuyerPlugin, BuyerWallet, UserMessage};
    let settings = common.settings()?;
    let identity = common.identity(settings.as_ref())?;
    let seller = parse_key(&args.seller_key, "the seller key")?;
    let card_payment: Option<Vec<serde_json::Value>> = match &args.card {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let card = dazaar::card::parse(&text).with_context(|| format!("{}", path.display()))?;
            if card.seller_key != seller {
                bail!(
                    "{}: the card is for seller {}, not {}",
                    path.display(),
                    hex::encode(card.seller_key),
                    hex::encode(seller)
                );
            }
            Some(
                card.json
                    .get("payment")
                    .and_then(|p| p.as_array().cloned())
                    .unwrap_or_default(),
            )
        }
        None => None,
    };
    let plugin_dir = args
        .plugin_dir
        .clone()
        .or_else(|| settings.as_ref().map(|s| s.plugin_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("plugins"));
    let mut registry = PluginRegistry::new();
    let plugin = registry.load_named(&plugin_dir, &args.plugin)?;
    let config = match &args.plugin_config {
        Some(c) => c.clone(),
        None => settings
            .as_ref()
            .and_then(|s| {
                s.buy
                    .payment
                    .iter()
                    .find(|p| p.plugin == args.plugin)
                    .map(|p| p.config.clone())
            })
            .unwrap_or_default(),
    };
    let verifier = plugin.open(
        &config,
        CallLimits {
            timeout: Duration::from_secs(args.timeout),
            ..limits()
        },
    )?;
    let card_payment = card_payment.unwrap_or_else(|| {
        let method = plugin.methods().next().unwrap_or(&args.plugin).to_owned();
        let terms = PaymentTerms::new(
            &method,
            "",
            args.amount.as_deref().unwrap_or("0"),
            "seconds",
            "1",
        );
        vec![dazaar::payments::terms_to_card(&terms)]
    });
    let wallet = BuyerWallet::new(vec![BuyerPlugin {
        method: None,
        verifier,
    }]);
    let buyer = identity.buyer_key_pair().public_key();
    let (choice, how) =
        wallet.payment_request(buyer, seller, &card_payment, args.amount.as_deref())?;
    let mut report = serde_json::to_value(&how)?;
    if let Some(send) = &how.send {
        let addr = args
            .connect
            .context("this payment asks the seller first: give --connect ADDR")?;
        let message = UserMessage {
            name: send.name.as_str().into(),
            message: send.message.to_string().into(),
        };
        let reply = runtime()?.block_on(market::exchange(
            &identity,
            seller,
            addr,
            &message,
            &NetConfig::default(),
            Duration::from_secs(30),
        ))?;
        let reply = reply.context("the seller did not answer the payment request")?;
        report["sellerReply"] = json!({"name": reply.name.as_str(), "message": serde_json::from_str::<serde_json::Value>(reply.message.as_str()).unwrap_or_default()});
        // The plugin's follow-up (e.g. `lnd-paid` after paying from LND) is for the buyer:
        // shown, never sent to the seller (whose plugins ignore names they do not know).
        if let Some(follow) = wallet.user_message(buyer, seller, &choice, &reply)? {
            report["result"] = json!({"name": follow.name.as_str(), "message": serde_json::from_str::<serde_json::Value>(follow.message.as_str()).unwrap_or_default()});
        }
    }
    if args.json {
        print_json(report);
    } else {
        use std::io::IsTerminal;
        let qr = args.qr || (!args.no_qr && std::io::stdout().is_terminal());
        print_payment(&report, plugin.name(), &choice.terms, qr);
    }
    Ok(ExitCode::SUCCESS)
}

/// Something the buyer pays with: a Lightning invoice, a checkout page, or an action to
/// make in a wallet (an `invoice` that is a JSON object, as the EOS plugin gives).
#[derive(Debug, PartialEq, Eq)]
enum PayTarget {
    Invoice(String),
    Page(String),
    Action(String),
}

/// What in a `dazaar pay` report the buyer acts on: the plugin's own invoice or page,
/// and in the seller's reply an invoice (`request`, as in `lnd-invoice`) or a page
/// (`url`, as in `stripe-checkout`).
fn pay_targets(report: &serde_json::Value) -> Vec<PayTarget> {
    let mut out = Vec::new();
    let mut add = |t: PayTarget| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    if let Some(i) = text(&report["invoice"]) {
        if i.trim_start().starts_with('{') {
            add(PayTarget::Action(i));
        } else {
            add(PayTarget::Invoice(i));
        }
    }
    if let Some(u) = text(&report["checkout_url"]) {
        add(PayTarget::Page(u));
    }
    let reply = &report["sellerReply"]["message"];
    if let Some(i) = text(&reply["request"]) {
        add(PayTarget::Invoice(i));
    }
    if let Some(u) = text(&reply["url"]) {
        add(PayTarget::Page(u));
    }
    out
}

/// The human form of a `dazaar pay` report.
fn print_payment(report: &serde_json::Value, plugin: &str, terms: &PaymentTerms, qr: bool) {
    let field = |k: &str| report[k].as_str().map(str::to_owned);
    // A plugin that holds the buyer's wallet may have paid in its first answer (`paid` =
    // the payment id, e.g. an EOS transaction): then the fields say what was paid.
    let paid_now = field("paid");
    let verb = if paid_now.is_some() {
        "paid with"
    } else {
        "pay with"
    };
    // Every text in the report comes from the plugin or the seller's reply.
    let field = |k: &str| field(k).map(|v| escape(&v, Lines::Escape).into_owned());
    println!(
        "{verb} {plugin} ({} {}):",
        escape(&terms.method, Lines::Escape),
        escape(&terms.currency, Lines::Escape)
    );
    if let (Some(amount), currency) = (field("amount"), field("currency")) {
        println!("  amount: {amount} {}", currency.unwrap_or_default());
    }
    for (label, key) in [("pay to", "pay_to"), ("memo", "memo"), ("note", "note")] {
        if let Some(v) = field(key) {
            println!("  {label}: {v}");
        }
    }
    if let Some(reply) = report["sellerReply"].as_object() {
        let name = reply.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        println!("  the seller answered: {}", escape(name, Lines::Escape));
    }
    // A buyer plugin that paid by itself says so with a follow-up named `*-paid`.
    let paid = paid_now.is_some()
        || report["result"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-paid"));
    let qr = qr && !paid;
    let targets = if paid_now.is_some() {
        Vec::new()
    } else {
        pay_targets(report)
    };
    for t in &targets {
        let (label, text, payload) = match t {
            PayTarget::Invoice(i) => ("Lightning invoice", i, super::qr::lightning_payload(i)),
            PayTarget::Page(u) => ("open this page to pay", u, u.clone()),
            PayTarget::Action(a) => ("make this transfer in your wallet", a, String::new()),
        };
        println!("  {label}:\n{}", escape(text, Lines::Escape));
        if qr && !payload.is_empty() {
            match super::qr::render(&payload) {
                Some(code) => print!("{code}"),
                None => println!("  (too long for a QR code)"),
            }
        }
    }
    let message = report["result"]["message"].to_string();
    let message = escape(&message, Lines::Escape);
    if let Some(id) = &paid_now {
        println!("  paid: {}", escape(id, Lines::Escape));
    } else if paid {
        println!("  paid: {message}");
    } else if let Some(name) = report["result"]["name"].as_str() {
        println!(
            "  the plugin answered: {} {message}",
            escape(name, Lines::Escape)
        );
    } else if targets.is_empty() && report.get("send").is_none() {
        println!("  (the plugin gave nothing to pay; see its note)");
    }
}

/// `dazaar quote`.
#[derive(Debug, Args)]
pub struct QuoteArgs {
    /// The seller's Dazaar card.
    pub card: PathBuf,
    /// How many seconds of access.
    #[arg(long)]
    pub seconds: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dazaar quote`: what `seconds` of access cost in each of the card's methods.
pub fn quote(args: QuoteArgs) -> Result<ExitCode> {
    if !(args.seconds.is_finite() && args.seconds >= 0.0) {
        bail!("--seconds must be a non-negative number");
    }
    let text = std::fs::read_to_string(&args.card)
        .with_context(|| format!("{}: cannot read", args.card.display()))?;
    let card = dazaar::card::parse(&text).with_context(|| format!("{}", args.card.display()))?;
    if card.is_free() {
        if args.json {
            print_json(json!({"free": true}));
        } else {
            println!("free");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for t in &card.payment {
        let rate = dazaar_plugin_api::Rate::from_card(&t.amount, &t.unit, &t.interval)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let seconds = args.seconds.max(t.min_seconds);
        let cost = rate.rate_per_second() * seconds;
        if args.json {
            print_json(
                json!({"method": t.method.as_str(), "currency": t.currency.as_str(), "seconds": seconds, "amount": cost}),
            );
        } else {
            println!(
                "{} {}: {cost} for {seconds} s",
                escape(&t.method, Lines::Escape),
                escape(&t.currency, Lines::Escape)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pay_targets_tell_an_action_from_an_invoice() {
        let eos = json!({"invoice": "{\"account\":\"eosio.token\",\"name\":\"transfer\"}"});
        assert_eq!(
            pay_targets(&eos),
            vec![PayTarget::Action(
                "{\"account\":\"eosio.token\",\"name\":\"transfer\"}".into()
            )]
        );
        let ln = json!({"invoice": "lnbcrt1", "sellerReply": {"message": {"request": "lnbcrt1", "url": "https://pay"}}});
        assert_eq!(
            pay_targets(&ln),
            vec![
                PayTarget::Invoice("lnbcrt1".into()),
                PayTarget::Page("https://pay".into())
            ]
        );
    }
}
