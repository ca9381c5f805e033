//! Logging for plugins (feature `logging`). A plugin library has its own copy of
//! `tracing`, separate from the host's, so its events go nowhere unless it installs a
//! subscriber of its own. This module installs one (once per loaded library: each cdylib
//! compiles this module, and so these statics, in separately) with two outputs:
//!
//! - **the host's log**: the host hands the plugin a [`LogSink`] when it
//!   loads it (API 1.2, `set_log_sink`), with the host's level; events at that level and
//!   above are passed to it, and the host logs them under its target `dazaar::plugin`;
//! - **log files**: `log_file = "..."` (and `log_level`, default `info`) in a plugin's
//!   config adds a file ([`LogSettings`]); later opens with another `log_file` add
//!   further files (at most [`MAX_SINKS`]). Every file gets events at the most verbose
//!   level asked for.
//!
//! Whatever a plugin logs reaches both: plugins must never log a secret.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

use crate::abi::LogSink;
use crate::settings::{expand_home, HomeNotSet};

/// The most log files written at once.
pub const MAX_SINKS: usize = 8;

/// The longest message passed to the host; longer ones are cut (on a char boundary).
pub const MAX_HOST_MESSAGE: usize = 4096;

static SINKS: Mutex<Vec<File>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<()> = OnceLock::new();
/// Levels as numbers: 0 off, 1 error ... 5 trace.
static FILE_LEVEL: AtomicU8 = AtomicU8::new(0);
static HOST_LEVEL: AtomicU8 = AtomicU8::new(0);
static HOST_SINK: Mutex<Option<LogSink>> = Mutex::new(None);

/// A level as the number the ABI uses (1 error ... 5 trace).
pub fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Writes each formatted event to every file sink.
struct Fanout;

impl Write for Fanout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut sinks) = SINKS.lock() {
            for f in sinks.iter_mut() {
                let _ = f.write_all(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct MakeFanout;

impl<'a> MakeWriter<'a> for MakeFanout {
    type Writer = Fanout;
    fn make_writer(&'a self) -> Fanout {
        Fanout
    }
}

/// An event's message and fields as one line: `message key=value ...`.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.0.len() > MAX_HOST_MESSAGE {
            return;
        }
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            // Strings as they are, like the fmt subscriber does for `%` fields.
            self.record_debug(field, &format_args!("{value:?}"));
        }
    }
}

/// Passes events to the host's sink.
struct HostLayer;

impl<S: Subscriber> Layer<S> for HostLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(sink) = HOST_SINK.lock().ok().and_then(|s| *s) else {
            return;
        };
        let mut line = Line::default();
        event.record(&mut line);
        let text = crate::str_prefix(&line.0, MAX_HOST_MESSAGE);
        let meta = event.metadata();
        (sink.log)(
            level_number(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(text),
        );
    }
}

fn allowed(meta: &Metadata<'_>, max: &AtomicU8) -> bool {
    level_number(meta.level()) <= max.load(Ordering::Relaxed)
}

/// Installs this library's subscriber, once.
fn install() {
    INSTALLED.get_or_init(|| {
        let files = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(MakeFanout)
            .with_filter(filter_fn(|m| allowed(m, &FILE_LEVEL)));
        let host = HostLayer.with_filter(filter_fn(|m| allowed(m, &HOST_LEVEL)));
        let subscriber = Registry::default().with(files).with(host);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Parses a level name (as [`LogSettings::parse`] reads `log_level`).
pub fn parse_level(text: &str) -> Result<tracing::Level, String> {
    text.parse::<tracing::Level>()
        .map_err(|_| LogSettingsError::Level(text.to_owned()).to_string())
}

/// Why a plugin's `log_file` / `log_level` settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogSettingsError {
    /// `log_level` is not a level name.
    #[error("log_level {0:?} is not one of error, warn, info, debug, trace")]
    Level(String),
    /// `log_file` starts with `~/` and there is no home directory.
    #[error("log_file {0}")]
    Home(#[from] HomeNotSet),
}

/// A plugin's `log_file` and `log_level` settings, checked. A plugin keeps both keys in
/// its own config struct (so unknown keys are still refused there) and passes their
/// values to [`LogSettings::parse`] when it checks the config, then calls
/// [`LogSettings::apply`] when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The plugin's own log file (`~/` expanded), if it has one.
    pub file: Option<std::path::PathBuf>,
    /// The most verbose level written to it (`info` unless set).
    pub level: Level,
}

impl LogSettings {
    /// Checks the `log_file` and `log_level` values, without opening anything.
    pub fn parse(
        log_file: Option<&str>,
        log_level: Option<&str>,
    ) -> Result<LogSettings, LogSettingsError> {
        let level = match log_level {
            None => Level::INFO,
            Some(text) => text
                .parse()
                .map_err(|_| LogSettingsError::Level(text.to_owned()))?,
        };
        let file = log_file.map(expand_home).transpose()?;
        Ok(LogSettings { file, level })
    }

    /// Starts writing this library's events to the file, if there is one ([`add_sink`]).
    pub fn apply(&self) -> Result<(), String> {
        match &self.file {
            Some(path) => add_sink(path, self.level),
            None => Ok(()),
        }
    }
}

/// Adds `path` as a log file, installing this library's subscriber on first use.
pub fn add_sink(path: &std::path::Path, level: tracing::Level) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open log_file {}: {}", path.display(), e.kind()))?;
    {
        let mut sinks = SINKS
            .lock()
            .map_err(|_| "log sinks are poisoned".to_owned())?;
        if sinks.len() >= MAX_SINKS {
            return Err(format!("at most {MAX_SINKS} log files per process"));
        }
        sinks.push(file);
    }
    FILE_LEVEL.fetch_max(level_number(&level), Ordering::Relaxed);
    install();
    Ok(())
}

/// Sends events at `max_level` (1 error ... 5 trace; 0 none) and above to the host's
/// `sink` (what the host's `set_log_sink` call does). Replaces an earlier sink.
pub fn set_host_sink(sink: LogSink, max_level: u8) {
    if let Ok(mut s) = HOST_SINK.lock() {
        *s = Some(sink);
    }
    HOST_LEVEL.store(max_level.min(5), Ordering::Relaxed);
    install();
    // Callsites that were disabled when the level was lower must be asked again.
    tracing::callsite::rebuild_interest_cache();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_settings() {
        assert_eq!(
            LogSettings::parse(None, None),
            Ok(LogSettings {
                file: None,
                level: Level::INFO
            })
        );
        let s = LogSettings::parse(Some("/var/log/p.log"), Some("trace")).unwrap();
        assert_eq!(
            s.file.as_deref(),
            Some(std::path::Path::new("/var/log/p.log"))
        );
        assert_eq!(s.level, Level::TRACE);
        assert_eq!(
            LogSettings::parse(None, Some("debug")).map(|s| s.level),
            Ok(Level::DEBUG)
        );
        let e = LogSettings::parse(None, Some("loud")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "log_level \"loud\" is not one of error, warn, info, debug, trace"
        );
        // `~/` is the home directory, as for every path setting.
        assert_eq!(
            LogSettings::parse(Some("~/p.log"), None).map(|s| s.file),
            crate::settings::expand_home("~/p.log")
                .map(Some)
                .map_err(LogSettingsError::from)
        );
        // No file, nothing to open.
        assert_eq!(LogSettings::parse(None, None).unwrap().apply(), Ok(()));
    }

    #[test]
    fn applying_opens_the_file() {
        let dir = std::env::temp_dir().join(format!("dazaar-log-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plugin.log");
        let s = LogSettings::parse(path.to_str(), Some("warn")).unwrap();
        assert_eq!(s.apply(), Ok(()));
        assert!(path.exists());
        let bad = LogSettings::parse(dir.join("no/such/dir.log").to_str(), None).unwrap();
        assert!(bad.apply().unwrap_err().starts_with("cannot open log_file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
