//! A local EOS (Antelope) node for the EOS plugin's tests: the v1 history API
//! (`POST /v1/history/get_actions {account_name, pos, offset}`) and Hyperion's
//! (`GET /v2/history/get_actions?account&filter&skip&limit&sort`), answering with the
//! JSON shapes those servers send (nodeos `action_trace` entries with
//! `account_action_seq`, `block_time` without a zone, `last_irreversible_block`;
//! Hyperion `@timestamp`, `global_sequence`, `lib`, `total`), nodeos error objects, and
//! pagination edge cases: pages that repeat the previous page's last action, pages of
//! non-transfer actions, and empty pages. Listens on 127.0.0.1 only.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

pub use crate::stripe_mock::Mode;

/// One action in the seller account's history.
#[derive(Debug, Clone)]
pub struct MockAction {
    /// Contract (`eosio.token`).
    pub contract: String,
    /// Action name (`transfer`).
    pub name: String,
    /// Action data.
    pub data: Value,
    /// Block time, ms since the epoch.
    pub time_ms: u64,
    /// Block number.
    pub block_num: u64,
}

/// The node's state; tests change it directly.
#[derive(Debug)]
pub struct EosState {
    /// The account whose history this is.
    pub account: String,
    /// Its actions, oldest first (index = account_action_seq).
    pub actions: Vec<MockAction>,
    /// Last irreversible block.
    pub lib: u64,
    /// Behaviour.
    pub mode: Mode,
    /// v1 pages start one action early (a node repeating the previous page's last).
    pub overlap: bool,
    /// Requests served.
    pub requests: usize,
}

/// A running node; stops when dropped.
pub struct MockEos {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its state.
    pub state: Arc<Mutex<EosState>>,
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-26T14:00:00.500`, as nodeos writes block times (UTC, no zone).
pub fn block_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

impl MockEos {
    /// Starts a node for `account`.
    pub fn start(account: &str) -> MockEos {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind mock"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let state = Arc::new(Mutex::new(EosState {
            account: account.to_owned(),
            actions: Vec::new(),
            lib: 0,
            mode: Mode::Normal,
            overlap: false,
            requests: 0,
        }));
        let threads = (0..4)
            .map(|_| {
                let server = Arc::clone(&server);
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    while let Ok(r) = server.recv() {
                        serve(r, &state);
                    }
                })
            })
            .collect();
        MockEos {
            base: format!("http://127.0.0.1:{port}"),
            state,
            server,
            threads,
        }
    }

    /// Sets the behaviour.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Appends a `transfer` of `contract`; returns its block number.
    pub fn transfer(
        &self,
        contract: &str,
        from: &str,
        to: &str,
        quantity: &str,
        memo: &str,
        time_ms: u64,
    ) -> u64 {
        self.push(
            contract,
            "transfer",
            json!({"from": from, "to": to, "quantity": quantity, "memo": memo}),
            time_ms,
        )
    }

    /// Appends any action; returns its block number.
    pub fn push(&self, contract: &str, name: &str, data: Value, time_ms: u64) -> u64 {
        let mut st = self.state.lock().unwrap();
        let block_num = 1000 + st.actions.len() as u64;
        st.actions.push(MockAction {
            contract: contract.into(),
            name: name.into(),
            data,
            time_ms,
            block_num,
        });
        block_num
    }
}

impl Drop for MockEos {
    fn drop(&mut self) {
        for _ in 0..=self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn v1_entry(st: &EosState, seq: usize) -> Value {
    let a = &st.actions[seq];
    json!({
        "global_action_seq": 500_000 + seq as u64,
        "account_action_seq": seq,
        "block_num": a.block_num,
        "block_time": block_time(a.time_ms),
        "action_trace": {
            "receipt": {"receiver": st.account, "global_sequence": 500_000 + seq as u64},
            "receiver": st.account,
            "act": {"account": a.contract, "name": a.name,
                    "authorization": [{"actor": a.data["from"], "permission": "active"}],
                    "data": a.data, "hex_data": "00"},
            "trx_id": format!("{:064x}", seq),
            "block_num": a.block_num,
            "block_time": block_time(a.time_ms),
        }
    })
}

fn v2_entry(st: &EosState, seq: usize) -> Value {
    let a = &st.actions[seq];
    let mut data = a.data.clone();
    if let Some((amount, symbol)) = a.data["quantity"].as_str().and_then(|q| q.split_once(' ')) {
        data["amount"] = json!(amount.parse::<f64>().unwrap_or(0.0));
        data["symbol"] = json!(symbol);
    }
    json!({
        "@timestamp": block_time(a.time_ms),
        "timestamp": block_time(a.time_ms),
        "block_num": a.block_num,
        "trx_id": format!("{:064x}", seq),
        "act": {"account": a.contract, "name": a.name,
                "authorization": [{"actor": a.data["from"], "permission": "active"}],
                "data": data},
        "notified": [a.contract, st.account],
        "global_sequence": 500_000 + seq as u64,
        "producer": "eosproducer1",
        "action_ordinal": 1,
        "creator_action_ordinal": 0,
    })
}

fn nodeos_error(status: u16, name: &str, what: &str) -> (u16, String) {
    (
        status,
        json!({"code": status, "message": "Internal Service Error",
               "error": {"code": 3010001, "name": name, "what": what, "details": []}})
        .to_string(),
    )
}

fn serve(mut request: tiny_http::Request, state: &Mutex<EosState>) {
    let mode = {
        let mut st = state.lock().unwrap();
        st.requests += 1;
        st.mode
    };
    match mode {
        Mode::Hangup => return,
        Mode::Slow(d) => std::thread::sleep(d),
        _ => {}
    }
    let (status, body) = match mode {
        Mode::Garbage => (200, "{\"actions\": [{\"oops\": true}]".to_owned()),
        Mode::Error500 => nodeos_error(500, "database_exception", "database is down"),
        _ => {
            let mut body = String::new();
            let _ = request.as_reader().take(1 << 20).read_to_string(&mut body);
            route(&request, &body, state)
        }
    };
    let _ = request.respond(
        tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(
                tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap(),
            ),
    );
}

fn route(request: &tiny_http::Request, body: &str, state: &Mutex<EosState>) -> (u16, String) {
    let st = state.lock().unwrap();
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    match path {
        "/v1/history/get_actions" => {
            let Ok(req) = serde_json::from_str::<Value>(body) else {
                return nodeos_error(400, "parse_error_exception", "Unable to parse JSON");
            };
            if req["account_name"].as_str() != Some(st.account.as_str()) {
                return (
                    200,
                    json!({"actions": [], "last_irreversible_block": st.lib}).to_string(),
                );
            }
            let (Some(pos), Some(offset)) = (req["pos"].as_i64(), req["offset"].as_i64()) else {
                return nodeos_error(
                    400,
                    "invalid_http_request",
                    "pos and offset must be numbers",
                );
            };
            if pos < 0 || offset < 0 {
                return nodeos_error(
                    400,
                    "invalid_http_request",
                    "this mock serves forward pages only",
                );
            }
            let mut start = pos as usize;
            if st.overlap && start > 0 {
                start -= 1;
            }
            let end = ((pos + offset) as usize).min(st.actions.len().saturating_sub(1));
            let actions: Vec<Value> = if start < st.actions.len() {
                (start..=end).map(|i| v1_entry(&st, i)).collect()
            } else {
                Vec::new()
            };
            (
                200,
                json!({"actions": actions, "last_irreversible_block": st.lib}).to_string(),
            )
        }
        "/v2/history/get_actions" => {
            let params = crate::stripe_mock::decode_form(query);
            let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if get("account").as_deref() != Some(st.account.as_str()) {
                return (
                    200,
                    json!({"lib": st.lib, "total": {"value": 0}, "actions": []}).to_string(),
                );
            }
            let filter = get("filter").unwrap_or_default();
            let (fc, fname) = filter.split_once(':').unwrap_or(("*", "*"));
            let skip: usize = get("skip").and_then(|s| s.parse().ok()).unwrap_or(0);
            let limit: usize = get("limit").and_then(|s| s.parse().ok()).unwrap_or(10);
            if get("sort").as_deref() != Some("asc") {
                return nodeos_error(400, "bad_request", "this mock serves sort=asc only");
            }
            let hits: Vec<usize> = (0..st.actions.len())
                .filter(|&i| {
                    let a = &st.actions[i];
                    (fc == "*" || a.contract == fc) && (fname == "*" || a.name == fname)
                })
                .collect();
            let page: Vec<Value> = hits
                .iter()
                .skip(skip)
                .take(limit)
                .map(|&i| v2_entry(&st, i))
                .collect();
            (
                200,
                json!({"query_time_ms": 1.5, "cached": false, "lib": st.lib,
                       "total": {"value": hits.len(), "relation": "eq"}, "actions": page})
                .to_string(),
            )
        }
        _ => nodeos_error(404, "not_found", "Unknown Endpoint"),
    }
}
