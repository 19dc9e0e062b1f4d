//! The table of hostile requests: each with the answer it must get, so a
//! reader sees the gateway's contract at a glance.

use std::net::SocketAddr;

use keypool::server::generate_token;

use super::wire::{self, H2Body, Outcome, Seen};
use super::{Edge, CHAT, GOOD, KEY, LIMIT};

/// One crafted request and the answer it must get.
pub struct Case {
    pub name: &'static str,
    pub expect: Outcome,
    pub send: Request,
}

pub enum Request {
    Http1(Vec<u8>),
    /// The first `at` bytes in one segment, the rest 200 ms later: a
    /// client choosing where its segments break.
    Http1Split {
        bytes: Vec<u8>,
        at: usize,
    },
    Http2 {
        path: String,
        headers: Vec<(String, String)>,
        body: H2Body,
    },
}

impl Request {
    pub async fn to(self, addr: SocketAddr) -> Seen {
        match self {
            Request::Http1(bytes) => wire::http1(addr, bytes).await,
            Request::Http1Split { bytes, at } => wire::http1_split(addr, bytes, at).await,
            Request::Http2 { path, headers, body } => wire::http2(addr, &path, &headers, body).await,
        }
    }
}

/// `POST target` with `headers` (raw lines), a `content-length` and `body`.
fn post(target: &str, headers: &[&str], body: &[u8]) -> Request {
    let mut req = format!("POST {target} HTTP/1.1\r\nhost: gateway\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    Request::Http1(bytes)
}

/// Bytes sent exactly as given.
fn raw(bytes: &[u8]) -> Request {
    Request::Http1(bytes.to_vec())
}

fn deep_json(levels: usize) -> Vec<u8> {
    let mut body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"x":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', levels));
    body.extend(std::iter::repeat_n(b']', levels));
    body.push(b'}');
    body
}

fn many_headers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("x-filler-{i}: {i}")).collect()
}

/// The table: every hostile request of the suite, with its written answer.
pub fn cases(edge: &Edge) -> Vec<Case> {
    use Outcome::{Closed, Status, StatusThenClosed};
    let auth = format!("authorization: Bearer {}", edge.served.token);
    let auth = auth.as_str();
    let json = "content-type: application/json";
    let big_value = "a".repeat(40 * 1024);
    let huge_value = "a".repeat(600 * 1024);
    let filler = many_headers(150);
    let mut filler_lines: Vec<&str> = filler.iter().map(String::as_str).collect();
    filler_lines.push(auth);
    let h2_auth = vec![
        ("authorization".to_owned(), format!("Bearer {}", edge.served.token)),
        ("content-type".into(), "application/json".into()),
    ];
    let chunked_over = {
        let mut b =
            format!("POST {CHAT} HTTP/1.1\r\nhost: g\r\n{auth}\r\n{json}\r\ntransfer-encoding: chunked\r\n\r\n")
                .into_bytes();
        for _ in 0..(LIMIT / 8192 + 2) {
            b.extend_from_slice(b"2000\r\n");
            b.extend(std::iter::repeat_n(b' ', 8192));
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    // A good chat as one chunk, then a request a front end reading by the
    // length would see as this body's rest: read by either framing alone,
    // the chat would be served (200), so only a refusal gives 400.
    let smuggled = |first: &str, second: &str| {
        format!(
            "POST {CHAT} HTTP/1.1\r\nhost: g\r\n{auth}\r\n{json}\r\n{first}\r\n{second}\r\n\r\n\
             {:x}\r\n{GOOD}\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nhost: g\r\n\r\n",
            GOOD.len()
        )
        .into_bytes()
    };
    vec![
        // ---- bodies ------------------------------------------------------
        Case {
            name: "malformed JSON",
            expect: Status(400),
            send: post(CHAT, &[auth, json], br#"{"model":"gpt-4o-mini","messages":["#),
        },
        Case {
            name: "JSON nested 100,000 deep",
            expect: Status(400),
            send: post(CHAT, &[auth, json], &deep_json(100_000)),
        },
        Case {
            name: "invalid UTF-8 in a JSON string",
            expect: Status(400),
            send: post(
                CHAT,
                &[auth, json],
                b"{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\xc3\"}]}",
            ),
        },
        Case {
            name: "a body over max_body_bytes with its length",
            expect: Status(413),
            send: post(CHAT, &[auth, json], &vec![b' '; LIMIT + 1]),
        },
        Case { name: "a body over max_body_bytes, chunked", expect: Status(413), send: raw(&chunked_over) },
        Case {
            name: "a 1 TB content-length, nothing sent",
            expect: Status(413),
            send: raw(format!(
                "POST {CHAT} HTTP/1.1\r\nhost: g\r\n{auth}\r\n{json}\r\ncontent-length: 1000000000000\r\n\r\n"
            )
            .as_bytes()),
        },
        Case {
            name: "a form body labelled text/plain",
            expect: Status(400),
            send: post(CHAT, &[auth, "content-type: text/plain"], b"model=gpt-4o-mini&messages=hi"),
        },
        Case {
            name: "a multipart form to chat/completions",
            expect: Status(400),
            send: post(
                CHAT,
                &[auth, "content-type: multipart/form-data; boundary=b"],
                b"--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n--b--\r\n",
            ),
        },
        Case {
            name: "XML labelled application/json",
            expect: Status(400),
            send: post(CHAT, &[auth, json], b"<chat><model>gpt-4o-mini</model></chat>"),
        },
        // ---- heads -------------------------------------------------------
        Case {
            name: "a 40 KB header",
            expect: Status(431),
            send: post(CHAT, &[auth, json, &format!("x-big: {big_value}")], GOOD.as_bytes()),
        },
        Case {
            name: "a 600 KB header (past hyper's buffer)",
            expect: StatusThenClosed(431),
            send: post(CHAT, &[auth, json, &format!("x-big: {huge_value}")], GOOD.as_bytes()),
        },
        Case {
            name: "150 header fields",
            expect: StatusThenClosed(431),
            send: post(CHAT, &filler_lines, GOOD.as_bytes()),
        },
        Case {
            name: "a 20 KB request target",
            expect: Status(414),
            send: post(&format!("{CHAT}?q={}", "a".repeat(20 * 1024)), &[auth, json], GOOD.as_bytes()),
        },
        Case {
            name: "a 70 KB request target",
            expect: StatusThenClosed(414),
            send: post(&format!("{CHAT}?q={}", "a".repeat(70 * 1024)), &[auth, json], GOOD.as_bytes()),
        },
        // ---- tokens ------------------------------------------------------
        Case { name: "no token", expect: Status(401), send: post(CHAT, &[json], GOOD.as_bytes()) },
        Case {
            name: "a forged token",
            expect: Status(401),
            send: post(CHAT, &[json, &format!("authorization: Bearer {}", generate_token())], GOOD.as_bytes()),
        },
        Case {
            name: "the upstream key as the token",
            expect: Status(401),
            send: post(CHAT, &[json, &format!("authorization: Bearer {KEY}")], GOOD.as_bytes()),
        },
        Case {
            name: "an expired token",
            expect: Status(401),
            send: post(CHAT, &[json, &format!("authorization: Bearer {}", edge.expired)], GOOD.as_bytes()),
        },
        Case {
            name: "a revoked token",
            expect: Status(401),
            send: post(CHAT, &[json, &format!("authorization: Bearer {}", edge.revoked)], GOOD.as_bytes()),
        },
        Case {
            name: "the token as Basic credentials",
            expect: Status(401),
            send: post(CHAT, &[json, "authorization: Basic a3AtdGVzdDprcC10ZXN0"], GOOD.as_bytes()),
        },
        Case {
            name: "invalid UTF-8 in the token",
            expect: Status(401),
            send: raw(&[
                format!("POST {CHAT} HTTP/1.1\r\nhost: g\r\n{json}\r\nauthorization: Bearer kp-").as_bytes(),
                b"\xff\xfe\xfd\r\ncontent-length: 2\r\n\r\n{}",
            ]
            .concat()),
        },
        // ---- paths -------------------------------------------------------
        Case {
            name: "/v1/../admin",
            expect: Status(400),
            send: raw(format!("GET /v1/../admin HTTP/1.1\r\nhost: g\r\n{auth}\r\n\r\n").as_bytes()),
        },
        Case {
            name: "/v1/%2e%2e/admin",
            expect: Status(400),
            send: raw(format!("GET /v1/%2e%2e/admin HTTP/1.1\r\nhost: g\r\n{auth}\r\n\r\n").as_bytes()),
        },
        // An encoded slash is no separator: the path goes upstream as sent,
        // never decoded, and the upstream (here the simulator, as OpenAI
        // does) answers 404 for a path it does not serve.
        Case {
            name: "/v1/models%2F..%2F..%2Fadmin",
            expect: Status(404),
            send: raw(format!("GET /v1/models%2F..%2F..%2Fadmin HTTP/1.1\r\nhost: g\r\n{auth}\r\n\r\n").as_bytes()),
        },
        Case {
            name: "/v1/..%2Fadmin",
            expect: Status(404),
            send: raw(format!("GET /v1/..%2Fadmin HTTP/1.1\r\nhost: g\r\n{auth}\r\n\r\n").as_bytes()),
        },
        Case {
            name: "an absolute-form target to another host",
            expect: Status(200),
            send: raw(format!("GET http://evil.example/healthz HTTP/1.1\r\nhost: g\r\n{auth}\r\n\r\n").as_bytes()),
        },
        // ---- header injection --------------------------------------------
        Case {
            name: "a bare CR in a header value",
            expect: StatusThenClosed(400),
            send: raw(b"GET /healthz HTTP/1.1\r\nhost: g\r\nx-a: b\rset-cookie: c\r\n\r\n"),
        },
        Case {
            name: "a NUL in a header value",
            expect: StatusThenClosed(400),
            send: raw(b"GET /healthz HTTP/1.1\r\nhost: g\r\nx-a: b\0c\r\n\r\n"),
        },
        Case {
            name: "an obs-folded header",
            expect: StatusThenClosed(400),
            send: raw(format!("GET /v1/models HTTP/1.1\r\nhost: g\r\n{auth}\r\nx-a: b\r\n c\r\n\r\n").as_bytes()),
        },
        Case {
            name: "a space before the colon",
            expect: StatusThenClosed(400),
            send: raw(b"GET /healthz HTTP/1.1\r\nhost: g\r\ntransfer-encoding : chunked\r\n\r\n"),
        },
        Case {
            name: "CR LF in the request target",
            expect: StatusThenClosed(400),
            send: raw(b"GET /healthz\r\nx-injected: 1 HTTP/1.1\r\nhost: g\r\n\r\n"),
        },
        Case {
            name: "CR LF in x-client-request-id (echoed back)",
            expect: StatusThenClosed(400),
            send: raw(b"GET /healthz HTTP/1.1\r\nhost: g\r\nx-client-request-id: a\r\rset-cookie: x\r\n\r\n"),
        },
        // ---- smuggling ---------------------------------------------------
        Case {
            name: "Transfer-Encoding then Content-Length",
            expect: StatusThenClosed(400),
            send: raw(&smuggled("transfer-encoding: chunked", "content-length: 33")),
        },
        Case {
            // A lone `P` could start HTTP/2's preface (`PRI * HTTP/2.0`):
            // the connection is undecided when the head arrives.
            name: "Transfer-Encoding and Content-Length after a lone first byte",
            expect: StatusThenClosed(400),
            send: Request::Http1Split { bytes: smuggled("transfer-encoding: chunked", "content-length: 33"), at: 1 },
        },
        Case {
            name: "Content-Length then Transfer-Encoding",
            expect: StatusThenClosed(400),
            send: raw(&smuggled("content-length: 33", "transfer-encoding: chunked")),
        },
        Case {
            name: "two different Content-Lengths",
            expect: StatusThenClosed(400),
            send: raw(&smuggled("content-length: 5", "content-length: 33")),
        },
        Case {
            name: "Content-Length: +5",
            expect: StatusThenClosed(400),
            send: raw(&smuggled("content-length: +5", "x-a: b")),
        },
        Case {
            name: "Transfer-Encoding: chunked, identity",
            expect: StatusThenClosed(400),
            send: raw(&smuggled("transfer-encoding: chunked, identity", "x-a: b")),
        },
        Case {
            name: "Transfer-Encoding: xchunked",
            expect: StatusThenClosed(400),
            send: raw(&smuggled("transfer-encoding: xchunked", "x-a: b")),
        },
        Case {
            name: "Transfer-Encoding on HTTP/1.0",
            expect: StatusThenClosed(400),
            send: raw(
                format!("POST {CHAT} HTTP/1.0\r\n{auth}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes()
            ),
        },
        Case {
            name: "garbage instead of a request",
            expect: StatusThenClosed(400),
            send: raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n"),
        },
        Case {
            name: "a head cut off by the client",
            expect: Closed,
            send: raw(b"POST /v1/chat/completions HTTP/1.1\r\nhost: g\r\ncontent-le"),
        },
        // ---- HTTP/2 ------------------------------------------------------
        Case {
            name: "h2: malformed JSON",
            expect: Status(400),
            send: Request::Http2 {
                path: CHAT.into(),
                headers: h2_auth.clone(),
                body: H2Body::Sized(b"{\"model\":".to_vec()),
            },
        },
        Case {
            name: "h2: a body over the limit with its length",
            expect: Status(413),
            send: Request::Http2 {
                path: CHAT.into(),
                headers: h2_auth.clone(),
                body: H2Body::Sized(vec![b' '; LIMIT + 1]),
            },
        },
        Case {
            name: "h2: a body over the limit, no length",
            expect: Status(413),
            send: Request::Http2 { path: CHAT.into(), headers: h2_auth.clone(), body: H2Body::Streamed(4 * LIMIT) },
        },
        Case {
            name: "h2: a 40 KB header",
            expect: Status(431),
            send: Request::Http2 {
                path: CHAT.into(),
                headers: [h2_auth.clone(), vec![("x-big".into(), big_value.clone())]].concat(),
                body: H2Body::Sized(GOOD.into()),
            },
        },
        Case {
            name: "h2: 150 header fields",
            expect: Status(431),
            send: Request::Http2 {
                path: CHAT.into(),
                headers: [h2_auth.clone(), (0..150).map(|i| (format!("x-filler-{i}"), i.to_string())).collect()]
                    .concat(),
                body: H2Body::Sized(GOOD.into()),
            },
        },
        Case {
            name: "h2: a 20 KB request target",
            expect: Status(414),
            send: Request::Http2 {
                path: format!("{CHAT}?q={}", "a".repeat(20 * 1024)),
                headers: h2_auth.clone(),
                body: H2Body::Sized(GOOD.into()),
            },
        },
        Case {
            name: "h2: a forged token",
            expect: Status(401),
            send: Request::Http2 {
                path: CHAT.into(),
                headers: vec![("authorization".into(), format!("Bearer {}", generate_token()))],
                body: H2Body::Sized(GOOD.into()),
            },
        },
        Case {
            name: "h2: the good request (control)",
            expect: Status(200),
            send: Request::Http2 { path: CHAT.into(), headers: h2_auth, body: H2Body::Sized(GOOD.into()) },
        },
    ]
}
