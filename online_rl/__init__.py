"""Online RLHF per user: reward heads, PPO on LoRA adapters, the gate, the scheduler.

A round (`online_rl.rounds`) reads as its five steps, each a call into its own module:
`user_data` (clicks, prompts, features) -> `reward` -> `warm_start` -> `ppo.ppo_iteration` and
`distill` -> `gate_measure` and `gate.decide` -> `publish`. Nothing here imports the facade:
the trainer gets the base model, the database, its settings and a function for the serving
version explicitly (`rounds.RoundContext`), the scheduler a function that runs a round.
"""
