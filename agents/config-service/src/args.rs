//! The command line (every flag has an environment variable) and its validation into a [`Mode`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// Serves full address, flavor and pod snapshots over AMQP 1.0 to any number of subscribers.
///
/// A subscriber attaches a receiving link whose source address is `v1/addresses`, `maas`, `v1/flavors` or
/// `podsense` (with a label selector as the source's filter map). A link to `v1/addresses` or `maas` whose source
/// lists the capability `maas:delta` gets the full snapshot once, then only the changes (incremental mode).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "config-service", version)]
pub struct Args {
    /// AMQP listen address (host:port).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:5672")]
    pub listen: SocketAddr,

    /// File mode: the directory an address ConfigMap is mounted at (kubelet-style updates are followed).
    #[arg(long, env = "ADDRESSES_DIR")]
    pub addresses_dir: Option<PathBuf>,

    /// File mode: the flavor file (else the `flavor.json` key of the addresses directory).
    #[arg(long, env = "FLAVORS_FILE")]
    pub flavors_file: Option<PathBuf>,

    /// File mode: a JSON list of pods ({name, host, phase, ready, ports, labels}) served on `podsense`.
    #[arg(long, env = "PODS_FILE")]
    pub pods_file: Option<PathBuf>,

    /// Kubernetes API mode: watch ConfigMaps labelled `type=address-config`, the flavor ConfigMap and pods.
    #[arg(long, env = "KUBE")]
    pub kube: bool,

    /// Namespace watched in Kubernetes API mode.
    #[arg(long, env = "NAMESPACE")]
    pub namespace: Option<String>,

    /// SASL mechanisms offered, comma-separated: ANONYMOUS, PLAIN, EXTERNAL (EXTERNAL needs --tls-client-ca; it is
    /// offered to connections with a verified client certificate, whose user is `x509:sha256:<16 hex>`).
    #[arg(
        long,
        env = "SASL_MECHANISMS",
        value_delimiter = ',',
        default_value = "ANONYMOUS"
    )]
    pub sasl_mechanisms: Vec<String>,

    /// Users for SASL PLAIN: one `user:password` per line, `#` comments.
    #[arg(long, env = "USERS_FILE")]
    pub users_file: Option<PathBuf>,

    /// TLS: PEM certificate chain of the server (TLS directly on the socket); needs --tls-key-file.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// TLS: PEM private key of --tls-cert-file.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// TLS: PEM CA certificate(s) verifying client certificates (a client presenting another one is refused;
    /// clients without one are still accepted). Needed for SASL EXTERNAL.
    #[arg(long, env = "TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Most AMQP connections open at once; more are closed with amqp:resource-limit-exceeded.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,

    /// Most links on one connection; more are closed with amqp:resource-limit-exceeded.
    #[arg(long, env = "MAX_LINKS_PER_CONNECTION", default_value_t = 100)]
    pub max_links_per_connection: usize,

    /// Largest AMQP frame accepted, in bytes (at least 512; snapshots larger than a frame are split).
    #[arg(long, env = "MAX_FRAME_SIZE", default_value_t = 65536)]
    pub max_frame_size: u32,

    /// HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// File mode: quiet time after the last change in the watched files before they are re-read (the kubelet
    /// writes a ConfigMap in several steps). E.g. `200ms`, `1s`.
    #[arg(long, env = "DEBOUNCE", default_value = "200ms", value_parser = maas_ops::parse_duration)]
    pub debounce: Duration,

    /// Most snapshot sends in progress at once, over all subscribers. A message is encoded once and shared by
    /// every send, so this bounds the work in flight (and how many subscribers a burst serves at once), not copies;
    /// a delta of at most 64 KiB needs no permit.
    #[arg(long, env = "MAX_CONCURRENT_SENDS", default_value_t = 16)]
    pub max_concurrent_sends: usize,

    /// A snapshot send not complete within this (a subscriber granting no credit, or not reading) gives up its
    /// place and closes that link with `amqp:link:detach-forced`; the subscriber re-attaches to resume.
    #[arg(long, env = "SEND_TIMEOUT", default_value = "5s", value_parser = maas_ops::parse_duration)]
    pub send_timeout: Duration,
}

impl Args {
    /// Arguments for a file-mode service on `127.0.0.1:0` (AMQP and HTTP), for tests and embedding.
    pub fn for_dir(addresses_dir: impl Into<PathBuf>) -> Args {
        Args {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            addresses_dir: Some(addresses_dir.into()),
            flavors_file: None,
            pods_file: None,
            kube: false,
            namespace: None,
            sasl_mechanisms: vec!["ANONYMOUS".to_string()],
            users_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca: None,
            max_connections: 1000,
            max_links_per_connection: 100,
            max_frame_size: 65536,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            debounce: Duration::from_millis(200),
            max_concurrent_sends: 16,
            send_timeout: Duration::from_secs(5),
        }
    }

    /// Checks the combination of flags; the error is one line naming the flags.
    pub fn mode(&self) -> Result<Mode, Error> {
        let invalid = |s: &str| Err(Error::Config(s.to_string()));
        if self.max_frame_size < 512 {
            return invalid("--max-frame-size must be at least 512 (the AMQP minimum)");
        }
        if self.max_connections == 0 {
            return invalid("--max-connections must be at least 1");
        }
        if self.max_links_per_connection == 0 {
            return invalid("--max-links-per-connection must be at least 1");
        }
        if self.max_concurrent_sends == 0 {
            return invalid("--max-concurrent-sends must be at least 1");
        }
        if self.send_timeout.is_zero() {
            return invalid("--send-timeout must be more than 0 (e.g. 5s)");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid("--tls-cert-file and --tls-key-file go together");
        }
        if self.tls_client_ca.is_some() && self.tls_cert_file.is_none() {
            return invalid("--tls-client-ca needs TLS: give --tls-cert-file and --tls-key-file");
        }
        let external = self
            .sasl_mechanisms
            .iter()
            .any(|m| m.trim().eq_ignore_ascii_case("EXTERNAL"));
        if external && self.tls_client_ca.is_none() {
            return invalid(
                "--sasl-mechanisms EXTERNAL needs --tls-client-ca (and --tls-cert-file, --tls-key-file)",
            );
        }
        match (&self.addresses_dir, self.kube) {
            (Some(_), true) => invalid("--addresses-dir and --kube exclude each other"),
            (None, false) => invalid("no address source: give --addresses-dir DIR or --kube"),
            (Some(dir), false) => {
                if self.namespace.is_some() {
                    return invalid("--namespace needs --kube");
                }
                Ok(Mode::Files {
                    addresses_dir: dir.clone(),
                    flavors_file: self.flavors_file.clone(),
                    pods_file: self.pods_file.clone(),
                })
            }
            (None, true) => {
                if self.flavors_file.is_some() || self.pods_file.is_some() {
                    return invalid(
                        "--flavors-file and --pods-file are file mode; not with --kube",
                    );
                }
                match &self.namespace {
                    Some(ns) if !ns.is_empty() => Ok(Mode::Kube {
                        namespace: ns.clone(),
                    }),
                    _ => invalid("--kube needs --namespace (or NAMESPACE)"),
                }
            }
        }
    }
}

/// Where the snapshots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Mounted ConfigMap directory, optional flavor and pods files.
    Files {
        /// `--addresses-dir`.
        addresses_dir: PathBuf,
        /// `--flavors-file`.
        flavors_file: Option<PathBuf>,
        /// `--pods-file`.
        pods_file: Option<PathBuf>,
    },
    /// Kubernetes API watches in one namespace.
    Kube {
        /// `--namespace`.
        namespace: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("config-service").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_and_modes() {
        let a = parse(&["--addresses-dir", "/cfg"]);
        assert_eq!(a.listen.to_string(), "127.0.0.1:5672");
        assert_eq!(a.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(a.sasl_mechanisms, vec!["ANONYMOUS"]);
        assert_eq!(a.debounce, Duration::from_millis(200));
        assert_eq!(a.max_concurrent_sends, 16);
        assert_eq!(a.send_timeout, Duration::from_secs(5));
        assert_eq!(
            parse(&["--addresses-dir", "/c", "--debounce", "20ms"]).debounce,
            Duration::from_millis(20)
        );
        assert!(Args::try_parse_from(["config-service", "--debounce", "5 parsecs"]).is_err());
        assert!(matches!(a.mode().unwrap(), Mode::Files { .. }));
        let a = parse(&["--kube", "--namespace", "ns"]);
        assert_eq!(
            a.mode().unwrap(),
            Mode::Kube {
                namespace: "ns".into()
            }
        );
        let a = parse(&[
            "--addresses-dir",
            "/c",
            "--sasl-mechanisms",
            "ANONYMOUS,PLAIN",
        ]);
        assert_eq!(a.sasl_mechanisms, vec!["ANONYMOUS", "PLAIN"]);
    }

    #[test]
    fn bad_combinations_say_which_flags() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "--addresses-dir DIR or --kube"),
            (&["--addresses-dir", "/c", "--kube"], "exclude each other"),
            (&["--kube"], "--namespace"),
            (
                &["--addresses-dir", "/c", "--tls-cert-file", "c.pem"],
                "go together",
            ),
            (
                &["--addresses-dir", "/c", "--max-frame-size", "100"],
                "at least 512",
            ),
            (
                &["--addresses-dir", "/c", "--tls-client-ca", "ca.pem"],
                "--tls-client-ca needs TLS",
            ),
            (
                &[
                    "--addresses-dir",
                    "/c",
                    "--sasl-mechanisms",
                    "ANONYMOUS,external",
                ],
                "EXTERNAL needs --tls-client-ca",
            ),
            (
                &["--kube", "--namespace", "n", "--pods-file", "p"],
                "file mode",
            ),
            (
                &["--addresses-dir", "/c", "--max-concurrent-sends", "0"],
                "--max-concurrent-sends",
            ),
            (
                &["--addresses-dir", "/c", "--send-timeout", "0s"],
                "--send-timeout",
            ),
        ];
        for (args, want) in cases {
            let err = parse(args).mode().unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
