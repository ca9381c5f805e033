//! `dazaar card` (write the cards of the products sold, or check one) and `dazaar quote`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dazaar::market::shop;
use dazaar::payments::PluginRegistry;
use serde_json::json;

use super::common::{print_json, Common};
use super::terminal::{escape, Lines};

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
    let state = common.state(settings.as_ref())?;
    let identity = common.identity(settings.as_ref())?;
    let cards = match (&args.feed, &settings) {
        (Some(feed), _) => {
            let name = args.name.clone().unwrap_or_else(|| {
                feed.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            vec![shop::free_card(&identity, &state, &name, feed)?]
        }
        (None, Some(settings)) => {
            let mut registry = PluginRegistry::new();
            shop::cards(settings, &identity, &mut registry, &state)?
        }
        (None, None) => bail!("no card to write: give --feed DIR or a config with [[sell]] tables"),
    };
    for card in cards {
        match &args.out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{}.json", hex::encode(card.seller_key)));
                std::fs::write(&path, serde_json::to_vec_pretty(&card)?)?;
                eprintln!("wrote {}", path.display());
            }
            None => print_json(serde_json::to_string(&card)?),
        }
    }
    Ok(ExitCode::SUCCESS)
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
