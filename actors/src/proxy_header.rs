//! The PROXY protocol header (HAProxy's specification, versions 1 and 2) a remote service's
//! backend receives before the client's first byte: the client's address and port as the local
//! service's listener saw them (source) and the address the client reached (destination).

use std::net::{IpAddr, SocketAddr};

use crate::service::{Protocol, ProxyVersion};

/// Version 2's signature: twelve bytes no version-1 header or HTTP request starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Both addresses in one family: an IPv4-mapped IPv6 address is its IPv4 one, and if the two
/// still differ the IPv4 one is written as IPv4-mapped IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// The header for a client at `src` that reached `dst`, carried over `protocol`.
pub fn encode(
    version: ProxyVersion,
    protocol: Protocol,
    src: SocketAddr,
    dst: SocketAddr,
) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        ProxyVersion::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            out.push(0x21);
            let transport = match protocol {
                Protocol::Tcp => 0x1,
                Protocol::Udp => 0x2,
            };
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x10 | transport);
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let six = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        IpAddr::V6(v6) => v6.octets(),
                    };
                    out.push(0x20 | transport);
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&six(s));
                    out.extend_from_slice(&six(d));
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn version_1_is_one_line_of_text() {
        let h = encode(
            ProxyVersion::V1,
            Protocol::Tcp,
            a("192.0.2.1:56324"),
            a("127.0.0.1:443"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 443\r\n");
        let h = encode(
            ProxyVersion::V1,
            Protocol::Tcp,
            a("[2001:db8::1]:1"),
            a("[::1]:2"),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
        // A mapped client on an IPv6 listener is written as the IPv4 address it is.
        let h = encode(
            ProxyVersion::V1,
            Protocol::Tcp,
            a("[::ffff:10.0.0.1]:5"),
            a("10.0.0.2:6"),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n");
    }

    #[test]
    fn version_2_is_the_signature_then_the_addresses() {
        let h = encode(
            ProxyVersion::V2,
            Protocol::Tcp,
            a("192.0.2.1:56324"),
            a("127.0.0.1:443"),
        );
        assert_eq!(h.len(), 16 + 12);
        assert_eq!(h[..12], V2_SIGNATURE);
        assert_eq!(h[12..16], [0x21, 0x11, 0, 12]);
        assert_eq!(h[16..20], [192, 0, 2, 1]);
        assert_eq!(h[20..24], [127, 0, 0, 1]);
        assert_eq!(h[24..26], 56324u16.to_be_bytes());
        assert_eq!(h[26..28], 443u16.to_be_bytes());
        let h = encode(
            ProxyVersion::V2,
            Protocol::Udp,
            a("[2001:db8::1]:1"),
            a("127.0.0.1:2"),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[13], 0x22);
        assert_eq!(
            h[32..48],
            "::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets()
        );
    }
}
