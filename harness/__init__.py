"""An evaluation harness for memory in LLMs: δ-mem and the baselines it is compared to."""
