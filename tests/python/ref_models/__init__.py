"""Test-only PyTorch ports of the modeling code published with ChatGLM-6B, ChatGLM2-6B, Baichuan-13B and MiniCPM
weights (remote code that is not installable in the test venv). Each port keeps the published module tree and
parameter names (so PEFT targets and adapter keys are the real ones) and the published forward math, restricted
to what a training/eval forward without KV cache needs. See MODEL-FAMILIES.md §4, §8, §9, §10.
"""
