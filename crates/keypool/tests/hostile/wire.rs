//! Raw HTTP/1.1 on a TCP socket (what a well-behaved client library would
//! never send), and an HTTP/2 client over prior knowledge: each exchange
//! returns what the caller saw, as text for the key-material check.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a hostile request gets: the contract each case writes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer with this status (the connection may stay open or close).
    Status(u16),
    /// An answer with this status, then the connection closed.
    StatusThenClosed(u16),
    /// The connection closed (or reset) without an answer.
    Closed,
    /// HTTP/2: the stream (RST_STREAM) or the connection (GOAWAY) reset
    /// without an answer.
    Reset,
}

impl Outcome {
    /// Whether what was seen (`self`) is what `expected` allows.
    pub fn meets(self, expected: Outcome) -> bool {
        match (self, expected) {
            (Outcome::StatusThenClosed(seen), Outcome::Status(code)) => seen == code,
            (seen, expected) => seen == expected,
        }
    }
}

/// What one exchange saw.
pub struct Seen {
    pub outcome: Outcome,
    /// The answer's head and body, lossily as text ("" when none).
    pub text: String,
}

/// Longest any exchange may take before the case fails as a hang.
pub const HANG: Duration = Duration::from_secs(15);

/// Sends `request` on a fresh connection (writing on while the answer is
/// read: a server may answer before reading it all), reads the answer, and
/// tells whether the connection closed after it.
pub async fn http1(addr: SocketAddr, request: Vec<u8>) -> Seen {
    let len = request.len();
    http1_split(addr, request, len).await
}

/// [`http1`], with the bytes from `at` on sent 200 ms after the others.
pub async fn http1_split(addr: SocketAddr, request: Vec<u8>, at: usize) -> Seen {
    let conn = TcpStream::connect(addr).await.expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let (mut read, mut write) = conn.into_split();
    let writer = tokio::spawn(async move {
        // The server may refuse and close before taking everything.
        let (first, rest) = request.split_at(at.min(request.len()));
        let _ = write.write_all(first).await;
        if !rest.is_empty() {
            if !first.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = write.write_all(rest).await;
        }
        write
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    let answer = tokio::time::timeout(HANG, async {
        loop {
            if let Some(end) = answer_end(&got) {
                return Some(end);
            }
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return answer_end(&got);
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer and no close within {HANG:?}; got so far: {}", lossy(&got)));
    if !closed {
        // Closed after the answer, or kept open for the next request?
        closed =
            matches!(tokio::time::timeout(Duration::from_millis(1500), read.read(&mut buf)).await, Ok(Ok(0) | Err(_)));
    }
    writer.abort();
    let text = lossy(&got);
    let outcome = match (answer, status_of(&got)) {
        (Some(_), Some(code)) if closed => Outcome::StatusThenClosed(code),
        (Some(_), Some(code)) => Outcome::Status(code),
        _ => Outcome::Closed,
    };
    Seen { outcome, text }
}

pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn status_of(got: &[u8]) -> Option<u16> {
    let line = got.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line.get(9..12)?).ok()?.parse().ok()
}

/// Where the first whole answer in `got` ends (its head's length header or
/// chunked end), if it has all arrived.
fn answer_end(got: &[u8]) -> Option<usize> {
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = lossy(&got[..head_end]).to_ascii_lowercase();
    let length: Option<usize> =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    match length {
        Some(n) => (got.len() >= head_end + n).then_some(head_end + n),
        None if head.contains("transfer-encoding: chunked") => {
            got[head_end..].windows(5).position(|w| w == b"0\r\n\r\n").map(|p| head_end + p + 5)
        }
        None => Some(head_end),
    }
}

/// What an HTTP/2 request's body is.
pub enum H2Body {
    /// All of it, with its `content-length`.
    Sized(Vec<u8>),
    /// `n` bytes in 16 KB DATA frames, with no length said.
    Streamed(usize),
}

/// Sends a POST of `body` to `path` with `headers` over a fresh HTTP/2
/// connection (prior knowledge).
pub async fn http2(addr: SocketAddr, path: &str, headers: &[(String, String)], body: H2Body) -> Seen {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let body = match body {
        H2Body::Sized(bytes) => {
            req = req.header("content-length", bytes.len());
            http_body_util::Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed()
        }
        H2Body::Streamed(n) => {
            let chunks = (0..n.div_ceil(16 * 1024)).map(move |i| {
                let len = (n - i * 16 * 1024).min(16 * 1024);
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b' '; len])))
            });
            StreamBody::new(futures_util::stream::iter(chunks)).boxed()
        }
    };
    let req = req.body(body).expect("a request");
    let seen = tokio::time::timeout(HANG, async {
        match sender.send_request(req).await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                let mut text = format!("{:?}\n", answer.headers());
                if let Ok(body) = answer.into_body().collect().await {
                    text.push_str(&lossy(&body.to_bytes()));
                }
                Seen { outcome: Outcome::Status(status), text }
            }
            Err(e) => Seen { outcome: Outcome::Reset, text: format!("{e:?}") },
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no HTTP/2 answer or reset within {HANG:?}"));
    conn.abort();
    seen
}
