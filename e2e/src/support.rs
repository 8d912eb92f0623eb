//! Small helpers every test and bench needs the same way: a free loopback port, a plain HTTP/1.1 GET against the
//! binaries' `/healthz` `/readyz` `/metrics`, polling until a condition holds, and a process's resident memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// GET `path` from 127.0.0.1:`port`: the status code and the body, or None when nothing answers (2 s timeout).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Poll `f` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resident and peak resident memory of a process, in kB (`VmRSS`, `VmHWM` of /proc/PID/status; 0 if unknown).
pub fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A test that cannot run here (a tool is missing): in CI (`CI` set) that is a failure, so it panics with the
/// reason; elsewhere it prints a SKIPPED line and the test returns early.
pub fn cannot_run(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "this test cannot run here and CI is set: {reason} (scripts/test installs what tests need)"
        );
    }
    eprintln!("SKIPPED: {reason}");
}

/// True when `/usr/bin/python3 -c 'import proton'` works (Debian's python3-qpid-proton); otherwise
/// [`cannot_run`] (a failure in CI) and false.
pub fn proton_available() -> bool {
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import proton"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        cannot_run("`/usr/bin/python3 -c 'import proton'` failed; install python3-qpid-proton");
    }
    ok
}

/// A throw-away certificate authority and a server certificate for `localhost` / 127.0.0.1, made with the
/// `openssl` command in a temporary directory (`ca.crt`, `server.crt`, `server.key`), removed on drop. None where
/// openssl is missing (see [`cannot_run`]: a failure in CI, a SKIPPED line elsewhere).
pub struct TestPki(pub std::path::PathBuf);

impl TestPki {
    /// `tag` keeps the directories of different test binaries apart.
    pub fn create(tag: &str) -> Option<TestPki> {
        let dir = std::env::temp_dir().join(format!("maas-{tag}-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .ok()?;
        let pki = TestPki(dir);
        let run = |args: &str| pki.openssl(args);
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let ok = run(&format!(
            "req -x509 {ec} -keyout ca.key -out ca.crt -days 1 -subj /CN=test-ca"
        )) && run(&format!(
            "req {ec} -keyout server.key -out server.csr -subj /CN=localhost"
        )) && run(
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile san.ext",
        );
        if !ok {
            cannot_run("openssl could not create test certificates");
            return None; // dropping `pki` removes the directory
        }
        Some(pki)
    }

    /// Runs `openssl` with `args` (split at spaces) in the PKI's directory, e.g. to sign more certificates with
    /// `ca.crt`/`ca.key`; false when it fails.
    pub fn openssl(&self, args: &str) -> bool {
        std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(&self.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
