//! OpenRouter: credits left on the key itself.
//! Source: OpenRouter's API reference, "Get current API key"
//! (`GET /api/v1/key`: `data.limit_remaining` in USD credits, null for a
//! key without a limit).

use super::{number, Balance, BalanceApi, Currency};

pub struct OpenRouter;

impl BalanceApi for OpenRouter {
    fn path(&self) -> &'static str {
        "key"
    }

    fn parse(&self, body: &[u8]) -> Option<Balance> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let left = number(v.get("data")?.get("limit_remaining")?)?;
        Some(Balance::of(left, Currency::Usd))
    }
}
