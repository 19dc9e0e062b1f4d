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
        AlertEvent::TokenBudget => {
            let token = match (a.token_id, &a.token_name) {
                (Some(id), Some(name)) => format!("token #{id} ({name})"),
                (Some(id), None) => format!("token #{id}"),
                _ => "a token".to_owned(),
            };
            let period = match a.period {
                Some(p) if p != "total" => format!("{p} "),
                _ => String::new(),
            };
            format!("{token} passed {:.0}% of its {period}budget", a.threshold.unwrap_or_default() * 100.0)
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
/// "reason","threshold","token_id","token_name","period","spent_micros",
/// "budget_micros","time" (RFC 3339),"time_ms","suppressed","text"}`, the
/// fields an event does not have as `null`.
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
            "token_id": a.token_id,
            "token_name": a.token_name,
            "period": a.period,
            "spent_micros": a.spent_micros,
            "budget_micros": a.budget_micros,
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
            token_id: None,
            token_name: None,
            period: None,
            spent_micros: None,
            budget_micros: None,
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
        assert!(g["token_id"].is_null() && g["spent_micros"].is_null());
    }

    #[test]
    fn a_token_budget_alert_names_the_token_and_its_period() {
        let a = Alert {
            event: AlertEvent::TokenBudget,
            key_id: None,
            label: None,
            state: None,
            reason: Some("spent 81% of its daily budget (810 of 1000 micro-USD)".into()),
            threshold: Some(0.8),
            token_id: Some(4),
            token_name: Some("team-a".into()),
            period: Some("daily"),
            spent_micros: Some(810),
            budget_micros: Some(1000),
            time_ms: 1_700_000_000_000,
            suppressed: 0,
        };
        assert_eq!(
            text(&a),
            "[keypool] token #4 (team-a) passed 80% of its daily budget: spent 81% of its daily budget (810 of 1000 micro-USD)"
        );
        let g = body(WebhookFormat::Generic, &a);
        assert_eq!(
            (g["event"].as_str(), g["token_id"].as_i64(), g["token_name"].as_str()),
            (Some("token_budget"), Some(4), Some("team-a"))
        );
        assert_eq!(
            (g["spent_micros"].as_u64(), g["budget_micros"].as_u64(), g["period"].as_str()),
            (Some(810), Some(1000), Some("daily"))
        );
        assert_eq!(g["threshold"].as_f64(), Some(0.8));
        assert!(g["key_id"].is_null());
        let total = Alert { period: Some("total"), ..a };
        assert!(text(&total).contains("passed 80% of its budget"), "{}", text(&total));
    }
}
