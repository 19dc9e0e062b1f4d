//! Token usage in every shape an OpenAI-style answer reports it, and the
//! estimate used when a stream reports none.

use serde::Deserialize;

/// Token usage as the upstream reports it (or as keypool estimated it).
///
/// One shape for every endpoint. Chat and completions report
/// `prompt_tokens` / `completion_tokens`; the Responses API, images and
/// transcriptions report `input_tokens` / `output_tokens`, which are read
/// into the same two fields. Fields an endpoint does not send are zero
/// (embeddings have no completion tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "RawUsage")]
pub struct Usage {
    /// Tokens in the request (`prompt_tokens`, or `input_tokens`).
    pub prompt_tokens: u64,
    /// Tokens generated (`completion_tokens`, or `output_tokens`).
    pub completion_tokens: u64,
    /// Their sum, as the upstream computed it.
    pub total_tokens: u64,
    /// Of `prompt_tokens`, those served from the prompt cache
    /// (`prompt_tokens_details.cached_tokens`, or
    /// `input_tokens_details.cached_tokens`), which providers price lower.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Of `completion_tokens`, those spent on hidden reasoning
    /// (`completion_tokens_details.reasoning_tokens`, or
    /// `output_tokens_details.reasoning_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// keypool estimated this from the streamed text because the upstream
    /// reported no usage; see [`Usage::estimate`].
    #[serde(default)]
    pub estimated: bool,
}

impl Usage {
    /// A conservative estimate for a stream that reported no usage:
    /// `prompt_tokens` as the gateway estimated the request, and the
    /// generated text counted as one token per 3 ASCII characters (rounded
    /// up) plus one per other character (CJK text runs near one token per
    /// character), so it errs high rather than low: keypool must never count
    /// less against a key than the upstream does.
    pub fn estimate(prompt_tokens: u64, text: TextCount) -> Usage {
        let completion_tokens = text.ascii.div_ceil(3).saturating_add(text.other);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            estimated: true,
            ..Usage::default()
        }
    }
}

/// Characters of generated text seen in a stream, split by cost class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextCount {
    /// ASCII characters (an escape such as `\n` counts as one).
    pub ascii: u64,
    /// Other characters (each counted once, whatever its UTF-8 length).
    pub other: u64,
}

impl TextCount {
    /// No text at all.
    pub fn is_empty(&self) -> bool {
        self.ascii == 0 && self.other == 0
    }
}

/// A `*_details` object; only the one count keypool prices apart is kept.
#[derive(Deserialize, Default)]
struct Details {
    #[serde(default, deserialize_with = "count")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    reasoning_tokens: Option<u64>,
}

/// Every name under which an answer reports usage; serde skips the rest.
/// A value of the wrong type (a count as a string, details as a number) is
/// read as absent, not as a broken answer.
#[derive(Deserialize)]
pub(crate) struct RawUsage {
    #[serde(default, deserialize_with = "count")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    total_tokens: Option<u64>,
    #[serde(default, deserialize_with = "details")]
    prompt_tokens_details: Option<Details>,
    #[serde(default, deserialize_with = "details")]
    completion_tokens_details: Option<Details>,
    #[serde(default, deserialize_with = "details")]
    input_tokens_details: Option<Details>,
    #[serde(default, deserialize_with = "details")]
    output_tokens_details: Option<Details>,
    /// Set only on a [`Usage`] that went through serde and back.
    #[serde(default, deserialize_with = "count")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    estimated: bool,
}

/// A token count: a non-negative integer (also written as a whole float);
/// anything else is absent.
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(Count)
}

/// A `*_details` object; anything else is absent.
fn details<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Details>, D::Error> {
    object(d)
}

/// A JSON object read as `T`; any other JSON value is absent. Read by the
/// JSON type met, without buffering: serde's `untagged` would build the
/// whole value first and then try each shape, and every answer's usage
/// comes through here.
pub(crate) fn object<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_any(Object(std::marker::PhantomData))
}

/// The visitor methods of a value read as absent: scalars and null give
/// `None`, arrays (and, with `map`, objects) are skipped to their end.
macro_rules! absent_otherwise {
    ($t:ty $(, $map:ident)?) => {
        fn visit_bool<E>(self, _: bool) -> Result<Option<$t>, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<$t>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<$t>, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Option<$t>, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<$t>, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<$t>, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        $(
        fn $map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<$t>, A::Error> {
            while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        )?
    };
}

struct Count;

impl<'de> serde::de::Visitor<'de> for Count {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a token count")
    }
    fn visit_u64<E>(self, n: u64) -> Result<Option<u64>, E> {
        Ok(Some(n))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Option<u64>, E> {
        Ok(u64::try_from(n).ok())
    }
    fn visit_f64<E>(self, f: f64) -> Result<Option<u64>, E> {
        Ok((f >= 0.0 && f.fract() == 0.0 && f < 1.8e19).then_some(f as u64))
    }
    absent_otherwise!(u64, visit_map);
}

struct Object<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<T>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<T>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<T>, E> {
        Ok(None)
    }
    absent_otherwise!(T);
}

/// A `usage` object that names no token count (a transcription billed by
/// `seconds`, say) is not a usage report.
#[derive(Debug)]
pub(crate) struct NoTokenCounts;

impl std::fmt::Display for NoTokenCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the usage object names no token count")
    }
}

impl TryFrom<RawUsage> for Usage {
    type Error = NoTokenCounts;

    fn try_from(raw: RawUsage) -> Result<Usage, NoTokenCounts> {
        let prompt = raw.prompt_tokens.or(raw.input_tokens);
        let completion = raw.completion_tokens.or(raw.output_tokens);
        if prompt.is_none() && completion.is_none() && raw.total_tokens.is_none() {
            return Err(NoTokenCounts);
        }
        let prompt_tokens = prompt.unwrap_or(0);
        let completion_tokens = completion.unwrap_or(0);
        let detail = |a: Option<Details>, b: Option<Details>, pick: fn(&Details) -> Option<u64>| {
            a.as_ref().and_then(pick).or_else(|| b.as_ref().and_then(pick))
        };
        let cached = detail(raw.prompt_tokens_details, raw.input_tokens_details, |d| d.cached_tokens);
        let reasoning = detail(raw.completion_tokens_details, raw.output_tokens_details, |d| d.reasoning_tokens);
        Ok(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: raw.total_tokens.unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
            cached_tokens: cached.or(raw.cached_tokens).unwrap_or(0),
            reasoning_tokens: reasoning.or(raw.reasoning_tokens).unwrap_or(0),
            estimated: raw.estimated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Option<Usage> {
        serde_json::from_str::<Usage>(json).ok()
    }

    #[test]
    fn chat_usage_with_details() {
        let u = parse(
            r#"{"prompt_tokens":120,"completion_tokens":40,"total_tokens":160,
                "prompt_tokens_details":{"cached_tokens":100,"audio_tokens":0},
                "completion_tokens_details":{"reasoning_tokens":30,"audio_tokens":0}}"#,
        );
        let want = Usage {
            prompt_tokens: 120,
            completion_tokens: 40,
            total_tokens: 160,
            cached_tokens: 100,
            reasoning_tokens: 30,
            estimated: false,
        };
        assert_eq!(u, Some(want));
    }

    #[test]
    fn responses_usage() {
        let u = parse(
            r#"{"input_tokens":36,"input_tokens_details":{"cached_tokens":4},
                "output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}"#,
        );
        let want = Usage {
            prompt_tokens: 36,
            completion_tokens: 87,
            total_tokens: 123,
            cached_tokens: 4,
            reasoning_tokens: 64,
            estimated: false,
        };
        assert_eq!(u, Some(want));
    }

    #[test]
    fn images_and_transcriptions_usage() {
        // gpt-image-1 and gpt-4o-transcribe report tokens under the Responses names.
        let img = parse(
            r#"{"total_tokens":100,"input_tokens":50,"output_tokens":50,
                "input_tokens_details":{"text_tokens":10,"image_tokens":40}}"#,
        );
        assert_eq!(img.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)), Some((50, 50, 100)));
        let tr = parse(
            r#"{"type":"tokens","input_tokens":14,"input_token_details":{"audio_tokens":14},"output_tokens":45,"total_tokens":59}"#,
        );
        assert_eq!(tr.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)), Some((14, 45, 59)));
        // Billed by duration: no token count at all is no usage report.
        assert_eq!(parse(r#"{"type":"duration","seconds":9}"#), None);
    }

    #[test]
    fn missing_total_is_the_sum_and_nulls_are_zero() {
        let u = parse(r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":null}"#);
        assert_eq!(u.map(|u| (u.total_tokens, u.cached_tokens)), Some((7, 0)));
        let embeddings = parse(r#"{"prompt_tokens":8,"total_tokens":8}"#);
        assert_eq!(embeddings.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((8, 0)));
        assert_eq!(parse(r#"{"prompt_tokens":"bad"}"#), None);
    }

    #[test]
    fn serde_round_trip_keeps_every_field() {
        let u = Usage::estimate(10, TextCount { ascii: 7, other: 2 });
        let back: Usage = serde_json::from_str(&serde_json::to_string(&u).unwrap_or_default()).unwrap_or_default();
        assert_eq!(back, u);
    }

    #[test]
    fn estimate_errs_high() {
        let u = Usage::estimate(5, TextCount { ascii: 10, other: 4 });
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.estimated), (5, 4 + 4, 13, true));
        assert_eq!(Usage::estimate(0, TextCount::default()).completion_tokens, 0);
    }
}
