//! What a job does: the registry of job kinds, the kinds that ship (`webhook`, `email`), and how a worker runs one.
//!
//! A queue's name is its kind. An application registers its own kinds
//! beside (or instead of) the built-in ones; a submission to a queue no
//! kind is registered for is refused with 400 before anything is written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::egress::{self, Egress, GuardedResolver};

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
    /// Where webhooks may connect.
    pub egress: Arc<Egress>,
    /// The CA certificates https receivers are verified against; `None`: the system's.
    pub webhook_ca: Option<PathBuf>,
    /// The domains e-mail jobs may send to; `None`: any.
    pub email_allow_domains: Option<Vec<String>>,
    /// The SMTP relay for `email` jobs: host and port.
    pub smtp: Option<(String, u16)>,
    /// The `From` of e-mail jobs.
    pub smtp_from: String,
}

/// One attempt of a job, as a kind's `run` sees it.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub id: u64,
    pub queue: &'a str,
    pub payload: &'a Value,
    /// 1 for the first attempt.
    pub attempt: u32,
}

type Validate = dyn Fn(&Value) -> Result<(), String> + Send + Sync;
type Run = dyn Fn(&Job<'_>) -> Outcome + Send + Sync;

/// A kind of job: its queue's name, how a payload is checked before it is
/// accepted (so a job that can never run is a 400 now, not a dead letter
/// later), and what a worker thread does to run it (it may block).
#[derive(Clone)]
pub struct JobKind {
    name: &'static str,
    validate: Arc<Validate>,
    run: Arc<Run>,
}

impl JobKind {
    pub fn new(
        name: &'static str,
        validate: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
        run: impl Fn(&Job<'_>) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            validate: Arc::new(validate),
            run: Arc::new(run),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl std::fmt::Debug for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobKind").field("name", &self.name).finish()
    }
}

/// The kinds a node runs, by queue name. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct JobKinds {
    kinds: Arc<[JobKind]>,
}

impl JobKinds {
    /// Refuses two kinds of one name.
    pub fn new(kinds: Vec<JobKind>) -> Result<Self, String> {
        for (i, kind) in kinds.iter().enumerate() {
            if kinds[..i].iter().any(|k| k.name == kind.name) {
                return Err(format!("job kind `{}` is registered twice", kind.name));
            }
        }
        Ok(Self {
            kinds: kinds.into(),
        })
    }

    /// percore's own kinds: `webhook` and `email`. `Err` when the TLS
    /// roots of webhook receivers cannot be read.
    pub fn builtin(options: &KindOptions) -> Result<Vec<JobKind>, String> {
        Ok(vec![
            webhook_kind(options.clone())?,
            email_kind(options.clone()),
        ])
    }

    fn find(&self, queue: &str) -> Option<&JobKind> {
        self.kinds.iter().find(|k| k.name == queue)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name).collect()
    }

    /// Checks a payload for `queue` before it is accepted.
    pub fn validate(&self, queue: &str, payload: &Value) -> Result<(), String> {
        match self.find(queue) {
            Some(kind) => (kind.validate)(payload),
            None => Err(format!(
                "no job kind `{queue}`; known kinds: {}",
                self.names().join(", ")
            )),
        }
    }

    /// Runs one attempt. Called on a worker thread: it may block.
    pub fn run(&self, job: &Job<'_>) -> Outcome {
        match self.find(job.queue) {
            Some(kind) => (kind.run)(job),
            None => Outcome::Fatal(format!("no job kind `{}`", job.queue)),
        }
    }
}

/// `webhook`: POSTs `payload` to `url`, signed with `--webhook-secret`.
///
/// Deliveries reach only what the egress policy allows ([`egress`]), over
/// http or https (verified against `webhook_ca` or the system's roots).
pub fn webhook_kind(options: KindOptions) -> Result<JobKind, String> {
    let tls = egress::tls_config(options.webhook_ca.as_deref())?;
    let agent = ureq::AgentBuilder::new()
        .timeout(options.webhook_timeout)
        .resolver(GuardedResolver {
            egress: Arc::clone(&options.egress),
        })
        .tls_config(tls)
        .build();
    let run_options = options.clone();
    Ok(JobKind::new(
        "webhook",
        move |payload| validate_builtin("webhook", payload, &options),
        move |job| webhook(job.id, job.payload, &agent, &run_options),
    ))
}

/// `email`: sends `subject` and `text` to `to` through `--smtp`.
pub fn email_kind(options: KindOptions) -> JobKind {
    let run_options = options.clone();
    JobKind::new(
        "email",
        move |payload| validate_builtin("email", payload, &options),
        move |job| email(job.id, job.payload, &run_options),
    )
}

fn validate_builtin(queue: &str, payload: &Value, options: &KindOptions) -> Result<(), String> {
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
            let mailbox = to
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("`to` is not an e-mail address: {e}"))?;
            if let Some(domains) = &options.email_allow_domains {
                let domain = mailbox.email.domain().to_ascii_lowercase();
                if !domains.contains(&domain) {
                    return Err(format!(
                        "`to` is at {domain}, where e-mail jobs may not send (--email-allow-domain: {})",
                        domains.join(", ")
                    ));
                }
            }
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
            options.egress.check_url(url)?;
            if payload.get("payload").is_none() {
                return Err("a webhook job needs a `payload` to send".into());
            }
            Ok(())
        }
        other => Err(format!("no built-in job kind `{other}`")),
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

fn webhook(id: u64, payload: &Value, agent: &ureq::Agent, options: &KindOptions) -> Outcome {
    let (Some(url), Some(body)) = (
        payload.get("url").and_then(Value::as_str),
        payload.get("payload"),
    ) else {
        return Outcome::Fatal("malformed webhook payload".into());
    };
    let body = serde_json::to_vec(body).expect("JSON values serialize");
    // A refusal left over from an earlier delivery on this thread is not this one's.
    egress::take_refusal();
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
        Err(ureq::Error::Transport(error)) => match egress::take_refusal() {
            // The destination will resolve to the same place next time: no retry.
            Some(refusal) => Outcome::Fatal(refusal),
            None => Outcome::Retry(format!("could not deliver: {error}")),
        },
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
            egress: Arc::default(),
            webhook_ca: None,
            email_allow_domains: None,
            smtp: None,
            smtp_from: "percore@localhost".into(),
        };
        let kinds =
            |options: &KindOptions| JobKinds::new(JobKinds::builtin(options).unwrap()).unwrap();
        let validate = |queue: &str, payload: &Value, options: &KindOptions| {
            kinds(options).validate(queue, payload)
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
        let inside = serde_json::json!({"url": "http://127.0.0.1:9/admin", "payload": 1});
        assert!(validate("webhook", &inside, &options)
            .unwrap_err()
            .contains("--webhook-allow"));
        let fax = validate("fax", &serde_json::json!({}), &options).unwrap_err();
        assert!(fax.contains("no job kind `fax`; known kinds: webhook, email"));
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
        options.email_allow_domains = Some(vec!["example.org".into()]);
        let elsewhere = validate("email", &mail, &options).unwrap_err();
        assert!(elsewhere.contains("example.com"), "{elsewhere}");
        let allowed = serde_json::json!({"to": "A <a@Example.ORG>", "subject": "s", "text": "t"});
        assert!(validate("email", &allowed, &options).is_ok());
    }

    #[test]
    fn registered_kinds_run_and_clash() {
        let echo = JobKind::new(
            "echo",
            |payload| {
                payload
                    .get("say")
                    .map(|_| ())
                    .ok_or_else(|| "say what?".to_owned())
            },
            |job| {
                Outcome::Succeeded(
                    serde_json::json!({ "said": job.payload["say"], "attempt": job.attempt }),
                )
            },
        );
        let kinds = JobKinds::new(vec![echo.clone()]).unwrap();
        assert_eq!(
            kinds.validate("echo", &serde_json::json!({})).unwrap_err(),
            "say what?"
        );
        let payload = serde_json::json!({"say": "hi"});
        let job = Job {
            id: 7,
            queue: "echo",
            payload: &payload,
            attempt: 2,
        };
        assert_eq!(
            kinds.run(&job),
            Outcome::Succeeded(serde_json::json!({"said": "hi", "attempt": 2}))
        );
        let clash = JobKinds::new(vec![echo.clone(), echo]).unwrap_err();
        assert!(clash.contains("`echo` is registered twice"), "{clash}");
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
