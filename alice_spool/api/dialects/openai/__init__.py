"""OpenAI's API as its clients and ALICE's call it: chat completions and the model list
(`chat`), the images API (`images`) and its fields (`fields`)."""
