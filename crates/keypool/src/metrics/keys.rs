//! Gauges read at scrape time, written straight into the Prometheus text:
//! the queue's depth, the record writer's backlog, and one set per key from
//! the scheduler's view. A removed key is simply not in the next view, so
//! its series disappear (gauges kept in the recorder could not be removed).

use std::fmt::Write as _;

use super::{
    KEY_BUDGET, KEY_INFLIGHT, KEY_REMAINING_REQUESTS, KEY_REMAINING_TOKENS, KEY_SPEND, KEY_STATE, KEY_STATES,
    QUEUE_DEPTH, RECORDS_WAITING,
};
use crate::records::Recorder;
use crate::routing::Pools;

/// Appends the scrape-time gauges, each family with its `# HELP` and `# TYPE`.
pub fn write_gauges(out: &mut String, scheduler: &Pools, recorder: &Recorder) {
    family(out, QUEUE_DEPTH, "Requests waiting for a key with room now.");
    let _ = writeln!(out, "{QUEUE_DEPTH} {}", scheduler.queue_len());
    family(out, RECORDS_WAITING, "Request records handed to the writer and not yet taken by it.");
    let _ = writeln!(out, "{RECORDS_WAITING} {}", recorder.waiting());

    let keys = scheduler.snapshot();
    out.reserve(keys.len() * 600);
    family(out, KEY_STATE, "1 for the key's state (label state), 0 for the others; by key_id.");
    for k in &keys {
        for state in KEY_STATES {
            let on = u8::from(k.status == state);
            let _ = writeln!(out, "{KEY_STATE}{{key_id=\"{}\",state=\"{state}\"}} {on}", k.id);
        }
    }
    family(out, KEY_REMAINING_REQUESTS, "Requests left in the key's current minute (keys with a known RPM).");
    for k in &keys {
        if let Some(n) = k.remaining_requests {
            let _ = writeln!(out, "{KEY_REMAINING_REQUESTS}{{key_id=\"{}\"}} {n}", k.id);
        }
    }
    family(out, KEY_REMAINING_TOKENS, "Tokens left in the key's current minute (keys with a known TPM).");
    for k in &keys {
        if let Some(n) = k.remaining_tokens {
            let _ = writeln!(out, "{KEY_REMAINING_TOKENS}{{key_id=\"{}\"}} {n}", k.id);
        }
    }
    family(out, KEY_INFLIGHT, "Requests in flight on the key.");
    for k in &keys {
        let _ = writeln!(out, "{KEY_INFLIGHT}{{key_id=\"{}\"}} {}", k.id, k.inflight);
    }
    family(out, KEY_SPEND, "What the key has spent, in USD (counted in micro-USD).");
    for k in &keys {
        let _ = writeln!(out, "{KEY_SPEND}{{key_id=\"{}\"}} {}", k.id, usd(k.spent_micros));
    }
    family(out, KEY_BUDGET, "The key's budget in USD (keys with one).");
    for k in &keys {
        if let Some(b) = k.budget_micros {
            let _ = writeln!(out, "{KEY_BUDGET}{{key_id=\"{}\"}} {}", k.id, usd(b));
        }
    }
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Micro-USD as USD, exactly (no float rounding noise such as 0.30000000000000004).
fn usd(micros: u64) -> String {
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:06}").trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_is_exact() {
        assert_eq!(usd(0), "0");
        assert_eq!(usd(1_500_000), "1.5");
        assert_eq!(usd(300_001), "0.300001");
        assert_eq!(usd(12_000_000), "12");
    }
}
