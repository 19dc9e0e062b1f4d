//! The pass-through handler for everything under `/v1/`.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use keypool_sse::{BodyKind, UsageTap};

use super::error::ApiError;
use super::inspect::inspect;
use super::AppState;
use crate::config::AuthMode;
use crate::scheduler::{KeyLease, Outcome};
use crate::tokens;
use crate::upstream::{cooldown_from, copy_response_headers};

pub async fn proxy(State(app): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    if app.auth == AuthMode::Token {
        app.tokens.check(req.headers())?;
    }
    let (parts, body) = req.into_parts();
    let rest = parts
        .uri
        .path()
        .strip_prefix("/v1")
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    let inspected = inspect(&parts, body, &rest, app.max_body_bytes).await?;
    let cost = inspected
        .shape
        .as_ref()
        .map_or(1, |s| tokens::request_tokens(s, app.default_max_tokens));
    let lease = app.scheduler.lease(cost)?;
    let url = app.upstream.url_for(&rest, parts.uri.query());
    let sent = app
        .upstream
        .send(
            parts.method.clone(),
            url,
            &parts.headers,
            lease.key_id(),
            lease.secret(),
            inspected.body,
        )
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(_) if inspected.overflowed.load(Ordering::Relaxed) => {
            // The upload never completed, so the upstream did not count it.
            return Err(ApiError::BodyTooLarge {
                limit: app.max_body_bytes,
            });
        }
        Err(e) => {
            tracing::warn!(key_id = lease.key_id(), error = %e, "upstream request failed");
            lease.finish(Outcome::default());
            return Err(e.into());
        }
    };
    let status = upstream.status();
    tracing::debug!(key_id = lease.key_id(), %status, path = %parts.uri.path(), "upstream answered");
    let cool_for =
        (status == StatusCode::TOO_MANY_REQUESTS).then(|| cooldown_from(upstream.headers()));
    if let Some(cool) = cool_for {
        tracing::info!(key_id = lease.key_id(), cool_for = ?cool, "upstream rate-limited a key; it rests until its reset");
    }
    let mut headers = HeaderMap::with_capacity(upstream.headers().len());
    copy_response_headers(upstream.headers(), &mut headers);
    let kind = BodyKind::from_content_type(
        upstream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
    );
    let metered = Metered {
        inner: upstream.bytes_stream().boxed(),
        tap: UsageTap::new(kind),
        lease: Some(lease),
        success: status.is_success(),
        cool_for,
    };
    let mut response = Response::new(Body::from_stream(metered));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The upstream's body on its way to the caller: each chunk is forwarded as
/// it arrives (never buffered whole) while the tap reads usage from it; the
/// key's lease is finished when the body ends, or released if the caller
/// goes away first (the lease's drop).
struct Metered {
    inner: ByteStream,
    tap: UsageTap,
    lease: Option<KeyLease>,
    success: bool,
    cool_for: Option<Duration>,
}

impl Metered {
    fn finish(&mut self, delivered: bool) {
        if let Some(lease) = self.lease.take() {
            let usage = self.tap.finish().usage;
            lease.finish(Outcome {
                success: self.success && delivered,
                usage,
                cool_for: self.cool_for,
            });
        }
    }
}

impl Stream for Metered {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.tap.feed(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream body failed part-way");
                this.finish(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
