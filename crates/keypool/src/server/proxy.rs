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
use super::inspect::{inspect, with_include_usage, with_model};
use super::metered::{Expect, Metered};
use super::upload::{watch_upload, Sent};
use super::AppState;
use crate::config::models::ModelPrice;
use crate::config::AuthMode;
use crate::records::error_type;
use crate::routing::{Candidate, Plan, Pool, PoolSet};
use crate::scheduler::{Charged, KeyLease, NoKey, Outcome, Verdict};
use crate::tenants::{Limits, Need, Tenant, TokenSettings};
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
    let client = super::client::real_client(peer, req.headers(), app.config.forwarded_for_from());
    // A request without a live token is charged to no one and leaves no
    // record: a flood of them must not fill the log (nor its buffer).
    let tenant = match app.config.auth {
        AuthMode::Token => match app.tokens.check(req.headers()) {
            Ok(tenant) => Some(tenant),
            Err(e) => {
                crate::metrics::request_refused("token");
                super::auth::log_refusal(&e, client);
                return e.into_response();
            }
        },
        AuthMode::None => None,
    };
    // A token disabled, expired or used from outside its networks is refused
    // like a wrong one: counted, logged within bounds, never recorded.
    // The token's limits as they are now (an edit applies to later
    // requests), and its settings when it has lists of models or networks
    // to check (otherwise they are not read: with many tenants, each line
    // read is a cache miss).
    let (limits, lists) = tenant.as_ref().map(|t| t.scope()).map_or((None, None), |(l, s)| (Some(l), s));
    if let Some(refused) = limits
        .as_ref()
        .and_then(|l| crate::tenants::scope_refusal(l, lists.as_deref(), crate::store::now_unix(), client))
    {
        crate::metrics::request_refused("token");
        let e = ApiError::from_scope(refused, client);
        super::auth::log_refusal(&e, client);
        return e.into_response();
    }
    let (parts, body) = req.into_parts();
    let mut ctx = Box::new(RequestContext::begin(app.recorder.clone(), &parts, client, started));
    if let Some(tenant) = &tenant {
        ctx.set_token(super::TokenId(tenant.id()));
    }
    let mut slot = Some(ctx);
    let id = slot.as_deref().and_then(RequestContext::request_id_header);
    // The upstream the request went to last (none before any).
    let mut pool: Option<Arc<Pool>> = None;
    let caller = Caller { tenant: tenant.as_ref(), limits, lists: lists.as_deref() };
    let mut response = match handle(&app, parts, body, started, caller, &mut slot, &mut pool).await {
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
        stamp(&app, pool.as_deref(), response.headers_mut(), &ctx);
        ctx.end_as(response.status().as_u16());
    }
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

/// The refusal of `model` for a token limited to `scope`'s models.
fn not_allowed(scope: &TokenSettings, model: &str) -> ApiError {
    crate::metrics::request_refused("token");
    ApiError::ModelNotAllowed {
        model: model.to_owned(),
        allowed: scope.models.as_deref().unwrap_or_default().join(", "),
    }
}

/// The models an alias (or a name) is served as, by the plan for it.
fn plan_targets(set: &PoolSet, model: &str) -> Vec<Arc<str>> {
    set.plan(Some(model)).map(|p| p.candidates().filter_map(|c| c.model.clone()).collect()).unwrap_or_default()
}

/// POST endpoints (the path after `/v1/`) that use no model, which a
/// token limited to some models may still call: files and uploads, vector
/// stores, messages of a thread, and cancelling. A batch (whose models are
/// inside its file) or a run (its assistant's model) is not among them.
fn uses_no_model(rest: &str) -> bool {
    let rest = rest.trim_end_matches('/');
    let first = rest.split('/').next().unwrap_or_default();
    matches!(first, "files" | "uploads" | "vector_stores")
        || rest.ends_with("/cancel")
        || (first == "threads" && rest.ends_with("/messages"))
}

/// Who sent a request: its token's tenant (none when `auth = "none"`),
/// with its limits (and lists) read once for the whole request.
#[derive(Clone, Copy)]
struct Caller<'a> {
    tenant: Option<&'a Arc<Tenant>>,
    limits: Option<Limits>,
    /// The token's settings, when it has lists of models or networks.
    lists: Option<&'a TokenSettings>,
}

async fn handle(
    app: &Arc<AppState>,
    parts: http::request::Parts,
    body: Body,
    started: Instant,
    caller: Caller<'_>,
    slot: &mut Option<Box<RequestContext>>,
    pool_used: &mut Option<Arc<Pool>>,
) -> Result<Response, ApiError> {
    // Read once in `proxy`: an edit applies to later requests.
    let models_scope = caller.lists.filter(|s| s.models.is_some());
    // The upstreams as configured now: a reload changes them for later requests only.
    let set = app.pools.load();
    let clients = app.clients_for(&set)?;
    let rest = parts.uri.path().strip_prefix("/v1").unwrap_or_default().trim_start_matches('/').to_owned();
    let query = parts.uri.query();
    // Every upstream's base applies the same rule for dot segments; the
    // default's tells before the body is read.
    clients.get(0).url_for(&rest, query).ok_or_else(|| ApiError::BadPath(parts.uri.path().to_owned()))?;
    if parts.method == http::Method::GET && super::billing::answered_here(&rest) {
        return super::billing::answer(app, &rest, query, caller.tenant).await;
    }
    if let (Some(scope), true) = (models_scope, parts.method == http::Method::GET) {
        if let Some(id) = rest.strip_prefix("models/").filter(|id| !id.is_empty()) {
            let targets = plan_targets(&set, id);
            if !scope.allows_model(id, &targets.iter().map(|t| &**t).collect::<Vec<&str>>()) {
                return Err(not_allowed(scope, id));
            }
        }
    }
    if parts.method == http::Method::GET
        && rest.trim_end_matches('/') == "models"
        && (super::models::answered_here(&set) || models_scope.is_some())
    {
        return Ok(super::models::list(app, &set, &clients, models_scope).await);
    }
    let exact = set.all().iter().any(|p| p.scheduler.counts_tokens()) || !app.config.prices.is_empty();
    // A form's model routes it only where there is a choice to make, or
    // where it goes into the path (an Azure deployment's).
    let forms_routed = models_scope.is_some()
        || set.all().len() > 1
        || set
            .all()
            .iter()
            .any(|p| p.upstream.kind == crate::config::UpstreamKind::Azure && p.upstream.api_version.is_some());
    let inspected = inspect(&parts, body, &rest, app.config.max_body_bytes, exact, forms_routed).await?;
    if let crate::upstream::OutBody::Bytes(bytes) = &inspected.body {
        ctx!(slot, request_body, bytes);
    }
    let shape = inspected.shape;
    // A form's model is routed by, but not rewritten (the form streams
    // through as it came): an alias named in a form is no model here.
    let form_model = inspected.form_model.filter(|m| !set.aliases().any(|a| a == m));
    let model = shape.as_ref().and_then(|s| s.model.clone()).or(form_model);
    ctx!(
        slot,
        set_request,
        model.as_deref(),
        shape.as_ref().is_some_and(|s| s.stream),
        shape.as_ref().and_then(|s| s.user.as_deref())
    );
    let plan = set.plan(model.as_deref())?;
    if let Some(scope) = models_scope {
        match model.as_deref() {
            Some(m) => {
                let targets: Vec<&str> = plan.candidates().filter_map(|c| c.model.as_deref()).collect();
                if !scope.allows_model(m, &targets) {
                    return Err(not_allowed(scope, m));
                }
            }
            // A request that names no model cannot be held to the list: only
            // those that use no model pass (files, uploads, vector stores,
            // reading and cancelling).
            None if parts.method == http::Method::POST && !uses_no_model(&rest) => {
                crate::metrics::request_refused("token");
                return Err(ApiError::ModelNotNamed {
                    allowed: scope.models.as_deref().unwrap_or_default().join(", "),
                });
            }
            None => {}
        }
    }
    // An object an earlier request created lives on the key that created it.
    let named = crate::routing::affinity::named_in_path(&rest)
        .map(str::to_owned)
        .or_else(|| shape.as_ref().and_then(|s| s.refers_to.clone()));
    let pinned = match &named {
        Some(id) => pinned_key(app, &set, &plan, id, model.as_deref()).await,
        None => None,
    };
    let single = match &pinned {
        Some((candidate, _)) => Some(candidate.clone()),
        None => plan.single().cloned(),
    };
    let route = Route { set: &set, plan: &plan, single, caller_model: model.as_deref() };
    let creates = crate::routing::affinity::creates_objects(&parts.method, &rest);
    let first = route.single.clone().or_else(|| plan.candidates().next().cloned());
    let first_pool = first.as_ref().and_then(|c| set.all().get(c.pool)).unwrap_or_else(|| &set.all()[0]);
    *pool_used = Some(Arc::clone(first_pool));
    let expect = Expect {
        protocol: keypool_sse::StreamProtocol::for_path(&rest),
        prompt_tokens: shape.as_ref().map_or(0, |s| s.prompt_tokens),
    };
    let Outgoing { mut body, replay, edited, upload } = outgoing(inspected.body, shape.as_ref(), &rest);
    let policy = &app.config.retry;
    // The whole request's deadline: the model's, else the first upstream's, else the global one.
    let deadline = started + app.config.deadline_via(Some(&first_pool.upstream.timeouts), model.as_deref());
    // Keys known not to serve this model are tried last.
    let aside: Vec<i64> = route.set_aside_keys();
    let mut avoid = aside.clone();
    // Keys only another key can improve on (after such a failure, with the
    // set-aside ones): never tried again while another key can serve at all.
    // Pinned to its object's key: every other key of that upstream.
    let mut exclude: Vec<i64> = match &pinned {
        Some((c, _)) => set.get(c.pool).map(|p| p.scheduler.key_ids()).unwrap_or_default(),
        None => Vec::new(),
    };
    if let Some((_, key)) = &pinned {
        exclude.retain(|id| id != key);
    }
    // Upstreams that failed this request (failing, or without the model):
    // the next group serves while another can.
    let mut skip: Vec<usize> = route.all_set_aside();
    let mut tried: Vec<i64> = Vec::new();
    // Keys refused in words that may be theirs: on trial if another key is served.
    let mut refused: Vec<(usize, i64)> = Vec::new();
    let mut attempts = 0u32;
    let mut timeouts_retried = 0u32;
    let mut last: Option<Failed> = None;
    // A lease kept for the next attempt (the same key sent the caller's own body).
    let mut held: Option<(Candidate, KeyLease)> = None;
    // The token's own limits and budget first: its wait and the pool's are one `max_wait`.
    let mut waiting_since: Option<Instant> = None;
    // Its place in the fair queue.
    let who = crate::scheduler::Who {
        tenant: caller.tenant.map_or(0, |t| t.id()),
        priority: caller.limits.map_or(0, |l| l.priority),
    };
    if let Some(tenant) = caller.tenant.filter(|_| caller.limits.is_some_and(|l| l.counts)) {
        let demand = match &first {
            Some(c) => app.demand(&first_pool.scheduler, shape.as_ref(), route.price_of(app, c)),
            None => crate::scheduler::Demand::default(),
        };
        // The token's TPM counts what the docs say (the prompt and the completion
        // allowance), not the upstream's admission charge the scheduler estimates.
        let tokens = shape
            .as_ref()
            .map_or(0, |s| s.prompt_tokens.saturating_add(s.completion_budget(app.config.limits.default_max_tokens)));
        let need = Need { tokens, cost_micros: demand.cost_micros };
        let began = Instant::now();
        let wait_until = (began + first_pool.scheduler.max_wait()).min(deadline);
        ctx!(slot, queue);
        let admitted = tenant.admit(need, wait_until, app.config.pool.max_queue).await;
        ctx!(slot, unqueue);
        match admitted {
            Ok(ticket) => ctx!(slot, hold, ticket),
            Err(refused) => {
                crate::metrics::request_refused("token");
                return Err(refused.into());
            }
        }
        waiting_since = Some(began);
    }
    loop {
        let acquired = match held.take() {
            Some(held) => Ok(held),
            // Again each attempt: a refusal may just have taught the scheduler
            // that the upstream charges more than the first estimate assumed.
            None => {
                ctx!(slot, queue);
                let since = waiting_since.take().unwrap_or_else(Instant::now);
                let acquired = route.choose(app, shape.as_ref(), &avoid, &exclude, &skip, deadline, since, who).await;
                ctx!(slot, unqueue);
                acquired
            }
        };
        let (candidate, mut lease) = match acquired {
            Ok(chosen) => chosen,
            Err(Unserved::Down) => return Err(ApiError::UpstreamDown { attempts }),
            Err(Unserved::NoKey(e)) => {
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
        let Some(pool_arc) = set.all().get(candidate.pool) else {
            return Err(ApiError::Internal("a plan named an upstream that does not exist"));
        };
        *pool_used = Some(Arc::clone(pool_arc));
        let pool: &Pool = pool_arc;
        let client = clients.get(candidate.pool);
        let served_model = candidate.model.as_deref().or(model.as_deref());
        let price = served_model.and_then(|m| app.prices.model_price_of(&app.config, m));
        let timeouts = &app.config.timeouts_via(Some(&pool.upstream.timeouts), served_model);
        if served_model.is_none() && client.needs_model(&rest) {
            return Err(ApiError::InvalidParameter {
                param: "model",
                reason: "is required: it chooses the Azure deployment (in a form, before the file)",
            });
        }
        if served_model.is_some_and(|m| !client.model_fits_url(m)) {
            return Err(ApiError::InvalidParameter { param: "model", reason: "cannot name an Azure deployment" });
        }
        let url =
            client.url_to(&rest, query, served_model).ok_or_else(|| ApiError::BadPath(parts.uri.path().to_owned()))?;
        attempts += 1;
        let key_id = lease.key_id();
        if !tried.contains(&key_id) {
            tried.push(key_id);
        }
        // This upstream's body: with `stream_options` added when it takes
        // them, and an alias's model (or an Azure v1 deployment) written in.
        let body_model = served_model.and_then(|m| client.body_model(m)).or(candidate.model.as_deref());
        let strip_usage = edited.is_some() && pool.stream_usage && !pool.quirks.refuses_stream_options();
        let out = match (&replay, body.take()) {
            (Some(caller), _) => {
                let bytes = match (&edited, strip_usage) {
                    (Some(edited), true) => edited.clone(),
                    _ => caller.clone(),
                };
                match body_model {
                    Some(m) => OutBody::Bytes(with_model(&bytes, m).unwrap_or(bytes)),
                    None => OutBody::Bytes(bytes),
                }
            }
            (None, Some(b)) => b,
            (None, None) => return Err(ApiError::Internal("a streamed body cannot be sent twice")),
        };
        lease.mark_sent();
        ctx!(slot, attempt_sent, key_id);
        let sending = client.send(
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
                tracing::warn!(
                    key_id,
                    attempt = attempts,
                    upstream = pool.name(),
                    "no answer within the first-byte timeout"
                );
                let counted = lease.finish(Outcome { verdict: Verdict::UpstreamError, ..Outcome::default() });
                ctx!(slot, counted, counted);
                note_upstream_failure(pool);
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
                tracing::warn!(key_id, attempt = attempts, upstream = pool.name(), error = %e, "upstream request failed");
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
                note_upstream_failure(pool);
                let why = match e {
                    UpstreamError::Connect(why) | UpstreamError::Request(why) => Some(why),
                    _ => None,
                };
                Failed::Network { timed_out: false, why }
            }
            Sending::Answered(Ok(upstream)) => {
                ctx!(slot, answered, upstream.headers());
                let reading =
                    Reading { idle: timeouts.idle, end: started + timeouts.total, expect, price, strip_usage, creates };
                match answer(app, pool, slot, upstream, lease, reading).await {
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
                                pool.quirks.note_status(response.status(), &url);
                                if response.status().is_success() {
                                    // Another key was served where these were refused: the
                                    // refusals may be theirs, so they go on trial.
                                    for (at, id) in refused.drain(..) {
                                        if let Some(p) = set.get(at) {
                                            p.scheduler.suspect(id);
                                        }
                                    }
                                }
                                return Ok(response);
                            }
                            Err(failed) => {
                                pool.scheduler.judge(key_id, Verdict::Invalid);
                                failed
                            }
                        }
                    }
                    Err(Failed::StreamOptions(lease)) => {
                        // The upstream does not know the `stream_options` keypool
                        // added: the caller's own body, unchanged, on the same key
                        // (the quirk noted makes the next attempt send it).
                        pool.quirks.note_refuses_stream_options();
                        // The same reservation is sent again: one request of the key.
                        ctx!(slot, counted, Charged::NOT_SENT);
                        ctx!(slot, attempt_ended, 400, "stream_options_refused");
                        held = Some((candidate, lease));
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
                    if let Some(m) = served_model {
                        pool.scheduler.set_aside_for_model(key_id, m);
                    }
                    // The upstream says the model does not exist: the next group serves.
                    if !skip.contains(&candidate.pool) {
                        skip.push(candidate.pool);
                    }
                }
                Verdict::Refused if classified.maybe_key => refused.push((candidate.pool, key_id)),
                _ => {}
            }
        }
        if failed.upstream_failing() && !skip.contains(&candidate.pool) {
            // Failing (5xx, no connection, no answer in time): another upstream first.
            skip.push(candidate.pool);
        }
        let timed_out = matches!(failed, Failed::Network { timed_out: true, .. });
        if timed_out {
            timeouts_retried += 1;
        }
        let out_of_time = Instant::now() >= deadline;
        // A refusal only another key can change, when every key that can serve has been tried.
        // (A key's own failure takes it out of the pool: the next lease says what is left.)
        let no_other_key =
            failed.needs_other_key() && !failed.blames_key() && tried.len() >= route.usable_keys().max(1);
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

/// The key that created object `id`, with the candidate of its upstream
/// (the plan's, for an alias's model; else the upstream as it is), when
/// keypool saw the object created and the key still serves here.
async fn pinned_key(
    app: &AppState,
    set: &PoolSet,
    plan: &Plan,
    id: &str,
    model: Option<&str>,
) -> Option<(Candidate, i64)> {
    let key = app.affinity.owner(id).await?;
    let pool = set.all().iter().position(|p| p.scheduler.has_key(key))?;
    let candidate = match plan.candidates().find(|c| c.pool == pool) {
        Some(c) => c.clone(),
        // A model the object's upstream does not serve: the plan decides.
        None if model.is_some() => return None,
        None => Candidate { pool, model: None },
    };
    tracing::debug!(object = id, key_id = key, "the object's key serves the request");
    Some((candidate, key))
}

/// One upstream's wait for a key.
type Waiting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Candidate, KeyLease), NoKey>> + Send + 'a>>;

/// Why no upstream gave a key.
enum Unserved {
    NoKey(NoKey),
    /// Every upstream the request may use is failing, past `max_wait`.
    Down,
}

/// Where one request may go: its plan, and what choosing needs.
struct Route<'a> {
    /// The upstreams the request uses, as configured when it began.
    set: &'a PoolSet,
    plan: &'a Plan,
    /// The plan's only candidate, when it has one (no choosing).
    single: Option<Candidate>,
    caller_model: Option<&'a str>,
}

impl Route<'_> {
    /// Keys of the plan's upstreams set aside for the model each serves.
    fn set_aside_keys(&self) -> Vec<i64> {
        let Some(model) = self.caller_model else { return Vec::new() };
        let mut out = Vec::new();
        for c in self.plan.candidates() {
            if let Some(pool) = self.set.get(c.pool) {
                out.extend(pool.scheduler.set_aside_keys(c.model.as_deref().unwrap_or(model)));
            }
        }
        out
    }

    /// Upstreams (of a plan with several) whose every usable key is set
    /// aside for the model: they said it does not exist, so others go first.
    fn all_set_aside(&self) -> Vec<usize> {
        let (Some(model), None) = (self.caller_model, &self.single) else { return Vec::new() };
        let mut out = Vec::new();
        for c in self.plan.candidates() {
            let Some(pool) = self.set.get(c.pool) else { continue };
            let aside = pool.scheduler.set_aside_keys(c.model.as_deref().unwrap_or(model)).len();
            if aside > 0 && aside >= pool.scheduler.usable_keys() && !out.contains(&c.pool) {
                out.push(c.pool);
            }
        }
        out
    }

    /// The price of the model `c` serves (an alias's target, else the caller's).
    fn price_of(&self, app: &AppState, c: &Candidate) -> Option<crate::config::Price> {
        let model = c.model.as_deref().or(self.caller_model)?;
        app.prices.price_of(&app.config, model)
    }

    /// Keys that can serve at all on the plan's upstreams.
    fn usable_keys(&self) -> usize {
        match &self.single {
            Some(c) => self.set.get(c.pool).map_or(0, |p| p.scheduler.usable_keys()),
            None => self.plan.pools().iter().filter_map(|&i| self.set.get(i)).map(|p| p.scheduler.usable_keys()).sum(),
        }
    }

    /// A key for the next attempt: on the first upstream in the plan's
    /// order with room now (upstreams in `skip` and failing ones last),
    /// else the first of them to free one within `max_wait`. An upstream
    /// whose breaker is open is waited for only when every one is.
    #[allow(clippy::too_many_arguments)]
    async fn choose(
        &self,
        app: &AppState,
        shape: Option<&PromptShape>,
        avoid: &[i64],
        exclude: &[i64],
        skip: &[usize],
        deadline: Instant,
        since: Instant,
        who: crate::scheduler::Who,
    ) -> Result<(Candidate, KeyLease), Unserved> {
        if let Some(c) = &self.single {
            let Some(pool) = self.set.get(c.pool) else { return Err(Unserved::NoKey(NoKey::NoKeys)) };
            wait_for_breaker(app, pool, deadline).await?;
            let demand = app.demand(&pool.scheduler, shape, self.price_of(app, c));
            return match pool.scheduler.acquire_waited(demand, avoid, exclude, since, who).await {
                Ok(lease) => Ok((c.clone(), lease)),
                Err(e) => Err(Unserved::NoKey(e)),
            };
        }
        let mut order = self.plan.order();
        // Upstreams that failed this request, then failing ones, go last (stable).
        order.sort_by_key(|c| {
            let failing = self.set.get(c.pool).is_none_or(|p| p.breaker.is_open());
            (skip.contains(&c.pool), failing)
        });
        let any_open = order.iter().any(|c| answering(self.set, c));
        if !any_open {
            // Every upstream is failing: wait for the first one's breaker, as with one.
            let c = order.first().cloned().ok_or(Unserved::NoKey(NoKey::NoKeys))?;
            if let Some(pool) = self.set.get(c.pool) {
                wait_for_breaker(app, pool, deadline).await?;
            }
        }
        let mut waitable: Vec<(Candidate, crate::scheduler::Demand)> = Vec::new();
        let mut refusals: Vec<NoKey> = Vec::new();
        for c in order.iter().filter(|c| !any_open || answering(self.set, c)) {
            let Some(pool) = self.set.get(c.pool) else { continue };
            let demand = app.demand(&pool.scheduler, shape, self.price_of(app, c));
            match pool.scheduler.try_lease_avoiding(demand, avoid, exclude) {
                Ok(lease) => return Ok((c.clone(), lease)),
                Err(NoKey::Busy { .. }) => waitable.push((c.clone(), demand)),
                Err(e) => refusals.push(e),
            }
        }
        if waitable.is_empty() {
            return Err(Unserved::NoKey(merge_refusals(self.set, &order, refusals)));
        }
        // No upstream has room now: wait on each that may free one; the first wins
        // (the others' places in line are given up, any key granted meanwhile back).
        let mut waits: Vec<Waiting<'_>> = Vec::with_capacity(waitable.len());
        for (c, demand) in waitable {
            let Some(pool) = self.set.get(c.pool) else { continue };
            let scheduler = Arc::clone(&pool.scheduler);
            waits.push(Box::pin(async move {
                scheduler.acquire_waited(demand, avoid, exclude, since, who).await.map(|lease| (c, lease))
            }));
        }
        if waits.is_empty() {
            return Err(Unserved::NoKey(NoKey::NoKeys));
        }
        futures_util::future::select_ok(waits).await.map(|(won, _)| won).map_err(Unserved::NoKey)
    }
}

/// Whether `c`'s upstream is answering (its breaker closed).
fn answering(set: &PoolSet, c: &Candidate) -> bool {
    set.get(c.pool).is_some_and(|p| !p.breaker.is_open())
}

/// Why no upstream can serve, from each one's refusal: keys counted over
/// all of them when some exist, else the first refusal.
fn merge_refusals(set: &PoolSet, order: &[Candidate], refusals: Vec<NoKey>) -> NoKey {
    if refusals.iter().any(|e| matches!(e, NoKey::Unusable(_))) {
        let mut counts = crate::scheduler::KeyCounts::default();
        let mut seen = Vec::new();
        for c in order {
            if !seen.contains(&c.pool) {
                seen.push(c.pool);
                if let Some(p) = set.get(c.pool) {
                    counts.merge(&p.scheduler.census());
                }
            }
        }
        return NoKey::Unusable(counts);
    }
    refusals.into_iter().find(|e| !matches!(e, NoKey::NoKeys)).unwrap_or(NoKey::NoKeys)
}

/// While `pool`'s breaker is open, waits for it to close, at most
/// `max_wait` and never past `deadline`.
async fn wait_for_breaker(app: &AppState, pool: &Pool, deadline: Instant) -> Result<(), Unserved> {
    if !pool.breaker.is_open() {
        return Ok(());
    }
    let until = deadline.min(Instant::now() + app.config.pool.max_wait);
    if pool.breaker.wait_closed(until).await {
        Ok(())
    } else {
        Err(Unserved::Down)
    }
}

/// What goes upstream, and what is kept to send it again.
struct Outgoing {
    /// The first attempt's body when it streams (an upload, sent once).
    body: Option<OutBody>,
    /// The caller's body held in memory, sent again on a retry.
    replay: Option<Bytes>,
    /// The caller's body with `stream_options.include_usage` added, for
    /// upstreams that take it: keypool then hides the usage from the caller.
    edited: Option<Bytes>,
    /// An upload's progress, watched so its slowness is never blamed on the upstream.
    upload: Option<tokio::sync::watch::Receiver<Sent>>,
}

/// Prepares the body: a stream whose caller did not ask for usage asks for
/// it anyway where the upstream takes it (keypool needs it to account
/// tokens and spend; it is hidden from the caller); an upload is watched.
fn outgoing(body: OutBody, shape: Option<&PromptShape>, rest: &str) -> Outgoing {
    match body {
        OutBody::Stream(s) => {
            let (watched, rx) = watch_upload(s);
            Outgoing { body: Some(OutBody::Stream(watched)), replay: None, edited: None, upload: Some(rx) }
        }
        OutBody::Bytes(bytes) => {
            let wants = shape.is_some_and(|s| s.stream && s.include_usage != Some(true)) && reports_stream_usage(rest);
            let edited = if wants { with_include_usage(&bytes) } else { None };
            Outgoing { body: None, replay: Some(bytes), edited, upload: None }
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
    /// The request creates an object whose id is remembered with its key.
    creates: bool,
}

/// An answer arrived: stream it to the caller, pass a caller's error through
/// unchanged, or report a failure the policy retries.
async fn answer(
    app: &AppState,
    pool: &Pool,
    slot: &mut Option<Box<RequestContext>>,
    upstream: Answer,
    lease: KeyLease,
    reading: Reading,
) -> Result<Response, Failed> {
    let Reading { idle, end, expect, price, strip_usage, creates } = reading;
    let status = upstream.status();
    lease.observe(&rate_info(upstream.headers()), status.is_success());
    tracing::debug!(key_id = lease.key_id(), %status, "upstream answered");
    let mut headers = HeaderMap::with_capacity(upstream.headers().len());
    copy_response_headers(upstream.headers(), &mut headers);
    if status.is_server_error() {
        note_upstream_failure(pool);
    } else {
        pool.breaker.success();
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
    if creates {
        metered = metered.objects(Arc::clone(&app.affinity));
    }
    // The body ends the request now: when it ends, or when the caller leaves.
    if let Some(mut c) = slot.take() {
        c.attempt_ended(status.as_u16(), "ok");
        c.status(status.as_u16());
        stamp(app, Some(pool), &mut headers, &c);
        metered = metered.context(c);
    }
    Ok(respond(status, headers, Body::from_stream(metered)))
}

/// Adds what the request did to its answer's head (see [`headers`]): the
/// rate limits are those of `pool` (the upstream that answered, else the
/// first the request could use; none: the default upstream's).
fn stamp(app: &AppState, pool: Option<&Pool>, out: &mut HeaderMap, ctx: &RequestContext) {
    let settings = &app.config.headers;
    let set;
    let pool = match pool {
        Some(p) => p,
        None => {
            set = app.pools.load();
            set.default_pool()
        }
    };
    let scheduler = &pool.scheduler;
    let view = (!settings.upstream_ratelimit).then(|| {
        let view = scheduler.pool_rates();
        // Keys set aside for the model cannot serve it: not the caller's room.
        match ctx.model().map(|m| scheduler.set_aside_keys(m)) {
            Some(aside) if !aside.is_empty() => Arc::new(view.without(&aside)),
            _ => view,
        }
    });
    headers::decorate(out, settings, &ctx.head_facts(), view.as_ref());
}

fn respond(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Counts a failure of the upstream's kind; if it opens the breaker, what
/// keys suffered is forgiven (it was not theirs).
fn note_upstream_failure(pool: &Pool) {
    if pool.breaker.failure() {
        pool.scheduler.forgive_connect_failures();
    }
}
