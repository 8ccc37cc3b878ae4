//! Backend URLs: the one parser of `embedded://DIR`, `kafka://HOST:PORT[,HOST:PORT...]`,
//! `sqlite://FILE` and `postgres://...` (or `postgresql://...`), and the one way to show them.
//!
//! A parsed URL shows itself (`Display` and `Debug`) without its password: the password of the
//! userinfo and the value of every query parameter whose name looks secret (`password`,
//! `sslpassword`, anything containing `pass`, `secret` or `token`, compared case-insensitively
//! after percent-decoding, as the driver decodes it) become `***`. Parse errors never repeat
//! any of the text they were given, so a typo cannot print a password either. The whole PostgreSQL URL leaves this module only through
//! [`PostgresUrl::connection_string`], for the driver.
//!
//! PostgreSQL URLs are split exactly as tokio-postgres splits them (userinfo up to the first
//! `@`, the user up to its first `:`, hosts up to `/` or `?`, the database up to `?`, then
//! `KEY=VALUE` pairs separated by `&`), so what is hidden is what the driver takes as the
//! password. An `@` anywhere but at the end of the userinfo is refused: the driver would cut
//! the URL there and part of a password could land in a part that is shown.
//!
//! It lives here because the store (which opens a [`StoreUrl`]) and the binary (which reads
//! URLs from its configuration and opens logs) both need it, and parsing is pure. This module
//! must never open anything: it parses and renders; the store and the binary open backends.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;
use thiserror::Error;

/// Where the changes, state and batches logs live.
#[derive(Clone, PartialEq, Eq)]
pub enum LogUrl {
    /// `embedded://DIR`: the embedded log in this directory.
    Embedded(PathBuf),
    /// `kafka://HOST:PORT[,HOST:PORT...]`: the bootstrap servers, as librdkafka takes them.
    Kafka(String),
}

/// Where the master store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://FILE`.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`.
    Postgres(PostgresUrl),
}

/// A PostgreSQL URL that shows itself without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    shown: String,
}

/// Shown in place of a password.
const HIDDEN: &str = "***";

/// Query parameter names (lowercase, decoded) whose values are never shown.
const SECRET_NAME_PARTS: [&str; 3] = ["pass", "secret", "token"];

impl PostgresUrl {
    /// The URL as given, password included: for the database driver only, never for a
    /// message.
    pub fn connection_string(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PostgresUrl").field(&self.shown).finish()
    }
}

impl fmt::Display for LogUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogUrl::Embedded(dir) => write!(f, "embedded://{}", dir.display()),
            LogUrl::Kafka(servers) => write!(f, "kafka://{servers}"),
        }
    }
}

impl fmt::Debug for LogUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LogUrl").field(&self.to_string()).finish()
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(file) => write!(f, "sqlite://{}", file.display()),
            StoreUrl::Postgres(url) => url.fmt(f),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreUrl").field(&self.to_string()).finish()
    }
}

/// A backend URL that cannot be used. Its message names the accepted forms and never repeats
/// the URL, which may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{problem}; expected {}", .backend.forms())]
pub struct UrlError {
    backend: Backend,
    problem: Problem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Log,
    Store,
}

impl Backend {
    fn forms(self) -> &'static str {
        match self {
            Backend::Log => "embedded://DIR or kafka://HOST:PORT[,HOST:PORT...]",
            Backend::Store => {
                "sqlite://FILE or postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAM=VALUE&...]"
            }
        }
    }

    fn error(self, problem: Problem) -> UrlError {
        UrlError {
            backend: self,
            problem,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
enum Problem {
    #[error("it does not start with SCHEME://")]
    NoScheme,
    #[error("unknown scheme")]
    UnknownScheme,
    #[error("{0}:// names no {1}")]
    Empty(&'static str, &'static str),
    #[error(
        "a kafka URL takes no user or password (set them with --kafka-option sasl.username=... \
         and sasl.password=...)"
    )]
    KafkaCredentials,
    #[error("an '@' may only end the user and password; write it as %40 inside them")]
    StrayAt,
    #[error("a port is not a number up to 65535")]
    Port,
    #[error("a host in brackets lacks its ']' or has something other than :PORT after it")]
    Brackets,
    #[error("a query parameter has no '=VALUE'")]
    ParameterWithoutValue,
    #[error("a percent-encoded part is not UTF-8")]
    NotUtf8,
    #[error("the PostgreSQL driver refuses it: {0}")]
    RefusedByDriver(String),
}

impl UrlError {
    /// A store URL that parses here but that the PostgreSQL driver refuses, with the driver's
    /// error and its causes. Those must not contain the URL: tokio-postgres's configuration
    /// errors name the option, never its value.
    pub fn refused_by_driver(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut detail = error.to_string();
        let mut cause = error.source();
        while let Some(error) = cause {
            detail.push_str(&format!(": {error}"));
            cause = error.source();
        }
        Backend::Store.error(Problem::RefusedByDriver(detail))
    }
}

fn split_scheme(text: &str, backend: Backend) -> Result<(&str, &str), UrlError> {
    text.split_once("://")
        .ok_or(backend.error(Problem::NoScheme))
}

impl FromStr for LogUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let log = Backend::Log;
        match split_scheme(text, log)? {
            ("embedded", "") => Err(log.error(Problem::Empty("embedded", "directory"))),
            ("embedded", dir) => Ok(LogUrl::Embedded(PathBuf::from(dir))),
            ("kafka", servers) => {
                if servers.contains('@') {
                    return Err(log.error(Problem::KafkaCredentials));
                }
                if servers.split(',').any(|s| s.trim().is_empty()) {
                    return Err(log.error(Problem::Empty("kafka", "broker")));
                }
                Ok(LogUrl::Kafka(servers.to_owned()))
            }
            _ => Err(log.error(Problem::UnknownScheme)),
        }
    }
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let store = Backend::Store;
        match split_scheme(text, store)? {
            ("sqlite", "") => Err(store.error(Problem::Empty("sqlite", "file"))),
            ("sqlite", file) => Ok(StoreUrl::Sqlite(PathBuf::from(file))),
            ("postgres" | "postgresql", _) => Ok(StoreUrl::Postgres(text.parse()?)),
            _ => Err(store.error(Problem::UnknownScheme)),
        }
    }
}

impl FromStr for PostgresUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let fail = |problem| Backend::Store.error(problem);
        let (scheme, rest) = split_scheme(text, Backend::Store)?;
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(fail(Problem::UnknownScheme));
        }
        let mut shown = format!("{scheme}://");

        let rest = match rest.split_once('@') {
            Some((userinfo, rest)) => {
                if userinfo.contains(['/', '?']) {
                    return Err(fail(Problem::StrayAt));
                }
                match userinfo.split_once(':') {
                    Some((user, _password)) => shown.push_str(&format!("{user}:{HIDDEN}@")),
                    None => shown.push_str(&format!("{userinfo}@")),
                }
                rest
            }
            None => rest,
        };

        let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (hosts, rest) = rest.split_at(host_end);
        if hosts.contains('@') {
            return Err(fail(Problem::StrayAt));
        }
        if !hosts.is_empty() {
            for host in hosts.split(',') {
                check_host(host).map_err(fail)?;
            }
        }
        shown.push_str(hosts);

        let rest = match rest.strip_prefix('/') {
            Some(path) => {
                let (dbname, rest) = path.split_at(path.find('?').unwrap_or(path.len()));
                shown.push('/');
                shown.push_str(dbname);
                rest
            }
            None => rest,
        };

        if let Some(mut query) = rest.strip_prefix('?') {
            let mut shown_params = Vec::new();
            while !query.is_empty() {
                let (key, after) = query
                    .split_once('=')
                    .ok_or(fail(Problem::ParameterWithoutValue))?;
                let (value, after) = after.split_once('&').unwrap_or((after, ""));
                let name = decode(key).map_err(fail)?.to_lowercase();
                if SECRET_NAME_PARTS.iter().any(|part| name.contains(part)) {
                    shown_params.push(format!("{key}={HIDDEN}"));
                } else {
                    shown_params.push(format!("{key}={value}"));
                }
                query = after;
            }
            shown.push('?');
            shown.push_str(&shown_params.join("&"));
        }

        Ok(PostgresUrl {
            url: text.to_owned(),
            shown,
        })
    }
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`; a port is checked as the driver reads it.
fn check_host(host: &str) -> Result<(), Problem> {
    let port = if let Some(bracketed) = host.strip_prefix('[') {
        let (_, after) = bracketed.split_once(']').ok_or(Problem::Brackets)?;
        match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(Problem::Brackets),
        }
    } else {
        host.split_once(':').map(|(_, port)| port)
    };
    match port {
        Some(port) => decode(port)?
            .parse::<u16>()
            .map(drop)
            .map_err(|_| Problem::Port),
        None => Ok(()),
    }
}

fn decode(text: &str) -> Result<String, Problem> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Problem::NotUtf8)
}

#[cfg(test)]
mod tests {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;

    use super::*;

    fn store(text: &str) -> StoreUrl {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn store_error(text: &str) -> String {
        text.parse::<StoreUrl>()
            .err()
            .unwrap_or_else(|| panic!("{text} parses"))
            .to_string()
    }

    #[test]
    fn every_backend_url_parses_into_its_kind() {
        assert_eq!(
            "embedded://./data".parse::<LogUrl>().unwrap(),
            LogUrl::Embedded(PathBuf::from("./data"))
        );
        assert_eq!(
            "kafka://a:9092,b:9093".parse::<LogUrl>().unwrap(),
            LogUrl::Kafka("a:9092,b:9093".to_owned())
        );
        assert!(!matches!(
            "embedded://x".parse::<LogUrl>(),
            Ok(LogUrl::Kafka(_))
        ));
        assert!("kafka://".parse::<LogUrl>().is_err());
        assert_eq!(
            store("sqlite:///var/lib/ts/store.sqlite3"),
            StoreUrl::Sqlite(PathBuf::from("/var/lib/ts/store.sqlite3"))
        );
        for text in [
            "postgres://root@127.0.0.1:5432/test",
            "postgresql://me:pw@db/x?options=-csearch_path%3Ds",
            "postgres://a:1,[::1]:2,b/x",
            "postgres:///x?host=/run/postgresql",
            "postgres://db",
        ] {
            let StoreUrl::Postgres(url) = store(text) else {
                panic!("{text} is not a PostgreSQL URL");
            };
            assert_eq!(url.connection_string(), text);
        }
    }

    #[test]
    fn urls_show_themselves_as_given_but_for_passwords() {
        for (text, shown) in [
            ("embedded://./data", "embedded://./data"),
            ("kafka://a:9092,b:9092", "kafka://a:9092,b:9092"),
            ("sqlite://./d/store.sqlite3", "sqlite://./d/store.sqlite3"),
            (
                "postgres://root@127.0.0.1:5432/test",
                "postgres://root@127.0.0.1:5432/test",
            ),
            (
                "postgres://me:secret@db:5432/x",
                "postgres://me:***@db:5432/x",
            ),
            ("postgres://me:@db/x", "postgres://me:***@db/x"),
            ("postgres://me@db/x", "postgres://me@db/x"),
            (
                "postgres://db/x?password=secret",
                "postgres://db/x?password=***",
            ),
            (
                "postgresql://root@db/test?password=S3cret-pw&sslmode=disable",
                "postgresql://root@db/test?password=***&sslmode=disable",
            ),
            (
                "postgres://db/x?PassWord=a&sslpassword=b&pass%77ord=c&application_name=me",
                "postgres://db/x?PassWord=***&sslpassword=***&pass%77ord=***&application_name=me",
            ),
            (
                "postgres://db/x?options=-csearch_path%3Ds&password=",
                "postgres://db/x?options=-csearch_path%3Ds&password=***",
            ),
        ] {
            let url = if text.starts_with("embedded") || text.starts_with("kafka") {
                text.parse::<LogUrl>().unwrap().to_string()
            } else {
                store(text).to_string()
            };
            assert_eq!(url, shown, "{text}");
        }
        let debug = format!("{:?}", store("postgres://me:secret@db/x?password=secret"));
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            store("postgres://me:secret@db:5432/x").to_string(),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(
            store("postgres://me@db/x").to_string(),
            "postgres://me@db/x"
        );
        assert!(
            !store("postgres://db/x?password=secret")
                .to_string()
                .contains("secret")
        );
        // An @ inside the password must not leave part of it behind.
        assert!(!store_error("postgres://me:se@cret@db/x").contains("cret"));
        assert!(!store_error("mysql://me:secret@db/x").contains("secret"));
    }

    #[test]
    fn anything_else_is_refused_naming_the_accepted_forms() {
        for (text, problem) in [
            ("mysql://x", "unknown scheme;"),
            ("sqlite:/x", "does not start with SCHEME://"),
            ("", "does not start with SCHEME://"),
            ("sqlite://", "sqlite:// names no file"),
            ("postgres://me:pw@db:notaport/x", "a port is not a number"),
            ("postgres://db:70000/x", "a port is not a number"),
            ("postgres://[::1/x", "a host in brackets"),
            ("postgres://me:p@ss@db/x", "an '@' may only end"),
            ("postgres://db/x?password=p@ss", "an '@' may only end"),
            ("postgres://db/x?password", "has no '=VALUE'"),
            ("postgres://db/x?%ff=1", "not UTF-8"),
            ("me:pw://db", "unknown scheme;"),
        ] {
            let error = store_error(text);
            assert!(error.contains(problem), "{text}: {error}");
            assert!(
                error.contains("expected sqlite://FILE or postgres://"),
                "{error}"
            );
        }
        for (text, problem) in [
            ("redis://x", "unknown scheme;"),
            ("embedded://", "names no directory"),
            ("kafka://", "names no broker"),
            ("kafka://a:1,,b:2", "names no broker"),
            ("kafka://me:pw@broker:9092", "takes no user or password"),
        ] {
            let error = text.parse::<LogUrl>().unwrap_err().to_string();
            assert!(error.contains(problem), "{text}: {error}");
            assert!(
                error.contains("expected embedded://DIR or kafka://"),
                "{error}"
            );
        }
    }

    /// A password that cannot occur in the rest of a generated URL by chance.
    fn password() -> impl Strategy<Value = String> {
        "\\PC{0,16}".prop_map(|s| format!("Z9{s}"))
    }

    /// A password as someone might type it without percent-encoding: no `@ / ? & %`.
    fn raw_password() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~!$'()*+,;=:#-]{0,16}".prop_map(|s| format!("Z9{s}"))
    }

    fn secret_key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "password",
            "PASSWORD",
            "Password",
            "sslpassword",
            "pass%77ord",
            "%70assword",
        ])
    }

    fn assert_hidden(text: &str, password: &str) -> Result<(), TestCaseError> {
        let encoded = utf8_percent_encode(password, NON_ALPHANUMERIC).to_string();
        prop_assert!(!text.contains(password), "{text:?} shows {password:?}");
        prop_assert!(!text.contains(&encoded), "{text:?} shows {encoded:?}");
        Ok(())
    }

    /// Text for any part of a PostgreSQL URL, sometimes with separators that belong elsewhere.
    fn text() -> impl Strategy<Value = String> {
        const PIECES: [&str; 14] = [
            "root", "Z9pw", "x", "1", ":", "@", "/", "?", "&", "=", ",", "%40", "%3D", "%77",
        ];
        prop::collection::vec(prop::sample::select(&PIECES[..]), 0..4).prop_map(|p| p.concat())
    }

    /// A PostgreSQL URL: userinfo, hosts, database and parameters, each made of [`text`].
    fn postgres_url() -> impl Strategy<Value = String> {
        let host = (
            prop::sample::select(&["db", "127.0.0.1", "[::1]", ""][..]),
            prop::sample::select(&["", ":5432", ":1", ":x"][..]),
        )
            .prop_map(|(host, port)| format!("{host}{port}"));
        let key = prop::sample::select(
            &[
                "password",
                "PASSWORD",
                "pass%77ord",
                "%70assword",
                "options",
                "user",
                "dbname",
                "application_name",
                "sslmode",
                "host",
                "Z9pw",
            ][..],
        );
        (
            prop::option::of((text(), prop::option::of(text()))),
            prop::collection::vec(host, 1..3),
            prop::option::of(text()),
            prop::option::of(prop::collection::vec((key, text()), 0..4)),
        )
            .prop_map(|(userinfo, hosts, db, params)| {
                let mut url = "postgres://".to_owned();
                if let Some((user, password)) = userinfo {
                    url.push_str(&user);
                    if let Some(password) = password {
                        url.push_str(&format!(":{password}"));
                    }
                    url.push('@');
                }
                url.push_str(&hosts.join(","));
                if let Some(db) = db {
                    url.push_str(&format!("/{db}"));
                }
                if let Some(params) = params {
                    let params: Vec<_> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    url.push_str(&format!("?{}", params.join("&")));
                }
                url
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Read by the driver, the shown URL is the original connection with `***` for its
        /// password: the split here is the driver's split, so no part of a password can be
        /// shown as another part.
        #[test]
        fn the_shown_url_is_the_drivers_connection_without_its_password(text in postgres_url()) {
            let (Ok(url), Ok(mut expected)) = (
                text.parse::<PostgresUrl>(),
                text.parse::<tokio_postgres::Config>(),
            ) else {
                return Ok(());
            };
            if expected.get_password().is_some() {
                expected.password(HIDDEN);
            }
            let shown = url.to_string();
            let read: tokio_postgres::Config = shown
                .parse()
                .map_err(|e| TestCaseError::fail(format!("{shown} (from {text}): {e}")))?;
            prop_assert_eq!(read, expected, "{} shown as {}", text, shown);
        }
    }

    proptest! {
        #[test]
        fn a_parsed_url_never_shows_its_password(
            password in password(),
            raw in raw_password(),
            key in secret_key(),
        ) {
            let encoded = utf8_percent_encode(&password, NON_ALPHANUMERIC).to_string();
            for (text, secret) in [
                (format!("postgres://root:{encoded}@127.0.0.1:5432/test"), &password),
                (format!("postgresql://root:{raw}@db/test?sslmode=disable"), &raw),
                (format!("postgres://root@127.0.0.1:5432/test?{key}={encoded}"), &password),
                (format!("postgres://db/test?application_name=a&{key}={raw}&x=y"), &raw),
                (
                    format!("postgres://root:{raw}@db,db2:5433/test?{key}={encoded}"),
                    &password,
                ),
            ] {
                let url: StoreUrl = text.parse().map_err(|e| {
                    TestCaseError::fail(format!("{text}: {e}"))
                })?;
                assert_hidden(&url.to_string(), secret)?;
                assert_hidden(&format!("{url:?}"), secret)?;
                if let StoreUrl::Postgres(url) = &url {
                    prop_assert_eq!(url.connection_string(), &text);
                }
                if text.contains(&format!("{raw}@")) {
                    assert_hidden(&url.to_string(), &raw)?;
                }
            }
        }

        #[test]
        fn a_refused_url_never_shows_its_password(
            password in password(),
            raw in raw_password(),
            key in secret_key(),
        ) {
            let encoded = utf8_percent_encode(&password, NON_ALPHANUMERIC).to_string();
            for secret in [&password, &raw, &encoded] {
                for text in [
                    format!("postgres://root:{secret}@127.0.0.1:notaport/test"),
                    format!("postgres://root:{secret}"),
                    format!("postgres://root:{secret}/test@127.0.0.1"),
                    format!("postgres://root@db/test?{key}={secret}&unterminated"),
                    format!("postgres://db/test?{key}={secret}@x"),
                    format!("postgres://root:{secret}@[::1/test"),
                    format!("mysql://root:{secret}@db/test"),
                    format!("root:{secret}@db:5432/test"),
                    format!("{secret}://db"),
                ] {
                    if let Err(error) = text.parse::<StoreUrl>() {
                        assert_hidden(&error.to_string(), secret)?;
                        assert_hidden(&format!("{error:?}"), secret)?;
                    }
                    if let Err(error) = text.parse::<LogUrl>() {
                        assert_hidden(&error.to_string(), secret)?;
                    }
                }
                let kafka = format!("kafka://root:{secret}@broker:9092");
                let error = kafka.parse::<LogUrl>().unwrap_err();
                assert_hidden(&error.to_string(), secret)?;
            }
        }
    }
}
