"""Generation: prompts in, scored completions out.

- ``prompts``: the chat template switch, token ids, left padding
- ``sampling``: the sampled distribution (temperature, top-k, top-p) and per-row noise
- ``engine``: tokrl's batched KV-cache decoding loop (the exact reference)
- ``batch``: ``rollout``, one batch of episodes: encode, generate, decode, score
- ``prefill``: the start both of tokrl's decoding loops share (noise, attention, prefill)
- ``turns``, ``multiturn``: multi-turn episodes (turn ends, observation ids with mask 0,
  one KV cache across turns)
"""
