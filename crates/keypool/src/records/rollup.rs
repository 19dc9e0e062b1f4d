//! Rollups: what a batch of records adds to the per-key, per-token and
//! per-model statistics, by minute, hour and day. Summed in memory per
//! batch, then added to the `rollups` table in the batch's transaction
//! (`store::rollups`), so statistics never scan the request log.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Counted, RequestRecord};
use crate::store::TokenUsage;

/// Whose statistics a rollup row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Key,
    Token,
    Model,
}

impl Dimension {
    pub const ALL: [Dimension; 3] = [Dimension::Key, Dimension::Token, Dimension::Model];

    /// As stored in `rollups.dimension`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Key => "key",
            Dimension::Token => "token",
            Dimension::Model => "model",
        }
    }
}

/// How long a rollup row's bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Span {
    Minute,
    Hour,
    Day,
}

impl Span {
    pub const ALL: [Span; 3] = [Span::Minute, Span::Hour, Span::Day];

    /// As stored in `rollups.span`.
    pub fn as_str(self) -> &'static str {
        match self {
            Span::Minute => "minute",
            Span::Hour => "hour",
            Span::Day => "day",
        }
    }
}

/// Upper bounds of the latency histogram's buckets, µs (the last bucket
/// holds everything slower than 30 s).
pub const LATENCY_BOUNDS_US: [u64; 9] =
    [50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000];

/// Failed requests by kind, in the order of the `errors_*` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's own request (4xx other than 429).
    Caller,
    /// 429: a key's rate limit, or no key with room in time.
    RateLimited,
    /// A key refused as invalid or out of balance.
    Key,
    /// No answer in time.
    Timeout,
    /// The upstream failed (5xx, a broken connection or stream).
    Upstream,
    /// keypool's own: no key could serve, or it was stopping.
    Gateway,
    /// The caller went away first.
    Cancelled,
}

impl ErrorKind {
    /// The kind of a failed request, from its final status and error type;
    /// `None` for a success.
    pub fn of_request(r: &RequestRecord) -> Option<ErrorKind> {
        if r.cancelled {
            return Some(ErrorKind::Cancelled);
        }
        let failed = !(200..300).contains(&r.status) || r.error_type.is_some();
        if !failed {
            return None;
        }
        let why = r.error_type.as_deref().unwrap_or("");
        Some(match r.status {
            429 => ErrorKind::RateLimited,
            408 | 504 => ErrorKind::Timeout,
            _ if why.contains("timeout") => ErrorKind::Timeout,
            _ if why == "invalid_key" || why == "exhausted_key" => ErrorKind::Key,
            400..=499 => ErrorKind::Caller,
            // Failed without reaching any upstream: keypool's own answer.
            _ if r.attempts.is_empty() => ErrorKind::Gateway,
            _ if why == super::error_type::SHUTTING_DOWN => ErrorKind::Gateway,
            _ => ErrorKind::Upstream,
        })
    }

    /// The kind of one failed attempt, from its reason (see
    /// `server::attempt`); `None` for one that answered well.
    fn of_attempt(status: u16, reason: &str, counted: Counted) -> Option<ErrorKind> {
        match reason {
            "ok" if counted == Counted::Success => None,
            "ok" if (200..300).contains(&status) => Some(ErrorKind::Upstream),
            "rate_limited" => Some(ErrorKind::RateLimited),
            "timeout" => Some(ErrorKind::Timeout),
            "invalid_key" | "exhausted_key" => Some(ErrorKind::Key),
            _ if (400..500).contains(&status) && status != 429 => Some(ErrorKind::Caller),
            _ => Some(ErrorKind::Upstream),
        }
    }
}

/// One rollup row's figures (all added up; tokens, µs and micro-USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rollup {
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    /// Failed requests by kind: caller, rate_limited, key, timeout, upstream, gateway, cancelled.
    pub errors: Errors,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_micros: u64,
    /// Requests that got an answer head (the count behind `ttfb_us_sum`).
    pub answered: u64,
    pub duration_us_sum: u64,
    pub ttfb_us_sum: u64,
    pub queue_wait_us_sum: u64,
    /// Requests by duration: at most 50 ms, 100 ms, 250 ms, 500 ms, 1 s,
    /// 2.5 s, 5 s, 10 s, 30 s, and slower ([`LATENCY_BOUNDS_US`]).
    pub latency: [u64; 10],
}

/// Failed requests by [`ErrorKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    pub caller: u64,
    pub rate_limited: u64,
    pub key: u64,
    pub timeout: u64,
    pub upstream: u64,
    pub gateway: u64,
    pub cancelled: u64,
}

impl Errors {
    fn count(&mut self, kind: ErrorKind) {
        let slot = match kind {
            ErrorKind::Caller => &mut self.caller,
            ErrorKind::RateLimited => &mut self.rate_limited,
            ErrorKind::Key => &mut self.key,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Upstream => &mut self.upstream,
            ErrorKind::Gateway => &mut self.gateway,
            ErrorKind::Cancelled => &mut self.cancelled,
        };
        *slot += 1;
    }

    /// In the `errors_*` columns' order.
    pub fn as_array(&self) -> [u64; 7] {
        [self.caller, self.rate_limited, self.key, self.timeout, self.upstream, self.gateway, self.cancelled]
    }

    pub fn from_array(a: [u64; 7]) -> Errors {
        let [caller, rate_limited, key, timeout, upstream, gateway, cancelled] = a;
        Errors { caller, rate_limited, key, timeout, upstream, gateway, cancelled }
    }

    pub fn total(&self) -> u64 {
        self.as_array().iter().sum()
    }
}

impl Rollup {
    /// Adds `other` (saturating: a garbage figure must not wrap).
    pub fn add(&mut self, o: &Rollup) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.requests, o.requests);
        add(&mut self.successes, o.successes);
        add(&mut self.failures, o.failures);
        let mut e = self.errors.as_array();
        for (a, b) in e.iter_mut().zip(o.errors.as_array()) {
            add(a, b);
        }
        self.errors = Errors::from_array(e);
        add(&mut self.prompt_tokens, o.prompt_tokens);
        add(&mut self.completion_tokens, o.completion_tokens);
        add(&mut self.cached_tokens, o.cached_tokens);
        add(&mut self.reasoning_tokens, o.reasoning_tokens);
        add(&mut self.cost_micros, o.cost_micros);
        add(&mut self.answered, o.answered);
        add(&mut self.duration_us_sum, o.duration_us_sum);
        add(&mut self.ttfb_us_sum, o.ttfb_us_sum);
        add(&mut self.queue_wait_us_sum, o.queue_wait_us_sum);
        for (a, b) in self.latency.iter_mut().zip(o.latency) {
            add(a, b);
        }
    }

    /// The request's usage, spend and timing.
    fn answer(&mut self, r: &RequestRecord) {
        let add = |a: &mut u64, b: Option<u64>| *a = a.saturating_add(b.unwrap_or(0));
        add(&mut self.prompt_tokens, r.prompt_tokens);
        add(&mut self.completion_tokens, r.completion_tokens);
        add(&mut self.cached_tokens, r.cached_tokens);
        add(&mut self.reasoning_tokens, r.reasoning_tokens);
        add(&mut self.cost_micros, r.cost_micros);
        if let Some(t) = r.ttfb_us {
            self.answered += 1;
            self.ttfb_us_sum = self.ttfb_us_sum.saturating_add(t);
        }
        self.duration_us_sum = self.duration_us_sum.saturating_add(r.duration_us);
        self.queue_wait_us_sum = self.queue_wait_us_sum.saturating_add(r.queue_wait_us);
        let at = LATENCY_BOUNDS_US.iter().position(|b| r.duration_us <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[at] += 1;
    }

    /// The p-quantile (0.0–1.0) of the duration, as the upper bound of the
    /// histogram bucket it falls in, µs; `None` with no requests or when it
    /// falls in the open last bucket.
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENCY_BOUNDS_US.get(i).copied();
            }
        }
        None
    }
}

/// A rollup row's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    pub dimension: Dimension,
    pub span: Span,
    /// The bucket's start, Unix seconds.
    pub bucket: i64,
    /// The key's or token's id, or the model ('' for none).
    pub subject: String,
}

/// Where hours and days begin: the configured time zone (`time_zone`).
#[derive(Debug)]
pub struct Buckets {
    tz: jiff::tz::TimeZone,
    /// The last hour and day looked up, [start, end) in Unix seconds: a
    /// batch's records nearly all fall in the same ones.
    hour: Memo,
    day: Memo,
}

/// A [start, end) range remembered (a lock no one else ever waits on: the
/// writer's task alone uses it, but it is shared by reference across awaits).
type Memo = std::sync::Mutex<(i64, i64)>;

impl Clone for Buckets {
    fn clone(&self) -> Buckets {
        Buckets::new(self.tz.clone())
    }
}

impl Buckets {
    pub fn new(tz: jiff::tz::TimeZone) -> Buckets {
        Buckets { tz, hour: Memo::default(), day: Memo::default() }
    }

    /// UTC.
    pub fn utc() -> Buckets {
        Buckets::new(jiff::tz::TimeZone::UTC)
    }

    /// The time zone hours and days begin in.
    pub fn time_zone(&self) -> &jiff::tz::TimeZone {
        &self.tz
    }

    /// The start of the `span` bucket holding `second` (Unix seconds).
    pub fn start(&self, span: Span, second: i64) -> i64 {
        match span {
            Span::Minute => second.div_euclid(60) * 60,
            Span::Hour => self.cached(&self.hour, second, Self::hour_of),
            Span::Day => self.cached(&self.day, second, Self::day_of),
        }
    }

    /// The [start, end) of the hour or day holding `second`: found once
    /// per hour or day and reused. A time the zone cannot place (out of
    /// range) falls back to UTC's hour.
    fn cached(&self, cell: &Memo, second: i64, find: fn(&jiff::Zoned) -> Option<(jiff::Zoned, jiff::Zoned)>) -> i64 {
        let mut memo = cell.lock().unwrap_or_else(|p| p.into_inner());
        let (start, end) = *memo;
        if start <= second && second < end {
            return start;
        }
        let found = jiff::Timestamp::from_second(second).ok().and_then(|t| find(&t.to_zoned(self.tz.clone())));
        match found {
            Some((s, e)) => {
                let range = (s.timestamp().as_second(), e.timestamp().as_second());
                *memo = range;
                range.0
            }
            None => second.div_euclid(3600) * 3600,
        }
    }

    fn day_of(at: &jiff::Zoned) -> Option<(jiff::Zoned, jiff::Zoned)> {
        let start = at.start_of_day().ok()?;
        let end = start.tomorrow().ok()?.start_of_day().ok()?;
        Some((start, end))
    }

    /// The local wall-clock hour (zones at :30 or :45 offsets start their
    /// hours there).
    fn hour_of(at: &jiff::Zoned) -> Option<(jiff::Zoned, jiff::Zoned)> {
        let start = at.with().minute(0).second(0).subsec_nanosecond(0).build().ok()?;
        let end = start.checked_add(jiff::SignedDuration::from_hours(1)).ok()?;
        (start.timestamp() <= at.timestamp() && at.timestamp() < end.timestamp()).then_some((start, end))
    }
}

/// Whose row: an id, a name borrowed from the record, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who<'a> {
    Id(i64),
    Name(&'a str),
    Nobody,
}

/// [`Who`], owned: kept from one batch to the next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Id(i64),
    Name(Box<str>),
    Nobody,
}

impl Subject {
    fn of(who: Who<'_>) -> Subject {
        match who {
            Who::Id(id) => Subject::Id(id),
            Who::Name(name) => Subject::Name(name.into()),
            Who::Nobody => Subject::Nobody,
        }
    }

    /// As stored in `rollups.subject`.
    fn text(&self) -> String {
        match self {
            Subject::Id(id) => id.to_string(),
            Subject::Name(name) => name.to_string(),
            Subject::Nobody => String::new(),
        }
    }
}

/// What the writer adds to the store besides the records themselves and
/// their keys' totals: the rollup rows, and each gateway token's totals.
/// Both are summed in memory over up to [`super::writer::ROLLUP_EVERY`]
/// ([`super::writer::ROLLUP_EVERY_MANY`] while they are many rows): with a
/// thousand tenants, every batch touched hundreds of token rows, and
/// writing them every second or few rather than with each batch is what
/// keeps their cost out of the request path's way (docs/benchmarks.md,
/// issue 17).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sums {
    pub rollups: BTreeMap<RollupKey, Rollup>,
    /// By token id, in id order (so writers sharing a PostgreSQL database
    /// lock the rows in the same order).
    pub tokens: BTreeMap<i64, TokenUsage>,
}

impl Sums {
    /// What `records` add (their rollups in `buckets`' days, their tokens' totals).
    pub fn of(records: &[RequestRecord], buckets: &Buckets) -> Sums {
        MinuteSums::of(records).spread(buckets)
    }

    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty() && self.tokens.is_empty()
    }

    /// Rows to write: rollup rows and token totals.
    pub fn rows(&self) -> usize {
        self.rollups.len() + self.tokens.len()
    }

    /// Adds `other` to these sums.
    pub fn add(&mut self, other: &Sums) {
        for (k, r) in &other.rollups {
            self.rollups.entry(k.clone()).or_default().add(r);
        }
        for (id, d) in &other.tokens {
            add_usage(self.tokens.entry(*id).or_default(), d);
        }
    }
}

/// Adds `d` to the token totals `t` (saturating).
fn add_usage(t: &mut TokenUsage, d: &TokenUsage) {
    t.requests = t.requests.saturating_add(d.requests);
    t.successes = t.successes.saturating_add(d.successes);
    t.failures = t.failures.saturating_add(d.failures);
    t.prompt_tokens = t.prompt_tokens.saturating_add(d.prompt_tokens);
    t.completion_tokens = t.completion_tokens.saturating_add(d.completion_tokens);
    t.spent_micros = t.spent_micros.saturating_add(d.spent_micros);
    t.last_used_at = t.last_used_at.max(d.last_used_at);
}

/// [`Sums`] as the record writer keeps them between writes: the rollups
/// per minute, not yet spread to their hours and days, keyed by ids rather
/// than text. The writer adds each batch's and spreads them only when it
/// writes them ([`MinuteSums::spread`]): with a thousand tenants, spreading
/// every batch made and compared three thousand rows of text keys a batch,
/// a second of the writer's CPU every 5 s at 7,000 requests a second
/// (docs/benchmarks.md, issue 17).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinuteSums {
    minutes: rustc_hash::FxHashMap<(Dimension, Subject, i64), Rollup>,
    /// By token id.
    pub tokens: BTreeMap<i64, TokenUsage>,
}

impl MinuteSums {
    /// What `records` add (their rollups per minute, their tokens' totals).
    pub fn of(records: &[RequestRecord]) -> MinuteSums {
        let minutes = minutes_of(records).into_iter().map(|((d, who, m), r)| ((d, Subject::of(who), m), r)).collect();
        MinuteSums { minutes, tokens: token_totals(records) }
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.tokens.is_empty()
    }

    /// Rows the store writes for them, at most: each minute's row in its
    /// minute, hour and day (fewer when minutes share an hour), and the
    /// token totals.
    pub fn rows(&self) -> usize {
        self.minutes.len() * Span::ALL.len() + self.tokens.len()
    }

    /// Adds `other` to these sums.
    pub fn add(&mut self, other: MinuteSums) {
        for (k, r) in other.minutes {
            self.minutes.entry(k).or_default().add(&r);
        }
        for (id, d) in &other.tokens {
            add_usage(self.tokens.entry(*id).or_default(), d);
        }
    }

    /// The rows to write: each minute's figures added to its minute, its
    /// hour and its day in `buckets`' time zone (a zone's offset is whole
    /// minutes, so a minute lies in one hour and one day).
    pub fn spread(&self, buckets: &Buckets) -> Sums {
        let mut rollups = BTreeMap::<RollupKey, Rollup>::new();
        for ((dimension, who, minute), figures) in &self.minutes {
            let subject = who.text();
            for span in Span::ALL {
                let key = RollupKey {
                    dimension: *dimension,
                    span,
                    bucket: buckets.start(span, *minute),
                    subject: subject.clone(),
                };
                rollups.entry(key).or_default().add(figures);
            }
        }
        Sums { rollups, tokens: self.tokens.clone() }
    }
}

/// What `records` add to each gateway token's totals, by token id. A
/// request succeeded when it was answered 2xx in full; a caller leaving
/// counts as neither a success nor a failure.
pub fn token_totals(records: &[RequestRecord]) -> BTreeMap<i64, TokenUsage> {
    let mut totals = BTreeMap::<i64, TokenUsage>::new();
    for r in records {
        let Some(id) = r.token_id else { continue };
        let t = totals.entry(id).or_default();
        t.requests += 1;
        if (200..300).contains(&r.status) && r.error_type.is_none() {
            t.successes += 1;
        } else if !r.cancelled {
            t.failures += 1;
        }
        t.prompt_tokens = t.prompt_tokens.saturating_add(r.prompt_tokens.unwrap_or(0));
        t.completion_tokens = t.completion_tokens.saturating_add(r.completion_tokens.unwrap_or(0));
        t.spent_micros = t.spent_micros.saturating_add(r.cost_micros.unwrap_or(0));
        let second = r.started_at.div_euclid(1000);
        t.last_used_at = Some(t.last_used_at.map_or(second, |s| s.max(second)));
    }
    totals
}

/// What `records` add to each rollup row. Per key, each attempt sent
/// counts for its key (as the key's totals count it); usage, spend and
/// latency count for the key that answered (the last attempt sent).
///
/// Summed per minute first ([`MinuteSums`]), then spread to the minute's
/// hour and day: a row per record per span cost the writer 8,000
/// instructions a record.
pub fn rollups(records: &[RequestRecord], buckets: &Buckets) -> BTreeMap<RollupKey, Rollup> {
    MinuteSums::of(records).spread(buckets).rollups
}

/// [`rollups`] per minute, names borrowed from the records.
fn minutes_of(records: &[RequestRecord]) -> rustc_hash::FxHashMap<(Dimension, Who<'_>, i64), Rollup> {
    let mut minutes = rustc_hash::FxHashMap::<(Dimension, Who<'_>, i64), Rollup>::default();
    for r in records {
        let minute = r.started_at.div_euclid(60_000) * 60;
        // Per token and per model: the request.
        let mut whole = Rollup { requests: 1, ..Rollup::default() };
        match ErrorKind::of_request(r) {
            None => whole.successes = 1,
            Some(kind) => {
                if kind != ErrorKind::Cancelled {
                    whole.failures = 1;
                }
                whole.errors.count(kind);
            }
        }
        whole.answer(r);
        let token = r.token_id.map_or(Who::Nobody, Who::Id);
        minutes.entry((Dimension::Token, token, minute)).or_default().add(&whole);
        let model = r.model.as_deref().map_or(Who::Nobody, Who::Name);
        minutes.entry((Dimension::Model, model, minute)).or_default().add(&whole);
        // Per key: each attempt sent.
        let last = r.attempts.iter().rposition(|a| a.counted != Counted::NotSent);
        for (i, a) in r.attempts.iter().enumerate() {
            if a.counted == Counted::NotSent {
                continue;
            }
            let mut one = Rollup { requests: 1, ..Rollup::default() };
            match a.counted {
                Counted::Success => one.successes = 1,
                Counted::Failure => one.failures = 1,
                Counted::Neither | Counted::NotSent => {}
            }
            let kind = if Some(i) == last && r.cancelled {
                Some(ErrorKind::Cancelled)
            } else {
                ErrorKind::of_attempt(a.status, &a.reason, a.counted)
            };
            if let Some(kind) = kind {
                one.errors.count(kind);
            }
            if Some(i) == last {
                one.answer(r);
            }
            minutes.entry((Dimension::Key, Who::Id(a.key_id), minute)).or_default().add(&one);
        }
    }
    minutes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::records::Attempt;

    fn record(at_ms: i64, status: u16, attempts: Vec<Attempt>) -> RequestRecord {
        RequestRecord {
            started_at: at_ms,
            status,
            token_id: Some(7),
            model: Some("gpt-4o".into()),
            key_id: attempts.last().map(|a| a.key_id),
            attempts,
            duration_us: 120_000,
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            cost_micros: Some(30),
            ..RequestRecord::default()
        }
    }

    fn attempt(key_id: i64, status: u16, reason: &'static str, counted: Counted) -> Attempt {
        Attempt { key_id, status, reason: reason.into(), duration_us: 1, counted }
    }

    #[test]
    fn sums_added_together_equal_the_sums_of_all_the_records() {
        let b = Buckets::utc();
        let ok = record(1_700_000_000_123, 200, vec![attempt(1, 200, "ok", Counted::Success)]);
        let failed = record(1_700_000_090_000, 502, vec![attempt(1, 502, "upstream_error", Counted::Failure)]);
        let left = RequestRecord {
            cancelled: true,
            error_type: Some(crate::records::error_type::CANCELLED.into()),
            token_id: Some(8),
            ..ok.clone()
        };
        let all = [ok, failed, left];
        let mut summed = Sums::of(&all[..1], &b);
        summed.add(&Sums::of(&all[1..], &b));
        assert_eq!(summed, Sums::of(&all, &b));
        let seven = summed.tokens[&7];
        assert_eq!((seven.requests, seven.successes, seven.failures, seven.prompt_tokens), (2, 1, 1, 20));
        assert_eq!((seven.spent_micros, seven.last_used_at), (60, Some(1_700_000_090)), "the later second");
        let eight = summed.tokens[&8];
        assert_eq!((eight.requests, eight.successes, eight.failures), (1, 0, 0), "a caller leaving is neither");
    }

    /// The writer's per-minute sums, added batch by batch and spread when
    /// written, are the rows each batch's own spread sums add up to: across
    /// minutes, an hour and a day of a zone at a :30 offset.
    #[test]
    fn minute_sums_spread_when_written_equal_each_batchs_sums_added() {
        let b = Buckets::new(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap());
        // 2023-11-14 21:59 and 22:29 UTC (03:29 and 03:59 on the 15th in
        // Kolkata, one local hour), the second twice in one minute; then
        // 2023-11-15 18:30 UTC, the first second of the 16th in Kolkata.
        let starts = [1_699_999_140_000, 1_700_000_940_500, 1_700_000_959_999, 1_700_073_000_000];
        let batches: Vec<Vec<RequestRecord>> = starts
            .iter()
            .enumerate()
            .map(|(i, &at)| {
                let mut ok = record(at, 200, vec![attempt(1, 200, "ok", Counted::Success)]);
                ok.token_id = Some(i as i64 % 2);
                let failed = record(at + 1, 502, vec![attempt(2, 502, "upstream_error", Counted::Failure)]);
                let other = RequestRecord { model: Some("o3".into()), token_id: None, ..ok.clone() };
                vec![ok, failed, other]
            })
            .collect();
        let (mut minutes, mut sums) = (MinuteSums::default(), Sums::default());
        for batch in &batches {
            minutes.add(MinuteSums::of(batch));
            sums.add(&Sums::of(batch, &b));
        }
        let spread = minutes.spread(&b);
        assert_eq!(spread, sums);
        // Token 0's two requests, by hand: the Kolkata hour from 03:00
        // (21:30 UTC) and the Kolkata day of the 15th (from 18:30 UTC on
        // the 14th).
        let row = |span, bucket| {
            let key = RollupKey { dimension: Dimension::Token, span, bucket, subject: "0".into() };
            spread.rollups.get(&key).map(|r| r.requests)
        };
        assert_eq!(row(Span::Hour, 1_699_997_400), Some(2));
        assert_eq!(row(Span::Day, 1_699_986_600), Some(2));
        assert_eq!(row(Span::Minute, 1_700_000_940), Some(1));
        assert!(minutes.rows() >= spread.rows(), "{} rows at most, {} written", minutes.rows(), spread.rows());
        let days: std::collections::BTreeSet<i64> =
            spread.rollups.keys().filter(|k| k.span == Span::Day).map(|k| k.bucket).collect();
        assert_eq!(days.len(), 2, "two Kolkata days: {days:?}");
    }

    #[test]
    fn a_retried_request_counts_once_per_token_and_model_and_once_per_attempt_per_key() {
        let r = record(
            1_700_000_000_123,
            200,
            vec![attempt(1, 429, "rate_limited", Counted::Failure), attempt(2, 200, "ok", Counted::Success)],
        );
        let b = Buckets::utc();
        let out = rollups(&[r], &b);
        assert_eq!(out.len(), 4 * 3, "token, model and two keys, each by minute, hour and day");
        let get = |d, s: &str| {
            out[&RollupKey { dimension: d, span: Span::Minute, bucket: 1_700_000_000 / 60 * 60, subject: s.into() }]
        };
        let token = get(Dimension::Token, "7");
        assert_eq!((token.requests, token.successes, token.failures, token.prompt_tokens), (1, 1, 0, 10));
        assert_eq!(token.latency[2], 1, "120 ms is in the ≤250 ms bucket");
        let first = get(Dimension::Key, "1");
        assert_eq!((first.requests, first.failures, first.errors.rate_limited, first.prompt_tokens), (1, 1, 1, 0));
        let second = get(Dimension::Key, "2");
        assert_eq!((second.requests, second.successes, second.cost_micros), (1, 1, 30));
    }

    #[test]
    fn days_and_hours_begin_in_the_configured_time_zone() {
        let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        let b = Buckets::new(tz);
        // 2026-11-30 15:59:59 UTC is 23:59:59 in Shanghai; a second later is the next day there.
        let before = 1_796_054_399;
        let day = b.start(Span::Day, before);
        assert_eq!(day, 1_795_968_000, "2026-11-29 16:00 UTC, Shanghai's midnight");
        assert_eq!(b.start(Span::Day, before + 1), 1_795_968_000 + 86_400);
        assert_eq!(b.start(Span::Hour, before), before + 1 - 3600);
        // India is at +05:30: its hours start at :30 UTC.
        let india = Buckets::new(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap());
        assert_eq!(india.start(Span::Hour, before).rem_euclid(3600), 1800);
        assert_eq!(Buckets::utc().start(Span::Day, before), before + 1 - 16 * 3600);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut cut = record(0, 503, vec![]);
        cut.error_type = Some("no_key_available".into());
        assert_eq!(ErrorKind::of_request(&cut), Some(ErrorKind::Gateway));
        let mut gone = record(0, 200, vec![attempt(1, 200, "ok", Counted::Neither)]);
        gone.cancelled = true;
        assert_eq!(ErrorKind::of_request(&gone), Some(ErrorKind::Cancelled));
        let bad = record(0, 400, vec![attempt(1, 400, "caller_error", Counted::Neither)]);
        assert_eq!(ErrorKind::of_request(&bad), Some(ErrorKind::Caller));
        let mut broke = record(0, 200, vec![attempt(1, 200, "ok", Counted::Failure)]);
        broke.error_type = Some("stream_interrupted".into());
        assert_eq!(ErrorKind::of_request(&broke), Some(ErrorKind::Upstream));
        assert_eq!(ErrorKind::of_request(&record(0, 200, vec![])), None);
    }

    #[test]
    fn the_latency_quantile_is_its_bucket_bound() {
        let mut r = Rollup::default();
        r.latency[0] = 90;
        r.latency[4] = 10;
        assert_eq!(r.latency_quantile_us(0.5), Some(50_000));
        assert_eq!(r.latency_quantile_us(0.99), Some(1_000_000));
        assert_eq!(Rollup::default().latency_quantile_us(0.5), None);
    }
}
