//! JWT verification against real signatures: tokens are signed here with the test-only keys in
//! `tests/fixtures` (see its README) and checked by a `JwtVerifier` built from a config.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tenantsync_auth::jwt::{JwtConfig, JwtError, JwtVerifier, looks_like_jwt};
use tenantsync_auth::{Access, Grant, Scope};
use tenantsync_core::{DatasetName, TenantId};

const AUDIENCE: &str = "tenantsync";
const ISSUER: &str = "https://idp.example";
const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn hs256_config() -> JwtConfig {
    JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        jwks_file: None,
        audience: AUDIENCE.to_owned(),
        issuer: ISSUER.to_owned(),
        tenant_claim: "tenant".to_owned(),
        scope_claim: "scope".to_owned(),
        leeway_secs: 30,
    }
}

fn jwks_config(path: impl Into<PathBuf>) -> JwtConfig {
    JwtConfig {
        hs256_secret: None,
        jwks_file: Some(path.into()),
        ..hs256_config()
    }
}

fn hs256() -> JwtVerifier {
    JwtVerifier::new(&hs256_config()).unwrap()
}

fn jwks(name: &str) -> JwtVerifier {
    JwtVerifier::new(&jwks_config(fixture(name))).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Valid claims for tenant `acme`, with `changes` applied: a `null` removes the claim.
fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": now() + 3600,
        "iat": now(),
        "tenant": "acme",
        "scope": "read write:inventory",
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn secret_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture("rsa1.key.pem")).unwrap()
}

fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture("rsa2.key.pem")).unwrap()
}

fn ec1() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_fixture("ec1.key.pem")).unwrap()
}

fn hs256_token(changes: Value) -> String {
    sign(Algorithm::HS256, None, &secret_key(), &claims(changes))
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

fn ds(s: &str) -> DatasetName {
    DatasetName::new(s).unwrap()
}

fn t(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn scope_strings(grant: &Grant) -> Vec<String> {
    grant.scopes.iter().map(Scope::to_string).collect()
}

macro_rules! assert_refused {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err(error @ $pattern) => error,
            other => panic!("expected {}, got {other:?}", stringify!($pattern)),
        }
    };
}

#[test]
fn hs256_token_is_accepted() {
    let grant = hs256().verify(&hs256_token(json!({}))).unwrap();
    assert_eq!(grant.subject, "jwt:alice");
    assert_eq!(
        scope_strings(&grant),
        ["read:*:acme", "write:inventory:acme"]
    );
    assert!(grant.allows(Access::Read, &ds("users"), &t("acme")));
    assert!(grant.allows(Access::Write, &ds("inventory"), &t("acme")));
    assert!(!grant.allows(Access::Write, &ds("users"), &t("acme")));
    assert!(!grant.is_admin());
}

#[test]
fn hs256_token_signed_with_another_secret_is_refused() {
    let other = EncodingKey::from_secret(b"another-test-only-secret-0123456789abcdef");
    let token = sign(Algorithm::HS256, None, &other, &claims(json!({})));
    assert_refused!(hs256().verify(&token), JwtError::BadSignature);
}

#[test]
fn rs256_token_is_accepted_with_or_without_kid() {
    let verifier = jwks("rsa1.jwks.json");
    for kid in [Some("rsa-1"), None] {
        let token = sign(Algorithm::RS256, kid, &rsa1(), &claims(json!({})));
        let grant = verifier.verify(&token).unwrap();
        assert_eq!(grant.subject, "jwt:alice");
        assert_eq!(
            scope_strings(&grant),
            ["read:*:acme", "write:inventory:acme"]
        );
    }
}

#[test]
fn es256_token_is_accepted() {
    let verifier = jwks("ec1.jwks.json");
    let token = sign(Algorithm::ES256, Some("ec-1"), &ec1(), &claims(json!({})));
    let grant = verifier.verify(&token).unwrap();
    assert_eq!(grant.subject, "jwt:alice");
    assert!(grant.allows(Access::Read, &ds("inventory"), &t("acme")));
}

#[test]
fn kid_selects_among_several_keys() {
    let verifier = jwks("all.jwks.json");
    let c = claims(json!({}));
    verifier
        .verify(&sign(Algorithm::RS256, Some("rsa-1"), &rsa1(), &c))
        .unwrap();
    verifier
        .verify(&sign(Algorithm::RS256, Some("rsa-2"), &rsa2(), &c))
        .unwrap();
    verifier
        .verify(&sign(Algorithm::ES256, Some("ec-1"), &ec1(), &c))
        .unwrap();
    // Without a kid, ES256 has one candidate key and RS256 two.
    verifier
        .verify(&sign(Algorithm::ES256, None, &ec1(), &c))
        .unwrap();
    assert_refused!(
        verifier.verify(&sign(Algorithm::RS256, None, &rsa2(), &c)),
        JwtError::AmbiguousKey
    );
    // The kid picks the key: rsa2's signature is checked with rsa-1 and fails.
    assert_refused!(
        verifier.verify(&sign(Algorithm::RS256, Some("rsa-1"), &rsa2(), &c)),
        JwtError::BadSignature
    );
}

#[test]
fn unknown_kid_is_refused() {
    let token = sign(Algorithm::RS256, Some("rsa-9"), &rsa1(), &claims(json!({})));
    assert_refused!(jwks("all.jwks.json").verify(&token), JwtError::UnknownKey);
    // A kid-less token whose algorithm no key has.
    let token = sign(Algorithm::ES256, None, &ec1(), &claims(json!({})));
    assert_refused!(jwks("rsa1.jwks.json").verify(&token), JwtError::UnknownKey);
}

#[test]
fn expired_token_is_refused_past_the_leeway() {
    let expired = hs256_token(json!({ "exp": now() - 3600 }));
    let err = assert_refused!(hs256().verify(&expired), JwtError::Expired);
    assert_eq!(err.to_string(), "the token has expired");

    // Ten seconds late: inside a 30 s leeway, outside a zero one.
    let late = hs256_token(json!({ "exp": now() - 10 }));
    hs256().verify(&late).unwrap();
    let strict = JwtVerifier::new(&JwtConfig {
        leeway_secs: 0,
        ..hs256_config()
    })
    .unwrap();
    assert_refused!(strict.verify(&late), JwtError::Expired);
}

#[test]
fn token_without_exp_is_refused() {
    let token = hs256_token(json!({ "exp": null }));
    let err = assert_refused!(hs256().verify(&token), JwtError::MissingClaim { .. });
    assert_eq!(err.to_string(), "the token has no exp claim");
    let token = hs256_token(json!({ "exp": "tomorrow" }));
    assert!(hs256().verify(&token).is_err());
}

#[test]
fn token_not_valid_yet_is_refused() {
    let future = hs256_token(json!({ "nbf": now() + 3600 }));
    assert_refused!(hs256().verify(&future), JwtError::NotYetValid);
    let past = hs256_token(json!({ "nbf": now() - 60 }));
    hs256().verify(&past).unwrap();
}

#[test]
fn wrong_audience_is_refused() {
    let token = hs256_token(json!({ "aud": "another-service" }));
    let err = assert_refused!(hs256().verify(&token), JwtError::Audience);
    assert_eq!(err.to_string(), "the token's audience is not accepted");
    let token = hs256_token(json!({ "aud": ["another-service", "yet-another"] }));
    assert_refused!(hs256().verify(&token), JwtError::Audience);
    let token = hs256_token(json!({ "aud": null }));
    assert_refused!(hs256().verify(&token), JwtError::MissingClaim { .. });
    // An audience list naming us is fine (RFC 7519 section 4.1.3).
    let token = hs256_token(json!({ "aud": ["another-service", AUDIENCE] }));
    hs256().verify(&token).unwrap();
}

#[test]
fn wrong_issuer_is_refused() {
    let token = hs256_token(json!({ "iss": "https://evil.example" }));
    assert_refused!(hs256().verify(&token), JwtError::Issuer);
    let token = hs256_token(json!({ "iss": [ISSUER] }));
    assert_refused!(hs256().verify(&token), JwtError::Issuer);
    let token = hs256_token(json!({ "iss": null }));
    assert_refused!(hs256().verify(&token), JwtError::MissingClaim { .. });
}

#[test]
fn missing_tenant_claim_is_refused() {
    let token = hs256_token(json!({ "tenant": null }));
    let err = assert_refused!(hs256().verify(&token), JwtError::MissingClaim { .. });
    assert_eq!(err.to_string(), "the token has no tenant claim");

    // The claim's name is configurable; the default one then counts for nothing.
    let org = JwtVerifier::new(&JwtConfig {
        tenant_claim: "org".into(),
        ..hs256_config()
    })
    .unwrap();
    assert_refused!(
        org.verify(&hs256_token(json!({}))),
        JwtError::MissingClaim { .. }
    );
    let grant = org
        .verify(&hs256_token(json!({ "org": "globex", "tenant": "acme" })))
        .unwrap();
    assert!(grant.allows(Access::Read, &ds("inventory"), &t("globex")));
    assert!(!grant.allows(Access::Read, &ds("inventory"), &t("acme")));
}

#[test]
fn invalid_tenant_id_is_refused_without_echoing_it() {
    for tenant in [
        json!("ACME"),
        json!("Acme"),
        json!(" acme"),
        json!("acme "),
        json!(""),
        json!("acme:other"),
        json!("*"),
        json!(42),
        json!(["acme"]),
    ] {
        let token = hs256_token(json!({ "tenant": tenant }));
        let err = assert_refused!(hs256().verify(&token), JwtError::InvalidTenant { .. });
        assert_eq!(
            err.to_string(),
            "the token's tenant claim is not a valid tenant id"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused_when_only_jwks_is_configured() {
    // The classic algorithm confusion: a verifier that let the header pick HMAC would check this
    // with the (public) RSA key as the secret and accept it.
    let public_pem = read_fixture("rsa1.pub.pem");
    let forged_key = EncodingKey::from_secret(&public_pem);
    let c = claims(json!({}));
    let verifier = jwks("rsa1.jwks.json");
    for kid in [Some("rsa-1"), None] {
        let forged = sign(Algorithm::HS256, kid, &forged_key, &c);
        assert_refused!(verifier.verify(&forged), JwtError::AlgorithmNotAccepted);
    }
    // Nor may a token name an RSA key with an EC algorithm, or use RSA algorithms the JWKS
    // rules leave out.
    let es = sign(Algorithm::ES256, Some("rsa-1"), &ec1(), &c);
    assert_refused!(
        jwks("all.jwks.json").verify(&es),
        JwtError::AlgorithmMismatch
    );
    let ps = sign(Algorithm::PS256, Some("rsa-1"), &rsa1(), &c);
    assert_refused!(verifier.verify(&ps), JwtError::AlgorithmNotAccepted);
    // And a shared-secret verifier takes nothing but HS256.
    let rs = sign(Algorithm::RS256, None, &rsa1(), &c);
    assert_refused!(hs256().verify(&rs), JwtError::AlgorithmNotAccepted);
    let hs512 = sign(Algorithm::HS512, None, &secret_key(), &c);
    assert_refused!(hs256().verify(&hs512), JwtError::AlgorithmNotAccepted);
}

#[test]
fn none_algorithm_is_refused() {
    let payload = b64(&claims(json!({})));
    for header in [
        json!({ "alg": "none", "typ": "JWT" }),
        json!({ "alg": "None" }),
        json!({ "alg": "none", "kid": "rsa-1" }),
    ] {
        for signature in ["", "c2ln"] {
            let token = format!("{}.{payload}.{signature}", b64(&header));
            assert!(looks_like_jwt(&token));
            assert_refused!(hs256().verify(&token), JwtError::AlgorithmNotAccepted);
            assert_refused!(
                jwks("all.jwks.json").verify(&token),
                JwtError::AlgorithmNotAccepted
            );
        }
    }
}

#[test]
fn tampered_payload_is_refused() {
    let tampered = |token: &str| {
        let parts: Vec<&str> = token.split('.').collect();
        let evil = b64(&claims(
            json!({ "tenant": "globex", "scope": "read write" }),
        ));
        format!("{}.{evil}.{}", parts[0], parts[2])
    };
    let c = claims(json!({}));
    assert_refused!(
        hs256().verify(&tampered(&hs256_token(json!({})))),
        JwtError::BadSignature
    );
    let rs = sign(Algorithm::RS256, Some("rsa-1"), &rsa1(), &c);
    assert_refused!(
        jwks("rsa1.jwks.json").verify(&tampered(&rs)),
        JwtError::BadSignature
    );
    let es = sign(Algorithm::ES256, Some("ec-1"), &ec1(), &c);
    assert_refused!(
        jwks("ec1.jwks.json").verify(&tampered(&es)),
        JwtError::BadSignature
    );
    // A signature one byte short, and a header changed after signing.
    let (signed, signature) = rs.rsplit_once('.').unwrap();
    let mut short = URL_SAFE_NO_PAD.decode(signature).unwrap();
    short.pop();
    let truncated = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(short));
    assert_refused!(
        jwks("rsa1.jwks.json").verify(&truncated),
        JwtError::BadSignature
    );
    let parts: Vec<&str> = rs.split('.').collect();
    let reheaded = format!(
        "{}.{}.{}",
        b64(&json!({ "alg": "RS256", "kid": "rsa-1", "typ": "at+jwt" })),
        parts[1],
        parts[2]
    );
    assert_refused!(
        jwks("rsa1.jwks.json").verify(&reheaded),
        JwtError::BadSignature
    );
}

#[test]
fn garbage_is_malformed() {
    for token in ["", "tsk_abc", "a.b.c", "a.b", "e30.e30.e30", "not a token"] {
        assert!(
            matches!(
                hs256().verify(token),
                Err(JwtError::Malformed | JwtError::AlgorithmNotAccepted)
            ),
            "{token:?}"
        );
    }
    let err = assert_refused!(hs256().verify("a.b.c"), JwtError::Malformed);
    assert_eq!(err.to_string(), "the token is not a well-formed JWT");
}

#[test]
fn critical_header_extensions_are_refused() {
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let token = jsonwebtoken::encode(&header, &claims(json!({})), &secret_key()).unwrap();
    assert_refused!(hs256().verify(&token), JwtError::CriticalHeader);
}

#[test]
fn scope_claim_may_be_a_string_or_an_array() {
    let from_string = hs256()
        .verify(&hs256_token(
            json!({ "scope": "read:inventory  write:users\tread:*" }),
        ))
        .unwrap();
    let from_array = hs256()
        .verify(&hs256_token(
            json!({ "scope": ["read:inventory", "write:users", "read:*"] }),
        ))
        .unwrap();
    let expected = ["read:inventory:acme", "write:users:acme", "read:*:acme"];
    assert_eq!(scope_strings(&from_string), expected);
    assert_eq!(scope_strings(&from_array), expected);

    // The claim's name is configurable (Azure AD uses `scp`).
    let scp = JwtVerifier::new(&JwtConfig {
        scope_claim: "scp".into(),
        ..hs256_config()
    })
    .unwrap();
    let grant = scp
        .verify(&hs256_token(json!({ "scp": ["write"], "scope": "read" })))
        .unwrap();
    assert_eq!(scope_strings(&grant), ["write:*:acme"]);

    let token = hs256_token(json!({ "scope": { "read": true } }));
    assert_refused!(hs256().verify(&token), JwtError::MalformedClaim { .. });
}

#[test]
fn unknown_scope_items_are_ignored_and_no_scope_claim_grants_nothing() {
    let grant = hs256()
        .verify(&hs256_token(json!({
            "scope": "openid profile email offline_access read:inventory read:inventory:globex read:Inventory delete"
        })))
        .unwrap();
    assert_eq!(scope_strings(&grant), ["read:inventory:acme"]);
    let grant = hs256()
        .verify(&hs256_token(
            json!({ "scope": ["openid", 7, null, "write"] }),
        ))
        .unwrap();
    assert_eq!(scope_strings(&grant), ["write:*:acme"]);

    for no_scopes in [
        json!({ "scope": null }),
        json!({ "scope": "" }),
        json!({ "scope": [] }),
    ] {
        let grant = hs256().verify(&hs256_token(no_scopes)).unwrap();
        assert!(grant.scopes.is_empty());
        assert!(!grant.allows(Access::Read, &ds("inventory"), &t("acme")));
        assert!(!grant.allows(Access::Write, &ds("inventory"), &t("acme")));
    }
}

#[test]
fn admin_is_never_granted_by_a_jwt() {
    for scope in [json!("admin"), json!(["admin"]), json!("admin read")] {
        let grant = hs256()
            .verify(&hs256_token(json!({ "scope": scope })))
            .unwrap();
        assert!(!grant.is_admin());
        assert!(!grant.allows(Access::Write, &ds("inventory"), &t("acme")));
        assert!(!grant.allows(Access::Read, &ds("inventory"), &t("globex")));
    }
}

#[test]
fn grant_allows_exactly_its_tenant() {
    let grant = hs256()
        .verify(&hs256_token(
            json!({ "scope": "read write read:*:* write:*:*" }),
        ))
        .unwrap();
    assert_eq!(scope_strings(&grant), ["read:*:acme", "write:*:acme"]);
    for access in [Access::Read, Access::Write] {
        assert!(grant.allows(access, &ds("inventory"), &t("acme")));
        for other in ["acme2", "acm", "globex", "acme-"] {
            assert!(
                !grant.allows(access, &ds("inventory"), &t(other)),
                "{other}"
            );
        }
    }
    // `ACME` is not even a tenant id: a token naming it is refused, not folded to `acme`.
    assert_refused!(
        hs256().verify(&hs256_token(json!({ "tenant": "ACME" }))),
        JwtError::InvalidTenant { .. }
    );
}

#[test]
fn subject_is_the_sub_claim_or_the_tenant() {
    let grant = hs256()
        .verify(&hs256_token(json!({ "sub": null })))
        .unwrap();
    assert_eq!(grant.subject, "jwt:acme");
    let grant = hs256()
        .verify(&hs256_token(json!({ "sub": "svc|ingest@acme" })))
        .unwrap();
    assert_eq!(grant.subject, "jwt:svc|ingest@acme");
    for bad in [json!("alice\nforged log line"), json!(""), json!(42)] {
        let token = hs256_token(json!({ "sub": bad }));
        assert_refused!(hs256().verify(&token), JwtError::MalformedClaim { .. });
    }
}

#[test]
fn errors_do_not_echo_claim_values() {
    for changes in [
        json!({ "tenant": "NOT-A-TENANT-marker" }),
        json!({ "aud": "aud-marker" }),
        json!({ "iss": "iss-marker" }),
        json!({ "sub": "sub-marker\u{7}" }),
    ] {
        let err = hs256().verify(&hs256_token(changes)).unwrap_err();
        assert!(!err.to_string().contains("marker"), "{err}");
        assert!(!format!("{err:?}").contains("marker"), "{err:?}");
    }
}

fn write_jwks(dir: &Path, jwks: &Value) -> PathBuf {
    let path = dir.join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(jwks).unwrap()).unwrap();
    path
}

fn fixture_jwk(file: &str, index: usize) -> Value {
    let jwks: Value = serde_json::from_slice(&read_fixture(file)).unwrap();
    jwks["keys"][index].clone()
}

#[test]
fn bad_jwks_files_are_refused_when_the_verifier_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = fixture_jwk("rsa1.jwks.json", 0);
    let ec = fixture_jwk("ec1.jwks.json", 0);
    let with = |key: &Value, changes: Value| {
        let mut key = key.clone();
        for (name, value) in changes.as_object().unwrap() {
            key[name] = value.clone();
        }
        key
    };
    let cases = [
        (json!({ "keys": [] }), "no usable"),
        (json!([rsa.clone()]), "not a JWKS"),
        (
            json!({ "keys": [{ "kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET) }] }),
            "no usable",
        ),
        (
            json!({ "keys": [with(&rsa, json!({ "use": "enc" }))] }),
            "no usable",
        ),
        (
            json!({ "keys": [with(&rsa, json!({ "alg": "PS256" }))] }),
            "no usable",
        ),
        (
            json!({ "keys": [with(&ec, json!({ "crv": "P-384" }))] }),
            "no usable",
        ),
        (
            json!({ "keys": [with(&rsa, json!({ "d": "AQAB" }))] }),
            "private key",
        ),
        (
            json!({ "keys": [with(&rsa, json!({ "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]) }))] }),
            "1024-bit",
        ),
        (
            json!({ "keys": [with(&rsa, json!({ "e": "Ag" }))] }),
            "exponent",
        ),
        (
            json!({ "keys": [with(&rsa, json!({ "n": "not base64!" }))] }),
            "base64url",
        ),
        (
            json!({ "keys": [with(&ec, json!({ "y": ec["x"].clone() }))] }),
            "not a point",
        ),
        (
            json!({ "keys": [with(&ec, json!({ "x": "AQAB" }))] }),
            "32 bytes",
        ),
        (json!({ "keys": [rsa.clone(), rsa.clone()] }), "same kid"),
    ];
    for (jwks, reason) in cases {
        let path = write_jwks(dir.path(), &jwks);
        match JwtVerifier::new(&jwks_config(&path)) {
            Err(JwtError::Jwks { reason: got, .. }) => {
                assert!(
                    got.contains(reason),
                    "{jwks}: {got:?} should mention {reason:?}"
                )
            }
            other => panic!("{jwks}: expected a jwks error, got {other:?}"),
        }
    }

    // Keys for other uses are skipped, not fatal, when a usable one remains.
    let path = write_jwks(
        dir.path(),
        &json!({ "keys": [
            { "kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET), "kid": "rsa-1" },
            with(&rsa, json!({ "use": "enc", "alg": "RSA-OAEP", "kid": "enc-1" })),
            { "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
            rsa.clone(),
        ] }),
    );
    let verifier = JwtVerifier::new(&jwks_config(&path)).unwrap();
    let c = claims(json!({}));
    verifier
        .verify(&sign(Algorithm::RS256, None, &rsa1(), &c))
        .unwrap();
    // The symmetric key shares rsa-1's kid but is never used for HMAC.
    let hs = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &c,
    );
    assert_refused!(verifier.verify(&hs), JwtError::AlgorithmNotAccepted);

    let missing = dir.path().join("missing.json");
    assert_refused!(
        JwtVerifier::new(&jwks_config(&missing)),
        JwtError::JwksRead { .. }
    );
    assert_refused!(
        JwtVerifier::new(&JwtConfig {
            hs256_secret: Some(SECRET.into()),
            ..jwks_config(&missing)
        }),
        JwtError::Config {
            field: "hs256_secret",
            ..
        }
    );
}
