//! The webhook index kept across restarts in the host's state store (API 1.3): the
//! payments Stripe's signed events delivered, so after a restart a paying buyer is valid
//! from the index even while Stripe's API fails.
//!
//! Layout: 256 buckets, `index/<xx>` holding the payments of the buyers whose key starts
//! with byte `xx`, one JSON object a line. A bucket changed by an event is marked dirty
//! and rewritten by the saver's own thread, never on the webhook listener's. A bucket
//! larger than the host's value limit keeps its newest payments.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dazaar_plugin_api::{parse_key, PluginStore, MAX_STATE_VALUE};
use serde::{Deserialize, Serialize};

use crate::money::Currency;
use crate::objects::StripePayment;
use crate::State;

/// The longest payment id kept.
const MAX_ID: usize = 255;

/// The bucket of a buyer.
pub(crate) fn bucket_of(p: &StripePayment) -> u8 {
    p.buyer[0]
}

fn bucket_key(bucket: u8) -> String {
    format!("index/{bucket:02x}")
}

/// A payment as a line of a bucket.
#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    seller: String,
    buyer: String,
    currency: String,
    net_minor: i64,
    time_ms: u64,
}

fn to_line(p: &StripePayment) -> String {
    serde_json::json!(Line {
        id: p.id.clone(),
        seller: hex::encode(p.seller),
        buyer: hex::encode(p.buyer),
        currency: p.currency.code().to_owned(),
        net_minor: p.net_minor,
        time_ms: p.time_ms,
    })
    .to_string()
}

fn from_line(line: &str) -> Option<StripePayment> {
    let l: Line = serde_json::from_str(line).ok()?;
    if l.id.is_empty() || l.id.len() > MAX_ID {
        return None;
    }
    Some(StripePayment {
        id: l.id,
        seller: parse_key(&l.seller)?,
        buyer: parse_key(&l.buyer)?,
        currency: Currency::parse(&l.currency).ok()?,
        net_minor: l.net_minor,
        time_ms: l.time_ms,
    })
}

/// A bucket's value: its payments, the newest kept when they do not all fit.
fn encode(mut payments: Vec<&StripePayment>) -> Vec<u8> {
    payments.sort_by_key(|p| std::cmp::Reverse(p.time_ms));
    let mut lines = Vec::new();
    let mut size = 0usize;
    for p in payments {
        let line = to_line(p);
        size = size.saturating_add(line.len() + 1);
        if size > MAX_STATE_VALUE {
            tracing::warn!("a webhook index bucket is full; its oldest payments are not saved");
            break;
        }
        lines.push(line);
    }
    let mut out = Vec::with_capacity(size.min(MAX_STATE_VALUE));
    for l in lines.iter().rev() {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Reads every saved payment (unreadable lines are skipped).
pub(crate) fn load(store: &PluginStore) -> Result<Vec<StripePayment>, String> {
    let mut out = Vec::new();
    for bucket in 0..=u8::MAX {
        if let Some(bytes) = store.get(&bucket_key(bucket))? {
            let text = String::from_utf8_lossy(&bytes);
            out.extend(text.lines().filter_map(from_line));
        }
    }
    Ok(out)
}

/// Writes dirty buckets on a thread of its own; stops (after a last write) when dropped.
pub(crate) struct Saver {
    wake: SyncSender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Saver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Saver")
    }
}

impl Saver {
    /// Starts the thread writing `state`'s dirty buckets to `store`.
    pub(crate) fn start(store: PluginStore, state: Arc<Mutex<State>>) -> Result<Saver, String> {
        let (wake, woken) = sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("stripe-saver".into())
            .spawn(move || run(&store, &state, &woken, &stopped))
            .map_err(|e| format!("cannot start the Stripe saver thread: {e}"))?;
        Ok(Saver {
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// A handle that asks the thread to write (never blocks).
    pub(crate) fn waker(&self) -> SyncSender<()> {
        self.wake.clone()
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &PluginStore, state: &Mutex<State>, woken: &Receiver<()>, stop: &AtomicBool) {
    loop {
        let woke = woken.recv();
        flush(store, state);
        if woke.is_err() || stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// Writes the dirty buckets (each read under the lock, written outside it). A bucket that
/// fails to write is marked dirty again for the next wake-up.
fn flush(store: &PluginStore, state: &Mutex<State>) {
    let writes: Vec<(u8, Vec<u8>)> = {
        let Ok(mut st) = state.lock() else { return };
        let dirty: BTreeSet<u8> = std::mem::take(&mut st.dirty);
        dirty
            .into_iter()
            .map(|b| {
                let payments = st
                    .index
                    .iter()
                    .filter(|((_, buyer), _)| buyer[0] == b)
                    .flat_map(|(_, list)| list.iter())
                    .collect();
                (b, encode(payments))
            })
            .collect()
    };
    for (bucket, bytes) in writes {
        let key = bucket_key(bucket);
        let result = if bytes.is_empty() {
            store.delete(&key)
        } else {
            store.put(&key, &bytes)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot save the webhook index");
            if let Ok(mut st) = state.lock() {
                st.dirty.insert(bucket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str, time_ms: u64) -> StripePayment {
        StripePayment {
            id: id.into(),
            seller: [1; 32],
            buyer: [2; 32],
            currency: Currency::parse("usd").unwrap(),
            net_minor: 500,
            time_ms,
        }
    }

    #[test]
    fn buckets_read_back_and_bad_lines_count_for_nothing() {
        let a = payment("pi_a", 1);
        let b = payment("pi_b", 2);
        let bytes = encode(vec![&b, &a]);
        let text = String::from_utf8(bytes).unwrap();
        let read: Vec<_> = text.lines().filter_map(from_line).collect();
        assert_eq!(read, [a, b]);
        assert_eq!(from_line("{\"id\":\"\"}"), None);
        assert_eq!(from_line("garbage"), None);
    }
}
