//! How providers word whose fault an error is: the codes, types and
//! message fragments `classify` matches (lowercase; codes and types are
//! compared whole, messages by substring). Each list names its sources.

/// Codes and types that say the key has no money left: OpenAI's
/// `insufficient_quota`, `billing_hard_limit_reached`, `billing_not_active`;
/// Moonshot's `exceeded_current_quota_error`; DashScope's `Arrearage`;
/// relays (one-api, sub2api, Venice) `insufficient_user_quota`, `INSUFFICIENT_BALANCE`.
pub(super) const NO_MONEY_CODES: &[&str] = &[
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_not_active",
    "exceeded_current_quota_error",
    "arrearage",
    "insufficient_balance",
    "insufficient_user_quota",
    "insufficient_credits",
    "payment_required",
];

/// Messages that say the same: DeepSeek's 402 "Insufficient Balance",
/// OpenRouter's 402 "Insufficient credits", SiliconFlow's 403 (code 30001)
/// "Sorry, your account balance is insufficient", Anthropic-compatible
/// "credit balance is too low", xAI's "does not have any credits", and the
/// Chinese providers' 余额不足 / 欠费 (Zhipu's code 1113). Numeric codes are
/// matched by their words only: numbers mean different things per provider.
pub(super) const NO_MONEY_WORDS: &[&str] = &[
    "insufficient balance",
    "insufficient account balance",
    "balance is insufficient",
    "balance is not enough",
    "insufficient credits",
    "insufficient funds",
    "credit balance is too low",
    "not have any credits",
    "out of credits",
    "billing hard limit",
    "account is in arrears",
    "good standing",
    "余额不足",
    "欠费",
];

/// Codes and types that say the key itself is wrong, revoked or its account
/// closed: OpenAI `invalid_api_key`, `account_deactivated`,
/// `access_terminated`; Moonshot `invalid_authentication_error`; DeepSeek
/// and Anthropic-compatible `authentication_error`; DashScope `InvalidApiKey`;
/// Google `API_KEY_INVALID`. A 401 naming no such code is judged by the
/// other keys: the key's own if another key is served, else the upstream's.
pub(super) const KEY_CODES: &[&str] = &[
    "invalid_api_key",
    "account_deactivated",
    "access_terminated",
    "invalid_authentication_error",
    "invalid_authentication",
    "authentication_error",
    "invalidapikey",
    "api_key_invalid",
    "invalid_key",
    "key_expired",
    "api_key_expired",
    "user_not_found",
    "unauthenticated",
];

pub(super) const KEY_WORDS: &[&str] = &[
    "incorrect api key",
    "invalid api key",
    "api key not valid",
    "api key is invalid",
    "api key expired",
    "api key has expired",
    "authentication fails",
    "no auth credentials",
    "account has been deactivated",
    "account has been disabled",
    "key has been disabled",
    "key has been revoked",
];

/// Codes and words that put the fault on the caller's request: account
/// headers the key does not belong to (OpenAI 401 `mismatched_organization`,
/// `mismatched_project`, `invalid_organization`).
pub(super) const REQUEST_CODES: &[&str] = &[
    "mismatched_organization",
    "mismatched_project",
    "invalid_organization",
    "invalid_project",
    "no_such_organization",
];
pub(super) const REQUEST_WORDS: &[&str] = &["openai-organization header", "openai-project header"];

/// A model this key cannot use: 404 `model_not_found`, or a 401/403 saying the
/// key's project has no access to it.
pub(super) const MODEL_WORDS: &[&str] =
    &["does not have access to model", "not allowed to sample from this model", "do not have access to the model"];

/// Refusals the upstream gives whatever key is sent, never judged as a
/// key's: OpenAI's 403 `unsupported_country_region_territory` ("Country,
/// region, or territory not supported"). HTML pages are recognised by
/// their form (`classify`).
pub(super) const UPSTREAM_CODES: &[&str] = &["unsupported_country_region_territory"];
pub(super) const UPSTREAM_WORDS: &[&str] = &["country, region, or territory not supported"];
