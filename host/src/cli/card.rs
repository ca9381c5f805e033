//! `dazaar card` (write the cards of the products sold, or check one) and `dazaar quote`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dazaar::card::Quote;
use dazaar::market::shop;
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
            let mut registry = common.plugin_registry(None, Some(settings));
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
    /// How many seconds of access (quoted by time-priced entries).
    #[arg(long, required_unless_present = "bytes")]
    pub seconds: Option<f64>,
    /// How many bytes of data (quoted by data-priced entries).
    #[arg(long)]
    pub bytes: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dazaar quote`: what `seconds` of access or `bytes` of data cost in each of the
/// card's methods (a one-time price is its amount).
pub fn quote(args: QuoteArgs) -> Result<ExitCode> {
    if args.seconds.is_some_and(|s| !(s.is_finite() && s >= 0.0)) {
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
    let mut quoted = 0;
    for t in &card.payment {
        let Some(q) =
            dazaar::card::quote(t, args.seconds, args.bytes).map_err(|e| anyhow::anyhow!("{e}"))?
        else {
            continue;
        };
        quoted += 1;
        let method = t.method.as_str();
        let currency = t.currency.as_str();
        let (value, text) = match q {
            Quote::Time { seconds, amount } => (
                json!({"method": method, "currency": currency, "seconds": seconds, "amount": amount}),
                format!("{amount} for {seconds} s"),
            ),
            Quote::Data { bytes, amount } => (
                json!({"method": method, "currency": currency, "bytes": bytes, "amount": amount}),
                format!("{amount} for {bytes} bytes"),
            ),
            Quote::Once { amount } => (
                json!({"method": method, "currency": currency, "once": true, "amount": amount}),
                format!("{amount} once, for good"),
            ),
            _ => continue,
        };
        if args.json {
            print_json(value);
        } else {
            println!(
                "{} {}: {text}",
                escape(method, Lines::Escape),
                escape(currency, Lines::Escape)
            );
        }
    }
    if quoted == 0 {
        bail!("no payment entry of the card prices that: give --seconds for a time price, --bytes for a data price");
    }
    Ok(ExitCode::SUCCESS)
}
