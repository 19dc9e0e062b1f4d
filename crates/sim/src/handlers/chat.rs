//! `POST /chat/completions` and the legacy `POST /completions`, JSON and SSE.
//!
//! Both share one generator: the answer is a fixed sentence cut to `max_tokens` words, so
//! usage numbers are exact and predictable for the gateway's accounting tests.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::conn::ConnKill;
use crate::errors;
use crate::gate::Admitted;
use crate::state::{lock, Shared};
use crate::tokens;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

pub async fn chat(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(sh, conn, headers, body, Kind::Chat).await
}

pub async fn completions(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(sh, conn, headers, body, Kind::Text).await
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The model named in a body, or a plausible default for messages about malformed bodies.
pub fn model_of(body: Option<&Value>) -> String {
    body.and_then(|v| v.get("model")).and_then(Value::as_str).unwrap_or("gpt-4o-mini").to_string()
}

async fn complete(sh: Arc<Shared>, conn: ConnKill, headers: HeaderMap, raw: Bytes, kind: Kind) -> Response {
    // Parsed before the gate only to price the request; malformed bodies are still
    // answered 400 after the gate, as the fixed pipeline order requires.
    let parsed: Option<Value> = serde_json::from_slice(&raw).ok().filter(Value::is_object);
    let model = model_of(parsed.as_ref());
    let cost = parsed.as_ref().map_or(1, |b| tokens::request_cost_by(b, sh.charge));
    let adm = match sh.gate(&headers, &conn, &model, cost).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let Some(body) = parsed else {
        return sh.respond(&adm, errors::bad_json());
    };
    if body.get("model").and_then(Value::as_str).is_none() {
        return sh.respond(&adm, errors::missing_param("model"));
    }
    let required = if kind == Kind::Chat { "messages" } else { "prompt" };
    if body.get(required).is_none_or(Value::is_null) {
        return sh.respond(&adm, errors::missing_param(required));
    }
    let gen = Generation::new(&body, kind, &adm.request_id);
    sh.bump(adm.key.as_deref(), |s| s.prompt_tokens += gen.prompt_tokens);
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        stream_answer(sh, adm, gen)
    } else {
        sh.bump(adm.key.as_deref(), |s| s.completion_tokens += gen.completion_tokens());
        let resp = axum::Json(gen.full_answer()).into_response();
        sh.respond(&adm, resp)
    }
}

struct Generation {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u64,
    words: Vec<&'static str>,
    n: u64,
    include_usage: bool,
}

impl Generation {
    fn new(body: &Value, kind: Kind, request_id: &str) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        let suffix = request_id.trim_start_matches("req_");
        Generation {
            kind,
            id: format!("{prefix}-{suffix}"),
            created: unix_now(),
            model: model_of(Some(body)),
            prompt_tokens: tokens::prompt_tokens(body),
            words: tokens::answer_words(tokens::max_tokens(body)),
            n: tokens::choices(body),
            include_usage: body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false),
        }
    }

    fn completion_tokens(&self) -> u64 {
        self.words.len() as u64 * self.n
    }

    fn usage(&self) -> Value {
        let c = self.completion_tokens();
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c})
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": choices,
        })
    }

    fn full_answer(&self) -> Value {
        let text = self.words.join(" ");
        let choices = (0..self.n)
            .map(|i| match self.kind {
                Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": null, "finish_reason": "stop"}),
                Kind::Text => json!({"index": i, "text": text, "logprobs": null, "finish_reason": "stop"}),
            })
            .collect();
        let mut v = self.envelope(false, choices);
        v["usage"] = self.usage();
        v
    }

    /// One chunk carrying the same delta for every choice.
    fn chunk(&self, content: Option<&str>, role: bool, finish: bool) -> Value {
        let choices = (0..self.n)
            .map(|i| {
                let finish_reason = if finish { json!("stop") } else { Value::Null };
                match self.kind {
                    Kind::Chat => {
                        let mut delta = json!({});
                        if role {
                            delta["role"] = json!("assistant");
                        }
                        if let Some(c) = content {
                            delta["content"] = json!(c);
                        }
                        json!({"index": i, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
                    }
                    Kind::Text => json!({"index": i, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish_reason}),
                }
            })
            .collect();
        let mut v = self.envelope(true, choices);
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The whole event sequence, decided up front; only the sending is paced.
    fn plan(&self, chunks: usize, interval: Duration, fail_after: Option<usize>) -> VecDeque<Planned> {
        let mut plan = VecDeque::new();
        if self.kind == Kind::Chat {
            plan.push_back(Planned::event(self.chunk(Some(""), true, false)));
        }
        let total = self.words.len();
        for i in 0..chunks {
            if fail_after == Some(i) {
                let err = errors::error_body(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                    Some("server_error"),
                );
                plan.push_back(Planned {
                    delay: if i == 0 { Duration::ZERO } else { interval },
                    name: None,
                    data: err.to_string(),
                    words: 0,
                    end: End::Failed,
                });
                return plan;
            }
            let (from, to) = (i * total / chunks, (i + 1) * total / chunks);
            let mut piece = self.words[from..to].join(" ");
            if from > 0 && !piece.is_empty() {
                piece.insert(0, ' ');
            }
            let mut p = Planned::event(self.chunk(Some(&piece), false, false));
            p.delay = if i == 0 { Duration::ZERO } else { interval };
            p.words = (to - from) as u64 * self.n;
            plan.push_back(p);
        }
        let content = if self.kind == Kind::Chat { None } else { Some("") };
        plan.push_back(Planned::event(self.chunk(content, false, true)));
        if self.include_usage {
            let mut v = self.envelope(true, Vec::new());
            v["usage"] = self.usage();
            plan.push_back(Planned::event(v));
        }
        plan.push_back(Planned {
            delay: Duration::ZERO,
            name: None,
            data: "[DONE]".to_string(),
            words: 0,
            end: End::Done,
        });
        plan
    }
}

/// What sending an event means for the stream.
#[derive(PartialEq, Eq)]
pub(super) enum End {
    /// More follows.
    No,
    /// The last event: the stream is over.
    Done,
    /// The last event, an injected error.
    Failed,
}

/// One event of a stream, decided before sending starts.
pub(super) struct Planned {
    pub delay: Duration,
    /// The `event:` line's value, for typed streams (the Responses API).
    pub name: Option<&'static str>,
    pub data: String,
    /// Completion tokens this event delivers (counted when it is sent).
    pub words: u64,
    pub end: End,
}

impl Planned {
    pub(super) fn event(v: Value) -> Self {
        Planned { delay: Duration::ZERO, name: None, data: v.to_string(), words: 0, end: End::No }
    }
}

/// Owned by the body stream; if it is dropped before the last event went out, the client
/// went away, which is what `streams_cancelled` counts.
struct StreamState {
    sh: Arc<Shared>,
    key: Option<String>,
    plan: VecDeque<Planned>,
    finished: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if !self.finished {
            self.sh.bump(self.key.as_deref(), |s| s.streams_cancelled += 1);
        }
    }
}

fn stream_answer(sh: Arc<Shared>, adm: Admitted, gen: Generation) -> Response {
    let fail_after = lock(&sh.faults).fail_stream_after_chunks;
    let mut plan = gen.plan(sh.stream_chunks, sh.chunk_interval, fail_after);
    if sh.stream_ends.chat_without_done && plan.back().is_some_and(|p| p.end == End::Done) {
        plan.pop_back();
        if let Some(last) = plan.back_mut() {
            last.end = End::Done;
        }
    }
    send_plan(sh, adm, plan)
}

/// Streams the planned events, paced by their delays; `cut_after_events`
/// closes the stream early, cleanly, as a stream that broke.
pub(super) fn send_plan(sh: Arc<Shared>, adm: Admitted, mut plan: VecDeque<Planned>) -> Response {
    if let Some(n) = sh.stream_ends.cut_after_events.filter(|&n| n < plan.len()) {
        plan.truncate(n);
        if let Some(last) = plan.back_mut() {
            last.end = End::Done;
        }
    }
    let finished = plan.is_empty();
    let state = StreamState { sh: sh.clone(), key: adm.key.clone(), plan, finished };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        let item = st.plan.pop_front()?;
        if !item.delay.is_zero() {
            tokio::time::sleep(item.delay).await;
        }
        if item.words > 0 {
            st.sh.bump(st.key.as_deref(), |s| s.completion_tokens += item.words);
        }
        match item.end {
            End::No => {}
            End::Done => st.finished = true,
            End::Failed => {
                st.finished = true;
                st.sh.bump(st.key.as_deref(), |s| s.server_errors += 1);
            }
        }
        let bytes = match item.name {
            Some(name) => Bytes::from(format!("event: {name}\ndata: {}\n\n", item.data)),
            None => Bytes::from(format!("data: {}\n\n", item.data)),
        };
        Some((Ok::<_, Infallible>(bytes), st))
    });
    let mut resp = Body::from_stream(events).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    sh.respond(&adm, resp)
}
