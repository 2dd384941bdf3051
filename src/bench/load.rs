//! The load generator's connection for single enqueues: keep-alive
//! HTTP/1.1 over one TCP stream, writing each request whole and reading
//! back only the answer's status and length.
//!
//! The load generator shares the machine's cores with the relays and the
//! database it measures. A general HTTP client's own work per request
//! (its connection pool, header maps, layers) took about a third of two
//! cores in the single-enqueue phase (perf), CPU the relays then lacked;
//! this connection does what `wrk` does, and no more. What a relay does
//! per request is the same either way: it parses a complete request and
//! writes a complete answer.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest answer head accepted (the relay's are a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;

/// One keep-alive connection to a relay.
pub(super) struct Connection {
    stream: TcpStream,
    /// The `Host` header's value.
    host: String,
    /// Bytes read but not yet consumed.
    buffer: Vec<u8>,
    /// The request being written, reused.
    request: Vec<u8>,
}

impl Connection {
    /// Connects to `base`, an `http://host:port` URL.
    pub(super) async fn open(base: &str) -> anyhow::Result<Self> {
        let host = base
            .strip_prefix("http://")
            .with_context(|| format!("{base} is not an http:// URL"))?
            .trim_end_matches('/')
            .to_owned();
        let stream = TcpStream::connect(&host)
            .await
            .with_context(|| format!("cannot connect to {host}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host,
            buffer: Vec::with_capacity(1024),
            request: Vec::with_capacity(256),
        })
    }

    /// POSTs `body` as JSON to `path` and returns the answer's status once
    /// the whole answer is read.
    pub(super) async fn post_json(&mut self, path: &str, body: &[u8]) -> anyhow::Result<u16> {
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.read_answer().await
    }

    /// Reads one answer: its head, then as many body bytes as its
    /// `Content-Length` names.
    async fn read_answer(&mut self) -> anyhow::Result<u16> {
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            if self.buffer.len() > MAX_HEAD {
                bail!("an answer's head is over {MAX_HEAD} bytes");
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).context("answer head")?;
        let (status, length) = parse_head(head)?;
        while self.buffer.len() < head_end + length {
            self.fill().await?;
        }
        self.buffer.drain(..head_end + length);
        Ok(status)
    }

    /// Reads what the stream has into the buffer.
    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("the relay closed the connection mid-answer");
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The status code and body length of an answer head (status line and
/// headers, each ending in CRLF). An answer without `Content-Length` (a
/// chunked one) is refused: the relay sends none.
fn parse_head(head: &str) -> anyhow::Result<(u16, usize)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .context("Content-Length")?
        .context("an answer without Content-Length")?;
    Ok((status, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_their_status_and_length() {
        assert_eq!(
            parse_head("HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 57\r\n\r\n").unwrap(),
            (201, 57)
        );
        assert_eq!(
            parse_head("HTTP/1.1 503 Service Unavailable\r\nContent-Length:0\r\n\r\n").unwrap(),
            (503, 0)
        );
        assert!(parse_head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    /// Reads from `socket` into `seen` until `marker` has arrived.
    async fn read_until(socket: &mut TcpStream, seen: &mut Vec<u8>, marker: &[u8]) {
        let mut chunk = [0u8; 1024];
        while find(seen, marker).is_none() {
            let read = socket.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the client closed the connection");
            seen.extend_from_slice(&chunk[..read]);
        }
    }

    /// Answers split across reads, and two answers in one read, are each
    /// read whole: checked against a hand-written server on loopback.
    #[tokio::test]
    async fn answers_are_read_whole_however_they_arrive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            // The first request, answered in two pieces.
            read_until(&mut socket, &mut seen, b"{\"a\":1}").await;
            socket
                .write_all(b"HTTP/1.1 201 Created\r\ncontent-le")
                .await
                .unwrap();
            socket.flush().await.unwrap();
            tokio::task::yield_now().await;
            socket.write_all(b"ngth: 5\r\n\r\nhello").await.unwrap();
            // The second, answered together with a third's answer.
            read_until(&mut socket, &mut seen, b"{\"b\":2}").await;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 409 Conflict\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            seen
        });
        let mut connection = Connection::open(&base).await.unwrap();
        assert_eq!(
            connection
                .post_json("/v1/videos", b"{\"a\":1}")
                .await
                .unwrap(),
            201
        );
        assert_eq!(
            connection
                .post_json("/v1/videos", b"{\"b\":2}")
                .await
                .unwrap(),
            200
        );
        assert_eq!(connection.read_answer().await.unwrap(), 409);
        let seen = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(seen.starts_with("POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1:"));
        assert!(seen.contains("Content-Length: 7\r\n\r\n{\"a\":1}POST /v1/videos HTTP/1.1\r\n"));
    }
}
