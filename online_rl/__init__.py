"""Online RLHF per user: reward heads, PPO on LoRA adapters, the gate, the scheduler.

Arrives with the online RL issue; until then `Assistant.train` says so and raises.
"""
