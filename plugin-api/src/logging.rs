//! Optional logging to a file, for plugins (feature `logging`). A plugin library has its
//! own copy of `tracing`, separate from the host's, so its events go nowhere unless it
//! installs a subscriber of its own: `log_file = "..."` (and `log_level`, default `info`)
//! in the config does that, once per loaded library (each cdylib compiles this module,
//! and so these statics, in separately). Later opens with another `log_file` add that file as a further sink
//! (at most [`MAX_SINKS`]).

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// The most log files written at once.
pub const MAX_SINKS: usize = 8;

static SINKS: Mutex<Vec<File>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Writes each formatted event to every sink.
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

/// Parses a level name.
pub fn parse_level(text: &str) -> Result<tracing::Level, String> {
    text.parse::<tracing::Level>()
        .map_err(|_| format!("log_level {text:?} is not one of error, warn, info, debug, trace"))
}

/// Adds `path` as a log sink, installing this library's subscriber on first use.
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
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(MakeFanout)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    Ok(())
}
