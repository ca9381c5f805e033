//! Discovery flags of `dazaar sell` / `dazaar buy`, and `dazaar dht-node`.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use dazaar::config::Settings;
use dazaar::crypto::NoiseKeyPair;
use dazaar::discovery::{self, Advertiser, BootstrapNode, DiscoveryOptions};
use serde_json::json;
use tokio::sync::watch;

use super::common::{print_json, termination};

/// How a seller is announced (flags override `[discovery]` of the config).
#[derive(Debug, Clone, Default, Args)]
pub struct AnnounceArgs {
    /// A DHT bootstrap node (`IP:PORT`, repeatable), e.g. a `dazaar dht-node` of a private
    /// network. Default: the config's, else the public mainline nodes.
    #[arg(long, value_name = "ADDR")]
    pub bootstrap: Vec<String>,
    /// Do not use the mainline DHT.
    #[arg(long)]
    pub no_dht: bool,
    /// Do not use mDNS on the LAN.
    #[arg(long)]
    pub no_mdns: bool,
}

impl AnnounceArgs {
    /// The options: flags over the config's `[discovery]`.
    pub fn options(&self, settings: Option<&Settings>) -> Result<DiscoveryOptions> {
        let mut o = DiscoveryOptions::default();
        if let Some(s) = settings {
            let d = &s.discovery;
            o.dht = d.dht;
            o.mdns = d.mdns;
            o.bootstrap = d.bootstrap.clone();
            for p in &d.peers {
                let addr = p.parse::<SocketAddr>().with_context(|| {
                    format!(
                        "{}: [discovery] peers: {p:?} is not IP:PORT",
                        s.file.display()
                    )
                })?;
                o.peers.push(addr);
            }
        }
        if !self.bootstrap.is_empty() {
            o.bootstrap = self.bootstrap.clone();
        }
        o.dht &= !self.no_dht;
        o.mdns &= !self.no_mdns;
        Ok(o)
    }
}

/// How a buyer finds the seller without `--connect`.
#[derive(Debug, Clone, Default, Args)]
pub struct DiscoveryArgs {
    /// DHT and mDNS switches, shared with `sell`.
    #[command(flatten)]
    pub announce: AnnounceArgs,
    /// A candidate address of the seller (repeatable), added to the config's peers.
    #[arg(long, value_name = "ADDR")]
    pub peer: Vec<SocketAddr>,
    /// Give up finding the seller after this many seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub find_timeout: u64,
}

impl DiscoveryArgs {
    /// The options: flags over the config's `[discovery]`.
    pub fn options(&self, settings: Option<&Settings>) -> Result<DiscoveryOptions> {
        let mut o = self.announce.options(settings)?;
        o.peers.extend(self.peer.iter().copied());
        o.lookup_timeout = Duration::from_secs(self.find_timeout.max(1));
        Ok(o)
    }
}

/// Makes a seller listening on `local` findable (see [`discovery::advertise`]); with
/// `json`, prints `{"event":"announced",...}` after each DHT announcement.
pub fn advertise(
    seller_key: [u8; 32],
    local: SocketAddr,
    opts: &DiscoveryOptions,
    shutdown: watch::Receiver<bool>,
    json: bool,
) -> Result<Advertiser> {
    let adv =
        discovery::advertise(seller_key, local, opts, shutdown).context("announcing the seller")?;
    if json && adv.on_dht() {
        let mut announced = adv.announced();
        let key = hex::encode(seller_key);
        let topic = hex::encode(discovery::topic(&seller_key));
        tokio::spawn(async move {
            while announced.changed().await.is_ok() {
                let n = *announced.borrow_and_update();
                print_json(
                    json!({"event": "announced", "via": "dht", "sellerKey": key, "topic": topic, "count": n}),
                );
            }
        });
    }
    Ok(adv)
}

/// Finds the seller's address (see [`discovery::find_seller`]); with `json`, prints
/// `{"event":"found",...}`.
pub async fn find(
    key_pair: &NoiseKeyPair,
    seller_key: [u8; 32],
    opts: &DiscoveryOptions,
    data_dir: &Path,
    shutdown: watch::Receiver<bool>,
    json: bool,
) -> Result<SocketAddr> {
    let found = discovery::find_seller(key_pair, seller_key, opts, Some(data_dir), shutdown)
        .await
        .context("finding the seller")?;
    if json {
        print_json(
            json!({"event": "found", "addr": found.addr.to_string(), "source": found.source.as_str(), "tried": found.tried}),
        );
    }
    Ok(found.addr)
}

/// `dazaar dht-node`.
#[derive(Debug, Args)]
pub struct DhtNodeArgs {
    /// Where to listen (UDP, IPv4).
    #[arg(long, default_value = "0.0.0.0:6881")]
    pub listen: SocketAddrV4,
    /// Join an existing network through these nodes (default: start a new one).
    #[arg(long, value_name = "ADDR")]
    pub bootstrap: Vec<String>,
    /// Print `{"event":"listening","addr":"IP:PORT"}` as the first stdout line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dazaar dht-node` until SIGINT/SIGTERM.
pub fn dht_node(args: DhtNodeArgs) -> Result<ExitCode> {
    let rt = super::common::runtime_with_workers(1)?;
    rt.block_on(async move {
        let node = BootstrapNode::start(args.listen, &args.bootstrap)
            .await
            .with_context(|| format!("starting a DHT node on {}", args.listen))?;
        let addr = node.local_addr();
        if args.json {
            print_json(json!({"event": "listening", "addr": addr.to_string()}));
        } else {
            println!(
                "DHT node listening on {addr} (give --bootstrap {addr} to sellers and buyers)"
            );
        }
        termination().await;
        drop(node);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
