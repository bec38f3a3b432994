"""Compute kernels, one folder per op: a fast path and its pure-PyTorch reference side by side.

Nothing here knows about models; mixers import the ops they need.
"""
