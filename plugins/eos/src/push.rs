//! The buyer's wallet: builds the `transfer`, signs it and pushes it to a node.
//!
//! `POST /v1/chain/get_info` gives the chain id, the head block time (expiration counts
//! from it, not from the local clock) and the last irreversible block (the TaPoS
//! reference: `ref_block_num` = its number's low 16 bits, `ref_block_prefix` = bytes
//! 8..12 of its id as a u32 LE). Then `POST /v1/chain/push_transaction` with
//! `{signatures, compression: 0, packed_context_free_data: "", packed_trx}`. A nodeos
//! error (`{"code":500,"error":{"name","what","details":[{"message"}]}}`) becomes a
//! [`PushError::Refused`] with its name and text.

use std::time::Duration;

use serde_json::{json, Value};

use crate::chain::{parse_block_time, Asset};
use crate::keys::{signing_digest, KeyError, PrivateKey};
use crate::tx::{ref_block, transaction_id, Action, Transaction, TxError};

/// The largest answer read (bytes); `push_transaction` echoes traces, so not tiny.
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// Why a transfer was not pushed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// No connection or no answer in time.
    #[error("the node is unreachable ({0})")]
    Unreachable(String),
    /// Not the JSON expected.
    #[error("unreadable answer from the node ({0})")]
    Unreadable(String),
    /// The node refused the request or the transaction.
    #[error("the node refused the transaction ({status} {name}): {what}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// nodeos' error name, e.g. `unsatisfied_authorization`.
        name: String,
        /// Its text, with the first detail's message.
        what: String,
    },
    /// The transaction could not be built.
    #[error("cannot build the transaction: {0}")]
    Build(#[from] TxError),
    /// It could not be signed.
    #[error("cannot sign the transaction: {0}")]
    Sign(#[from] KeyError),
}

/// What the node said about the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// The chain id.
    pub chain_id: [u8; 32],
    /// Head block time, seconds since the epoch.
    pub head_time: u32,
    /// The reference block's number and id.
    pub ref_num: u64,
    /// Its id (hex).
    pub ref_id: String,
}

/// A transfer pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The transaction id (sha256 of the packed transaction, hex).
    pub id: String,
}

/// What to transfer.
#[derive(Debug, Clone)]
pub struct TransferOrder<'a> {
    /// The token contract.
    pub contract: &'a str,
    /// The paying account.
    pub from: &'a str,
    /// Its permission that signs.
    pub permission: &'a str,
    /// The seller account.
    pub to: &'a str,
    /// How much.
    pub quantity: &'a Asset,
    /// The memo.
    pub memo: &'a str,
}

/// A node's chain API.
pub struct Node {
    agent: ureq::Agent,
    base: String,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("base", &self.base).finish()
    }
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

impl Node {
    /// A client of `base` (`https://node:443`).
    pub fn new(base: &str, timeout: Duration) -> Node {
        Node {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .user_agent(concat!("dazaar-eos/", env!("CARGO_PKG_VERSION")))
                .build(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, PushError> {
        let read = |resp: ureq::Response| -> Result<String, PushError> {
            crate::history::read_body(resp, MAX_BODY).map_err(PushError::Unreadable)
        };
        let result = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        match result {
            Ok(resp) => {
                let text = read(resp)?;
                serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| PushError::Unreadable(format!("{path}: not a JSON object")))
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = read(resp).unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let error = v.get("error");
                let name = error
                    .and_then(|e| e.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let mut what = error
                    .and_then(|e| e.get("what"))
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no error message")
                    .to_owned();
                if let Some(detail) = error
                    .and_then(|e| e.get("details"))
                    .and_then(Value::as_array)
                    .and_then(|d| d.first())
                    .and_then(|d| d.get("message"))
                    .and_then(Value::as_str)
                {
                    what = format!("{what}: {detail}");
                }
                Err(PushError::Refused {
                    status,
                    name: clip(name),
                    what: clip(&what),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(PushError::Unreachable(t.kind().to_string())),
        }
    }

    /// `get_info`: chain id, head time and the last irreversible block.
    pub fn info(&self) -> Result<ChainInfo, PushError> {
        let v = self.post("/v1/chain/get_info", &json!({}))?;
        let bad = |what: &str| PushError::Unreadable(format!("get_info: {what}"));
        let chain_id: [u8; 32] = v
            .get("chain_id")
            .and_then(Value::as_str)
            .and_then(|s| hex::decode(s).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("no 32-byte chain_id"))?;
        let head_time = v
            .get("head_block_time")
            .and_then(Value::as_str)
            .and_then(parse_block_time)
            .and_then(|ms| u32::try_from(ms / 1000).ok())
            .ok_or_else(|| bad("no head_block_time"))?;
        let (ref_num, ref_id) = match (
            v.get("last_irreversible_block_num").and_then(Value::as_u64),
            v.get("last_irreversible_block_id").and_then(Value::as_str),
        ) {
            (Some(n), Some(id)) => (n, id.to_owned()),
            _ => (
                v.get("head_block_num")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("no block number"))?,
                v.get("head_block_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no block id"))?
                    .to_owned(),
            ),
        };
        Ok(ChainInfo {
            chain_id,
            head_time,
            ref_num,
            ref_id,
        })
    }

    /// Builds, signs and pushes a transfer; the transaction expires `expire_seconds`
    /// after the node's head block time.
    pub fn transfer(
        &self,
        key: &PrivateKey,
        order: &TransferOrder<'_>,
        expire_seconds: u32,
    ) -> Result<Pushed, PushError> {
        let info = self.info()?;
        let (ref_block_num, ref_block_prefix) =
            ref_block(info.ref_num, &info.ref_id).ok_or_else(|| {
                PushError::Unreadable("get_info: the block id is not 32 bytes".into())
            })?;
        let trx = Transaction {
            expiration: info.head_time.saturating_add(expire_seconds),
            ref_block_num,
            ref_block_prefix,
            max_net_usage_words: 0,
            max_cpu_usage_ms: 0,
            delay_sec: 0,
            actions: vec![Action::transfer(
                order.contract,
                order.permission,
                order.from,
                order.to,
                order.quantity,
                order.memo,
            )?],
        };
        let packed = trx.pack()?;
        let id = transaction_id(&packed);
        let signature = key.sign_digest(&signing_digest(&info.chain_id, &packed))?;
        tracing::debug!(trx_id = %id, from = order.from, to = order.to, "pushing transfer");
        let v = self.post(
            "/v1/chain/push_transaction",
            &json!({
                "signatures": [signature.to_string()],
                "compression": 0,
                "packed_context_free_data": "",
                "packed_trx": hex::encode(&packed),
            }),
        )?;
        match v.get("transaction_id").and_then(Value::as_str) {
            Some(answered) if answered.eq_ignore_ascii_case(&id) => Ok(Pushed { id }),
            Some(other) => Err(PushError::Unreadable(format!(
                "push_transaction answered transaction {}, not {id}",
                clip(other)
            ))),
            None => Err(PushError::Unreadable(
                "push_transaction: no transaction_id".into(),
            )),
        }
    }
}
