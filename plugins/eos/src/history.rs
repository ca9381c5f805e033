//! Reading an account's actions from a node: the v1 history API
//! (`POST /v1/history/get_actions {account_name, pos, offset}`, needs nodeos'
//! `history_plugin`) or Hyperion (`GET /v2/history/get_actions?account=..&filter=..`).
//! Both are read incrementally from a cursor, a bounded number of pages per call.

use std::io::Read;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::chain::{read_v1, read_v2, Transfer};

/// The largest answer read (bytes).
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// Which history API the node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// nodeos `history_plugin`: `POST /v1/history/get_actions`.
    V1,
    /// Hyperion: `GET /v2/history/get_actions`.
    Hyperion,
}

/// Why history could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// No connection or no answer in time.
    #[error("the node is unreachable ({0})")]
    Unreachable(String),
    /// The node answered with an error status.
    #[error("the node answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The error's message, if the body had one.
        message: String,
    },
    /// Not the JSON expected.
    #[error("unreadable answer from the node ({0})")]
    Unreadable(String),
}

/// New actions since a cursor.
#[derive(Debug, Default)]
pub struct Batch {
    /// Transfer actions found (any contract, any direction).
    pub transfers: Vec<Transfer>,
    /// The cursor to continue from.
    pub cursor: u64,
    /// The last irreversible block the node reported, if it did.
    pub lib: Option<u64>,
    /// Whether the end of the history was reached (false: more pages wait).
    pub caught_up: bool,
    /// Actions read (all kinds).
    pub actions: usize,
}

/// A history reader for one node.
pub struct History {
    agent: ureq::Agent,
    base: String,
    api: Api,
    contract: String,
    page: u64,
    max_pages: usize,
}

impl History {
    /// A reader of `base` (`https://node:443`).
    pub fn new(
        base: &str,
        api: Api,
        contract: &str,
        timeout: Duration,
        page: u64,
        max_pages: usize,
    ) -> History {
        History {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .user_agent(concat!("dazaar-eos/", env!("CARGO_PKG_VERSION")))
                .build(),
            base: base.trim_end_matches('/').to_owned(),
            api,
            contract: contract.to_owned(),
            page: page.clamp(1, 1000),
            max_pages: max_pages.max(1),
        }
    }

    fn finish(result: Result<ureq::Response, ureq::Error>) -> Result<Value, HistoryError> {
        let read = |resp: ureq::Response| -> Result<String, HistoryError> {
            read_body(resp, MAX_BODY).map_err(HistoryError::Unreadable)
        };
        match result {
            Ok(resp) => {
                let body = read(resp)?;
                serde_json::from_str::<Value>(&body)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| HistoryError::Unreadable("not a JSON object".into()))
            }
            Err(ureq::Error::Status(status, resp)) => {
                let body = read(resp).unwrap_or_default();
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let message = v
                    .get("error")
                    .and_then(|e| e.get("what").or_else(|| e.get("name")))
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no error message")
                    .chars()
                    .take(200)
                    .collect();
                Err(HistoryError::Status { status, message })
            }
            Err(ureq::Error::Transport(t)) => Err(HistoryError::Unreachable(t.kind().to_string())),
        }
    }

    /// Actions of `account` after `cursor` (v1: the next `account_action_seq`; Hyperion:
    /// how many matching actions were read before).
    pub fn fetch(&self, account: &str, cursor: u64) -> Result<Batch, HistoryError> {
        match self.api {
            Api::V1 => self.fetch_v1(account, cursor),
            Api::Hyperion => self.fetch_v2(account, cursor),
        }
    }

    fn fetch_v1(&self, account: &str, mut cursor: u64) -> Result<Batch, HistoryError> {
        let mut batch = Batch::default();
        for _ in 0..self.max_pages {
            let body = json!({"account_name": account, "pos": cursor, "offset": self.page - 1});
            tracing::debug!(account, pos = cursor, "get_actions v1");
            let v = Self::finish(
                self.agent
                    .post(&format!("{}/v1/history/get_actions", self.base))
                    .set("Content-Type", "application/json")
                    .send_string(&body.to_string()),
            )?;
            let actions = v
                .get("actions")
                .and_then(Value::as_array)
                .ok_or_else(|| HistoryError::Unreadable("no `actions` array".into()))?;
            if let Some(lib) = v.get("last_irreversible_block").and_then(Value::as_u64) {
                batch.lib = Some(lib);
            }
            let mut newest = None;
            for entry in actions {
                let Some((seq, transfer)) = read_v1(entry) else {
                    return Err(HistoryError::Unreadable(
                        "an action without account_action_seq or action_trace".into(),
                    ));
                };
                // Nodes may repeat the last action of the previous page, or answer with
                // older ones: only sequence numbers at or past the cursor are new.
                if seq < cursor {
                    continue;
                }
                newest = Some(newest.map_or(seq, |n: u64| n.max(seq)));
                batch.actions += 1;
                if let Some(t) = transfer {
                    batch.transfers.push(t);
                }
            }
            match newest {
                Some(n) => cursor = n.saturating_add(1),
                None => {
                    batch.caught_up = true;
                    break;
                }
            }
            if (actions.len() as u64) < self.page {
                batch.caught_up = true;
                break;
            }
        }
        batch.cursor = cursor;
        Ok(batch)
    }

    fn fetch_v2(&self, account: &str, mut cursor: u64) -> Result<Batch, HistoryError> {
        let mut batch = Batch::default();
        for _ in 0..self.max_pages {
            tracing::debug!(account, skip = cursor, "get_actions v2");
            let v = Self::finish(
                self.agent
                    .get(&format!("{}/v2/history/get_actions", self.base))
                    .query("account", account)
                    .query("filter", &format!("{}:transfer", self.contract))
                    .query("skip", &cursor.to_string())
                    .query("limit", &self.page.to_string())
                    .query("sort", "asc")
                    .call(),
            )?;
            let actions = v
                .get("actions")
                .and_then(Value::as_array)
                .ok_or_else(|| HistoryError::Unreadable("no `actions` array".into()))?;
            if let Some(lib) = v.get("lib").and_then(Value::as_u64) {
                batch.lib = Some(lib);
            }
            cursor = cursor.saturating_add(actions.len() as u64);
            batch.actions += actions.len();
            batch.transfers.extend(actions.iter().filter_map(read_v2));
            if (actions.len() as u64) < self.page {
                batch.caught_up = true;
                break;
            }
        }
        batch.cursor = cursor;
        Ok(batch)
    }
}

/// A response body as text, at most `max` bytes; the reason otherwise.
pub(crate) fn read_body(resp: ureq::Response, max: u64) -> Result<String, String> {
    let mut body = String::new();
    resp.into_reader()
        .take(max + 1)
        .read_to_string(&mut body)
        .map_err(|e| format!("reading the body: {}", e.kind()))?;
    if body.len() as u64 > max {
        return Err(format!("answer larger than {} MiB", max >> 20));
    }
    Ok(body)
}
