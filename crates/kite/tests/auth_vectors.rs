//! Byte-for-byte JWT vectors: PROTOCOL.md Appendix B and the Go wire captures
//! (square_kitekey_auth.txt, square_token_auth.txt, gettoken.txt, getkites.txt).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kite::auth::{sign_claims, AuthSettings, Authenticator, Claims, KeyError, KeyPair, PublicKey};
use kite::kitekey::KiteKey;
use kite_protocol::Kite;

/// Appendix B throw-away 1024-bit key (PKCS#1).
const APPENDIX_B_PRIVATE: &str = concat!(
    "-----BEGIN RSA PRIVATE KEY-----\n",
    "MIICXQIBAAKBgQDYPrBfLm+ueSjNCxIfwb0Nubj9KTFU2nk6xVvgQnMre5dun3M9\n",
    "sMTaLBxNks3ozuRZFUUpO6SrFWQAySwS8Z4QolCsD2+0X2I0DUxasAh0Oo60/J+9\n",
    "OaHue17HKxzBZRN0vErQ3xxSN6UybBzmq06Rm+kFnFTYbYSTPJbeXi59YQIDAQAB\n",
    "AoGANKNl6XVzSCREE017lvFhJMMtzapGUOJxmiXKjJeAU3hdT1dPBRhPgtAz/4oZ\n",
    "x279VNYBpNzY47BsTGir6tyX3gACUMdfx/MakFQEEXj/wSgR77tPYhcsc/KVKwe/\n",
    "e8NiRGNJlO742FXJH6Njbo7BL5JguKJxnAfshSdEBjkCkTECQQD3pMqs/1QQC1K9\n",
    "svECFAntwjVhCwFJwHAipmTHVQLDCFkb+g9sfiPTpfDNdWVMat2iMd3MNkqD+tms\n",
    "YdPdvQ6dAkEA34qqjnKBWlLMFlpOwFdTyeacP3f0hr9PqjSs9lCBl3/7noz+ObPG\n",
    "lm0HKvgovURNM1YFoUH+rthCIL2ssIoslQJBAKaor4FXX/JgPHHP4CQ+6iOpJJVH\n",
    "e7lvmcen5YDEdFRe5OFQG1svVNsV/QW4cNDJxphmKNdK3kEN67n4KEY8+n0CQE/Y\n",
    "pv1El0GdC3r8fN6lEq+uaKcfAL/Uu+7u68z7ip6Dv2utru0LcuauQP4vL9YS/IRW\n",
    "uKIWAZOQeWZaecGBSVUCQQDc0J4qc7Lyq27mKCHi4r9kEn7sX5PzMFgczB4u9lB1\n",
    "X0gjfiWgqw3soDj8EI8GajPnlmpqa+0DCx0OVmDAuESr\n",
    "-----END RSA PRIVATE KEY-----",
);

/// Its public key, as Kite writes it in `kontrolKey`.
const APPENDIX_B_PUBLIC: &str = concat!(
    "-----BEGIN PUBLIC KEY-----\n",
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDYPrBfLm+ueSjNCxIfwb0Nubj9\n",
    "KTFU2nk6xVvgQnMre5dun3M9sMTaLBxNks3ozuRZFUUpO6SrFWQAySwS8Z4QolCs\n",
    "D2+0X2I0DUxasAh0Oo60/J+9OaHue17HKxzBZRN0vErQ3xxSN6UybBzmq06Rm+kF\n",
    "nFTYbYSTPJbeXi59YQIDAQAB\n",
    "-----END PUBLIC KEY-----",
);

/// The same private key as PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`).
const APPENDIX_B_PRIVATE_PKCS8: &str = concat!(
    "-----BEGIN PRIVATE KEY-----\n",
    "MIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBANg+sF8ub655KM0L\n",
    "Eh/BvQ25uP0pMVTaeTrFW+BCcyt7l26fcz2wxNosHE2SzejO5FkVRSk7pKsVZADJ\n",
    "LBLxnhCiUKwPb7RfYjQNTFqwCHQ6jrT8n705oe57XscrHMFlE3S8StDfHFI3pTJs\n",
    "HOarTpGb6QWcVNhthJM8lt5eLn1hAgMBAAECgYA0o2XpdXNIJEQTTXuW8WEkwy3N\n",
    "qkZQ4nGaJcqMl4BTeF1PV08FGE+C0DP/ihnHbv1U1gGk3NjjsGxMaKvq3JfeAAJQ\n",
    "x1/H8xqQVAQReP/BKBHvu09iFyxz8pUrB797w2JEY0mU7vjYVckfo2NujsEvkmC4\n",
    "onGcB+yFJ0QGOQKRMQJBAPekyqz/VBALUr2y8QIUCe3CNWELAUnAcCKmZMdVAsMI\n",
    "WRv6D2x+I9Ol8M11ZUxq3aIx3cw2SoP62axh0929Dp0CQQDfiqqOcoFaUswWWk7A\n",
    "V1PJ5pw/d/SGv0+qNKz2UIGXf/uejP45s8aWbQcq+Ci9RE0zVgWhQf6u2EIgvayw\n",
    "iiyVAkEApqivgVdf8mA8cc/gJD7qI6kklUd7uW+Zx6flgMR0VF7k4VAbWy9U2xX9\n",
    "Bbhw0MnGmGYo10reQQ3rufgoRjz6fQJAT9im/USXQZ0Levx83qUSr65opx8Av9S7\n",
    "7u7rzPuKnoO/a62u7Qty5q5A/i8v1hL8hFa4ohYBk5B5Zlp5wYFJVQJBANzQnipz\n",
    "svKrbuYoIeLiv2QSfuxfk/MwWBzMHi72UHVfSCN+JaCrDeygOPwQjwZqM+eWampr\n",
    "7QMLHQ5WYMC4RKs=\n",
    "-----END PRIVATE KEY-----",
);

/// A self-signed X.509 certificate for the same key (`openssl req -new -x509`).
const APPENDIX_B_CERT: &str = concat!(
    "-----BEGIN CERTIFICATE-----\n",
    "MIIB+TCCAWKgAwIBAgIBBzANBgkqhkiG9w0BAQsFADAXMRUwEwYDVQQDDAxrb250\n",
    "cm9sIHRlc3QwIBcNMjYxMTI1MTI0MzM5WhgPMjEyNjExMDExMjQzMzlaMBcxFTAT\n",
    "BgNVBAMMDGtvbnRyb2wgdGVzdDCBnzANBgkqhkiG9w0BAQEFAAOBjQAwgYkCgYEA\n",
    "2D6wXy5vrnkozQsSH8G9Dbm4/SkxVNp5OsVb4EJzK3uXbp9zPbDE2iwcTZLN6M7k\n",
    "WRVFKTukqxVkAMksEvGeEKJQrA9vtF9iNA1MWrAIdDqOtPyfvTmh7ntexyscwWUT\n",
    "dLxK0N8cUjelMmwc5qtOkZvpBZxU2G2EkzyW3l4ufWECAwEAAaNTMFEwHQYDVR0O\n",
    "BBYEFIWuONBl7q1gJ5s0eBgD92UUD8uyMB8GA1UdIwQYMBaAFIWuONBl7q1gJ5s0\n",
    "eBgD92UUD8uyMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZIhvcNAQELBQADgYEAOx+W\n",
    "jbSz1K4aQFQ89zqPWAGXeeENFH6/U4+HeTqDvHQKVDnc3tv8Th9eBWUooJlSvdbr\n",
    "b9WU/QCHPpRoJLSV+jyo9RixngCHxxP6wVu2IuvmnjoZytUaSJDypLEnY2dppK/W\n",
    "FiejRPnir6iSjG2S+HQztu27X2tHwQKnETrdBN8=\n",
    "-----END CERTIFICATE-----",
);

/// The same public key as a PKCS#1 `RSA PUBLIC KEY` block, which Go does not accept.
const APPENDIX_B_PUBLIC_PKCS1: &str = concat!(
    "-----BEGIN RSA PUBLIC KEY-----\n",
    "MIGJAoGBANg+sF8ub655KM0LEh/BvQ25uP0pMVTaeTrFW+BCcyt7l26fcz2wxNos\n",
    "HE2SzejO5FkVRSk7pKsVZADJLBLxnhCiUKwPb7RfYjQNTFqwCHQ6jrT8n705oe57\n",
    "XscrHMFlE3S8StDfHFI3pTJsHOarTpGb6QWcVNhthJM8lt5eLn1hAgMBAAE=\n",
    "-----END RSA PUBLIC KEY-----",
);

const APPENDIX_B_KITE_KEY: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJqdGkiOiI1YzNlOGY2Mi0xYjdkLTRlMGEtOWY0My0yYTZkOGUxYzdiOTA",
    "iLCJpYXQiOjE1Mjk5OTk3MDAsImlzcyI6ImtvbnRyb2wiLCJzdWIiOiJkZXZyaW0iLCJrb250cm9sS2V5IjoiLS0tLS1CRUd",
    "JTiBQVUJMSUMgS0VZLS0tLS1cbk1JR2ZNQTBHQ1NxR1NJYjNEUUVCQVFVQUE0R05BRENCaVFLQmdRRFlQckJmTG0rdWVTak5",
    "DeElmd2IwTnViajlcbktURlUybms2eFZ2Z1FuTXJlNWR1bjNNOXNNVGFMQnhOa3Mzb3p1UlpGVVVwTzZTckZXUUF5U3dTOFo",
    "0UW9sQ3NcbkQyKzBYMkkwRFV4YXNBaDBPbzYwL0orOU9hSHVlMTdIS3h6QlpSTjB2RXJRM3h4U042VXliQnptcTA2Um0ra0Z",
    "cbm5GVFliWVNUUEpiZVhpNTlZUUlEQVFBQlxuLS0tLS1FTkQgUFVCTElDIEtFWS0tLS0tIiwia29udHJvbFVSTCI6Imh0dHA",
    "6Ly9rb250cm9sLmV4YW1wbGUuY29tOjQwMDAva2l0ZSJ9.kL27gpZA4YyhCccLuWjGzW3BXnJCye_hggrqWknETv1xfySvCD",
    "uEQ_98Wkhl8F9lGszkfWW6UrSDPz9svnBIf63Bq2rt5-TlRfFIuZTd0PryM1Isu2ed-7FxANRsTshIjh3x4js_kPZljFGDA2",
    "AndrwwYlqCT10rmSw74kKASOQ",
);

const APPENDIX_B_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiIvZGV2cmltL3Byb2R1Y3Rpb24vbWF0aCIsImV4cCI6MTUzMDE",
    "3MzEwMCwianRpIjoiMGU5ZDJiN2EtM2M0MS00Zjg2LWI1YTItNmYxZTBjOWQ4YTM3IiwiaWF0IjoxNTI5OTk5NzAwLCJpc3M",
    "iOiJrb250cm9sIiwibmJmIjoxNTI5OTk5NzAwLCJzdWIiOiJhbGljZSJ9.UJhH1MJlcck4tsEKUdolqtijm-QUcii5J9TyQh",
    "-XQBlJFb0-gCnmPInpEz4c9zsRhII70hcA-9hISH-K7BiaTDQ0PWs7c1Q_HAFfFaXNJKy4Zbxeq8CLlPbfpaMeONUF4DUacl",
    "2-9Tmf0zZ49bNWbBOnXFJ5ml5gKgnrkfGFlgY",
);

/// bob's kite.key as sent by the Go client in square_kitekey_auth.txt / getkites.txt.
const CAPTURED_BOB_KITE_KEY: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJqdGkiOiI2MzkyOGQ1MC00YmI5LTQyZTAtYmE0Yi00MDFhOTM2ZGU1ZjAiLCJ",
    "pYXQiOjE3OTU2MDYwMjcsImlzcyI6ImtvbnRyb2wiLCJzdWIiOiJib2IiLCJrb250cm9sS2V5IjoiLS0tLS1CRUdJTiBQVUJMSUM",
    "gS0VZLS0tLS1cbk1JSUJJakFOQmdrcWhraUc5dzBCQVFFRkFBT0NBUThBTUlJQkNnS0NBUUVBdk5oU3NkQzNJNitkMzZUdUtob0x",
    "cblJTT1hjQytLSkFyY0VzdTdzR285YlZmMzd1dmNKY0NNUm5STHkyTUdBYWFXYXVSaHFYdTNYbld3MTVQWGxoTi9cbnN2elZYbmx",
    "INm16MWVaK0h1Y2dRUXlmeGxXaWtHVG4zaXYyT1hTVjZzQU1IZ1BvUGZCVExiNGFnbFgzOGVzMCtcbk02eDZkbjl2OVJvbGYrRzV",
    "pYXkxQ2FQVGtzNWJHSGtCZ0MySGwvYmpYWWErajZlUXFkZ0pmRThBTU8xT3lEeW5cbml2ckFucHAzdHFwU2FJV1hzQ3ZhR0pYVTB",
    "GcEFiZTRIWStvTWdjQVo4empQajc4Vm1Hc3NjNlVHNFFjVEhCcTdcbjdtQVkyNUpaZHd6bkhzNkJaK2Z0QTRndkVyMTd2V29YMjh",
    "KTHZmbmJwNzJDRHVwbjVZalpPNWRiNUZWcFQ1TmFcbm53SURBUUFCXG4tLS0tLUVORCBQVUJMSUMgS0VZLS0tLS0iLCJrb250cm9",
    "sVVJMIjoiaHR0cDovLzEyNy4wLjAuMTo0MDAwL2tpdGUifQ.s9jrb7XuLcWEtPxDdl_ptPCZgSkgY1byybnFpSa5dKLK4-1CTmuS",
    "G2AxtAQDOVSi0QVO4iVTIZPLzyZeNLrdh_qzt5k-ByszIwmYtiMMA7i1RWZL2bWk9U6ckjqQlKbwzu4QTTjUbLQzWTsKUSf1_TeY",
    "7osZBpqBM6rNGmoyKm3ttcux8WHFqPM5ERjiM7XkLqxS0VNXgfVmL0_TJDTUEuDBfEaQdT4y1X8VUZtk9aoWuOoWPBpUALNvQ7uw",
    "Sisw9mur8wpVVGlo6HmMNTOEoHjGCzr8LEQmxf0OsyMrcbzNFEtk0pD1efou2HOe6KE9FM7GVCaYNv9ngCWD89sXtQ",
);

/// The token Go Kontrol issued for bob towards /alice/unknown/math (gettoken.txt,
/// getkites.txt, used in square_token_auth.txt).
const CAPTURED_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiIvYWxpY2UvdW5rbm93bi9tYXRoIiwiZXhwIjoxNzk1Nzc5NTMyLCJ",
    "qdGkiOiJmNjUyNTVhOS1lNjQxLTRiZTUtODNmOC0wMzM3YzBhN2IxZTMiLCJpYXQiOjE3OTU2MDYxMzIsImlzcyI6ImtvbnRyb2w",
    "iLCJuYmYiOjE3OTU2MDYxMzIsInN1YiI6ImJvYiJ9.ggarqcFocsotX3XK1mx7ZhqrwC0FqwlWoFVulx0los88ig_xIB7Okz5OGM",
    "VT040ziu99RvbH57DbeO1qqaCwkOPP4WlubPYGBF2e5bjcKJ1wtwg8uAg-te3hKQaqmPz0el_IBsulyfxTRoGCDjs6ZOUZqsfUFp",
    "bX0xRrOdmhZN00ycJa08A8WysvZvK0CBDe9yMHNLh3KTDDG8pqM33Z7SHpE38Ey2ZBqpM3E5-8-x8L4skOkcOMXEVXHXLCf4v0tv",
    "BVNj72nrHxV6Vo4Ilo24j_TgxZAbEt6CkGbwH1tKh7CiE3Jlz_yCqB2M1KW-fo1o3RNUrpzaCNeIQA6OG9xw",
);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn appendix_b_pair() -> KeyPair {
    KeyPair::from_pem("appendix-b", APPENDIX_B_PUBLIC, APPENDIX_B_PRIVATE).unwrap()
}

fn kite(username: &str, environment: &str, name: &str) -> Kite {
    Kite {
        username: username.into(),
        environment: environment.into(),
        name: name.into(),
        version: "1.0.0".into(),
        region: "unknown".into(),
        hostname: "vm".into(),
        id: "5e82d86a-6e04-4ebc-a253-c1809942bd0c".into(),
    }
}

fn authenticator(kontrol_key: &str) -> Authenticator {
    Authenticator::new(AuthSettings {
        kontrol_user: "kontrol".into(),
        kontrol_key: kontrol_key.into(),
        ..AuthSettings::default()
    })
    .unwrap()
}

async fn auth_message(auth: &Authenticator, ty: &str, key: &str, local: &Kite, now: u64) -> String {
    match auth.authenticate_at(ty, key, local, at(now)).await {
        Ok(who) => format!("ok {}", who.username),
        Err(e) => format!("{}: {}", e.error_type(), e),
    }
}

#[test]
fn appendix_b_public_pem_is_reproduced() {
    let pair = appendix_b_pair();
    assert_eq!(pair.public_key().to_pem(), APPENDIX_B_PUBLIC);
    // A pair rebuilt from the private key alone derives the same public PEM text.
    let private = kite::auth::parse_private_key_pem(APPENDIX_B_PRIVATE).unwrap();
    let derived = KeyPair::from_private_key("x", private).unwrap();
    assert_eq!(derived.public_pem(), APPENDIX_B_PUBLIC);
}

#[test]
fn appendix_b_kite_key_byte_for_byte() {
    let claims = Claims {
        jti: Some("5c3e8f62-1b7d-4e0a-9f43-2a6d8e1c7b90".into()),
        iat: Some(1_529_999_700),
        iss: Some("kontrol".into()),
        sub: Some("devrim".into()),
        kontrol_key: Some(APPENDIX_B_PUBLIC.into()),
        kontrol_url: Some("http://kontrol.example.com:4000/kite".into()),
        ..Claims::default()
    };
    assert_eq!(
        sign_claims(&appendix_b_pair(), &claims).unwrap(),
        APPENDIX_B_KITE_KEY
    );

    // The issuing helper builds the same claims (apart from the random jti).
    let mut built = kite::auth::kite_key_claims(
        "kontrol",
        "devrim",
        "http://kontrol.example.com:4000/kite",
        &format!("\n{APPENDIX_B_PUBLIC}\n"),
        at(1_530_000_000),
        kite::auth::TOKEN_LEEWAY,
    );
    assert_eq!(built.jti.as_ref().map(String::len), Some(36));
    built.jti = claims.jti.clone();
    assert_eq!(built, claims);
    assert_eq!(
        sign_claims(&appendix_b_pair(), &built).unwrap(),
        APPENDIX_B_KITE_KEY
    );

    // PKCS#8 private key gives the same signature.
    let pkcs8 = KeyPair::from_pem("p8", APPENDIX_B_PUBLIC, APPENDIX_B_PRIVATE_PKCS8).unwrap();
    assert_eq!(sign_claims(&pkcs8, &claims).unwrap(), APPENDIX_B_KITE_KEY);
}

#[test]
fn appendix_b_token_byte_for_byte() {
    let claims = Claims {
        aud: Some("/devrim/production/math".into()),
        exp: Some(1_530_173_100),
        jti: Some("0e9d2b7a-3c41-4f86-b5a2-6f1e0c9d8a37".into()),
        iat: Some(1_529_999_700),
        iss: Some("kontrol".into()),
        nbf: Some(1_529_999_700),
        sub: Some("alice".into()),
        ..Claims::default()
    };
    assert_eq!(
        sign_claims(&appendix_b_pair(), &claims).unwrap(),
        APPENDIX_B_TOKEN
    );

    let mut built = kite::auth::token_claims(
        "/devrim/production/math",
        "alice",
        "kontrol",
        kite::auth::DEFAULT_TOKEN_TTL,
        at(1_530_000_000),
        kite::auth::TOKEN_LEEWAY,
        true,
    );
    built.jti = claims.jti.clone();
    assert_eq!(built, claims);
    let without_nbf = kite::auth::token_claims(
        "/a",
        "b",
        "kontrol",
        kite::auth::DEFAULT_TOKEN_TTL,
        at(1_530_000_000),
        kite::auth::TOKEN_LEEWAY,
        false,
    );
    assert_eq!(without_nbf.nbf, None);
    assert_eq!(Claims::decode_unverified(APPENDIX_B_TOKEN).unwrap(), claims);
}

#[tokio::test]
async fn appendix_b_token_verifier_outcomes() {
    let auth = authenticator(APPENDIX_B_PUBLIC);
    let math = kite("devrim", "production", "math");
    let cases: &[(u64, &str)] = &[
        (1_530_000_060, "ok alice"),
        (
            1_530_173_200,
            "authenticationError: token: token is expired by 1m40s",
        ),
        (
            1_529_999_600,
            "authenticationError: token: token is not valid yet",
        ),
    ];
    for (now, want) in cases {
        assert_eq!(
            auth_message(&auth, "token", APPENDIX_B_TOKEN, &math, *now).await,
            *want
        );
    }
    // The same outcomes with a fresh authenticator (no cache involved) and zero skew.
    for (now, want) in cases {
        let fresh = Authenticator::new(AuthSettings {
            kontrol_user: "kontrol".into(),
            kontrol_key: APPENDIX_B_PUBLIC.into(),
            clock_skew: Duration::ZERO,
            ..AuthSettings::default()
        })
        .unwrap();
        assert_eq!(
            auth_message(&fresh, "token", APPENDIX_B_TOKEN, &math, *now).await,
            *want
        );
    }
    let bob = kite("bob", "production", "math");
    assert_eq!(
        auth_message(&auth, "token", APPENDIX_B_TOKEN, &bob, 1_530_000_060).await,
        "authenticationError: token: audience: username \"devrim\" not allowed (/devrim/production/math)"
    );
    let other = KeyPair::generate(1024).unwrap();
    let rotated = authenticator(other.public_pem());
    assert_eq!(
        auth_message(&rotated, "token", APPENDIX_B_TOKEN, &math, 1_530_000_060).await,
        "authenticationError: token: token is expired"
    );
}

#[tokio::test]
async fn appendix_b_kite_key_verifies() {
    let auth = authenticator(APPENDIX_B_PUBLIC);
    let anyone = kite("x", "y", "z");
    assert_eq!(
        auth_message(
            &auth,
            "kiteKey",
            APPENDIX_B_KITE_KEY,
            &anyone,
            1_530_000_060
        )
        .await,
        "ok devrim"
    );
    // Before its iat (minus the 30 s default tolerance) it is rejected, Go's wording.
    assert_eq!(
        auth_message(
            &authenticator(APPENDIX_B_PUBLIC),
            "kiteKey",
            APPENDIX_B_KITE_KEY,
            &anyone,
            1_529_999_600
        )
        .await,
        "authenticationError: kiteKey: Token used before issued"
    );
    let key = KiteKey::parse(&format!("  {APPENDIX_B_KITE_KEY}\n"), at(1_530_000_060)).unwrap();
    assert_eq!(key.raw, APPENDIX_B_KITE_KEY);
    assert_eq!(key.username(), "devrim");
    assert_eq!(key.kontrol_user(), "kontrol");
    assert_eq!(key.id(), "5c3e8f62-1b7d-4e0a-9f43-2a6d8e1c7b90");
    assert_eq!(key.kontrol_url(), "http://kontrol.example.com:4000/kite");
    assert_eq!(key.kontrol_key(), APPENDIX_B_PUBLIC);
}

#[tokio::test]
async fn captured_go_credentials_verify() {
    // bob's kite key is self-consistent and names the Kontrol key.
    let bob = KiteKey::parse(CAPTURED_BOB_KITE_KEY, at(1_795_606_087)).unwrap();
    assert_eq!(bob.username(), "bob");
    assert_eq!(bob.kontrol_user(), "kontrol");
    assert_eq!(bob.kontrol_url(), "http://127.0.0.1:4000/kite");
    let kontrol_key = bob.kontrol_key().to_owned();
    assert!(kontrol_key.starts_with("-----BEGIN PUBLIC KEY-----\nMIIBIjAN"));
    assert_eq!(PublicKey::from_pem(&kontrol_key).unwrap().bits(), 2048);
    // Our PEM writer reproduces Go Kontrol's text exactly.
    assert_eq!(
        PublicKey::from_pem(&kontrol_key).unwrap().to_pem(),
        kontrol_key
    );

    // alice's math kite (auth enabled) trusting that Kontrol accepts both credentials.
    let auth = authenticator(&kontrol_key);
    let math = kite("alice", "unknown", "math");
    assert_eq!(
        auth_message(
            &auth,
            "kiteKey",
            CAPTURED_BOB_KITE_KEY,
            &math,
            1_795_606_087
        )
        .await,
        "ok bob"
    );
    assert_eq!(
        auth_message(&auth, "token", CAPTURED_TOKEN, &math, 1_795_606_192).await,
        "ok bob"
    );
    let claims = Claims::decode_unverified(CAPTURED_TOKEN).unwrap();
    assert_eq!(claims.aud.as_deref(), Some("/alice/unknown/math"));
    assert_eq!(claims.exp.unwrap() - claims.iat.unwrap(), 173_400);
    assert_eq!(claims.to_json().len(), {
        let payload = CAPTURED_TOKEN.split('.').nth(1).unwrap();
        payload.len() * 3 / 4
    });
    // Expired after exp, and useless on another kite.
    assert_eq!(
        auth_message(&auth, "token", CAPTURED_TOKEN, &math, 1_795_779_532 + 3600).await,
        "authenticationError: token: token is expired by 1h0m0s"
    );
    assert_eq!(
        auth_message(
            &auth,
            "token",
            CAPTURED_TOKEN,
            &kite("alice", "unknown", "fs"),
            1_795_606_192
        )
        .await,
        "authenticationError: token: audience: kite \"math\" not allowed (/alice/unknown/math)"
    );
}

#[test]
fn key_formats() {
    let spki = PublicKey::from_pem(APPENDIX_B_PUBLIC).unwrap();
    // X.509 certificate form of the same key.
    assert_eq!(PublicKey::from_pem(APPENDIX_B_CERT).unwrap(), spki);
    // CRLF and surrounding whitespace are tolerated.
    let crlf = format!("\n  {}\r\n", APPENDIX_B_PUBLIC.replace('\n', "\r\n"));
    assert_eq!(PublicKey::from_pem(&crlf).unwrap(), spki);
    // PKCS#1 public keys are not accepted (as in Go), nor private keys as public ones.
    assert_eq!(
        PublicKey::from_pem(APPENDIX_B_PUBLIC_PKCS1),
        Err(KeyError::NotRsaPublicKey)
    );
    assert_eq!(
        PublicKey::from_pem(APPENDIX_B_PRIVATE),
        Err(KeyError::NotRsaPublicKey)
    );
    assert_eq!(PublicKey::from_pem("not a key"), Err(KeyError::NotPem));
    // Private keys: PKCS#1 and PKCS#8.
    let p1 = kite::auth::parse_private_key_pem(APPENDIX_B_PRIVATE).unwrap();
    let p8 = kite::auth::parse_private_key_pem(APPENDIX_B_PRIVATE_PKCS8).unwrap();
    assert_eq!(p1, p8);
    assert_eq!(
        kite::auth::parse_private_key_pem(APPENDIX_B_PUBLIC).unwrap_err(),
        KeyError::NotRsaPrivateKey
    );
    // Key pair validation (PROTOCOL.md 8.4).
    assert_eq!(
        KeyPair::from_pem("", APPENDIX_B_PUBLIC, APPENDIX_B_PRIVATE).unwrap_err(),
        KeyError::Empty("id")
    );
    assert_eq!(
        KeyPair::from_pem("i", "  ", APPENDIX_B_PRIVATE).unwrap_err(),
        KeyError::Empty("public key")
    );
    assert_eq!(
        KeyPair::from_pem("i", APPENDIX_B_PUBLIC, "").unwrap_err(),
        KeyError::Empty("private key")
    );
    let other = KeyPair::generate(1024).unwrap();
    assert_eq!(
        KeyPair::from_pem("i", other.public_pem(), APPENDIX_B_PRIVATE).unwrap_err(),
        KeyError::Mismatch
    );
    // The certificate is accepted as the public half of a pair too; the PEM is kept as given.
    let from_cert = KeyPair::from_pem(" i ", APPENDIX_B_CERT, APPENDIX_B_PRIVATE).unwrap();
    assert_eq!(from_cert.id(), "i");
    assert_eq!(from_cert.public_pem(), APPENDIX_B_CERT);
    // Debug output never shows the private key.
    assert!(!format!("{from_cert:?}").contains("PRIVATE"));
}

#[test]
fn generated_pairs_have_go_pem_shapes() {
    let pair = KeyPair::generate_default().unwrap();
    assert_eq!(pair.public_key().bits(), 2048);
    let public = pair.public_pem();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(public.ends_with("\n-----END PUBLIC KEY-----"));
    assert!(!public.contains('\r'));
    for line in public.lines() {
        assert!(line.len() <= 64, "{line}");
    }
    assert!(pair
        .private_pem()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    assert!(pair
        .private_pem()
        .ends_with("-----END RSA PRIVATE KEY-----"));
    let again = KeyPair::from_pem(pair.id(), public, pair.private_pem()).unwrap();
    assert_eq!(again.public_key(), pair.public_key());
    assert_ne!(
        KeyPair::generate(1024).unwrap().id(),
        KeyPair::generate(1024).unwrap().id()
    );
}
