//! A seller of one or more products: the setup `dazaar sell` runs, as a library.
//!
//! ```text
//! SellLimits::from(flags).or(&settings.limits)       flags, else the config, else defaults
//! shop::products(&settings, &identity, &mut registry, &options)   every [[sell]]
//! shop::product(&identity, feed_dir, gate, &options)              one feed, one gate
//! Shop::bind(products, listen).await -> listening addresses
//! Shop::bind_each(products.zip(listen_addrs(&own_addrs(&settings), listen)))   fixed ports
//!   .run(net, shutdown, events).await                             until shutdown
//! ```
//!
//! Each product has its own listener, because the Noise static key a buyer dials is the
//! product's seller key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::identity::Identity;
use super::revocation::{burnt_keys, RevocationError};
use super::seller::{self, Product, ProductOptions, SellerEvent};
use crate::card::{self, Card, CardFields};
use crate::config::{ConfigError, LimitSettings, Settings};
use crate::net::{NetConfig, SharedFeed};
use crate::payments::{
    card_entry, open_entry, CallLimits, GateLimits, PaymentGate, PaymentSpec, PluginRegistry,
    SetupError, StateScope,
};
use crate::state::{StateError, StatePlace};
use crate::storage::{open_feed_dir, Access, FeedDirError, FsStore};

/// Why a seller cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShopError {
    /// The feed to sell could not be opened.
    #[error(transparent)]
    FeedDir(#[from] FeedDirError),
    /// The seller's state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// A payment entry of the configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The payment entry given by flags.
    #[error("plugin `{plugin}`: {source}")]
    Payment {
        /// The plugin's name.
        plugin: String,
        /// What failed.
        source: SetupError,
    },
    /// The configuration sells nothing.
    #[error("{0}: no [[sell]] table")]
    NothingToSell(PathBuf),
    /// The revocation list (for a card's burnt keys).
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    /// A listener could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

/// The seller's default connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// How many bytes one buyer may have queued for writing before the seller stops reading
/// from it (many buyers at once: each is bounded).
pub const SELLER_WRITE_HIGH_WATER: usize = 256 * 1024;

/// Plugin call limits of a seller's verifiers.
pub const SELLER_CALL_LIMITS: CallLimits = CallLimits {
    timeout: Duration::from_secs(5),
    workers: 2,
    queue: 256,
};

/// A seller's connection limits, settled once: given ones (flags) first, then the
/// configuration's `[limits]` (see [`SellLimits::or`]), then the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SellLimits {
    /// Most connections at once (further capped by RLIMIT_NOFILE).
    pub max_connections: Option<usize>,
    /// Most connections at once from one IP address (0: no cap).
    pub max_connections_per_ip: Option<usize>,
    /// A buyer not valid for this long is disconnected.
    pub unpaid_grace: Option<Duration>,
    /// Fresh payment checks of unknown buyer keys per second from one IP address (0: no
    /// per-address limit).
    pub payment_checks_per_ip: Option<u32>,
    /// Fresh payment checks of unknown buyer keys per second from all addresses together
    /// (0: no global limit).
    pub payment_checks_per_second: Option<u32>,
    /// Signatures per second the process's rekeyed announcements may cost together.
    pub signatures_per_second: Option<u64>,
}

impl SellLimits {
    /// These limits where set, else `fallback`'s.
    pub fn or(self, fallback: &LimitSettings) -> SellLimits {
        SellLimits {
            max_connections: self.max_connections.or(fallback.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .or(fallback.max_connections_per_ip),
            unpaid_grace: self.unpaid_grace.or(fallback.unpaid_grace),
            payment_checks_per_ip: self
                .payment_checks_per_ip
                .or(fallback.payment_checks_per_ip),
            payment_checks_per_second: self
                .payment_checks_per_second
                .or(fallback.payment_checks_per_second),
            signatures_per_second: self
                .signatures_per_second
                .or(fallback.signatures_per_second),
        }
    }

    /// The signature budget in signatures per second.
    pub fn signatures_per_second(&self) -> u64 {
        self.signatures_per_second
            .unwrap_or(crate::protocol::budget::DEFAULT_SIGNATURES_PER_SECOND)
    }

    /// Sets the process-wide signature budget
    /// ([`crate::protocol::budget::SignatureBudget::global`], which every seller channel
    /// of the process counts against) to these limits'.
    pub fn apply_signature_budget(&self) {
        crate::protocol::budget::SignatureBudget::global()
            .set_per_second(self.signatures_per_second());
    }

    /// The connection settings: at most `max_connections` (never above what
    /// RLIMIT_NOFILE allows: its soft limit is raised to the hard one first), at most
    /// `max_connections_per_ip` from one address, a bounded write queue per buyer.
    pub fn net_config(&self) -> NetConfig {
        let configured = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        NetConfig {
            max_connections: crate::net::process_connection_limit(configured),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(crate::net::DEFAULT_MAX_CONNECTIONS_PER_IP),
            write_high_water: SELLER_WRITE_HIGH_WATER,
            ..NetConfig::default()
        }
    }

    /// How long a buyer may stay connected while not valid.
    pub fn unpaid_grace(&self) -> Duration {
        self.unpaid_grace.unwrap_or(seller::UNPAID_GRACE)
    }

    /// What strangers may make the payment gate do.
    pub fn gate_limits(&self) -> GateLimits {
        GateLimits::default()
            .with_check_rates(self.payment_checks_per_ip, self.payment_checks_per_second)
    }
}

/// What every product of a seller shares.
#[derive(Debug, Clone)]
pub struct ShopOptions {
    /// Where the seller's state is (revocations, sales, plugin state).
    pub state: StatePlace,
    /// Refuse every buyer.
    pub deny: bool,
    /// Terms of use for products that name none of their own.
    pub terms: Option<String>,
    /// The settled limits.
    pub limits: SellLimits,
}

impl ShopOptions {
    pub(crate) fn product(&self, revalidate: Duration, terms: Option<String>) -> ProductOptions {
        ProductOptions {
            terms: terms.or_else(|| self.terms.clone()),
            revalidate,
            deny: self.deny,
            state: self.state.clone(),
            handshake_timeout: seller::HANDSHAKE_TIMEOUT,
            unpaid_grace: self.limits.unpaid_grace(),
        }
    }
}

/// Opens the feed in `dir` to sell it. Read-only: appends come from `dazaar feed append`
/// (or the writer's own process) and are picked up by the refresh task [`Shop::run`]
/// starts.
pub fn open_sold_feed(dir: &Path) -> Result<Arc<SharedFeed<FsStore>>, ShopError> {
    Ok(SharedFeed::new(open_feed_dir(dir, Access::ReadOnly)?))
}

/// The key of the feed in `dir`.
pub fn feed_key(dir: &Path) -> Result<[u8; 32], ShopError> {
    Ok(open_sold_feed(dir)?.lock().key())
}

/// The gate of a product sold with one payment entry (`dazaar sell DIR --payment P`):
/// `None` sells it free.
pub fn gate_for(
    registry: &mut PluginRegistry,
    plugin_dir: &Path,
    payment: Option<&PaymentSpec<'_>>,
    revalidate: Duration,
    limits: &SellLimits,
) -> Result<PaymentGate, ShopError> {
    let entries =
        match payment {
            None => Vec::new(),
            Some(spec) => vec![open_entry(registry, plugin_dir, spec, SELLER_CALL_LIMITS)
                .map_err(|source| ShopError::Payment {
                    plugin: spec.plugin.to_owned(),
                    source,
                })?],
        };
    Ok(PaymentGate::with_limits(
        entries,
        revalidate,
        limits.gate_limits(),
    ))
}

/// One product: the feed in `feed_dir` behind `gate`.
pub fn product(
    identity: &Identity,
    feed_dir: &Path,
    gate: PaymentGate,
    options: &ShopOptions,
) -> Result<Arc<Product>, ShopError> {
    let feed = open_sold_feed(feed_dir)?;
    let revalidate = gate.revalidate();
    Ok(Product::new(
        identity,
        feed,
        Arc::new(gate),
        options.product(revalidate, None),
    ))
}

/// Every `[[sell]]` product of `settings`, with its plugins loaded through `registry` (each
/// library once) and its gate opened; the first entry that fails stops the setup with its
/// file and line.
pub fn products(
    settings: &Settings,
    identity: &Identity,
    registry: &mut PluginRegistry,
    options: &ShopOptions,
) -> Result<Vec<Arc<Product>>, ShopError> {
    if settings.sell.is_empty() {
        return Err(ShopError::NothingToSell(settings.file.clone()));
    }
    let mut out = Vec::with_capacity(settings.sell.len());
    let store = options.state.shared()?;
    for sell in &settings.sell {
        let feed = open_sold_feed(&sell.feed)?;
        let product = feed.lock().key();
        let scope = StateScope {
            store: Arc::clone(&store),
            product,
            seller: identity.seller_key_pair(&product).public_key(),
        };
        let gate = settings.payment_gate_with(
            sell,
            registry,
            SELLER_CALL_LIMITS,
            options.limits.gate_limits(),
            Some(&scope),
        )?;
        out.push(Product::new(
            identity,
            feed,
            Arc::new(gate),
            options.product(sell.revalidate, sell.terms.clone()),
        ));
    }
    Ok(out)
}

/// The card of the feed in `feed_dir` sold free as `name`, with its burnt keys.
pub fn free_card(
    identity: &Identity,
    state: &StatePlace,
    name: &str,
    feed_dir: &Path,
) -> Result<Card, ShopError> {
    let feed_key = feed_key(feed_dir)?;
    product_card(
        identity,
        state,
        name,
        &CardFields::default(),
        &feed_key,
        Vec::new(),
    )
}

/// The card of every `[[sell]]` product of `settings`, with the same card methods the
/// products' gates validate (the plugins are loaded through `registry` to learn them) and
/// the burnt keys of the revocation list at `state`.
pub fn cards(
    settings: &Settings,
    identity: &Identity,
    registry: &mut PluginRegistry,
    state: &StatePlace,
) -> Result<Vec<Card>, ShopError> {
    let mut out = Vec::with_capacity(settings.sell.len());
    for sell in &settings.sell {
        let mut terms = Vec::with_capacity(sell.payment.len());
        for p in &sell.payment {
            terms.push(
                card_entry(registry, &settings.plugin_dir, &p.spec()).map_err(|e| {
                    ConfigError::Plugin {
                        file: settings.file.clone(),
                        line: p.line,
                        plugin: p.plugin.clone(),
                        message: e.to_string(),
                    }
                })?,
            );
        }
        let feed_key = feed_key(&sell.feed)?;
        out.push(product_card(
            identity, state, &sell.name, &sell.card, &feed_key, terms,
        )?);
    }
    Ok(out)
}

fn product_card(
    identity: &Identity,
    state: &StatePlace,
    name: &str,
    fields: &CardFields,
    feed_key: &[u8; 32],
    terms: Vec<crate::payments::PaymentTerms>,
) -> Result<Card, ShopError> {
    let seller = identity.seller_key_pair(feed_key).public_key();
    let mut card = card::build(name, fields, &seller, &terms);
    card.burnt = burnt_keys(state, identity, feed_key)?;
    Ok(card)
}

/// One product's listener, bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The bound address.
    pub addr: SocketAddr,
    /// The product's seller key (the key buyers dial).
    pub seller_key: [u8; 32],
    /// The product's feed key.
    pub feed_key: [u8; 32],
}

/// Products with their listeners bound, ready to serve.
#[derive(Debug)]
pub struct Shop {
    products: Vec<(Arc<Product>, TcpListener)>,
    health: Arc<ShopHealth>,
}

/// What a shop's `/healthz` checks ([`crate::monitor::Health`]): every product's listener
/// is serving, and every payment plugin of its gates answered its last check
/// ([`crate::payments::OpenedVerifier::health`]). It follows the products a reload adds
/// and removes.
#[derive(Debug, Default)]
pub struct ShopHealth {
    products: Mutex<Vec<Arc<ProductHealth>>>,
}

#[derive(Debug)]
struct ProductHealth {
    product: Arc<Product>,
    addr: Option<SocketAddr>,
    /// From bind until its accept loop ends.
    serving: AtomicBool,
}

impl ShopHealth {
    fn products(&self) -> Vec<Arc<ProductHealth>> {
        self.products
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn add(&self, product: &Arc<Product>, listener: &TcpListener) -> Arc<ProductHealth> {
        let health = Arc::new(ProductHealth {
            product: Arc::clone(product),
            addr: listener.local_addr().ok(),
            serving: AtomicBool::new(true),
        });
        self.products
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&health));
        health
    }

    fn remove(&self, health: &Arc<ProductHealth>) {
        self.products
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|h| !Arc::ptr_eq(h, health));
    }
}

impl crate::monitor::Health for ShopHealth {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for p in self.products() {
            let seller = hex::encode(p.product.seller_key());
            if !p.serving.load(Ordering::Relaxed) {
                let at = p.addr.map(|a| format!(" on {a}")).unwrap_or_default();
                problems.push(format!("product {seller}: not listening{at}"));
            }
            for entry in p.product.gate().entries() {
                if let Err(reason) = entry.verifier.health() {
                    let line = format!("product {seller}: {reason}");
                    if !problems.contains(&line) {
                        problems.push(line);
                    }
                }
            }
        }
        problems
    }
}

/// Where each product listens: at its own address (`own[i]`, a `[[sell]]`'s `listen`)
/// where it has one; the first product without one on `default`, the others without one
/// on `default`'s IP and a free port.
pub fn listen_addrs(own: &[Option<SocketAddr>], default: SocketAddr) -> Vec<SocketAddr> {
    let mut default_taken = false;
    own.iter()
        .map(|addr| match addr {
            Some(a) => *a,
            None if !default_taken => {
                default_taken = true;
                default
            }
            None => SocketAddr::new(default.ip(), 0),
        })
        .collect()
}

/// The `[[sell]]` products' own addresses, in file order (the order of [`products`]).
pub fn own_addrs(settings: &Settings) -> Vec<Option<SocketAddr>> {
    settings.sell.iter().map(|s| s.listen).collect()
}

impl Shop {
    /// Binds one listener per product: the first on `listen`, the others on the same IP
    /// and a free port.
    pub async fn bind(products: Vec<Arc<Product>>, listen: SocketAddr) -> Result<Shop, ShopError> {
        let addrs = listen_addrs(&vec![None; products.len()], listen);
        Shop::bind_each(products.into_iter().zip(addrs)).await
    }

    /// Binds each product's listener on its address (see [`listen_addrs`]).
    pub async fn bind_each(
        products: impl IntoIterator<Item = (Arc<Product>, SocketAddr)>,
    ) -> Result<Shop, ShopError> {
        let mut bound = Vec::new();
        for (product, addr) in products {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ShopError::Listen { addr, source })?;
            bound.push((product, listener));
        }
        Ok(Shop {
            products: bound,
            health: Arc::new(ShopHealth::default()),
        })
    }

    /// The shop's health, for `/healthz` (it follows the shop while it runs).
    pub fn health(&self) -> Arc<ShopHealth> {
        Arc::clone(&self.health)
    }

    /// Where each product listens, in order.
    pub fn listening(&self) -> Vec<Listening> {
        self.products
            .iter()
            .filter_map(|(p, l)| {
                Some(Listening {
                    addr: l.local_addr().ok()?,
                    seller_key: p.seller_key(),
                    feed_key: p.feed_key,
                })
            })
            .collect()
    }

    /// The products, in order.
    pub fn products(&self) -> impl Iterator<Item = &Arc<Product>> {
        self.products.iter().map(|(p, _)| p)
    }

    /// Serves every product until `shutdown` turns true: picks up appends to each feed
    /// every 20 ms and accepts buyers with `net`'s limits, reporting to `events`.
    pub async fn run(
        self,
        net: NetConfig,
        shutdown: watch::Receiver<bool>,
        events: Option<mpsc::Sender<SellerEvent>>,
    ) {
        self.start(net, shutdown, events).wait().await;
    }

    /// Starts serving every product (as [`Shop::run`]) and returns at once: the
    /// [`RunningShop`] can then add and remove products ([`super::reload`]).
    pub fn start(
        self,
        net: NetConfig,
        shutdown: watch::Receiver<bool>,
        events: Option<mpsc::Sender<SellerEvent>>,
    ) -> RunningShop {
        let mut running = RunningShop {
            net,
            shutdown,
            events,
            health: self.health,
            products: Vec::with_capacity(self.products.len()),
        };
        for (product, listener) in self.products {
            let p = running.spawn(product, listener);
            running.products.push(p);
        }
        running
    }
}

/// A shop serving its products (from [`Shop::start`]). Each product has its own stop
/// signal besides the shop's, so that one can be stopped (its listener closed, its
/// buyers disconnected) while the others serve on.
#[derive(Debug)]
pub struct RunningShop {
    net: NetConfig,
    shutdown: watch::Receiver<bool>,
    events: Option<mpsc::Sender<SellerEvent>>,
    health: Arc<ShopHealth>,
    pub(crate) products: Vec<RunningProduct>,
}

/// One product being served.
#[derive(Debug)]
pub(crate) struct RunningProduct {
    pub(crate) product: Arc<Product>,
    pub(crate) addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
    health: Arc<ProductHealth>,
}

impl RunningShop {
    /// Starts serving `product` on `listener`: a refresh task for its feed and an accept
    /// loop, both ending on the shop's shutdown or the product's own stop.
    pub(crate) fn spawn(&self, product: Arc<Product>, listener: TcpListener) -> RunningProduct {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stop_rx) = watch::channel(*self.shutdown.borrow());
        let stop = Arc::new(stop);
        // The shop's shutdown stops the product too.
        let mut shutdown = self.shutdown.clone();
        let forward = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|down| *down) => { let _ = forward.send(true); }
                _ = forward.closed() => {}
            }
        });
        crate::net::spawn_refresh(
            product.feed.clone(),
            Duration::from_millis(20),
            stop_rx.clone(),
        );
        let health = self.health.add(&product, &listener);
        let serving = seller::serve(
            listener,
            Arc::clone(&product),
            self.net.clone(),
            stop_rx,
            self.events.clone(),
        );
        let flag = Arc::clone(&health);
        let task = tokio::spawn(async move {
            match serving.await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "a product's listener stopped"),
            }
            flag.serving.store(false, Ordering::Relaxed);
        });
        RunningProduct {
            product,
            addr,
            stop,
            task,
            health,
        }
    }

    /// Stops one product: its listener closes and its buyers are disconnected; waits
    /// (at most [`STOP_WAIT`]) until they are.
    pub(crate) async fn stop(&self, p: RunningProduct) {
        let _ = p.stop.send(true);
        self.health.remove(&p.health);
        let mut task = p.task;
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            tracing::warn!("a stopped product's listener did not end in time: aborted");
            task.abort();
        }
    }

    /// The shop's health, for `/healthz`.
    pub fn health(&self) -> Arc<ShopHealth> {
        Arc::clone(&self.health)
    }

    /// Where each product listens, in order.
    pub fn listening(&self) -> Vec<Listening> {
        self.products
            .iter()
            .map(RunningProduct::listening)
            .collect()
    }

    /// The products, in order.
    pub fn products(&self) -> impl Iterator<Item = &Arc<Product>> {
        self.products.iter().map(|p| &p.product)
    }

    /// Waits until every product has stopped (after the shop's shutdown).
    pub async fn wait(self) {
        drop(self.events);
        for p in self.products {
            if let Err(e) = p.task.await {
                tracing::warn!(error = %e, "a product's listener task failed");
            }
        }
    }
}

impl RunningProduct {
    pub(crate) fn listening(&self) -> Listening {
        Listening {
            addr: self.addr,
            seller_key: self.product.seller_key(),
            feed_key: self.product.feed_key,
        }
    }
}

/// How long stopping a product waits for its connections to end.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::budget::{SignatureBudget, DEFAULT_SIGNATURES_PER_SECOND};

    #[test]
    fn flags_go_before_the_config_and_the_signature_budget_is_applied() {
        let config = LimitSettings {
            signatures_per_second: Some(5_000),
            payment_checks_per_ip: Some(9),
            ..LimitSettings::default()
        };
        let flags = SellLimits {
            signatures_per_second: Some(7_000),
            ..SellLimits::default()
        };
        let settled = flags.or(&config);
        assert_eq!(settled.signatures_per_second(), 7_000);
        assert_eq!(settled.payment_checks_per_ip, Some(9));
        let from_config = SellLimits::default().or(&config);
        assert_eq!(from_config.signatures_per_second(), 5_000);
        assert_eq!(
            SellLimits::default().signatures_per_second(),
            DEFAULT_SIGNATURES_PER_SECOND
        );
        // The process-wide budget takes it (and is put back: other tests share it).
        from_config.apply_signature_budget();
        let applied = SignatureBudget::global().per_second();
        SellLimits::default().apply_signature_budget();
        assert_eq!(applied, 5_000);
        assert_eq!(
            SignatureBudget::global().per_second(),
            DEFAULT_SIGNATURES_PER_SECOND
        );
    }
}
