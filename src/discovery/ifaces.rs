//! This machine's network interfaces (getifaddrs): their names, indexes,
//! flags and addresses, for joining and sending to multicast groups on each
//! one and for the addresses a seeder prints.

use std::net::{IpAddr, Ipv4Addr};

/// One interface address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// Interface index (the scope id of its link-local addresses).
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// Up, not loopback, and multicast-capable: a link LAN discovery can use.
    pub multicast: bool,
}

/// Every address configured on this machine's interfaces.
pub fn addresses() -> Vec<IfAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        let ip = if family == libc::AF_INET6 {
            // SAFETY: the family is AF_INET6, so this is a sockaddr_in6.
            let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            IpAddr::from(sa.sin6_addr.s6_addr)
        } else if family == libc::AF_INET {
            // SAFETY: the family is AF_INET, so this is a sockaddr_in.
            let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            IpAddr::from(sa.sin_addr.s_addr.to_ne_bytes())
        } else {
            continue;
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let cname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: if_nametoindex reads the NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        let flags = ifa.ifa_flags;
        let up = flags & libc::IFF_UP as u32 != 0;
        let multicast =
            up && flags & libc::IFF_MULTICAST as u32 != 0 && flags & libc::IFF_LOOPBACK as u32 == 0 && index != 0;
        out.push(IfAddr { name: cname.to_string_lossy().into_owned(), index, ip, multicast });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Indexes of the multicast-capable interfaces with an IPv6 address.
pub fn multicast_v6() -> Vec<u32> {
    let mut v: Vec<u32> = addresses().into_iter().filter(|a| a.multicast && a.ip.is_ipv6()).map(|a| a.index).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// IPv4 addresses of the multicast-capable interfaces, one per interface.
pub fn multicast_v4() -> Vec<Ipv4Addr> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for a in addresses() {
        if let (true, IpAddr::V4(v4)) = (a.multicast, a.ip) {
            if !seen.contains(&a.index) {
                seen.push(a.index);
                out.push(v4);
            }
        }
    }
    out
}
