"""Secure aggregation that keeps Byzantine robustness: SecAgg+ within buckets.

Each round the sampled nodes are shuffled into buckets (``protocol``); inside each bucket
the nodes run SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020) on their clipped,
quantized updates (``masking``), so the server learns only each bucket's sum
(``unmask``); the robust pipeline runs across the bucket means (``server``: the strategy
layer; ``fedapp.server.buckets``: what the strategy sees). The node's side is a
ClientApp mod (``client``). Key agreement, authenticated encryption and Shamir sharing
are Flower's helpers (``flwr.common.secure_aggregation``, ``cryptography``); masks are
ChaCha20 keystreams (``cryptography``).
"""
