//! Where the server may send webhooks: the destination policy of event delivery.
//!
//! A run's `event_delivery.topic` is chosen by whoever creates the run, and the server POSTs
//! to it from inside the operator's network. Without a policy a topic can aim the server at
//! itself, at a database on the loopback interface, at the cloud metadata service
//! (169.254.169.254) or at any private address (server-side request forgery). So a topic is
//! checked before each delivery, after DNS resolution (a public name may resolve to a private
//! address):
//! - only `http://` URLs are sent (this build has no TLS client);
//! - every address the host resolves to must be public — loopback, private, link-local,
//!   carrier-grade NAT, unspecified, multicast and the other special ranges are refused
//!   (IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry) — unless the
//!   host name or the address is on the operator's allow-list (`GYOZA_DELIVERY_ALLOW`:
//!   host names and CIDRs, comma-separated);
//! - the request goes to the addresses that were checked, not to a second lookup (no DNS
//!   rebinding), and redirects are not followed.
//!
//! [`redact`] takes credentials out of a URL before it is logged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// A host name, compared case-insensitively.
    Host(String),
    /// An address range.
    Net(IpAddr, u8),
}

/// Which destinations deliveries may reach beyond the public internet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allowed: Vec<Allowed>,
}

/// A topic that passed the policy: where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The URL's host as written (for the `Host` header and the pinned resolution).
    pub host: String,
    /// The checked addresses, with the URL's port.
    pub addrs: Vec<SocketAddr>,
}

impl DestinationPolicy {
    /// A policy from an allow-list: host names and CIDRs (`10.0.0.0/8`, `fd00::/8`, a bare
    /// address meaning just it), separated by commas or white space. Empty: public only.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for entry in list.split([',', ' ', '\n', '\t']).filter(|e| !e.is_empty()) {
            allowed.push(parse_entry(entry)?);
        }
        Ok(Self { allowed })
    }

    /// Checks `url` and resolves its host; the error says why the topic is refused.
    pub async fn check(&self, url: &str) -> Result<Destination, String> {
        let (host, port) = host_and_port(url)?;
        let host_allowed = self.allowed.iter().any(|a| match a {
            Allowed::Host(name) => name.eq_ignore_ascii_case(&host),
            Allowed::Net(..) => false,
        });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        if !host_allowed {
            for addr in &addrs {
                let ip = canonical(addr.ip());
                if let Some(kind) = special(ip) {
                    if !self.allows_ip(ip) {
                        return Err(format!(
                            "{host} resolves to {ip}, a {kind} address; deliveries go only to \
                             public addresses unless the server's GYOZA_DELIVERY_ALLOW lists \
                             the host or its range"
                        ));
                    }
                }
            }
        }
        Ok(Destination {
            host: bare.to_owned(),
            addrs,
        })
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|a| match a {
            Allowed::Net(net, prefix) => in_net(ip, canonical(*net), *prefix),
            Allowed::Host(_) => false,
        })
    }
}

fn parse_entry(entry: &str) -> Result<Allowed, String> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (entry, None),
    };
    match addr.parse::<IpAddr>() {
        Ok(ip) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    format!("delivery allow-list entry '{entry}': bad prefix length")
                })?,
            };
            Ok(Allowed::Net(ip, prefix))
        }
        Err(_) if prefix.is_none() && !entry.contains(['/', ':', '@']) => {
            Ok(Allowed::Host(entry.to_ascii_lowercase()))
        }
        Err(_) => Err(format!(
            "delivery allow-list entry '{entry}' is neither a host name nor a CIDR"
        )),
    }
}

/// The host and port of an `http://` URL.
fn host_and_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("topic {} is not an http:// URL", redact(url)))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("topic {} has a malformed host", redact(url)))?;
        (format!("[{inner}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("topic {} has no host", redact(url)));
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => p
            .parse()
            .map_err(|_| format!("topic {} has a bad port", redact(url)))?,
    };
    Ok((host, port))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What kind of non-public address `ip` is, if it is one.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if a == 100 && (64..128).contains(&b) {
        Some("carrier-grade NAT")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("documentation")
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        Some("NAT64")
    } else {
        None
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// `url` with any `user:password@` replaced by `***@`, for logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn refused(policy: &DestinationPolicy, url: &str) -> String {
        policy.check(url).await.unwrap_err()
    }

    #[tokio::test]
    async fn inward_addresses_are_refused_by_default() {
        let policy = DestinationPolicy::default();
        for (url, kind) in [
            ("http://127.0.0.1:9/hook", "loopback"),
            ("http://localhost:9/hook", "loopback"),
            ("http://10.1.2.3/x", "private"),
            ("http://192.168.0.1/x", "private"),
            ("http://172.20.0.1/x", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://100.64.0.1/x", "carrier-grade NAT"),
            ("http://0.0.0.0/x", "unspecified"),
            ("http://[::1]:8080/x", "loopback"),
            ("http://[::ffff:127.0.0.1]/x", "loopback"),
            ("http://[fe80::1]/x", "link-local"),
            ("http://[fd00::1]/x", "private"),
        ] {
            let why = refused(&policy, url).await;
            assert!(why.contains(kind), "{url}: {why}");
            assert!(why.contains("GYOZA_DELIVERY_ALLOW"), "{why}");
        }
        assert!(
            refused(&policy, "https://example.com/x")
                .await
                .contains("http://")
        );
        assert!(
            refused(&policy, "ftp://example.com/x")
                .await
                .contains("http://")
        );
    }

    #[tokio::test]
    async fn public_addresses_pass_and_the_checked_address_is_what_is_used() {
        let policy = DestinationPolicy::default();
        let ok = policy
            .check("http://93.184.215.14:8080/hook")
            .await
            .unwrap();
        assert_eq!(ok.addrs, ["93.184.215.14:8080".parse().unwrap()]);
        assert_eq!(ok.host, "93.184.215.14");
    }

    #[tokio::test]
    async fn the_allow_list_admits_hosts_and_ranges() {
        let policy = DestinationPolicy::parse("localhost, 10.0.0.0/8 fd00::/8").unwrap();
        assert!(policy.check("http://localhost:9/x").await.is_ok());
        assert!(policy.check("http://10.9.9.9/x").await.is_ok());
        assert!(policy.check("http://[fd00::5]/x").await.is_ok());
        assert!(policy.check("http://192.168.1.1/x").await.is_err());
        let one = DestinationPolicy::parse("127.0.0.1").unwrap();
        assert!(one.check("http://127.0.0.1:5/x").await.is_ok());
        assert!(one.check("http://127.0.0.2:5/x").await.is_err());
        for bad in ["10.0.0.0/33", "http://x", "a@b"] {
            assert!(DestinationPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_redacted_and_hosts_parsed_past_them() {
        assert_eq!(
            redact("http://user:pw@hooks.example:81/p?q=1"),
            "http://***@hooks.example:81/p?q=1"
        );
        assert_eq!(
            redact("http://hooks.example/a@b"),
            "http://hooks.example/a@b"
        );
        assert_eq!(
            host_and_port("http://u:p@127.0.0.1:81/x").unwrap(),
            ("127.0.0.1".to_owned(), 81)
        );
        let why = host_and_port("http://u:secret@/x").unwrap_err();
        assert!(!why.contains("secret"), "{why}");
    }
}
