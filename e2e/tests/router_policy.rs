//! "Only the agent reaches $management": the router emulator's client listener applies the `clients` vhost policy
//! seen working on a real qdrouterd 1.19.0 (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §5), while
//! its first port, the agent's listener, serves `$management` as before. Checked with the agent's own client
//! (`maas_amqp::router::RouterClient`) and with a proton-c client (python3-qpid-proton), like the recording.
//!
//! The shipped client listener also authenticates (`authenticatePeer: true`, `saslMechanisms: PLAIN`, users from a
//! sasldb; manifests/README.md "Client authentication"): with users, the emulator's client listener refuses
//! anonymous, unknown and wrong logins at SASL, and an authenticated client is still refused `$management`
//! (e2e/GUESSES.md #52). Beyond the recording, clients may send to `$subctrl` (the subscription-service's API) but
//! not receive from it (e2e/GUESSES.md #53).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::Duration;

use maas_amqp::options::{ConnectOptions, SaslOptions, Secret};
use maas_amqp::router::{ClientConfig, MgmtError, RouterClient};
use maas_amqp::server::Users;
use maas_e2e::router::policy::{
    GroupPolicy, LINK_DISALLOWED, SUBCTRL, UNAUTHORIZED_ACCESS, allowed, clients_sources,
    clients_targets, plain_login_ok, recorded_targets,
};
use maas_e2e::router::{CONNECTOR, ClientListener, EmulatorConfig, RouterEmulator};
use serde_json::{Map, Value as Json};

async fn emulator() -> RouterEmulator {
    RouterEmulator::start_with_client_listener(
        EmulatorConfig {
            cost_model: false,
            ..Default::default()
        },
        ClientListener::default(),
    )
    .await
    .unwrap()
}

fn options(url: &str) -> ConnectOptions {
    let mut opts = ConnectOptions::from_url(url).unwrap();
    opts.connect_timeout = Duration::from_secs(5);
    opts
}

/// A proton-c client (BlockingConnection, like qdmanage) on `url`: what it sees attaching a sender to
/// `$management`, a request-response client on `$management`, an anonymous sender, a sender to and a receiver from
/// `orders`, and a dynamic receiver. One JSON object on stdout.
const PROTON_PROBE: &str = r#"
import json, sys
from proton import Endpoint, Message
from proton.utils import BlockingConnection, LinkDetached, SyncRequestResponse

url = sys.argv[1]
# Optional login (user, password): SASL PLAIN, as on the shipped (authenticating) client listener.
AUTH = {}
if len(sys.argv) > 3:
    AUTH = {"user": sys.argv[2], "password": sys.argv[3], "allowed_mechs": "PLAIN", "allow_insecure_mechs": True}

def refused(f):
    # One connection per attempt: a refused link's late events cannot disturb the next attempt.
    conn = BlockingConnection(url, timeout=10, **AUTH)
    try:
        f(conn)
        out = {"refused": False}
    except LinkDetached as e:
        c = e.link.remote_condition
        out = {"refused": True, "condition": c.name if c else None, "description": c.description if c else None}
    except Exception as e:
        out = {"refused": True, "other": type(e).__name__, "text": str(e)}
    try:
        conn.close()
    except Exception:
        pass
    return out

out = {}
out["management_sender"] = refused(lambda c: c.create_sender("$management"))
out["underscore_sender"] = refused(lambda c: c.create_sender("_local/$management"))
def anonymous(c):
    # No target to compare: the blocking API returns at the attach; the detach follows.
    s = c.create_sender(None)
    c.wait(lambda: s.link.state & Endpoint.REMOTE_CLOSED, timeout=5)

out["anonymous_sender"] = refused(anonymous)
out["request_response"] = refused(lambda c: SyncRequestResponse(c, "$management"))
def subctrl_request(c):
    # The exact address $subctrl is a target clients may send to (the subscription-service's API).
    s = c.create_sender("$subctrl")
    s.send(Message(body="news", subject="subscribe", correlation_id="c1"))
out["subctrl_sender"] = refused(subctrl_request)
def subctrl_receiver(c):
    # ... but no client may receive from it (only the subscription-service's group).
    r = c.create_receiver("$subctrl", name="subctrl-receiver")
    c.wait(lambda: r.link.state & Endpoint.REMOTE_CLOSED, timeout=5)
out["subctrl_receiver"] = refused(subctrl_receiver)
conn = BlockingConnection(url, timeout=10, **AUTH)
snd = conn.create_sender("orders")
snd.send(Message(body="o-1"))
out["orders_sent"] = True
# Its own link name: proton would name it like the sender, which fe2o3's session refuses (DuplicatedLinkName).
rcv = conn.create_receiver("orders", name="orders-receiver")
out["orders_receiver"] = rcv.link.remote_source.address
dyn = conn.create_receiver(None, dynamic=True)
out["dynamic_address"] = dyn.link.remote_source.address
conn.close()
print(json.dumps(out))
"#;

async fn proton_probe(url: String) -> Json {
    proton_probe_as(url, None).await
}

/// [`proton_probe`] logged in with SASL PLAIN as (user, password).
async fn proton_probe_as(url: String, login: Option<(String, String)>) -> Json {
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["60".to_string(), "/usr/bin/python3".into(), "-c".into()];
        args.extend([PROTON_PROBE.to_string(), url]);
        if let Some((user, password)) = login {
            args.extend([user, password]);
        }
        let out = Command::new("timeout")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "python failed: {:?}", out.status);
        serde_json::from_slice(&out.stdout).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_listener_refuses_management_and_the_agent_port_serves_it() {
    let emu = emulator().await;
    let client_url = emu.client_url().unwrap();
    assert_ne!(emu.client_addr().unwrap(), emu.addr());
    assert!(emu.client_addr().unwrap().ip().is_loopback());

    // The agent's client on the client listener: refused by connect itself, with the recorded condition in the
    // error. The router answers the attach with an EMPTY target before the closing detach (e2e/GUESSES.md #26c),
    // which fe2o3 takes as attached; RouterClient::connect notices the missing target and waits for the detach.
    assert_management_refused_at_connect(&options(&client_url)).await;

    // The agent on its own listener: QUERY connector -> 200, [] (recorded).
    let agent = RouterClient::connect(&options(&emu.url()), ClientConfig::default())
        .await
        .unwrap();
    let mut body = Map::new();
    body.insert("attributeNames".to_string(), Json::Array(vec![]));
    let reply = agent
        .call(
            "QUERY",
            "org.amqp.management",
            "self",
            &[("entityType", CONNECTOR)],
            body,
        )
        .await
        .unwrap();
    assert_eq!(reply.status_code, 200, "{reply:?}");
    assert_eq!(reply.body["results"], Json::Array(vec![]), "{reply:?}");
    assert!(agent.query(CONNECTOR, &["name"]).await.unwrap().is_empty());

    // A proton-c client on the client listener sees the recorded detach; ordinary messaging still works.
    let seen = proton_probe(client_url.clone()).await;
    for link in ["management_sender", "underscore_sender", "request_response"] {
        assert_eq!(seen[link]["refused"], Json::Bool(true), "{link}: {seen}");
        assert_eq!(
            seen[link]["condition"].as_str(),
            Some(UNAUTHORIZED_ACCESS),
            "{link}: {seen}"
        );
        assert_eq!(
            seen[link]["description"].as_str(),
            Some(LINK_DISALLOWED),
            "{link}: {seen}"
        );
    }
    // allowAnonymousSender: false in the recorded vhost.
    assert_eq!(
        seen["anonymous_sender"]["condition"].as_str(),
        Some(UNAUTHORIZED_ACCESS),
        "{seen}"
    );
    assert_subctrl_send_only(&seen);
    assert_eq!(seen["orders_sent"], Json::Bool(true), "{seen}");
    assert_eq!(seen["orders_receiver"].as_str(), Some("orders"), "{seen}");
    // allowDynamicSource: true — reply-to addresses start with a letter, so request-response keeps working.
    assert!(
        seen["dynamic_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("amqp:/_topo/0/")),
        "{seen}"
    );

    // The agent's connection is unaffected by all that, and the refused links left no reply route behind.
    assert!(agent.query(CONNECTOR, &["name"]).await.unwrap().is_empty());
    agent.close().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while emu.open_reply_links() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    emu.stop().await;
}

/// What the probe saw of `$subctrl`: a client sends a request to it (e2e/GUESSES.md #53), but may not receive from
/// it (the refusal names the policy, as for `$management`).
fn assert_subctrl_send_only(seen: &Json) {
    assert_eq!(
        seen["subctrl_sender"]["refused"],
        Json::Bool(false),
        "{seen}"
    );
    assert_eq!(
        seen["subctrl_receiver"]["condition"].as_str(),
        Some(UNAUTHORIZED_ACCESS),
        "{seen}"
    );
    assert_eq!(
        seen["subctrl_receiver"]["description"].as_str(),
        Some(LINK_DISALLOWED),
        "{seen}"
    );
}

/// `RouterClient::connect` on a listener whose policy refuses `$management` fails (fast: not after the request
/// timeout) with a connect error naming the refusal.
async fn assert_management_refused_at_connect(opts: &ConnectOptions) {
    let started = std::time::Instant::now();
    let err = RouterClient::connect(opts, ClientConfig::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refusal took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, MgmtError::Connect(_)) && err.is_connection_error(),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(LINK_DISALLOWED),
        "error does not name the policy denial: {text}"
    );
    assert!(
        text.contains("UnauthorizedAccess") || text.contains(UNAUTHORIZED_ACCESS),
        "error does not name unauthorized-access: {text}"
    );
    assert!(text.contains("$management"), "{text}");
}

const USER: &str = "alice@maas";
const PASSWORD: &str = "s3cret-Pa55";

fn users() -> Users {
    let mut u = Users::default();
    u.insert(USER, PASSWORD);
    u
}

fn login(url: &str, username: &str, password: &str) -> ConnectOptions {
    let mut o = options(url);
    o.sasl = SaslOptions::Plain {
        username: username.to_string(),
        password: Secret::new(password),
    };
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticating_client_listener_admits_only_known_users_and_still_refuses_management() {
    let emu = RouterEmulator::start_with_client_listener(
        EmulatorConfig {
            cost_model: false,
            ..Default::default()
        },
        ClientListener {
            users: Some(users()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client_url = emu.client_url().unwrap();

    // Refused at SASL: anonymous, no SASL layer at all, a wrong password, an unknown user, the user without its
    // realm. The error is a connect error (the SASL outcome), never the policy's link denial, and it never
    // carries the password.
    let mut no_sasl = options(&client_url);
    no_sasl.sasl = SaslOptions::None;
    for (what, opts) in [
        ("anonymous", options(&client_url)),
        ("no SASL", no_sasl),
        ("wrong password", login(&client_url, USER, "wrong-password")),
        ("unknown user", login(&client_url, "mallory@maas", PASSWORD)),
        ("no realm", login(&client_url, "alice", PASSWORD)),
    ] {
        let err = RouterClient::connect(&opts, ClientConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, MgmtError::Connect(_)), "{what}: {err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(LINK_DISALLOWED), "{what}: got in: {text}");
        assert!(!text.contains(PASSWORD), "{what}: password in {text}");
    }

    // Authenticated: still no $management (the vhost policy applies to every user, allowUnknownUser puts them
    // all into $default), refused at connect.
    assert_management_refused_at_connect(&login(&client_url, USER, PASSWORD)).await;

    // The agent's own listener is unaffected: QUERY connector -> 200, [].
    let agent = RouterClient::connect(&options(&emu.url()), ClientConfig::default())
        .await
        .unwrap();
    assert!(agent.query(CONNECTOR, &["name"]).await.unwrap().is_empty());

    // A proton-c client logged in as the user: the same refusals and the same messaging as without login.
    let seen = proton_probe_as(
        client_url.clone(),
        Some((USER.to_string(), PASSWORD.to_string())),
    )
    .await;
    for link in ["management_sender", "underscore_sender", "request_response"] {
        assert_eq!(
            seen[link]["condition"].as_str(),
            Some(UNAUTHORIZED_ACCESS),
            "{link}: {seen}"
        );
        assert_eq!(
            seen[link]["description"].as_str(),
            Some(LINK_DISALLOWED),
            "{link}: {seen}"
        );
    }
    assert_eq!(seen["orders_sent"], Json::Bool(true), "{seen}");
    assert!(
        seen["dynamic_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("amqp:/_topo/0/")),
        "{seen}"
    );
    assert_subctrl_send_only(&seen);
    // And without login proton is refused at SASL (the probe fails before printing).
    let refused = tokio::task::spawn_blocking({
        let url = client_url.clone();
        move || {
            Command::new("timeout")
                .args(["60", "/usr/bin/python3", "-c", PROTON_PROBE, &url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!refused.status.success(), "anonymous proton client got in");

    agent.close().await;
    emu.stop().await;
}

#[test]
fn plain_logins_are_checked_whole_with_the_realm() {
    let u = users();
    assert!(plain_login_ok(&u, b"\0alice@maas\0s3cret-Pa55"));
    assert!(plain_login_ok(&u, b"alice@maas\0alice@maas\0s3cret-Pa55"));
    for bad in [
        &b"\0alice@maas\0wrong"[..],
        b"\0alice\0s3cret-Pa55",
        b"\0ALICE@maas\0s3cret-Pa55",
        b"bob@maas\0alice@maas\0s3cret-Pa55",
        b"\0alice@maas\0s3cret-Pa55\0extra",
        b"alice@maas s3cret-Pa55",
        b"",
    ] {
        assert!(
            !plain_login_ok(&u, bad),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(!plain_login_ok(
        &Users::default(),
        b"\0alice@maas\0s3cret-Pa55"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_listener_the_emulator_is_unchanged() {
    let emu = RouterEmulator::start(EmulatorConfig {
        cost_model: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(emu.client_addr().is_none() && emu.client_url().is_none());
    let c = RouterClient::connect(&options(&emu.url()), ClientConfig::default())
        .await
        .unwrap();
    assert!(c.query(CONNECTOR, &["name"]).await.unwrap().is_empty());
    c.close().await;
    emu.stop().await;
}

#[tokio::test]
async fn the_client_listener_is_loopback_only() {
    let err = RouterEmulator::start_with_client_listener(
        EmulatorConfig::default(),
        ClientListener {
            listen: "0.0.0.0:0".parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn the_clients_vhost_refuses_management_and_allows_plain_addresses_and_subctrl() {
    let p = GroupPolicy::clients();
    // The recorded targets, plus the exact address $subctrl.
    assert_eq!(p.targets, clients_targets());
    assert_eq!(
        clients_targets(),
        format!("{}, $subctrl", recorded_targets())
    );
    let recorded = recorded_targets();
    assert!(recorded.starts_with("a*, b*, c*"), "{recorded}");
    assert!(recorded.ends_with("Z*, 0*, 1*, 2*, 3*, 4*, 5*, 6*, 7*, 8*, 9*"));
    assert_eq!(recorded.split(", ").count(), 62);
    for denied in [
        "$management",
        "_local/$management",
        "/$management",
        "$subctrl2",
        "$subctr",
        "$subctrl/x",
        "$",
    ] {
        assert!(!p.allows_sender(Some(denied)), "{denied}");
    }
    assert!(!p.allows_sender(None) && !p.allows_sender(Some("")));
    for ok in [
        "orders",
        "Orders",
        "9lives",
        "amqp:/_topo/0/R/temp.x",
        SUBCTRL,
    ] {
        assert!(p.allows_sender(Some(ok)), "{ok}");
    }
    // Receivers: plain addresses and dynamic reply-to addresses; never $subctrl (nor $management).
    assert_eq!(p.sources, clients_sources());
    assert!(p.allows_receiver(true, None));
    assert!(p.allows_receiver(false, Some("orders")));
    for denied in [SUBCTRL, "$management", "_topo/0/R/$management"] {
        assert!(!p.allows_receiver(false, Some(denied)), "{denied}");
    }
    assert!(!p.allows_receiver(false, None));
    // The subscription-service's group: receives $subctrl only; sends list replies to reply-to addresses.
    let s = GroupPolicy::subscription_service();
    assert!(s.allows_receiver(false, Some(SUBCTRL)));
    assert!(!s.allows_receiver(false, Some("orders")) && !s.allows_receiver(true, None));
    assert!(s.allows_sender(Some("amqp:/_topo/0/R/temp.x")) && s.allows_sender(Some("replies")));
    assert!(!s.allows_sender(Some("$management")) && !s.allows_sender(Some(SUBCTRL)));
    assert!(!s.allows_sender(None));
    let a = GroupPolicy::agent();
    assert!(a.allows_sender(Some("$management")) && a.allows_sender(None));

    assert!(allowed("*", "x"));
    assert!(allowed("a b,c*", "b"));
    assert!(!allowed("a b,c*", "bb"));
    assert!(allowed("a b,c*", "cat"));
    assert!(!allowed("", "x"));
    assert!(!allowed("*", ""));
}
