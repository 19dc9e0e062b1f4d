//! Regression guard for the streaming hot path: once warmed up, looking at a
//! chunk (the usage tap) and filtering it (the usage stripper) allocates
//! nothing per chunk. Counting allocations cannot flake the way a timing
//! assertion would. (allocation-counter's global allocator counts per thread.)
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use keypool_sse::{BodyKind, UsageStripper, UsageTap};

fn chunk(i: usize) -> Vec<u8> {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\
         \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word {i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
    )
    .into_bytes()
}

/// A Responses API text delta, as OpenAI sends it.
fn delta(i: usize) -> Vec<u8> {
    format!(
        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{i},\
         \"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"word {i} \"}}\n\n"
    )
    .into_bytes()
}

#[test]
fn the_responses_tap_allocates_nothing_per_event() {
    let events: Vec<Vec<u8>> = (0..1000).map(delta).collect();
    let mut tap = UsageTap::new(BodyKind::Sse);
    let (head, tail) = events[0].split_at(events[0].len() - 3);
    tap.feed(head);
    tap.feed(tail);
    let info = allocation_counter::measure(|| {
        for e in &events {
            tap.feed(e);
        }
    });
    assert_eq!(info.count_total, 0, "allocations on the per-event path: {info:?}");
    assert!(tap.finish().text.ascii > 7000, "the deltas were counted");
}

#[test]
fn the_usage_tap_and_stripper_allocate_nothing_per_chunk() {
    let chunks: Vec<Vec<u8>> = (0..1000).map(chunk).collect();
    // A chunk split across two reads exercises the carry-over buffer too.
    let (head, tail) = chunks[0].split_at(chunks[0].len() - 3);
    let mut tap = UsageTap::new(BodyKind::Sse);
    let mut stripper = UsageStripper::new();
    // Warm-up: buffers reach their working size.
    for c in [head, tail] {
        tap.feed(c);
        let _ = stripper.push(c);
    }
    let info = allocation_counter::measure(|| {
        for c in &chunks {
            tap.feed(c);
            let out = stripper.push(c);
            assert!(matches!(out, Cow::Borrowed(b) if b.len() == c.len()), "passed through without a copy");
        }
        for c in &chunks[..100] {
            let (a, b) = c.split_at(c.len() / 2);
            tap.feed(a);
            tap.feed(b);
        }
    });
    assert_eq!(info.count_total, 0, "allocations on the per-chunk path: {info:?}");
    assert_eq!(tap.finish().completion_chunks, 1101);
}
