//! `dazaar_exec`: a payment verifier in any language, run as a child process.
//!
//! The plugin starts `command` and speaks JSON lines with it: one request per line on its
//! stdin, each with an `id`, one answer per line on its stdout with the same `id`
//! ([`protocol`]; the whole protocol is in `docs/exec-plugin.md`). Whatever the process
//! writes to stderr goes to the host's log. A verifier that exits, hangs (lets a call go
//! unanswered for `timeout_ms`), writes a line longer than `max_line` or anything that is
//! not an answer is killed and started again after a jittered, capped backoff; calls
//! meanwhile fail closed ("unavailable"), and the seller carries on.
//!
//! Configuration (`[sell.payment.config]`):
//! ```toml
//! command = ["python3", "/srv/verifier.py", "--paid", "/srv/paid.json"]  # required
//! env = { API_TOKEN = "..." }  # optional: added to its environment (never logged)
//! dir = "/srv"                 # optional: its working directory (~/ is home)
//! timeout_ms = 2000            # per call; keep it below the host's call timeout (5 s)
//! max_line = 65536             # longest stdout line, bytes
//! max_pending = 64             # calls waiting for answers at once
//! restart_min_ms = 200         # first wait before a restart, doubling ...
//! restart_max_ms = 30000       # ... up to this (each wait jittered down to half)
//! start_timeout_ms = 10000     # a new process slower than timeout_ms to answer its
//!                              # first call is not taken as hung within this time
//! log_file = "..."             # the plugin's own log (optional), log_level = "info"
//! ```
//! Card method: the sell entry's, else the first method of the verifier's `describe`
//! answer (the host asks, `HOST_DESCRIBE_MESSAGE`; the entry's currency must then be one
//! it lists, if it lists any), else `exec`. The plugin lists the wildcard method `*`
//! (`ANY_METHOD`): its program decides what it serves.

pub mod process;
pub mod protocol;

use std::collections::BTreeMap;
use std::time::Duration;

use dazaar_plugin_api::logging::LogSettings;
use dazaar_plugin_api::{
    expand_home, export_payment_plugin, unavailable, Backoff, Description, Grant,
    PaymentInstructions, PaymentPlugin, Request, ANY_METHOD, HOST_DESCRIBE_MESSAGE,
};
use serde::Deserialize;
use serde_json::Value;

use process::{CallError, Limits, Spec, Supervisor};
use protocol::{key_hex, terms_json, Op, ProtocolError};

/// The longest time a call may wait.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// The longest `max_line` allowed (bytes).
pub const MAX_MAX_LINE: usize = 16 << 20;

/// The plugin's configuration table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_max_line")]
    max_line: usize,
    #[serde(default = "default_max_pending")]
    max_pending: usize,
    #[serde(default = "default_restart_min_ms")]
    restart_min_ms: u64,
    #[serde(default = "default_restart_max_ms")]
    restart_max_ms: u64,
    #[serde(default = "default_start_timeout_ms")]
    start_timeout_ms: u64,
    #[serde(default)]
    log_file: Option<String>,
    #[serde(default)]
    log_level: Option<String>,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_max_line() -> usize {
    64 * 1024
}
fn default_max_pending() -> usize {
    64
}
fn default_restart_min_ms() -> u64 {
    200
}
fn default_restart_max_ms() -> u64 {
    30_000
}
fn default_start_timeout_ms() -> u64 {
    10_000
}

/// The checked configuration: what to run, its bounds, the plugin's log settings.
#[derive(Debug)]
struct Settings {
    spec: Spec,
    limits: Limits,
    log: LogSettings,
}

fn config_error(what: impl std::fmt::Display) -> String {
    format!("exec config: {what}")
}

/// Reads and checks the config table. Errors name keys, never values: the command's
/// arguments and the environment may hold secrets.
fn read_config(text: &str) -> Result<Settings, String> {
    let c: Config = toml::from_str(text).map_err(|e| {
        let message = e.message();
        // The TOML parser quotes a mistyped value back; say which key instead.
        if message.contains('"') || message.contains('\'') {
            let key = e
                .span()
                .and_then(|s| text.get(..s.start))
                .and_then(|before| before.lines().last())
                .and_then(|l| l.split('=').next())
                .map(|k| k.trim().trim_matches('"').to_owned())
                .filter(|k| !k.is_empty() && k.len() <= 64 && !k.contains(['"', '\'']))
                .unwrap_or_else(|| "a setting".into());
            config_error(format!("{key} has a value of the wrong type"))
        } else {
            config_error(message)
        }
    })?;
    let mut command = c.command.into_iter();
    let program = command
        .next()
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            config_error("command must name a program: command = [\"prog\", \"arg\", ...]")
        })?;
    if c.timeout_ms == 0 || c.timeout_ms > MAX_TIMEOUT_MS {
        return Err(config_error(format!(
            "timeout_ms must be 1..={MAX_TIMEOUT_MS}"
        )));
    }
    if !(64..=MAX_MAX_LINE).contains(&c.max_line) {
        return Err(config_error(format!(
            "max_line must be 64..={MAX_MAX_LINE}"
        )));
    }
    if !(1..=4096).contains(&c.max_pending) {
        return Err(config_error("max_pending must be 1..=4096"));
    }
    if c.restart_min_ms == 0 || c.restart_max_ms < c.restart_min_ms {
        return Err(config_error(
            "restart_min_ms must be above 0 and at most restart_max_ms",
        ));
    }
    if c.start_timeout_ms > 10 * MAX_TIMEOUT_MS {
        return Err(config_error(format!(
            "start_timeout_ms must be at most {}",
            10 * MAX_TIMEOUT_MS
        )));
    }
    if let Some(k) = c
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        let shown = if k.len() <= 64 {
            k.as_str()
        } else {
            "(long name)"
        };
        return Err(config_error(format!(
            "env name {shown:?} is not a variable name"
        )));
    }
    if c.env.values().any(|v| v.contains('\0')) {
        return Err(config_error("an env value holds a NUL byte"));
    }
    let dir = c
        .dir
        .map(|d| expand_home(&d).map_err(|e| config_error(format!("dir {e}"))))
        .transpose()?;
    let log =
        LogSettings::parse(c.log_file.as_deref(), c.log_level.as_deref()).map_err(config_error)?;
    Ok(Settings {
        spec: Spec {
            program: expand_home(&program)
                .map_err(|e| config_error(format!("command {e}")))?
                .to_string_lossy()
                .into_owned(),
            args: command.collect(),
            env: c.env.into_iter().collect(),
            dir,
        },
        limits: Limits {
            timeout: Duration::from_millis(c.timeout_ms),
            max_line: c.max_line,
            max_pending: c.max_pending,
            backoff: Backoff::new(
                Duration::from_millis(c.restart_min_ms),
                Duration::from_millis(c.restart_max_ms),
            ),
            start_grace: Duration::from_millis(c.start_timeout_ms),
        },
        log,
    })
}

/// The exec verifier: a supervised child process.
#[derive(Debug)]
pub struct ExecPlugin {
    verifier: Supervisor,
}

impl ExecPlugin {
    /// The supervisor of the verifier process (for tests and tools).
    pub fn supervisor(&self) -> &Supervisor {
        &self.verifier
    }

    /// Asks the verifier to describe itself.
    pub fn describe_verifier(&self) -> Result<protocol::Described, String> {
        let answer = self.call(Op::Describe)?;
        protocol::parse_describe(&answer).map_err(|e| self.protocol_error(e))?
    }

    fn call(&self, op: Op<'_>) -> Result<protocol::Answer, String> {
        let what = op.name();
        self.verifier.call(op).map_err(|e: CallError| {
            tracing::warn!(op = what, "verifier call failed: {e}");
            e.reason()
        })
    }

    fn protocol_error(&self, e: ProtocolError) -> String {
        tracing::warn!("{e}");
        unavailable(e)
    }
}

/// A `dazaar/user-message` body as the verifier gets it: the JSON value, or the text as a
/// string when it is not JSON.
fn message_value(message: &str) -> Value {
    serde_json::from_str(message).unwrap_or_else(|_| Value::String(message.to_owned()))
}

impl PaymentPlugin for ExecPlugin {
    fn describe() -> Description {
        Description {
            name: "exec",
            version: env!("CARGO_PKG_VERSION"),
            methods: &["exec", ANY_METHOD],
            currencies: &[],
        }
    }

    fn check_config(config: &str) -> Result<(), String> {
        read_config(config).map(|_| ())
    }

    fn open(config: &str) -> Result<Self, String> {
        let settings = read_config(config)?;
        settings.log.apply()?;
        let plugin = ExecPlugin {
            verifier: Supervisor::new(settings.spec, settings.limits),
        };
        // A command that cannot be started at all is a configuration mistake; one that
        // starts but misbehaves is restarted later, like any crash.
        if let Err(e @ CallError::Spawn(_)) = plugin.verifier.start() {
            return Err(config_error(e));
        }
        match plugin.describe_verifier() {
            Ok(d) => tracing::info!(
                name = %d.name,
                version = %d.version,
                methods = ?d.methods,
                currencies = ?d.currencies,
                "the verifier describes itself"
            ),
            Err(reason) => tracing::info!("the verifier does not describe itself: {reason}"),
        }
        Ok(plugin)
    }

    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        let answer = self.call(Op::Validate {
            buyer: key_hex(&req.buyer),
            seller: key_hex(&req.seller),
            terms: terms_json(req.terms),
            now_ms,
        })?;
        protocol::parse_validate(&answer).map_err(|e| self.protocol_error(e))?
    }

    fn user_message(
        &self,
        req: &Request<'_>,
        name: &str,
        message: &str,
    ) -> Result<Option<(String, String)>, String> {
        if name == HOST_DESCRIBE_MESSAGE {
            // The host asks which card method to publish: the verifier's own answer, or
            // none (the sell entry decides) when it does not describe.
            return Ok(self.describe_verifier().ok().map(|d| {
                let body = serde_json::json!({"methods": d.methods, "currencies": d.currencies});
                (HOST_DESCRIBE_MESSAGE.to_owned(), body.to_string())
            }));
        }
        let answer = self.call(Op::UserMessage {
            buyer: key_hex(&req.buyer),
            seller: key_hex(&req.seller),
            terms: terms_json(req.terms),
            name,
            message: message_value(message),
        })?;
        protocol::parse_user_message(&answer).map_err(|e| self.protocol_error(e))?
    }

    fn payment_request(
        &self,
        req: &Request<'_>,
        amount: &str,
    ) -> Result<PaymentInstructions, String> {
        let answer = self.call(Op::PaymentRequest {
            buyer: key_hex(&req.buyer),
            seller: key_hex(&req.seller),
            terms: terms_json(req.terms),
            amount,
        })?;
        protocol::parse_payment_request(&answer).map_err(|e| self.protocol_error(e))?
    }
}

export_payment_plugin!(ExecPlugin);

#[cfg(test)]
mod tests;
