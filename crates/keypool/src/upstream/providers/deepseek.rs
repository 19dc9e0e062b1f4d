//! DeepSeek: the account's balance, per currency.
//! Source: DeepSeek API docs, "Get User Balance" (`GET /user/balance`, at
//! the API's root: `balance_infos[].{currency, total_balance}`, amounts as
//! strings, `CNY` or `USD`).

use super::{number, Balance, BalanceApi, Currency};

pub struct DeepSeek;

impl BalanceApi for DeepSeek {
    fn path(&self) -> &'static str {
        // The base is https://api.deepseek.com/v1/; the balance is at the root.
        "../user/balance"
    }

    fn parse(&self, body: &[u8]) -> Option<Balance> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let infos = v.get("balance_infos")?.as_array()?;
        let in_currency = |code: &str| infos.iter().find(|i| i.get("currency").and_then(|c| c.as_str()) == Some(code));
        let (info, currency) = match in_currency("USD") {
            Some(i) => (i, Currency::Usd),
            None => (in_currency("CNY")?, Currency::Cny),
        };
        Some(Balance::of(number(info.get("total_balance")?)?, currency))
    }
}
