"""Drives keypool with the official OpenAI Python SDK.

Run by tests/python_sdk.rs with OPENAI_BASE_URL pointing at a gateway (whose
upstream is the in-repo simulator) and OPENAI_API_KEY set to a gateway token.
Exits non-zero with a message on the first thing that is not as expected.
"""

import sys

import openai
from openai import OpenAI


def main() -> None:
    client = OpenAI(max_retries=0, timeout=30)

    chat = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=16,
    )
    assert chat.object == "chat.completion", chat
    assert chat.choices[0].message.content, chat
    assert chat.usage and chat.usage.total_tokens > 0, chat.usage

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, "streamed content arrived"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage and usage.total_tokens > 0, chunks[-1]

    emb = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0, emb
    assert emb.usage.prompt_tokens > 0

    models = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in models, models

    # A wrong gateway token is refused with OpenAI's error, which the SDK maps.
    bad = OpenAI(api_key="kp-wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError:
        pass
    else:
        raise AssertionError("a wrong token was accepted")

    print(f"openai {openai.__version__}: chat, stream+usage, embeddings, models ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
