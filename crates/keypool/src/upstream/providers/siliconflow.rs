//! SiliconFlow: the account's total balance (gift and charged).
//! Source: SiliconFlow's API reference, "Get user info"
//! (`GET /v1/user/info`: `data.totalBalance`, CNY, as a string).

use super::{number, Balance, BalanceApi, Currency};

pub struct SiliconFlow;

impl BalanceApi for SiliconFlow {
    fn path(&self) -> &'static str {
        "user/info"
    }

    fn parse(&self, body: &[u8]) -> Option<Balance> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(Balance::of(number(v.get("data")?.get("totalBalance")?)?, Currency::Cny))
    }
}
