//! What a job does: the kinds that ship (`webhook`) and how a worker runs one.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// Worth another attempt (a 5xx, a network error).
    Retry(String),
    /// Will fail the same way every time (a 4xx): straight to the dead letters.
    Fatal(String),
}

/// Settings the job kinds need.
#[derive(Debug, Clone)]
pub struct KindOptions {
    /// Key for the `X-Percore-Signature` HMAC-SHA256 of webhook bodies.
    pub webhook_secret: Option<String>,
    pub webhook_timeout: Duration,
}

/// Kinds percore runs; a queue of any other name is refused at submission.
pub const KINDS: &[&str] = &["webhook"];

/// Checks a payload before it is accepted, so a job that can never run is a 400 now, not a dead letter later.
pub fn validate(queue: &str, payload: &Value) -> Result<(), String> {
    match queue {
        "webhook" => {
            let url = payload
                .get("url")
                .and_then(Value::as_str)
                .ok_or("a webhook job needs a string `url`")?;
            if !url.starts_with("http://") {
                return Err(format!(
                    "`url` must be an http:// URL (https is not supported yet), got `{url}`"
                ));
            }
            if payload.get("payload").is_none() {
                return Err("a webhook job needs a `payload` to send".into());
            }
            Ok(())
        }
        other => Err(format!(
            "no job kind `{other}`; known kinds: {}",
            KINDS.join(", ")
        )),
    }
}

/// Runs one attempt of a job. Called on a worker thread: it may block.
pub fn run(queue: &str, id: u64, payload: &Value, options: &KindOptions) -> Outcome {
    match queue {
        "webhook" => webhook(id, payload, options),
        other => Outcome::Fatal(format!("no job kind `{other}`")),
    }
}

/// The signature header value for `body`: `sha256=<hex HMAC-SHA256>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for byte in digest.iter() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

fn webhook(id: u64, payload: &Value, options: &KindOptions) -> Outcome {
    let (Some(url), Some(body)) = (
        payload.get("url").and_then(Value::as_str),
        payload.get("payload"),
    ) else {
        return Outcome::Fatal("malformed webhook payload".into());
    };
    let body = serde_json::to_vec(body).expect("JSON values serialize");
    let agent = ureq::AgentBuilder::new()
        .timeout(options.webhook_timeout)
        .build();
    let mut request = agent
        .post(url)
        .set("Content-Type", "application/json")
        .set("User-Agent", "percore-webhook")
        .set("X-Percore-Job", &id.to_string());
    if let Some(secret) = &options.webhook_secret {
        request = request.set("X-Percore-Signature", &signature(secret, &body));
    }
    match request.send_bytes(&body) {
        Ok(response) => Outcome::Succeeded(serde_json::json!({ "status": response.status() })),
        Err(ureq::Error::Status(code, _)) if code >= 500 || code == 429 => {
            Outcome::Retry(format!("the receiver answered {code}"))
        }
        Err(ureq::Error::Status(code, _)) => {
            Outcome::Fatal(format!("the receiver answered {code}"))
        }
        Err(ureq::Error::Transport(error)) => Outcome::Retry(format!("could not deliver: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        assert!(validate(
            "webhook",
            &serde_json::json!({"url": "http://x/", "payload": {}})
        )
        .is_ok());
        assert!(validate("webhook", &serde_json::json!({"payload": {}}))
            .unwrap_err()
            .contains("`url`"));
        assert!(validate(
            "webhook",
            &serde_json::json!({"url": "ftp://x", "payload": 1})
        )
        .unwrap_err()
        .contains("http://"));
        assert!(validate("fax", &serde_json::json!({}))
            .unwrap_err()
            .contains("no job kind `fax`"));
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
