//! A local EOS (Antelope) node for the EOS plugin's tests: the v1 history API
//! (`POST /v1/history/get_actions {account_name, pos, offset}`) and Hyperion's
//! (`GET /v2/history/get_actions?account&filter&skip&limit&sort`), answering with the
//! JSON shapes those servers send (nodeos `action_trace` entries with
//! `account_action_seq`, `block_time` without a zone, `last_irreversible_block`;
//! Hyperion `@timestamp`, `global_sequence`, `lib`, `total`), nodeos error objects, and
//! pagination edge cases: pages that repeat the previous page's last action, pages of
//! non-transfer actions, and empty pages. Listens on 127.0.0.1 only.
//!
//! It is also the chain a buyer pushes to (nodeos cannot be installed here):
//! `POST /v1/chain/get_info` and `POST /v1/chain/push_transaction` with nodeos' wire
//! shapes. A pushed transaction is deserialized from `packed_trx` (by this file's own
//! reader, not the plugin's code), its expiration and TaPoS reference block are checked
//! against the mock's clock and block ids, the signer is recovered from each `SIG_K1_`
//! signature over sha256(chain_id ‖ packed_trx ‖ 32 zero bytes) and compared with the
//! key registered for the authorizing account ([`MockEos::add_key`]), and the action
//! must be one `eosio.token::transfer` authorized by its `from`. Then the transfer is
//! appended to the history served above. Refusals are nodeos error objects
//! (`unsatisfied_authorization`, `expired_tx_exception`, `invalid_ref_block_exception`,
//! …) with status 500.
//!
//! Transfers of a token contract the mock knows ([`EosState::tokens`]: `eosio.token`'s
//! `4,EOS` from the start) are checked as `eosio.token::transfer` checks them, whether
//! pushed or appended by a test ([`MockEos::transfer`]): the symbol must be one the
//! contract issued (`unable to find key`) with the precision it was created with
//! (`symbol precision mismatch`: `1.0000 EOS`, never `1.00 EOS`), the quantity positive,
//! and `from` not `to`. Transfers of other contracts are recorded as given.

use std::collections::HashMap;
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
    /// The history positions asked for, in order: v1's `pos`, Hyperion's `skip`.
    pub positions: Vec<u64>,
    /// Account → its `active` public key (`EOS…`), for pushed transactions.
    pub keys: HashMap<String, String>,
    /// The chain id `get_info` reports and signatures must cover.
    pub chain_id: [u8; 32],
    /// Added to the clock when a pushed transaction's expiration is checked (a node
    /// that receives it late).
    pub push_clock_shift_ms: u64,
    /// Ids of the transactions accepted.
    pub pushed: Vec<String>,
    /// Every `push_transaction` request body, as received.
    pub push_bodies: Vec<String>,
    /// (token contract, symbol code) → the precision the token was created with.
    pub tokens: HashMap<(String, String), u32>,
}

/// `eosio.token::transfer`'s checks of `from`, `to` and `quantity` (`"1.0000 EOS"`),
/// for a contract with tokens in `tokens`; `Err` carries the contract's assertion
/// message. A contract without tokens there is not checked.
fn check_transfer(
    tokens: &HashMap<(String, String), u32>,
    contract: &str,
    from: &str,
    to: &str,
    quantity: &str,
) -> Result<(), String> {
    if !tokens.keys().any(|(c, _)| c == contract) {
        return Ok(());
    }
    let (amount, code) = quantity
        .split_once(' ')
        .ok_or_else(|| "invalid quantity".to_owned())?;
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return Err("invalid quantity".into());
    }
    let Some(&precision) = tokens.get(&(contract.to_owned(), code.to_owned())) else {
        return Err("unable to find key".into());
    };
    if fraction.len() != precision as usize {
        return Err("symbol precision mismatch".into());
    }
    if !format!("{whole}{fraction}").chars().any(|c| c != '0') {
        return Err("must transfer positive quantity".into());
    }
    if from == to {
        return Err("cannot transfer to self".into());
    }
    Ok(())
}

/// The chain id of the mock (the EOS mainnet's).
pub const CHAIN_ID: &str = "aca376f206b8fc25a6ed44dbdc66547c36c6c33e3a119ffbeaef943642f0e906";

/// The mock's head block number: one block per action, from 1000.
fn head_block(st: &EosState) -> u64 {
    1000 + st.actions.len() as u64
}

/// The id of block `n`: its number in the first 4 bytes (big-endian), as in Antelope,
/// then 28 bytes of sha256 of the number.
pub fn block_id(n: u64) -> [u8; 32] {
    use sha2::Digest;
    let mut id: [u8; 32] = sha2::Sha256::digest(n.to_be_bytes()).into();
    id[..4].copy_from_slice(&(n as u32).to_be_bytes());
    id
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            positions: Vec::new(),
            keys: HashMap::new(),
            chain_id: hex::decode(CHAIN_ID)
                .expect("hex")
                .try_into()
                .expect("32 bytes"),
            push_clock_shift_ms: 0,
            pushed: Vec::new(),
            push_bodies: Vec::new(),
            tokens: HashMap::from([(("eosio.token".to_owned(), "EOS".to_owned()), 4)]),
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

    /// Registers `account`'s `active` key (`EOS…` or `PUB_K1_…`).
    pub fn add_key(&self, account: &str, public_key: &str) {
        self.state
            .lock()
            .unwrap()
            .keys
            .insert(account.to_owned(), public_key.to_owned());
    }

    /// Sets the behaviour.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Makes `contract` a token contract issuing `code` with `precision` decimals.
    pub fn add_token(&self, contract: &str, code: &str, precision: u32) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert((contract.to_owned(), code.to_owned()), precision);
    }

    /// Appends a `transfer` of `contract`; returns its block number. Panics when the
    /// contract would refuse it ([`MockEos::try_transfer`]).
    pub fn transfer(
        &self,
        contract: &str,
        from: &str,
        to: &str,
        quantity: &str,
        memo: &str,
        time_ms: u64,
    ) -> u64 {
        self.try_transfer(contract, from, to, quantity, memo, time_ms)
            .unwrap_or_else(|e| panic!("{contract} refuses {from} -> {to} {quantity}: {e}"))
    }

    /// Appends a `transfer` of `contract` if the contract accepts it (for a token
    /// contract the mock knows: a symbol it issued, at its precision); returns its block
    /// number, or the contract's assertion message.
    pub fn try_transfer(
        &self,
        contract: &str,
        from: &str,
        to: &str,
        quantity: &str,
        memo: &str,
        time_ms: u64,
    ) -> Result<u64, String> {
        check_transfer(
            &self.state.lock().unwrap().tokens,
            contract,
            from,
            to,
            quantity,
        )?;
        Ok(self.push(
            contract,
            "transfer",
            json!({"from": from, "to": to, "quantity": quantity, "memo": memo}),
            time_ms,
        ))
    }

    /// Appends any action as given (unchecked); returns its block number.
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
    let mut st = state.lock().unwrap();
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    match path {
        "/v1/chain/get_info" => {
            let head = head_block(&st);
            let lib = head.saturating_sub(2).max(1);
            let now = now_ms();
            (
                200,
                json!({
                    "server_version": "d4c4ca29",
                    "chain_id": hex::encode(st.chain_id),
                    "head_block_num": head,
                    "last_irreversible_block_num": lib,
                    "last_irreversible_block_id": hex::encode(block_id(lib)),
                    "head_block_id": hex::encode(block_id(head)),
                    "head_block_time": block_time(now - now % 500),
                    "head_block_producer": "eosproducer1",
                    "virtual_block_cpu_limit": 200_000_000,
                    "virtual_block_net_limit": 1_048_576_000,
                    "block_cpu_limit": 199_900,
                    "block_net_limit": 1_048_576,
                    "server_version_string": "v5.0.0",
                    "fork_db_head_block_num": head,
                    "fork_db_head_block_id": hex::encode(block_id(head)),
                    "server_full_version_string": "v5.0.0-mock",
                    "earliest_available_block_num": 1
                })
                .to_string(),
            )
        }
        "/v1/chain/push_transaction" => {
            st.push_bodies.push(body.to_owned());
            match push(&mut st, body) {
                Ok(answer) => (200, answer.to_string()),
                Err((name, what)) => nodeos_error(500, name, &what),
            }
        }
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
            st.positions.push(pos.max(0) as u64);
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
            st.positions.push(skip as u64);
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

/// A reader of Antelope binary, written independently of the plugin's writer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn varuint32(&mut self) -> Option<u32> {
        let mut v: u64 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(v).ok();
            }
        }
        None
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.varuint32()? as usize;
        self.take(n)
    }
    fn name(&mut self) -> Option<String> {
        Some(name_string(self.u64()?))
    }
}

/// An Antelope name's text, as `eosio::name::to_string` writes it.
pub fn name_string(v: u64) -> String {
    const CHARS: &[u8] = b".12345abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'.'; 13];
    let mut tmp = v;
    for i in (0..13).rev() {
        let c = if i == 12 { tmp & 0x0f } else { tmp & 0x1f };
        out[i] = CHARS[c as usize];
        tmp >>= if i == 12 { 4 } else { 5 };
    }
    String::from_utf8_lossy(&out)
        .trim_end_matches('.')
        .to_owned()
}

fn ripemd4(parts: &[&[u8]]) -> [u8; 4] {
    use ripemd::Digest;
    let mut h = ripemd::Ripemd160::new();
    for p in parts {
        h.update(p);
    }
    let out = h.finalize();
    [out[0], out[1], out[2], out[3]]
}

/// Reads `EOS…` or `PUB_K1_…`.
fn public_key(text: &str) -> Option<k256::ecdsa::VerifyingKey> {
    let (rest, suffix): (&str, &[u8]) = match text.strip_prefix("PUB_K1_") {
        Some(r) => (r, b"K1"),
        None => (text.strip_prefix("EOS")?, b""),
    };
    let raw = bs58::decode(rest).into_vec().ok()?;
    if raw.len() != 37 || ripemd4(&[&raw[..33], suffix]) != raw[33..] {
        return None;
    }
    k256::ecdsa::VerifyingKey::from_sec1_bytes(&raw[..33]).ok()
}

/// Recovers the key behind `SIG_K1_…` over `digest`.
fn recover(sig: &str, digest: &[u8; 32]) -> Option<k256::ecdsa::VerifyingKey> {
    let raw = bs58::decode(sig.strip_prefix("SIG_K1_")?).into_vec().ok()?;
    if raw.len() != 69 || ripemd4(&[&raw[..65], b"K1"]) != raw[65..] {
        return None;
    }
    let recid = k256::ecdsa::RecoveryId::from_byte(raw[0].checked_sub(31)?)?;
    let signature = k256::ecdsa::Signature::from_slice(&raw[1..65]).ok()?;
    // nodeos refuses high-s signatures.
    if signature.normalize_s().is_some() {
        return None;
    }
    k256::ecdsa::VerifyingKey::recover_from_prehash(digest, &signature, recid).ok()
}

type Refusal = (&'static str, String);

fn refuse<T>(name: &'static str, what: impl Into<String>) -> Result<T, Refusal> {
    Err((name, what.into()))
}

/// Checks and applies a `push_transaction` body; the answer on success.
fn push(st: &mut EosState, body: &str) -> Result<Value, Refusal> {
    use sha2::Digest;
    let Ok(req) = serde_json::from_str::<Value>(body) else {
        return refuse("parse_error_exception", "Unable to parse JSON");
    };
    if req["compression"] != json!(0) && req["compression"] != json!("none") {
        return refuse(
            "invalid_http_request",
            "this mock takes uncompressed transactions",
        );
    }
    if req["packed_context_free_data"]
        .as_str()
        .is_some_and(|d| !d.is_empty())
    {
        return refuse("invalid_http_request", "no context-free data expected");
    }
    let Some(packed) = req["packed_trx"].as_str().and_then(|h| hex::decode(h).ok()) else {
        return refuse("packed_transaction_type_exception", "packed_trx is not hex");
    };
    let sigs: Vec<String> = req["signatures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut r = Reader(&packed);
    let bad = || {
        (
            "packed_transaction_type_exception",
            "cannot deserialize packed_trx".to_owned(),
        )
    };
    let expiration = r.u32().ok_or_else(bad)?;
    let ref_block_num = r.u16().ok_or_else(bad)?;
    let ref_block_prefix = r.u32().ok_or_else(bad)?;
    let _max_net = r.varuint32().ok_or_else(bad)?;
    let _max_cpu = r.u8().ok_or_else(bad)?;
    let delay = r.varuint32().ok_or_else(bad)?;
    if r.varuint32().ok_or_else(bad)? != 0 {
        return refuse(
            "cfa_inside_generated_tx",
            "no context-free actions expected",
        );
    }
    let n_actions = r.varuint32().ok_or_else(bad)?;
    let mut actions = Vec::new();
    for _ in 0..n_actions.min(16) {
        let account = r.name().ok_or_else(bad)?;
        let name = r.name().ok_or_else(bad)?;
        let n_auth = r.varuint32().ok_or_else(bad)?;
        let mut auth = Vec::new();
        for _ in 0..n_auth.min(16) {
            auth.push((r.name().ok_or_else(bad)?, r.name().ok_or_else(bad)?));
        }
        let data = r.bytes().ok_or_else(bad)?;
        actions.push((account, name, auth, data));
    }
    let n_ext = r.varuint32().ok_or_else(bad)?;
    if n_ext != 0 || !r.0.is_empty() || actions.len() != n_actions as usize {
        return refuse(
            "packed_transaction_type_exception",
            "trailing bytes or extensions in packed_trx",
        );
    }
    // Expiration against the node's clock: not passed, not more than an hour ahead.
    let now_s = (now_ms() + st.push_clock_shift_ms) / 1000;
    if u64::from(expiration) <= now_s {
        return refuse(
            "expired_tx_exception",
            format!("Expired Transaction: expiration {expiration}, now {now_s}"),
        );
    }
    if u64::from(expiration) > now_s + 3600 {
        return refuse("tx_exp_too_far_exception", "Transaction Expiration Too Far");
    }
    // TaPoS: the block with those low 16 bits, within the last 65536, has that prefix.
    let head = head_block(st);
    let candidate = (head & !0xffff) | u64::from(ref_block_num);
    let block = if candidate > head {
        candidate.checked_sub(0x1_0000)
    } else {
        Some(candidate)
    };
    let ok = block.is_some_and(|b| {
        let id = block_id(b);
        u32::from_le_bytes([id[8], id[9], id[10], id[11]]) == ref_block_prefix
    });
    if !ok {
        return refuse(
            "invalid_ref_block_exception",
            "Transaction's reference block did not match. Is this transaction from a different fork?",
        );
    }
    if delay != 0 {
        return refuse(
            "invalid_http_request",
            "this mock runs no delayed transactions",
        );
    }
    let mut hasher = sha2::Sha256::new();
    hasher.update(st.chain_id);
    hasher.update(&packed);
    hasher.update([0u8; 32]);
    let digest: [u8; 32] = hasher.finalize().into();
    let mut signers = Vec::new();
    for sig in &sigs {
        match recover(sig, &digest) {
            Some(k) => signers.push(k),
            None => {
                return refuse(
                    "unsatisfiable_authorization",
                    "signature does not recover a key",
                )
            }
        }
    }
    let [(account, name, auth, data)] = actions.as_slice() else {
        return refuse(
            "action_validate_exception",
            "this mock runs exactly one action",
        );
    };
    if account != "eosio.token" || name != "transfer" {
        return refuse(
            "action_validate_exception",
            format!("this mock runs eosio.token::transfer only, not {account}::{name}"),
        );
    }
    let mut d = Reader(data);
    let dbad = || {
        (
            "action_validate_exception",
            "cannot read transfer data".to_owned(),
        )
    };
    let from = d.name().ok_or_else(dbad)?;
    let to = d.name().ok_or_else(dbad)?;
    let units = d.u64().ok_or_else(dbad)? as i64;
    let symbol = d.take(8).ok_or_else(dbad)?;
    let memo = String::from_utf8(d.bytes().ok_or_else(dbad)?.to_vec()).map_err(|_| dbad())?;
    if !d.0.is_empty() {
        return refuse(
            "action_validate_exception",
            "trailing bytes in transfer data",
        );
    }
    let precision = symbol[0] as u32;
    let code: String = symbol[1..]
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    if units <= 0 || code.is_empty() || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return refuse(
            "eosio_assert_message_exception",
            "assertion failure with message: must transfer positive quantity",
        );
    }
    if memo.len() > 256 {
        return refuse(
            "eosio_assert_message_exception",
            "assertion failure with message: memo has more than 256 bytes",
        );
    }
    if auth.as_slice() != [(from.clone(), "active".to_owned())] {
        return refuse(
            "missing_auth_exception",
            format!("missing authority of {from}"),
        );
    }
    let Some(key) = st.keys.get(&from).and_then(|k| public_key(k)) else {
        return refuse("unsatisfied_authorization", format!("Provided keys, permissions, and delays do not satisfy declared authorizations: no key for {from}"));
    };
    if !signers.contains(&key) {
        return refuse(
            "unsatisfied_authorization",
            format!("Provided keys, permissions, and delays do not satisfy declared authorizations: transaction declares authority '{{\"actor\":\"{from}\",\"permission\":\"active\"}}', but does not have signatures for it."),
        );
    }
    let id = hex::encode(sha2::Sha256::digest(&packed));
    if st.pushed.contains(&id) {
        return refuse("tx_duplicate", format!("Duplicate transaction {id}"));
    }
    if precision > 18 {
        return refuse(
            "eosio_assert_message_exception",
            "assertion failure with message: invalid symbol name",
        );
    }
    let scale = 10u64.pow(precision);
    let quantity = if precision == 0 {
        format!("{units} {code}")
    } else {
        format!(
            "{}.{:0width$} {code}",
            units as u64 / scale,
            units as u64 % scale,
            width = precision as usize
        )
    };
    if let Err(e) = check_transfer(&st.tokens, account, &from, &to, &quantity) {
        return refuse(
            "eosio_assert_message_exception",
            format!("assertion failure with message: {e}"),
        );
    }
    st.pushed.push(id.clone());
    let block_num = head_block(st);
    if to == st.account {
        st.actions.push(MockAction {
            contract: account.clone(),
            name: name.clone(),
            data: json!({"from": from, "to": to, "quantity": quantity, "memo": memo}),
            time_ms: now_ms(),
            block_num,
        });
    }
    Ok(json!({
        "transaction_id": id,
        "processed": {
            "id": id,
            "block_num": block_num,
            "block_time": block_time(now_ms()),
            "receipt": {"status": "executed", "cpu_usage_us": 150, "net_usage_words": 17},
            "elapsed": 150,
            "net_usage": 136,
            "scheduled": false,
            "action_traces": [{
                "action_ordinal": 1,
                "receipt": {"receiver": "eosio.token", "global_sequence": 600_000 + st.pushed.len() as u64},
                "receiver": "eosio.token",
                "act": {"account": account, "name": name,
                        "authorization": [{"actor": from, "permission": "active"}],
                        "data": {"from": from, "to": to, "quantity": quantity, "memo": memo},
                        "hex_data": hex::encode(data)},
                "trx_id": id,
                "block_num": block_num,
            }],
            "except": null
        }
    }))
}
