use super::*;
use jsonwebtoken::{encode, EncodingKey, Header as JwtHeader};
use serde_json::json;

const SECRET: &[u8] = b"a shared secret of thirty-two bytes!";

fn header<'a>(name: &'a str, value: &'a str) -> Header<'a> {
    Header {
        name,
        value: value.as_bytes(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn keys_file(dir: &std::path::Path, entries: &[(&str, &str, &[&str])]) -> PathBuf {
    let mut text = String::new();
    for (name, secret, scopes) in entries {
        text.push_str(&format!(
            "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = {scopes:?}\n",
            keys::digest_hex(secret)
        ));
    }
    let path = dir.join("keys.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("percore-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hs256_auth(issuer: Option<&str>, audience: Option<&str>) -> Arc<Auth> {
    Auth::new(AuthOptions {
        jwt: Some(JwtOptions {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            scope_claim: "scope".into(),
            ..JwtOptions::default()
        }),
        ..AuthOptions::default()
    })
    .unwrap()
}

fn token(claims: serde_json::Value) -> String {
    encode(
        &JwtHeader::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn check(
    auth: &Auth,
    method: &str,
    path: &str,
    credential: Option<&str>,
) -> Result<Option<Verified>, AuthError> {
    let bearer = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<Header<'_>> = bearer
        .as_deref()
        .map(|b| header("Authorization", b))
        .into_iter()
        .collect();
    auth.check(
        method,
        path,
        &headers,
        &mut CredentialCache::default(),
        Instant::now(),
    )
}

#[test]
fn default_rules_open_reads_and_guard_writes_jobs_and_operators() {
    let auth = Auth::new(AuthOptions::default()).unwrap();
    let scope = |name| Access::Scope(auth.scope_bit(name).unwrap());
    assert_eq!(auth.access("GET", "/healthz"), Access::Public);
    assert_eq!(auth.access("GET", "/v1/items/1"), Access::Public);
    assert_eq!(auth.access("HEAD", "/v1/items/1"), Access::Public);
    assert_eq!(auth.access("PUT", "/v1/items/1"), scope("write"));
    assert_eq!(auth.access("DELETE", "/v1/items/1"), scope("write"));
    assert_eq!(auth.access("POST", "/v1/jobs/webhook"), scope("jobs"));
    assert_eq!(auth.access("GET", "/v1/jobs/17"), scope("jobs"));
    assert_eq!(auth.access("POST", "/v1/jobs/email"), scope("email"));
    assert_eq!(auth.access("POST", "/v1/jobs/17/redrive"), scope("admin"));
    assert_eq!(auth.access("GET", "/v1/dead"), scope("admin"));
    assert_eq!(auth.access("GET", "/metrics"), scope("admin"));
    assert_eq!(auth.access("POST", "/admin/drain"), scope("admin"));
    // Percent-encoding does not slip past a rule.
    assert_eq!(auth.access("GET", "/%6detrics"), scope("admin"));
}

#[test]
fn a_deployments_rules_come_first() {
    let auth = Auth::new(AuthOptions {
        rules: vec![RuleSpec::new(Some("GET"), "/v1/private/*", "read")],
        ..AuthOptions::default()
    })
    .unwrap();
    let read = Access::Scope(auth.scope_bit("read").unwrap());
    assert_eq!(auth.access("GET", "/v1/private/1"), read);
    assert_eq!(auth.access("GET", "/v1/public/1"), Access::Public);
}

#[test]
fn api_keys_from_either_header_with_their_scopes() {
    let dir = temp_dir("keys");
    let path = keys_file(
        &dir,
        &[
            ("writer", "w-secret", &["write"]),
            ("reader", "r-secret", &[]),
        ],
    );
    let auth = Auth::new(AuthOptions {
        keys_file: Some(path),
        ..AuthOptions::default()
    })
    .unwrap();
    assert_eq!(
        check(&auth, "PUT", "/v1/a/b", None),
        Err(AuthError::Missing)
    );
    assert!(check(&auth, "PUT", "/v1/a/b", Some("w-secret"))
        .unwrap()
        .is_some());
    assert!(matches!(
        check(&auth, "PUT", "/v1/a/b", Some("r-secret")),
        Err(AuthError::Forbidden { scope, .. }) if scope == "write"
    ));
    assert_eq!(
        check(&auth, "PUT", "/v1/a/b", Some("nope")),
        Err(AuthError::Invalid("unknown API key"))
    );
    // A bad credential is refused on a public route too.
    assert_eq!(
        check(&auth, "GET", "/v1/a/b", Some("nope")),
        Err(AuthError::Invalid("unknown API key"))
    );
    assert_eq!(check(&auth, "GET", "/v1/a/b", None), Ok(None));
    let mut cache = CredentialCache::default();
    let by_header = auth
        .check(
            "PUT",
            "/v1/a/b",
            &[header("X-API-Key", "w-secret")],
            &mut cache,
            Instant::now(),
        )
        .unwrap()
        .unwrap();
    let by_bearer = check(&auth, "PUT", "/v1/a/b", Some("w-secret"))
        .unwrap()
        .unwrap();
    assert_eq!(by_header.principal, by_bearer.principal);
    let basic = auth.check(
        "PUT",
        "/v1/a/b",
        &[header("Authorization", "Basic dXNlcjpwYXNz")],
        &mut cache,
        Instant::now(),
    );
    assert!(matches!(basic, Err(AuthError::Invalid(_))));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_changed_keys_file_takes_effect_and_a_broken_one_does_not() {
    let dir = temp_dir("reload");
    let path = keys_file(&dir, &[("old", "old-secret", &["write"])]);
    let auth = Auth::new(AuthOptions {
        keys_file: Some(path.clone()),
        ..AuthOptions::default()
    })
    .unwrap();
    let mut cache = CredentialCache::default();
    let put = |auth: &Auth, cache: &mut CredentialCache, key: &str| {
        auth.check(
            "PUT",
            "/v1/a/b",
            &[header("X-API-Key", key)],
            cache,
            Instant::now(),
        )
    };
    assert!(put(&auth, &mut cache, "old-secret").is_ok());
    assert!(!auth.reload_if_changed());
    keys_file(&dir, &[("new", "new-secret", &["write"])]);
    // The same size and second is possible: make the change visible to stat.
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    assert!(auth.reload_if_changed());
    assert!(
        put(&auth, &mut cache, "old-secret").is_err(),
        "a cached key outlived its removal"
    );
    assert!(put(&auth, &mut cache, "new-secret").is_ok());
    std::fs::write(&path, "not [toml").unwrap();
    assert!(!auth.reload_if_changed());
    assert!(
        put(&auth, &mut cache, "new-secret").is_ok(),
        "a broken file locked everyone out"
    );
    assert_eq!(auth.reload_counts(), (1, 1));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hs256_tokens_are_checked_claim_by_claim() {
    let auth = hs256_auth(Some("https://issuer.example"), Some("percore"));
    let now = unix_now();
    let good = json!({"sub": "svc", "iss": "https://issuer.example", "aud": "percore",
                      "exp": now + 600, "scope": "read write"});
    assert!(check(&auth, "PUT", "/v1/a/b", Some(&token(good.clone())))
        .unwrap()
        .is_some());
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[key] = value;
        check(&auth, "PUT", "/v1/a/b", Some(&token(claims)))
    };
    assert_eq!(
        with("exp", json!(now - 120)),
        Err(AuthError::Invalid("token expired"))
    );
    assert_eq!(
        with("nbf", json!(now + 600)),
        Err(AuthError::Invalid("token not valid yet (nbf)"))
    );
    assert_eq!(
        with("iss", json!("https://evil.example")),
        Err(AuthError::Invalid("wrong issuer"))
    );
    assert_eq!(
        with("aud", json!("someone-else")),
        Err(AuthError::Invalid("wrong audience"))
    );
    assert!(matches!(
        with("scope", json!("read")),
        Err(AuthError::Forbidden { .. })
    ));
    assert!(with("scope", json!(["write"])).is_ok());
    let forged = encode(
        &JwtHeader::default(),
        &good,
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    assert_eq!(
        check(&auth, "PUT", "/v1/a/b", Some(&forged)),
        Err(AuthError::Invalid("bad signature"))
    );
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert!(check(&auth, "PUT", "/v1/a/b", Some(&token(no_exp))).is_err());
}

#[test]
fn a_cached_token_stops_at_its_expiry() {
    let auth = hs256_auth(None, None);
    let now = unix_now();
    let short = token(json!({"sub": "svc", "exp": now + 1, "scope": "write"}));
    let headers = [header("Authorization", "")];
    let bearer = format!("Bearer {short}");
    let headers = [Header {
        value: bearer.as_bytes(),
        ..headers[0]
    }];
    let mut cache = CredentialCache::default();
    let t0 = Instant::now();
    assert!(auth
        .check("PUT", "/v1/a/b", &headers, &mut cache, t0)
        .is_ok());
    assert_eq!(cache.len(), 1);
    // Past exp and the leeway, the cached entry is gone and verification refuses it.
    let later = t0 + jwt::LEEWAY + Duration::from_secs(5);
    assert_eq!(
        cache.get(
            short.as_bytes(),
            auth.generation.load(Ordering::Acquire),
            later
        ),
        None
    );
}

#[test]
fn es256_tokens_against_a_key_set() {
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
                                "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    let dir = temp_dir("jwks");
    let set = dir.join("jwks.json");
    std::fs::write(&set, jwks.to_string()).unwrap();
    let auth = Auth::new(AuthOptions {
        jwt: Some(JwtOptions {
            key_set: Some(set),
            scope_claim: "scope".into(),
            ..JwtOptions::default()
        }),
        ..AuthOptions::default()
    })
    .unwrap();
    let mut header = JwtHeader::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = json!({"sub": "svc", "exp": unix_now() + 600, "scope": "write"});
    let signed = encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    assert!(check(&auth, "PUT", "/v1/a/b", Some(&signed))
        .unwrap()
        .is_some());
    header.kid = Some("k2".into());
    let unknown_kid = encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    assert!(matches!(
        check(&auth, "PUT", "/v1/a/b", Some(&unknown_kid)),
        Err(AuthError::Invalid(_))
    ));
    // An HS256 token is not accepted where only the key set is configured.
    let hs = token(claims);
    assert!(matches!(
        check(&auth, "PUT", "/v1/a/b", Some(&hs)),
        Err(AuthError::Invalid(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn errors_carry_their_status_and_challenge() {
    assert_eq!(AuthError::Missing.status(), 401);
    assert_eq!(AuthError::Missing.header().unwrap().0, "WWW-Authenticate");
    assert!(AuthError::Invalid("x")
        .header()
        .unwrap()
        .1
        .contains("invalid_token"));
    let forbidden = AuthError::Forbidden {
        scope: "write".into(),
        challenge: "Bearer realm=\"percore\", error=\"insufficient_scope\", scope=\"write\"".into(),
    };
    assert_eq!(forbidden.status(), 403);
    assert!(forbidden.header().unwrap().1.contains("scope=\"write\""));
}
