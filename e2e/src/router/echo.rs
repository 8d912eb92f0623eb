//! How the real router echoes a request's correlation-id, which depends on which of its two management agents
//! answers (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §1):
//!
//! | correlation-id sent | C core agent     | Python agent                          |
//! | ------------------- | ---------------- | ------------------------------------- |
//! | ulong 7             | ulong 7          | AMQP `int` 7 (smallint, format 0x54)  |
//! | string "7"          | "7"              | "7"                                   |
//! | uuid                | the same uuid    | null (dropped)                        |
//! | binary              | the same         | the same                              |
//!
//! Which agent answers follows `qd_can_handle_request()` in qdrouterd's `src/router_core/agent.c`: the C agent
//! takes QUERY/CREATE/READ/UPDATE/DELETE of its own entity types (`entityType`, else `type`), everything else
//! (connector, listener, sslProfile, router.node, GET-* operations, unknown types) goes to the Python agent.
//! The Python agent's echo follows `qd_field_to_py()` and `qd_py_to_composed()` in `src/python_embedded.c`:
//! any integer becomes a Python int, written back as an AMQP int when it fits in 32 bits (smallint for
//! -128..=127, as recorded) and as a long otherwise; a uuid has no Python form and becomes None (null); binary
//! and strings come back as they were.
//!
//! fe2o3 cannot put an `int` or a null into a message's correlation-id (its `MessageId` holds only the four
//! legal types), so the emulator sends a MARKED binary correlation-id carrying the exact bytes the real router
//! would send, and [`RawIdWriter`], wrapped around the connection's socket, replaces it on the way out
//! (fixing the properties list and frame sizes). What leaves the emulator is byte for byte what the real
//! router sends.
//!
//! Guesses (not recorded; see e2e/GUESSES.md #1): the recording used the value 7 only, so the int/long split
//! for larger ulong ids and the long written for a ulong above 2^63-1 are guesses; the C agent's echo was
//! recorded for QUERY only, the Python agent's for QUERY and CREATE/DELETE of a connector (all four types).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use fe2o3_amqp::types::messaging::MessageId;
use fe2o3_amqp::types::primitives::Binary;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::model::Request;

/// Which of the router's management agents answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// The C core agent.
    Core,
    /// The Python agent.
    Python,
}

/// Entity types the C agent handles (agent.c `qd_can_handle_request`).
const CORE_TYPES: &[&str] = &[
    "org.apache.qpid.dispatch.router.address",
    "org.apache.qpid.dispatch.router.link",
    "org.apache.qpid.dispatch.router.config.address",
    "org.apache.qpid.dispatch.router.config.linkRoute",
    "org.apache.qpid.dispatch.router.config.autoLink",
    "org.apache.qpid.dispatch.router",
    "org.apache.qpid.dispatch.console",
    "org.apache.qpid.dispatch.connection",
    "org.apache.qpid.dispatch.router.config.exchange",
    "org.apache.qpid.dispatch.router.config.binding",
    "org.apache.qpid.dispatch.router.connection.linkRoute",
];

/// The agent that answers `req` (agent.c: `entityType` if present, else `type`; one of the C agent's types and
/// one of its five operations, else Python).
// GUESS (e2e/GUESSES.md #1): C-agent types/ops checked in management_agent.c; C-agent echo beyond QUERY assumed
pub fn answering_agent(req: &Request) -> Agent {
    let ty = req.entity_type.as_deref().or(req.type_.as_deref());
    let core_type = ty.is_some_and(|t| CORE_TYPES.contains(&t));
    let core_op = matches!(
        req.operation.as_str(),
        "QUERY" | "CREATE" | "READ" | "UPDATE" | "DELETE"
    );
    if core_type && core_op {
        Agent::Core
    } else {
        Agent::Python
    }
}

/// Marks a binary correlation-id whose remaining bytes are the raw encoding to put in its place.
pub const MARKER: &[u8] = b"\xffmaas-emu-raw-id\xff";

/// The correlation-id the emulator gives fe2o3 for the reply: the request's own for the C agent; for the
/// Python agent, the same for string and binary, and a marked binary carrying the raw `int`/`long`/null.
// GUESS (e2e/GUESSES.md #1): echo for ids other than 7, Python READ/GET-*, C CREATE/READ/DELETE
pub fn echo(agent: Agent, sent: Option<MessageId>) -> Option<MessageId> {
    let sent = sent?;
    if agent == Agent::Core {
        return Some(sent);
    }
    let raw = match &sent {
        MessageId::String(_) | MessageId::Binary(_) => return Some(sent),
        MessageId::Ulong(n) => python_int(*n as i64),
        MessageId::Uuid(_) => vec![0x40],
    };
    let mut marked = MARKER.to_vec();
    marked.extend_from_slice(&raw);
    Some(MessageId::Binary(Binary::from(marked)))
}

/// `qd_compose_insert_int` / `qd_compose_insert_long` of a Python int.
// GUESS (e2e/GUESSES.md #1): int vs long split; a ulong above 2^63-1 kept as the same 64 bits
fn python_int(v: i64) -> Vec<u8> {
    if (-128..=127).contains(&v) {
        vec![0x54, v as u8]
    } else if i64::from(i32::MIN) <= v && v <= i64::from(i32::MAX) {
        let mut b = vec![0x71];
        b.extend_from_slice(&(v as i32).to_be_bytes());
        b
    } else {
        let mut b = vec![0x81];
        b.extend_from_slice(&v.to_be_bytes());
        b
    }
}

/// Rewrites a marked correlation-id in the frame `frame` (whole, header included); `None` when there is none.
fn rewrite_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let doff = usize::from(*frame.get(4)?) * 4;
    if *frame.get(5)? != 0 {
        return None;
    }
    let body = frame.get(doff..)?;
    let t = maas_amqp::wire::transfer(body)?;
    let payload_at = doff + t.payload_offset;
    let window = &frame[payload_at..frame.len().min(payload_at + 512)];
    let m = window.windows(MARKER.len()).position(|w| w == MARKER)?;
    let bin_at = payload_at + m.checked_sub(2)?;
    if frame[bin_at] != 0xa0 {
        return None;
    }
    let bin_len = usize::from(frame[bin_at + 1]);
    let bin_end = bin_at + 2 + bin_len;
    let raw = frame.get(bin_at + 2 + MARKER.len()..bin_end)?;
    let shrink = (2 + bin_len).checked_sub(raw.len())?;
    // The properties section holding it: `00 53 73` then a list8 or list32 header.
    let props_at = frame[..bin_at]
        .windows(3)
        .rposition(|w| w == [0x00, 0x53, 0x73])?;
    let list_at = props_at + 3;
    let mut out = Vec::with_capacity(frame.len() - shrink);
    out.extend_from_slice(&frame[..bin_at]);
    out.extend_from_slice(raw);
    out.extend_from_slice(&frame[bin_end..]);
    match out[list_at] {
        0xc0 => out[list_at + 1] = out[list_at + 1].checked_sub(u8::try_from(shrink).ok()?)?,
        0xd0 => {
            let size = u32::from_be_bytes(out[list_at + 1..list_at + 5].try_into().ok()?);
            let size = size.checked_sub(u32::try_from(shrink).ok()?)?;
            out[list_at + 1..list_at + 5].copy_from_slice(&size.to_be_bytes());
        }
        _ => return None,
    }
    let size = u32::try_from(out.len()).ok()?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// Wraps the emulator's side of a connection: reads pass through; written frames carrying a marked
/// correlation-id are rewritten (see the module docs).
#[derive(Debug)]
pub struct RawIdWriter<Io> {
    inner: Io,
    /// Written bytes not yet forming a complete header or frame.
    pending: Vec<u8>,
    /// Bytes ready for the socket, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// Stop looking at frames (the stream made no sense): pass everything through.
    raw: bool,
}

/// Most bytes held for the socket before a write waits.
const HIGH_WATER: usize = 256 * 1024;

impl<Io> RawIdWriter<Io> {
    /// Wraps `inner`.
    pub fn new(inner: Io) -> Self {
        RawIdWriter {
            inner,
            pending: Vec::new(),
            out: Vec::new(),
            sent: 0,
            raw: false,
        }
    }

    /// Moves every complete unit of `pending` to `out`, rewritten where marked.
    fn process(&mut self) {
        let mut pos = 0;
        while !self.raw {
            let rest = &self.pending[pos..];
            if rest.len() < 8 {
                break;
            }
            if &rest[..4] == b"AMQP" {
                self.out.extend_from_slice(&rest[..8]);
                pos += 8;
                continue;
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if size < 8 {
                self.raw = true;
                break;
            }
            if rest.len() < size {
                break;
            }
            let frame = &rest[..size];
            match rewrite_frame(frame) {
                Some(rewritten) => self.out.extend_from_slice(&rewritten),
                None => self.out.extend_from_slice(frame),
            }
            pos += size;
        }
        if self.raw {
            self.out.extend_from_slice(&self.pending[pos..]);
            pos = self.pending.len();
        }
        self.pending.drain(..pos);
    }
}

impl<Io: AsyncWrite + Unpin> RawIdWriter<Io> {
    /// Writes `out` to the socket until it is empty or the socket is not ready.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for RawIdWriter<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for RawIdWriter<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() - this.sent > HIGH_WATER {
            ready!(this.drain(cx))?;
        }
        this.pending.extend_from_slice(buf);
        this.process();
        if let Poll::Ready(Err(e)) = this.drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::primitives::Uuid;

    fn req(operation: &str, type_: &str, entity_type: Option<&str>) -> Request {
        Request {
            operation: operation.into(),
            type_: Some(type_.into()),
            name: None,
            identity: None,
            entity_type: entity_type.map(String::from),
            offset: None,
            count: None,
            body: fe2o3_amqp::types::primitives::Value::Null,
        }
    }

    #[test]
    fn which_agent_answers() {
        let mgmt = "org.amqp.management";
        let addr = "org.apache.qpid.dispatch.router.config.address";
        let conn = "org.apache.qpid.dispatch.connector";
        assert_eq!(
            answering_agent(&req("QUERY", mgmt, Some(addr))),
            Agent::Core
        );
        assert_eq!(answering_agent(&req("CREATE", addr, None)), Agent::Core);
        assert_eq!(
            answering_agent(&req("QUERY", mgmt, Some(conn))),
            Agent::Python
        );
        assert_eq!(answering_agent(&req("CREATE", conn, None)), Agent::Python);
        assert_eq!(answering_agent(&req("DELETE", conn, None)), Agent::Python);
        assert_eq!(
            answering_agent(&req("GET-TYPES", mgmt, None)),
            Agent::Python
        );
        assert_eq!(
            answering_agent(&req(
                "QUERY",
                mgmt,
                Some("org.apache.qpid.dispatch.router.node")
            )),
            Agent::Python
        );
    }

    #[test]
    fn python_agent_echo_per_type() {
        let marked = |raw: &[u8]| {
            let mut m = MARKER.to_vec();
            m.extend_from_slice(raw);
            Some(MessageId::Binary(Binary::from(m)))
        };
        // python-agent-and-mesh.txt §1: ulong 7 -> `T\x07` (smallint 7); uuid -> `@` (null).
        assert_eq!(
            echo(Agent::Python, Some(MessageId::Ulong(7))),
            marked(b"T\x07")
        );
        assert_eq!(
            echo(Agent::Python, Some(MessageId::Uuid(Uuid::from([7u8; 16])))),
            marked(b"@")
        );
        let s = Some(MessageId::String("7".into()));
        assert_eq!(echo(Agent::Python, s.clone()), s);
        let b = Some(MessageId::Binary(Binary::from(vec![7u8])));
        assert_eq!(echo(Agent::Python, b.clone()), b);
        assert_eq!(
            echo(Agent::Core, Some(MessageId::Ulong(7))),
            Some(MessageId::Ulong(7))
        );
        assert_eq!(echo(Agent::Python, None), None);
        assert_eq!(python_int(300), vec![0x71, 0, 0, 1, 0x2c]);
        assert_eq!(python_int(1 << 40)[0], 0x81);
    }
}
