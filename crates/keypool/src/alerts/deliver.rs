//! An alert as each webhook expects it, and its POST: with a timeout,
//! retried a bounded number of times, failures logged with the URL's host
//! only (a webhook URL often carries a secret token).

use serde_json::{json, Value};

use super::Alert;
use crate::config::WebhookUrl;
use crate::config::{AlertEvent, WebhookFormat};

/// The alert in one line of words, for the chat formats.
pub fn text(a: &Alert) -> String {
    let key = match (a.key_id, &a.label) {
        (Some(id), Some(label)) => format!("key #{id} ({label})"),
        (Some(id), None) => format!("key #{id}"),
        _ => "the pool".to_owned(),
    };
    let what = match a.event {
        AlertEvent::KeyInvalid => format!("{key} turned invalid"),
        AlertEvent::KeyExhausted => format!("{key} is exhausted"),
        AlertEvent::BudgetThreshold => {
            format!("{key} passed {:.0}% of its budget", a.threshold.unwrap_or_default() * 100.0)
        }
        AlertEvent::NoUsableKey => "no key can serve requests".to_owned(),
        AlertEvent::KeysUsable => "keys can serve requests again".to_owned(),
    };
    let mut line = format!("[keypool] {what}");
    if let Some(reason) = &a.reason {
        line.push_str(&format!(": {reason}"));
    }
    if a.suppressed > 0 {
        line.push_str(&format!(" ({} more alert(s) held back by the per-minute cap)", a.suppressed));
    }
    line
}

/// The JSON body for `format`. Generic: `{"event","key_id","label","state",
/// "reason","threshold","time" (RFC 3339),"time_ms","suppressed","text"}`.
pub fn body(format: WebhookFormat, a: &Alert) -> Value {
    let text = text(a);
    match format {
        WebhookFormat::Slack => json!({ "text": text }),
        WebhookFormat::Feishu => json!({ "msg_type": "text", "content": { "text": text } }),
        WebhookFormat::Dingtalk => json!({ "msgtype": "text", "text": { "content": text } }),
        WebhookFormat::Generic => json!({
            "event": a.event.as_str(),
            "key_id": a.key_id,
            "label": a.label,
            "state": a.state,
            "reason": a.reason,
            "threshold": a.threshold,
            "time": jiff::Timestamp::from_millisecond(a.time_ms).map(|t| t.to_string()).ok(),
            "time_ms": a.time_ms,
            "suppressed": a.suppressed,
            "text": text,
        }),
    }
}

/// One POST of one alert to one webhook.
pub(super) struct Send {
    pub client: reqwest::Client,
    pub url: WebhookUrl,
    pub body: Value,
    /// Further tries after a failure, a second apart.
    pub retries: u32,
}

impl Send {
    pub async fn run(self) {
        let host = self.url.masked();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            match self.client.post(self.url.url().clone()).json(&self.body).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => {
                    tracing::warn!(webhook = %host, status = %r.status(), attempt, "alert webhook refused the alert")
                }
                // Without the URL: it may carry the webhook's secret.
                Err(e) => tracing::warn!(webhook = %host, error = %e.without_url(), attempt, "alert webhook failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_has_its_shape() {
        let a = Alert {
            event: AlertEvent::KeyInvalid,
            key_id: Some(7),
            label: Some("team-a".into()),
            state: Some("invalid"),
            reason: Some("refused by the upstream".into()),
            threshold: None,
            time_ms: 1_700_000_000_000,
            suppressed: 0,
        };
        let t = "[keypool] key #7 (team-a) turned invalid: refused by the upstream";
        assert_eq!(body(WebhookFormat::Slack, &a), json!({"text": t}));
        assert_eq!(body(WebhookFormat::Feishu, &a), json!({"msg_type": "text", "content": {"text": t}}));
        assert_eq!(body(WebhookFormat::Dingtalk, &a), json!({"msgtype": "text", "text": {"content": t}}));
        let g = body(WebhookFormat::Generic, &a);
        assert_eq!((g["event"].as_str(), g["key_id"].as_i64()), (Some("key_invalid"), Some(7)));
        assert_eq!(g["time"], "2023-11-14T22:13:20Z");
    }
}
