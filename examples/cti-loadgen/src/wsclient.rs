//! A minimal WebSocket client (RFC 6455) for the load generator's socket clients.
//!
//! A thousand clients share the machine with the server they measure, so every microsecond a
//! client spends per message is taken from the server. This client does only what the
//! measurement needs: the opening handshake over plain TCP (`ws://`), then frames parsed in
//! place from one read buffer — no per-message allocation, no UTF-8 re-validation, one `read`
//! for every frame that arrived together. It answers pings (the server's heartbeat) and the
//! closing handshake, and rejects what a conforming server never sends to a client (masked or
//! fragmented frames, reserved bits, oversized control frames) as a protocol error. The
//! server's own conformance is covered by the end-to-end tests, which use `tokio-tungstenite`.

use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Initial read buffer: several events per read; grows for a larger frame.
const READ_BUFFER: usize = 8 * 1024;
/// Largest accepted frame payload (the server caps events far below this).
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest handshake response.
const MAX_RESPONSE: usize = 8 * 1024;

/// What [`Client::next`] returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame; its payload is [`Client::payload`] of this range.
    Text(Range<usize>),
    /// A binary frame or a pong (already handled, nothing to do).
    Other,
    /// The server closed the connection with this close code (after our reply).
    Closed(Option<u16>),
}

/// A connected client socket.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

/// Splits `ws://host:port/path?query` into the address and the request target.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("only ws:// URLs are supported by the load generator: {url}"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// A `Sec-WebSocket-Key`: 16 bytes, base64 (any value works; the server only echoes a hash).
fn handshake_key(seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = (0..16u64)
        .map(|i| (seed.rotate_left((i * 7) as u32) ^ (i * 0x9e)) as u8)
        .collect();
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    while out.len() % 4 != 0 {
        out.push('=');
    }
    out
}

/// Header of one frame in `buf`: `(fin, opcode, masked, header length, payload length)`, or
/// `None` when more bytes are needed.
fn parse_header(buf: &[u8]) -> Option<(bool, u8, bool, usize, u64)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let header = at + if masked { 4 } else { 0 };
    (buf.len() >= header).then_some((b0 & 0x80 != 0, b0 & 0x0f, masked, header, len))
}

/// A masked client frame (clients must mask; the key need not be secret here).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(0x80 | opcode);
    // Control frames (the only ones this client sends) carry at most 125 bytes.
    out.push(0x80 | payload.len().min(125) as u8);
    out.extend_from_slice(&MASK);
    out.extend(
        payload
            .iter()
            .take(125)
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4]),
    );
    out
}

impl Client {
    /// Connects and performs the opening handshake; `seed` varies the handshake key.
    pub async fn connect(url: &str, seed: u64) -> Result<Self, String> {
        Self::connect_with(url, seed, None).await
    }

    /// [`Client::connect`] with the socket's kernel receive buffer set to `recv_buffer` bytes
    /// (a small one makes a client that stops reading stall the server's writes quickly).
    pub async fn connect_with(
        url: &str,
        seed: u64,
        recv_buffer: Option<u32>,
    ) -> Result<Self, String> {
        let (addr, target) = split_url(url)?;
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolve {addr}: no address"))?;
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(size) = recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(|e| format!("SO_RCVBUF: {e}"))?;
        }
        let mut stream = socket
            .connect(resolved)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            handshake_key(seed)
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("handshake write: {e}"))?;
        let mut buf = vec![0u8; READ_BUFFER];
        let mut end = 0;
        let head = loop {
            if let Some(i) = memchr::memmem::find(&buf[..end], b"\r\n\r\n") {
                break i + 4;
            }
            if end >= MAX_RESPONSE {
                return Err("handshake response too large".into());
            }
            let n = stream
                .read(&mut buf[end..MAX_RESPONSE])
                .await
                .map_err(|e| format!("handshake read: {e}"))?;
            if n == 0 {
                return Err("connection closed during the handshake".into());
            }
            end += n;
        };
        let response = String::from_utf8_lossy(&buf[..head]);
        let status = response.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("handshake refused: {status}"));
        }
        Ok(Self {
            stream,
            buf,
            start: head,
            end,
        })
    }

    /// The payload of a [`Frame::Text`], valid until the next call to [`Client::next`].
    pub fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The next text frame (or other event), reading from the socket only when no complete
    /// frame is buffered. `Ok(None)`: the server closed the TCP connection.
    pub async fn next(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if let Some(frame) = self.parse().await? {
                return Ok(Some(frame));
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.start > self.buf.len() / 2 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(MAX_FRAME + 16);
                if grown == self.buf.len() {
                    return Err("frame larger than the client accepts".into());
                }
                self.buf.resize(grown, 0);
            }
            let n = self
                .stream
                .read(&mut self.buf[self.end..])
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(None);
            }
            self.end += n;
        }
    }

    /// The next complete buffered frame, answering control frames.
    async fn parse(&mut self) -> Result<Option<Frame>, String> {
        let Some((fin, opcode, masked, header, len)) =
            parse_header(&self.buf[self.start..self.end])
        else {
            return Ok(None);
        };
        if masked {
            return Err("protocol error: masked frame from the server".into());
        }
        if self.buf[self.start] & 0x70 != 0 {
            return Err("protocol error: reserved bits set".into());
        }
        if !fin || opcode == 0 {
            return Err("protocol error: fragmented message (not sent by cti-server)".into());
        }
        if len > MAX_FRAME as u64 {
            return Err("frame larger than the client accepts".into());
        }
        let at = self.start + header;
        let stop = at + len as usize;
        if stop > self.end {
            return Ok(None);
        }
        self.start = stop;
        match opcode {
            1 => Ok(Some(Frame::Text(at..stop))),
            2 | 0xA => Ok(Some(Frame::Other)),
            9 | 8 if len > 125 => Err("protocol error: control frame over 125 bytes".into()),
            9 => {
                let pong = client_frame(0xA, &self.buf[at..stop]);
                self.stream
                    .write_all(&pong)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(Frame::Other))
            }
            8 => {
                let code = self.buf[at..stop]
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
                let reply = client_frame(0x8, &self.buf[at..stop.min(at + 2)]);
                let _ = self.stream.write_all(&reply).await;
                Ok(Some(Frame::Closed(code)))
            }
            other => Err(format!("protocol error: opcode {other}")),
        }
    }

    /// Starts the closing handshake (code 1000) and shuts the connection down.
    pub async fn close(mut self) {
        let _ = self
            .stream
            .write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
            .await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("ws://127.0.0.1:4000/ws?api_key=k").unwrap(),
            ("127.0.0.1:4000", "/ws?api_key=k")
        );
        assert_eq!(split_url("ws://h:1").unwrap(), ("h:1", "/"));
        assert!(split_url("wss://h/ws").is_err());
    }

    #[test]
    fn keys_are_16_bytes_of_base64() {
        for seed in [0, 1, u64::MAX] {
            let k = handshake_key(seed);
            assert_eq!(k.len(), 24, "{k}");
            assert!(k.ends_with("=="), "{k}");
        }
        assert_ne!(handshake_key(1), handshake_key(2));
    }

    #[test]
    fn headers() {
        assert_eq!(parse_header(&[0x81]), None);
        assert_eq!(parse_header(&[0x81, 5]), Some((true, 1, false, 2, 5)));
        assert_eq!(parse_header(&[0x81, 126, 1]), None);
        assert_eq!(
            parse_header(&[0x81, 126, 1, 0]),
            Some((true, 1, false, 4, 256))
        );
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&long), Some((true, 2, false, 10, 70_000)));
        assert_eq!(parse_header(&[0x01, 0x85, 1, 2, 3]), None);
        assert_eq!(
            parse_header(&[0x01, 0x85, 1, 2, 3, 4]),
            Some((false, 1, true, 6, 5))
        );
    }

    #[test]
    fn client_frames_are_masked() {
        let f = client_frame(0xA, b"hi");
        assert_eq!(f[0], 0x8A);
        assert_eq!(f[1], 0x82);
        let mask = &f[2..6];
        assert_eq!([f[6] ^ mask[0], f[7] ^ mask[1]], *b"hi");
    }

    /// A scripted server: handshake, then frames split across reads, a ping, a close.
    #[tokio::test]
    async fn reads_frames_and_answers_control_frames() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).to_string();
            assert!(req.starts_with("GET /ws?api_key=k HTTP/1.1\r\n"), "{req}");
            assert!(req.contains("Sec-WebSocket-Version: 13"));
            let mut out =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
            out.extend_from_slice(&[0x81, 3]);
            out.extend_from_slice(b"one");
            out.extend_from_slice(&[0x81, 3, b't']);
            s.write_all(&out).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut rest = b"wo".to_vec();
            rest.extend_from_slice(&[0x89, 1, b'p']);
            rest.extend_from_slice(&[0x88, 2, 0x0f, 0xa1]);
            s.write_all(&rest).await.unwrap();
            // The pong and the close reply, both masked.
            let mut got = vec![0u8; 15];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got[..2], [0x8A, 0x81]);
            assert_eq!(got[6] ^ got[2], b'p');
            assert_eq!(got[7..9], [0x88, 0x82]);
            assert_eq!([got[13] ^ got[9], got[14] ^ got[10]], [0x0f, 0xa1]);
        });
        let mut c = Client::connect(&format!("ws://{addr}/ws?api_key=k"), 7)
            .await
            .unwrap();
        let Some(Frame::Text(r)) = c.next().await.unwrap() else {
            panic!("text expected")
        };
        assert_eq!(c.payload(r), b"one");
        let Some(Frame::Text(r)) = c.next().await.unwrap() else {
            panic!("text expected")
        };
        assert_eq!(c.payload(r), b"two");
        assert_eq!(c.next().await.unwrap(), Some(Frame::Other));
        assert_eq!(c.next().await.unwrap(), Some(Frame::Closed(Some(4001))));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_handshakes_and_protocol_errors_are_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for reply in [
                &b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"[..],
                &b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x81abcdx"[..],
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let _ = s.read(&mut req).await.unwrap();
                s.write_all(reply).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        let url = format!("ws://{addr}/ws");
        let err = Client::connect(&url, 1).await.err().unwrap();
        assert!(err.contains("403"), "{err}");
        let mut c = Client::connect(&url, 2).await.unwrap();
        let err = c.next().await.unwrap_err();
        assert!(err.contains("masked"), "{err}");
    }
}
