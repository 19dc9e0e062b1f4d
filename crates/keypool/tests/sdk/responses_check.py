"""Drives keypool's Responses API pass-through with the official OpenAI SDK.

Run by tests/streams.rs with OPENAI_BASE_URL pointing at a gateway (whose
upstream is the in-repo simulator) and OPENAI_API_KEY set to a gateway token.
A stream that keypool wrongly extends with an error event makes the SDK raise
APIError; exits non-zero with a message on the first thing not as expected.
"""

import sys

import openai
from openai import OpenAI


def main() -> None:
    client = OpenAI(max_retries=0, timeout=30)

    answer = client.responses.create(model="gpt-4o-mini", input="Say hello", max_output_tokens=5)
    assert answer.status == "completed", answer
    assert answer.output_text, answer
    assert answer.usage and answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0, answer.usage

    events = list(client.responses.create(model="gpt-4o-mini", input="Stream please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text, "streamed text arrived"
    usage = events[-1].response.usage
    assert usage and usage.output_tokens > 0, events[-1]

    print(f"openai {openai.__version__}: responses, responses stream ok")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, openai.APIError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
