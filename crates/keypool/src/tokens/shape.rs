//! Reading a request body into a [`PromptShape`]: everything the upstream
//! charges against a key's tokens per minute. That is not only plain text:
//! token-id inputs (`"input": [[7, 7, …]]` or a flat list of ids, one token
//! each), Responses API `input` (a string, a message list, content parts) and
//! `instructions`, `tools` and function schemas (their JSON text), images
//! (see [`IMAGE_TOKENS`]) and tool calls.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::{Counter, PromptShape, PER_MESSAGE, PER_REPLY};

/// Tokens charged for one image part whose size keypool cannot see without
/// decoding it. OpenAI's documented formula (vision guide) for `detail: low`
/// is a flat 85; for `high`/`auto` it is 85 + 170 per 512-px tile after the
/// image is fit in 2048×2048 and its short side scaled to 768, at most 8
/// tiles (768×2048): 1,445. keypool assumes the largest.
pub const IMAGE_TOKENS: u64 = 85 + 8 * 170;
/// `detail: "low"`: OpenAI's flat charge.
pub const IMAGE_TOKENS_LOW: u64 = 85;

/// Why a body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Not JSON at all: the caller's mistake.
    #[error("{0}")]
    BadJson(String),
    /// A number no request can mean (`max_tokens` at 2^32, fractional, a
    /// string): the caller's mistake, named by its field.
    #[error("Invalid value for '{param}': {reason}")]
    InvalidParam { param: &'static str, reason: &'static str },
}

/// The fields of an OpenAI request body that the estimate reads; every other
/// field is skipped without being kept (and passed on untouched, since the
/// original bytes are what is sent).
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Lenient<String>,
    #[serde(default)]
    messages: Option<Content>,
    #[serde(default)]
    prompt: Option<Content>,
    #[serde(default)]
    input: Option<Content>,
    #[serde(default)]
    instructions: Option<Content>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    max_output_tokens: Option<Value>,
    #[serde(default)]
    n: Option<Value>,
    #[serde(default)]
    stream: Lenient<bool>,
    #[serde(default)]
    stream_options: Lenient<StreamOptions>,
    /// OpenAI's end-user id, kept in the request's record.
    #[serde(default)]
    user: Lenient<String>,
    /// Objects an earlier request created, which only the key that created
    /// them can reach (see `routing::affinity`).
    #[serde(default)]
    previous_response_id: Lenient<String>,
    #[serde(default)]
    input_file_id: Lenient<String>,
    #[serde(default)]
    training_file: Lenient<String>,
    #[serde(default)]
    file_id: Lenient<String>,
}

/// A field read only if it has the expected shape. keypool is no stricter
/// than the upstream: a field of another shape is left for the upstream to
/// judge, and the estimate falls back to its defaults. Read by the JSON type
/// it meets, as [`Content`] is (serde's `untagged` buffers every value first).
#[derive(Default)]
enum Lenient<T> {
    Is(T),
    #[default]
    Other,
}

impl<T> Lenient<T> {
    fn get(self) -> Option<T> {
        match self {
            Lenient::Is(v) => Some(v),
            Lenient::Other => None,
        }
    }

    fn as_ref(&self) -> Option<&T> {
        match self {
            Lenient::Is(v) => Some(v),
            Lenient::Other => None,
        }
    }
}

/// What a [`Lenient`] field is made from: a string, a boolean or an object.
trait Expected<'de>: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_map<A: serde::de::MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Expected<'_> for String {
    fn from_str(s: &str) -> Option<String> {
        Some(s.to_owned())
    }
}

impl Expected<'_> for bool {
    fn from_bool(b: bool) -> Option<bool> {
        Some(b)
    }
}

/// An object whose own fields are all lenient: only broken JSON fails it.
fn object<'de, T: Deserialize<'de>, A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<T>, A::Error> {
    T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
}

impl<'de> Expected<'de> for StreamOptions {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        object(map)
    }
}

impl<'de> Expected<'de> for ImageUrl {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        object(map)
    }
}

impl<'de, T: Expected<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Expected<'de>> serde::de::Visitor<'de> for LenientVisitor<T> {
    type Value = Lenient<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, s: &str) -> Result<Lenient<T>, E> {
        Ok(T::from_str(s).map_or(Lenient::Other, Lenient::Is))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Lenient<T>, E> {
        Ok(T::from_bool(b).map_or(Lenient::Other, Lenient::Is))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
        Ok(T::from_map(map)?.map_or(Lenient::Other, Lenient::Is))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Lenient<T>, E> {
        Ok(Lenient::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Lenient<T>, E> {
        Ok(Lenient::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Lenient<T>, E> {
        Ok(Lenient::Other)
    }

    fn visit_unit<E>(self) -> Result<Lenient<T>, E> {
        Ok(Lenient::Other)
    }

    fn visit_none<E>(self) -> Result<Lenient<T>, E> {
        Ok(Lenient::Other)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Lenient<T>, D::Error> {
        d.deserialize_any(self)
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Lenient<bool>,
}

/// Anything the model reads, in every form the OpenAI API accepts it.
///
/// Deserialized by hand, by the JSON type it meets: serde's `untagged`
/// would buffer every value and try each variant in turn, building (and
/// throwing away) an error for each miss, about 10k instructions a chat
/// request (callgrind, docs/benchmarks.md).
enum Content {
    Text(String),
    /// A token id (in a flat or nested list of ids): one token, whichever.
    Id,
    List(Vec<Content>),
    Image(Image),
    Part(Box<Part>),
    Other,
}

/// An image part: chat's `{"type":"image_url","image_url":{"url","detail"}}`
/// or the Responses API's `{"type":"input_image","image_url","detail"}`.
struct Image {
    detail: Lenient<String>,
    image_url: Lenient<ImageUrl>,
}

#[derive(Deserialize)]
struct ImageUrl {
    #[serde(default)]
    detail: Lenient<String>,
}

/// A message, a content part, a tool call or a tool's output: every field
/// that carries text the model reads.
#[derive(Default)]
struct Part {
    role: Lenient<String>,
    name: Lenient<String>,
    text: Lenient<String>,
    content: Option<Content>,
    output: Option<Content>,
    arguments: Lenient<String>,
    tool_calls: Option<Content>,
    function: Option<Content>,
}

/// The keys of a part or image that carry something counted; the rest are
/// skipped unread.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Type,
    Detail,
    ImageUrl,
    Role,
    Name,
    Text,
    Content,
    Output,
    Arguments,
    ToolCalls,
    Function,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        d.deserialize_any(ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> serde::de::Visitor<'de> for ContentVisitor {
    type Value = Content;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("text, token ids or content parts")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
        Ok(Content::Text(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content, E> {
        Ok(Content::Text(v))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Content, E> {
        Ok(Content::Id)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Content, E> {
        Ok(if v >= 0 { Content::Id } else { Content::Other })
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Content, E> {
        Ok(Content::Other)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Content, E> {
        Ok(Content::Other)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Content, E> {
        Ok(Content::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Content>()? {
            items.push(item);
        }
        Ok(Content::List(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
        let mut part = Part::default();
        let (mut image, mut detail, mut image_url) = (false, Lenient::default(), Lenient::default());
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Type => {
                    let kind: Lenient<String> = map.next_value()?;
                    image = matches!(kind.as_ref().map(String::as_str), Some("image_url" | "input_image"));
                }
                Field::Detail => detail = map.next_value()?,
                Field::ImageUrl => image_url = map.next_value()?,
                Field::Role => part.role = map.next_value()?,
                Field::Name => part.name = map.next_value()?,
                Field::Text => part.text = map.next_value()?,
                Field::Content => part.content = map.next_value()?,
                Field::Output => part.output = map.next_value()?,
                Field::Arguments => part.arguments = map.next_value()?,
                Field::ToolCalls => part.tool_calls = map.next_value()?,
                Field::Function => part.function = map.next_value()?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(if image { Content::Image(Image { detail, image_url }) } else { Content::Part(Box::new(part)) })
    }
}

/// What has been counted so far.
#[derive(Default)]
struct Tally {
    tokens: u64,
    sure: u64,
    chars: u64,
    framing: u64,
}

impl Tally {
    fn text(&mut self, s: &str, counter: Counter) {
        let (tokens, sure) = counter.count_sure(s);
        self.tokens += tokens;
        if sure {
            self.sure += tokens;
        }
        self.chars += s.chars().count() as u64;
    }

    /// Tokens known exactly (ids, images, framing), which the character
    /// estimate counts at the same number.
    fn fixed(&mut self, tokens: u64) {
        self.tokens += tokens;
        self.sure += tokens;
        self.chars += tokens * super::CHARS_PER_TOKEN;
    }

    fn frame(&mut self, tokens: u64) {
        self.tokens += tokens;
        self.sure += tokens;
        self.framing += tokens;
    }

    fn content(&mut self, c: &Content, counter: Counter) {
        match c {
            Content::Text(s) => self.text(s, counter),
            Content::Id => self.fixed(1),
            Content::List(items) => items.iter().for_each(|i| self.content(i, counter)),
            Content::Image(img) => {
                let detail = img.detail.as_ref().or(img.image_url.as_ref().and_then(|u| u.detail.as_ref()));
                let low = detail.is_some_and(|d| d.eq_ignore_ascii_case("low"));
                self.fixed(if low { IMAGE_TOKENS_LOW } else { IMAGE_TOKENS });
            }
            Content::Part(p) => self.part(p, counter),
            Content::Other => {}
        }
    }

    /// A part with a `role` is a message: it carries OpenAI's framing.
    fn part(&mut self, p: &Part, counter: Counter) {
        if let Some(role) = p.role.as_ref() {
            self.frame(PER_MESSAGE);
            self.text(role, counter);
        }
        if let Some(name) = p.name.as_ref() {
            self.text(name, counter);
            if p.role.as_ref().is_some() {
                self.frame(1);
            }
        }
        for s in [p.text.as_ref(), p.arguments.as_ref()].into_iter().flatten() {
            self.text(s, counter);
        }
        for c in [&p.content, &p.output, &p.tool_calls, &p.function].into_iter().flatten() {
            self.content(c, counter);
        }
    }

    /// A JSON schema (tools, functions), counted as its text.
    fn schema(&mut self, v: &Value, counter: Counter) {
        if !v.is_null() {
            self.text(&v.to_string(), counter);
        }
    }
}

/// A count field (`max_tokens`, `n`, …): absent or `null` is unset, `-1`
/// ("no limit" to upstreams that document it) passes through as unset, and
/// an integer in 0..2^32 is read; anything else no upstream can mean.
fn count_field(v: Option<&Value>, param: &'static str) -> Result<Option<u32>, ShapeError> {
    let invalid = |reason| Err(ShapeError::InvalidParam { param, reason });
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return u32::try_from(u).map(Some).or_else(|_| invalid("expected an integer below 2^32"));
            }
            match n.as_i64() {
                Some(-1) => Ok(None),
                Some(_) => invalid("expected a non-negative integer (or -1 where the upstream documents it)"),
                None => invalid("expected an integer, but got a decimal number instead"),
            }
        }
        Some(Value::String(_)) => invalid("expected an integer, but got a string instead"),
        Some(_) => invalid("expected an integer"),
    }
}

/// Endpoints whose answer has no completion tokens to reserve.
fn input_only(endpoint: &str) -> bool {
    matches!(endpoint.trim_end_matches('/'), "embeddings" | "moderations")
}

/// Reads a JSON request body sent to `endpoint` (the path under `/v1/`).
/// `counter` picks how text is counted for the body's model (the tokenizer,
/// the rough rule, or, in tests, the state while the tokenizer is built).
pub fn shape_of(
    bytes: &[u8],
    endpoint: &str,
    counter: impl FnOnce(Option<&str>) -> Counter,
) -> Result<PromptShape, ShapeError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| ShapeError::BadJson(e.to_string()))?;
    let max_completion = count_field(probe.max_completion_tokens.as_ref(), "max_completion_tokens")?;
    let max_tokens = count_field(probe.max_tokens.as_ref(), "max_tokens")?;
    let max_output = count_field(probe.max_output_tokens.as_ref(), "max_output_tokens")?;
    let n = count_field(probe.n.as_ref(), "n")?;
    let model = probe.model.get();
    let counter = counter(model.as_deref());
    let mut tally = Tally::default();
    if let Some(messages) = &probe.messages {
        tally.content(messages, counter);
        tally.frame(PER_REPLY);
    }
    for c in [&probe.prompt, &probe.input, &probe.instructions].into_iter().flatten() {
        tally.content(c, counter);
    }
    for schema in [&probe.tools, &probe.functions].into_iter().flatten() {
        tally.schema(schema, counter);
    }
    Ok(PromptShape {
        model,
        prompt_tokens: tally.tokens,
        sure_tokens: tally.sure,
        prompt_chars: tally.chars,
        framing_tokens: tally.framing,
        max_tokens: max_completion.or(max_tokens).or(max_output),
        n: n.unwrap_or(1),
        stream: probe.stream.get().unwrap_or(false),
        include_usage: probe.stream_options.get().and_then(|o| o.include_usage.get()),
        input_only: input_only(endpoint),
        user: probe.user.get(),
        refers_to: probe
            .previous_response_id
            .get()
            .or_else(|| probe.input_file_id.get())
            .or_else(|| probe.training_file.get())
            .or_else(|| probe.file_id.get()),
    })
}

#[cfg(test)]
mod tests;
