//! Where this machine can be reached: the addresses a seeder prints in its
//! fetch commands, routable ones first, loopback last.

use std::net::{IpAddr, SocketAddr};

/// How good an address is for someone elsewhere: lower is better, `None` unusable.
fn rank(ip: &IpAddr) -> Option<u8> {
    match ip {
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some(8)
            } else if v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local() {
                None // link-local needs a scope id nobody can type elsewhere
            } else if v6.is_unique_local() {
                Some(1) // unique-local
            } else {
                Some(0) // global
            }
        }
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some(9)
            } else if v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast() {
                None
            } else if v4.is_private() {
                Some(3)
            } else {
                Some(2)
            }
        }
    }
}

/// The addresses a node listening on `listen` can be reached at: just that
/// one when it is specific, else every usable interface address (IPv4 ones
/// too when listening on `[::]`, which is dual-stack), best first.
pub fn reachable(listen: SocketAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    let mut ips: Vec<(u8, IpAddr)> = pex::discovery::ifaces::addresses()
        .into_iter()
        .map(|a| a.ip)
        .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
        .filter_map(|ip| rank(&ip).map(|r| (r, ip)))
        .collect();
    ips.sort();
    ips.dedup();
    let mut out: Vec<SocketAddr> = ips.into_iter().map(|(_, ip)| SocketAddr::new(ip, listen.port())).collect();
    if out.is_empty() {
        let lo: IpAddr =
            if listen.is_ipv6() { IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]) } else { [127, 0, 0, 1].into() };
        out.push(SocketAddr::new(lo, listen.port()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routable_addresses_come_first_and_loopback_last() {
        let mut v: Vec<(u8, IpAddr)> = ["::1", "127.0.0.1", "fd00::5", "2001:db8::1", "10.0.0.2", "fe80::1"]
            .iter()
            .map(|s| s.parse::<IpAddr>().unwrap())
            .filter_map(|ip| rank(&ip).map(|r| (r, ip)))
            .collect();
        v.sort();
        let order: Vec<String> = v.iter().map(|(_, ip)| ip.to_string()).collect();
        assert_eq!(order, ["2001:db8::1", "fd00::5", "10.0.0.2", "::1", "127.0.0.1"]);
        let specific: SocketAddr = "[::1]:9000".parse().unwrap();
        assert_eq!(reachable(specific), vec![specific]);
        let any = reachable("[::]:9000".parse().unwrap());
        assert!(!any.is_empty() && any.iter().all(|a| a.port() == 9000));
    }
}
