//! The line protocol between the plugin and its verifier process, without I/O: requests
//! as the lines written to the verifier's stdin, answers parsed from the lines it writes
//! to stdout into typed values, and a bounded line reader. See `docs/exec-plugin.md`.

use std::io::BufRead;

use dazaar_plugin_api::{str_prefix, Grant, Key, PaymentInstructions, PaymentTerms};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest refusal reason or error text taken from a verifier (bytes); longer ones are
/// cut on a character boundary.
pub const MAX_REASON: usize = 512;

/// The most methods or currencies a `describe` answer may list.
pub const MAX_LIST: usize = 32;

/// The longest method, currency, name or version in a `describe` answer (bytes).
pub const MAX_NAME: usize = 64;

/// One request to the verifier: `{"id":N,"op":...,...}` on one line.
#[derive(Debug, Clone, Serialize)]
pub struct Request<'a> {
    /// Matches the answer to the request; never reused by one plugin instance.
    pub id: u64,
    /// What is asked, with its fields.
    #[serde(flatten)]
    pub op: Op<'a>,
}

/// What a request asks.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op<'a> {
    /// Name, version, methods and currencies.
    Describe,
    /// Seller side: may `buyer` have the product now?
    Validate {
        /// The buyer's key, 64 hex characters.
        buyer: String,
        /// The seller's key for this product, 64 hex characters.
        seller: String,
        /// The card payment entry, as on the card.
        terms: Value,
        /// The host's clock, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Seller side: a `dazaar/user-message` from the buyer.
    UserMessage {
        /// The buyer's key.
        buyer: String,
        /// The seller's key.
        seller: String,
        /// The card payment entry.
        terms: Value,
        /// The message name.
        name: &'a str,
        /// The message body (JSON; a body that is not JSON is passed as a string).
        message: Value,
    },
    /// Buyer side: how to pay `amount`.
    PaymentRequest {
        /// The buyer's key.
        buyer: String,
        /// The seller's key.
        seller: String,
        /// The card payment entry.
        terms: Value,
        /// How much, in the card's currency.
        amount: &'a str,
    },
}

impl Op<'_> {
    /// The op's name as it appears on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Describe => "describe",
            Op::Validate { .. } => "validate",
            Op::UserMessage { .. } => "user_message",
            Op::PaymentRequest { .. } => "payment_request",
        }
    }
}

/// The request as one line, newline included.
pub fn request_line(req: &Request<'_>) -> Vec<u8> {
    // Serializing plain strings, numbers and JSON values cannot fail; an empty object
    // would be answered as a malformed request, never as a grant.
    let mut line = serde_json::to_vec(req).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// A card payment entry as the verifier sees it: the card's own JSON fields (`method`,
/// `currency`, `amount`, `unit`, `interval`, `payTo`, `minSeconds`, `paymentDelay` and any
/// others).
pub fn terms_json(terms: &PaymentTerms) -> Value {
    let mut obj = match serde_json::from_str::<Value>(terms.extra_json.as_str()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    obj.insert("method".into(), terms.method.as_str().into());
    obj.insert("currency".into(), terms.currency.as_str().into());
    obj.insert("amount".into(), terms.amount.as_str().into());
    obj.insert("unit".into(), terms.unit.as_str().into());
    obj.insert("interval".into(), terms.interval.as_str().into());
    if let Some(p) = terms.pay_to.as_ref().into_option() {
        obj.insert("payTo".into(), p.as_str().into());
    }
    obj.insert("minSeconds".into(), terms.min_seconds.into());
    obj.insert("paymentDelay".into(), terms.payment_delay_ms.into());
    Value::Object(obj)
}

/// A key as the protocol writes it.
pub fn key_hex(key: &Key) -> String {
    hex::encode(key)
}

/// Why a line from the verifier is not a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The line is not a JSON object with a numeric `id`: it cannot be matched to any
    /// request, so the process is not speaking the protocol.
    #[error("the verifier wrote a line that is not a JSON object with a numeric id")]
    NotAnAnswer,
    /// The answer to a request lacks a field or has one of the wrong type.
    #[error("the verifier's answer to {op} is malformed: {what}")]
    Malformed {
        /// The op answered.
        op: &'static str,
        /// What is wrong.
        what: String,
    },
}

/// An answer line: its `id` and its other fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The id of the request it answers.
    pub id: u64,
    /// The answer's fields (`id` included).
    pub fields: Map<String, Value>,
}

/// Reads an answer line (without its newline). Blank lines are `Ok(None)`.
pub fn parse_answer(line: &[u8]) -> Result<Option<Answer>, ProtocolError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(line) else {
        return Err(ProtocolError::NotAnAnswer);
    };
    let Some(id) = fields.get("id").and_then(Value::as_u64) else {
        return Err(ProtocolError::NotAnAnswer);
    };
    Ok(Some(Answer { id, fields }))
}

fn malformed(op: &'static str, what: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed {
        op,
        what: what.into(),
    }
}

/// The verifier's `error` field, if it answered with one: a refusal reason.
fn error_field(op: &'static str, a: &Answer) -> Result<Option<String>, ProtocolError> {
    match a.fields.get("error") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(reason_text(s))),
        Some(_) => Err(malformed(op, "error is not a string")),
    }
}

/// A reason from the verifier, bounded to [`MAX_REASON`] and without control characters.
fn reason_text(s: &str) -> String {
    let cut = str_prefix(s, MAX_REASON);
    let clean: String = cut
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.trim().is_empty() {
        "refused by the verifier".to_owned()
    } else {
        clean
    }
}

/// What a verifier says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Card methods it serves.
    pub methods: Vec<String>,
    /// Card currencies it serves (empty: any).
    pub currencies: Vec<String>,
}

fn short_text(op: &'static str, field: &str, v: Option<&Value>) -> Result<String, ProtocolError> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_NAME => Ok(s.clone()),
        Some(Value::String(_)) => Err(malformed(
            op,
            format!("{field} is empty or longer than {MAX_NAME} bytes"),
        )),
        _ => Err(malformed(op, format!("{field} is missing or not a string"))),
    }
}

fn text_list(
    op: &'static str,
    field: &str,
    v: Option<&Value>,
) -> Result<Vec<String>, ProtocolError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_LIST => items,
        Some(Value::Array(_)) => {
            return Err(malformed(op, format!("{field} lists more than {MAX_LIST}")))
        }
        Some(_) => return Err(malformed(op, format!("{field} is not a list"))),
    };
    items
        .iter()
        .map(|i| short_text(op, field, Some(i)))
        .collect()
}

/// Reads a `describe` answer: `Ok(Err(reason))` when the verifier declines to describe.
pub fn parse_describe(a: &Answer) -> Result<Result<Described, String>, ProtocolError> {
    const OP: &str = "describe";
    if let Some(reason) = error_field(OP, a)? {
        return Ok(Err(reason));
    }
    let methods = text_list(OP, "methods", a.fields.get("methods"))?;
    if methods.is_empty() {
        return Err(malformed(OP, "methods is empty"));
    }
    Ok(Ok(Described {
        name: short_text(OP, "name", a.fields.get("name"))?,
        version: short_text(OP, "version", a.fields.get("version"))?,
        methods,
        currencies: text_list(OP, "currencies", a.fields.get("currencies"))?,
    }))
}

/// Reads a `validate` answer: the grant, or the refusal reason.
pub fn parse_validate(a: &Answer) -> Result<Result<Grant, String>, ProtocolError> {
    const OP: &str = "validate";
    if let Some(reason) = error_field(OP, a)? {
        return Ok(Err(reason));
    }
    match a.fields.get("valid") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let reason = match a.fields.get("reason") {
                Some(Value::String(s)) => reason_text(s),
                None | Some(Value::Null) => "refused by the verifier".to_owned(),
                Some(_) => return Err(malformed(OP, "reason is not a string")),
            };
            return Ok(Err(reason));
        }
        _ => return Err(malformed(OP, "valid is missing or not true/false")),
    }
    let Some(Value::Object(grant)) = a.fields.get("grant") else {
        return Err(malformed(OP, "valid is true but grant is not an object"));
    };
    let remaining = || match grant.get("remaining") {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| malformed(OP, "grant.remaining is not a whole number >= 0")),
        None => Err(malformed(OP, "grant.remaining is missing")),
    };
    match grant.get("type").and_then(Value::as_str) {
        Some("time") => Ok(Ok(Grant::time_ms(remaining()?))),
        Some("bytes") => Ok(Ok(Grant::bytes(remaining()?))),
        Some("free") => Ok(Ok(Grant::free())),
        Some("once") => Ok(Ok(Grant::once())),
        _ => Err(malformed(
            OP,
            "grant.type is not one of time, bytes, free, once",
        )),
    }
}

/// Reads a `user_message` answer: a reply `(name, message JSON text)`, `None` when the
/// verifier does not handle the message, or a refusal reason.
pub fn parse_user_message(
    a: &Answer,
) -> Result<Result<Option<(String, String)>, String>, ProtocolError> {
    const OP: &str = "user_message";
    if let Some(reason) = error_field(OP, a)? {
        return Ok(Err(reason));
    }
    match a.fields.get("reply") {
        None | Some(Value::Null) => Ok(Ok(None)),
        Some(Value::Object(reply)) => {
            let name = short_text(OP, "reply.name", reply.get("name"))?;
            let message = reply
                .get("message")
                .ok_or_else(|| malformed(OP, "reply.message is missing"))?;
            Ok(Ok(Some((name, message.to_string()))))
        }
        Some(_) => Err(malformed(OP, "reply is not an object or null")),
    }
}

/// Reads a `payment_request` answer: the instructions, or a refusal reason.
pub fn parse_payment_request(
    a: &Answer,
) -> Result<Result<PaymentInstructions, String>, ProtocolError> {
    const OP: &str = "payment_request";
    if let Some(reason) = error_field(OP, a)? {
        return Ok(Err(reason));
    }
    match a.fields.get("instructions") {
        Some(v @ Value::Object(_)) => PaymentInstructions::deserialize(v)
            .map(Ok)
            .map_err(|e| malformed(OP, format!("instructions: {e}"))),
        _ => Err(malformed(OP, "instructions is missing or not an object")),
    }
}

/// What [`read_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRead {
    /// A whole line is in the buffer (without its newline; the last line of the stream
    /// may lack one).
    Line,
    /// The line is longer than the bound: the buffer holds its first `max` bytes, and the
    /// rest of the line is still unread.
    Overlong,
    /// The stream ended with nothing read.
    Eof,
}

/// Reads one line of at most `max` bytes (newline excluded) into `buf` (cleared first),
/// never holding more than `max` bytes of it.
pub fn read_line(
    reader: &mut impl BufRead,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, found) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = max - buf.len();
        if take > room {
            buf.extend_from_slice(&chunk[..room]);
            reader.consume(room);
            return Ok(LineRead::Overlong);
        }
        buf.extend_from_slice(&chunk[..take]);
        reader.consume(if found { take + 1 } else { take });
        if found {
            return Ok(LineRead::Line);
        }
    }
}

/// Skips the rest of the current line (after [`LineRead::Overlong`]); `false` at the end
/// of the stream.
pub fn skip_line(reader: &mut impl BufRead) -> std::io::Result<bool> {
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(false);
        }
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{BufReader, Cursor};

    fn answer(v: Value) -> Answer {
        parse_answer(v.to_string().as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn requests_are_one_line_with_id_and_op() {
        let terms = PaymentTerms::new("exec", "EUR", "2", "minutes", "1");
        let req = Request {
            id: 7,
            op: Op::Validate {
                buyer: key_hex(&[1; 32]),
                seller: key_hex(&[2; 32]),
                terms: terms_json(&terms),
                now_ms: 1_700_000_000_000,
            },
        };
        let line = request_line(&req);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"id":7,"op":"validate","buyer":"01".repeat(32),"seller":"02".repeat(32),
                "terms":{"method":"exec","currency":"EUR","amount":"2","unit":"minutes",
                    "interval":"1","minSeconds":0.0,"paymentDelay":0},
                "now_ms":1_700_000_000_000u64})
        );
        let d: Value = serde_json::from_slice(&request_line(&Request {
            id: 1,
            op: Op::Describe,
        }))
        .unwrap();
        assert_eq!(d, json!({"id":1,"op":"describe"}));
        // A name with a newline stays on one line (JSON escapes it).
        let line = request_line(&Request {
            id: 2,
            op: Op::UserMessage {
                buyer: String::new(),
                seller: String::new(),
                terms: Value::Null,
                name: "a\nb",
                message: json!({"x":"\n"}),
            },
        });
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn answers_need_an_object_with_a_numeric_id() {
        assert_eq!(parse_answer(b""), Ok(None));
        assert_eq!(parse_answer(b"  \t"), Ok(None));
        for bad in [
            &b"hello"[..],
            b"[1]",
            b"{\"valid\":true}",
            b"{\"id\":\"3\"}",
            b"{\"id\":-1}",
            b"{\"id\":1.5}",
            b"\xff\xfe",
            b"{\"id\":1",
        ] {
            assert_eq!(
                parse_answer(bad),
                Err(ProtocolError::NotAnAnswer),
                "{bad:?}"
            );
        }
        assert_eq!(parse_answer(b"{\"id\":3}").unwrap().unwrap().id, 3);
    }

    #[test]
    fn validate_answers() {
        let v = |j: Value| parse_validate(&answer(j));
        assert_eq!(
            v(json!({"id":1,"valid":true,"grant":{"type":"time","remaining":5000}})),
            Ok(Ok(Grant::time_ms(5000)))
        );
        assert_eq!(
            v(json!({"id":1,"valid":true,"grant":{"type":"bytes","remaining":9}})),
            Ok(Ok(Grant::bytes(9)))
        );
        assert_eq!(
            v(json!({"id":1,"valid":true,"grant":{"type":"free"}})),
            Ok(Ok(Grant::free()))
        );
        assert_eq!(
            v(json!({"id":1,"valid":true,"grant":{"type":"once"}})),
            Ok(Ok(Grant::once()))
        );
        assert_eq!(
            v(json!({"id":1,"valid":false,"reason":"not paid"})),
            Ok(Err("not paid".into()))
        );
        assert_eq!(
            v(json!({"id":1,"valid":false})),
            Ok(Err("refused by the verifier".into()))
        );
        assert_eq!(
            v(json!({"id":1,"error":"unknown op"})),
            Ok(Err("unknown op".into()))
        );
        // Reasons are bounded and single-line.
        let long = v(json!({"id":1,"valid":false,"reason":"x\n".repeat(1000)}))
            .unwrap()
            .unwrap_err();
        assert_eq!(long.len(), MAX_REASON);
        assert!(!long.contains('\n'));
        // Anything that is not a clear grant is malformed, never valid.
        for bad in [
            json!({"id":1}),
            json!({"id":1,"valid":"yes"}),
            json!({"id":1,"valid":true}),
            json!({"id":1,"valid":true,"grant":"time"}),
            json!({"id":1,"valid":true,"grant":{"type":"time"}}),
            json!({"id":1,"valid":true,"grant":{"type":"time","remaining":-5}}),
            json!({"id":1,"valid":true,"grant":{"type":"time","remaining":"5"}}),
            json!({"id":1,"valid":true,"grant":{"type":"time","remaining":1.5}}),
            json!({"id":1,"valid":true,"grant":{"type":"forever"}}),
            json!({"id":1,"valid":false,"reason":7}),
            json!({"id":1,"error":true}),
        ] {
            assert!(
                matches!(v(bad.clone()), Err(ProtocolError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn describe_answers() {
        let d = parse_describe(&answer(json!({"id":1,"name":"allow","version":"1.0",
            "methods":["Allow"],"currencies":["EUR","USD"]})))
        .unwrap()
        .unwrap();
        assert_eq!(d.methods, ["Allow"]);
        assert_eq!(d.currencies, ["EUR", "USD"]);
        let any = parse_describe(&answer(
            json!({"id":1,"name":"a","version":"1","methods":["m"]}),
        ))
        .unwrap()
        .unwrap();
        assert!(any.currencies.is_empty());
        assert_eq!(
            parse_describe(&answer(json!({"id":1,"error":"no"}))),
            Ok(Err("no".into()))
        );
        for bad in [
            json!({"id":1,"name":"a","version":"1","methods":[]}),
            json!({"id":1,"name":"a","version":"1"}),
            json!({"id":1,"name":"a","version":"1","methods":[""]}),
            json!({"id":1,"name":"a","version":"1","methods":["x".repeat(65)]}),
            json!({"id":1,"name":"a","version":"1","methods":vec!["m"; 33]}),
            json!({"id":1,"version":"1","methods":["m"]}),
            json!({"id":1,"name":"a","version":"1","methods":"m"}),
        ] {
            assert!(parse_describe(&answer(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_message_and_payment_request_answers() {
        assert_eq!(
            parse_user_message(&answer(json!({"id":1,"reply":null}))),
            Ok(Ok(None))
        );
        assert_eq!(
            parse_user_message(&answer(
                json!({"id":1,"reply":{"name":"invoice","message":{"pay":"here"}}})
            )),
            Ok(Ok(Some(("invoice".into(), r#"{"pay":"here"}"#.into()))))
        );
        assert!(parse_user_message(&answer(json!({"id":1,"reply":{"name":"x"}}))).is_err());
        assert!(parse_user_message(&answer(json!({"id":1,"reply":3}))).is_err());
        let p = parse_payment_request(&answer(
            json!({"id":1,"instructions":{"memo":"m","amount":"5","note":"pay me"}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.memo.as_deref(), Some("m"));
        assert_eq!(p.note.as_deref(), Some("pay me"));
        assert_eq!(
            parse_payment_request(&answer(json!({"id":1,"error":"buyers pay by hand"}))),
            Ok(Err("buyers pay by hand".into()))
        );
        assert!(parse_payment_request(&answer(json!({"id":1}))).is_err());
        assert!(parse_payment_request(&answer(json!({"id":1,"instructions":{"memo":5}}))).is_err());
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = BufReader::with_capacity(4, Cursor::new(b"abc\n\nabcdefgh\nxy".to_vec()));
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, 5, &mut buf).unwrap(), LineRead::Line);
        assert_eq!(buf, b"abc");
        assert_eq!(read_line(&mut r, 5, &mut buf).unwrap(), LineRead::Line);
        assert_eq!(buf, b"");
        assert_eq!(read_line(&mut r, 5, &mut buf).unwrap(), LineRead::Overlong);
        assert_eq!(buf, b"abcde");
        assert!(skip_line(&mut r).unwrap());
        assert_eq!(read_line(&mut r, 5, &mut buf).unwrap(), LineRead::Line);
        assert_eq!(buf, b"xy");
        assert_eq!(read_line(&mut r, 5, &mut buf).unwrap(), LineRead::Eof);
        // Exactly the bound is fine; one more is not.
        let mut r = Cursor::new(b"12345\n123456\n".to_vec());
        assert_eq!(read_line(&mut r, 5, &mut buf).unwrap(), LineRead::Line);
        assert_eq!(read_line(&mut r, 5, &mut buf).unwrap(), LineRead::Overlong);
        assert_eq!(buf.len(), 5);
        // A huge line without a newline never grows the buffer past the bound.
        let mut r = Cursor::new(vec![b'a'; 1 << 20]);
        assert_eq!(
            read_line(&mut r, 100, &mut buf).unwrap(),
            LineRead::Overlong
        );
        assert_eq!(buf.len(), 100);
        assert!(!skip_line(&mut r).unwrap());
    }
}
