//! Test hosts: network namespaces on one bridge, created by the test and
//! deleted when it ends, and a packet capture of the bridge. Host k has
//! eth0 with its link-local address (no duplicate-address wait), fd77::k/64
//! and 10.77.0.k/24. Needs root and iproute2; `Net::new` returns None (and
//! the test says it skips) where namespaces cannot be made.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Namespaces `<tag>-br` (the bridge) and `<tag>-1` … `<tag>-n` (hosts).
pub struct Net {
    tag: String,
    hosts: usize,
    /// IPv6 is disabled in the hosts: only 10.77.0.k.
    v4_only: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

impl Net {
    /// `hosts` namespaces on one bridge, or None (with a message) where that is impossible.
    pub fn new(hosts: usize) -> Option<Net> {
        Net::make(hosts, false)
    }

    /// [`Net::new`] with IPv6 disabled in every host, for the IPv4 fallback.
    pub fn ipv4_only(hosts: usize) -> Option<Net> {
        Net::make(hosts, true)
    }

    fn make(hosts: usize, v4_only: bool) -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: network namespace tests need root");
            return None;
        }
        let tag = format!("pxd{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let net = Net { tag, hosts: 0, v4_only };
        match net.build(hosts) {
            Ok(net) => Some(net),
            Err(e) => {
                eprintln!("SKIPPED: cannot create network namespaces: {e}");
                None
            }
        }
    }

    fn build(mut self, hosts: usize) -> Result<Net, String> {
        let br = self.ns(0);
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for k in 1..=hosts {
            let ns = self.ns(k);
            ip(&["netns", "add", &ns])?;
            self.hosts = k;
            let v = format!("v{k}");
            ip(&["-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
            let sysctls: &[&str] = if self.v4_only {
                &["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.eth0.disable_ipv6=1"]
            } else {
                &["net.ipv6.conf.eth0.accept_dad=0"]
            };
            for setting in sysctls {
                let ok = Command::new("ip")
                    .args(["netns", "exec", &ns, "sysctl", "-qw", setting])
                    .status()
                    .map_err(|e| e.to_string())?;
                if !ok.success() {
                    return Err(format!("sysctl {setting}"));
                }
            }
            if !self.v4_only {
                ip(&["-n", &ns, "addr", "add", &format!("fd77::{k}/64"), "dev", "eth0", "nodad"])?;
            }
            ip(&["-n", &ns, "addr", "add", &format!("10.77.0.{k}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        for k in (1..=hosts).filter(|_| !self.v4_only) {
            self.wait_link_local(k)?;
        }
        Ok(self)
    }

    /// Waits until host k's link-local address is usable (not tentative).
    fn wait_link_local(&self, k: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = Command::new("ip")
                .args(["-n", &self.ns(k), "-6", "addr", "show", "dev", "eth0", "scope", "link"])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&o.stdout);
            if text.contains("fe80") && !text.contains("tentative") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("host {k} has no link-local address: {text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The name of namespace k (0: the bridge).
    pub fn ns(&self, k: usize) -> String {
        if k == 0 {
            format!("{}-br", self.tag)
        } else {
            format!("{}-{k}", self.tag)
        }
    }

    /// `pex` run in host k, with local-network discovery on (PEX_NO_LAN unset).
    pub fn pex(&self, k: usize) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(k), super::super::PEX]).env_remove("PEX_NO_LAN");
        cmd
    }

    /// Captures every UDP payload that crosses the bridge until [`Capture::stop`].
    pub fn capture(&self) -> Capture {
        Capture::start(&self.ns(0))
    }

    /// Runs `f` on a new thread inside namespace k.
    pub fn thread_in<T: Send + 'static>(
        &self,
        k: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = self.ns(k);
        std::thread::spawn(move || {
            enter(&ns);
            f()
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for k in 0..=self.hosts {
            let _ = ip(&["netns", "del", &self.ns(k)]);
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    // SAFETY: setns on an open namespace file; only this thread changes namespace.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {ns}");
}

/// A packet capture (AF_PACKET) in the bridge namespace, keeping UDP payloads.
pub struct Capture {
    stop: Arc<AtomicBool>,
    payloads: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(ns: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let payloads = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (s, p, ns) = (stop.clone(), payloads.clone(), ns.to_owned());
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: plain socket(2) call.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            // SAFETY: setsockopt with a timeval of the right size on our socket.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            ready_tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: recv into a buffer we own, of its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                if n > 0 {
                    if let Some(payload) = udp_payload(&buf[..n as usize]) {
                        let mut p = p.lock().unwrap();
                        if p.len() < 100_000 {
                            p.push(payload.to_vec());
                        }
                    }
                }
            }
            // SAFETY: closing the socket we opened.
            unsafe { libc::close(fd) };
        });
        ready.recv().unwrap();
        Capture { stop, payloads, thread: Some(thread) }
    }

    /// Stops capturing; the UDP payloads seen.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.payloads.lock().unwrap())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The UDP payload of an Ethernet frame carrying IPv6 or IPv4, if it is UDP.
fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let udp = match ethertype {
        0x86dd if *ip.get(6)? == 17 => ip.get(40..)?,
        0x0800 if *ip.get(9)? == 17 => ip.get(((ip[0] & 0x0f) as usize) * 4..)?,
        _ => return None,
    };
    udp.get(8..)
}

/// Whether any of `payloads` contains `needle`.
pub fn seen_in(payloads: &[Vec<u8>], needle: &[u8]) -> bool {
    payloads.iter().any(|p| p.windows(needle.len()).any(|w| w == needle))
}
