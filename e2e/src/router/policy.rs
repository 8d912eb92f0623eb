//! The vhost policy of the emulator's optional CLIENT listener: the `clients` vhost that was seen working on a
//! real qdrouterd 1.19.0 (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §5), so that `$management` is
//! reachable only on the agent's listener.
//!
//! Recorded: on a listener naming the `clients` vhost, a sender attached to `$management` was detached with
//! `amqp:unauthorized-access` `link disallowed by local policy`; sending to and receiving from `orders` worked;
//! request-response (dynamic reply-to) worked. The `targets` list names every letter and digit followed by `*`,
//! so addresses starting with `$` or `_` are not in it.
//!
//! What the emulator derives beyond that from the settings and qdrouterd's `src/policy.c` (read, not run) is a
//! guess (e2e/GUESSES.md #26b): the prefix/exact matching of the lists, the denial of anonymous senders
//! (`allowAnonymousSender: false`) and of receivers with neither an address nor a dynamic source. Pure: no I/O.
//!
//! The shipped vhost goes beyond the recording for `$subctrl` (e2e/GUESSES.md #53): clients may also SEND to the
//! exact address `$subctrl`, and receive only from addresses starting with a letter or digit (plus dynamic
//! reply-to addresses), so only the subscription-service's own group receives `$subctrl`.
//!
//! The client listener may also authenticate, as the shipped one does (manifests/README.md "Client
//! authentication": `authenticatePeer: true`, `saslMechanisms: PLAIN`, users from a sasldb): [`plain_login_ok`]
//! checks a PLAIN login; the vhost policy then applies to the authenticated user exactly as before
//! (`allowUnknownUser: true` puts every user into the `$default` group, src/policy.c / policy_local.py).

/// The SASL mechanism of an authenticating client listener (`authenticatePeer: true`, `saslMechanisms: PLAIN`).
pub const PLAIN: &str = "PLAIN";

/// Whether a SASL PLAIN initial response (`authzid NUL authcid NUL password`) names a user of `users` with its
/// password. The authcid is compared whole, realm included (`alice@maas`): Cyrus SASL keys a sasldb entry by user
/// and realm, and a name without `@realm` gets the server's host name as realm (manifests/README.md "Client
/// authentication"). An authzid other than empty or the authcid itself is refused (no proxy authorization).
// GUESS (e2e/GUESSES.md #52): PLAIN checked like Cyrus' sasldb, names compared with their realm
pub fn plain_login_ok(users: &maas_amqp::server::Users, initial_response: &[u8]) -> bool {
    let mut parts = initial_response.split(|b| *b == 0);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(authzid), Some(user), Some(password), None) => {
            (authzid.is_empty() || authzid == user) && users.check(user, password)
        }
        _ => false,
    }
}

/// The error condition of a link refused by policy (recorded).
pub const UNAUTHORIZED_ACCESS: &str = "amqp:unauthorized-access";

/// The error description of a link refused by policy (recorded; `LINK_DISALLOWED` in src/policy.c).
pub const LINK_DISALLOWED: &str = "link disallowed by local policy";

/// The settings of one vhost user group (`$default`), as far as links are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    /// `sources`: addresses clients may receive from (comma- or space-separated; `*` = any; `x*` = prefix).
    pub sources: String,
    /// `targets`: addresses clients may send to (same syntax).
    pub targets: String,
    /// `allowDynamicSource`: receivers asking for a dynamic node (reply-to addresses).
    pub allow_dynamic_source: bool,
    /// `allowAnonymousSender`: senders without a target address.
    pub allow_anonymous_sender: bool,
}

/// The recorded `clients` targets: every letter (lower case, then upper case) and every digit, each followed by
/// `*`, separated by `, ` (python-agent-and-mesh.txt §5).
pub fn recorded_targets() -> String {
    ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .map(|c| format!("{c}*"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The subscription-service's API address (router-agent `--subctrl` makes it a balanced address).
pub const SUBCTRL: &str = "$subctrl";

/// The user the subscription-service logs in to the client listener as (its own group of the `clients` vhost,
/// [`GroupPolicy::subscription_service`]; manifests/README.md "Client authentication").
pub const SUBSCRIPTION_SERVICE_USER: &str = "subscription-service@maas";

/// The shipped `clients` targets of the `$default` group: [`recorded_targets`] and the exact address
/// [`SUBCTRL`] (an entry without `*` matches the whole address only, so `$management` stays refused).
// GUESS (e2e/GUESSES.md #53): an exact `$subctrl` entry admits `$subctrl` and nothing else (source-read)
pub fn clients_targets() -> String {
    format!("{}, {SUBCTRL}", recorded_targets())
}

/// The shipped `clients` sources of the `$default` group: [`recorded_targets`], so no client but the
/// subscription-service (its own group) can receive from `$subctrl` (or any `$`/`_` address) and take requests
/// meant for it. Dynamic (reply-to) receivers are allowed by `allowDynamicSource`, not by this list.
pub fn clients_sources() -> String {
    recorded_targets()
}

impl GroupPolicy {
    /// The `$default` group of the shipped `clients` vhost: sources [`clients_sources`], targets
    /// [`clients_targets`], `allowDynamicSource: true`, `allowAnonymousSender: false` (recorded with sources `*`
    /// and the targets of [`recorded_targets`]).
    pub fn clients() -> GroupPolicy {
        GroupPolicy {
            sources: clients_sources(),
            targets: clients_targets(),
            allow_dynamic_source: true,
            allow_anonymous_sender: false,
        }
    }

    /// The `subscription-service` group of the shipped `clients` vhost (users [`SUBSCRIPTION_SERVICE_USER`]):
    /// receives `$subctrl` only, and sends only to plain addresses (the `list` replies go to the requests'
    /// reply-to, `amqp:/_topo/...` for a dynamic one). Not applied by the emulator's client listener (one group
    /// for every user); checked against the manifests.
    pub fn subscription_service() -> GroupPolicy {
        GroupPolicy {
            sources: SUBCTRL.to_string(),
            targets: recorded_targets(),
            allow_dynamic_source: false,
            allow_anonymous_sender: false,
        }
    }

    /// The `$default` group of the recorded `agent` vhost: everything allowed.
    pub fn agent() -> GroupPolicy {
        GroupPolicy {
            sources: "*".to_string(),
            targets: "*".to_string(),
            allow_dynamic_source: true,
            allow_anonymous_sender: true,
        }
    }

    /// May a client SENDER attach with this target address? `None` or empty: an anonymous sender.
    // GUESS (e2e/GUESSES.md #26b): anonymous senders refused per allowAnonymousSender (source-read, not recorded)
    pub fn allows_sender(&self, target: Option<&str>) -> bool {
        match target {
            Some(t) if !t.is_empty() => allowed(&self.targets, t),
            _ => self.allow_anonymous_sender,
        }
    }

    /// May a client RECEIVER attach with this source? A dynamic source asks for a reply-to address.
    // GUESS (e2e/GUESSES.md #26b): a receiver with no address and no dynamic flag is refused (source-read)
    pub fn allows_receiver(&self, dynamic: bool, source: Option<&str>) -> bool {
        if dynamic {
            return self.allow_dynamic_source;
        }
        match source {
            Some(s) if !s.is_empty() => allowed(&self.sources, s),
            _ => false,
        }
    }
}

/// Whether `address` matches the allow list `list`: tokens separated by commas or white space; `*` matches
/// anything, a token ending in `*` matches addresses starting with the rest, any other token the whole address.
/// An empty address or list allows nothing. (`${user}` substitutions are not emulated.)
// GUESS (e2e/GUESSES.md #26b): matching rules from src/policy.c `_qd_policy_approve_link_name`, not recorded
pub fn allowed(list: &str, address: &str) -> bool {
    if address.is_empty() {
        return false;
    }
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .any(|token| match token.strip_suffix('*') {
            Some(prefix) => address.starts_with(prefix),
            None => token == address,
        })
}
