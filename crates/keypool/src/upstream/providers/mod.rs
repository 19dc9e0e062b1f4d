//! What an OpenAI-compatible provider does differently, one file each. For
//! now: whether and how it tells a key's remaining credit (its balance),
//! read on an interval and given to the scheduler (`balance_even` spends by
//! it; a key at zero gets no request). Providers without a balance API
//! (OpenAI itself, vLLM, Ollama) have no file here.
//!
//! A new provider is one file with a [`BalanceApi`] and a line in [`of`].

mod deepseek;
mod moonshot;
mod openrouter;
mod siliconflow;

/// A balance as a provider reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// What is left, in micro-USD (see [`Currency`] for other currencies).
    pub micros: u64,
    /// The provider's own currency.
    pub currency: Currency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Currency {
    Usd,
    /// Converted at [`CNY_PER_USD`]: only the balances' ratios (which key
    /// has the larger share left) and zero matter to the scheduler, and the
    /// keys of one upstream share a currency; between two reads the
    /// tracked spend (USD) is added to a converted balance.
    Cny,
}

/// An approximate rate (7.1: the CNY/USD rate's 2025–2026 range, about
/// 7.0–7.3), for converting CNY balances: only ratios and zero matter to
/// the scheduler (see [`Currency::Cny`]).
pub const CNY_PER_USD: f64 = 7.1;

/// Providers with a file here (a balance API).
pub const KNOWN: [&str; 4] = ["openrouter", "deepseek", "moonshot", "siliconflow"];

impl Balance {
    /// `amount` in `currency` (negative: nothing left).
    pub fn of(amount: f64, currency: Currency) -> Balance {
        let usd = match currency {
            Currency::Usd => amount,
            Currency::Cny => amount / CNY_PER_USD,
        };
        let micros = if usd.is_finite() && usd > 0.0 { (usd * 1e6).round() as u64 } else { 0 };
        Balance { micros, currency }
    }
}

/// How one provider tells a key's balance.
pub trait BalanceApi: Send + Sync {
    /// The path to GET, relative to the upstream's base URL (which ends in
    /// its version path, e.g. `/v1/`); `..` segments climb out of it.
    fn path(&self) -> &'static str;
    /// The balance in the provider's answer; None when it does not say
    /// (an unlimited key, another shape).
    fn parse(&self, body: &[u8]) -> Option<Balance>;
}

/// The balance API of `provider` (an `[[upstreams]]` entry's `provider`).
pub fn of(provider: Option<&str>) -> Option<&'static dyn BalanceApi> {
    match provider? {
        "openrouter" => Some(&openrouter::OpenRouter),
        "deepseek" => Some(&deepseek::DeepSeek),
        "moonshot" => Some(&moonshot::Moonshot),
        "siliconflow" => Some(&siliconflow::SiliconFlow),
        _ => None,
    }
}

/// A JSON number or a number in a string (providers send both).
pub(crate) fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_provider_reads_its_own_shape() {
        let b = of(Some("openrouter"))
            .unwrap()
            .parse(br#"{"data":{"label":"k","limit":5,"usage":1.25,"limit_remaining":3.75}}"#);
        assert_eq!(b, Some(Balance { micros: 3_750_000, currency: Currency::Usd }));
        // Unlimited: no balance to spend evenly.
        assert_eq!(of(Some("openrouter")).unwrap().parse(br#"{"data":{"limit":null,"limit_remaining":null}}"#), None);
        let ds = br#"{"is_available":true,"balance_infos":[{"currency":"CNY","total_balance":"71.00","granted_balance":"0.00","topped_up_balance":"71.00"}]}"#;
        assert_eq!(
            of(Some("deepseek")).unwrap().parse(ds),
            Some(Balance { micros: 10_000_000, currency: Currency::Cny })
        );
        let ds_usd = br#"{"is_available":true,"balance_infos":[{"currency":"CNY","total_balance":"7.10"},{"currency":"USD","total_balance":"2.5"}]}"#;
        assert_eq!(of(Some("deepseek")).unwrap().parse(ds_usd).unwrap().micros, 2_500_000, "USD when given");
        let ms = br#"{"code":0,"data":{"available_balance":-1.5,"voucher_balance":0,"cash_balance":-1.5},"scode":"0x0","status":true}"#;
        assert_eq!(of(Some("moonshot")).unwrap().parse(ms).unwrap().micros, 0, "in debt is nothing left");
        let sf = br#"{"code":20000,"message":"OK","status":true,"data":{"id":"u1","balance":"0.88","chargeBalance":"10.00","totalBalance":"14.20"}}"#;
        assert_eq!(of(Some("siliconflow")).unwrap().parse(sf).unwrap().micros, 2_000_000);
        assert!(of(Some("vllm")).is_none() && of(None).is_none());
        assert_eq!(of(Some("deepseek")).unwrap().parse(b"<html>"), None);
    }
}
