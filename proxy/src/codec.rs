//! The wire codec, free of I/O: it reads and writes byte slices only, so it
//! can be unit-tested and fuzzed on bytes.
//!
//! Two halves:
//! * the startup phase, parsed whole (SSLRequest, GSSENCRequest,
//!   CancelRequest, StartupMessage with its ordered parameters), plus the
//!   few messages the proxy writes itself (ErrorResponse, StartupMessage);
//! * the steady state, where [`Scanner`] walks the 5-byte frame headers of a
//!   byte stream chunk by chunk without buffering whole messages, and reports
//!   each message's tag, length and the first bytes of its body.

use std::fmt;

/// Request codes of the first packet (`int32 len, int32 code`).
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;

/// Postgres refuses startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A violation of the protocol by the peer; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    /// The whole packet, forwarded verbatim (3.0 keys are 8 bytes, 3.2 keys longer).
    CancelRequest(Vec<u8>),
    Startup(Startup),
}

/// A StartupMessage: protocol version and parameters in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub protocol: u32,
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Set `key` (replacing an earlier value, keeping its position).
    pub fn set(&mut self, key: &str, value: String) {
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.params.push((key.to_string(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.params.iter().position(|(k, _)| k == key)?;
        Some(self.params.remove(i).1)
    }

    /// Encode as a StartupMessage.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.protocol.to_be_bytes());
        for (k, v) in &self.params {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out.push(0);
        let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Parse the first packet from `buf`. `Ok(None)`: more bytes are needed.
/// On success, also returns how many bytes the packet used.
pub fn parse_first_packet(buf: &[u8]) -> Result<Option<(FirstPacket, usize)>, ProtocolError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(perr(format!("invalid startup packet length {len}")));
    }
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    let first = match code {
        SSL_REQUEST | GSSENC_REQUEST if len != 8 => {
            return Err(perr("invalid length of SSL or GSSENC request"))
        }
        SSL_REQUEST => FirstPacket::SslRequest,
        GSSENC_REQUEST => FirstPacket::GssEncRequest,
        CANCEL_REQUEST => {
            if body.len() < 8 {
                return Err(perr("invalid length of cancel request"));
            }
            FirstPacket::CancelRequest(packet.to_vec())
        }
        _ if code >> 16 == 3 => FirstPacket::Startup(Startup {
            protocol: code,
            params: parse_params(body)?,
        }),
        _ => {
            return Err(perr(format!(
                "unsupported frontend protocol {}.{}: pgshift supports protocol 3",
                code >> 16,
                code & 0xffff
            )))
        }
    };
    Ok(Some((first, len)))
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let (key, rest) = cstr(body).ok_or_else(|| perr("startup packet: missing terminator"))?;
        if key.is_empty() {
            if !rest.is_empty() {
                return Err(perr("startup packet: bytes after the terminator"));
            }
            return Ok(params);
        }
        let (value, rest) =
            cstr(rest).ok_or_else(|| perr(format!("startup packet: no value for {key:?}")))?;
        params.push((key.to_string(), value.to_string()));
        body = rest;
    }
}

/// A NUL-terminated UTF-8 string at the start of `b`, and the rest after it.
fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..nul]).ok()?;
    Some((s, &b[nul + 1..]))
}

/// Split a startup `options` value into arguments: space-separated, a
/// backslash escapes the next character (libpq's rules).
pub fn split_options(options: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_arg = true;
            }
            c if c.is_ascii_whitespace() => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            c => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(cur);
    }
    args
}

/// Join arguments back into an `options` value, escaping spaces and backslashes.
pub fn join_options(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let mut s = String::with_capacity(a.len());
            for c in a.chars() {
                if c == '\\' || c.is_ascii_whitespace() {
                    s.push('\\');
                }
                s.push(c);
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Remove every `-c NAME=VALUE` / `-cNAME=VALUE` / `--NAME=VALUE` setting of
/// `name` from `options` arguments; returns the last value removed.
pub fn take_option_setting(args: &mut Vec<String>, name: &str) -> Option<String> {
    let mut found = None;
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    let matches = |setting: &str| -> Option<String> {
        let (k, v) = setting.split_once('=')?;
        (k.replace('-', "_").eq_ignore_ascii_case(name)).then(|| v.to_string())
    };
    while i < args.len() {
        let a = &args[i];
        if a == "-c" {
            if let Some(v) = args.get(i + 1).and_then(|s| matches(s)) {
                found = Some(v);
                i += 2;
                continue;
            }
        } else if let Some(v) = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix("-c"))
            .and_then(matches)
        {
            found = Some(v);
            i += 1;
            continue;
        }
        out.push(a.clone());
        i += 1;
    }
    *args = out;
    found
}

/// Append an ErrorResponse (`E`) with severity, SQLSTATE, message and an
/// optional detail.
pub fn error_response(
    out: &mut Vec<u8>,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
) {
    let start = out.len();
    out.push(b'E');
    out.extend_from_slice(&[0; 4]);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        out.push(field);
        push_cstr(out, value);
    }
    if let Some(d) = detail {
        out.push(b'D');
        push_cstr(out, d);
    }
    out.push(0);
    let len = u32::try_from(out.len() - start - 1).unwrap_or(u32::MAX);
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn push_cstr(out: &mut Vec<u8>, s: &str) {
    // A NUL inside would end the field early; Postgres never sends one.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// The SQLSTATE (`C` field) of an ErrorResponse or NoticeResponse body.
pub fn error_code(body: &[u8]) -> Option<&str> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let (value, tail) = cstr(tail)?;
        if field == b'C' {
            return Some(value);
        }
        rest = tail;
    }
    None
}

/// The severity (`S` field) of an ErrorResponse body.
pub fn error_severity(body: &[u8]) -> Option<&str> {
    let (&field, tail) = body.split_first()?;
    if field != b'S' {
        return None;
    }
    cstr(tail).map(|(v, _)| v)
}

/// How many leading body bytes [`Scanner`] keeps for the messages it reports.
pub const PEEK: usize = 64;

/// One message seen by [`Scanner`]: its tag, its length (the header's,
/// which counts itself but not the tag) and up to [`PEEK`] first bytes of
/// its body. Reported when the whole message has gone past.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub tag: u8,
    pub len: u32,
    pub head: &'a [u8],
}

/// Streaming frame walker. Feed it the bytes of one direction in any
/// chunking; it calls back once per complete message. Large messages are
/// never buffered: only the header and the first [`PEEK`] body bytes are
/// kept across chunks.
#[derive(Debug)]
pub struct Scanner {
    max_len: u32,
    /// Header bytes collected so far (0..5).
    hdr: [u8; 5],
    hdr_have: usize,
    /// Body bytes still to pass for the current message.
    remaining: u32,
    head: [u8; PEEK],
    head_have: usize,
}

impl Scanner {
    /// `max_len`: the largest message length accepted (header included).
    pub fn new(max_len: u32) -> Scanner {
        Scanner {
            max_len,
            hdr: [0; 5],
            hdr_have: 0,
            remaining: 0,
            head: [0; PEEK],
            head_have: 0,
        }
    }

    /// True between messages (no partial header or body pending).
    pub fn at_boundary(&self) -> bool {
        self.hdr_have == 0
    }

    /// Walk `chunk`, calling `on_frame` for each message that completes in
    /// it. An invalid length is an error; the stream cannot be resynchronised.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), ProtocolError> {
        while !chunk.is_empty() {
            if self.hdr_have < 5 {
                let take = (5 - self.hdr_have).min(chunk.len());
                self.hdr[self.hdr_have..self.hdr_have + take].copy_from_slice(&chunk[..take]);
                self.hdr_have += take;
                chunk = &chunk[take..];
                if self.hdr_have < 5 {
                    return Ok(());
                }
                let len = u32::from_be_bytes([self.hdr[1], self.hdr[2], self.hdr[3], self.hdr[4]]);
                if len < 4 {
                    return Err(perr(format!(
                        "invalid length {len} of message {:?}",
                        char::from(self.hdr[0])
                    )));
                }
                if len > self.max_len {
                    return Err(perr(format!(
                        "message {:?} of {len} bytes exceeds the maximum of {} bytes",
                        char::from(self.hdr[0]),
                        self.max_len
                    )));
                }
                self.remaining = len - 4;
                self.head_have = 0;
            }
            let take = (self.remaining as usize).min(chunk.len());
            if self.head_have < PEEK {
                let keep = (PEEK - self.head_have).min(take);
                self.head[self.head_have..self.head_have + keep].copy_from_slice(&chunk[..keep]);
                self.head_have += keep;
            }
            chunk = &chunk[take..];
            self.remaining -= take as u32;
            if self.remaining == 0 {
                let len = u32::from_be_bytes([self.hdr[1], self.hdr[2], self.hdr[3], self.hdr[4]]);
                self.hdr_have = 0;
                on_frame(Frame {
                    tag: self.hdr[0],
                    len,
                    head: &self.head[..self.head_have],
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let s = Startup {
            protocol: PROTOCOL_3_0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut b = Vec::new();
        s.encode(&mut b);
        b
    }

    #[test]
    fn startup_round_trips_in_order_and_reports_its_length() {
        let mut b = startup(&[("user", "u"), ("database", "d"), ("application_name", "a")]);
        b.extend_from_slice(b"extra");
        let (p, used) = parse_first_packet(&b).unwrap().unwrap();
        assert_eq!(used, b.len() - 5);
        let FirstPacket::Startup(s) = p else { panic!() };
        assert_eq!(s.params[2], ("application_name".into(), "a".into()));
        assert_eq!(s.get("database"), Some("d"));
    }

    #[test]
    fn every_prefix_of_a_startup_packet_asks_for_more() {
        let b = startup(&[("user", "u")]);
        for i in 0..b.len() {
            assert_eq!(parse_first_packet(&b[..i]).unwrap(), None, "prefix {i}");
        }
    }

    #[test]
    fn special_requests_are_recognised() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(
            parse_first_packet(&ssl).unwrap().unwrap().0,
            FirstPacket::SslRequest
        );
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(
            parse_first_packet(&gss).unwrap().unwrap().0,
            FirstPacket::GssEncRequest
        );
        let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        cancel.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            parse_first_packet(&cancel).unwrap().unwrap().0,
            FirstPacket::CancelRequest(cancel.clone())
        );
    }

    #[test]
    fn bad_startup_packets_are_errors_not_panics() {
        for bad in [
            vec![0, 0, 0, 3, 0, 0, 0, 0],                          // too short
            vec![0, 0, 0x40, 0, 0, 3, 0, 0],                       // too long
            vec![0, 0, 0, 8, 0, 2, 0, 0],                          // protocol 2
            vec![0, 0, 0, 12, 0, 3, 0, 0, b'u', 0, b'x', 0],       // missing final NUL
            vec![0, 0, 0, 10, 0, 3, 0, 0, b'u', 0],                // key without value
            vec![0, 0, 0, 12, 0, 3, 0, 0, 0xff, 0, b'x', 0],       // not UTF-8
            vec![0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0], // SSL request with a body
            vec![0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 0], // short cancel
        ] {
            assert!(parse_first_packet(&bad).is_err(), "{bad:?}");
        }
        let err = parse_first_packet(&[0, 0, 0, 8, 0, 2, 0, 0]).unwrap_err();
        assert!(err.0.contains("protocol 2.0"), "{err}");
    }

    #[test]
    fn options_split_join_and_take_settings() {
        let mut args =
            split_options(r"-c search_path=a\ b --pgshift.version=v2 -c  x=y -cpgshift.version=v3");
        assert_eq!(args[1], "search_path=a b");
        assert_eq!(
            take_option_setting(&mut args, "pgshift.version"),
            Some("v3".into())
        );
        assert_eq!(join_options(&args), r"-c search_path=a\ b -c x=y");
        let mut args = split_options("-c pgshift.version=v1");
        assert_eq!(
            take_option_setting(&mut args, "pgshift.version"),
            Some("v1".into())
        );
        assert!(args.is_empty());
    }

    #[test]
    fn error_response_carries_code_and_severity() {
        let mut b = Vec::new();
        error_response(
            &mut b,
            "FATAL",
            "3F000",
            "unknown version \"x\"",
            Some("known: a, b"),
        );
        assert_eq!(b[0], b'E');
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len, b.len() - 1);
        assert_eq!(error_code(&b[5..]), Some("3F000"));
        assert_eq!(error_severity(&b[5..]), Some("FATAL"));
    }

    fn frames(
        max: u32,
        stream: &[u8],
        chunk: usize,
    ) -> Result<Vec<(u8, u32, Vec<u8>)>, ProtocolError> {
        let mut s = Scanner::new(max);
        let mut got = Vec::new();
        for c in stream.chunks(chunk.max(1)) {
            s.feed(c, |f| got.push((f.tag, f.len, f.head.to_vec())))?;
        }
        Ok(got)
    }

    #[test]
    fn scanner_reports_the_same_frames_whatever_the_chunking() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        stream.push(b'D');
        stream.extend_from_slice(&(1004u32).to_be_bytes());
        stream.extend_from_slice(&big);
        stream.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        let whole = frames(1 << 20, &stream, stream.len()).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0], (b'Z', 5, vec![b'I']));
        assert_eq!(whole[1].2, big[..PEEK].to_vec());
        assert_eq!(whole[2], (b'S', 4, vec![]));
        for chunk in [1, 2, 3, 5, 7, 64, 999] {
            assert_eq!(
                frames(1 << 20, &stream, chunk).unwrap(),
                whole,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn scanner_rejects_bad_and_oversize_lengths() {
        assert!(frames(100, &[b'Q', 0, 0, 0, 3], 5).is_err());
        let err = frames(100, &[b'Q', 0, 0, 1, 0], 5).unwrap_err();
        assert!(err.0.contains("exceeds"), "{err}");
        // A negative length as i32 is huge as u32.
        assert!(frames(u32::MAX >> 1, &[b'Q', 0xff, 0xff, 0xff, 0xff], 5).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let n = (rng % 64) as usize;
            let mut b = Vec::with_capacity(n);
            for _ in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                b.push(rng as u8);
            }
            let _ = parse_first_packet(&b);
            let _ = frames(1 << 16, &b, 1 + (rng % 7) as usize);
            let _ = error_code(&b);
            let _ = split_options(&String::from_utf8_lossy(&b));
        }
    }
}
