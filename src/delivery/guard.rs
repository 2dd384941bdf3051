//! The target guard for per-video callback URLs: a URL supplied through the
//! API must not make the relay POST into the operator's own network (SSRF).
//!
//! Two fences:
//! - at enqueue, a URL whose host is a literal forbidden IP is refused (400);
//! - at send time, the host name is resolved and the delivery is refused
//!   (`dead`, `forbidden_target`) if any address is forbidden; the client
//!   that sends to per-video URLs also connects only to addresses that pass
//!   [`is_forbidden`], so a name that changes its answer between the check
//!   and the connection (DNS rebinding) gains nothing.
//!
//! Configured `callbacks.urls` are the operator's own and are not guarded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether the relay refuses to send to `ip` on behalf of an API client:
/// loopback, private, link-local (cloud metadata included), CGNAT,
/// unique-local, multicast, unspecified, broadcast, documentation and other
/// reserved ranges, and IPv6 forms that embed such an IPv4 address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || a >= 240 // reserved 240.0.0.0/4
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96)
    // addresses reach the embedded IPv4 address.
    let embedded_v4 = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    if segments[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return forbidden_v4(embedded_v4);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded_v4);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
}

/// The URL's host as a literal IP, if it is one.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The URL points at a forbidden address.
    #[error("{0} is a loopback, private or reserved address")]
    Forbidden(IpAddr),
    /// The name did not resolve (a transient problem, retried).
    #[error("cannot resolve {host}: {reason}")]
    Unresolved {
        /// The host name.
        host: String,
        /// The resolver's error.
        reason: String,
    },
}

/// Resolves the URL's host (or takes its literal IP) and refuses it if any
/// address is forbidden.
pub async fn check_target(url: &Url) -> Result<(), GuardError> {
    if let Some(ip) = literal_ip(url) {
        return if is_forbidden(ip) {
            Err(GuardError::Forbidden(ip))
        } else {
            Ok(())
        };
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|err| GuardError::Unresolved {
            host: host.clone(),
            reason: err.to_string(),
        })?;
    for address in addresses {
        if is_forbidden(address.ip()) {
            return Err(GuardError::Forbidden(address.ip()));
        }
    }
    Ok(())
}

/// A resolver that drops forbidden addresses, for the client that sends to
/// per-video URLs (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl GuardedResolver {
    /// As a reqwest resolver.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved.filter(|a| !is_forbidden(a.ip())).collect();
            if allowed.is_empty() {
                return Err(
                    format!("{} resolves only to forbidden addresses", name.as_str()).into(),
                );
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_ranges() {
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.10",
            "198.51.100.2",
            "203.0.113.7",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert!(is_forbidden(ip(bad)), "{bad} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!is_forbidden(ip(good)), "{good} should be allowed");
        }
    }

    #[tokio::test]
    async fn check_target_on_literals_and_names() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            check_target(&url("http://127.0.0.1:9/x")).await,
            Err(GuardError::Forbidden(ip("127.0.0.1")))
        );
        assert!(matches!(
            check_target(&url("http://[::ffff:127.0.0.1]/x")).await,
            Err(GuardError::Forbidden(_))
        ));
        assert!(matches!(
            check_target(&url("http://localhost:9/x")).await,
            Err(GuardError::Forbidden(_))
        ));
        assert_eq!(check_target(&url("https://93.184.216.34/x")).await, Ok(()));
    }
}
