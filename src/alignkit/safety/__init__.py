"""Safety: red-team attacks on a policy, and (in later issues) the harness, scorers and guardrails around them."""
