//! What crosses the wire around payments: `dazaar/user-message` bodies. (Card payment
//! entries are read and written by [`crate::card`].)

use dazaar_plugin_api::UserMessage;
use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;

/// The largest `dazaar/user-message` body accepted (bytes).
pub const MAX_USER_MESSAGE: usize = 64 * 1024;

/// Why a user message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not JSON, or not the expected shape.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Larger than [`MAX_USER_MESSAGE`].
    #[error("user message of {0} bytes is larger than the limit")]
    TooLarge(usize),
}

fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Reads a `dazaar/user-message` body: JSON `{"name": string, "message": any}`.
///
/// The message is handed on as the exact JSON text the peer sent (without surrounding
/// whitespace), not re-serialised: numbers keep every digit (a parsed `f64` would round
/// `70000000000000000110793015` and change on a second trip, a fuzzing finding), and
/// object keys keep their order. A repeated key takes its last value, as `JSON.parse` does.
pub fn parse_user_message(bytes: &[u8]) -> Result<UserMessage, WireError> {
    if bytes.len() > MAX_USER_MESSAGE {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let fields: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(bytes).map_err(|e| malformed("user message", e.to_string()))?;
    let name = fields
        .get("name")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .ok_or_else(|| malformed("user message", "no string `name`"))?;
    let message = fields.get("message").map_or("null", |raw| raw.get());
    Ok(UserMessage {
        name: name.into(),
        message: message.into(),
    })
}

/// Writes a `dazaar/user-message` body. A message that is valid JSON text goes as that
/// text, byte for byte; any other message is sent as a JSON string.
pub fn encode_user_message(m: &UserMessage) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a, M: Serialize + ?Sized> {
        name: &'a str,
        message: &'a M,
    }
    let name = m.name.as_str();
    let text = m.message.as_str();
    // Serialising these cannot fail (string keys, no custom serialisers).
    match serde_json::from_str::<&RawValue>(text) {
        Ok(message) => serde_json::to_vec(&Body { name, message }),
        Err(_) => serde_json::to_vec(&Body {
            name,
            message: text,
        }),
    }
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_messages() {
        let m =
            parse_user_message(br#"{"name":"lnd-pay-request","message":{"amount":10}}"#).unwrap();
        assert_eq!(m.name.as_str(), "lnd-pay-request");
        assert_eq!(m.message.as_str(), r#"{"amount":10}"#);
        let wire = encode_user_message(&m);
        assert_eq!(parse_user_message(&wire).unwrap(), m);
        assert!(parse_user_message(b"{}").is_err());
        assert!(parse_user_message(b"nope").is_err());
        assert_eq!(
            parse_user_message(&vec![b' '; MAX_USER_MESSAGE + 1]),
            Err(WireError::TooLarge(MAX_USER_MESSAGE + 1))
        );
    }

    /// Fuzzing finding (ext_payloads): a number past f64 precision changed on a second
    /// parse/encode trip. The message now travels as the peer's JSON text.
    #[test]
    fn user_message_numbers_keep_every_digit() {
        let body = b"{\"name\":\"lnd\",\"message\":\n\n70000000000000000110793015\n\t}";
        let m = parse_user_message(body).unwrap();
        assert_eq!(m.message.as_str(), "70000000000000000110793015");
        let again = parse_user_message(&encode_user_message(&m)).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn user_message_text_and_keys() {
        // Key order and spelling of the message survive; a repeated key takes the last.
        let m =
            parse_user_message(br#"{"name":"a","message":{"z":1,"a":2.50},"name":"b"}"#).unwrap();
        assert_eq!(m.name.as_str(), "b");
        assert_eq!(m.message.as_str(), r#"{"z":1,"a":2.50}"#);
        // No message reads as null; a message that is not JSON goes as a JSON string.
        let m = parse_user_message(br#"{"name":"a"}"#).unwrap();
        assert_eq!(m.message.as_str(), "null");
        let plain = UserMessage {
            name: "n".into(),
            message: "not json".into(),
        };
        assert_eq!(
            encode_user_message(&plain),
            br#"{"name":"n","message":"not json"}"#.to_vec()
        );
        // The name must be a string, the body an object.
        assert!(parse_user_message(br#"{"name":1,"message":2}"#).is_err());
        assert!(parse_user_message(br#"["name"]"#).is_err());
    }
}
