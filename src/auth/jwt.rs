//! JWT bearer tokens: HS256 against a shared secret, RS256 and ES256 against a key set file (JWKS), with `exp`, `nbf`, `iss` and `aud` checked.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::AuthSetupError;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// What a deployment's tokens must satisfy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtOptions {
    /// The HS256 secret (read from a file: argv is visible to every user).
    pub hs256_secret: Option<Vec<u8>>,
    /// A JWKS file with the RS256 / ES256 public keys.
    pub key_set: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim holding the scopes: a space-separated string or an array.
    pub scope_claim: String,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `iss` and `sub`: who the token speaks for.
    pub principal: String,
    pub scopes: Vec<String>,
    /// When `exp` says the token stops being valid.
    pub expires: SystemTime,
}

/// Verifies tokens against the configured keys. Built again when the key set file changes.
pub struct JwtVerifier {
    options: JwtOptions,
    hs256: Option<DecodingKey>,
    key_set: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("keys", &self.key_set.len())
            .finish()
    }
}

impl JwtVerifier {
    pub fn new(options: &JwtOptions) -> Result<Self, AuthSetupError> {
        let key_set = match &options.key_set {
            None => Vec::new(),
            Some(path) => load_key_set(path)?,
        };
        Ok(Self {
            hs256: options
                .hs256_secret
                .as_deref()
                .map(DecodingKey::from_secret),
            key_set,
            options: options.clone(),
        })
    }

    /// Checks a token's signature and claims. The error says what was
    /// wrong, never what the token holds.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or("HS256 tokens are not accepted here")?,
            Algorithm::RS256 | Algorithm::ES256 => self
                .key_set
                .iter()
                .find(|(kid, alg, _)| {
                    *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
                })
                .map(|(_, _, key)| key)
                .ok_or("no key of the key set matches the token's `kid` and `alg`")?,
            _ => return Err("the token's algorithm is not accepted (HS256, RS256, ES256 are)"),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.options.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.options.issuer {
            validation.set_issuer(&[issuer]);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks `exp` or `sub`",
                _ => "malformed token",
            },
        )?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or("`sub` is not a string")?;
        let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or("`exp` is not a number of seconds")?;
        let scopes = match claims.get(&self.options.scope_claim) {
            None => Vec::new(),
            Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err("the scope claim is neither a string nor an array"),
        };
        Ok(VerifiedToken {
            principal: format!("{issuer}\u{0}{subject}"),
            scopes,
            expires: UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

fn load_key_set(
    path: &Path,
) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, AuthSetupError> {
    let invalid = |reason: String| AuthSetupError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| invalid(format!("not a JWK set: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let name = kid.clone().unwrap_or_else(|| "(no kid)".into());
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => {
                return Err(invalid(format!(
                    "key {name}: only RSA (RS256) and P-256 (ES256) keys are accepted"
                )))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key {name}: {e}")))?;
        keys.push((kid, algorithm, key));
    }
    if keys.is_empty() {
        return Err(invalid("the key set holds no keys".into()));
    }
    Ok(keys)
}
