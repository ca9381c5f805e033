//! `dazaar ledger add|list|import` and `dazaar sales`: payments recorded by hand (read by
//! the ledger plugin) and the log of what was sold.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use dazaar::payments::now_ms;
use dazaar::state::{LedgerPayment, StateStore};

use super::common::{parse_key, print_json, Common};

/// Ledger commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Record a payment: in the seller's state database (one transaction), or with
    /// `--file` appended to a ledger file (JSON lines; created if missing).
    Add {
        /// A ledger file instead of the state database.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// The buyer's public key (64 hex characters).
        #[arg(long, value_name = "HEX")]
        buyer: String,
        /// The amount, in the card's currency.
        #[arg(long, value_name = "N")]
        amount: String,
        /// Only for this product (the seller key, 64 hex characters).
        #[arg(long, value_name = "HEX")]
        seller: Option<String>,
        /// When it was paid, ms since the Unix epoch (default: now).
        #[arg(long, value_name = "MS")]
        time: Option<u64>,
        /// A note for people (ignored by the plugin).
        #[arg(long)]
        note: Option<String>,
    },
    /// List the payments in the state database, oldest first.
    List {
        /// Only this buyer's (64 hex characters).
        #[arg(long, value_name = "HEX")]
        buyer: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Import a ledger file into the state database (once per file; bad lines skipped).
    Import {
        /// The ledger file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `dazaar sales`.
#[derive(Debug, Args)]
pub struct SalesArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

fn state(common: &Common) -> Result<StateStore> {
    let settings = common.settings()?;
    common
        .state(settings.as_ref())?
        .open()
        .context("opening the state database")
}

/// Runs a ledger command.
pub fn run(common: &Common, cmd: LedgerCmd) -> Result<ExitCode> {
    match cmd {
        LedgerCmd::Add {
            file,
            buyer,
            amount,
            seller,
            time,
            note,
        } => {
            let buyer = parse_key(&buyer, "--buyer")?;
            let seller = seller.map(|s| parse_key(&s, "--seller")).transpose()?;
            let amount: f64 = amount
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v > 0.0)
                .with_context(|| format!("--amount {amount:?} is not a positive number"))?;
            let mut payment = LedgerPayment {
                id: 0,
                buyer,
                seller,
                amount,
                time: time.unwrap_or_else(now_ms),
                note,
            };
            match file {
                Some(file) => append_line(&file, &payment)?,
                None => {
                    payment.id = state(common)?.ledger_add(&payment)?;
                    print_json(serde_json::to_string(&payment)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::List { buyer, json } => {
            let buyer = buyer.map(|b| parse_key(&b, "--buyer")).transpose()?;
            let payments = state(common)?.ledger(buyer.as_ref())?;
            for p in &payments {
                if json {
                    print_json(serde_json::to_string(p)?);
                } else {
                    println!(
                        "{:>6}  {}  {:>12}  {}{}",
                        p.id,
                        hex::encode(p.buyer),
                        p.amount,
                        p.time,
                        p.seller
                            .map(|s| format!("  seller {}", hex::encode(s)))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::Import { file, json } => {
            let report = state(common)?.import_ledger_file(&file)?;
            if json {
                print_json(
                    serde_json::json!({"payments": report.payments, "skipped": report.skipped}),
                );
            } else {
                println!(
                    "imported {} payments from {} ({} lines skipped)",
                    report.payments,
                    file.display(),
                    report.skipped
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Appends `p` to a ledger file as one line (one write, so a concurrent reader never sees
/// half of it: appends of this size are atomic on local file systems).
fn append_line(file: &std::path::Path, p: &LedgerPayment) -> Result<()> {
    let line = dazaar_plugin_api::LedgerLine {
        buyer: p.buyer,
        seller: p.seller,
        amount: p.amount,
        time_ms: p.time,
        note: p.note.clone(),
    }
    .to_json();
    let text = format!("{line}\n");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write to {}", file.display()))?;
    print!("{text}");
    Ok(())
}

/// Runs `dazaar sales`.
pub fn sales(common: &Common, args: SalesArgs) -> Result<ExitCode> {
    let sales = state(common)?.sales()?;
    for s in &sales {
        if args.json {
            print_json(serde_json::to_string(s)?);
        } else {
            println!(
                "{}  seller {}  buyer {}  {} {} ({} ms left)",
                s.at_ms,
                hex::encode(s.seller),
                hex::encode(s.buyer),
                s.method,
                s.grant,
                s.remaining
            );
        }
    }
    if sales.is_empty() && !args.json {
        eprintln!("no sales recorded yet");
    }
    Ok(ExitCode::SUCCESS)
}
