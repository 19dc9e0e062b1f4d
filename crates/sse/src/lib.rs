//! Incremental Server-Sent Events framing and OpenAI `usage` extraction.
//!
//! The keypool gateway forwards upstream answers to the caller byte for byte.
//! Alongside, a [`UsageTap`] looks at the same chunks to learn the token usage
//! the upstream reported, so the gateway can account for it without ever
//! holding or rewriting the body. Everything here is pure byte logic: no I/O,
//! no async, so it can sit in any body wrapper and be tested exhaustively.
//!
//! Costs are deliberately bounded: the tap does not allocate per chunk in the
//! common case, parses JSON only for the rare chunk that carries a `usage`
//! object, and never buffers more than [`MAX_BUFFERED_BYTES`] of a line or
//! body — past that it silently gives up on usage rather than failing the
//! caller's response.

mod framer;
#[doc(hidden)]
pub mod fuzzing;
mod scan;
mod strip;
mod tap;
mod usage;

pub use framer::SseFramer;
pub use strip::UsageStripper;
pub use tap::{strip_usage_event, BodyKind, StreamProtocol, TapOutcome, Terminal, UsageTap};
pub use usage::{TextCount, Usage};

/// Largest single SSE line, or non-streaming JSON body, that is buffered.
///
/// Usage chunks are a few hundred bytes and ordinary JSON answers are far
/// smaller than this, so hitting the cap means something unusual (a huge
/// generated answer, a misbehaving upstream); then the tap stops trying to
/// learn usage from that line/body instead of letting memory grow unbounded.
pub const MAX_BUFFERED_BYTES: usize = 1 << 20;
