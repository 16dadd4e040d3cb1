"""Regenerate the example data sets (seeded): python examples/make_data.py

- copy_sft.jsonl      prompt "abcd=", completion "abcd": SFT teaches copying
- copy_prompts.jsonl  the same prompts with an answer column, for RL with exact_match
- prefs.jsonl         preference pairs: the chosen completion holds more a's
- letter_prompts.jsonl  prompts for RL against the reward model trained on prefs.jsonl
"""

import random
from pathlib import Path

from tokrl.tasks.data import write_jsonl

HERE = Path(__file__).parent
OTHER = "bcdefghijklmnopqrstuvwxyz"


def main() -> None:
    rng = random.Random(0)
    words = sorted({"".join(rng.choice("abcd") for _ in range(4)) for _ in range(400)})
    write_jsonl(HERE / "copy_sft.jsonl", [{"prompt": f"{w}=", "completion": w} for w in words])
    write_jsonl(HERE / "copy_prompts.jsonl", [{"prompt": f"{w}=", "answer": w} for w in words])

    def word(length: int, a_count: int) -> str:
        letters = ["a"] * a_count + [rng.choice(OTHER) for _ in range(length - a_count)]
        rng.shuffle(letters)
        return "".join(letters)

    pairs = []
    for _ in range(300):
        length = rng.randint(2, 6)
        fewer = rng.randint(0, length - 1)
        more = rng.randint(fewer + 1, length)
        prompt = "".join(rng.choice(OTHER) for _ in range(3)) + "="
        pairs.append({"prompt": prompt, "chosen": word(length, more), "rejected": word(length, fewer)})
    write_jsonl(HERE / "prefs.jsonl", pairs)
    write_jsonl(HERE / "letter_prompts.jsonl",
                [{"prompt": "".join(rng.choice(OTHER) for _ in range(3)) + "="} for _ in range(80)])


if __name__ == "__main__":
    main()
