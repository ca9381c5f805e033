//! `dazaar plugins conformance`: a battery of checks any payment plugin must pass before a
//! seller runs it, made through the host's own loader and call threads.
//!
//! | check | passes when |
//! |---|---|
//! | loads and describes | the loader accepts the file; name, version and methods are sane, and `describe` answers the same twice |
//! | garbage config refused | each of several broken tables (not TOML, cut short, binary, an unknown key, a huge line) is refused by `check_config` and `open` with an error, not a panic, a hang or success |
//! | opens with the given config | `open` accepts the configuration given |
//! | random buyers refused | N random buyers (1,000 by default) are each answered within the call timeout and none gets paid access: a refusal, a failed check marked unavailable (a backend that cannot be reached: fail closed) or `free` access pass; a time, bytes or once grant, a panic or a timeout fail |
//! | threads agree | 8 threads asking about the same buyers at once (each call on its own plugin thread) get the same kind of answer for each buyer |
//! | panics contained | hostile terms (unknown units, NaN, huge numbers, broken JSON), amounts and user messages are answered (yes or no) without a panic, a hang or an unreadable answer |
//! | marker secret not leaked | a random marker, placed in every garbage table and wherever the given configuration says `@MARKER@`, never appears in an error, an answer or a log event of the plugin |
//!
//! A plugin that needs a backend is checked with a configuration that lets it start but
//! points at nothing (a loopback port where no one listens): its checks then fail closed,
//! which is what "refused" means for it. Write `@MARKER@` inside a secret's value (a key
//! file's path, an API key) to check that value never leaks.
//!
//! The battery is bounded: each call waits at most the call timeout, and a check stops
//! after a few timeouts instead of waiting on a hung plugin for every buyer.
//!
//! `dazaar plugins conformance` runs the battery in a child process that prints each
//! check as it ends ([`run_conformance_reporting`], [`child_line`]); if a plugin aborts
//! that process, [`report_from_child`] fails the check it was in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use dazaar_plugin_api::{Grant, GrantKind, Key, PaymentTerms};

use super::harness::{default_terms, HARNESS_SELLER, HARNESS_START_MS};
use super::loader::LoadedPlugin;
use super::pool::CallLimits;
use super::registry::{OpenedVerifier, PaymentError};
use super::wire::MAX_USER_MESSAGE;

/// Where the configuration puts the marker secret (see the module docs).
pub const MARKER_PLACEHOLDER: &str = "@MARKER@";

/// How a plugin's error text starts when the plugin panicked (the API's guard writes it).
const PANIC_PREFIX: &str = "plugin panicked in ";

/// A check stops after this many calls that timed out (the plugin is hung).
const MAX_TIMEOUTS: usize = 3;

/// What to run the battery with.
#[derive(Debug, Clone)]
pub struct ConformanceOptions {
    /// The plugin's TOML table as text; `@MARKER@` is replaced by the marker secret.
    pub config: String,
    /// The longest one call may take.
    pub timeout: Duration,
    /// How many random buyers must be refused.
    pub random_buyers: usize,
    /// How many threads call at once.
    pub threads: usize,
    /// Seeds the random buyers, so a failure can be replayed.
    pub seed: u64,
}

impl Default for ConformanceOptions {
    fn default() -> Self {
        ConformanceOptions {
            config: String::new(),
            timeout: Duration::from_secs(5),
            random_buyers: 1000,
            threads: 8,
            seed: 0x0da2_aa12,
        }
    }
}

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// It passed.
    Pass,
    /// It failed.
    Fail,
    /// It could not run (an earlier check failed).
    Skipped,
}

impl CheckStatus {
    /// `pass`, `fail` or `skipped`, as `--json` says it.
    pub fn word(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "fail",
            CheckStatus::Skipped => "skipped",
        }
    }

    /// `PASS`, `FAIL` or `SKIP`, as the table says it.
    pub fn label(self) -> &'static str {
        match self {
            CheckStatus::Pass => "PASS",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skipped => "SKIP",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check (see the module docs).
    pub name: String,
    /// Whether it passed.
    pub status: CheckStatus,
    /// What was seen: counts on success, the first problem on failure.
    pub detail: String,
}

impl CheckResult {
    /// `{"name":..,"status":"pass"|"fail"|"skipped","passed":bool,"detail":..}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "status": self.status.word(),
            "passed": self.status == CheckStatus::Pass,
            "detail": self.detail,
        })
    }

    /// Reads [`to_json`](Self::to_json)'s object back.
    pub fn from_json(value: &serde_json::Value) -> Option<CheckResult> {
        let status = match value.get("status")?.as_str()? {
            "pass" => CheckStatus::Pass,
            "fail" => CheckStatus::Fail,
            "skipped" => CheckStatus::Skipped,
            _ => return None,
        };
        Some(CheckResult {
            name: value.get("name")?.as_str()?.to_owned(),
            status,
            detail: value.get("detail")?.as_str()?.to_owned(),
        })
    }
}

/// The most check lines read from a child battery (there are 7 checks).
const MAX_CHILD_LINES: usize = 64;

/// One line a child battery prints per check: `{"plugin":NAME|null,"check":{...}}`.
pub fn child_line(plugin: Option<&str>, check: &CheckResult) -> String {
    serde_json::json!({ "plugin": plugin, "check": check.to_json() }).to_string()
}

/// The report of a battery run in a child process that printed each check as a
/// [`child_line`] as it finished. `died` says how the child ended when it
/// did not end normally (a signal, an abort): the check it was running fails with that,
/// since a panic or an abort that escapes a plugin takes the seller down too, and the
/// checks after it are skipped.
pub fn report_from_child(
    path: &Path,
    options: &ConformanceOptions,
    lines: &str,
    died: Option<&str>,
) -> ConformanceReport {
    let names = check_names(options);
    let mut plugin = None;
    let mut checks: Vec<CheckResult> = Vec::new();
    for line in lines.lines().take(MAX_CHILD_LINES) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(name) = v.get("plugin").and_then(|p| p.as_str()) {
            plugin = Some(name.to_owned());
        }
        if let Some(check) = v.get("check").and_then(CheckResult::from_json) {
            if checks.len() < names.len() {
                checks.push(check);
            }
        }
    }
    if checks.len() < names.len() {
        let why = match died {
            Some(how) => format!(
                "the plugin took the battery's process down ({how}): a seller running it would go down too"
            ),
            None => "the battery stopped before this check".to_owned(),
        };
        let failed = checks.len();
        checks.push(CheckResult {
            name: names[failed].clone(),
            status: CheckStatus::Fail,
            detail: why,
        });
        for name in &names[failed + 1..] {
            checks.push(CheckResult {
                name: name.clone(),
                status: CheckStatus::Skipped,
                detail: "the battery's process died".to_owned(),
            });
        }
    }
    ConformanceReport {
        file: path.to_path_buf(),
        plugin,
        checks,
    }
}

/// The battery's outcome for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// The library file.
    pub file: PathBuf,
    /// The plugin's name, once loaded.
    pub plugin: Option<String>,
    /// Every check, in order.
    pub checks: Vec<CheckResult>,
}

impl ConformanceReport {
    /// Whether every check passed (a skipped check is not a pass).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status == CheckStatus::Pass)
    }

    /// `{"file":..,"plugin":..,"passed":bool,"checks":[{"name","status","passed","detail"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file.display().to_string(),
            "plugin": self.plugin,
            "passed": self.passed(),
            "checks": self.checks.iter().map(CheckResult::to_json).collect::<Vec<_>>(),
        })
    }

    /// A table: one line per check (`PASS  name  detail`), then the verdict.
    pub fn to_table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{}  {:width$}  {}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status != CheckStatus::Pass)
            .count();
        if failed == 0 {
            out.push_str(&format!(
                "{}: all {} checks passed\n",
                self.file.display(),
                self.checks.len()
            ));
        } else {
            out.push_str(&format!(
                "{}: {failed} of {} checks did not pass\n",
                self.file.display(),
                self.checks.len()
            ));
        }
        out
    }
}

/// Markers of the batteries running now, and what the plugins' logs did with them.
struct Watched {
    marker: String,
    /// Log events seen while it was watched.
    events: u64,
    /// Log events that contained it.
    hits: u64,
}

static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
static WATCHING: AtomicUsize = AtomicUsize::new(0);

/// Called for every log event a plugin sends the host: counts the markers it contains.
pub(crate) fn observe_log(target: &str, message: &str) {
    if WATCHING.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    for w in watched.iter_mut() {
        w.events += 1;
        if message.contains(&w.marker) || target.contains(&w.marker) {
            w.hits += 1;
        }
    }
}

/// Watches the plugins' logs for `marker` while it lives.
struct MarkerWatch {
    marker: String,
}

impl MarkerWatch {
    fn start(marker: &str) -> MarkerWatch {
        WATCHED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Watched {
                marker: marker.to_owned(),
                events: 0,
                hits: 0,
            });
        WATCHING.fetch_add(1, Ordering::Relaxed);
        MarkerWatch {
            marker: marker.to_owned(),
        }
    }

    /// (log events seen, events with the marker).
    fn counts(&self) -> (u64, u64) {
        let watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
        watched
            .iter()
            .find(|w| w.marker == self.marker)
            .map_or((0, 0), |w| (w.events, w.hits))
    }
}

impl Drop for MarkerWatch {
    fn drop(&mut self) {
        let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
        watched.retain(|w| w.marker != self.marker);
        WATCHING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// splitmix64: a small seeded generator for the random buyers (replayable by seed).
struct Buyers(u64);

impl Buyers {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn key(&mut self) -> Key {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        key
    }
}

/// One answer, as the checks compare answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Granted(Grant),
    Refused,
    Unavailable,
    /// Not an answer: panicked, timed out, busy, lost, unreadable.
    Failed(&'static str),
}

fn is_panic(e: &PaymentError) -> bool {
    match e {
        PaymentError::Panicked { .. } => true,
        PaymentError::Plugin { reason, .. } => reason.starts_with(PANIC_PREFIX),
        _ => false,
    }
}

fn outcome_of_error(e: &PaymentError) -> Outcome {
    if is_panic(e) {
        return Outcome::Failed("panicked");
    }
    match e {
        PaymentError::Plugin { .. } => Outcome::Refused,
        PaymentError::Unavailable { .. } => Outcome::Unavailable,
        PaymentError::TimedOut { .. } => Outcome::Failed("timed out"),
        PaymentError::Busy { .. } => Outcome::Failed("busy"),
        PaymentError::Lost { .. } => Outcome::Failed("lost"),
        PaymentError::BadAnswer { .. } => Outcome::Failed("unreadable answer"),
        _ => Outcome::Failed("failed"),
    }
}

fn outcome(r: &Result<Grant, PaymentError>) -> Outcome {
    match r {
        Ok(g) => Outcome::Granted(*g),
        Err(e) => outcome_of_error(e),
    }
}

fn grant_text(g: &Grant) -> String {
    g.to_json()
        .map_or_else(|| format!("kind {}", g.kind.0), |j| j.to_string())
}

/// Everything the plugin said during the battery, searched for the marker as it comes.
struct Said<'a> {
    marker: &'a str,
    texts: u64,
    leaks: Vec<String>,
}

impl Said<'_> {
    fn saw(&mut self, place: &str, text: &str) {
        self.texts += 1;
        if text.contains(self.marker) && self.leaks.len() < 5 {
            self.leaks.push(place.to_owned());
        }
    }

    fn error(&mut self, place: &str, e: &PaymentError) {
        self.saw(place, &e.to_string());
    }
}

/// The checks of the battery, in the order they run (their names in the report).
pub fn check_names(options: &ConformanceOptions) -> Vec<String> {
    vec![
        "loads and describes".to_owned(),
        "garbage config refused".to_owned(),
        "opens with the given config".to_owned(),
        format!("{} random buyers refused", options.random_buyers),
        format!("{} threads agree", options.threads),
        "panics contained".to_owned(),
        "marker secret not leaked".to_owned(),
    ]
}

/// The report being written, told check by check to whoever watches.
struct Recorder<'a> {
    report: ConformanceReport,
    names: Vec<String>,
    on_check: &'a mut dyn FnMut(Option<&str>, &CheckResult),
}

impl Recorder<'_> {
    /// Records the next check's outcome.
    fn push(&mut self, status: CheckStatus, detail: String) {
        let name = self
            .names
            .get(self.report.checks.len())
            .cloned()
            .unwrap_or_default();
        let check = CheckResult {
            name,
            status,
            detail,
        };
        (self.on_check)(self.report.plugin.as_deref(), &check);
        self.report.checks.push(check);
    }

    /// Records the next checks as skipped, up to (not including) check `until`.
    fn skip_until(&mut self, until: usize, why: &str) {
        while self.report.checks.len() < until.min(self.names.len()) {
            self.push(CheckStatus::Skipped, why.to_owned());
        }
    }
}

/// Runs the battery on the library at `path`.
pub fn run_conformance(path: &Path, options: &ConformanceOptions) -> ConformanceReport {
    run_conformance_reporting(path, options, &mut |_, _| {})
}

/// [`run_conformance`], calling `on_check` with the plugin's name (once loaded) and each
/// check as soon as it is done, so a parent process learns how far a battery got before
/// a plugin took its process down: print [`child_line`]s and read them back with
/// [`report_from_child`].
pub fn run_conformance_reporting(
    path: &Path,
    options: &ConformanceOptions,
    on_check: &mut dyn FnMut(Option<&str>, &CheckResult),
) -> ConformanceReport {
    let marker = format!("dazaar-conformance-secret-{:016x}", rand::random::<u64>());
    let watch = MarkerWatch::start(&marker);
    let mut said = Said {
        marker: &marker,
        texts: 0,
        leaks: Vec::new(),
    };
    let names = check_names(options);
    let all = names.len();
    let mut rec = Recorder {
        report: ConformanceReport {
            file: path.to_path_buf(),
            plugin: None,
            checks: Vec::new(),
        },
        names,
        on_check,
    };

    // 1. Loads and describes.
    let plugin = match LoadedPlugin::load(path) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            said.saw("the load error", &e.to_string());
            rec.push(CheckStatus::Fail, e.to_string());
            rec.skip_until(all, "the plugin did not load");
            return rec.report;
        }
    };
    rec.report.plugin = Some(plugin.name().to_owned());
    plugin.set_log_level(5);
    let (status, detail) = describe_check(&plugin);
    rec.push(status, detail);

    let limits = CallLimits {
        timeout: options.timeout,
        workers: options.threads.max(2),
        queue: 1024,
    };

    // 2. Garbage config refused.
    let (status, detail) = garbage_check(&plugin, &marker, limits, &mut said);
    rec.push(status, detail);

    // 3. Opens with the given config.
    let config = options.config.replace(MARKER_PLACEHOLDER, &marker);
    let verifier = match plugin.open(&config, limits) {
        Ok(v) => {
            rec.push(
                CheckStatus::Pass,
                if options.config.contains(MARKER_PLACEHOLDER) {
                    "opened (with the marker in the config)".to_owned()
                } else {
                    "opened".to_owned()
                },
            );
            v
        }
        Err(e) => {
            said.error("the open error", &e);
            rec.push(CheckStatus::Fail, e.to_string());
            rec.skip_until(all - 1, "the plugin did not open");
            let (status, detail) = marker_status(&said, &watch);
            rec.push(status, detail);
            plugin.set_log_level(super::loader::host_log_level());
            return rec.report;
        }
    };
    let terms = Arc::new(default_terms(&plugin));

    // 4. Random buyers refused.
    let (status, detail) = random_buyers_check(&verifier, &terms, options, &mut said);
    rec.push(status, detail);

    // 5. Threads agree.
    let (status, detail) = threads_check(&verifier, &terms, options, &mut said);
    rec.push(status, detail);

    // 6. Panics contained.
    let (status, detail) = hostile_check(&verifier, &terms, &mut said);
    rec.push(status, detail);

    // 7. Marker secret not leaked.
    let (status, detail) = marker_status(&said, &watch);
    rec.push(status, detail);
    plugin.set_log_level(super::loader::host_log_level());
    rec.report
}

fn marker_status(said: &Said<'_>, watch: &MarkerWatch) -> (CheckStatus, String) {
    let (events, hits) = watch.counts();
    if said.leaks.is_empty() && hits == 0 {
        (
            CheckStatus::Pass,
            format!(
                "{} answers and errors, {events} log events checked",
                said.texts
            ),
        )
    } else {
        let mut places = said.leaks.clone();
        if hits > 0 {
            places.push(format!("{hits} log events"));
        }
        (
            CheckStatus::Fail,
            format!("the marker appeared in: {}", places.join(", ")),
        )
    }
}

fn describe_check(plugin: &LoadedPlugin) -> (CheckStatus, String) {
    let methods: Vec<_> = plugin.methods().collect();
    let summary = format!(
        "{} {} (API {}), methods {}",
        plugin.name(),
        plugin.version(),
        plugin.api_version(),
        methods.join(",")
    );
    if plugin.version().trim().is_empty() {
        return (CheckStatus::Fail, format!("{summary}: no version"));
    }
    if plugin.version().len() > 64 || methods.iter().any(|m| m.len() > 64) {
        return (
            CheckStatus::Fail,
            format!("{summary}: a version or method longer than 64 bytes"),
        );
    }
    // `describe` again: the answer must not change.
    match LoadedPlugin::load(plugin.path()) {
        Ok(again)
            if again.name() == plugin.name()
                && again.version() == plugin.version()
                && again.methods().eq(plugin.methods())
                && again.currencies().eq(plugin.currencies()) =>
        {
            (CheckStatus::Pass, summary)
        }
        Ok(_) => (
            CheckStatus::Fail,
            format!("{summary}: describes itself differently the second time"),
        ),
        Err(e) => (CheckStatus::Fail, format!("the second load failed: {e}")),
    }
}

/// Broken configuration tables, each carrying `marker`.
fn garbage_configs(marker: &str) -> Vec<(&'static str, String)> {
    vec![
        ("not TOML", format!("this is not toml: {marker} ]]] =")),
        ("an unterminated string", format!("key = \"{marker}")),
        ("an unclosed table header", format!("[table\n{marker} = 1")),
        ("binary", format!("\u{0}\u{1}\u{2}{marker}\u{7f}\u{0}")),
        (
            "an unknown key",
            format!("dazaar_conformance_unknown_key = \"{marker}\""),
        ),
        (
            "a 256 KiB line",
            format!("{}{marker}", "x".repeat(256 * 1024)),
        ),
    ]
}

fn garbage_check(
    plugin: &Arc<LoadedPlugin>,
    marker: &str,
    limits: CallLimits,
    said: &mut Said<'_>,
) -> (CheckStatus, String) {
    let mut problems = Vec::new();
    let configs = garbage_configs(marker);
    for (what, config) in &configs {
        if plugin.has_check_config() {
            match plugin.check_config(config, limits.timeout) {
                Ok(()) => problems.push(format!("check_config accepted {what}")),
                Err(e) => {
                    said.error("a garbage-config error", &e);
                    if let Outcome::Failed(kind) = outcome_of_error(&e) {
                        problems.push(format!("check_config {kind} on {what}"));
                    }
                }
            }
        }
        match plugin.open(config, limits) {
            Ok(_) => problems.push(format!("open accepted {what}")),
            Err(e) => {
                said.error("a garbage-config error", &e);
                if let Outcome::Failed(kind) = outcome_of_error(&e) {
                    problems.push(format!("open {kind} on {what}"));
                }
            }
        }
    }
    if problems.is_empty() {
        (
            CheckStatus::Pass,
            format!("{} broken tables refused with an error", configs.len()),
        )
    } else {
        (CheckStatus::Fail, problems.join("; "))
    }
}

fn random_buyers_check(
    verifier: &Arc<OpenedVerifier>,
    terms: &Arc<PaymentTerms>,
    options: &ConformanceOptions,
    said: &mut Said<'_>,
) -> (CheckStatus, String) {
    let mut buyers = Buyers(options.seed);
    let (mut refused, mut unavailable, mut free, mut timeouts) = (0usize, 0usize, 0usize, 0usize);
    let mut problems: Vec<String> = Vec::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..options.random_buyers {
        let buyer = buyers.key();
        let asked = Instant::now();
        let answer = verifier.validate(buyer, HARNESS_SELLER, terms, HARNESS_START_MS);
        slowest = slowest.max(asked.elapsed());
        if let Err(e) = &answer {
            said.error("a validate error", e);
        }
        match outcome(&answer) {
            Outcome::Refused => refused += 1,
            Outcome::Unavailable => unavailable += 1,
            Outcome::Granted(g) if g.kind == GrantKind::FREE => free += 1,
            Outcome::Granted(g) => {
                if problems.len() < 3 {
                    problems.push(format!(
                        "buyer {} (#{i}) was granted {}",
                        hex::encode(buyer),
                        grant_text(&g)
                    ));
                }
            }
            Outcome::Failed(kind) => {
                if kind == "timed out" {
                    timeouts += 1;
                }
                if problems.len() < 3 {
                    problems.push(format!("buyer #{i}: {kind}"));
                }
                if timeouts >= MAX_TIMEOUTS {
                    problems.push("stopped after repeated timeouts".to_owned());
                    break;
                }
            }
        }
    }
    let counts = format!(
        "{refused} refused, {unavailable} unavailable (fail closed), {free} free; slowest {} ms, all in {} ms",
        slowest.as_millis(),
        started.elapsed().as_millis()
    );
    if problems.is_empty() {
        (CheckStatus::Pass, counts)
    } else {
        (
            CheckStatus::Fail,
            format!("{}; {counts}", problems.join("; ")),
        )
    }
}

fn threads_check(
    verifier: &Arc<OpenedVerifier>,
    terms: &Arc<PaymentTerms>,
    options: &ConformanceOptions,
    said: &mut Said<'_>,
) -> (CheckStatus, String) {
    let mut gen = Buyers(options.seed ^ 0x0074_6872_6561_6473);
    let mut buyers: Vec<Key> = (0..30).map(|_| gen.key()).collect();
    buyers.push([0; 32]);
    buyers.push([0xff; 32]);
    let buyers = Arc::new(buyers);
    let threads = options.threads.max(1);
    let start = Arc::new(Barrier::new(threads));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (verifier, terms, buyers, start) = (
            Arc::clone(verifier),
            Arc::clone(terms),
            Arc::clone(&buyers),
            Arc::clone(&start),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("conformance-{t}"))
            .spawn(move || {
                start.wait();
                let n = buyers.len();
                let mut answers = vec![None; n];
                let mut errors = Vec::new();
                // Each thread starts at another buyer, so different buyers meet in the
                // plugin at the same time as well as the same one.
                for k in 0..n {
                    let i = (k + t) % n;
                    let r = verifier.validate(buyers[i], HARNESS_SELLER, &terms, HARNESS_START_MS);
                    if let Err(e) = &r {
                        errors.push(e.to_string());
                    }
                    answers[i] = Some(outcome(&r));
                }
                (answers, errors)
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => return (CheckStatus::Fail, format!("cannot start threads: {e}")),
        }
    }
    let mut all = Vec::new();
    for h in handles {
        match h.join() {
            Ok((answers, errors)) => {
                for e in &errors {
                    said.saw("a validate error", e);
                }
                all.push(answers);
            }
            Err(_) => return (CheckStatus::Fail, "a calling thread panicked".to_owned()),
        }
    }
    let mut problems = Vec::new();
    for (i, first) in all.first().into_iter().flatten().enumerate() {
        for (t, answers) in all.iter().enumerate() {
            let this = answers.get(i).cloned().flatten();
            if let Some(Outcome::Failed(kind)) = &this {
                problems.push(format!("thread {t}, buyer #{i}: {kind}"));
            } else if this != *first {
                problems.push(format!(
                    "buyer #{i}: thread 0 got {first:?}, thread {t} got {this:?}"
                ));
            }
        }
    }
    problems.dedup();
    if problems.is_empty() {
        (
            CheckStatus::Pass,
            format!("{threads} threads x {} buyers, same answers", buyers.len()),
        )
    } else {
        problems.truncate(3);
        (CheckStatus::Fail, problems.join("; "))
    }
}

/// What the hostile calls gave.
#[derive(Default)]
struct Tally {
    problems: Vec<String>,
    calls: usize,
    timeouts: usize,
}

impl Tally {
    fn note(&mut self, what: String, e: Option<&PaymentError>, said: &mut Said<'_>) {
        self.calls += 1;
        if let Some(e) = e {
            said.error("a hostile-input error", e);
            if let Outcome::Failed(kind) = outcome_of_error(e) {
                if kind == "timed out" {
                    self.timeouts += 1;
                }
                self.problems.push(format!("{kind} on {what}"));
            }
        }
    }

    /// The plugin stopped answering: more calls would only wait out their timeouts.
    fn hung(&self) -> bool {
        self.timeouts >= MAX_TIMEOUTS
    }
}

/// Hostile calls: terms a card could carry but no plugin should choke on, amounts, and
/// user messages.
fn hostile_check(
    verifier: &Arc<OpenedVerifier>,
    terms: &Arc<PaymentTerms>,
    said: &mut Said<'_>,
) -> (CheckStatus, String) {
    let buyer = [0x42; 32];
    let mut variants: Vec<(&str, PaymentTerms)> = Vec::new();
    let with = |f: &dyn Fn(&mut PaymentTerms)| {
        let mut t = (**terms).clone();
        f(&mut t);
        t
    };
    variants.push(("unit fortnights", with(&|t| t.unit = "fortnights".into())));
    variants.push(("amount NaN", with(&|t| t.amount = "NaN".into())));
    variants.push(("amount -1", with(&|t| t.amount = "-1".into())));
    variants.push(("amount 1e309", with(&|t| t.amount = "1e309".into())));
    variants.push((
        "amount of 4096 digits",
        with(&|t| t.amount = "9".repeat(4096).into()),
    ));
    variants.push(("interval 0", with(&|t| t.interval = "0".into())));
    variants.push(("interval empty", with(&|t| t.interval = "".into())));
    variants.push(("extra JSON broken", with(&|t| t.extra_json = "{".into())));
    variants.push((
        "currency with NUL",
        with(&|t| t.currency = "S\u{0}ATS".into()),
    ));
    variants.push(("minSeconds NaN", with(&|t| t.min_seconds = f64::NAN)));
    variants.push((
        "minSeconds infinite",
        with(&|t| t.min_seconds = f64::INFINITY),
    ));
    variants.push(("paymentDelay max", with(&|t| t.payment_delay_ms = u64::MAX)));
    let mut tally = Tally::default();
    for (what, t) in variants {
        if tally.hung() {
            break;
        }
        let t = Arc::new(t);
        let r = verifier.validate(buyer, HARNESS_SELLER, &t, HARNESS_START_MS);
        tally.note(format!("validate with {what}"), r.as_ref().err(), said);
    }
    for now in [0, u64::MAX] {
        if tally.hung() {
            break;
        }
        let r = verifier.validate(buyer, HARNESS_SELLER, terms, now);
        tally.note(format!("validate at now_ms {now}"), r.as_ref().err(), said);
    }
    for amount in ["", "-5", "NaN", "1e400", "0", &"9".repeat(10_000)] {
        if tally.hung() {
            break;
        }
        let r = verifier.payment_request(buyer, HARNESS_SELLER, terms, amount);
        if let Ok(how) = &r {
            said.saw(
                "payment instructions",
                &serde_json::to_string(how).unwrap_or_default(),
            );
        }
        let shown: String = amount.chars().take(12).collect();
        tally.note(format!("payment_request {shown:?}"), r.as_ref().err(), said);
    }
    let plugin = verifier.plugin().name().to_owned();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let long = format!("\"{}\"", "x".repeat(MAX_USER_MESSAGE / 2));
    let messages = [
        ("".to_owned(), "{}".to_owned()),
        (format!("{plugin}-pay-request"), "not json".to_owned()),
        (
            format!("{plugin}-pay-request"),
            "{\"amount\":-1}".to_owned(),
        ),
        (format!("{plugin}-pay-request"), deep),
        (
            "lnd-pay-request".to_owned(),
            "{\"amount\":\"NaN\"}".to_owned(),
        ),
        ("x".to_owned(), long),
    ];
    for (name, message) in messages {
        if tally.hung() {
            break;
        }
        let r = verifier.user_message(
            buyer,
            HARNESS_SELLER,
            terms,
            dazaar_plugin_api::UserMessage {
                name: name.as_str().into(),
                message: message.as_str().into(),
            },
        );
        if let Ok(Some(reply)) = &r {
            said.saw("a user-message reply", reply.message.as_str());
            said.saw("a user-message reply", reply.name.as_str());
        }
        let shown: String = message.chars().take(12).collect();
        tally.note(
            format!("user_message {name:?} {shown:?}"),
            r.as_ref().err(),
            said,
        );
    }
    let Tally {
        mut problems,
        calls,
        ..
    } = tally;
    if problems.is_empty() {
        (
            CheckStatus::Pass,
            format!("{calls} hostile calls answered without a panic or a hang"),
        )
    } else {
        problems.truncate(4);
        (CheckStatus::Fail, problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_died_fails_the_check_it_was_running() {
        let options = ConformanceOptions::default();
        let first = CheckResult {
            name: "loads and describes".into(),
            status: CheckStatus::Pass,
            detail: "x 1".into(),
        };
        let lines = format!("{}\nnot json\n", child_line(Some("x"), &first));
        let r = report_from_child(Path::new("x.so"), &options, &lines, Some("signal 6"));
        assert_eq!(r.plugin.as_deref(), Some("x"));
        assert_eq!(r.checks.len(), 7);
        assert_eq!(r.checks[0], first);
        assert_eq!(r.checks[1].status, CheckStatus::Fail);
        assert!(
            r.checks[1].detail.contains("signal 6"),
            "{}",
            r.checks[1].detail
        );
        assert!(r.checks[2..]
            .iter()
            .all(|c| c.status == CheckStatus::Skipped));
        assert!(!r.passed());
        // A complete run is read back as it was.
        let all: Vec<String> = check_names(&options)
            .into_iter()
            .map(|name| {
                let check = CheckResult {
                    name,
                    status: CheckStatus::Pass,
                    detail: "ok".into(),
                };
                child_line(None, &check)
            })
            .collect();
        let r = report_from_child(Path::new("x.so"), &options, &all.join("\n"), None);
        assert!(r.passed(), "{}", r.to_table());
    }

    #[test]
    fn buyers_are_replayable_and_distinct() {
        let a: Vec<Key> = {
            let mut g = Buyers(7);
            (0..100).map(|_| g.key()).collect()
        };
        let mut g = Buyers(7);
        assert_eq!(a[0], g.key());
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
    }

    #[test]
    fn the_log_watch_counts_markers_only_while_it_lives() {
        let watch = MarkerWatch::start("m-123-unique");
        observe_log("plugin", "hello");
        observe_log("plugin", "the key is m-123-unique");
        let (events, hits) = watch.counts();
        assert!(events >= 2);
        assert_eq!(hits, 1);
        drop(watch);
        assert!(WATCHED
            .lock()
            .unwrap()
            .iter()
            .all(|w| w.marker != "m-123-unique"));
    }

    #[test]
    fn a_report_passes_only_when_every_check_does() {
        let mut r = ConformanceReport {
            file: "x.so".into(),
            plugin: Some("x".into()),
            checks: vec![CheckResult {
                name: "a".into(),
                status: CheckStatus::Pass,
                detail: "ok".into(),
            }],
        };
        assert!(r.passed());
        assert!(r.to_table().contains("PASS  a  ok"));
        r.checks.push(CheckResult {
            name: "b".into(),
            status: CheckStatus::Skipped,
            detail: "-".into(),
        });
        assert!(!r.passed());
        assert_eq!(r.to_json()["passed"], false);
        assert_eq!(r.to_json()["checks"][1]["status"], "skipped");
    }
}
