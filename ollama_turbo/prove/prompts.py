"""The ten-prompt A/B set, run in the same order for every cache type.

Written for ollama-turbo; each exercises something a compressed KV cache could degrade.
"""

from __future__ import annotations

FILLER = (
    "The harbour town kept its lamps lit through the long winter. Fishing boats left before dawn and "
    "came back at dusk with nets that smelled of salt and tar. In the market square the baker argued "
    "with the cooper about the price of barrels, and the children counted the gulls on the church roof. "
)

PROMPTS: list[tuple[str, str]] = [
    ("long-context-summary",
     "Read the notes and summarise them in three bullet points.\n\n" + FILLER * 12
     + "\nThe council decided to build a new breakwater, to open a school for navigation, and to "
       "close the old fish market in spring.\n\nSummary:"),
    ("multi-step-reasoning",
     "A crate holds 12 bottles. A shop buys 7 crates, sells 50 bottles on Monday and twice as many on "
     "Tuesday as on Wednesday, when it sells 9. How many bottles are left? Think step by step."),
    ("code-generation",
     "Write a Python function `merge_intervals(xs)` that merges overlapping [start, end] intervals and "
     "returns them sorted. Include a docstring."),
    ("code-debugging",
     "This function should return the largest element but fails on some inputs. Find the bug and fix it.\n"
     "def largest(xs):\n    best = 0\n    for x in xs:\n        if x > best:\n            best = x\n"
     "    return best\n"),
    ("early-fact-recall",
     "Remember this: the lighthouse keeper's name is Oriel Vance.\n\n" + FILLER * 10
     + "\nQuestion: What is the lighthouse keeper's name?\nAnswer:"),
    ("constrained-story",
     "Write a four-sentence story about a clockmaker. Every sentence must start with the letter T, and "
     "the word 'brass' must appear exactly twice."),
    ("multi-turn-qa",
     "User: I have a 36 GB laptop.\nAssistant: Noted.\nUser: The model weights take 17 GB.\n"
     "Assistant: Noted.\nUser: I keep 4 GB for the system. How much is left for the KV cache?\nAssistant:"),
    ("structured-json",
     "Return only JSON with keys name (string), ports (list of integers) and tls (boolean) describing a "
     "server called atlas that listens on 80 and 443 with TLS on."),
    ("translate-then-analyse",
     "Translate into French: 'The cache grows with every token.' Then say in English which word carries "
     "the most meaning and why."),
    ("instruction-following-8",
     "Give exactly three tips for saving memory. Number them. Use at most twelve words per tip. Do not use "
     "the word 'RAM'. Start each tip with a verb. End each tip with a period. Use no bold text. Add no "
     "introduction or conclusion."),
]

# The prompt every speed measurement ends with (smoke and bench alike).
SPEED_PROMPT = "Once upon a time, in a small harbour town, there lived"
