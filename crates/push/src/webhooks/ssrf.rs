//! The SSRF guard: webhook endpoints are URLs that users give, and tenantsync must not become
//! their way into the networks it can reach (loopback, private ranges, cloud metadata).
//!
//! Three checks, one rule ([`forbidden`]): [`Guard::check_url`] refuses a URL at once (scheme,
//! credentials, IP-literal hosts, `localhost`); [`Guard::check_resolved`] resolves its host and
//! refuses it when any address is forbidden; and the guard is the HTTP client's resolver
//! (`reqwest::dns::Resolve`), so the client connects only to addresses checked in that same
//! lookup: there is no second lookup for a name to answer differently (DNS rebinding).
//!
//! This module must never put a URL's path or query in an error (they may carry tokens), and
//! never let an unchecked address through when private networks are not allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;

use super::WebhookSettings;

/// Why an address may not be connected to, or `None` when it may.
///
/// IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`) are judged by that address:
/// a dual-stack socket or a translator would deliver them there.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[(&str, &str)] = &[
        ("0.0.0.0/8", "this-network (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ];
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_broadcast() {
        return Some("broadcast");
    }
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("link-local (cloud metadata)");
    }
    if ip.is_link_local() {
        return Some("link-local");
    }
    RANGES
        .iter()
        .find(|(net, _)| net.parse::<Ipv4Net>().expect("valid CIDR").contains(&ip))
        .map(|(_, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    const RANGES: &[(&str, &str)] = &[
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "unique-local"),
        ("ff00::/8", "multicast"),
    ];
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    RANGES
        .iter()
        .find(|(net, _)| net.parse::<Ipv6Net>().expect("valid CIDR").contains(&ip))
        .map(|(_, why)| *why)
}

/// The IPv4 address an IPv6 address stands for, in the forms that reach it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let in_net = |net: &str| net.parse::<Ipv6Net>().expect("valid CIDR").contains(&ip);
    if in_net("::ffff:0:0/96") || in_net("::/96") || in_net("64:ff9b::/96") {
        return Some(last);
    }
    if in_net("2002::/16") {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Why an endpoint URL is refused. Names the reason and the host, never the URL's path or query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlRefused {
    #[error("not a valid URL: {0}")]
    Invalid(String),
    #[error("the scheme {0} is not allowed: http or https only")]
    Scheme(String),
    #[error("only https endpoints are allowed")]
    NotHttps,
    #[error("the URL of {host} carries a user name or password: use a header instead")]
    Credentials { host: String },
    #[error("the URL has no host")]
    NoHost,
    #[error("{host} is this machine (localhost)")]
    Localhost { host: String },
    #[error("{host}: {ip} is a {reason} address")]
    Address {
        host: String,
        ip: IpAddr,
        reason: &'static str,
    },
    #[error("{host} does not resolve: {message}")]
    Unresolved { host: String, message: String },
}

/// The guard's settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    #[error("allow_networks: {0:?} is not a network (CIDR such as 10.1.0.0/16) or an address")]
    Network(String),
    #[error("the webhook DNS resolver: {0}")]
    Resolver(String),
}

/// Decides which endpoints and addresses webhooks may reach, and resolves names for the HTTP
/// client. Cheap to clone; one per instance.
#[derive(Clone)]
pub struct Guard {
    allow_private_networks: bool,
    allow_networks: Arc<[IpNet]>,
    https_only: bool,
    lookup: Lookup,
}

#[derive(Clone)]
enum Lookup {
    System,
    Server(Arc<TokioResolver>),
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("allow_private_networks", &self.allow_private_networks)
            .field("allow_networks", &self.allow_networks)
            .field("https_only", &self.https_only)
            .field("own_dns_server", &matches!(self.lookup, Lookup::Server(_)))
            .finish()
    }
}

impl Guard {
    pub fn new(settings: &WebhookSettings) -> Result<Guard, GuardError> {
        let lookup = match settings.dns_server {
            None => Lookup::System,
            Some(server) => Lookup::Server(Arc::new(resolver_for(server)?)),
        };
        let allow_networks = settings
            .allow_networks
            .iter()
            .map(|text| network(text).ok_or_else(|| GuardError::Network(text.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Guard {
            allow_private_networks: settings.allow_private_networks,
            allow_networks: allow_networks.into(),
            https_only: settings.https_only,
            lookup,
        })
    }

    /// Why `ip` may not be reached under these settings, or `None`.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_private_networks {
            return None;
        }
        let canonical = ip.to_canonical();
        if self
            .allow_networks
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return None;
        }
        forbidden(ip)
    }

    /// Parses and checks an endpoint URL without any lookup: scheme, no credentials, a host,
    /// and, when the host is an IP address (in any form the URL parser normalises: decimal,
    /// hex, octal IPv4, bracketed IPv6), that address.
    pub fn check_url(&self, url: &str) -> Result<Url, UrlRefused> {
        let url = Url::parse(url).map_err(|e| UrlRefused::Invalid(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.https_only => return Err(UrlRefused::NotHttps),
            "http" => {}
            other => return Err(UrlRefused::Scheme(other.to_owned())),
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(UrlRefused::NoHost)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefused::Credentials { host: host.into() });
        }
        if let Some(ip) = literal(host) {
            if let Some(reason) = self.refuses(ip) {
                return Err(UrlRefused::Address {
                    host: host.into(),
                    ip,
                    reason,
                });
            }
        } else if !self.allow_private_networks && is_localhost(host) {
            return Err(UrlRefused::Localhost { host: host.into() });
        }
        Ok(url)
    }

    /// Resolves the URL's host and refuses it when it does not resolve or when any of its
    /// addresses is refused: a name that points at one public and one private address is a
    /// way in.
    pub async fn check_resolved(&self, url: &Url) -> Result<(), UrlRefused> {
        let host = url.host_str().ok_or(UrlRefused::NoHost)?;
        if let Some(ip) = literal(host) {
            return match self.refuses(ip) {
                Some(reason) => Err(UrlRefused::Address {
                    host: host.into(),
                    ip,
                    reason,
                }),
                None => Ok(()),
            };
        }
        if !self.allow_private_networks && is_localhost(host) {
            return Err(UrlRefused::Localhost { host: host.into() });
        }
        self.resolve_checked(host).await.map(drop)
    }

    /// The addresses of `host`, all of them allowed, or why not.
    async fn resolve_checked(&self, host: &str) -> Result<Vec<IpAddr>, UrlRefused> {
        let addresses = self.resolve(host).await?;
        for &ip in &addresses {
            if let Some(reason) = self.refuses(ip) {
                return Err(UrlRefused::Address {
                    host: host.into(),
                    ip,
                    reason,
                });
            }
        }
        Ok(addresses)
    }

    /// The addresses of `host`, unchecked: at least one, or why not.
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, UrlRefused> {
        let unresolved = |message: String| UrlRefused::Unresolved {
            host: host.into(),
            message,
        };
        let addresses: Vec<IpAddr> = match &self.lookup {
            Lookup::System => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| unresolved(e.to_string()))?
                .map(|a| a.ip())
                .collect(),
            Lookup::Server(resolver) => resolver
                .lookup_ip(host)
                .await
                .map_err(|e| unresolved(e.to_string()))?
                .iter()
                .collect(),
        };
        if addresses.is_empty() {
            return Err(unresolved("no address".into()));
        }
        Ok(addresses)
    }
}

/// The HTTP client's resolver: it hands the client only addresses it has just checked, and
/// refuses the whole name when any address is refused.
impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str();
            if !guard.allow_private_networks && is_localhost(host) {
                let refused = UrlRefused::Localhost { host: host.into() };
                return Err(Box::new(Refused(refused)) as _);
            }
            match guard.resolve_checked(host).await {
                Ok(addresses) => {
                    let addrs: reqwest::dns::Addrs = Box::new(
                        addresses
                            .into_iter()
                            .map(|ip| SocketAddr::new(ip, 0))
                            .collect::<Vec<_>>()
                            .into_iter(),
                    );
                    Ok(addrs)
                }
                Err(UrlRefused::Unresolved { message, .. }) => {
                    Err(Box::new(std::io::Error::other(message)) as _)
                }
                Err(refused) => Err(Box::new(Refused(refused)) as _),
            }
        })
    }
}

/// The resolver's refusal, found again in the HTTP client's error chain.
#[derive(Debug, thiserror::Error)]
#[error("address refused by the SSRF guard: {0}")]
pub struct Refused(pub UrlRefused);

/// A CIDR, or one address as the network of just itself.
fn network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

fn resolver_for(server: SocketAddr) -> Result<TokioResolver, GuardError> {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        server.ip(),
        true,
        vec![udp, tcp],
    )]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let options = builder.options_mut();
    // Both families, so that every address the name has is checked, not just the first kind.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // This server is the authority the operator named; the hosts file is the system's.
    options.use_hosts_file = ResolveHosts::Never;
    builder
        .build()
        .map_err(|e| GuardError::Resolver(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard_with(settings: WebhookSettings) -> Guard {
        Guard::new(&settings).unwrap()
    }

    fn strict() -> Guard {
        guard_with(WebhookSettings::default())
    }

    #[test]
    fn forbidden_names_every_private_kind() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.255", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this-network (0.0.0.0/8)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
            ("2002:7f00:1::", "loopback"),
        ];
        for (ip, why) in cases {
            assert_eq!(forbidden(ip.parse().unwrap()), Some(why), "{ip}");
        }
    }

    #[test]
    fn forbidden_lets_public_addresses_through() {
        for ip in [
            "203.0.113.10",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(forbidden(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn check_url_refuses_private_literals_in_every_spelling() {
        let guard = strict();
        for url in [
            "http://127.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://[::ffff:7f00:1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.0.1./",
            "https://0.0.0.0/",
            "http://[fd00::1]/",
        ] {
            match guard.check_url(url) {
                Err(UrlRefused::Address { .. }) => {}
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn check_url_refuses_localhost_by_name() {
        let guard = strict();
        for url in [
            "http://localhost/",
            "http://LOCALHOST:8080/",
            "http://localhost./",
            "http://api.localhost/",
        ] {
            assert!(
                matches!(guard.check_url(url), Err(UrlRefused::Localhost { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn check_url_refuses_schemes_credentials_and_missing_hosts() {
        let guard = strict();
        assert_eq!(
            guard.check_url("ftp://example.com/"),
            Err(UrlRefused::Scheme("ftp".into()))
        );
        assert!(matches!(
            guard.check_url("file:///etc/passwd"),
            Err(UrlRefused::Scheme(_))
        ));
        assert!(matches!(
            guard.check_url("http://user:pw@example.com/"),
            Err(UrlRefused::Credentials { .. })
        ));
        assert!(matches!(
            guard.check_url("not a url"),
            Err(UrlRefused::Invalid(_))
        ));
        assert!(guard.check_url("http://example.com/hook").is_ok());
        assert!(guard.check_url("https://203.0.113.10/hook").is_ok());

        let https_only = guard_with(WebhookSettings {
            https_only: true,
            ..WebhookSettings::default()
        });
        assert_eq!(
            https_only.check_url("http://example.com/"),
            Err(UrlRefused::NotHttps)
        );
        assert!(https_only.check_url("https://example.com/").is_ok());
    }

    #[test]
    fn refusals_name_the_host_but_never_the_path_or_query() {
        let guard = strict();
        for url in [
            "http://127.0.0.1/secret-path?token=hunter2",
            "http://user:hunter2@example.com/secret-path?token=hunter2",
            "http://localhost/secret-path?token=hunter2",
        ] {
            let message = guard.check_url(url).unwrap_err().to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(!message.contains("secret-path"), "{message}");
        }
        let message = guard
            .check_url("http://10.0.0.1/x?token=hunter2")
            .unwrap_err()
            .to_string();
        assert_eq!(message, "10.0.0.1: 10.0.0.1 is a private address");
    }

    #[test]
    fn the_allow_list_and_the_switch_let_private_addresses_through() {
        let listed = guard_with(WebhookSettings {
            allow_networks: vec!["10.1.0.0/16".into(), "192.168.7.7".into()],
            ..WebhookSettings::default()
        });
        assert!(listed.check_url("http://10.1.2.3/").is_ok());
        assert!(listed.check_url("http://[::ffff:10.1.2.3]/").is_ok());
        assert!(listed.check_url("http://10.2.0.1/").is_err());
        assert!(listed.check_url("http://127.0.0.1/").is_err());
        assert!(listed.check_url("http://192.168.7.7/").is_ok());
        assert!(listed.check_url("http://192.168.7.8/").is_err());

        let error = Guard::new(&WebhookSettings {
            allow_networks: vec!["10.1.0.0/33".into()],
            ..WebhookSettings::default()
        })
        .unwrap_err();
        assert!(matches!(error, GuardError::Network(_)), "{error}");

        let open = guard_with(WebhookSettings {
            allow_private_networks: true,
            ..WebhookSettings::default()
        });
        assert!(open.check_url("http://127.0.0.1/").is_ok());
        assert!(open.check_url("http://localhost:8080/").is_ok());
        assert!(open.check_url("ftp://127.0.0.1/").is_err());
    }

    #[tokio::test]
    async fn check_resolved_refuses_names_of_this_machine() {
        let guard = strict();
        let url = Url::parse("http://localhost:9/").unwrap();
        assert!(matches!(
            guard.check_resolved(&url).await,
            Err(UrlRefused::Localhost { .. })
        ));
        let url = Url::parse("http://[::1]/").unwrap();
        assert!(matches!(
            guard.check_resolved(&url).await,
            Err(UrlRefused::Address { .. })
        ));
        // The system resolver answers "localhost" itself; a missing name is refused too.
        let url = Url::parse("http://name-that-does-not-exist.invalid/").unwrap();
        assert!(matches!(
            guard.check_resolved(&url).await,
            Err(UrlRefused::Unresolved { .. })
        ));
    }
}
