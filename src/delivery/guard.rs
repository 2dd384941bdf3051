//! The target guard for per-video callback URLs: a URL supplied through the
//! API must not make the relay POST into the operator's own network (SSRF).
//!
//! Three fences:
//! - at enqueue, a URL whose host is a literal forbidden IP, or a host name
//!   longer than a DNS name can be (253 octets), is refused (400);
//! - at send time, the host name is resolved and the delivery is refused
//!   (`dead`, `forbidden_target`) if any address is forbidden; the client
//!   that sends to per-video URLs also connects only through
//!   [`GuardedResolver`], which refuses a name when any address it resolves
//!   to is forbidden, so a name that changes its answer between the check
//!   and the connection (DNS rebinding) gains nothing;
//! - callback clients never use a proxy from the environment
//!   (`HTTP_PROXY`, `ALL_PROXY`, …): through a proxy the resolver would
//!   never see the target (see `outbound::direct_client_builder`).
//!
//! What is forbidden is one table per address family, [`V4_BLOCKS`] and
//! [`V6_BLOCKS`]: every block of IANA's IPv4 and IPv6 Special-Purpose
//! Address Registries (RFC 6890 and its updates), plus multicast and the
//! deprecated forms that embed or reach an IPv4 address.
//!
//! Configured `callbacks.urls` are the operator's own and are not guarded.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The longest host name DNS can carry: 253 octets in text form (255 on
/// the wire, RFC 1035 §2.3.4, less the length octet and the root label).
pub const MAX_HOST_LEN: usize = 253;

/// One forbidden IPv4 block: first address, prefix length, registry name.
pub type V4Block = (Ipv4Addr, u8, &'static str);
/// One forbidden IPv6 block: first address, prefix length, registry name.
pub type V6Block = (Ipv6Addr, u8, &'static str);

/// Forbidden IPv4 blocks: IANA's IPv4 Special-Purpose Address Registry,
/// every entry whatever its "globally reachable" column says (the
/// reachable ones are anycast infrastructure — AS112, AMT, the 6to4 relay
/// — where no webhook receiver lives), plus multicast.
pub const V4_BLOCKS: &[V4Block] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"This network\" (RFC 791)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "Private-Use (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "Shared Address Space (RFC 6598)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "Loopback (RFC 1122)"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "Link Local (RFC 3927)"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "Private-Use (RFC 1918)"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF Protocol Assignments (RFC 6890)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "Documentation TEST-NET-1 (RFC 5737)",
    ),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112-v4 (RFC 7535)"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT (RFC 7450)"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "Deprecated 6to4 Relay Anycast (RFC 7526)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "Private-Use (RFC 1918)"),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        "Direct Delegation AS112 Service (RFC 7534)",
    ),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "Benchmarking (RFC 2544)"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "Documentation TEST-NET-2 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "Documentation TEST-NET-3 (RFC 5737)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "Multicast (RFC 5771)"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "Reserved (RFC 1112)"),
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        "Limited Broadcast (RFC 919)",
    ),
];

/// Forbidden IPv6 blocks: IANA's IPv6 Special-Purpose Address Registry,
/// plus multicast and the deprecated site-local and IPv4-compatible forms.
///
/// All of `2001::/23` (IETF Protocol Assignments) is refused, although
/// IANA marks a few of its sub-blocks globally reachable (`2001:1::1/128`
/// PCP anycast, `2001:3::/32` AMT, `2001:4:112::/48` AS112, ORCHIDv2, Drone
/// Remote ID): those are protocol infrastructure, not hosts that receive
/// webhooks, and `2001::/32` (Teredo) inside it tunnels to arbitrary IPv4
/// space. One rule for the whole block is simpler to audit than following
/// the column entry by entry, and costs no legitimate receiver. The same
/// goes for `2620:4f:8000::/48` (AS112) and for the transition forms
/// (6to4, NAT64, IPv4-mapped and -translated), refused whole rather than
/// judged by the IPv4 address they embed: a receiver with a public IPv4
/// address is reached by that address.
pub const V6_BLOCKS: &[V6Block] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible, deprecated (RFC 4291); holds :: and ::1",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        128,
        "Unspecified (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1),
        128,
        "Loopback (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        "IPv4-translated (RFC 2765)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-IPv6 Translation, NAT64 (RFC 6052)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "Local-use IPv4/IPv6 Translation (RFC 8215)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "Discard-Only (RFC 6666)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "Dummy IPv6 Prefix (RFC 9780)",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF Protocol Assignments (RFC 2928), Teredo 2001::/32 included",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "TEREDO (RFC 4380)",
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        "Benchmarking (RFC 5180)",
    ),
    (
        Ipv6Addr::new(0x2001, 3, 0, 0, 0, 0, 0, 0),
        32,
        "AMT (RFC 7450)",
    ),
    (
        Ipv6Addr::new(0x2001, 4, 0x112, 0, 0, 0, 0, 0),
        48,
        "AS112-v6 (RFC 7535)",
    ),
    (
        Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHID, deprecated (RFC 4843)",
    ),
    (
        Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHIDv2 (RFC 7343)",
    ),
    (
        Ipv6Addr::new(0x2001, 0x30, 0, 0, 0, 0, 0, 0),
        28,
        "Drone Remote ID Protocol Entity Tags (RFC 9374)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "Documentation (RFC 3849)",
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "6to4 (RFC 3056)",
    ),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        "Direct Delegation AS112 Service (RFC 7534)",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "Documentation (RFC 9637)",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "Segment Routing SIDs (RFC 9602)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "Unique-Local (RFC 4193)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "Link-Local Unicast (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "Site-Local, deprecated (RFC 3879)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "Multicast (RFC 4291)",
    ),
];

/// Whether `address` lies in the block starting at `first` with `prefix`
/// leading bits (integer forms of either family).
fn in_block(address: u128, first: u128, prefix: u8, bits: u32) -> bool {
    let host_bits = bits - u32::from(prefix);
    // A /0 would shift by the whole width: no table entry is one, but the
    // check stays total.
    let mask = if host_bits >= bits {
        0
    } else {
        (!0u128 >> (128 - bits)) & !((1u128 << host_bits) - 1)
    };
    address & mask == first & mask
}

/// The registry name of the forbidden block holding `ip`, if any.
pub fn forbidden_block(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_BLOCKS
            .iter()
            .find(|(first, prefix, _)| {
                in_block(
                    u128::from(v4.to_bits()),
                    u128::from(first.to_bits()),
                    *prefix,
                    32,
                )
            })
            .map(|(_, _, name)| *name),
        IpAddr::V6(v6) => V6_BLOCKS
            .iter()
            .find(|(first, prefix, _)| in_block(v6.to_bits(), first.to_bits(), *prefix, 128))
            .map(|(_, _, name)| *name),
    }
}

/// Whether the relay refuses to send to `ip` on behalf of an API client:
/// any address in [`V4_BLOCKS`] or [`V6_BLOCKS`].
pub fn is_forbidden(ip: IpAddr) -> bool {
    forbidden_block(ip).is_some()
}

/// The URL's host as a literal IP, if it is one.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Whether the URL's host name is longer than any DNS name
/// ([`MAX_HOST_LEN`]); such a URL cannot name a real receiver, and a
/// resolver handed one would only fail later, less clearly.
pub fn host_too_long(url: &Url) -> bool {
    matches!(url.host(), Some(url::Host::Domain(name)) if name.len() > MAX_HOST_LEN)
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The URL points at a forbidden address.
    #[error("{0} is a loopback, private or reserved address")]
    Forbidden(IpAddr),
    /// The host name is longer than DNS allows.
    #[error("the host name is longer than {MAX_HOST_LEN} octets")]
    HostTooLong,
    /// The name did not resolve (a transient problem, retried).
    #[error("cannot resolve {host}: {reason}")]
    Unresolved {
        /// The host name.
        host: String,
        /// The resolver's error.
        reason: String,
    },
}

/// The future a [`HostLookup`] returns.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves host names: the system resolver in production, a scripted one
/// in tests (to play a name whose answer changes between two lookups).
pub trait HostLookup: Send + Sync + 'static {
    /// Every address `host` resolves to now.
    fn lookup(&self, host: &str) -> LookupFuture;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addresses.map(|address| address.ip()).collect())
        })
    }
}

/// Resolves the URL's host (or takes its literal IP) with the system
/// resolver and refuses it if any address is forbidden.
pub async fn check_target(url: &Url) -> Result<(), GuardError> {
    check_target_with(url, &SystemLookup).await
}

/// [`check_target`] with the given resolver.
pub async fn check_target_with(url: &Url, lookup: &dyn HostLookup) -> Result<(), GuardError> {
    if host_too_long(url) {
        return Err(GuardError::HostTooLong);
    }
    if let Some(ip) = literal_ip(url) {
        return if is_forbidden(ip) {
            Err(GuardError::Forbidden(ip))
        } else {
            Ok(())
        };
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    let addresses = lookup
        .lookup(&host)
        .await
        .map_err(|err| GuardError::Unresolved {
            host: host.clone(),
            reason: err.to_string(),
        })?;
    // Any forbidden address refuses the name: which address the client
    // would pick is not ours to predict.
    if let Some(ip) = addresses.into_iter().find(|ip| is_forbidden(*ip)) {
        return Err(GuardError::Forbidden(ip));
    }
    Ok(())
}

/// The resolver of the client that sends to per-video URLs (see the module
/// docs): it resolves again at connection time and refuses the name if any
/// address is forbidden, whatever the earlier [`check_target`] saw.
#[derive(Clone)]
pub struct GuardedResolver {
    lookup: Arc<dyn HostLookup>,
}

impl GuardedResolver {
    /// Guards `lookup`, as a reqwest resolver.
    pub fn with_lookup(lookup: Arc<dyn HostLookup>) -> Arc<Self> {
        Arc::new(Self { lookup })
    }
}

impl std::fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardedResolver")
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let host = name.as_str();
            if host.len() > MAX_HOST_LEN {
                return Err(format!("host name longer than {MAX_HOST_LEN} octets").into());
            }
            let resolved = lookup.lookup(host).await?;
            if let Some(ip) = resolved.iter().find(|ip| is_forbidden(**ip)) {
                return Err(format!("{host} resolves to the forbidden address {ip}").into());
            }
            if resolved.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            // Port 0: reqwest puts the URL's port on each address.
            let addrs: Addrs = Box::new(
                resolved
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// IANA's IPv4 and IPv6 Special-Purpose Address Registries, typed
    /// again from the registries (not from [`V4_BLOCKS`]/[`V6_BLOCKS`]),
    /// plus multicast and the deprecated forms the guard also refuses.
    const REGISTRY: &[(&str, &str)] = &[
        ("0.0.0.0/8", "this network"),
        ("0.0.0.0/32", "this host on this network"),
        ("10.0.0.0/8", "private-use"),
        ("100.64.0.0/10", "shared address space"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link local"),
        ("172.16.0.0/12", "private-use"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.0.0/29", "IPv4 service continuity prefix"),
        ("192.0.0.8/32", "IPv4 dummy address"),
        ("192.0.0.9/32", "port control protocol anycast"),
        ("192.0.0.10/32", "TURN anycast"),
        ("192.0.0.170/32", "NAT64/DNS64 discovery"),
        ("192.0.0.171/32", "NAT64/DNS64 discovery"),
        ("192.0.2.0/24", "documentation TEST-NET-1"),
        ("192.31.196.0/24", "AS112-v4"),
        ("192.52.193.0/24", "AMT"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
        ("192.168.0.0/16", "private-use"),
        ("192.175.48.0/24", "direct delegation AS112 service"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation TEST-NET-2"),
        ("203.0.113.0/24", "documentation TEST-NET-3"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "limited broadcast"),
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b::/96", "IPv4-IPv6 translation"),
        ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
        ("100::/64", "discard-only"),
        ("100:0:0:1::/64", "dummy IPv6 prefix"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001::/32", "TEREDO"),
        ("2001:1::1/128", "port control protocol anycast"),
        ("2001:1::2/128", "TURN anycast"),
        (
            "2001:1::3/128",
            "DNS-SD service registration protocol anycast",
        ),
        ("2001:2::/48", "benchmarking"),
        ("2001:3::/32", "AMT"),
        ("2001:4:112::/48", "AS112-v6"),
        ("2001:10::/28", "ORCHID (deprecated)"),
        ("2001:20::/28", "ORCHIDv2"),
        ("2001:30::/28", "drone remote ID protocol entity tags"),
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4"),
        ("2620:4f:8000::/48", "direct delegation AS112 service"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing SIDs"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local unicast"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    ];

    /// (first, last, width) of a CIDR block, as integers.
    fn block(cidr: &str) -> (u128, u128, u32) {
        let (address, prefix) = cidr.split_once('/').unwrap();
        let prefix: u32 = prefix.parse().unwrap();
        let (bits, width) = match ip(address) {
            IpAddr::V4(v4) => (u128::from(u32::from_be_bytes(v4.octets())), 32),
            IpAddr::V6(v6) => (u128::from_be_bytes(v6.octets()), 128),
        };
        let size_minus_one = if width - prefix == 128 {
            u128::MAX
        } else {
            (1u128 << (width - prefix)) - 1
        };
        assert_eq!(bits & size_minus_one, 0, "{cidr} is not a block start");
        (bits, bits + size_minus_one, width)
    }

    fn address(bits: u128, width: u32) -> IpAddr {
        if width == 32 {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }

    fn in_registry(bits: u128, width: u32) -> bool {
        REGISTRY.iter().any(|(cidr, _)| {
            let (first, last, w) = block(cidr);
            w == width && (first..=last).contains(&bits)
        })
    }

    #[test]
    fn every_registry_block_is_refused_from_first_to_last_address() {
        for (cidr, name) in REGISTRY {
            let (first, last, width) = block(cidr);
            for bits in [first, first + (last - first) / 2, last] {
                let refused = address(bits, width);
                assert!(
                    is_forbidden(refused),
                    "{refused} ({name}, {cidr}) must be refused"
                );
            }
        }
    }

    #[test]
    fn addresses_just_outside_each_block_are_allowed() {
        let mut checked = 0;
        for (cidr, name) in REGISTRY {
            let (first, last, width) = block(cidr);
            let max = if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            let neighbours = [first.checked_sub(1), (last < max).then(|| last + 1)];
            for bits in neighbours.into_iter().flatten() {
                if in_registry(bits, width) {
                    continue;
                }
                let outside = address(bits, width);
                assert!(
                    !is_forbidden(outside),
                    "{outside} (next to {name}, {cidr}) must be allowed"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} neighbours checked");
    }

    #[test]
    fn an_address_is_judged_on_every_bit_up_to_the_top_one() {
        // The mirror of each block's first address in the top bit (e.g.
        // 7f00:: for ff00::/8, 74.0.0.0 for 202.0.0.0) lies in no block:
        // a mask that dropped the top bit would call it forbidden.
        let mut checked = 0;
        for (cidr, name) in REGISTRY {
            let (first, _, width) = block(cidr);
            let mirrored = first ^ (1u128 << (width - 1));
            if in_registry(mirrored, width) {
                continue;
            }
            let outside = address(mirrored, width);
            assert!(
                !is_forbidden(outside),
                "{outside} (the top-bit mirror of {name}, {cidr}) must be allowed"
            );
            checked += 1;
        }
        assert!(checked > 5, "only {checked} mirrors checked");
    }

    #[test]
    fn every_table_block_names_its_registry_entry() {
        for (first, prefix, name) in V4_BLOCKS {
            assert!(*prefix <= 32 && !name.is_empty(), "{first}/{prefix}");
        }
        for (first, prefix, name) in V6_BLOCKS {
            assert!(*prefix <= 128 && !name.is_empty(), "{first}/{prefix}");
        }
        assert_eq!(
            forbidden_block(ip("192.88.99.1")),
            Some("Deprecated 6to4 Relay Anycast (RFC 7526)")
        );
    }

    #[test]
    fn transition_forms_are_refused_whatever_they_embed() {
        for bad in [
            "2002:808:808::1",                      // 6to4 of 8.8.8.8
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "64:ff9b::8.8.8.8",                     // NAT64 of a public address
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::a00:1",
            "::ffff:8.8.8.8", // IPv4-mapped
            "::ffff:127.0.0.1",
            "::ffff:0:8.8.8.8", // IPv4-translated
            "::8.8.8.8",        // IPv4-compatible
            "100::1",
            "5f00::1",
            "3fff::1",
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
            "192.88.98.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2003::1",
        ] {
            assert!(!is_forbidden(ip(good)), "{good} should be allowed");
        }
    }

    #[test]
    fn host_names_longer_than_dns_allows_are_refused() {
        let host = |last: usize| {
            let label = "a".repeat(63);
            format!("{label}.{label}.{label}.{}", "b".repeat(last))
        };
        let ok = Url::parse(&format!("https://{}/x", host(61))).unwrap();
        let long = Url::parse(&format!("https://{}/x", host(62))).unwrap();
        assert_eq!(ok.host_str().unwrap().len(), 253);
        assert_eq!(long.host_str().unwrap().len(), 254);
        assert!(!host_too_long(&ok));
        assert!(host_too_long(&long));
    }

    /// Answers each lookup with the next scripted list of addresses.
    struct Scripted(Mutex<VecDeque<Vec<IpAddr>>>);

    impl Scripted {
        fn new(answers: &[&[&str]]) -> Arc<Self> {
            Arc::new(Self(Mutex::new(
                answers
                    .iter()
                    .map(|answer| answer.iter().map(|a| ip(a)).collect())
                    .collect(),
            )))
        }
    }

    impl HostLookup for Scripted {
        fn lookup(&self, _host: &str) -> LookupFuture {
            let answer = self.0.lock().unwrap().pop_front();
            Box::pin(
                async move { answer.ok_or_else(|| io::Error::other("no more scripted answers")) },
            )
        }
    }

    #[tokio::test]
    async fn a_name_with_any_forbidden_address_is_refused() {
        let url = Url::parse("https://hooks.example.com/x").unwrap();
        let lookup = Scripted::new(&[&["93.184.216.34", "10.0.0.7"], &["93.184.216.34"]]);
        assert_eq!(
            check_target_with(&url, lookup.as_ref()).await,
            Err(GuardError::Forbidden(ip("10.0.0.7")))
        );
        assert_eq!(check_target_with(&url, lookup.as_ref()).await, Ok(()));
        assert!(matches!(
            check_target_with(&url, lookup.as_ref()).await,
            Err(GuardError::Unresolved { .. })
        ));
    }

    #[tokio::test]
    async fn dns_rebinding_is_refused_at_connection_time() {
        // The name answers a public address to the send-time check, then a
        // private one to the connection's own lookup.
        let url = Url::parse("https://rebind.example.com/x").unwrap();
        let lookup = Scripted::new(&[
            &["93.184.216.34"],
            &["127.0.0.1"],
            &["93.184.216.34", "::1"],
        ]);
        assert_eq!(check_target_with(&url, lookup.as_ref()).await, Ok(()));
        let resolver = GuardedResolver::with_lookup(lookup.clone());
        let name = |host: &str| host.parse::<Name>().unwrap();
        let err = resolver
            .resolve(name("rebind.example.com"))
            .await
            .err()
            .expect("rebound to loopback: refused");
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
        assert!(
            resolver.resolve(name("rebind.example.com")).await.is_err(),
            "one forbidden address among public ones refuses the name"
        );
    }

    #[tokio::test]
    async fn the_resolver_hands_allowed_addresses_through() {
        let lookup = Scripted::new(&[&["93.184.216.34", "2606:4700:4700::1111"]]);
        let resolver = GuardedResolver::with_lookup(lookup);
        let addrs: Vec<SocketAddr> = resolver
            .resolve("ok.example.com".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(
            addrs,
            [
                "93.184.216.34:0".parse::<SocketAddr>().unwrap(),
                "[2606:4700:4700::1111]:0".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_longer_than_dns_allows() {
        let lookup = Scripted::new(&[&["93.184.216.34"], &["93.184.216.34"]]);
        let resolver = GuardedResolver::with_lookup(lookup);
        let label = "a".repeat(63);
        let host = |last: usize| format!("{label}.{label}.{label}.{}", "b".repeat(last));
        assert!(resolver.resolve(host(61).parse().unwrap()).await.is_ok());
        let err = resolver
            .resolve(host(62).parse().unwrap())
            .await
            .err()
            .expect("254 octets: refused");
        assert!(err.to_string().contains("253"), "{err}");
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
        let long = url(&format!("https://{}.example/x", "a".repeat(250)));
        assert_eq!(check_target(&long).await, Err(GuardError::HostTooLong));
    }
}
