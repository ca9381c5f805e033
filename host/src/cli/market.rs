//! `dazaar revoke`, `burn` and `id`: the seller's buyers and this data dir's keys.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use dazaar::market::{self, Identity, KdfParams};
use serde_json::json;

use super::common::{parse_key, print_json, Common};

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

/// Runs `dazaar revoke` (and `burn` with `burn`).
pub fn revoke(common: &Common, args: RevokeArgs, burn: bool) -> Result<ExitCode> {
    let settings = common.settings()?;
    let identity = common.identity(settings.as_ref())?;
    let buyer = parse_key(&args.buyer_key, "the buyer key")?;
    let feed_key = market::shop::feed_key(&args.feed)?;
    let seller = identity.seller_key_pair(&feed_key).public_key();
    market::revocation::revoke(&common.state(settings.as_ref())?, &seller, &buyer, burn)?;
    let pair = identity.rekeyed_key_pair(&feed_key, &buyer);
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
            let feed_key = market::shop::feed_key(f)?;
            Some(hex::encode(
                identity.seller_key_pair(&feed_key).public_key(),
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
