//! Command-line parsing (clap) and wiring of the library into commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod buy;
mod card;
mod common;
mod config_cmd;
mod demo;
mod discovery;
mod feed;
mod generate;
mod ledger;
mod market;
mod net;
mod pay;
mod plugins;
mod qr;
mod sell;
mod terminal;

/// dazaar: sell and buy append-only data feeds over an encrypted peer-to-peer connection.
#[derive(Debug, Parser)]
#[command(name = "dazaar", version = generate::version_text(), about, long_about = None)]
pub struct Cli {
    /// Directory for identity and state (default: from the config, then ~/.local/share/dazaar).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The configuration file (default: $DAZAAR_CONFIG, else the first that exists of
    /// ./dazaar.toml, $XDG_CONFIG_HOME/dazaar/dazaar.toml, /etc/dazaar/dazaar.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The seller's state database: `sqlite:PATH` or `postgres://user:password@host/db`
    /// (default: the config's `[state] url`, then sqlite:DATA_DIR/state.db).
    #[arg(long, global = true, value_name = "URL")]
    pub state: Option<String>,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// How log lines on stderr look: `human`, or `json` (one object per line, for log
    /// collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, append to, inspect and import Hypercore feeds.
    #[command(subcommand)]
    Feed(feed::FeedCmd),
    /// Run the demo (the README's main job), narrated on the terminal.
    Demo,
    /// List and check payment plugins.
    #[command(subcommand)]
    Plugins(plugins::PluginsCmd),
    /// Check a configuration file, or write an example.
    #[command(subcommand)]
    Config(config_cmd::ConfigCmd),
    /// Record, list and import payments (read by the ledger plugin).
    #[command(subcommand)]
    Ledger(ledger::LedgerCmd),
    /// List what was sold (the sales log in the state database).
    Sales(ledger::SalesArgs),
    /// Sell a feed (or every [[sell]] of the config) to paying buyers.
    Sell(sell::SellArgs),
    /// Make a running seller reload its configuration (sends it SIGHUP).
    Reload(sell::ReloadArgs),
    /// Buy a feed from a seller.
    Buy(buy::BuyArgs),
    /// Write the Dazaar card of each sold feed, or check one (`card validate FILE`).
    Card(card::CardArgs),
    /// Cut a buyer off (effective at its next revalidation).
    Revoke(market::RevokeArgs),
    /// Revoke a buyer and publish its rekeyed key pair (in the card), so copies it relays
    /// no longer prove they came from the seller.
    Burn(market::RevokeArgs),
    /// Ask a payment plugin how to pay a seller (and the seller for an invoice), then pay
    /// or print what to pay.
    Pay(pay::PayArgs),
    /// What some seconds of access cost in each of a card's payment methods.
    Quote(card::QuoteArgs),
    /// Run a mainline DHT node, e.g. the bootstrap node of a private network.
    DhtNode(discovery::DhtNodeArgs),
    /// Show this data dir's buyer key (and a feed's seller key), or import a master key.
    Id(market::IdArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff), or write one per command into a directory.
    Man(generate::ManArgs),
}

/// The format of log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    Human,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`),
    /// `target`, and the spans (`span`, `spans`: a buyer's `peer` and `seller`).
    Json,
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Logs go to stderr so stdout stays clean for data and --json output.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Parses the command line, runs the command, and turns an error into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    let common = common::Common {
        data_dir: cli.data_dir.clone(),
        config: cli.config.clone(),
        state: cli.state.clone(),
    };
    let result = match cli.command {
        Command::Feed(cmd) => feed::run(cmd),
        Command::Demo => demo::run(),
        Command::Plugins(cmd) => plugins::run(&common, cmd),
        Command::Config(cmd) => config_cmd::run(&common, cmd),
        Command::Ledger(cmd) => ledger::run(&common, cmd),
        Command::Sales(args) => ledger::sales(&common, args),
        Command::Sell(args) => sell::sell(&common, args),
        Command::Reload(args) => sell::reload(args),
        Command::Buy(args) => buy::buy(&common, args),
        Command::Card(args) => card::card(&common, args),
        Command::Revoke(args) => market::revoke(&common, args, false),
        Command::Burn(args) => market::revoke(&common, args, true),
        Command::Id(args) => market::id(&common, args),
        Command::DhtNode(args) => discovery::dht_node(args),
        Command::Pay(args) => pay::pay(&common, args),
        Command::Quote(args) => card::quote(args),
        Command::Completions(args) => generate::completions(args),
        Command::Man(args) => generate::man(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One clear line: the error and its causes, joined.
            // It may quote a peer (a seller's reason for refusing us).
            let text = format!("{err:#}");
            match cli.log_format {
                LogFormat::Human => {
                    eprintln!("dazaar: {}", terminal::escape(&text, terminal::Lines::Keep))
                }
                // A log collector gets the error as a log line like the others.
                LogFormat::Json => tracing::error!("{text}"),
            }
            ExitCode::FAILURE
        }
    }
}
