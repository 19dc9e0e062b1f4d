//! Showing secrets without revealing them.

/// `sk-proj-abcdef…wxyz` becomes `sk-…wxyz`: enough to recognise a key, not to use it.
pub fn mask_key(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 8 {
        return "****".into();
    }
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Replaces the password of a URL's userinfo, and the value of a `password`
/// query parameter (libpq's form, which sqlx takes), with `***`. A URL that
/// does not parse (a password with an unencoded `/`, `#` or `?`) has
/// everything between `://` and its last `@` replaced, so no form of it
/// prints a password.
pub fn mask_url_password(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme + 3 => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            _ => url.to_owned(),
        };
    };
    let in_query = parsed.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case("password"));
    if parsed.password().is_none() && !in_query {
        // As given: re-serialized, a URL gains a `/` it did not have.
        return url.to_owned();
    }
    if parsed.password().is_some() {
        // set_password only fails for URLs that cannot have one, excluded above.
        let _ = parsed.set_password(Some("***"));
    }
    if in_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") { "***".into() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}
