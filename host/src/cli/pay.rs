//! `dazaar pay`: [`BuyerWallet::pay`] with the seller asked over a connection, rendered.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use dazaar::market;
use dazaar::net::NetConfig;
use dazaar::payments::{
    BuyerPlugin, BuyerWallet, CallLimits, PayTarget, PaymentReport, PaymentTerms,
};

use super::common::{parse_key, print_json, runtime, Common};
use super::terminal::{escape, Lines};

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
    let settings = common.settings()?;
    let identity = common.identity(settings.as_ref())?;
    let seller = parse_key(&args.seller_key, "the seller key")?;
    let card_payment: Option<Vec<PaymentTerms>> = match &args.card {
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
            Some(card.payment)
        }
        None => None,
    };
    let plugin_dir = common.plugin_dir(args.plugin_dir.as_deref(), settings.as_ref());
    let mut registry = common.plugin_registry(args.plugin_dir.as_deref(), settings.as_ref());
    let plugin = registry.load_named(&plugin_dir, &args.plugin)?;
    let config = match &args.plugin_config {
        Some(c) => c.clone(),
        None => settings
            .as_ref()
            .and_then(|s| s.buy.payment.iter().find(|p| p.plugin == args.plugin))
            .map(|p| p.config.clone())
            .unwrap_or_default(),
    };
    let verifier = plugin.open(
        &config,
        CallLimits {
            timeout: Duration::from_secs(args.timeout),
            workers: 1,
            queue: 4,
        },
    )?;
    let card_payment = card_payment.unwrap_or_else(|| {
        // No card: an entry of the plugin's first method, for the amount asked.
        let method = plugin.methods().next().unwrap_or(&args.plugin).to_owned();
        vec![PaymentTerms::new(
            &method,
            "",
            args.amount.as_deref().unwrap_or("0"),
            "seconds",
            "1",
        )]
    });
    let wallet = BuyerWallet::new(vec![BuyerPlugin {
        method: None,
        verifier,
    }]);
    let buyer = identity.buyer_key_pair().public_key();
    let report = wallet.pay(
        buyer,
        seller,
        &card_payment,
        args.amount.as_deref(),
        |message| {
            let addr = args
                .connect
                .ok_or("this payment asks the seller first: give --connect ADDR")?;
            let rt = runtime().map_err(|e| e.to_string())?;
            rt.block_on(market::exchange(
                &identity,
                seller,
                addr,
                message,
                &NetConfig::default(),
                Duration::from_secs(30),
            ))
            .map_err(|e| e.to_string())
        },
    )?;
    if args.json {
        print_json(report.to_json());
    } else {
        use std::io::IsTerminal;
        let qr = args.qr || (!args.no_qr && std::io::stdout().is_terminal());
        print_payment(&report, qr);
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of a `dazaar pay` report. Every text in it comes from the plugin or the
/// seller's reply, so all of it is escaped.
fn print_payment(report: &PaymentReport, qr: bool) {
    let esc = |t: &str| escape(t, Lines::Escape).into_owned();
    let how = &report.instructions;
    let verb = if report.paid_now().is_some() {
        "paid with"
    } else {
        "pay with"
    };
    println!(
        "{verb} {} ({} {}):",
        esc(&report.plugin),
        esc(&report.terms.method),
        esc(&report.terms.currency)
    );
    if let Some(amount) = &how.amount {
        println!(
            "  amount: {} {}",
            esc(amount),
            esc(how.currency.as_deref().unwrap_or_default())
        );
    }
    for (label, value) in [
        ("pay to", &how.pay_to),
        ("memo", &how.memo),
        ("note", &how.note),
    ] {
        if let Some(v) = value {
            println!("  {label}: {}", esc(v));
        }
    }
    if let Some(reply) = &report.seller_reply {
        println!("  the seller answered: {}", esc(&reply.name));
    }
    let paid = report.is_paid();
    let qr = qr && !paid;
    let targets = report.targets();
    for t in &targets {
        let (label, text, payload) = match t {
            PayTarget::Invoice(i) => ("Lightning invoice", i, super::qr::lightning_payload(i)),
            PayTarget::Page(u) => ("open this page to pay", u, u.clone()),
            PayTarget::Action(a) => ("make this transfer in your wallet", a, String::new()),
        };
        println!("  {label}:\n{}", esc(text));
        if qr && !payload.is_empty() {
            match super::qr::render(&payload) {
                Some(code) => print!("{code}"),
                None => println!("  (too long for a QR code)"),
            }
        }
    }
    let result = report.to_json()["result"].clone();
    let message = esc(&result["message"].to_string());
    if let Some(id) = report.paid_now() {
        println!("  paid: {}", esc(id));
    } else if paid {
        println!("  paid: {message}");
    } else if let Some(r) = &report.result {
        println!("  the plugin answered: {} {message}", esc(&r.name));
    } else if targets.is_empty() && how.send.is_none() {
        println!("  (the plugin gave nothing to pay; see its note)");
    }
}
