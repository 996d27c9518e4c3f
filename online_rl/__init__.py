"""Online RLHF per user: reward heads, PPO on LoRA adapters, the gate, the scheduler.

A round (`online_rl.rounds`) is gather -> compute -> publish. Gathering reads the database
(`user_data`: clicks, prompts, features); computing (`round_worker`) is `reward` ->
`warm_start` -> `ppo.ppo_iteration` and `distill` -> `gate_measure` and `gate.decide`, in this
process or in a Ray actor (`ray_rounds`); publishing (`publish`) writes the version. Nothing
here imports the facade: the trainer gets the base model, the database, its settings and a
function for the serving version explicitly (`rounds.RoundContext`), the scheduler a function
that runs a round.
"""
