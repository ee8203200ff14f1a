//! TCP connections opened inside another network namespace, as CRI port-forwarding needs: the
//! target is `localhost:<port>` as the pod sees it, not as the host does.
//!
//! setns(CLONE_NEWNET) moves only the calling thread, and a thread left in a pod's namespace would
//! silently create every later socket there (and keep the namespace alive). So the switch happens
//! on a dedicated thread that creates and connects the socket and then exits. A socket stays bound
//! to the namespace it was created in, so the descriptor it returns works from any thread.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;
use crate::unpack::errno_name;

/// The worker only makes a few system calls; it needs no more stack than this.
const WORKER_STACK_SIZE: usize = 64 * 1024;

/// Connects a TCP socket to `addr` inside the network namespace pinned at `ns_path` (a
/// `/proc/<pid>/ns/net` file or a bind mount of one), or in the caller's own namespace when
/// `ns_path` is `None` (host-network pods).
///
/// Resolves within `timeout` (which must be non-zero). The returned socket is connected, in
/// blocking mode and close-on-exec. Errors keep their errno: `ENOENT` for a missing namespace file,
/// `EINVAL` for a file that is not a network namespace, `ECONNREFUSED`, `ETIMEDOUT` (also for
/// the timeout itself), ...
pub fn connect_in_netns(ns_path: Option<&Path>, addr: SocketAddr, timeout: Duration) -> io::Result<OwnedFd> {
    connect_first_in_netns(ns_path, &[addr], timeout)
}

/// Connects to `localhost:port` inside the network namespace at `ns_path` the way port-forwarding
/// does it: `127.0.0.1` first, then `[::1]` if that fails, both within the one `timeout`.
///
/// When both fail, the IPv4 error is returned: that is where nearly every server listens, and a
/// pod without IPv6 would otherwise report an unhelpful "address not available".
pub fn connect_localhost_in_netns(ns_path: Option<&Path>, port: u16, timeout: Duration) -> io::Result<OwnedFd> {
    let candidates = [SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SocketAddr::from((Ipv6Addr::LOCALHOST, port))];
    connect_first_in_netns(ns_path, &candidates, timeout)
}

/// The Node-style error code of a failure from this module: the errno name, `ETIMEDOUT` for a
/// timeout, `EINVAL` for a rejected argument, `EIO` otherwise.
pub fn error_code(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT",
        Some(errno) => errno_name(errno),
        None => match err.kind() {
            io::ErrorKind::TimedOut => "ETIMEDOUT",
            io::ErrorKind::InvalidInput => "EINVAL",
            _ => "EIO",
        },
    }
}

/// Connects to the first of `candidates` that accepts, in the namespace at `ns_path`.
fn connect_first_in_netns(ns_path: Option<&Path>, candidates: &[SocketAddr], timeout: Duration) -> io::Result<OwnedFd> {
    if timeout.is_zero() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the connect timeout must be non-zero"));
    }
    let deadline = Instant::now() + timeout;
    match ns_path {
        None => connect_first(candidates, deadline),
        Some(path) => {
            // Opened here rather than on the worker so a missing namespace is a plain ENOENT and
            // no thread is started for it.
            let ns = File::open(path)?;
            on_thread_in_netns(&ns, || connect_first(candidates, deadline))
        }
    }
}

/// Runs `work` on a new thread that first joins the network namespace `ns`; the thread exits
/// with `work`, so no thread of the process stays in that namespace.
fn on_thread_in_netns<T, F>(ns: &File, work: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("crisp-netns".to_string())
            .stack_size(WORKER_STACK_SIZE)
            .spawn_scoped(scope, || {
                sys::setns(ns.as_raw_fd(), libc::CLONE_NEWNET)?;
                work()
            })?;
        worker
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the network namespace worker thread panicked")))
    })
}

fn connect_first(candidates: &[SocketAddr], deadline: Instant) -> io::Result<OwnedFd> {
    let mut first_err = None;
    for addr in candidates {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        // std creates the socket close-on-exec, connects it non-blocking, polls for at most
        // `remaining` and hands it back in blocking mode.
        match TcpStream::connect_timeout(addr, remaining) {
            Ok(stream) => return Ok(OwnedFd::from(stream)),
            Err(e) => {
                first_err.get_or_insert(with_errno(e));
            }
        }
    }
    Err(first_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ETIMEDOUT)))
}

/// std reports its own poll timeout without an errno; give it the one the kernel would use.
fn with_errno(err: io::Error) -> io::Error {
    if err.raw_os_error().is_none() && err.kind() == io::ErrorKind::TimedOut {
        io::Error::from_raw_os_error(libc::ETIMEDOUT)
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::{self, NsId};
    use std::fs;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::os::fd::{FromRawFd, RawFd};
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn is_root() -> bool {
        unsafe { libc::geteuid() == 0 }
    }

    /// A fresh network namespace with loopback up, pinned in a temp directory; unpinned on drop.
    struct TestNetns {
        dir: PathBuf,
        pin: PathBuf,
    }

    impl TestNetns {
        fn new(tag: &str) -> TestNetns {
            let dir = std::env::temp_dir().join(format!("crisp-test-netns-connect-{tag}-{}", std::process::id()));
            let _ = ns::unpin(&dir.join("net"));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            let netns = TestNetns { pin: dir.join("net"), dir };
            let pin = netns.pin.clone();
            // unshare(CLONE_NEWNET) is per thread: only this short-lived thread enters the new
            // namespace, which the pin then keeps alive.
            thread::spawn(move || -> io::Result<()> {
                sys::unshare(libc::CLONE_NEWNET)?;
                ns::bring_loopback_up()?;
                ns::pin(Path::new("/proc/thread-self/ns/net"), &pin)
            })
            .join()
            .unwrap()
            .unwrap();
            netns
        }

        fn path(&self) -> &Path {
            &self.pin
        }

        fn id(&self) -> NsId {
            ns::ns_id(&self.pin).unwrap()
        }

        /// Binds a listener inside the namespace.
        fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
            let ns = File::open(&self.pin)?;
            on_thread_in_netns(&ns, || TcpListener::bind(addr))
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = ns::unpin(&self.pin);
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// Serves one connection: echoes what it reads until the client shuts down its write side.
    fn echo_once(listener: TcpListener) -> thread::JoinHandle<io::Result<()>> {
        thread::spawn(move || {
            let (mut conn, _) = listener.accept()?;
            let mut reader = conn.try_clone()?;
            io::copy(&mut reader, &mut conn)?;
            conn.shutdown(Shutdown::Write)
        })
    }

    fn exchange(fd: OwnedFd, payload: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(payload).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        reply
    }

    /// The network namespace a socket belongs to (SIOCGSKNS hands out a descriptor for it).
    fn socket_netns(fd: RawFd) -> NsId {
        let ns_fd = unsafe { libc::ioctl(fd, libc::SIOCGSKNS as _) };
        assert!(ns_fd >= 0, "SIOCGSKNS: {}", io::Error::last_os_error());
        let ns_file = unsafe { File::from_raw_fd(ns_fd) };
        let md = ns_file.metadata().unwrap();
        NsId { dev: md.dev(), ino: md.ino() }
    }

    fn thread_netns() -> NsId {
        ns::ns_id(Path::new("/proc/thread-self/ns/net")).unwrap()
    }

    /// Threads of this process currently in namespace `id`.
    fn tasks_in(id: NsId) -> Vec<String> {
        fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| ns::ns_id(&e.path().join("ns/net")).ok() == Some(id))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// A joined thread can linger in /proc for a moment while the kernel finishes its exit.
    fn assert_no_task_stays_in(id: NsId) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let tasks = tasks_in(id);
            if tasks.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "threads {tasks:?} stayed in the pod network namespace");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn connects_inside_the_pinned_namespace_and_leaves_no_thread_there() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let netns = TestNetns::new("echo");
        let caller_ns = thread_netns();
        assert_ne!(netns.id(), caller_ns);

        let listener = netns.listen((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = echo_once(listener);

        let fd = connect_localhost_in_netns(Some(netns.path()), port, TIMEOUT).unwrap();
        assert_eq!(socket_netns(fd.as_raw_fd()), netns.id());
        let fd_flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0, "socket must be close-on-exec");
        let status_flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(status_flags & libc::O_NONBLOCK, 0, "socket must be handed back in blocking mode");

        assert_eq!(exchange(fd, b"hello through the pod's loopback"), b"hello through the pod's loopback");
        server.join().unwrap().unwrap();

        assert_eq!(thread_netns(), caller_ns, "the calling thread must not change namespace");
        assert_no_task_stays_in(netns.id());
    }

    #[test]
    fn reaches_the_pod_loopback_not_the_hosts() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let netns = TestNetns::new("isolation");
        // Listening on the host loopback; the pod's loopback has nothing on that port.
        let host_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = host_listener.local_addr().unwrap().port();

        let err = connect_in_netns(Some(netns.path()), (Ipv4Addr::LOCALHOST, port).into(), TIMEOUT).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
        assert_eq!(error_code(&err), "ECONNREFUSED");

        let err = connect_localhost_in_netns(Some(netns.path()), port, TIMEOUT).unwrap_err();
        assert_eq!(error_code(&err), "ECONNREFUSED", "{err}");
        assert_no_task_stays_in(netns.id());
    }

    #[test]
    fn host_network_connects_in_the_callers_namespace() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = echo_once(listener);
        let fd = connect_localhost_in_netns(None, port, TIMEOUT).unwrap();
        assert_eq!(exchange(fd, b"host"), b"host");
        server.join().unwrap().unwrap();
    }

    #[test]
    fn falls_back_to_ipv6_loopback() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let netns = TestNetns::new("ipv6");
        let listener = match netns.listen((Ipv6Addr::LOCALHOST, 0).into()) {
            Ok(listener) => listener,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)) => {
                eprintln!("skipped: no IPv6 loopback in a new network namespace ({e})");
                return;
            }
            Err(e) => panic!("listen on [::1]: {e}"),
        };
        let port = listener.local_addr().unwrap().port();
        let server = echo_once(listener);

        let fd = connect_localhost_in_netns(Some(netns.path()), port, TIMEOUT).unwrap();
        let stream = TcpStream::from(fd);
        assert_eq!(stream.peer_addr().unwrap(), SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        assert_eq!(exchange(stream.into(), b"six"), b"six");
        server.join().unwrap().unwrap();
    }

    #[test]
    fn namespace_file_errors_keep_their_errno() {
        let dir = std::env::temp_dir().join(format!("crisp-test-netns-connect-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let err = connect_localhost_in_netns(Some(&missing), 80, TIMEOUT).unwrap_err();
        let regular = dir.join("regular");
        fs::write(&regular, b"").unwrap();
        let not_a_namespace = connect_localhost_in_netns(Some(&regular), 80, TIMEOUT).unwrap_err();
        let _ = fs::remove_dir_all(&dir);

        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert_eq!(error_code(&err), "ENOENT");
        assert_eq!(error_code(&not_a_namespace), "EINVAL", "{not_a_namespace}");
    }

    #[test]
    fn times_out_when_the_listener_drops_syns() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let netns = TestNetns::new("timeout");
        let listener = netns.listen((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let port = listener.local_addr().unwrap().port();
        // A listener that never accepts and has the smallest backlog: once its accept queue is
        // full the kernel drops further SYNs, so the next connect hangs until the timeout.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);

        let short = Duration::from_millis(200);
        let mut queued = Vec::new();
        let err = loop {
            assert!(queued.len() < 8, "the accept queue never filled up");
            let started = Instant::now();
            match connect_localhost_in_netns(Some(netns.path()), port, short) {
                Ok(fd) => queued.push(fd),
                Err(err) => {
                    let elapsed = started.elapsed();
                    assert!(elapsed >= short && elapsed < short + Duration::from_secs(1), "took {elapsed:?}");
                    break err;
                }
            }
        };
        assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
        assert_eq!(error_code(&err), "ETIMEDOUT");
        drop(queued);
        assert_no_task_stays_in(netns.id());
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let err = connect_in_netns(None, (Ipv4Addr::LOCALHOST, 80).into(), Duration::ZERO).unwrap_err();
        assert_eq!(error_code(&err), "EINVAL");
    }

    #[test]
    fn error_codes_without_an_errno() {
        assert_eq!(error_code(&io::Error::from(io::ErrorKind::TimedOut)), "ETIMEDOUT");
        assert_eq!(error_code(&with_errno(io::Error::from(io::ErrorKind::TimedOut))), "ETIMEDOUT");
        assert_eq!(with_errno(io::Error::from(io::ErrorKind::TimedOut)).raw_os_error(), Some(libc::ETIMEDOUT));
        assert_eq!(error_code(&io::Error::other("x")), "EIO");
        assert_eq!(error_code(&io::Error::from_raw_os_error(libc::ENOENT)), "ENOENT");
    }
}
