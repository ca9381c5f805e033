//! `dazaar sell`: parses the flags, sets up the products through
//! [`dazaar::market::shop`], and renders the seller's events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use dazaar::market::reload::{ReloadReport, Reloader};
use dazaar::market::shop::{self, Listening, SellLimits, Shop, ShopOptions};
use dazaar::market::SellerEvent;
use dazaar::net::NetConfig;
use dazaar::payments::{PaymentSpec, PaymentTerms, StateScope};
use serde_json::json;
use tokio::sync::mpsc;

use super::common::{print_json, runtime, signals, Common};
use super::terminal::{escape, Lines};

/// `dazaar sell`.
#[derive(Debug, Args)]
pub struct SellArgs {
    /// The feed to sell (else every `[[sell]]` of the config).
    pub feed_dir: Option<PathBuf>,
    /// Where to listen (default: the config's `listen`, else 127.0.0.1:0). A `[[sell]]`
    /// with its own `listen` keeps it.
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
    /// Price: the unit: seconds, minutes, hours (time), bytes, kilobytes, megabytes,
    /// gigabytes (`amount` buys `interval` of data), or once (`amount` buys access for
    /// good; `interval` is ignored).
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
    /// Fresh payment checks of unknown buyer keys per second from all addresses
    /// together, 0 for no limit (default: the config's `limits.payment_checks_per_second`,
    /// else 100). Raise it for a seller that thousands of buyers reconnect to at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub payment_checks_per_second: Option<u32>,
    /// Ed25519 signatures per second that announcing growth to rekeyed (paid) buyers may
    /// cost together: with many live buyers each one's announcements are spread out to
    /// fit, at most 100 ms apart (default: the config's `limits.signatures_per_second`,
    /// else 20000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub signatures_per_second: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /healthz
    /// (default: the config's `[metrics] listen`, else none).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Write the seller's process id to FILE once it listens (before its `listening`
    /// lines; removed when it stops), for `dazaar reload --pid-file FILE`.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// How the seller is announced (DHT, mDNS).
    #[command(flatten)]
    pub discovery: super::discovery::AnnounceArgs,
}

impl SellArgs {
    /// The limits given as flags (unset ones fall back to the config's `[limits]`).
    fn limits(&self) -> SellLimits {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        SellLimits {
            max_connections: self.max_connections.map(size),
            max_connections_per_ip: self.max_connections_per_ip.map(size),
            unpaid_grace: self.unpaid_grace_secs.map(Duration::from_secs),
            payment_checks_per_ip: self.payment_checks_per_ip,
            payment_checks_per_second: self.payment_checks_per_second,
            signatures_per_second: self.signatures_per_second,
        }
    }
}

/// Runs `dazaar sell`.
pub fn sell(common: &Common, args: SellArgs) -> Result<ExitCode> {
    let settings = common.settings()?;
    let metrics_addr = args
        .metrics
        .or_else(|| settings.as_ref().and_then(|s| s.metrics));
    // Installed before the products are set up, so their series start at zero.
    let metrics = metrics_addr
        .map(|_| dazaar::monitor::install())
        .transpose()?;
    let terms = match &args.terms {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the terms", p.display()))?,
        ),
        None => None,
    };
    let config_limits = settings
        .as_ref()
        .map(|s| s.limits.clone())
        .unwrap_or_default();
    let options = ShopOptions {
        state: common.state(settings.as_ref())?,
        deny: args.deny,
        terms,
        limits: args.limits().or(&config_limits),
    };
    let identity = common.identity(settings.as_ref())?;
    let mut registry = common.plugin_registry(args.plugin_dir.as_deref(), settings.as_ref());
    let listen = args
        .listen
        .or_else(|| settings.as_ref().map(|s| s.listen))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    // Each product's own address (a `[[sell]]`'s `listen`), in the products' order.
    let mut own_addrs = vec![None];
    // Products from a config's [[sell]] tables can be reloaded (SIGHUP).
    let mut reloader = None;
    let products = match (&args.feed_dir, &settings) {
        (Some(feed_dir), _) => {
            let price =
                PaymentTerms::new("", &args.currency, &args.amount, &args.unit, &args.interval);
            let product = shop::feed_key(feed_dir)?;
            let scope = StateScope {
                store: options.state.shared()?,
                product,
                seller: identity.seller_key_pair(&product).public_key(),
            };
            let spec = (args.payment != "free").then(|| PaymentSpec {
                plugin: &args.payment,
                method: args.method.as_deref(),
                price: &price,
                config: &args.plugin_config,
                state: Some(&scope),
            });
            let plugin_dir = common.plugin_dir(args.plugin_dir.as_deref(), settings.as_ref());
            let revalidate = Duration::from_millis(args.revalidate_ms.max(10));
            let gate = shop::gate_for(
                &mut registry,
                &plugin_dir,
                spec.as_ref(),
                revalidate,
                &options.limits,
            )?;
            vec![shop::product(&identity, feed_dir, gate, &options)?]
        }
        (None, Some(settings)) => {
            own_addrs = shop::own_addrs(settings);
            let products = shop::products(settings, &identity, &mut registry, &options)?;
            reloader = Some(Reloader::new(
                settings.clone(),
                identity.clone(),
                options.clone(),
                std::mem::take(&mut registry),
                listen,
            ));
            products
        }
        (None, None) => {
            anyhow::bail!("nothing to sell: give a feed directory or a config with [[sell]] tables")
        }
    };
    let net_config = options.limits.net_config();
    options.limits.apply_signature_budget();
    let json = args.json;
    let pid_file = args.pid_file.clone();
    let discovery = args.discovery.options(settings.as_ref())?;
    runtime()?.block_on(async move {
        let shutdown = signals();
        // SIGHUP (systemd's reload) re-reads the configuration in place. Installed before
        // anything listens: until then its default action would kill the seller.
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let addrs = shop::listen_addrs(&own_addrs, listen);
        let shop = Shop::bind_each(products.into_iter().zip(addrs)).await?;
        let (ev_tx, mut ev_rx) = mpsc::channel::<SellerEvent>(1024);
        let mut shop = shop.start(net_config.clone(), shutdown.clone(), Some(ev_tx));
        // Before the `listening` lines: whoever waits for them may signal the seller next.
        if let Some(file) = &pid_file {
            std::fs::write(file, format!("{}\n", std::process::id()))
                .with_context(|| format!("{}: cannot write the pid file", file.display()))?;
        }
        // Each product's announcement, by seller key (a reload adds and drops some).
        let mut advertisers = Vec::new();
        for l in shop.listening() {
            report_listening(&l, &net_config, json);
            advertisers.push((
                l.seller_key,
                super::discovery::advertise(l.seller_key, l.addr, &discovery, shutdown.clone(), json)?,
            ));
        }
        if let (Some(addr), Some(handle)) = (metrics_addr, metrics) {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics: listening on {addr}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            if json {
                print_json(json!({"event": "metrics", "addr": bound.to_string()}));
            } else {
                println!("metrics on http://{bound}/metrics");
            }
            tokio::spawn(dazaar::monitor::serve(
                listener,
                handle,
                shop.health(),
                dazaar::monitor::HttpLimits::default(),
                shutdown.clone(),
            ));
        }
        // Under systemd (Type=notify): started once every listener is bound. Without
        // NOTIFY_SOCKET this does nothing.
        let status = format!("selling {} products", shop.listening().len());
        notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        let mut stop = shutdown.clone();
        loop {
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(ev) => report_seller_event(&ev, json),
                    None => break,
                },
                _ = hangup.recv() => {
                    let Some(reloader) = reloader.as_mut() else {
                        tracing::info!("SIGHUP: this seller sells a feed given on the command line, there is no configuration to reload");
                        continue;
                    };
                    notify_systemd(&[sd_notify::NotifyState::Reloading]);
                    tracing::info!(file = %reloader.file().display(), "SIGHUP: reloading the configuration");
                    match reloader.reload(&mut shop).await {
                        Ok(report) => {
                            for l in report.removed.iter().chain(&report.moved) {
                                if let Some(i) = advertisers.iter().position(|(k, _)| *k == l.seller_key) {
                                    advertisers.remove(i);
                                }
                            }
                            for l in report.added.iter().chain(&report.moved) {
                                report_listening(l, &net_config, json);
                                match super::discovery::advertise(l.seller_key, l.addr, &discovery, shutdown.clone(), json) {
                                    Ok(a) => advertisers.push((l.seller_key, a)),
                                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot announce a product added by the reload"),
                                }
                            }
                            report_reloaded(&report, json);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the configuration was not reloaded; the seller keeps running as it was");
                            if json {
                                print_json(json!({"event": "reload-failed", "error": e.to_string()}));
                            } else {
                                eprintln!("reload refused: {}", escape(&e.to_string(), Lines::Escape));
                            }
                        }
                    }
                    let status = format!("selling {} products", shop.listening().len());
                    notify_systemd(&[
                        sd_notify::NotifyState::Ready,
                        sd_notify::NotifyState::Status(&status),
                    ]);
                }
                _ = stop.changed() => break,
            }
        }
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        if let Some(file) = &pid_file {
            let _ = std::fs::remove_file(file);
        }
        drop(advertisers);
        shop.wait().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `dazaar reload`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReloadArgs {
    /// The seller's process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The file `dazaar sell --pid-file` wrote.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

/// Runs `dazaar reload`: sends SIGHUP to a running seller, which reloads its configuration
/// (the outcome is in the seller's log and `--json` output).
pub fn reload(args: ReloadArgs) -> Result<ExitCode> {
    let pid = match (args.pid, &args.pid_file) {
        (Some(pid), _) => pid,
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("{}: cannot read the pid file", file.display()))?;
            text.trim()
                .parse::<u32>()
                .with_context(|| format!("{}: not a process id", file.display()))?
        }
        (None, None) => anyhow::bail!("give --pid or --pid-file"),
    };
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .with_context(|| format!("{pid} is not a seller's process id"))?;
    // SAFETY: kill(2) with a positive pid (never 0 or -1, which signal process groups).
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("cannot signal process {pid}: {e}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells the service manager `states` (`$NOTIFY_SOCKET`); a failure is logged, never
/// fatal.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// One product's `listening` line (at start, and for a product a reload starts).
fn report_listening(l: &Listening, net: &NetConfig, json: bool) {
    let seller_key = hex::encode(l.seller_key);
    let feed_key = hex::encode(l.feed_key);
    if json {
        print_json(
            json!({"event": "listening", "addr": l.addr.to_string(), "sellerKey": seller_key, "feedKey": feed_key, "maxConnections": net.max_connections, "maxConnectionsPerIp": net.max_connections_per_ip}),
        );
    } else {
        println!(
            "selling feed {feed_key}\n  seller key {seller_key}\n  listening on {}",
            l.addr
        );
    }
}

/// What a reload did.
fn report_reloaded(report: &ReloadReport, json: bool) {
    let list = |ls: &[Listening]| -> Vec<serde_json::Value> {
        ls.iter()
            .map(|l| json!({"sellerKey": hex::encode(l.seller_key), "feedKey": hex::encode(l.feed_key), "addr": l.addr.to_string()}))
            .collect()
    };
    if json {
        let plugins: Vec<_> = report
            .plugins_loaded
            .iter()
            .map(|(name, path)| json!({"name": name, "path": path.display().to_string()}))
            .collect();
        print_json(json!({
            "event": "reloaded",
            "added": list(&report.added),
            "removed": list(&report.removed),
            "changed": list(&report.changed),
            "moved": list(&report.moved),
            "pluginsLoaded": plugins,
            "needRestart": report.need_restart,
        }));
    } else {
        let keys = |ls: &[Listening]| {
            ls.iter()
                .map(|l| hex::encode(&l.seller_key[..8]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "configuration reloaded: {} added [{}], {} removed [{}], {} changed [{}], {} moved [{}]",
            report.added.len(),
            keys(&report.added),
            report.removed.len(),
            keys(&report.removed),
            report.changed.len(),
            keys(&report.changed),
            report.moved.len(),
            keys(&report.moved),
        );
        for (name, path) in &report.plugins_loaded {
            println!(
                "  payment plugin {name} loaded from {}",
                escape(&path.display().to_string(), Lines::Escape)
            );
        }
        if !report.need_restart.is_empty() {
            println!(
                "  changed, applied at the next restart: {}",
                report.need_restart.join(", ")
            );
        }
    }
}

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
