//! What crosses the wire around payments: `dazaar/user-message` bodies. (Card payment
//! entries are read and written by [`crate::card`].)

use dazaar_plugin_api::UserMessage;
use serde_json::Value;

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
pub fn parse_user_message(bytes: &[u8]) -> Result<UserMessage, WireError> {
    if bytes.len() > MAX_USER_MESSAGE {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed("user message", e.to_string()))?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("user message", "no string `name`"))?;
    let message = v.get("message").cloned().unwrap_or(Value::Null);
    Ok(UserMessage {
        name: name.into(),
        message: message.to_string().into(),
    })
}

/// Writes a `dazaar/user-message` body. A message that is not valid JSON text is sent as
/// a JSON string.
pub fn encode_user_message(m: &UserMessage) -> Vec<u8> {
    let message = serde_json::from_str::<Value>(m.message.as_str())
        .unwrap_or_else(|_| Value::String(m.message.to_string()));
    serde_json::json!({ "name": m.name.as_str(), "message": message })
        .to_string()
        .into_bytes()
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
}
