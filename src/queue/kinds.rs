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
    /// The SMTP relay for `email` jobs: host and port.
    pub smtp: Option<(String, u16)>,
    /// The `From` of e-mail jobs.
    pub smtp_from: String,
}

/// Kinds percore runs; a queue of any other name is refused at submission.
pub const KINDS: &[&str] = &["webhook", "email"];

/// Checks a payload before it is accepted, so a job that can never run is a 400 now, not a dead letter later.
pub fn validate(queue: &str, payload: &Value, options: &KindOptions) -> Result<(), String> {
    match queue {
        "email" => {
            if options.smtp.is_none() {
                return Err(
                    "e-mail jobs need an SMTP relay: start percore with --smtp HOST:PORT".into(),
                );
            }
            let to = payload
                .get("to")
                .and_then(Value::as_str)
                .ok_or("an email job needs a string `to`")?;
            to.parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("`to` is not an e-mail address: {e}"))?;
            for field in ["subject", "text"] {
                payload
                    .get(field)
                    .and_then(Value::as_str)
                    .ok_or(format!("an email job needs a string `{field}`"))?;
            }
            Ok(())
        }
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
        "email" => email(id, payload, options),
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

fn email(id: u64, payload: &Value, options: &KindOptions) -> Outcome {
    use lettre::{Message, SmtpTransport, Transport};
    let Some((host, port)) = &options.smtp else {
        return Outcome::Fatal("no SMTP relay configured".into());
    };
    let field = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (Ok(from), Ok(to)) = (options.smtp_from.parse(), field("to").parse()) else {
        return Outcome::Fatal("malformed e-mail addresses".into());
    };
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(field("subject"))
        .message_id(Some(format!("<job-{id}@percore>")))
        .body(field("text").to_owned());
    let message = match message {
        Ok(message) => message,
        Err(error) => return Outcome::Fatal(format!("cannot build the message: {error}")),
    };
    // A plain relay on a trusted network, as --smtp documents: no TLS, no auth.
    let transport = SmtpTransport::builder_dangerous(host.as_str())
        .port(*port)
        .timeout(Some(options.webhook_timeout))
        .build();
    match transport.send(&message) {
        Ok(response) => {
            Outcome::Succeeded(serde_json::json!({ "smtp": response.code().to_string() }))
        }
        Err(error) if error.is_permanent() => {
            Outcome::Fatal(format!("the relay refused the message: {error}"))
        }
        Err(error) => Outcome::Retry(format!("could not hand the message to the relay: {error}")),
    }
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
        let mut options = KindOptions {
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(1),
            smtp: None,
            smtp_from: "percore@localhost".into(),
        };
        let ok = serde_json::json!({"url": "http://x/", "payload": {}});
        assert!(validate("webhook", &ok, &options).is_ok());
        let no_url = serde_json::json!({"payload": {}});
        assert!(validate("webhook", &no_url, &options)
            .unwrap_err()
            .contains("`url`"));
        let ftp = serde_json::json!({"url": "ftp://x", "payload": 1});
        assert!(validate("webhook", &ftp, &options)
            .unwrap_err()
            .contains("http://"));
        let fax = validate("fax", &serde_json::json!({}), &options).unwrap_err();
        assert!(fax.contains("no job kind `fax`"));
        let mail = serde_json::json!({"to": "a@example.com", "subject": "s", "text": "t"});
        assert!(validate("email", &mail, &options)
            .unwrap_err()
            .contains("--smtp"));
        options.smtp = Some(("127.0.0.1".into(), 25));
        assert!(validate("email", &mail, &options).is_ok());
        let nobody = serde_json::json!({"to": "nobody", "subject": "s", "text": "t"});
        assert!(validate("email", &nobody, &options)
            .unwrap_err()
            .contains("`to`"));
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
