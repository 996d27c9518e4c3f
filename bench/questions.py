"""Everyday questions the latency benchmarks ask; each takes the first n, so a benchmark that
asks more turns gets more distinct ones and earlier results stay reproducible."""

EVERYDAY = [
    "What is a good name for a cat?",
    "How do I boil an egg?",
    "Why is the sea salty?",
    "Give me a tip for sleeping better.",
    "What should I pack for a day hike?",
    "How do plants drink water?",
    "What is a haiku?",
    "How do I keep basil alive?",
]
