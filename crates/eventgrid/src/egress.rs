//! Where the router may send requests: webhook URLs are http(s) and never
//! reach a link-local or cloud metadata address (169.254.169.254 answers
//! with the host's credentials on most clouds).
//!
//! Checked twice, because a subscription's URL alone cannot prove it:
//! - when a subscription is written ([`check_url`]): the URL is parsed the
//!   way the HTTP client parses it (WHATWG rules, so `http://2852039166/`
//!   and `http://0xa9fea9fe/` are 169.254.169.254 too), and an IP host in a
//!   forbidden range is refused with a reason;
//! - when a request is sent: the URL is checked again (one stored before
//!   these rules, or by an older process on a shared database, is refused
//!   and dead-lettered, not called), host names are resolved through
//!   [`GuardedResolver`], which drops forbidden addresses (a name that
//!   resolves to 169.254.169.254, now or after a DNS change, gets
//!   nowhere), no proxy is taken from the environment (it would resolve
//!   names itself), and redirects are not followed (a receiver answering
//!   307 to the metadata address would otherwise send the router there).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Metadata host names that no DNS should be asked about.
const METADATA_NAMES: [&str; 2] = ["metadata.google.internal", "metadata"];

/// The clouds' IPv6 metadata addresses: AWS `fd00:ec2::254`, Google
/// `fd20:ce::254`.
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
];

/// Whether the router may not connect to `ip`: IPv4 link-local
/// (169.254.0.0/16, the metadata services), IPv6 link-local (fe80::/10),
/// the clouds' IPv6 metadata addresses, and an IPv4 link-local address
/// inside IPv6 (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
/// or NAT64's `64:ff9b::a.b.c.d`).
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                Some(std::net::Ipv4Addr::new(a, b, c, d))
            } else {
                v6.to_ipv4()
            };
            (s[0] & 0xffc0) == 0xfe80
                || METADATA_V6.contains(&v6)
                || embedded.is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// Whether `name` is a metadata service's host name (any case, with or
/// without the root's trailing dot).
fn metadata_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    METADATA_NAMES.contains(&name.as_str())
}

/// A webhook URL the router may call: http(s), a host, and not a
/// forbidden address or metadata name. Returns the parsed URL.
pub fn check_url(url: &str) -> Result<Url, String> {
    let shown = || url.chars().take(80).collect::<String>();
    let lower = url.trim_start().to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(format!(
            "endpointUrl must be an http(s) URL (got '{}')",
            shown()
        ));
    }
    // WHATWG reads `http:///x` as host `x`; written so, it is a mistake.
    let after_scheme = lower.split_once("//").map_or("", |(_, rest)| rest);
    if after_scheme.starts_with(['/', '?', '#']) || after_scheme.is_empty() {
        return Err("endpointUrl has no host".into());
    }
    let parsed = Url::parse(url).map_err(|e| match e {
        url::ParseError::EmptyHost => "endpointUrl has no host".to_string(),
        e => format!("endpointUrl is not a valid URL ({e}): '{}'", shown()),
    })?;
    let forbidden = match parsed.host() {
        None => return Err("endpointUrl has no host".into()),
        Some(url::Host::Ipv4(v4)) => forbidden_ip(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => forbidden_ip(IpAddr::V6(v6)),
        Some(url::Host::Domain(name)) => metadata_name(name),
    };
    if forbidden {
        return Err(format!(
            "endpointUrl may not point at a link-local or metadata address ({})",
            parsed.host_str().unwrap_or_default()
        ));
    }
    Ok(parsed)
}

/// The system resolver, minus forbidden addresses: a name that resolves
/// only to those fails to connect, with the reason in the error.
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            if metadata_name(&host) {
                return Err(refused(&host));
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = allowed_addrs(found);
            if allowed.is_empty() {
                return Err(refused(&host));
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The addresses of `found` the router may connect to.
fn allowed_addrs(found: Vec<SocketAddr>) -> Vec<SocketAddr> {
    found
        .into_iter()
        .filter(|a| !forbidden_ip(a.ip()))
        .collect()
}

fn refused(host: &str) -> Box<dyn std::error::Error + Send + Sync> {
    format!("{host} resolves only to link-local or metadata addresses").into()
}

/// The HTTP client deliveries and handshakes use: names resolved through
/// [`GuardedResolver`], no redirects followed (a 3xx answer is a failed
/// attempt, retried like any other), no proxy from the environment (a
/// proxy would resolve names itself, past the guard), `connect_timeout`
/// to connect.
pub fn client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver))
        .build()
        .expect("an HTTP client without custom TLS settings always builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_addresses_are_refused_however_they_are_written() {
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://169.254.1/",
            "http://[fe80::1]/x",
            "http://[FE80::1%25eth0]/x",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://metadata.google.internal./computeMetadata/v1/",
            "http://[::a9fe:a9fe]/",
            "http://[64:ff9b::169.254.169.254]/",
            "http://[fd20:ce::254]/",
            "HTTP://METADATA/",
            "http://user:pw@169.254.169.254:80/",
        ] {
            let err = check_url(url).err();
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("link-local") || e.contains("not a valid URL")),
                "{url}: {err:?}"
            );
        }
    }

    #[test]
    fn ordinary_receivers_pass() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "https://example.com/api/updates?code=abc",
            "http://[::1]:9000/x",
            "http://receiver.internal/",
            "https://169.255.0.1/",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn other_schemes_and_hostless_urls_say_why() {
        assert!(check_url("ftp://x/y").unwrap_err().contains("http(s)"));
        assert!(check_url("javascript:alert(1)")
            .unwrap_err()
            .contains("http(s)"));
        assert!(check_url("http:///x").unwrap_err().contains("no host"));
        assert!(check_url("http://exa mple.com/")
            .unwrap_err()
            .contains("not a valid URL"));
    }

    #[test]
    fn resolved_forbidden_addresses_are_dropped() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            allowed_addrs(vec![a("169.254.169.254:0"), a("10.0.0.5:0")]),
            vec![a("10.0.0.5:0")]
        );
        assert!(allowed_addrs(vec![a("169.254.169.254:0"), a("[fe80::1]:0")]).is_empty());
        assert_eq!(allowed_addrs(vec![a("[::1]:0")]), vec![a("[::1]:0")]);
    }
}
