//! The pass-through handler for everything under `/v1/`: inspect, lease a
//! key, send, and retry on another key while nothing has reached the caller.
//! Every answer's head says what the request did ([`headers`]).

mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, BodyExt};
use keypool_sse::{BodyKind, UsageStripper, UsageTap};
use tokio::time::Instant;

use super::attempt::{full_jitter, key_account_mismatch, scrub, Failed};
use super::context::{RequestContext, REQUEST_ID_HEADER};
use super::error::ApiError;
use super::inspect::{inspect, with_include_usage};
use super::metered::{Expect, Metered};
use super::upload::{watch_upload, Sent};
use super::AppState;
use crate::config::models::ModelPrice;
use crate::config::AuthMode;
use crate::records::error_type;
use crate::scheduler::{Charged, KeyLease, NoKey, Outcome, Verdict};
use crate::tokens::PromptShape;
use crate::upstream::{
    classify, copy_response_headers, is_account_header, rate_info, refuses_stream_options, Answer, OutBody,
    UpstreamError,
};
use secrecy::ExposeSecret;

/// Largest error body read to learn what it says about the key.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// Endpoints that stream with OpenAI's `stream_options.include_usage`.
fn reports_stream_usage(rest: &str) -> bool {
    matches!(rest.trim_end_matches('/'), "chat/completions" | "completions")
}

/// Runs `$method` on the request's context while the handler still holds it.
macro_rules! ctx {
    ($slot:expr, $method:ident $(, $arg:expr)*) => {
        if let Some(c) = $slot.as_deref_mut() {
            c.$method($($arg),*);
        }
    };
}

/// The handler: once the gateway token passed, the request's context begins
/// here and, unless its answer's body took it over (a 2xx answer, ended when
/// the body ends), ends here. Every answer it makes carries
/// `x-keypool-request-id` (not the edge's own: a 503 at the end of the
/// stop's grace, a body too slow to arrive).
pub async fn proxy(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = super::client::real_client(peer, req.headers(), &app.config.telemetry.trusted_proxies);
    // A request without a live token is charged to no one and leaves no
    // record: a flood of them must not fill the log (nor its buffer).
    let token = match app.config.auth {
        AuthMode::Token => match app.tokens.check(req.headers()) {
            Ok(token) => Some(token),
            Err(e) => {
                crate::metrics::request_refused("token");
                super::auth::log_refusal(&e, client);
                return e.into_response();
            }
        },
        AuthMode::None => None,
    };
    let (parts, body) = req.into_parts();
    let mut ctx = Box::new(RequestContext::begin(app.recorder.clone(), &parts, client, started));
    if let Some(token) = token {
        ctx.set_token(token);
    }
    let mut slot = Some(ctx);
    let id = slot.as_deref().and_then(RequestContext::request_id_header);
    let mut response = match handle(&app, parts, body, started, &mut slot).await {
        Ok(response) => response,
        Err(e) => {
            if let Some(c) = slot.as_deref_mut() {
                c.attempt_ended(0, e.code());
                c.error(e.code());
            }
            e.into_response()
        }
    };
    if let Some(ctx) = slot.take() {
        // Not a 2xx (whose head was stamped when its body took the context).
        stamp(&app, response.headers_mut(), &ctx);
        ctx.end_as(response.status().as_u16());
    }
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

async fn handle(
    app: &Arc<AppState>,
    parts: http::request::Parts,
    body: Body,
    started: Instant,
    slot: &mut Option<Box<RequestContext>>,
) -> Result<Response, ApiError> {
    let rest = parts.uri.path().strip_prefix("/v1").unwrap_or_default().trim_start_matches('/').to_owned();
    let url =
        app.upstream.url_for(&rest, parts.uri.query()).ok_or_else(|| ApiError::BadPath(parts.uri.path().to_owned()))?;
    let exact = app.scheduler.counts_tokens() || !app.config.prices.is_empty();
    let inspected = inspect(&parts, body, &rest, app.config.max_body_bytes, exact).await?;
    if let crate::upstream::OutBody::Bytes(bytes) = &inspected.body {
        ctx!(slot, request_body, bytes);
    }
    let shape = inspected.shape;
    let price = shape.as_ref().and_then(|s| s.model.as_deref()).and_then(|m| app.prices.model_price_of(&app.config, m));
    let model = shape.as_ref().and_then(|s| s.model.clone());
    ctx!(
        slot,
        set_request,
        model.as_deref(),
        shape.as_ref().is_some_and(|s| s.stream),
        shape.as_ref().and_then(|s| s.user.as_deref())
    );
    let expect = Expect {
        protocol: keypool_sse::StreamProtocol::for_path(&rest),
        prompt_tokens: shape.as_ref().map_or(0, |s| s.prompt_tokens),
    };
    let Outgoing { mut body, mut replay, mut caller_body, mut strip_usage, upload } =
        outgoing(app, inspected.body, shape.as_ref(), &rest);
    let policy = &app.config.retry;
    // Per-model timeouts and deadline, by the one glob rule (config::models).
    let timeouts = &app.config.timeouts_for(model.as_deref());
    let deadline = started + app.config.deadline_for(model.as_deref());
    // Keys known not to serve this model are tried last.
    let aside: Vec<i64> = model.as_deref().map(|m| app.scheduler.set_aside_keys(m)).unwrap_or_default();
    let mut avoid = aside.clone();
    // Keys only another key can improve on (after such a failure, with the
    // set-aside ones): never tried again while another key can serve at all.
    let mut exclude: Vec<i64> = Vec::new();
    let mut tried: Vec<i64> = Vec::new();
    // Keys refused in words that may be theirs: on trial if another key is served.
    let mut refused: Vec<i64> = Vec::new();
    let mut attempts = 0u32;
    let mut timeouts_retried = 0u32;
    let mut last: Option<Failed> = None;
    // A lease kept for the next attempt (the same key sent the caller's own body).
    let mut held: Option<KeyLease> = None;
    loop {
        if app.breaker.is_open() {
            let until = deadline.min(Instant::now() + app.config.pool.max_wait);
            ctx!(slot, queue);
            let closed = app.breaker.wait_closed(until).await;
            ctx!(slot, unqueue);
            if !closed {
                return Err(ApiError::UpstreamDown { attempts });
            }
        }
        let acquired = match held.take() {
            Some(lease) => Ok(lease),
            // Again each attempt: a refusal may just have taught the scheduler
            // that the upstream charges more than the first estimate assumed.
            None => {
                ctx!(slot, queue);
                let acquired = app
                    .scheduler
                    .acquire_avoiding(app.demand(shape.as_ref(), price.map(|p| p.price())), &avoid, &exclude)
                    .await;
                ctx!(slot, unqueue);
                acquired
            }
        };
        let mut lease = match acquired {
            Ok(lease) => lease,
            Err(e) => {
                crate::metrics::request_refused(match e {
                    NoKey::Busy { .. } => "busy",
                    NoKey::BudgetSpent => "budget",
                    _ => "no_key",
                });
                // No key left after refusals that were not the keys' own: say what the upstream said.
                if let Some(failed) = last.filter(|f| f.needs_other_key() && !f.blames_key()) {
                    if matches!(e, NoKey::NoKeys | NoKey::Unusable(_)) {
                        ctx!(slot, error, failed.reason());
                        return Ok(failed.into_response(attempts, tried.len()));
                    }
                }
                return Err(match e {
                    NoKey::Unusable(counts) => ApiError::NoUsableKey { counts, attempts },
                    e => e.into(),
                });
            }
        };
        attempts += 1;
        let key_id = lease.key_id();
        if !tried.contains(&key_id) {
            tried.push(key_id);
        }
        let out = match (&replay, body.take()) {
            (Some(bytes), _) => OutBody::Bytes(bytes.clone()),
            (None, Some(b)) => b,
            (None, None) => return Err(ApiError::Internal("a streamed body cannot be sent twice")),
        };
        lease.mark_sent();
        ctx!(slot, attempt_sent, key_id);
        let sending = app.upstream.send(
            parts.method.clone(),
            url.clone(),
            &parts.headers,
            key_id,
            lease.secret(),
            lease.account(),
            out,
        );
        // A resend gets no more than the time left before the deadline.
        let wait = timeouts.first_byte.min(deadline.saturating_duration_since(Instant::now()));
        let sent = first_byte(sending, upload.clone(), wait, started + timeouts.total).await;
        // Only the caller's own body failing is the caller's fault (a body
        // dropped unsent because the connection failed is not).
        let caller_failed = upload.as_ref().is_some_and(|rx| *rx.borrow() == Sent::Failed);
        let failed = match sent {
            Sending::UploadTooSlow => {
                lease.give_back();
                ctx!(slot, counted, Charged::NOT_SENT);
                return Err(ApiError::BodyRead("the upload did not finish in time".into()));
            }
            Sending::TimedOut => {
                tracing::warn!(key_id, attempt = attempts, "no answer within the first-byte timeout");
                let counted = lease.finish(Outcome { verdict: Verdict::UpstreamError, ..Outcome::default() });
                ctx!(slot, counted, counted);
                app.note_upstream_failure();
                Failed::Network { timed_out: true, why: None }
            }
            Sending::Answered(Err(_)) if inspected.overflow.happened() => {
                // The upload never completed, so the upstream did not count it.
                lease.give_back();
                ctx!(slot, counted, Charged::NOT_SENT);
                inspected.overflow.drain_rest().await;
                return Err(ApiError::BodyTooLarge { limit: app.config.max_body_bytes });
            }
            Sending::Answered(Err(_))
                if parts.extensions.get::<super::CallerPace>().is_some_and(super::CallerPace::too_slow) =>
            {
                // The caller's upload was cut off as too slow: its error, not the upstream's.
                lease.give_back();
                ctx!(slot, counted, Charged::NOT_SENT);
                let s = &app.config.server;
                return Err(ApiError::CallerTooSlow { rate: s.min_body_rate, window: s.min_body_rate_window });
            }
            Sending::Answered(Err(e)) if caller_failed => {
                // The caller's body stopped part-way: the caller's fault alone.
                tracing::info!(key_id, error = %e, "the caller's upload stopped part-way");
                lease.give_back();
                ctx!(slot, counted, Charged::NOT_SENT);
                return Err(ApiError::BodyRead("the upload stopped part-way".into()));
            }
            Sending::Answered(Err(e)) => {
                tracing::warn!(key_id, attempt = attempts, error = %e, "upstream request failed");
                // A connection that fails (name, TLS, refused) is the
                // upstream's or the network's, never the key's: it is not
                // counted as the key's failure.
                let verdict = if matches!(e, UpstreamError::Connect(_)) {
                    Verdict::ConnectFailed
                } else {
                    Verdict::UpstreamError
                };
                let counted = lease.finish(Outcome { verdict, ..Outcome::default() });
                ctx!(slot, counted, counted);
                app.note_upstream_failure();
                let why = match e {
                    UpstreamError::Connect(why) | UpstreamError::Request(why) => Some(why),
                    _ => None,
                };
                Failed::Network { timed_out: false, why }
            }
            Sending::Answered(Ok(upstream)) => {
                ctx!(slot, answered, upstream.headers());
                let reading =
                    Reading { idle: timeouts.idle, end: started + timeouts.total, expect, price, strip_usage };
                match answer(app, slot, upstream, lease, reading).await {
                    Ok(response) => {
                        // Only the caller's own account headers make a mismatch the caller's.
                        let caller_account_sent =
                            app.config.server.forward_account_headers && parts.headers.keys().any(is_account_header);
                        match key_account_mismatch(response, caller_account_sent).await {
                            Ok(response) => {
                                // Not a 2xx (whose body took the context): the caller's
                                // own error, or an upstream failure passed through.
                                if let Some(c) = slot.as_deref_mut() {
                                    let status = response.status();
                                    let why = if status.is_server_error() {
                                        Some(error_type::UPSTREAM_ERROR)
                                    } else if status.is_client_error() {
                                        Some(error_type::CALLER_ERROR)
                                    } else {
                                        None
                                    };
                                    c.attempt_ended(status.as_u16(), why.unwrap_or("ok"));
                                    if let Some(why) = why {
                                        c.error(why);
                                    }
                                }
                                app.quirks.note_status(response.status(), &url);
                                if response.status().is_success() {
                                    // Another key was served where these were refused: the
                                    // refusals may be theirs, so they go on trial.
                                    for id in refused.drain(..) {
                                        app.scheduler.suspect(id);
                                    }
                                }
                                return Ok(response);
                            }
                            Err(failed) => {
                                app.scheduler.judge(key_id, Verdict::Invalid);
                                failed
                            }
                        }
                    }
                    Err(Failed::StreamOptions(lease)) => {
                        // The upstream does not know the `stream_options` keypool
                        // added: the caller's own body, unchanged, on the same key.
                        app.quirks.note_refuses_stream_options();
                        // The same reservation is sent again: one request of the key.
                        ctx!(slot, counted, Charged::NOT_SENT);
                        ctx!(slot, attempt_ended, 400, "stream_options_refused");
                        strip_usage = false;
                        replay = caller_body.take();
                        held = Some(lease);
                        continue;
                    }
                    Err(failed) => failed,
                }
            }
        };
        ctx!(slot, attempt_ended, failed.status(), failed.reason());
        if !avoid.contains(&key_id) {
            avoid.push(key_id);
        }
        if let Failed::Status { classified, .. } = &failed {
            // Only another key helps: never this one again while another can serve (a
            // rate-limited key serves again after its reset, and the scheduler waits for
            // it; a request too large for it is judged against every key's limit).
            let useless = matches!(
                classified.verdict,
                Verdict::ModelMissing | Verdict::Refused | Verdict::Invalid | Verdict::Exhausted
            );
            if useless {
                for id in aside.iter().chain([&key_id]) {
                    if !exclude.contains(id) {
                        exclude.push(*id);
                    }
                }
            }
            match classified.verdict {
                Verdict::ModelMissing => {
                    if let Some(m) = model.as_deref() {
                        app.scheduler.set_aside_for_model(key_id, m);
                    }
                }
                Verdict::Refused if classified.maybe_key => refused.push(key_id),
                _ => {}
            }
        }
        let timed_out = matches!(failed, Failed::Network { timed_out: true, .. });
        if timed_out {
            timeouts_retried += 1;
        }
        let out_of_time = Instant::now() >= deadline;
        // A refusal only another key can change, when every key that can serve has been tried.
        // (A key's own failure takes it out of the pool: the next lease says what is left.)
        let no_other_key =
            failed.needs_other_key() && !failed.blames_key() && tried.len() >= app.scheduler.usable_keys().max(1);
        let generation_may_run_on = timed_out && timeouts_retried > policy.first_byte_retries;
        if attempts > policy.max_retries || replay.is_none() || out_of_time || no_other_key || generation_may_run_on {
            ctx!(slot, error, failed.reason());
            return Ok(failed.into_response(attempts, tried.len()));
        }
        crate::metrics::retry(failed.reason());
        if timed_out {
            crate::metrics::timeout_resend();
            tracing::warn!(
                key_id,
                resend = timeouts_retried,
                of = policy.first_byte_retries,
                "sending a timed-out generation again; the first may still be running (and billed) upstream"
            );
        }
        tracing::info!(key_id, attempt = attempts, reason = failed.reason(), "retrying");
        if failed.needs_backoff() {
            let pause = full_jitter(policy.backoff_base, policy.backoff_cap, attempts);
            tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        }
        last = Some(failed);
    }
}

/// What goes upstream, and what is kept to send it again.
struct Outgoing {
    /// The first attempt's body.
    body: Option<OutBody>,
    /// A body held in memory, sent again on a retry (an upload streams once).
    replay: Option<Bytes>,
    /// The caller's body before keypool added `stream_options`.
    caller_body: Option<Bytes>,
    /// keypool asked for the stream's usage: hide it from the caller.
    strip_usage: bool,
    /// An upload's progress, watched so its slowness is never blamed on the upstream.
    upload: Option<tokio::sync::watch::Receiver<Sent>>,
}

/// Prepares the body: a stream whose caller did not ask for usage asks for
/// it anyway (keypool needs it to account tokens and spend; it is hidden
/// from the caller), unless turned off or the upstream is known to refuse
/// the field; an upload is watched.
fn outgoing(app: &AppState, body: OutBody, shape: Option<&PromptShape>, rest: &str) -> Outgoing {
    match body {
        OutBody::Stream(s) => {
            let (watched, rx) = watch_upload(s);
            Outgoing {
                body: Some(OutBody::Stream(watched)),
                replay: None,
                caller_body: None,
                strip_usage: false,
                upload: Some(rx),
            }
        }
        OutBody::Bytes(bytes) => {
            let inject = app.config.stream_usage && !app.quirks.refuses_stream_options();
            let wants = shape.is_some_and(|s| s.stream && s.include_usage != Some(true)) && reports_stream_usage(rest);
            let edited = if inject && wants { with_include_usage(&bytes) } else { None };
            let strip_usage = edited.is_some();
            let (sent, caller_body) = match edited {
                Some(edited) => (edited, Some(bytes)),
                None => (bytes, None),
            };
            Outgoing {
                body: Some(OutBody::Bytes(sent.clone())),
                replay: Some(sent),
                caller_body,
                strip_usage,
                upload: None,
            }
        }
    }
}

/// How a send ended, as far as the first byte.
enum Sending {
    Answered(Result<Answer, UpstreamError>),
    /// No answer within the first-byte timeout after the body was sent.
    TimedOut,
    /// The caller's upload was still arriving when the whole request's time ran out.
    UploadTooSlow,
}

/// Sends, timing the answer's first byte from the moment the caller's body
/// has gone upstream (at once for a body in memory). While an upload is
/// under way, an upstream that takes none of it for `first_byte` has timed
/// out (its fault); a caller slow to send is bounded by `total` here (and
/// by the edge's minimum body rate before that).
async fn first_byte(
    sending: impl std::future::Future<Output = Result<Answer, UpstreamError>>,
    upload: Option<tokio::sync::watch::Receiver<Sent>>,
    first_byte: Duration,
    total: Instant,
) -> Sending {
    tokio::pin!(sending);
    if let Some(mut rx) = upload {
        loop {
            let state = *rx.borrow_and_update();
            let stalled_at = match state {
                Sent::Complete | Sent::Failed => break,
                Sent::Handed(at) => Some(at + first_byte),
                Sent::Sending => None,
            };
            let wake = stalled_at.map_or(total, |t| t.min(total));
            tokio::select! {
                answered = &mut sending => return Sending::Answered(answered),
                // Dropped unsent (the send failed first): the answer says why.
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(wake) => {
                    return if stalled_at.is_some_and(|t| t <= total) { Sending::TimedOut } else { Sending::UploadTooSlow };
                }
            }
        }
    }
    match tokio::time::timeout(first_byte, sending).await {
        Ok(answered) => Sending::Answered(answered),
        Err(_) => Sending::TimedOut,
    }
}

/// How an answer's body is read: the longest silence between two chunks,
/// the instant the whole request must end (the model's timeouts), what the
/// answer should look like, its price, and whether keypool asked for the
/// stream's usage itself (and hides it).
#[derive(Clone, Copy)]
struct Reading {
    idle: Duration,
    end: Instant,
    expect: Expect,
    price: Option<ModelPrice>,
    strip_usage: bool,
}

/// An answer arrived: stream it to the caller, pass a caller's error through
/// unchanged, or report a failure the policy retries.
async fn answer(
    app: &AppState,
    slot: &mut Option<Box<RequestContext>>,
    upstream: Answer,
    lease: KeyLease,
    reading: Reading,
) -> Result<Response, Failed> {
    let Reading { idle, end, expect, price, strip_usage } = reading;
    let status = upstream.status();
    lease.observe(&rate_info(upstream.headers()), status.is_success());
    tracing::debug!(key_id = lease.key_id(), %status, "upstream answered");
    let mut headers = HeaderMap::with_capacity(upstream.headers().len());
    copy_response_headers(upstream.headers(), &mut headers);
    if status.is_server_error() {
        app.note_upstream_failure();
    } else {
        app.breaker.success();
    }
    let content_type = upstream.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);

    if !status.is_success() {
        // Error bodies are small: read them to learn whose fault they are.
        // Bounded in size and in time: an upstream that stalls part-way
        // through its error body must not hold the key for the whole request.
        let (head, mut rest) = upstream.into_parts();
        let mut prefix = Vec::new();
        let mut complete = true;
        loop {
            let Ok(next) = tokio::time::timeout(idle, rest.frame()).await else {
                tracing::warn!(key_id = lease.key_id(), ?idle, "upstream error body stalled part-way");
                complete = false;
                break;
            };
            match next {
                Some(Ok(frame)) => {
                    // Trailers, if any, say nothing about the key.
                    let Ok(chunk) = frame.into_data() else { continue };
                    prefix.extend_from_slice(&chunk);
                    if prefix.len() > ERROR_BODY_CAP {
                        complete = false;
                        break;
                    }
                }
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(key_id = lease.key_id(), error = %e, "upstream error body failed part-way");
                    break;
                }
            }
        }
        // An upstream that quotes the key it was sent must not show it to anyone.
        if let Some(scrubbed) = scrub(&prefix, lease.secret().expose_secret()) {
            prefix = scrubbed;
        }
        if strip_usage && complete && refuses_stream_options(status, &prefix) {
            return Err(Failed::StreamOptions(lease));
        }
        let classified = classify(status, &head.headers, &prefix);
        tracing::debug!(key_id = lease.key_id(), %status, verdict = ?classified.verdict, blame = ?classified.blame(), "upstream refused");
        let counted =
            lease.finish(Outcome { success: false, usage: None, cost_micros: None, verdict: classified.verdict });
        ctx!(slot, counted, counted);
        // What was read is what the caller gets, scrubbed: an error body
        // over ERROR_BODY_CAP (64 KiB, far above any real one) is cut there
        // rather than streamed on unread, where a quoted key would pass.
        prefix.truncate(ERROR_BODY_CAP);
        ctx!(slot, error_body, &prefix);
        if classified.retry() {
            return Err(Failed::Status { status, classified, headers, body: Bytes::from(prefix) });
        }
        if !complete {
            tracing::warn!(%status, "upstream error body cut at {ERROR_BODY_CAP} bytes");
        }
        // The caller's own error (or a redirect): unchanged, on the first attempt.
        return Ok(respond(status, headers, Body::from(prefix)));
    }

    let kind = BodyKind::from_content_type(content_type.as_deref());
    if kind == BodyKind::Sse {
        // An nginx in front must pass events on as they come, not buffer them.
        headers.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    }
    let mut metered = Metered::new(
        BodyDataStream::new(upstream.into_body()).boxed(),
        UsageTap::new(kind),
        strip_usage.then(UsageStripper::new),
        lease,
        price,
        kind == BodyKind::Sse,
        idle,
        end,
    )
    .expect(expect);
    // The body ends the request now: when it ends, or when the caller leaves.
    if let Some(mut c) = slot.take() {
        c.attempt_ended(status.as_u16(), "ok");
        c.status(status.as_u16());
        stamp(app, &mut headers, &c);
        metered = metered.context(c);
    }
    Ok(respond(status, headers, Body::from_stream(metered)))
}

/// Adds what the request did to its answer's head (see [`headers`]).
fn stamp(app: &AppState, out: &mut HeaderMap, ctx: &RequestContext) {
    let settings = &app.config.headers;
    let pool = (!settings.upstream_ratelimit).then(|| {
        let view = app.scheduler.pool_rates();
        // Keys set aside for the model cannot serve it: not the caller's room.
        match ctx.model().map(|m| app.scheduler.set_aside_keys(m)) {
            Some(aside) if !aside.is_empty() => Arc::new(view.without(&aside)),
            _ => view,
        }
    });
    headers::decorate(out, settings, &ctx.head_facts(), pool.as_deref());
}

fn respond(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

impl AppState {
    /// Counts a failure of the upstream's kind; if it opens the breaker, what
    /// keys suffered is forgiven (it was not theirs).
    fn note_upstream_failure(&self) {
        if self.breaker.failure() {
            self.scheduler.forgive_connect_failures();
        }
    }
}
