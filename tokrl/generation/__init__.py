"""Generation: prompts in, scored completions out.

- ``prompts``: the chat template switch, token ids, left padding
- ``sampling``: the sampled distribution (temperature, top-k, top-p) and per-row noise
- ``engine``: tokrl's batched KV-cache decoding loop (the exact reference)
- ``batch``: ``rollout``, one batch of episodes: encode, generate, decode, score
"""
