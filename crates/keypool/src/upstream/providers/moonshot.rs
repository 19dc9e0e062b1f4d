//! Moonshot (Kimi): the account's available balance.
//! Source: Moonshot's API docs, "Check balance" (`GET /v1/users/me/balance`:
//! `data.available_balance`, negative when in debt; CNY on
//! api.moonshot.cn).

use super::{number, Balance, BalanceApi, Currency};

pub struct Moonshot;

impl BalanceApi for Moonshot {
    fn path(&self) -> &'static str {
        "users/me/balance"
    }

    fn parse(&self, body: &[u8]) -> Option<Balance> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(Balance::of(number(v.get("data")?.get("available_balance")?)?, Currency::Cny))
    }
}
