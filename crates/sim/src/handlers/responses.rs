//! `POST /responses`: the Responses API, JSON and SSE.
//!
//! Streams are typed: each event has an `event:` line naming it and a `data:`
//! object with the same `type` and a `sequence_number`, as OpenAI sends them.
//! A stream ends with its terminal event (`response.completed`, or
//! `response.incomplete` / `response.failed` / `error` as
//! [`crate::StreamEnds`] says), the usage inside the final `response`, and by
//! default no `[DONE]`. The answer text and usage are the chat generator's,
//! so numbers are exact.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::chat::{model_of, send_plan, unix_now, End, Planned};
use crate::config::ResponsesTerminal;
use crate::conn::ConnKill;
use crate::errors;
use crate::state::Shared;
use crate::tokens;

pub async fn responses(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    // Parsed before the gate only to price the request, as chat does.
    let parsed: Option<Value> = serde_json::from_slice(&raw).ok().filter(Value::is_object);
    let model = model_of(parsed.as_ref());
    let (prompt_tokens, max_output) =
        parsed.as_ref().map_or((1, tokens::DEFAULT_MAX_TOKENS), |b| (prompt_of(b), max_output_of(b)));
    let adm = match sh.gate(&headers, &conn, &model, prompt_tokens + max_output).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let Some(body) = parsed else {
        return sh.respond(&adm, errors::bad_json());
    };
    if body.get("model").and_then(Value::as_str).is_none() {
        return sh.respond(&adm, errors::missing_param("model"));
    }
    if body.get("input").is_none_or(Value::is_null) {
        return sh.respond(&adm, errors::missing_param("input"));
    }
    // Stored responses belong to the key (project) that created them.
    if let Some(previous) = body.get("previous_response_id").and_then(Value::as_str) {
        if !super::files::owned_by(&sh, previous, adm.key.as_deref()) {
            let msg = format!("Previous response with id '{previous}' not found.");
            let resp = errors::error_response(
                StatusCode::NOT_FOUND,
                &msg,
                "invalid_request_error",
                Some("previous_response_id"),
                Some("previous_response_not_found"),
            );
            return sh.respond(&adm, resp);
        }
    }
    let suffix = adm.request_id.trim_start_matches("req_").to_owned();
    if let Some(key) = &adm.key {
        crate::state::lock(&sh.objects).insert(format!("resp_{suffix}"), key.clone());
    }
    let reply = Reply {
        id: format!("resp_{suffix}"),
        item_id: format!("msg_{suffix}"),
        created_at: unix_now(),
        model,
        prompt_tokens,
        words: tokens::answer_words(max_output),
        terminal: sh.stream_ends.responses_terminal,
    };
    sh.bump(adm.key.as_deref(), |s| s.prompt_tokens += prompt_tokens);
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let plan = reply.plan(sh.stream_chunks, sh.chunk_interval, sh.stream_ends.responses_done);
        return send_plan(sh, adm, plan);
    }
    if reply.terminal == ResponsesTerminal::Error {
        sh.bump(adm.key.as_deref(), |s| s.server_errors += 1);
        return sh.respond(&adm, errors::server_error());
    }
    sh.bump(adm.key.as_deref(), |s| s.completion_tokens += reply.words.len() as u64);
    let resp = (StatusCode::OK, axum::Json(reply.response(reply.terminal, true))).into_response();
    sh.respond(&adm, resp)
}

/// Characters of `instructions` and `input` (a string, or items whose
/// `content` is a string or parts with `text`), as tokens, plus 3 per item.
fn prompt_of(body: &Value) -> u64 {
    let text = |v: &Value| match v {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(|s| s.chars().count()).sum()
        }
        _ => 0,
    };
    let instructions = body.get("instructions").map_or(0, text);
    match body.get("input") {
        Some(Value::Array(items)) => {
            let chars: usize = items.iter().map(|i| i.get("content").map_or(0, text)).sum();
            tokens::text_tokens(chars + instructions) + 3 * items.len() as u64
        }
        Some(input) => tokens::text_tokens(text(input) + instructions),
        None => tokens::text_tokens(instructions),
    }
}

fn max_output_of(body: &Value) -> u64 {
    body.get("max_output_tokens").and_then(Value::as_u64).unwrap_or(tokens::DEFAULT_MAX_TOKENS)
}

/// One generated answer, in the shapes the Responses API gives it.
struct Reply {
    id: String,
    item_id: String,
    created_at: u64,
    model: String,
    prompt_tokens: u64,
    words: Vec<&'static str>,
    terminal: ResponsesTerminal,
}

impl Reply {
    fn text(&self) -> String {
        self.words.join(" ")
    }

    fn usage(&self) -> Value {
        let out = self.words.len() as u64;
        json!({
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + out,
        })
    }

    fn message(&self, done: bool) -> Value {
        let content = if done { json!([self.part(true)]) } else { json!([]) };
        let status = if done { "completed" } else { "in_progress" };
        json!({"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content})
    }

    fn part(&self, done: bool) -> Value {
        let text = if done { self.text() } else { String::new() };
        json!({"type": "output_text", "text": text, "annotations": []})
    }

    /// The response object; `finished` adds the output and the usage.
    fn response(&self, end: ResponsesTerminal, finished: bool) -> Value {
        let (status, error, incomplete) = match (finished, end) {
            (false, _) => ("in_progress", Value::Null, Value::Null),
            (true, ResponsesTerminal::Completed | ResponsesTerminal::Error) => ("completed", Value::Null, Value::Null),
            (true, ResponsesTerminal::Incomplete) => {
                ("incomplete", Value::Null, json!({"reason": "max_output_tokens"}))
            }
            (true, ResponsesTerminal::Failed) => (
                "failed",
                json!({"code": "server_error", "message": "The model failed to generate a response."}),
                Value::Null,
            ),
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": null,
            "model": self.model,
            "output": if finished { json!([self.message(true)]) } else { json!([]) },
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "store": false,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "usage": if finished { self.usage() } else { Value::Null },
            "metadata": {},
        })
    }

    /// The whole event sequence, decided up front; only the sending is paced.
    fn plan(&self, chunks: usize, interval: Duration, done: bool) -> VecDeque<Planned> {
        let mut events: Vec<(&'static str, Value, u64)> = vec![
            ("response.created", json!({"response": self.response(self.terminal, false)}), 0),
            ("response.in_progress", json!({"response": self.response(self.terminal, false)}), 0),
            ("response.output_item.added", json!({"output_index": 0, "item": self.message(false)}), 0),
            (
                "response.content_part.added",
                json!({"item_id": self.item_id, "output_index": 0, "content_index": 0, "part": self.part(false)}),
                0,
            ),
        ];
        let total = self.words.len();
        for i in 0..chunks {
            let (from, to) = (i * total / chunks, (i + 1) * total / chunks);
            let mut piece = self.words[from..to].join(" ");
            if from > 0 && !piece.is_empty() {
                piece.insert(0, ' ');
            }
            let at = json!({"item_id": self.item_id, "output_index": 0, "content_index": 0, "delta": piece});
            events.push(("response.output_text.delta", at, (to - from) as u64));
        }
        if self.terminal == ResponsesTerminal::Error {
            let err = json!({"code": "server_error", "message": "The server had an error while processing your request.", "param": null});
            events.push(("error", err, 0));
        } else {
            let at = json!({"item_id": self.item_id, "output_index": 0, "content_index": 0});
            let mut text_done = at.clone();
            text_done["text"] = json!(self.text());
            events.push(("response.output_text.done", text_done, 0));
            let mut part_done = at;
            part_done["part"] = self.part(true);
            events.push(("response.content_part.done", part_done, 0));
            events.push(("response.output_item.done", json!({"output_index": 0, "item": self.message(true)}), 0));
            let name = match self.terminal {
                ResponsesTerminal::Incomplete => "response.incomplete",
                ResponsesTerminal::Failed => "response.failed",
                ResponsesTerminal::Completed | ResponsesTerminal::Error => "response.completed",
            };
            events.push((name, json!({"response": self.response(self.terminal, true)}), 0));
        }
        let first_delta = 4;
        let mut plan: VecDeque<Planned> = events
            .into_iter()
            .enumerate()
            .map(|(seq, (name, data, words))| {
                // `type` first, as OpenAI orders it (serde_json sorts keys).
                let fields = data.to_string();
                let rest = fields.trim_start_matches('{');
                let data = format!("{{\"type\":\"{name}\",\"sequence_number\":{seq},{rest}");
                let delay = if seq > first_delta && words > 0 { interval } else { Duration::ZERO };
                Planned { delay, name: Some(name), data, words, end: End::No }
            })
            .collect();
        let failed = matches!(self.terminal, ResponsesTerminal::Failed | ResponsesTerminal::Error);
        if let Some(last) = plan.back_mut() {
            last.end = if failed { End::Failed } else { End::Done };
        }
        if done {
            if let Some(last) = plan.back_mut() {
                last.end = End::No;
            }
            let end = if failed { End::Failed } else { End::Done };
            plan.push_back(Planned { delay: Duration::ZERO, name: None, data: "[DONE]".into(), words: 0, end });
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_counts_instructions_and_every_input_form() {
        assert_eq!(prompt_of(&json!({"input": "abcdefgh"})), 2);
        assert_eq!(prompt_of(&json!({"input": "abcd", "instructions": "efgh"})), 2);
        let items = json!({"input": [
            {"role": "user", "content": "abcd"},
            {"role": "user", "content": [{"type": "input_text", "text": "efgh"}]}
        ]});
        assert_eq!(prompt_of(&items), 2 + 6);
        assert_eq!(max_output_of(&json!({"max_output_tokens": 3})), 3);
    }
}
