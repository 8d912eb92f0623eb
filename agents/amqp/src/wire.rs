//! Just enough of the AMQP 1.0 wire format to look at bytes fe2o3 could not decode: splitting a byte stream
//! into protocol headers and frames (AMQP 1.0 part 2 §2.2-2.3), the length of any encoded value (part 1 §1.6:
//! the high nibble of a format code says how its size is encoded), the fields of a `transfer` performative,
//! and the `correlation-id` of a message from its raw sections (part 3 §3.2.4).
//!
//! Why it exists: fe2o3 decodes a message's `properties` strictly, and a correlation-id that is not one of the
//! four legal message-id types (ulong, uuid, binary, string) makes the whole delivery undecodable, with only
//! the delivery-id left to tell which one it was. qdrouterd's Python management agent echoes a ulong
//! correlation-id as an AMQP `int` (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §1). The
//! request client keeps the first bytes of every reply (see [`crate::request`]) and reads them here, so such
//! a reply still fails its request at once with a clear error instead of a timeout.

/// An 8-byte protocol header (`AMQP 0 1 0 0`, `AMQP 3 1 0 0`, ...) or one frame of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Unit<'a> {
    /// A protocol header (the 5th byte is the protocol id: 0 AMQP, 2 TLS, 3 SASL).
    Header([u8; 8]),
    /// A frame: its type (0 AMQP, 1 SASL), channel and body (after the extended header).
    Frame {
        /// Frame type.
        frame_type: u8,
        /// Channel.
        channel: u16,
        /// The frame body (performative and payload); empty for a heartbeat.
        body: &'a [u8],
    },
}

/// Why a byte stream cannot be split any further (the splitter stops; nothing else is affected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an AMQP frame: {0}")]
pub struct WireError(pub String);

/// Splits a byte stream, fed in arbitrary pieces, into protocol headers and frames.
#[derive(Debug, Default)]
pub struct FrameSplitter {
    buf: Vec<u8>,
    failed: bool,
}

impl FrameSplitter {
    /// Feeds `bytes`; calls `on_unit` for every header or frame completed by them. After a malformed frame
    /// header it returns the error once and ignores everything after.
    pub fn push(
        &mut self,
        bytes: &[u8],
        mut on_unit: impl FnMut(Unit<'_>),
    ) -> Result<(), WireError> {
        if self.failed {
            return Ok(());
        }
        let result = if self.buf.is_empty() {
            // The common case: parse straight from the new bytes, keep only an incomplete tail.
            match split(bytes, &mut on_unit) {
                Ok(used) => {
                    self.buf.extend_from_slice(&bytes[used..]);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            self.buf.extend_from_slice(bytes);
            match split(&self.buf, &mut on_unit) {
                Ok(used) => {
                    self.buf.drain(..used);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        if result.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        result
    }
}

/// Calls `on_unit` for every complete unit at the start of `bytes`; returns how many bytes they took.
fn split(bytes: &[u8], on_unit: &mut impl FnMut(Unit<'_>)) -> Result<usize, WireError> {
    let mut pos = 0;
    loop {
        let rest = &bytes[pos..];
        if rest.len() < 8 {
            // A frame header and a protocol header are both 8 bytes.
            return Ok(pos);
        }
        if &rest[..4] == b"AMQP" {
            let mut h = [0u8; 8];
            h.copy_from_slice(&rest[..8]);
            on_unit(Unit::Header(h));
            pos += 8;
            continue;
        }
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let doff = usize::from(rest[4]) * 4;
        if size < 8 || doff < 8 || doff > size {
            return Err(WireError(format!(
                "frame header {:02x?} (size {size}, data offset {doff})",
                &rest[..8]
            )));
        }
        if rest.len() < size {
            return Ok(pos);
        }
        on_unit(Unit::Frame {
            frame_type: rest[5],
            channel: u16::from_be_bytes([rest[6], rest[7]]),
            body: &rest[doff..size],
        });
        pos += size;
    }
}

/// The number of bytes the encoded AMQP value at the start of `bytes` takes (a described value with its
/// descriptor); `None` when `bytes` is too short or starts with no known format code.
pub fn value_len(bytes: &[u8]) -> Option<usize> {
    let code = *bytes.first()?;
    if code == 0x00 {
        let descriptor = value_len(bytes.get(1..)?)?;
        let value = value_len(bytes.get(1 + descriptor..)?)?;
        return Some(1 + descriptor + value);
    }
    let len = match code >> 4 {
        0x4 => 1,
        0x5 => 2,
        0x6 => 3,
        0x7 => 5,
        0x8 => 9,
        0x9 => 17,
        0xa | 0xc | 0xe => 2 + usize::from(*bytes.get(1)?),
        0xb | 0xd | 0xf => {
            let n = bytes.get(1..5)?;
            5 + u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize
        }
        _ => return None,
    };
    (bytes.len() >= len).then_some(len)
}

/// The descriptor code of the described value at the start of `bytes` (`0x00 0x53 code` or the ulong form).
fn descriptor_code(bytes: &[u8]) -> Option<u64> {
    if *bytes.first()? != 0x00 {
        return None;
    }
    let d = bytes.get(1..)?;
    match *d.first()? {
        0x53 => d.get(1).map(|c| u64::from(*c)),
        0x80 => {
            let b = d.get(1..9)?;
            Some(u64::from_be_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))
        }
        0x44 => Some(0),
        _ => None,
    }
}

/// The encoded fields of the list at the start of `bytes` (list0, list8, list32), each as its raw bytes.
fn list_fields(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let (count, mut pos) = match *bytes.first()? {
        0x45 => return Some(Vec::new()),
        0xc0 => (usize::from(*bytes.get(2)?), 3),
        0xd0 => {
            let c = bytes.get(5..9)?;
            (u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize, 9)
        }
        _ => return None,
    };
    let end = value_len(bytes)?;
    let mut fields = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = value_len(bytes.get(pos..end)?)?;
        fields.push(&bytes[pos..pos + len]);
        pos += len;
    }
    Some(fields)
}

/// The start of a described list: its descriptor code and its fields.
fn described_list(bytes: &[u8]) -> Option<(u64, Vec<&[u8]>)> {
    let code = descriptor_code(bytes)?;
    let descriptor_len = value_len(bytes.get(1..)?)?;
    let fields = list_fields(bytes.get(1 + descriptor_len..)?)?;
    Some((code, fields))
}

fn read_uint(field: &[u8]) -> Option<u32> {
    match *field.first()? {
        0x43 => Some(0),
        0x52 => field.get(1).map(|b| u32::from(*b)),
        0x70 => {
            let b = field.get(1..5)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        _ => None,
    }
}

fn read_bool(field: &[u8]) -> Option<bool> {
    match *field.first()? {
        0x41 => Some(true),
        0x42 | 0x40 => Some(false),
        0x56 => field.get(1).map(|b| *b != 0),
        _ => None,
    }
}

/// What a `transfer` frame says about its delivery, and where its payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferInfo {
    /// The link handle.
    pub handle: u32,
    /// The delivery-id (only on the first frame of a delivery).
    pub delivery_id: Option<u32>,
    /// More frames of this delivery follow.
    pub more: bool,
    /// Offset of the message bytes in the frame body.
    pub payload_offset: usize,
}

/// Reads a frame body as a `transfer` performative (descriptor 0x14); `None` for any other performative.
pub fn transfer(body: &[u8]) -> Option<TransferInfo> {
    let (code, fields) = described_list(body)?;
    if code != 0x14 {
        return None;
    }
    let handle = read_uint(fields.first()?)?;
    let delivery_id = fields.get(1).and_then(|f| read_uint(f));
    let more = fields.get(5).and_then(|f| read_bool(f)).unwrap_or(false);
    Some(TransferInfo {
        handle,
        delivery_id,
        more,
        payload_offset: value_len(body)?,
    })
}

/// The encoded `correlation-id` of a message (field 5 of its `properties` section, descriptor 0x73) as raw
/// bytes, read from the start of the message; `None` when the message has no properties section within
/// `message` (sections before it are skipped) or the bytes end first.
pub fn correlation_id(message: &[u8]) -> Option<&[u8]> {
    let mut pos = 0;
    while pos < message.len() {
        let section = &message[pos..];
        let code = descriptor_code(section)?;
        match code {
            // header, delivery-annotations, message-annotations: skip
            0x70..=0x72 => pos += value_len(section)?,
            0x73 => {
                let (_, fields) = described_list(section)?;
                return fields.get(5).copied();
            }
            _ => return None,
        }
    }
    None
}

/// A decoded correlation-id as far as matching replies needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawId {
    /// Any integer type (ulong as sent, or the `int`/`long` qdrouterd's Python agent turns a ulong into).
    Integer(i128),
    /// A string (or symbol).
    Text(String),
    /// Binary.
    Bytes(Vec<u8>),
    /// A uuid.
    Uuid([u8; 16]),
    /// Null (qdrouterd's Python agent drops a uuid correlation-id to null).
    Null,
}

/// Decodes one raw value as a [`RawId`] and names its AMQP type (for error texts); `None` for types no
/// correlation-id would carry (lists, maps, floats, ...).
pub fn read_id(field: &[u8]) -> Option<(RawId, &'static str)> {
    let code = *field.first()?;
    let be = |n: usize| -> Option<u64> {
        let b = field.get(1..1 + n)?;
        Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    let signed = |n: usize| -> Option<i128> {
        let v = be(n)?;
        let shift = 64 - 8 * n as u32;
        Some(i128::from(((v << shift) as i64) >> shift))
    };
    let text = |lenlen: usize| -> Option<String> {
        let n = be(lenlen)? as usize;
        let b = field.get(1 + lenlen..1 + lenlen + n)?;
        Some(String::from_utf8_lossy(b).into_owned())
    };
    let bytes = |lenlen: usize| -> Option<Vec<u8>> {
        let n = be(lenlen)? as usize;
        field.get(1 + lenlen..1 + lenlen + n).map(<[u8]>::to_vec)
    };
    Some(match code {
        0x40 => (RawId::Null, "null"),
        0x43 => (RawId::Integer(0), "uint"),
        0x44 => (RawId::Integer(0), "ulong"),
        0x50 => (RawId::Integer(i128::from(be(1)?)), "ubyte"),
        0x52 => (RawId::Integer(i128::from(be(1)?)), "uint"),
        0x53 => (RawId::Integer(i128::from(be(1)?)), "ulong"),
        0x51 => (RawId::Integer(signed(1)?), "byte"),
        0x54 => (RawId::Integer(signed(1)?), "int"),
        0x55 => (RawId::Integer(signed(1)?), "long"),
        0x60 => (RawId::Integer(i128::from(be(2)?)), "ushort"),
        0x61 => (RawId::Integer(signed(2)?), "short"),
        0x70 => (RawId::Integer(i128::from(be(4)?)), "uint"),
        0x71 => (RawId::Integer(signed(4)?), "int"),
        0x80 => (RawId::Integer(i128::from(be(8)?)), "ulong"),
        0x81 => (RawId::Integer(signed(8)?), "long"),
        0x98 => {
            let mut u = [0u8; 16];
            u.copy_from_slice(field.get(1..17)?);
            (RawId::Uuid(u), "uuid")
        }
        0xa0 => (RawId::Bytes(bytes(1)?), "binary"),
        0xb0 => (RawId::Bytes(bytes(4)?), "binary"),
        0xa1 => (RawId::Text(text(1)?), "string"),
        0xb1 => (RawId::Text(text(4)?), "string"),
        0xa3 => (RawId::Text(text(1)?), "symbol"),
        0xb3 => (RawId::Text(text(4)?), "symbol"),
        _ => return None,
    })
}

/// Is this format code one of the four legal message-id types (AMQP 1.0 part 3 §3.2.11-3.2.15)?
pub fn is_legal_message_id(field: &[u8]) -> bool {
    matches!(
        field.first(),
        Some(0x44 | 0x53 | 0x80 | 0x98 | 0xa0 | 0xb0 | 0xa1 | 0xb1)
    )
}

/// A short printable summary of raw bytes for logs: length and the first 64 bytes as escaped text.
pub fn summary(bytes: &[u8]) -> String {
    let shown: String = bytes
        .iter()
        .take(64)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    let more = if bytes.len() > 64 { "..." } else { "" };
    format!("{} bytes: {shown}{more}", bytes.len())
}

/// Bytes kept of each delivery by a [`DeliveryLog`]: enough for the header and properties sections of a
/// management reply (its correlation-id) and for a log summary.
pub const PREFIX_BYTES: usize = 256;

/// The first bytes of the latest deliveries received on a connection, by delivery-id, read off the plaintext
/// byte stream as it arrives (see [`crate::connect`]). Meant for a connection with ONE receiving link (the
/// request client's reply link): every transfer on it is a reply. Bounded: the oldest entries go first.
#[derive(Debug)]
pub struct DeliveryLog {
    inner: std::sync::Mutex<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    splitter: FrameSplitter,
    /// After the AMQP protocol header (before it: SASL frames).
    amqp: bool,
    capacity: usize,
    entries: std::collections::VecDeque<(u32, Vec<u8>)>,
}

impl DeliveryLog {
    /// A log keeping the first [`PREFIX_BYTES`] of the latest `capacity` deliveries.
    pub fn new(capacity: usize) -> Self {
        DeliveryLog {
            inner: std::sync::Mutex::new(LogInner {
                splitter: FrameSplitter::default(),
                amqp: false,
                capacity: capacity.max(1),
                entries: std::collections::VecDeque::new(),
            }),
        }
    }

    /// Feeds bytes read from the peer, in order.
    pub fn feed(&self, bytes: &[u8]) {
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let LogInner {
            splitter,
            amqp,
            capacity,
            entries,
        } = &mut *guard;
        let result = splitter.push(bytes, |unit| match unit {
            Unit::Header(h) => *amqp = h[4] == 0,
            Unit::Frame {
                frame_type: 0,
                body,
                ..
            } if *amqp && !body.is_empty() => {
                let Some(t) = transfer(body) else { return };
                let Some(id) = t.delivery_id else { return };
                let payload = &body[t.payload_offset.min(body.len())..];
                let mut kept = if entries.len() >= *capacity {
                    entries.pop_front().map(|(_, v)| v).unwrap_or_default()
                } else {
                    Vec::with_capacity(PREFIX_BYTES)
                };
                kept.clear();
                kept.extend_from_slice(&payload[..payload.len().min(PREFIX_BYTES)]);
                entries.push_back((id, kept));
            }
            Unit::Frame { .. } => {}
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "delivery log stopped");
        }
    }

    /// The first bytes of delivery `delivery_id`, if it is among the latest ones.
    pub fn get(&self, delivery_id: u32) -> Option<Vec<u8>> {
        let guard = self.inner.lock().ok()?;
        guard
            .entries
            .iter()
            .rev()
            .find(|(id, _)| *id == delivery_id)
            .map(|(_, bytes)| bytes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut f = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&[2, frame_type, 0, 1]);
        f.extend_from_slice(body);
        f
    }

    /// The reply of request 1 in python-agent-and-mesh.txt §1 (QUERY connector, correlation-id ulong 7),
    /// transfer performative and message as printed there.
    fn recorded_python_agent_reply() -> Vec<u8> {
        let mut body =
            b"\x00\x53\x14\xc0\x10\x05\x52\x00\x43\xa0\x08\x15\x00\x00\x00\x00\x00\x00\x00\x43\x41"
                .to_vec();
        body.extend_from_slice(
            b"\x00Sp\xd0\x00\x00\x00\x05\x00\x00\x00\x01B\x00Ss\xd0\x00\x00\x009\x00\x00\x00\x06@@\xa1-amqp:/_topo/0/Router.Ref/temp.E5MIX1kaEXLfrRC@@T\x07\x00St\xd1\x00\x00\x00,\x00\x00\x00\x04\xa1\x0astatusCodeq\x00\x00\x00\xc8\xa1\x11statusDescription\xa1\x02OK",
        );
        body
    }

    #[test]
    fn splits_headers_and_frames_fed_byte_by_byte() {
        let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
        stream.extend(frame(0, b""));
        stream.extend(frame(0, &recorded_python_agent_reply()));
        let mut units = Vec::new();
        let mut s = FrameSplitter::default();
        for b in &stream {
            s.push(std::slice::from_ref(b), |u| {
                units.push(match u {
                    Unit::Header(h) => format!("header {}", h[4]),
                    Unit::Frame {
                        frame_type,
                        channel,
                        body,
                    } => format!("frame {frame_type} ch {channel} {} bytes", body.len()),
                })
            })
            .unwrap();
        }
        assert_eq!(
            units,
            vec![
                "header 0".to_string(),
                "frame 0 ch 1 0 bytes".to_string(),
                format!("frame 0 ch 1 {} bytes", recorded_python_agent_reply().len())
            ]
        );
        let mut bad = FrameSplitter::default();
        assert!(
            bad.push(b"\x00\x00\x00\x02\x02\x00\x00\x00", |_| {})
                .is_err()
        );
        // After an error it stays quiet.
        assert!(bad.push(&stream, |_| panic!("no units")).is_ok());
    }

    #[test]
    fn reads_the_recorded_python_agent_reply() {
        let body = recorded_python_agent_reply();
        let t = transfer(&body).unwrap();
        assert_eq!(t.handle, 0);
        assert_eq!(t.delivery_id, Some(0));
        assert!(!t.more);
        let message = &body[t.payload_offset..];
        let id = correlation_id(message).unwrap();
        assert_eq!(id, b"T\x07");
        assert!(!is_legal_message_id(id));
        assert_eq!(read_id(id), Some((RawId::Integer(7), "int")));
    }

    #[test]
    fn every_correlation_id_form() {
        let cases: &[(&[u8], RawId, &str, bool)] = &[
            (b"S\x07", RawId::Integer(7), "ulong", true),
            (
                b"\x80\x00\x00\x00\x00\x00\x00\x01\x00",
                RawId::Integer(256),
                "ulong",
                true,
            ),
            (b"q\x00\x00\x01\x2c", RawId::Integer(300), "int", false),
            (b"\x54\xff", RawId::Integer(-1), "int", false),
            (
                b"\x81\xff\xff\xff\xff\xff\xff\xff\xfe",
                RawId::Integer(-2),
                "long",
                false,
            ),
            (b"\xa1\x017", RawId::Text("7".into()), "string", true),
            (
                b"\xa0\x02\x01\x02",
                RawId::Bytes(vec![1, 2]),
                "binary",
                true,
            ),
            (b"@", RawId::Null, "null", false),
        ];
        for (raw, id, name, legal) in cases {
            assert_eq!(read_id(raw), Some((id.clone(), *name)), "{raw:?}");
            assert_eq!(is_legal_message_id(raw), *legal, "{raw:?}");
            assert_eq!(value_len(raw), Some(raw.len()), "{raw:?}");
        }
        assert_eq!(read_id(b"\xa1\x05ab"), None, "truncated");
        assert_eq!(value_len(b"\xa1\x05ab"), None);
    }

    #[test]
    fn delivery_log_keeps_the_latest_prefixes_by_delivery_id() {
        let log = DeliveryLog::new(2);
        // SASL layer first: its frames are not transfers and are skipped.
        let mut stream = b"AMQP\x03\x01\x00\x00".to_vec();
        stream.extend(frame(1, b"\x00\x53\x44\xc0\x03\x01\x50\x00"));
        stream.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        let reply = |id: u8| {
            // The recorded reply with delivery-id `id` (smalluint) instead of 0 (uint0): one byte longer.
            let recorded = recorded_python_agent_reply();
            let mut b = b"\x00\x53\x14\xc0\x11\x05\x52\x00\x52".to_vec();
            b.push(id);
            b.extend_from_slice(&recorded[9..]);
            frame(0, &b)
        };
        for id in 1..=3 {
            stream.extend(reply(id));
        }
        for chunk in stream.chunks(7) {
            log.feed(chunk);
        }
        assert_eq!(log.get(1), None, "evicted");
        let kept = log.get(3).unwrap();
        assert!(kept.len() <= PREFIX_BYTES);
        assert_eq!(correlation_id(&kept), Some(&b"T\x07"[..]));
    }

    #[test]
    fn correlation_id_after_header_and_annotations() {
        // header [durable=false], message-annotations {}, properties [null, null, "to", null, null, "x"]
        let msg = b"\x00Sp\xc0\x02\x01B\x00Sr\xc1\x01\x00\x00Ss\xc0\x0c\x06@@\xa1\x02to@@\xa1\x01x";
        assert_eq!(correlation_id(msg), Some(&b"\xa1\x01x"[..]));
        // properties with only 3 fields: no correlation-id
        assert_eq!(correlation_id(b"\x00Ss\xc0\x04\x03@@@"), None);
        // no properties before the body
        assert_eq!(correlation_id(b"\x00Sw\xa1\x01x"), None);
        assert!(summary(&[0u8; 100]).starts_with("100 bytes: \\x00"));
        assert!(summary(&[0u8; 100]).ends_with("..."));
    }
}
