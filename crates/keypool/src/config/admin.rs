//! The `[admin]` section: how the admin API and the dashboard guard their
//! sign-in.

use serde::{Deserialize, Serialize};

/// Settings of the admin API's door. The tokens themselves are
/// `admin_token` (the main one) and those `keypool admin tokens create`
/// makes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Wrong admin tokens one client address may send per minute (the
    /// address behind `telemetry.trusted_proxies`; IPv6 counted per /64).
    /// Past it, every admin request from that address, right token or not,
    /// gets 429 with `Retry-After` until its minute is over. 0: no limit.
    pub sign_in_attempts_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig { sign_in_attempts_per_minute: 10 }
    }
}
