//! Configuration errors, each naming where the problem is: origin (ConfigMap or file), key, and address.

use std::fmt;

/// One problem in the user's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigError {
    /// Where the text came from: `ConfigMap ns/name` or a directory/file path.
    pub origin: String,
    /// The data key (file name), when known.
    pub key: Option<String>,
    /// The address at fault, when known.
    pub address: Option<String>,
    /// What is wrong, in words a user acts on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(k) = &self.key {
            write!(f, " key {k:?}")?;
        }
        if let Some(a) = &self.address {
            write!(f, " address {a:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// A problem in `origin`, optionally in data key `key` and about address `address`.
    pub fn new(
        origin: &str,
        key: Option<&str>,
        address: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            origin: origin.to_string(),
            key: key.map(str::to_string),
            address: address.map(shorten_for_message),
            message: message.into(),
        }
    }
}

/// Longest address (in bytes) copied verbatim into an error; longer ones are cut so one bad line stays readable.
const MAX_ADDRESS_IN_ERROR: usize = 80;

/// The address as shown in an error: verbatim, or its first characters and `...` when it is very long.
fn shorten_for_message(address: &str) -> String {
    if address.len() <= MAX_ADDRESS_IN_ERROR {
        return address.to_string();
    }
    let mut end = MAX_ADDRESS_IN_ERROR;
    while !address.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &address[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_names_origin_key_and_address() {
        let e = ConfigError::new("ConfigMap ns/addrs", Some("json"), Some("q1"), "bad thing");
        assert_eq!(
            e.to_string(),
            r#"ConfigMap ns/addrs key "json" address "q1": bad thing"#
        );
        let e = ConfigError::new("/etc/brokers.json", None, None, "oops");
        assert_eq!(e.to_string(), "/etc/brokers.json: oops");
    }

    #[test]
    fn very_long_addresses_are_cut_in_errors() {
        let long = "é".repeat(200);
        let e = ConfigError::new("o", None, Some(&long), "too long");
        let shown = e.address.unwrap();
        assert!(shown.ends_with("..."));
        assert!(shown.len() <= MAX_ADDRESS_IN_ERROR + 3);
    }
}
