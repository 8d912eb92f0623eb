//! Connection options shared by every AMQP client of the project: where to connect (`amqp://` /
//! `amqps://` URLs), TLS files, SASL mechanism and credentials (a [`Secret`] that never prints), idle and connect
//! timeouts, the reconnect [`Backoff`], and the process-wide rustls crypto provider.
//!
//! Opening the TCP/TLS stream itself lives in [`crate::connect`]; this module is plain data.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;

/// Default port of `amqp://` URLs.
pub const AMQP_PORT: u16 = 5672;
/// Default port of `amqps://` URLs.
pub const AMQPS_PORT: u16 = 5671;

/// What is wrong with connection options (a URL, a secret file).
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The URL could not be parsed or has parts we do not understand.
    #[error("invalid AMQP URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A secret file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A password or other credential. `Debug` and `Display` print `***`, so it can sit in structs that
/// are logged; call [`Secret::expose`] only where the value is handed to the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from a file (a mounted Kubernetes Secret); one trailing newline (`\n` or
    /// `\r\n`) is removed, as editors and `echo` add one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, OptionsError> {
        let path = path.as_ref();
        let mut value =
            std::fs::read_to_string(path).map_err(|source| OptionsError::SecretFile {
                path: path.to_path_buf(),
                source,
            })?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(Secret(value))
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// SASL mechanism used when opening a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SaslOptions {
    /// No SASL layer at all (plain AMQP header).
    None,
    /// SASL ANONYMOUS (what a router listener with `authenticatePeer: no` accepts).
    #[default]
    Anonymous,
    /// SASL PLAIN with a user name and password.
    Plain {
        /// The user name.
        username: String,
        /// The password; never logged.
        password: Secret,
    },
    /// SASL EXTERNAL: the identity is the TLS client certificate, so it needs [`TlsOptions`] with
    /// `cert_file` and `key_file` (opening fails otherwise). No authorization id is sent.
    External,
}

/// How a management client logs in to a broker, from a binary's `--broker-*` flags (storage-controller and
/// subscription-service take the same ones).
#[derive(Debug, Clone, Default)]
pub struct BrokerLogin<'a> {
    /// `--broker-sasl-mechanisms`: PLAIN (default with a user name), ANONYMOUS, or EXTERNAL (TLS client
    /// certificate; needs `cert_file`).
    pub mechanism: Option<&'a str>,
    /// `--broker-username`.
    pub username: Option<&'a str>,
    /// `--broker-password-file` (read here; never logged).
    pub password_file: Option<&'a std::path::Path>,
    /// `--broker-ca-file`: TLS to the brokers with this CA.
    pub ca_file: Option<&'a std::path::Path>,
    /// `--broker-cert-file` (client certificate).
    pub cert_file: Option<&'a std::path::Path>,
    /// `--broker-key-file`.
    pub key_file: Option<&'a std::path::Path>,
}

impl BrokerLogin<'_> {
    /// Sets `opts`' SASL and TLS from the flags; one line naming the flags at fault otherwise.
    pub fn apply(&self, opts: &mut ConnectOptions) -> Result<(), String> {
        let mechanism = self.mechanism.map(str::to_ascii_uppercase);
        opts.sasl = match (self.username, self.password_file, mechanism.as_deref()) {
            (_, _, Some("ANONYMOUS")) => SaslOptions::Anonymous,
            (_, _, Some("EXTERNAL")) => {
                if self.cert_file.is_none() || self.key_file.is_none() || self.ca_file.is_none() {
                    return Err("--broker-sasl-mechanisms EXTERNAL needs --broker-ca-file, --broker-cert-file \
                                and --broker-key-file"
                        .into());
                }
                SaslOptions::External
            }
            (Some(user), Some(pw), None | Some("PLAIN")) => SaslOptions::Plain {
                username: user.to_string(),
                password: Secret::from_file(pw)
                    .map_err(|e| format!("--broker-password-file {}: {e}", pw.display()))?,
            },
            (_, _, Some(m)) if m != "PLAIN" => {
                return Err(format!(
                    "--broker-sasl-mechanisms {m}: only PLAIN, ANONYMOUS and EXTERNAL are supported"
                ));
            }
            (_, _, Some(_)) => {
                return Err(
                    "--broker-sasl-mechanisms PLAIN needs --broker-username and --broker-password-file"
                        .into(),
                );
            }
            _ => SaslOptions::Anonymous,
        };
        if let Some(ca) = self.ca_file {
            opts.tls = Some(TlsOptions {
                ca_file: Some(ca.to_path_buf()),
                cert_file: self.cert_file.map(std::path::Path::to_path_buf),
                key_file: self.key_file.map(std::path::Path::to_path_buf),
                server_name: None,
            });
        }
        Ok(())
    }
}

/// TLS settings (rustls). The server certificate is checked against `ca_file`, which is required:
/// there is no implicit system trust store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) that signed the peer's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against; defaults to the connection host.
    pub server_name: Option<String>,
}

/// Everything needed to open one AMQP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS, when set (`amqps://` URLs set it).
    pub tls: Option<TlsOptions>,
    /// SASL mechanism and credentials.
    pub sasl: SaslOptions,
    /// Idle timeout announced in our `open` frame (the peer sends heartbeats at least twice as
    /// often); a silent peer is detected after this long. Default 16 s, like qdrouterd.
    pub idle_timeout: Duration,
    /// Bound on TCP connect + TLS + SASL + AMQP open. Default 5 s.
    pub connect_timeout: Duration,
    /// Our container id (shows up in the router's connection list).
    pub container_id: String,
}

impl ConnectOptions {
    /// Options for `host:port` with the defaults: no TLS, SASL ANONYMOUS, 16 s idle timeout, 5 s
    /// connect timeout, container id `maas-<random>`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ConnectOptions {
            host: host.into(),
            port,
            tls: None,
            sasl: SaslOptions::Anonymous,
            idle_timeout: Duration::from_secs(16),
            connect_timeout: Duration::from_secs(5),
            container_id: default_container_id(),
        }
    }

    /// Parses `amqp://[user[:password]@]host[:port]` (default port 5672) or `amqps://...`
    /// (default port 5671, TLS on). A user in the URL selects SASL PLAIN; user and password may be
    /// percent-encoded. A trailing `/` is allowed; any other path, a query or a fragment is an error.
    pub fn from_url(url: &str) -> Result<Self, OptionsError> {
        let invalid = |reason: String| OptionsError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (tls, default_port) = match parsed.scheme() {
            "amqp" => (None, AMQP_PORT),
            "amqps" => (Some(TlsOptions::default()), AMQPS_PORT),
            other => {
                return Err(invalid(format!(
                    "scheme {other:?} is not supported (use amqp:// or amqps://)"
                )));
            }
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(invalid("no host".to_string())),
        };
        let port = match parsed.port() {
            Some(0) => return Err(invalid("port 0 is not a valid port".to_string())),
            Some(p) => p,
            None => default_port,
        };
        if !(parsed.path().is_empty() || parsed.path() == "/") {
            return Err(invalid(format!(
                "unexpected path {:?} (the URL names a server, not an address)",
                parsed.path()
            )));
        }
        if parsed.query().is_some() {
            return Err(invalid("query parameters are not supported".to_string()));
        }
        if parsed.fragment().is_some() {
            return Err(invalid("a fragment (#...) is not supported".to_string()));
        }
        let username = percent_decode(parsed.username())
            .ok_or_else(|| invalid("user name is not valid percent-encoded UTF-8".to_string()))?;
        let password = match parsed.password() {
            Some(p) => Some(percent_decode(p).ok_or_else(|| {
                invalid("password is not valid percent-encoded UTF-8".to_string())
            })?),
            None => None,
        };
        let sasl = match (username.is_empty(), password) {
            (true, None) => SaslOptions::Anonymous,
            (true, Some(_)) => return Err(invalid("a password without a user name".to_string())),
            (false, password) => SaslOptions::Plain {
                username,
                password: Secret(password.unwrap_or_default()),
            },
        };
        let mut opts = ConnectOptions::new(host, port);
        opts.tls = tls;
        opts.sasl = sasl;
        Ok(opts)
    }

    /// `host:port` for logs (IPv6 hosts in brackets). Never contains credentials.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ConnectOptions {
    /// `amqp[s]://[user@]host:port`, never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "amqps" } else { "amqp" };
        match &self.sasl {
            SaslOptions::Plain { username, .. } => {
                write!(f, "{scheme}://{username}@{}", self.authority())
            }
            _ => write!(f, "{scheme}://{}", self.authority()),
        }
    }
}

fn default_container_id() -> String {
    let n: u64 = rand::rng().random();
    format!("maas-{n:016x}")
}

/// Replaces the password of a URL-ish string with `***` for error messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{}{tail}", &authority[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Capped exponential reconnect backoff with jitter: attempt `n` waits a random time in
/// `[d/2, d]` where `d = min(initial * 2^n, max)`, so a fleet of agents does not reconnect in
/// lock-step after a router restart, and no wait exceeds `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (attempt 0), before jitter.
    pub initial: Duration,
    /// Upper bound of every delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos < 2 {
            return ceiling;
        }
        let low = nanos / 2;
        Duration::from_nanos(rand::rng().random_range(low..=nanos))
    }
}

/// Installs rustls' aws-lc-rs crypto provider as the process default. Idempotent: a provider that
/// is already installed is kept. Call once at start-up before any TLS is used (the connect code
/// calls it too).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing one is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url_defaults() {
        let o = ConnectOptions::from_url("amqp://127.0.0.1").unwrap();
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 5672);
        assert_eq!(o.tls, None);
        assert_eq!(o.sasl, SaslOptions::Anonymous);
        assert_eq!(o.idle_timeout, Duration::from_secs(16));
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
        assert!(o.container_id.starts_with("maas-"));
    }

    #[test]
    fn url_with_port_and_slash() {
        let o = ConnectOptions::from_url("amqp://router.example:5673/").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("router.example", 5673));
    }

    #[test]
    fn amqps_defaults_to_5671_with_tls() {
        let o = ConnectOptions::from_url("amqps://router").unwrap();
        assert_eq!(o.port, 5671);
        assert_eq!(o.tls, Some(TlsOptions::default()));
    }

    #[test]
    fn user_in_url_selects_plain() {
        let o = ConnectOptions::from_url("amqp://admin:s%40cret@host:5674").unwrap();
        assert_eq!(
            o.sasl,
            SaslOptions::Plain {
                username: "admin".into(),
                password: Secret::new("s@cret")
            }
        );
        let o = ConnectOptions::from_url("amqp://admin@host").unwrap();
        assert!(
            matches!(o.sasl, SaslOptions::Plain { ref password, .. } if password.expose().is_empty())
        );
    }

    #[test]
    fn ipv6_host_without_brackets() {
        let o = ConnectOptions::from_url("amqp://[::1]:5672").unwrap();
        assert_eq!(o.host, "::1");
        assert_eq!(o.authority(), "[::1]:5672");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("http://host", "scheme \"http\""),
            ("amqp://", "no host"),
            ("amqp://host/queue", "unexpected path"),
            ("amqp://host?x=1", "query"),
            ("amqp://:pw@host", "password without a user"),
            ("not a url", "relative URL"),
            ("amqp://host:99999", "invalid port"),
        ];
        for (url, want) in cases {
            let err = ConnectOptions::from_url(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn errors_and_display_never_show_the_password() {
        let err = ConnectOptions::from_url("amqp://u:topsecret@host/path")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(err.contains("u:***@host"), "{err}");
        let o = ConnectOptions::from_url("amqp://u:topsecret@host").unwrap();
        let shown = format!("{o} {o:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert_eq!(o.to_string(), "amqp://u@host:5672");
    }

    #[test]
    fn secret_prints_stars_and_reads_files() {
        let s = Secret::new("pw");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let dir = std::env::temp_dir().join(format!("maas-amqp-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "hunter2\r\n").unwrap();
        assert_eq!(Secret::from_file(&file).unwrap().expose(), "hunter2");
        std::fs::write(&file, "two\nlines\n").unwrap();
        assert_eq!(Secret::from_file(&file).unwrap().expose(), "two\nlines");
        let missing = Secret::from_file(dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff::default();
        for attempt in 0..100 {
            let d = b.delay(attempt);
            let ceiling = (Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(31)))
                .min(Duration::from_secs(10));
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
        assert!(b.delay(0) <= Duration::from_millis(100));
        assert!(b.delay(40) >= Duration::from_secs(5));
        let samples: std::collections::HashSet<_> = (0..20).map(|_| b.delay(5)).collect();
        assert!(samples.len() > 1, "no jitter");
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    #[test]
    fn crypto_provider_install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
