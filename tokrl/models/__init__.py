"""Models: loading (HF directories, GGUF, built-ins, LoRA), the value head, the KL
reference, tokrl's attention, and the teacher-forced forward pass.

- ``load``: ``load_policy``, ``save_policy``, ``add_lora``, ``is_lora``
- ``pretrained``: built-in names and GGUF conversion (``resolve_model``); ``tiny``: tiny random models
- ``heads``: ``ValueHead``; ``reference``: ``Reference``
- ``attention``: matmul attention for CPU decoding
- ``forward``: ``autocast`` and ``forward`` (logits and values over prompt + completion)
"""
