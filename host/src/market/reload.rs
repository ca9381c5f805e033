//! Reloading a running seller's configuration in place (SIGHUP, `systemctl reload`).
//!
//! ```text
//! let mut reloader = Reloader::new(settings, identity, options, registry, default_listen);
//! let mut shop = Shop::bind_each(..).await?.start(net, shutdown, events);
//! reloader.reload(&mut shop).await -> Ok(ReloadReport { added, removed, changed, .. })
//!                                   | Err(ReloadError)   nothing changed
//! ```
//!
//! A reload re-reads the file the seller started from and compares its `[[sell]]` tables
//! with the running products, a product being known by its feed (its key, and which
//! table of that feed it is when one feed is sold twice):
//! - a new table starts a product on its own `listen` (else a free port on the default
//!   address's IP);
//! - a table that is gone stops its product: its listener closes, its buyers are
//!   disconnected;
//! - a table whose prices, terms, revalidation period, card or plugin settings changed, or
//!   one of whose plugin files changed, keeps its product, listener and buyers: the
//!   product gets a new payment gate ([`Product::set_offer`]), which the buyers meet at
//!   their next revalidation;
//! - a table whose `listen` changed is restarted on its new address (its buyers are
//!   disconnected and find it again);
//! - an unchanged table is not touched: its buyers never notice.
//!
//! Payment plugins that are new, or whose library file changed, are loaded first (a new
//! version beside the old one: see [`PluginRegistry::refresh_named`]). Everything that can
//! fail (the file, the plugins, their settings, the feeds, binding the new listeners)
//! happens before anything running changes: a reload that fails leaves the seller as it
//! was. `data_dir`, the top-level `listen`, `[limits]`, `[state]`, `[metrics]` and
//! `[discovery]` are read at start only (a reload names the ones that changed in
//! [`ReloadReport::need_restart`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use super::identity::Identity;
use super::seller::{Offer, OfferError, Product};
use super::shop::{
    open_sold_feed, Listening, RunningProduct, RunningShop, ShopError, ShopOptions,
    SELLER_CALL_LIMITS,
};
use crate::config::{ConfigError, SellSettings, Settings};
use crate::payments::{LoadedPlugin, PaymentGate, PluginRegistry, StateScope};

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file does not parse or validate, or a plugin cannot be loaded or opened (each
    /// names the file and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A feed cannot be opened, a listener cannot be bound, or the state is unavailable.
    #[error("{file}: {source}")]
    Shop {
        /// The configuration file.
        file: PathBuf,
        /// What failed.
        source: Box<ShopError>,
    },
    /// A product's new settings cannot replace its old ones while it runs.
    #[error("{file}: sell[{index}] ({name}): {source}")]
    Offer {
        /// The configuration file.
        file: PathBuf,
        /// The `[[sell]]` table's index.
        index: usize,
        /// Its name.
        name: String,
        /// Why.
        source: OfferError,
    },
    /// The reload's work was lost (its thread failed).
    #[error("the reload failed: {0}")]
    Interrupted(String),
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Products started, where they listen.
    pub added: Vec<Listening>,
    /// Products stopped (their buyers disconnected).
    pub removed: Vec<Listening>,
    /// Products whose settings or plugins changed, served on with a new payment gate.
    pub changed: Vec<Listening>,
    /// Products restarted on a new address (also in neither list above).
    pub moved: Vec<Listening>,
    /// Payment plugin libraries loaded by the reload (new ones, and new versions of
    /// changed files): name and file.
    pub plugins_loaded: Vec<(String, PathBuf)>,
    /// Settings that changed in the file but apply only when the seller restarts.
    pub need_restart: Vec<&'static str>,
}

/// What a seller started from a configuration's `[[sell]]` tables keeps to reload it.
#[derive(Debug)]
pub struct Reloader {
    settings: Settings,
    identity: Identity,
    options: ShopOptions,
    registry: PluginRegistry,
    default_listen: SocketAddr,
}

/// What one `[[sell]]` table of the new file becomes.
enum Plan {
    /// The running product `index` (in the running shop), as it is.
    Keep(usize),
    /// The running product `index`, with a new offer.
    Change(usize, Offer),
    /// A new product (or a running one restarted, `Some(index)`), to bind on `addr`.
    Start(Arc<Product>, SocketAddr, Option<usize>),
}

impl Reloader {
    /// `settings` are those the running products came from (by [`super::shop::products`],
    /// in order), `registry` the plugins loaded for them, `default_listen` the address
    /// of products without their own `listen`.
    pub fn new(
        settings: Settings,
        identity: Identity,
        options: ShopOptions,
        registry: PluginRegistry,
        default_listen: SocketAddr,
    ) -> Reloader {
        Reloader {
            settings,
            identity,
            options,
            registry,
            default_listen,
        }
    }

    /// The configuration file reloads read.
    pub fn file(&self) -> &Path {
        &self.settings.file
    }

    /// Re-reads the file and applies it to `shop` (see the module documentation). On an
    /// error nothing changed.
    pub async fn reload(&mut self, shop: &mut RunningShop) -> Result<ReloadReport, ReloadError> {
        let file = self.settings.file.clone();
        let settings = crate::config::load(&file)?;
        if settings.sell.is_empty() {
            return Err(ReloadError::Shop {
                source: Box::new(ShopError::NothingToSell(file.clone())),
                file,
            });
        }
        let running: Vec<Running> = shop
            .products
            .iter()
            .zip(&self.settings.sell)
            .map(|(p, sell)| Running {
                product: Arc::clone(&p.product),
                sell: sell.clone(),
            })
            .collect();
        // Loading and opening plugins blocks (bounded by the plugin call timeout).
        let search = self.registry.search_path().to_vec();
        let registry = std::mem::take(&mut self.registry);
        let (identity, options, default_listen) = (
            self.identity.clone(),
            self.options.clone(),
            self.default_listen,
        );
        let new = settings.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let mut registry = registry;
            let plans = plan(
                &new,
                &running,
                &identity,
                &options,
                &mut registry,
                default_listen,
            );
            (registry, plans)
        })
        .await;
        let (plans, loaded) = match prepared {
            Ok((registry, plans)) => {
                self.registry = registry;
                plans?
            }
            Err(e) => {
                // The plugins loaded so far stay loaded; they are found again by name.
                self.registry = PluginRegistry::with_search_path(search);
                return Err(ReloadError::Interrupted(e.to_string()));
            }
        };
        // Bind every new listener before changing anything.
        let mut listeners = Vec::new();
        for p in &plans {
            if let Plan::Start(_, addr, _) = p {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ReloadError::Shop {
                            file: file.clone(),
                            source: Box::new(ShopError::Listen {
                                addr: *addr,
                                source,
                            }),
                        })?;
                listeners.push(listener);
            }
        }

        // Commit.
        let mut report = ReloadReport {
            plugins_loaded: loaded,
            need_restart: need_restart(&self.settings, &settings),
            ..ReloadReport::default()
        };
        let mut old: Vec<Option<RunningProduct>> = std::mem::take(&mut shop.products)
            .into_iter()
            .map(Some)
            .collect();
        let mut listeners = listeners.into_iter();
        let mut products = Vec::with_capacity(plans.len());
        let mut stopping = Vec::new();
        for p in plans {
            match p {
                Plan::Keep(i) => {
                    if let Some(r) = old.get_mut(i).and_then(Option::take) {
                        products.push(r);
                    }
                }
                Plan::Change(i, offer) => {
                    if let Some(r) = old.get_mut(i).and_then(Option::take) {
                        // Checked when planned; the product is the same.
                        if let Err(e) = r.product.set_offer(offer) {
                            tracing::warn!(error = %e, "a product's new offer was refused");
                        }
                        report.changed.push(r.listening());
                        products.push(r);
                    }
                }
                Plan::Start(product, _, restarted) => {
                    let Some(listener) = listeners.next() else {
                        continue;
                    };
                    if let Some(r) = restarted.and_then(|i| old.get_mut(i)?.take()) {
                        stopping.push(r);
                    }
                    let r = shop.spawn(product, listener);
                    if restarted.is_some() {
                        report.moved.push(r.listening());
                    } else {
                        report.added.push(r.listening());
                    }
                    products.push(r);
                }
            }
        }
        shop.products = products;
        for r in old.into_iter().flatten() {
            report.removed.push(r.listening());
            stopping.push(r);
        }
        for r in stopping {
            shop.stop(r).await;
        }
        self.settings = settings;
        tracing::info!(
            added = report.added.len(),
            removed = report.removed.len(),
            changed = report.changed.len(),
            moved = report.moved.len(),
            "configuration reloaded"
        );
        if !report.need_restart.is_empty() {
            tracing::warn!(
                settings = ?report.need_restart,
                "these settings changed but apply only when the seller restarts"
            );
        }
        Ok(report)
    }
}

/// A running product and the table it came from.
struct Running {
    product: Arc<Product>,
    sell: SellSettings,
}

type Planned = (Vec<Plan>, Vec<(String, PathBuf)>);

/// What each table of `new` becomes, with the plugins it loaded; blocking.
fn plan(
    new: &Settings,
    running: &[Running],
    identity: &Identity,
    options: &ShopOptions,
    registry: &mut PluginRegistry,
    default_listen: SocketAddr,
) -> Result<Planned, ReloadError> {
    let shop_error = |source: ShopError| ReloadError::Shop {
        file: new.file.clone(),
        source: Box::new(source),
    };
    let store = options.state.shared().map_err(|e| shop_error(e.into()))?;
    // Running products by key: (feed key, which table of that feed).
    let running_keys = keys(running.iter().map(|r| r.product.feed_key));
    let mut taken = vec![false; running.len()];
    let mut loaded = Vec::new();
    let mut plans = Vec::with_capacity(new.sell.len());
    let mut new_feed_keys = Vec::with_capacity(new.sell.len());
    for (index, sell) in new.sell.iter().enumerate() {
        let feed = open_sold_feed(&sell.feed).map_err(shop_error)?;
        let feed_key = feed.lock().key();
        new_feed_keys.push(feed_key);
        let key = (
            feed_key,
            new_feed_keys.iter().filter(|k| **k == feed_key).count() - 1,
        );
        // The plugins as their files are now.
        let mut plugins = Vec::with_capacity(sell.payment.len());
        for p in &sell.payment {
            let before = registry.get(&p.plugin).cloned();
            let plugin = registry
                .refresh_named(&new.plugin_dir, &p.plugin)
                .map_err(|e| ConfigError::Plugin {
                    file: new.file.clone(),
                    line: p.line,
                    plugin: p.plugin.clone(),
                    message: e.to_string(),
                })?;
            if !before.is_some_and(|b| Arc::ptr_eq(&b, &plugin)) {
                loaded.push((plugin.name().to_owned(), plugin.path().to_path_buf()));
            }
            plugins.push(plugin);
        }
        let existing = running_keys.iter().position(|k| *k == key);
        if let Some(i) = existing {
            taken[i] = true;
        }
        let scope = StateScope {
            store: Arc::clone(&store),
            product: feed_key,
            seller: identity.seller_key_pair(&feed_key).public_key(),
        };
        let gate = |registry: &mut PluginRegistry| -> Result<PaymentGate, ReloadError> {
            Ok(new.payment_gate_with(
                sell,
                registry,
                SELLER_CALL_LIMITS,
                options.limits.gate_limits(),
                Some(&scope),
            )?)
        };
        let fresh_addr = sell
            .listen
            .unwrap_or_else(|| SocketAddr::new(default_listen.ip(), 0));
        let plan_for = match existing.and_then(|i| running.get(i).map(|r| (i, r))) {
            Some((i, r)) if same_table(&r.sell, sell) && same_plugins(&r.product, &plugins) => {
                Plan::Keep(i)
            }
            Some((i, r)) if r.sell.listen == sell.listen => {
                let gate = gate(registry)?;
                r.product
                    .check_offer(&gate)
                    .map_err(|source| ReloadError::Offer {
                        file: new.file.clone(),
                        index,
                        name: sell.name.clone(),
                        source,
                    })?;
                let revalidate = gate.revalidate();
                Plan::Change(
                    i,
                    Offer {
                        gate: Arc::new(gate),
                        terms: sell.terms.clone().or_else(|| options.terms.clone()),
                        revalidate,
                    },
                )
            }
            restarted => {
                let gate = gate(registry)?;
                let product = Product::new(
                    identity,
                    feed,
                    Arc::new(gate),
                    options.product(sell.revalidate, sell.terms.clone()),
                );
                Plan::Start(product, fresh_addr, restarted.map(|(i, _)| i))
            }
        };
        plans.push(plan_for);
    }
    Ok((plans, loaded))
}

/// Each feed key with how many times it came before (a feed sold by two tables is two
/// products).
fn keys(feed_keys: impl Iterator<Item = [u8; 32]>) -> Vec<([u8; 32], usize)> {
    let mut seen: Vec<[u8; 32]> = Vec::new();
    feed_keys
        .map(|k| {
            let n = seen.iter().filter(|s| **s == k).count();
            seen.push(k);
            (k, n)
        })
        .collect()
}

/// Whether two `[[sell]]` tables say the same (wherever they are in the file).
fn same_table(a: &SellSettings, b: &SellSettings) -> bool {
    let unplaced = |s: &SellSettings| {
        let mut s = s.clone();
        for p in &mut s.payment {
            p.line = 0;
        }
        s
    };
    unplaced(a) == unplaced(b)
}

/// Whether `product`'s gate uses exactly `plugins` (the same loaded libraries, in order).
fn same_plugins(product: &Product, plugins: &[Arc<LoadedPlugin>]) -> bool {
    let gate = product.gate();
    gate.entries().len() == plugins.len()
        && gate
            .entries()
            .iter()
            .zip(plugins)
            .all(|(e, p)| Arc::ptr_eq(e.verifier.plugin(), p))
}

/// The start-only settings that differ between `old` and `new`.
fn need_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.data_dir != new.data_dir {
        out.push("data_dir");
    }
    if old.listen != new.listen {
        out.push("listen");
    }
    if old.limits != new.limits {
        out.push("limits");
    }
    if old.state != new.state {
        out.push("state");
    }
    if old.metrics != new.metrics {
        out.push("metrics");
    }
    if old.discovery != new.discovery {
        out.push("discovery");
    }
    if old.passphrase_env != new.passphrase_env {
        out.push("passphrase_env");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_sold_twice_is_two_products() {
        let (a, b) = ([1; 32], [2; 32]);
        assert_eq!(
            keys([a, b, a, a].into_iter()),
            [(a, 0), (b, 0), (a, 1), (a, 2)]
        );
    }
}
