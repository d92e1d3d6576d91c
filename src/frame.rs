//! RFC 6455 framing: server frames are built once and shared; client frames are decoded
//! incrementally, straight from the socket's read buffer into the message being assembled.
//!
//! The decoder never buffers more than the message it is assembling (bounded by
//! `max_message_size`, grown as bytes arrive, never from a declared length) plus 14 bytes of a
//! frame header split across reads, so an idle connection holds no read buffer at all.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{CloseCode, CloseFrame, Message, Text};

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// The largest payload of a control frame (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Builds one complete, unmasked, unfragmented server frame.
pub(crate) fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let header = if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    };
    let mut buf = BytesMut::with_capacity(header + len);
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// Frames a data message.
/// A text frame holding `text`.
pub(crate) fn encode_text(text: &str) -> Bytes {
    encode(OP_TEXT, text.as_bytes())
}

pub(crate) fn encode_message(msg: &Message) -> Bytes {
    encode(msg.opcode(), msg.as_bytes())
}

/// Frames a close frame; the reason is cut at a character boundary to fit 123 bytes.
pub(crate) fn encode_close(frame: Option<&CloseFrame>) -> Bytes {
    let Some(frame) = frame else {
        return encode(OP_CLOSE, &[]);
    };
    let mut reason = frame.reason.as_str();
    if reason.len() > MAX_CONTROL_PAYLOAD - 2 {
        let mut end = MAX_CONTROL_PAYLOAD - 2;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(frame.code).to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OP_CLOSE, &payload)
}

/// What one decoded client frame means to the connection.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// A complete data message.
    Message(Message),
    /// A ping; its payload must be echoed in a pong.
    Ping(Bytes),
    /// A pong (any inbound frame counts as liveness).
    Pong,
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

/// Why the peer's input was refused: the close code to send and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProtocolError {
    pub(crate) code: CloseCode,
    pub(crate) reason: &'static str,
}

const fn protocol(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::PROTOCOL_ERROR,
        reason,
    }
}

const INVALID_UTF8: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "invalid UTF-8",
};

struct FrameState {
    opcode: u8,
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes of this frame already unmasked (the mask's phase).
    offset: usize,
}

struct Assembly {
    text: bool,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (text only); an incomplete character may follow.
    valid: usize,
}

/// Incremental decoder of client-to-server frames.
pub(crate) struct Decoder {
    max_message: usize,
    header: [u8; 14],
    header_len: usize,
    frame: Option<FrameState>,
    message: Option<Assembly>,
    control: Vec<u8>,
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            header: [0; 14],
            header_len: 0,
            frame: None,
            message: None,
            control: Vec::new(),
        }
    }

    /// Consumes bytes of `input` until one event is complete or the input is used up.
    ///
    /// Returns how many bytes were consumed and the event, if one completed. Bytes after the
    /// event are left for the next call. After an error the decoder must not be used again.
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), ProtocolError> {
        let mut pos = 0;
        loop {
            if self.frame.is_none() {
                match self.take_header(&input[pos..])? {
                    (used, true) => pos += used,
                    (used, false) => return Ok((pos + used, None)),
                }
            }
            let Some(frame) = self.frame.as_mut() else {
                unreachable!("a frame header was just parsed")
            };
            let available = (input.len() - pos) as u64;
            let take = frame.remaining.min(available) as usize;
            let chunk = &input[pos..pos + take];
            pos += take;
            frame.remaining -= take as u64;
            if frame.opcode >= OP_CLOSE {
                let start = self.control.len();
                self.control.extend_from_slice(chunk);
                unmask(&mut self.control[start..], frame.mask, frame.offset);
            } else if let Some(msg) = self.message.as_mut() {
                let start = msg.buf.len();
                msg.buf.extend_from_slice(chunk);
                unmask(&mut msg.buf[start..], frame.mask, frame.offset);
                if msg.text {
                    check_utf8_prefix(&msg.buf, &mut msg.valid)?;
                }
            }
            frame.offset += take;
            if frame.remaining > 0 {
                return Ok((pos, None));
            }
            if let Some(event) = self.finish_frame()? {
                return Ok((pos, Some(event)));
            }
        }
    }

    /// Collects and parses a frame header. Returns the bytes used and whether it is complete.
    fn take_header(&mut self, input: &[u8]) -> Result<(usize, bool), ProtocolError> {
        let mut used = 0;
        loop {
            // The first two bytes say how long the whole header is.
            let need = header_len(&self.header[..self.header_len]);
            if self.header_len >= need {
                break;
            }
            let n = (need - self.header_len).min(input.len() - used);
            if n == 0 {
                return Ok((used, false));
            }
            self.header[self.header_len..self.header_len + n]
                .copy_from_slice(&input[used..used + n]);
            self.header_len += n;
            used += n;
        }
        let header = self.header;
        let len = self.header_len;
        self.header_len = 0;
        self.start_frame(&header[..len])?;
        Ok((used, true))
    }

    fn start_frame(&mut self, h: &[u8]) -> Result<(), ProtocolError> {
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(protocol("reserved bits set without an extension"));
        }
        let opcode = h[0] & 0x0F;
        if h[1] & 0x80 == 0 {
            return Err(protocol("client frames must be masked"));
        }
        let (len, rest) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), &h[4..]),
            127 => {
                let len = u64::from_be_bytes(h[2..10].try_into().unwrap_or([0xFF; 8]));
                if len >> 63 != 0 {
                    return Err(protocol("payload length has its most significant bit set"));
                }
                (len, &h[10..])
            }
            n => (u64::from(n), &h[2..]),
        };
        let mask = [rest[0], rest[1], rest[2], rest[3]];
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(protocol("fragmented control frame"));
                }
                if len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(protocol("control frame payload over 125 bytes"));
                }
            }
            OP_CONTINUATION => {
                let Some(msg) = self.message.as_ref() else {
                    return Err(protocol("continuation frame without a message to continue"));
                };
                self.check_size(msg.buf.len() as u64, len)?;
            }
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(protocol("new message before the fragmented one ended"));
                }
                self.check_size(0, len)?;
                self.message = Some(Assembly {
                    text: opcode == OP_TEXT,
                    // Grown as bytes arrive: a declared length is not trusted with memory.
                    buf: BytesMut::with_capacity((len as usize).min(16 * 1024)),
                    valid: 0,
                });
            }
            _ => return Err(protocol("reserved opcode")),
        }
        self.frame = Some(FrameState {
            opcode,
            fin,
            remaining: len,
            mask,
            offset: 0,
        });
        Ok(())
    }

    fn check_size(&self, have: u64, more: u64) -> Result<(), ProtocolError> {
        if have.saturating_add(more) > self.max_message as u64 {
            return Err(ProtocolError {
                code: CloseCode::TOO_BIG,
                reason: "message too big",
            });
        }
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<Option<Event>, ProtocolError> {
        let Some(frame) = self.frame.take() else {
            return Ok(None);
        };
        match frame.opcode {
            OP_PING => Ok(Some(Event::Ping(Bytes::from(std::mem::take(
                &mut self.control,
            ))))),
            OP_PONG => {
                self.control.clear();
                Ok(Some(Event::Pong))
            }
            OP_CLOSE => {
                let payload = std::mem::take(&mut self.control);
                parse_close(&payload).map(|c| Some(Event::Close(c)))
            }
            _ if !frame.fin => Ok(None),
            _ => {
                let Some(msg) = self.message.take() else {
                    return Ok(None);
                };
                let bytes = msg.buf.freeze();
                if msg.text {
                    if msg.valid != bytes.len() {
                        return Err(INVALID_UTF8);
                    }
                    Ok(Some(Event::Message(Message::Text(Text::from_validated(
                        bytes,
                    )))))
                } else {
                    Ok(Some(Event::Message(Message::Binary(bytes))))
                }
            }
        }
    }
}

/// How long a header is, judged from its first two bytes (2 while they are missing).
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let ext = match h[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Extends the validated prefix of `buf`; an incomplete character at the end is allowed.
fn check_utf8_prefix(buf: &[u8], valid: &mut usize) -> Result<(), ProtocolError> {
    match std::str::from_utf8(&buf[*valid..]) {
        Ok(_) => *valid = buf.len(),
        Err(e) if e.error_len().is_some() => return Err(INVALID_UTF8),
        Err(e) => *valid += e.valid_up_to(),
    }
    Ok(())
}

fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_received_code(code) {
                return Err(protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| INVALID_UTF8)?;
            Ok(Some(CloseFrame::new(CloseCode::from(code), reason)))
        }
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4 and the IANA registry).
pub(crate) fn is_valid_received_code(code: u16) -> bool {
    CloseCode::from(code).is_sendable()
}

/// XORs `data` with the mask, starting at phase `offset` of the 4-byte key.
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        unmask(&mut out[start..], mask, 0);
        out
    }

    fn decode_all(d: &mut Decoder, mut input: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        let mut events = Vec::new();
        while !input.is_empty() {
            let (used, ev) = d.decode(input)?;
            input = &input[used..];
            events.extend(ev);
            if used == 0 && !input.is_empty() {
                panic!("decoder made no progress");
            }
        }
        Ok(events)
    }

    #[test]
    fn decodes_every_split_of_a_stream() {
        let mut stream = client_frame(0x81, "héllo".as_bytes(), [1, 2, 3, 4]);
        stream.extend(client_frame(0x02, &[7; 300], [9, 8, 7, 6]));
        stream.extend(client_frame(0x89, b"p", [5, 5, 5, 5]));
        stream.extend(client_frame(0x80, &[1; 70_000], [0xA, 0xB, 0xC, 0xD]));
        for split in [1, 2, 3, 5, 13, 64, 4096, stream.len()] {
            let mut d = Decoder::new(1 << 20);
            let mut events = Vec::new();
            for chunk in stream.chunks(split) {
                events.extend(decode_all(&mut d, chunk).unwrap());
            }
            let mut big = vec![7u8; 300];
            big.extend([1u8; 70_000]);
            assert_eq!(
                events,
                vec![
                    Event::Message(Message::from("héllo")),
                    Event::Ping(Bytes::from_static(b"p")),
                    Event::Message(Message::from(big)),
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn refuses_protocol_violations_with_the_right_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x00], 1002),                          // unmasked
            (client_frame(0xC1, b"x", [1; 4]), 1002),          // RSV1
            (client_frame(0x83, b"x", [1; 4]), 1002),          // reserved data opcode
            (client_frame(0x8B, b"x", [1; 4]), 1002),          // reserved control opcode
            (client_frame(0x09, b"x", [1; 4]), 1002),          // fragmented ping
            (client_frame(0x89, &[0; 126], [1; 4]), 1002),     // long ping
            (client_frame(0x80, b"x", [1; 4]), 1002),          // stray continuation
            (client_frame(0x81, &[0xFF], [1; 4]), 1007),       // bad UTF-8
            (client_frame(0x88, &[3], [1; 4]), 1002),          // one-byte close
            (client_frame(0x88, &[0x03, 0xED], [1; 4]), 1002), // close code 1005
            (client_frame(0x88, &[0x03, 0xE8, 0xFF], [1; 4]), 1007),
            (client_frame(0x82, &[0; 2000], [1; 4]), 1009), // over the limit
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::new(1024);
            let err = decode_all(&mut d, &bytes).unwrap_err();
            assert_eq!(u16::from(err.code), code, "{bytes:02x?}: {}", err.reason);
        }
    }

    #[test]
    fn huge_declared_length_is_refused_before_any_allocation() {
        let mut d = Decoder::new(1 << 20);
        let mut frame = vec![0x82, 0xFF];
        frame.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        assert_eq!(d.decode(&frame).unwrap_err().code, CloseCode::TOO_BIG);
    }

    #[test]
    fn invalid_utf8_fails_in_the_first_fragment() {
        let mut d = Decoder::new(1 << 20);
        let first = client_frame(0x01, &[b'a', 0xC0, b'b'], [3; 4]);
        assert_eq!(
            d.decode(&first).unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );
        // A character split across fragments is fine.
        let mut d = Decoder::new(1 << 20);
        let euro = "€".as_bytes();
        let mut stream = client_frame(0x01, &euro[..1], [3; 4]);
        stream.extend(client_frame(0x80, &euro[1..], [4; 4]));
        assert_eq!(
            decode_all(&mut d, &stream).unwrap(),
            vec![Event::Message(Message::from("€"))]
        );
    }

    #[test]
    fn encodes_all_length_forms() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let f = encode(OP_BINARY, &vec![0; len]);
            let hdr = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(f.len(), hdr + len);
            assert_eq!(f[0], 0x82);
        }
        let long_reason = "é".repeat(100);
        let close = encode_close(Some(&CloseFrame::new(CloseCode::NORMAL, long_reason)));
        assert!(close.len() <= 2 + 125);
        assert!(std::str::from_utf8(&close[4..]).is_ok());
    }
}
