"""Ask the running demo once with the openai SDK, plain and streamed; exit non-zero on any failure."""

import sys

import openai

url = sys.argv[1]
client = openai.OpenAI(base_url=url + "/v1", api_key="any-key-the-policy-has-no-tenants", max_retries=0, timeout=10)
answer = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "Hello, Django!"}])
print("plain:", answer.choices[0].message.content)
stream = client.chat.completions.create(
    model="mock-echo", messages=[{"role": "user", "content": "Stream it."}], stream=True
)
print("streamed:", "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
